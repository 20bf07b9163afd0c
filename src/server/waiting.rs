//! The connections that have not sent a whole request yet, and the slots they hold.
//!
//! Every connection holds one of the `--max-connections` slots. Until it has sent a whole
//! request (head and body), nothing tells a genuine client from a socket that sent one byte
//! and waits, so such connections hold their slots through this set, which keeps them to half
//! of all slots and lets the oldest give way: a connection that joins a full share, or that
//! finds every slot taken, takes the oldest waiting connection's place, and that connection
//! is closed. A flood of silent or trickling sockets then churns through its own share while a
//! genuine client, whose head arrives with its connection, gets in and leaves the set with its
//! slot. A kept-alive connection waiting for its next request is back in the set: it is idle,
//! and under pressure it gives way like any other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// The slots of a server, and the connections among their holders that are waiting for a
/// request, oldest first.
pub struct Waiting {
    /// One permit per connection a server may hold open.
    slots: Arc<Semaphore>,
    /// Most connections that may wait at once: half the slots, at least one.
    share: usize,
    /// Held for an insertion, a removal or taking the oldest, never across an await, so a std
    /// `Mutex` (as the tokio docs advise for short critical sections).
    entries: Mutex<Entries>,
}

/// The waiting connections by age: each gets the next number when it starts to wait.
#[derive(Default)]
struct Entries {
    next: u64,
    by_age: BTreeMap<u64, Entry>,
}

/// One waiting connection's slot, and the sender whose drop tells it to give way.
struct Entry {
    slot: OwnedSemaphorePermit,
    /// Never sent on: dropping it wakes the connection's [`Ticket::given_way`].
    _give_way: oneshot::Sender<()>,
}

/// A connection's place among the waiting ones; it leaves the set when dropped.
pub struct Ticket {
    waiting: Arc<Waiting>,
    number: u64,
    gave_way: oneshot::Receiver<()>,
}

impl Waiting {
    /// The slots of a server that holds at most `max_connections` connections.
    pub fn new(max_connections: usize) -> Arc<Waiting> {
        Arc::new(Waiting {
            slots: Arc::new(Semaphore::new(max_connections)),
            share: (max_connections / 2).max(1),
            entries: Mutex::default(),
        })
    }

    /// A place for a connection just accepted: a free slot, or else the oldest waiting
    /// connection's. `None` when every slot is held by a connection serving a request.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => self.entries().by_age.pop_first()?.1.slot,
        };
        Some(self.wait_with(slot))
    }

    /// Puts a connection holding `slot` among the waiting ones (a new one, or one that has
    /// answered a request and waits for the next). If that would exceed the share, the oldest
    /// gives way and its slot is freed.
    pub fn wait_with(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Ticket {
        let (give_way, gave_way) = oneshot::channel();
        let mut entries = self.entries();
        while entries.by_age.len() >= self.share {
            entries.by_age.pop_first();
        }
        let number = entries.next;
        entries.next += 1;
        entries.by_age.insert(
            number,
            Entry {
                slot,
                _give_way: give_way,
            },
        );
        Ticket {
            waiting: Arc::clone(self),
            number,
            gave_way,
        }
    }

    /// How many connections are waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().by_age.len()
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, number: u64) -> Option<OwnedSemaphorePermit> {
        self.entries()
            .by_age
            .remove(&number)
            .map(|entry| entry.slot)
    }
}

impl Ticket {
    /// Resolves once the connection has given way to a newer one: its slot is gone, and the
    /// connection should close.
    pub async fn given_way(&mut self) {
        // The sender is only ever dropped, so this resolves with an error, which is the news.
        let _ = (&mut self.gave_way).await;
    }

    /// Leaves the set with the slot, now that a whole request has arrived; `None` if the
    /// connection gave way first.
    pub fn served(self) -> Option<OwnedSemaphorePermit> {
        self.waiting.remove(self.number)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A connection that ends while waiting frees its slot (a no-op after `served`).
        self.waiting.remove(self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_connections_keep_to_half_the_slots_and_the_oldest_gives_way() {
        let waiting = Waiting::new(4);
        let mut first = waiting.admit().unwrap();
        let second = waiting.admit().unwrap();
        assert_eq!(waiting.len(), 2);
        // A third joins a full share: the first gives way, its slot freed, not taken.
        let third = waiting.admit().unwrap();
        assert_eq!(waiting.len(), 2);
        first.given_way().await;
        assert!(first.served().is_none());
        assert_eq!(waiting.slots.available_permits(), 2);

        // Served connections hold their slots outside the set.
        let serving = [second.served().unwrap(), third.served().unwrap()];
        assert_eq!(waiting.len(), 0);
        let _waiting_ones = [waiting.admit().unwrap(), waiting.admit().unwrap()];
        assert_eq!(waiting.slots.available_permits(), 0);
        // Every slot is taken: a newcomer takes the oldest waiting connection's place.
        let _newcomer = waiting.admit().unwrap();
        assert_eq!(waiting.len(), 2);
        drop(serving);
        assert_eq!(waiting.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_connection_serving_every_slot_leaves_no_place() {
        let waiting = Waiting::new(1);
        let slot = waiting.admit().unwrap().served().unwrap();
        assert!(waiting.admit().is_none());
        // Back to waiting (kept alive): a newcomer may take its place.
        let mut idle = waiting.wait_with(slot);
        let _newcomer = waiting.admit().unwrap();
        idle.given_way().await;
    }

    #[tokio::test]
    async fn a_ticket_dropped_while_waiting_frees_its_slot() {
        let waiting = Waiting::new(2);
        let ticket = waiting.admit().unwrap();
        assert_eq!(waiting.slots.available_permits(), 1);
        drop(ticket);
        assert_eq!(waiting.slots.available_permits(), 2);
        assert_eq!(waiting.len(), 0);
    }
}
