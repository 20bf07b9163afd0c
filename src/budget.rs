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

use std::future::Future;
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
    /// Reads that held more than they had reserved and were done again.
    rereads: AtomicU64,
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
            rereads: AtomicU64::new(0),
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

    /// Reserves `worst` bytes and runs `read`, whose result holds `held` bytes. A page holds
    /// its last row whatever that row's size, so a read may hold more than its worst case: it
    /// then takes the difference at once if the budget has it, or else gives back what it read
    /// and its reservation, waits for as much as the read held, and reads again (as often as
    /// the reads grow, never past the whole budget). So what a reader keeps is counted whole
    /// (unless it alone has the whole budget), and it never waits holding a reservation. While
    /// one read runs, what it loads is not yet counted: that excess lasts until the check
    /// after it, and is at most one row per read that runs at once (the `reads` permits).
    /// `make_room(bytes)` runs before each wait for `bytes`: a reader that keeps reads of its
    /// own (the shared tail) drops what the next one needs, as it would otherwise wait on
    /// itself. Returns the read's result and a reservation of at least what it holds.
    pub async fn read_within<T, E, F>(
        &self,
        worst: u64,
        mut make_room: impl FnMut(u64),
        mut read: impl FnMut() -> F,
        held: impl Fn(&T) -> u64,
    ) -> (Result<T, E>, Reservation)
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut wanted = worst;
        loop {
            make_room(wanted);
            let mut reservation = self.reserve(wanted).await;
            let result = read().await;
            let needed = result.as_ref().map_or(0, &held);
            let have = reservation.bytes();
            if needed <= have || have >= self.total() || self.grow(&mut reservation, needed) {
                return (result, reservation);
            }
            self.rereads.fetch_add(1, Ordering::Relaxed);
            drop(result);
            drop(reservation);
            wanted = needed;
        }
    }

    /// Adds to `reservation` what it lacks of `bytes` (of the whole budget, if `bytes` is
    /// more), if the budget has it now. Not counted as short: a read that cannot grow is
    /// counted as a reread, and its wait then as short.
    fn grow(&self, reservation: &mut Reservation, bytes: u64) -> bool {
        let lacking = bytes.min(self.total()).saturating_sub(reservation.bytes());
        match Arc::clone(&self.bytes).try_acquire_many_owned(self.clamp(lacking)) {
            Ok(more) => {
                reservation.permit.merge(more);
                self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Reads given back and done again under a larger reservation ([`ByteBudget::read_within`]).
    pub fn rereads(&self) -> u64 {
        self.rereads.load(Ordering::Relaxed)
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
    /// The bytes reserved.
    fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64
    }

    /// Gives back everything beyond `bytes` (keeping at least one byte): once a read knows what
    /// it holds, the rest of its worst case is free for others.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.max(1);
        let held = self.bytes();
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

    /// Reads through [`ByteBudget::read_within`] that hold `sizes` in turn, with
    /// `make_room`'s asks and the reads' count.
    async fn read_sizes(budget: &ByteBudget, worst: u64, sizes: &[u64]) -> (u64, Vec<u64>, usize) {
        let mut asked = Vec::new();
        let mut reads = 0;
        let (held, reservation) = budget
            .read_within(
                worst,
                |bytes| asked.push(bytes),
                || {
                    reads += 1;
                    std::future::ready(Ok::<u64, ()>(sizes[reads - 1]))
                },
                |&held| held,
            )
            .await;
        assert!(reservation.bytes() >= held.unwrap().min(budget.total()));
        (reservation.bytes(), asked, reads)
    }

    #[tokio::test]
    async fn a_read_that_holds_more_than_its_worst_case_takes_the_rest_when_it_is_free() {
        let budget = ByteBudget::new(1_000);
        assert_eq!(read_sizes(&budget, 100, &[60]).await, (100, vec![100], 1));
        assert_eq!(read_sizes(&budget, 100, &[400]).await, (400, vec![100], 1));
        assert_eq!((budget.in_use(), budget.rereads()), (0, 0));
    }

    /// [`read_sizes`] of a 1,000-byte budget from a worst case of 100, while `taken` bytes
    /// of it are held elsewhere until the read has given back and waits to read again.
    async fn read_sizes_beside(
        budget: &Arc<ByteBudget>,
        taken: u64,
        sizes: &'static [u64],
    ) -> (u64, Vec<u64>, usize) {
        let other = budget.reserve(taken).await;
        let reading = {
            let budget = Arc::clone(budget);
            tokio::spawn(async move { read_sizes(&budget, 100, sizes).await })
        };
        while budget.rereads() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(!reading.is_finished(), "it waits for room to read again");
        drop(other);
        reading.await.unwrap()
    }

    #[tokio::test]
    async fn a_read_that_holds_more_than_the_budget_has_now_gives_back_and_reads_again() {
        let budget = Arc::new(ByteBudget::new(1_000));
        // The second read holds more again, which the budget then has.
        assert_eq!(
            read_sizes_beside(&budget, 700, &[400, 500]).await,
            (500, vec![100, 400], 2)
        );
        assert_eq!((budget.in_use(), budget.rereads()), (0, 1));
    }

    #[tokio::test]
    async fn a_read_that_holds_more_than_the_whole_budget_ends_holding_all_of_it() {
        let budget = Arc::new(ByteBudget::new(1_000));
        assert_eq!(
            read_sizes(&budget, 100, &[5_000]).await,
            (1_000, vec![100], 1)
        );
        // With part of the budget taken, it gives back and waits for all of it.
        assert_eq!(
            read_sizes_beside(&budget, 500, &[5_000, 6_000]).await,
            (1_000, vec![100, 5_000], 2)
        );
        assert_eq!((budget.in_use(), budget.short()), (0, 1));
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
