//! The replica: its pool, how far it has replayed, whether it is usable, and the one place a
//! read runs on it.
//!
//! A background task asks the replica how far it has replayed: every second while nothing
//! waits (for `/metrics` and to notice a failure), every few milliseconds while a read waits
//! for replay to reach its position, and, after a failure, with a backoff that doubles up to
//! ten seconds. Reads never try a replica that task has found failed; they read the primary,
//! and the first check that succeeds brings the replica back.
//!
//! A read runs on the replica in one READ COMMITTED, READ ONLY transaction, pipelined in one
//! round trip: a statement reads `pg_last_wal_replay_lsn()`, then the read's own statement
//! takes its snapshot. READ COMMITTED takes a snapshot per statement, so the read sees at least
//! what was replayed when the first one ran; the transaction keeps both on one server even
//! behind a transaction-mode pooler in front of several replicas. The position observed there
//! is what decides. Before that, while finding a read's position and before the read takes a
//! pool permit, the reader waits (briefly) for this task's checks to see replay reach it, so
//! the read itself almost never finds the replica behind; and once such a wait has failed,
//! reads needing as much go straight to the primary until replay passes it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Reason;
use crate::error::Error;
use crate::store::DbPool;

/// How often the replay position is read while nothing waits for it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often it is read while a read waits for replay, or after a wait failed until replay
/// gets past it.
const BUSY_CHECK: Duration = Duration::from_millis(5);

/// The first and the longest wait before a failed replica is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Longest a check or a read on the replica may take before the replica counts as failed:
/// a replica that stopped answering must not hold a catch-up longer than this.
const PATIENCE: Duration = Duration::from_secs(5);

/// What tells a usable replica: in recovery (a promoted replica no longer follows the primary,
/// and may be written to), its replay position, when the last transaction it replayed
/// committed on the primary, and whose WAL it replays: its cluster's system identifier and
/// its timeline (the one it receives, else that of its last restartpoint; a role without
/// `pg_read_all_stats` sees only the second). Replay positions compare only within one
/// cluster's timeline: a replica of another cluster, or one left on the old timeline after a
/// failover, may be "ahead" of the primary while showing other rows under the same ids.
const REPLAY_STATE: &str = "SELECT pg_is_in_recovery(), \
     coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, -1), \
     extract(epoch FROM pg_last_xact_replay_timestamp())::float8, \
     (SELECT system_identifier FROM pg_control_system())::int8, \
     coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
              (SELECT timeline_id FROM pg_control_checkpoint()))::int8";

/// The primary's side of the same: its system identifier and its current timeline (the first
/// eight hex digits of its current WAL file's name).
const PRIMARY_IDENTITY: &str = "SELECT (SELECT system_identifier FROM pg_control_system())::int8, \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8";

/// How often the primary's identity is read again (it changes only when another server
/// becomes the primary).
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// A streaming replica of the primary.
pub struct Standby {
    pool: DbPool,
    /// The primary, whose identity the replica must share.
    primary: DbPool,
    /// The primary's system identifier and timeline as last read, and when; `None` until read.
    primary_identity: std::sync::Mutex<Option<(Identity, std::time::Instant)>>,
    /// The replay position last observed (-1 before any): what the last check saw, raised by
    /// reads that saw more since. A hint that a read is worth trying, what waiting reads watch,
    /// and the replica's lag. A check may lower it: the server behind `--replica-url` may have
    /// been replaced by one that has replayed less.
    replayed: watch::Sender<i64>,
    /// When the last replayed transaction committed (seconds since the epoch, as f64 bits;
    /// NaN when unknown), for the lag in seconds.
    replayed_commit: AtomicU64,
    /// Whether the last check found a usable replica; reads skip it otherwise.
    up: AtomicBool,
    /// Checks failed in a row, for the backoff.
    failures: AtomicU32,
    /// The position a read last waited for in vain (-1 for none): until replay passes it,
    /// reads that need as much go to the primary at once instead of each waiting in turn
    /// (a paused replica would otherwise cost every read of a storm the whole wait, holding
    /// its pool permit).
    stalled: AtomicI64,
    /// Reads waiting for replay: while any do, the position is read every [`BUSY_CHECK`].
    waiting: AtomicUsize,
    /// Wakes the checking task when a read starts waiting.
    wake: Notify,
    /// Whether going down was logged, so it is logged once per outage, with its end.
    reported_down: AtomicBool,
}

/// How one read on the replica went.
pub enum Outcome<T> {
    /// Read there.
    Read(T),
    /// Not read there, for this reason: read the primary.
    Primary(Reason),
}

