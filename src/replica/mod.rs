//! Reads that may go to a streaming read replica (`--replica-url`), exact whatever its lag.
//!
//! A replica replays the primary's WAL in order, so what it shows is the primary as it was at
//! its replay position: ids are given in commit order by the relays' numbering pass, and a
//! replica shows a prefix of them. A read is as exact there as on the primary when the
//! replica has replayed every commit the primary read it replaces had to see. That is a WAL
//! position, and what a read must see decides which ([`Through`]):
//!
//! - a stream's catch-up must see what this instance's listener has routed until now (later
//!   rows reach the stream live): the position the listener read after the pass that routed
//!   them ([`WalMarks`]), which costs the primary nothing;
//! - a history page and a message read by id must see everything committed when they were
//!   asked for (the caller may have heard of a message from any instance, as an `oversized`
//!   stand-in for instance): the primary's insert position, read then (one statement that
//!   reads no table).
//!
//! [`ExactReads::position`] finds that position and waits up to [`REPLICA_WAIT`] for the
//! replica's replay to get there; [`ExactReads::run`] then runs the read on the replica if its
//! replay position, read in the same transaction just before the read's snapshot, has reached
//! it, and otherwise on the primary. A replica that
//! fails is skipped until a check finds it usable again. Every read is counted by where it
//! went and why (`/metrics`). Membership, revocation and position checks never come here:
//! they stay on the primary.

mod marks;
mod standby;

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::Counter;
use crate::store::{self, DbPool};
pub use marks::WalMarks;
use standby::{Outcome, Standby};

/// Longest a read waits for the replica's replay to reach its position before it reads the
/// primary instead; also how long a catch-up waits for a listener pass under way to record
/// its position. Short: the reader is a stream behind anyway, or a client waiting for a page.
pub const REPLICA_WAIT: Duration = Duration::from_millis(100);

/// What a read must see.
#[derive(Debug, Clone, Copy)]
pub enum Through {
    /// Every row this instance's listener has routed so far: a stream's catch-up.
    Routed,
    /// Every commit on the primary so far: history pages and messages read by id.
    Committed,
}

/// Which read, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub enum Read {
    /// A stream's catch-up page.
    CatchUp = 0,
    /// A `GET /v1/messages` page.
    History = 1,
    /// A `GET /v1/messages/{id}` read (its size, then the message).
    Message = 2,
}

const READS: [&str; 3] = ["catch_up", "history", "message"];

/// Where a read went and why, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// On the replica: it had replayed what the read must see.
    Replayed = 0,
    /// On the primary: no replica is configured.
    NoReplica = 1,
    /// On the primary: the position the read needs was not known (no listener pass yet, or
    /// the primary's position could not be read).
    Unknown = 2,
    /// On the primary: the replica was down (skipped until a check finds it usable).
    Unavailable = 3,
    /// On the primary: the replica had not replayed far enough within [`REPLICA_WAIT`].
    Lagging = 4,
    /// On the primary: the read failed on the replica.
    Failed = 5,
}

const REASONS: [&str; 6] = [
    "replayed",
    "no_replica",
    "unknown",
    "unavailable",
    "lagging",
    "failed",
];

impl Reason {
    fn source(self) -> usize {
        usize::from(self != Reason::Replayed)
    }
}

const SOURCES: [&str; 2] = ["replica", "primary"];

/// Where a read may go: the WAL position a replica must have replayed, or why it must read the
/// primary.
#[derive(Debug, Clone, Copy)]
pub struct Position(Result<i64, Reason>);

/// How many rows a read's result holds, for `/metrics`.
pub trait Rows {
    /// The rows read.
    fn rows(&self) -> u64;
}

impl Rows for store::Page {
    fn rows(&self) -> u64 {
        self.messages.len() as u64
    }
}

impl Rows for store::Range {
    fn rows(&self) -> u64 {
        self.page.rows()
    }
}

impl<T> Rows for Option<T> {
    fn rows(&self) -> u64 {
        u64::from(self.is_some())
    }
}

