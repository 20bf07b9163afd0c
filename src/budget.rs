//! Byte budgets: how many bytes of stored messages one instance holds for its readers at once.
//!
//! A limit per read (a catch-up page of 1 MiB, one message of `--max-event-bytes`) does not
//! bound an instance: 12 or 12,000 readers each holding one multiply it. So every read that
//! loads messages for a client first reserves its worst case from the instance's budget and
//! gives the reservation back when what it read has been written or dropped. The budget is a
//! semaphore counted in bytes: FIFO, so a large reservation is not starved by small ones, and a
//! reservation never asks for more than the whole budget, so it always comes through once the
//! others are given back. Nobody waits for a reservation while holding another one, so no
//! reader can wait on itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// A budget of bytes shared by this instance's readers of one kind.
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    /// The whole budget (a semaphore takes at most `u32::MAX` permits at once).
    total: u32,
    /// The most bytes ever reserved at once: what `/metrics` shows and the tests check.
    peak: AtomicU64,
    /// Reservations that could not be had at once (they waited, or were refused).
    short: AtomicU64,
}

/// Bytes reserved from a [`ByteBudget`]; dropping it gives them back.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `bytes` (at least 1, at most 4 GiB).
    pub fn new(bytes: u64) -> ByteBudget {
        let total = bytes.clamp(1, u64::from(u32::MAX)) as u32;
        ByteBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
            peak: AtomicU64::new(0),
            short: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes` (the whole budget if it is smaller), waiting its turn behind earlier
    /// reservations while the budget is taken.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let wanted = self.clamp(bytes);
        let permit = match Arc::clone(&self.bytes).try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(_) => {
                self.short.fetch_add(1, Ordering::Relaxed);
                Arc::clone(&self.bytes)
                    .acquire_many_owned(wanted)
                    .await
                    .expect("the budget's semaphore is never closed")
            }
        };
        self.reserved(permit)
    }

    /// Reserves `bytes` now, or `None` when the budget cannot give them now (or ever: see
    /// [`ByteBudget::can_hold`]).
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        if !self.can_hold(bytes) {
            return None;
        }
        match Arc::clone(&self.bytes).try_acquire_many_owned(self.clamp(bytes)) {
            Ok(permit) => Some(self.reserved(permit)),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                self.short.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether a reservation of `bytes` fits in the whole budget.
    pub fn can_hold(&self, bytes: u64) -> bool {
        bytes <= u64::from(self.total)
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total)
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.total() - self.bytes.available_permits() as u64
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reservations that could not be had at once: they waited, or were refused.
    pub fn short(&self) -> u64 {
        self.short.load(Ordering::Relaxed)
    }

    fn clamp(&self, bytes: u64) -> u32 {
        bytes.clamp(1, u64::from(self.total)) as u32
    }

    fn reserved(&self, permit: OwnedSemaphorePermit) -> Reservation {
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        Reservation { permit }
    }
}

impl Reservation {
    /// Gives back everything beyond `bytes` (keeping at least one byte): once a read knows what
    /// it holds, the rest of its worst case is free for others.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.max(1);
        let held = self.permit.num_permits() as u64;
        if held > keep {
            drop(self.permit.split((held - keep) as usize));
        }
    }

    /// `bytes`, holding this reservation until their last copy is dropped: once they have been
    /// written to the client's socket, or dropped with its connection. Hand it the last thing
    /// a read sends (bytes written in order are all written by then).
    pub fn held_by(self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(Held { bytes, _kept: self })
    }

    /// This reservation, to be held by several readers: the rows of a shared catch-up read
    /// stay in memory until the last stream it served has sent its part of them.
    pub fn share(self) -> SharedReservation {
        SharedReservation {
            _reservation: Arc::new(self),
        }
    }
}

/// A [`Reservation`] several readers hold; it is given back when the last of them lets go.
#[derive(Clone, Debug)]
pub struct SharedReservation {
    /// Dropped with the last clone: the bytes go back then.
    _reservation: Arc<Reservation>,
}

impl SharedReservation {
    /// `bytes`, holding this reader's share until their last copy is dropped, as
    /// [`Reservation::held_by`] does.
    pub fn held_by(self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(Held { bytes, _kept: self })
    }
}

/// `bytes`, and a [`Written`] that resolves once their last copy is dropped: written to the
/// client's socket, or dropped with its connection. A reader waits for it before it reads its
/// next page: the writer takes every frame that is ready while it writes, so without the wait
/// a client that stops reading would hold the page in its socket and the next one too.
pub fn watch_written(bytes: Bytes) -> (Bytes, Written) {
    let (sender, receiver) = oneshot::channel::<()>();
    (
        Bytes::from_owner(Held {
            bytes,
            _kept: sender,
        }),
        Written(receiver),
    )
}

/// Resolves once the bytes [`watch_written`] wrapped are dropped.
#[derive(Debug)]
pub struct Written(oneshot::Receiver<()>);

impl Written {
    /// Waits until the bytes are written or dropped.
    pub async fn wait(self) {
        // Nothing is ever sent: the sender's drop is the signal.
        let _ = self.0.await;
    }
}

/// Bytes that keep something until their last copy is dropped: a reservation
/// ([`Reservation::held_by`], [`SharedReservation::held_by`]) or a [`Written`]'s sender.
struct Held<K> {
    bytes: Bytes,
    _kept: K,
}

impl<K> AsRef<[u8]> for Held<K> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_resolves_once_the_last_copy_is_dropped() {
        let (frame, written) = watch_written(Bytes::from_static(b"data: 1\n\n"));
        let copy = frame.clone();
        let mut wait = Box::pin(written.wait());
        drop(frame);
        assert!(futures::poll!(&mut wait).is_pending());
        drop(copy);
        wait.await;
    }

    #[tokio::test]
    async fn reservations_wait_for_bytes_given_back() {
        let budget = ByteBudget::new(100);
        let mut first = budget.reserve(80).await;
        assert!(budget.try_reserve(30).is_none());
        first.shrink_to(50);
        assert_eq!(budget.in_use(), 50);
        let second = budget.try_reserve(30).expect("30 of the 50 given back");
        assert_eq!(budget.in_use(), 80);
        drop(first);
        drop(second);
        assert_eq!((budget.in_use(), budget.peak(), budget.short()), (0, 80, 1));
    }

    #[tokio::test]
    async fn bytes_that_hold_a_reservation_give_it_back_when_dropped() {
        let budget = ByteBudget::new(100);
        let held = budget
            .reserve(60)
            .await
            .held_by(Bytes::from_static(b"frame"));
        let copy = held.clone();
        drop(held);
        assert_eq!((&copy[..], budget.in_use()), (&b"frame"[..], 60));
        drop(copy);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_shared_reservation_is_given_back_by_its_last_holder() {
        let budget = ByteBudget::new(100);
        let shared = budget.reserve(60).await.share();
        let one = shared.clone().held_by(Bytes::from_static(b"one"));
        let two = shared.held_by(Bytes::from_static(b"two"));
        drop(one);
        assert_eq!((&two[..], budget.in_use()), (&b"two"[..], 60));
        drop(two);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn more_than_the_budget_waits_for_all_of_it_and_then_comes_through() {
        let budget = Arc::new(ByteBudget::new(100));
        let small = budget.reserve(10).await;
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let _all = budget.reserve(1_000).await;
                budget.in_use()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(small);
        assert_eq!(waiting.await.unwrap(), 100);
        assert!(!budget.can_hold(101) && budget.try_reserve(101).is_none());
    }
}
