//! The connections that have not sent a whole request yet, and the slots they hold.
//!
//! Every connection holds one of the `--max-connections` slots. Until it has sent a whole
//! request (head and body), nothing tells a genuine client from a socket that sent one byte
//! and waits, so such connections hold their slots through this set, which keeps them to half
//! of all slots and lets the oldest give way: a connection that joins a full share, or that
//! finds every slot taken, takes the oldest waiting connection's place, and that connection
//! is closed. A flood of silent or trickling sockets then churns through its own share while a
//! genuine client, whose head arrives with its connection, gets in and leaves the set with its
//! slot. Only a stream keeps its slot outside the set for long: any other answer is over once
//! the client has read it, so its connection is back in the set while the answer is written
//! (a client that never reads would otherwise keep the slot for the write timeout), and stays
//! there, kept alive, until its next request is whole.
//!
//! The bytes a waiting connection has read (a head, a body on its way) are memory nobody has
//! vouched for either, so the set bounds them too: past [`MOST_WAITING_BYTES`] together, the
//! oldest give way until the rest fit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Most bytes the waiting connections of one server may hold together: many times the largest
/// request, and a fraction of a small VM's memory.
pub const MOST_WAITING_BYTES: usize = 32 * 1024 * 1024;

/// The slots of a server, and the connections among their holders that are waiting for a
/// request, oldest first.
pub struct Waiting {
    /// One permit per connection a server may hold open.
    slots: Arc<Semaphore>,
    /// Most connections that may wait at once: half the slots, at least one.
    share: usize,
    /// Most bytes they may hold together.
    most_bytes: usize,
    /// Held for an insertion, a removal or taking the oldest, never across an await, so a std
    /// `Mutex` (as the tokio docs advise for short critical sections).
    entries: Mutex<Entries>,
}

/// The waiting connections by age: each gets the next number when it starts to wait.
#[derive(Default)]
struct Entries {
    next: u64,
    by_age: BTreeMap<u64, Entry>,
    /// The bytes all of them hold.
    bytes: usize,
}

/// One waiting connection's slot, the bytes it holds, and the sender whose drop tells it to
/// give way.
struct Entry {
    slot: OwnedSemaphorePermit,
    bytes: usize,
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
    /// The slots of a server that holds at most `max_connections` connections, whose waiting
    /// ones hold at most `most_bytes` together.
    pub fn new(max_connections: usize, most_bytes: usize) -> Arc<Waiting> {
        Arc::new(Waiting {
            slots: Arc::new(Semaphore::new(max_connections)),
            share: (max_connections / 2).max(1),
            most_bytes,
            entries: Mutex::default(),
        })
    }

    /// A place for a connection just accepted: a free slot, or else the oldest waiting
    /// connection's. `None` when every slot is held by a connection serving a request.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => self.entries().pop_oldest()?,
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
            entries.pop_oldest();
        }
        let number = entries.next;
        entries.next += 1;
        entries.by_age.insert(
            number,
            Entry {
                slot,
                bytes: 0,
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
        let mut entries = self.entries();
        let entry = entries.by_age.remove(&number)?;
        entries.bytes -= entry.bytes;
        Some(entry.slot)
    }
}

impl Entries {
    /// Makes the oldest waiting connection give way; its slot.
    fn pop_oldest(&mut self) -> Option<OwnedSemaphorePermit> {
        let (_, entry) = self.by_age.pop_first()?;
        self.bytes -= entry.bytes;
        Some(entry.slot)
    }
}

impl Ticket {
    /// Resolves once the connection has given way to a newer one: its slot is gone, and the
    /// connection should close.
    pub async fn given_way(&mut self) {
        // The sender is only ever dropped, so this resolves with an error, which is the news.
        let _ = (&mut self.gave_way).await;
    }

    /// Records that the connection now holds `bytes` it has read; if the waiting connections
    /// hold too much together, the oldest give way (perhaps this one) until the rest fit.
    pub fn holds(&self, bytes: usize) {
        let mut entries = self.waiting.entries();
        let Some(entry) = entries.by_age.get_mut(&self.number) else {
            return;
        };
        let before = std::mem::replace(&mut entry.bytes, bytes);
        entries.bytes = entries.bytes - before + bytes;
        while entries.bytes > self.waiting.most_bytes {
            entries.pop_oldest();
        }
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
        let waiting = Waiting::new(4, MOST_WAITING_BYTES);
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
        let waiting = Waiting::new(1, MOST_WAITING_BYTES);
        let slot = waiting.admit().unwrap().served().unwrap();
        assert!(waiting.admit().is_none());
        // Back to waiting (kept alive): a newcomer may take its place.
        let mut idle = waiting.wait_with(slot);
        let _newcomer = waiting.admit().unwrap();
        idle.given_way().await;
    }

    #[tokio::test]
    async fn past_the_byte_budget_the_oldest_give_way_until_the_rest_fit() {
        let waiting = Waiting::new(10, 100);
        let mut oldest = waiting.admit().unwrap();
        let mut second = waiting.admit().unwrap();
        let third = waiting.admit().unwrap();
        oldest.holds(40);
        second.holds(40);
        third.holds(20);
        assert_eq!(waiting.entries().bytes, 100);
        // One more byte: the oldest goes, and what it held with it.
        third.holds(21);
        oldest.given_way().await;
        assert_eq!(waiting.entries().bytes, 61);
        // A connection that alone holds too much gives way itself, after the older ones.
        let greedy = waiting.admit().unwrap();
        greedy.holds(101);
        second.given_way().await;
        assert!(greedy.served().is_none());
        assert_eq!(waiting.entries().bytes, 0);
        assert!(third.served().is_none());
    }

    #[tokio::test]
    async fn a_ticket_dropped_while_waiting_frees_its_slot() {
        let waiting = Waiting::new(2, MOST_WAITING_BYTES);
        let ticket = waiting.admit().unwrap();
        assert_eq!(waiting.slots.available_permits(), 1);
        drop(ticket);
        assert_eq!(waiting.slots.available_permits(), 2);
        assert_eq!(waiting.len(), 0);
    }
}