/// The one way catch-ups and history reads reach the database.
pub struct ExactReads {
    primary: DbPool,
    /// The replica, when `--replica-url` is set.
    standby: Option<Standby>,
    /// What the listener has routed; recorded only with a replica.
    marks: Arc<WalMarks>,
    /// The newest primary position a history read asked for, for the replica's lag: what the
    /// last read of it found, as they run one at a time and the position only grows.
    committed: AtomicI64,
    /// When the last read of the primary's position began. Held while a read runs, so reads
    /// run one at a time and every request waiting shares the next.
    last_committed: Mutex<Option<Instant>>,
    /// Reads of the primary's position, for `/metrics`.
    committed_reads: Counter,
    /// Reads by [`Read`] and [`Reason`].
    reads: [[Counter; REASONS.len()]; READS.len()],
    /// Rows read by [`Read`] and source (replica, primary).
    rows: [[Counter; SOURCES.len()]; READS.len()],
}

impl ExactReads {
    /// Reads on `primary`, and on `replica` when it is given.
    pub fn new(primary: DbPool, replica: Option<DbPool>) -> ExactReads {
        ExactReads {
            standby: replica.map(|replica| Standby::new(replica, primary.clone())),
            primary,
            marks: Arc::default(),
            committed: AtomicI64::new(-1),
            last_committed: Mutex::new(None),
            committed_reads: Counter::default(),
            reads: Default::default(),
            rows: Default::default(),
        }
    }

    /// Where the listener records what it routed, when a replica needs it.
    pub fn marks(&self) -> Option<Arc<WalMarks>> {
        self.standby.as_ref().map(|_| Arc::clone(&self.marks))
    }

    /// Keeps checking the replica until `shutdown` (returns at once without one).
    pub async fn watch_replica(&self, shutdown: CancellationToken) {
        if let Some(standby) = &self.standby {
            standby.watch(shutdown).await;
        }
    }

    /// The position a read that must see `through` needs, found now: call it after the
    /// moment the read must cover (a stream's catch-up request, a request's arrival), and
    /// before taking a pool permit: it waits up to [`REPLICA_WAIT`] for the listener's pass
    /// under way and then for the replica's replay to reach the position (else the read goes
    /// to the primary).
    pub async fn position(&self, through: Through) -> Position {
        match &self.standby {
            None => return Position(Err(Reason::NoReplica)),
            // Neither wait for a pass nor ask the primary for a replica that is down.
            Some(standby) if !standby.is_up() => return Position(Err(Reason::Unavailable)),
            Some(_) => {}
        }
        let wal = match through {
            Through::Routed => self.marks.routed(REPLICA_WAIT).await,
            Through::Committed => self.committed_now().await,
        };
        let Some(wal) = wal else {
            return Position(Err(Reason::Unknown));
        };
        // Waited for here, before the read holds a pool permit: a storm of reads each
        // waiting for replay under its permit would hold the pool for the whole wait.
        match &self.standby {
            Some(standby) if !standby.reached(wal, REPLICA_WAIT).await => {
                Position(Err(Reason::Lagging))
            }
            _ => Position(Ok(wal)),
        }
    }

    /// The primary's WAL insert position now, if it can be read. A read that began after
    /// this call did covers every commit before it, so requests that wait while one runs
    /// share the next: a flood of history and message reads costs one primary connection for
    /// their positions, not one each outside the pool permits their reads then take.
    async fn committed_now(&self) -> Option<i64> {
        let asked = Instant::now();
        let mut last = self.last_committed.lock().await;
        if last.is_some_and(|began| began >= asked) {
            return Some(self.committed.load(Ordering::Relaxed));
        }
        let began = Instant::now();
        self.committed_reads.inc();
        let client = self.primary.get().await.ok()?;
        let row = client
            .query_typed_one(store::WAL_POSITION, &[])
            .await
            .ok()?;
        let wal: i64 = row.try_get(0).ok()?;
        self.committed.fetch_max(wal, Ordering::Relaxed);
        *last = Some(began);
        Some(wal)
    }