impl Standby {
    /// A replica reached through `pool` of the primary reached through `primary`, not known to
    /// be usable until its first check.
    pub fn new(pool: DbPool, primary: DbPool) -> Standby {
        Standby {
            pool,
            primary,
            primary_identity: std::sync::Mutex::new(None),
            replayed: watch::Sender::new(-1),
            replayed_commit: AtomicU64::new(f64::NAN.to_bits()),
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            stalled: AtomicI64::new(-1),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            reported_down: AtomicBool::new(false),
        }
    }

    /// Whether the last check found the replica usable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The replay position last observed, if any.
    pub fn replayed(&self) -> Option<i64> {
        Some(*self.replayed.borrow()).filter(|&at| at >= 0)
    }

    /// When the last transaction the replica replayed committed, in seconds since the epoch.
    pub fn replayed_commit(&self) -> Option<f64> {
        Some(f64::from_bits(self.replayed_commit.load(Ordering::Relaxed))).filter(|t| !t.is_nan())
    }

    /// Checks the replica until `shutdown`: see the module's documentation.
    pub async fn watch(&self, shutdown: CancellationToken) {
        loop {
            self.check().await;
            let pause = if !self.is_up() {
                let failures = self.failures.load(Ordering::Relaxed);
                BACKOFF_MIN
                    .saturating_mul(1 << failures.saturating_sub(1).min(7))
                    .min(BACKOFF_MAX)
            } else if self.waiting.load(Ordering::Relaxed) > 0
                || self.stalled.load(Ordering::Relaxed) > *self.replayed.borrow()
            {
                // Someone waits, or reads skip the replica until replay passes a failed wait:
                // find out soon when it does.
                BUSY_CHECK
            } else {
                IDLE_CHECK
            };
            let up = self.is_up();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // A failed replica keeps its backoff, whoever waits.
                _ = self.wake.notified(), if up => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Reads the replay state once; marks the replica up or failed.
    async fn check(&self) {
        let state = async {
            let primary = self.primary_identity().await?;
            let client = self.pool.get().await?;
            let row = client.query_typed_one(REPLAY_STATE, &[]).await?;
            Ok::<_, Error>((
                row.try_get::<_, bool>(0)?,
                row.try_get::<_, i64>(1)?,
                row.try_get::<_, Option<f64>>(2)?,
                Identity::of_replica(&row)? == primary,
            ))
        };
        match tokio::time::timeout(PATIENCE, state).await {
            Ok(Ok((_, _, _, false))) => {
                self.failed("it does not replay the primary's cluster and timeline")
            }
            Ok(Ok((true, replayed, committed, true))) => {
                self.replayed
                    .send_if_modified(|at| std::mem::replace(at, replayed) != replayed);
                let committed = committed.unwrap_or(f64::NAN);
                self.replayed_commit
                    .store(committed.to_bits(), Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                self.up.store(true, Ordering::Relaxed);
                if self.reported_down.swap(false, Ordering::Relaxed) {
                    info!("the read replica is usable again");
                }
            }
            Ok(Ok((false, ..))) => self.failed("it is not in recovery (promoted?)"),
            Ok(Err(error)) => self.failed(&error.to_string()),
            Err(_) => self.failed("it did not answer in time"),
        }
    }

    /// The primary's identity, read again when the last reading is [`PRIMARY_CHECK`] old.
    async fn primary_identity(&self) -> Result<Identity, Error> {
        if let Some((identity, read_at)) = *self.primary_identity.lock().unwrap() {
            if read_at.elapsed() < PRIMARY_CHECK {
                return Ok(identity);
            }
        }
        let row = self
            .primary
            .get()
            .await?
            .query_typed_one(PRIMARY_IDENTITY, &[])
            .await?;
        let identity = Identity {
            system: row.try_get(0)?,
            timeline: row.try_get(1)?,
        };
        *self.primary_identity.lock().unwrap() = Some((identity, std::time::Instant::now()));
        Ok(identity)
    }

    /// The replica cannot be used: reads go to the primary until a check succeeds.
    fn failed(&self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.reported_down.swap(true, Ordering::Relaxed) {
            warn!(
                why,
                "the read replica cannot be used; reading the primary and retrying"
            );
        }
    }

    /// Raises the observed replay position to `replayed`, which a read saw.
    fn observe(&self, replayed: i64) {
        self.replayed.send_if_modified(|at| {
            let raised = replayed > *at;
            if raised {
                *at = replayed;
            }
            raised
        });
    }

    /// Whether replay has reached `wal`, as far as this task's checks have seen, waiting up to
    /// `patience` for them to see it (they run every [`BUSY_CHECK`] while anyone waits). Once
    /// a wait has failed, later ones for as much give up at once until replay passes it: a
    /// paused replica costs one wait, not one per read.
    pub async fn reached(&self, wal: i64, patience: Duration) -> bool {
        let replayed = *self.replayed.borrow();
        if replayed >= wal {
            return true;
        }
        let stalled = self.stalled.load(Ordering::Relaxed);
        if stalled >= 0 && wal >= stalled && replayed < stalled {
            return false;
        }
        let _waiting = Waiting::enter(self);
        let mut replayed = self.replayed.subscribe();
        let reached = tokio::time::timeout(patience, replayed.wait_for(|&at| at >= wal)).await;
        let reached = matches!(reached, Ok(Ok(_)));
        if !reached {
            self.stalled.store(wal, Ordering::Relaxed);
        }
        reached
    }

    /// Runs `query` (one statement) on the replica if its replay, read in the same transaction
    /// just before the query's snapshot, has reached `wal`; otherwise says why the primary must
    /// read. Call it once [`Standby::reached`] says so: then it almost always has.
    pub async fn read<A, T>(
        &self,
        wal: i64,
        args: &A,
        query: &(impl for<'c> Fn(&'c Client, &'c A) -> BoxFuture<'c, Result<T, Error>> + Sync),
    ) -> Outcome<T>
    where
        A: Sync + ?Sized,
    {
        if !self.is_up() {
            return Outcome::Primary(Reason::Unavailable);
        }
        match self.attempt(wal, args, query).await {
            Attempt::Read(value) => Outcome::Read(value),
            // Behind although a check saw it there: another server behind a pooler.
            Attempt::Behind => Outcome::Primary(Reason::Lagging),
            Attempt::Failed => Outcome::Primary(Reason::Failed),
        }
    }

    /// One try of `query` on the replica, in the transaction that checks its replay first.
    async fn attempt<A, T>(
        &self,
        wal: i64,
        args: &A,
        query: &(impl for<'c> Fn(&'c Client, &'c A) -> BoxFuture<'c, Result<T, Error>> + Sync),
    ) -> Attempt<T>
    where
        A: Sync + ?Sized,
    {
        let read = async {
            let client = self.pool.get().await?;
            let (begun, state, value, committed) = tokio::join!(
                client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"),
                client.query_typed_one(REPLAY_STATE, &[]),
                query(&client, args),
                client.batch_execute("COMMIT"),
            );
            begun?;
            let state = state?;
            let in_recovery: bool = state.try_get(0)?;
            let replayed: i64 = state.try_get(1)?;
            let ours = Some(Identity::of_replica(&state)?) == self.known_primary();
            // A failed read inside the transaction makes COMMIT a rollback, and that is fine.
            let _ = committed;
            Ok::<_, Error>((in_recovery && ours, replayed, value))
        };
        match tokio::time::timeout(PATIENCE, read).await {
            Ok(Ok((false, ..))) => {
                self.failed(
                    "it is not in recovery (promoted?), or replays another cluster or timeline",
                );
                Attempt::Failed
            }
            Ok(Ok((true, replayed, value))) => {
                self.observe(replayed);
                match value {
                    _ if replayed < wal => Attempt::Behind,
                    Ok(value) => Attempt::Read(value),
                    // A query recovery cancelled (a conflict with replay), say: this read
                    // goes to the primary, the replica stays in use.
                    Err(_) => Attempt::Failed,
                }
            }
            Ok(Err(error)) => {
                if error.is_unreachable() {
                    self.failed(&error.to_string());
                }
                Attempt::Failed
            }
            Err(_) => {
                self.failed("a read did not finish in time");
                Attempt::Failed
            }
        }
    }
}

impl Standby {
    /// The primary's identity as last read, if it was.
    fn known_primary(&self) -> Option<Identity> {
        self.primary_identity
            .lock()
            .unwrap()
            .map(|(identity, _)| identity)
    }
}

/// Whose WAL a server writes or replays: replay positions compare only between servers that
/// share both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    /// `pg_control_system().system_identifier`: the same on a primary and its replicas.
    system: i64,
    /// The timeline: a promotion starts a new one.
    timeline: i64,
}

impl Identity {
    /// Reads it from a [`REPLAY_STATE`] row.
    fn of_replica(row: &tokio_postgres::Row) -> Result<Identity, Error> {
        Ok(Identity {
            system: row.try_get(3)?,
            timeline: row.try_get(4)?,
        })
    }
}

/// How one try on the replica went.
enum Attempt<T> {
    /// Read there, exact.
    Read(T),
    /// The replica had not replayed far enough (what was read is dropped).
    Behind,
    /// The read failed there.
    Failed,
}

/// A read waiting for replay, counted while it waits (also when the wait is dropped).
struct Waiting<'a>(&'a Standby);

impl<'a> Waiting<'a> {
    fn enter(standby: &'a Standby) -> Waiting<'a> {
        if standby.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            standby.wake.notify_one();
        }
        Waiting(standby)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