    /// Runs `query`, one statement over `args`, where it is exact through `at`: on the
    /// replica if it has replayed that far, else on the primary. Counted as `read` in
    /// `/metrics`.
    pub async fn run<A, T>(
        &self,
        at: Position,
        read: Read,
        args: &A,
        query: impl for<'c> Fn(&'c Client, &'c A) -> BoxFuture<'c, Result<T, Error>> + Sync,
    ) -> Result<T, Error>
    where
        A: Sync + ?Sized,
        T: Rows,
    {
        let reason = match (&self.standby, at.0) {
            (Some(standby), Ok(wal)) => match standby.read(wal, args, &query).await {
                Outcome::Read(value) => {
                    self.count(read, Reason::Replayed, &value);
                    return Ok(value);
                }
                Outcome::Primary(reason) => reason,
            },
            (_, Err(reason)) => reason,
            (None, Ok(_)) => Reason::NoReplica,
        };
        let client = self.primary.get().await?;
        let value = query(&client, args).await?;
        self.count(read, reason, &value);
        Ok(value)
    }

    fn count(&self, read: Read, reason: Reason, value: &impl Rows) {
        self.reads[read as usize][reason as usize].inc();
        self.rows[read as usize][reason.source()].add(value.rows());
    }

    /// Appends the reads by source and reason, the rows by source and, with a replica, its
    /// state and lag, in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP pgrelay_reads_total Catch-up, history and whole-message reads, by where they \
             ran (source) and why there (reason: replayed on the replica; no_replica, unknown, \
             unavailable, lagging or failed on the primary).\n# TYPE pgrelay_reads_total counter"
        );
        for (read, counters) in READS.iter().zip(&self.reads) {
            for (index, (reason, counter)) in REASONS.iter().zip(counters).enumerate() {
                let source = SOURCES[usize::from(index != Reason::Replayed as usize)];
                let _ = writeln!(
                    out,
                    "pgrelay_reads_total{{read=\"{read}\",source=\"{source}\",reason=\"{reason}\"}} {}",
                    counter.get()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pgrelay_read_rows_total Rows those reads returned, by source.\n\
             # TYPE pgrelay_read_rows_total counter"
        );
        for (read, counters) in READS.iter().zip(&self.rows) {
            for (source, counter) in SOURCES.iter().zip(counters) {
                let _ = writeln!(
                    out,
                    "pgrelay_read_rows_total{{read=\"{read}\",source=\"{source}\"}} {}",
                    counter.get()
                );
            }
        }
        if let Some(standby) = &self.standby {
            let _ = writeln!(
                out,
                "# HELP pgrelay_primary_position_reads_total Reads of the primary's WAL position \
                 for history and message reads (requests waiting meanwhile share one).\n\
                 # TYPE pgrelay_primary_position_reads_total counter\n\
                 pgrelay_primary_position_reads_total {}",
                self.committed_reads.get()
            );
            self.render_lag(out, standby);
        }
    }

    /// The replica's gauges: usable or not, and how far behind the newest primary position
    /// this instance knows (in bytes of WAL, and in seconds since the last replayed commit
    /// while replay is behind; 0 once it has caught up, however quiet the primary is).
    fn render_lag(&self, out: &mut String, standby: &Standby) {
        let primary = self
            .marks
            .latest()
            .unwrap_or(-1)
            .max(self.committed.load(Ordering::Relaxed));
        let behind = match standby.replayed() {
            Some(replayed) => (primary - replayed).max(0),
            None => 0,
        };
        let seconds = match standby.replayed_commit() {
            Some(commit) if behind > 0 => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |now| now.as_secs_f64());
                (now - commit).max(0.0)
            }
            _ => 0.0,
        };
        let gauges = [
            (
                "pgrelay_replica_up",
                "1 while the read replica answers and is in recovery.",
                f64::from(u8::from(standby.is_up())),
            ),
            (
                "pgrelay_replica_lag_bytes",
                "Bytes of WAL between the newest primary position this instance knows and the replica's replay position.",
                behind as f64,
            ),
            (
                "pgrelay_replica_lag_seconds",
                "Seconds since the commit of the last transaction the replica replayed, while it is behind (0 when caught up).",
                seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}
