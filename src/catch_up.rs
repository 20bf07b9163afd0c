//! Shared catch-up reads: a reconnect storm costs the rows of the log, not streams × rows.
//!
//! After a deploy or a crash every client of an instance comes back at once with its
//! `Last-Event-ID`, and the listener's reconnect asks every open stream to catch up at once.
//! Read one stream at a time, the database reads the same recent rows once per stream (12,000
//! streams: 2 queries and ~4,000 tuples each, to deliver four rows). So, like group commit for
//! publishing (`publisher`), streams whose cursor is recent hand their catch-up to one task:
//! while a read runs, the next requests gather; the next read takes the log's rows after the
//! smallest of their cursors by the primary key's range alone, whoever they are addressed to
//! (control rows included), with the retention bounds from the same snapshot; and the task
//! routes them in memory, each stream getting the rows with an id above its cursor that its
//! catch-up addresses name, just what its own indexed page query would have returned. The
//! stream applies them as it applies such a page (control rows at their positions included).
//!
//! A stream far behind the newest id keeps its own indexed query (see
//! [`SHARED_SPAN`]): one client back after a day must not make every reader read a day of log.
//! A request that arrives alone, with nobody to share with, is also sent back to its indexed
//! query, which for one reader costs less than a range.
//!
//! Bounded as the per-stream pages are: a read takes at most [`SHARED_ROWS`] rows and
//! [`SHARED_BYTES`] bytes, reserves its worst case in the instance's page budget (shared by the
//! streams it served until the last of them has sent its part) and one of the `reads` permits,
//! and at most [`MAX_WAITING`] requests wait (past that a stream reads alone). Fair: each read
//! serves every waiting stream whose cursor lies below its last row, and a stream that a read
//! cut short of it waits at most [`MAX_ROUNDS`] reads before it reads alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::budget::{ByteBudget, SharedReservation};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::store::{self, DbPool};

/// Most rows one shared read takes: the same as a stream's own page, so a stream served by it
/// holds no more than its own page would.
pub const SHARED_ROWS: i64 = 1000;

/// Most bytes of payload and participants one shared read takes (plus one message of
/// `--max-event-bytes`). The rows are held once for all the streams they serve, so this is
/// four stream pages' worth.
const SHARED_BYTES: i64 = 1024 * 1024;

/// How far below the listener's position (in ids) a stream's cursor may be for it to join a
/// shared read. Farther behind, its own indexed query costs what its own messages cost, while
/// a range would read everyone's rows between: a shared read of 5,000 ids costs about as
/// much as a dozen streams' own queries, and a storm is hundreds or thousands of streams a
/// few seconds behind.
pub const SHARED_SPAN: i64 = 5 * SHARED_ROWS;

/// How long a request that finds the reader idle waits for others to join it: a reconnect
/// storm's streams arrive over a second or more, not in the same instant.
const GATHER: Duration = Duration::from_millis(2);

/// Fewest requests a read is shared by; fewer go back to their own indexed queries.
const MIN_SHARED: usize = 3;

/// Most reads a stream waits for while reads are cut short below its cursor.
const MAX_ROUNDS: u32 = 3;

/// Most requests waiting for a shared read; past them streams read alone.
const MAX_WAITING: usize = 16 * 1024;

/// The handle streams submit their catch-ups through.
pub struct CatchUps {
    queue: mpsc::Sender<Request>,
}

/// What the reading task needs: where to read, what it may hold, what it counts.
pub struct Reader {
    pub pool: DbPool,
    /// The pool connections catch-ups may hold at once (shared with the streams' own queries).
    pub reads: Arc<Semaphore>,
    /// The instance's page budget (shared with the streams' own pages).
    pub page_budget: Arc<ByteBudget>,
    /// Messages larger than this are read as `oversized` stand-ins.
    pub max_event_bytes: i64,
    pub metrics: Arc<Metrics>,
}

/// One stream's catch-up, waiting for a shared read.
struct Request {
    /// The stream's cursor: it wants the rows after it.
    cursor: i64,
    /// What it reads (`Access::catch_up_addresses`).
    addresses: Vec<String>,
    /// Reads that were cut short below its cursor.
    rounds: u32,
    reply: oneshot::Sender<Answer>,
}

/// What a stream gets back.
pub enum Answer {
    /// Its part of a shared read.
    Shared(Share),
    /// Read alone with your own query: nobody to share with, waited too long, or the read
    /// failed (the stream's own query then retries and backs off as usual).
    Alone,
}

/// A stream's part of a shared read: what its own page query would have returned.
pub struct Share {
    /// The rows after its cursor its addresses name, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Every row up to this id was read: the stream has heard all it may from there down.
    pub through: i64,
    /// Whether the read was cut: more may follow right after `through`.
    pub more: bool,
    /// The retention bounds of the read's snapshot.
    pub pruned_through: i64,
    pub oldest_id: i64,
    /// The read's share of the page budget, held until the stream has sent these rows.
    pub reservation: SharedReservation,
}

impl CatchUps {
    /// Starts the reading task; it ends when the last handle is dropped.
    pub fn start(reader: Reader) -> CatchUps {
        let (queue, requests) = mpsc::channel(MAX_WAITING);
        tokio::spawn(run(reader, requests));
        CatchUps { queue }
    }

    /// Catches up from `cursor` for `addresses` in a shared read; [`Answer::Alone`] when the
    /// stream should read alone.
    pub async fn catch_up(&self, cursor: i64, addresses: Vec<String>) -> Answer {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            cursor,
            addresses,
            rounds: 0,
            reply,
        };
        if self.queue.try_send(request).is_err() {
            return Answer::Alone;
        }
        answer.await.unwrap_or(Answer::Alone)
    }
}

/// Gathers requests and serves them, one read at a time.
async fn run(reader: Reader, mut requests: mpsc::Receiver<Request>) {
    let mut waiting: Vec<Request> = Vec::new();
    loop {
        if waiting.is_empty() {
            if requests.recv_many(&mut waiting, MAX_WAITING).await == 0 {
                return;
            }
            tokio::time::sleep(GATHER).await;
        }
        while waiting.len() < MAX_WAITING {
            match requests.try_recv() {
                Ok(request) => waiting.push(request),
                Err(_) => break,
            }
        }
        // A stream that went away (its client left, shutdown) no longer waits.
        waiting.retain(|request| !request.reply.is_closed());
        if waiting.len() < MIN_SHARED && waiting.iter().all(|request| request.rounds == 0) {
            for request in waiting.drain(..) {
                let _ = request.reply.send(Answer::Alone);
            }
            continue;
        }
        waiting = serve(&reader, waiting).await;
    }
}

/// Runs one shared read for `waiting` and answers every request it covers; returns those it
/// does not cover yet (the read was cut below their cursors).
async fn serve(reader: &Reader, waiting: Vec<Request>) -> Vec<Request> {
    let since = waiting
        .iter()
        .map(|request| request.cursor)
        .min()
        .unwrap_or(0);
    let worst = store::page_memory(SHARED_ROWS, SHARED_BYTES, reader.max_event_bytes);
    let mut reservation = reader.page_budget.reserve(worst).await;
    let range = {
        let _permit = reader.reads.acquire().await;
        store::log_range(
            &reader.pool,
            since,
            SHARED_ROWS,
            SHARED_BYTES,
            reader.max_event_bytes,
        )
        .await
    };
    reader.metrics.catch_up_queries.inc();
    reader.metrics.shared_reads.inc();
    let range = match range {
        Ok(range) => range,
        Err(error) => {
            tracing::warn!(%error, streams = waiting.len(), "shared catch-up read failed; streams read alone");
            for request in waiting {
                let _ = request.reply.send(Answer::Alone);
            }
            return Vec::new();
        }
    };
    reservation.shrink_to(range.page.memory());
    let reservation = reservation.share();
    let rows = &range.page.messages;
    reader.metrics.shared_rows.add(rows.len() as u64);
    let through = rows.last().map_or(since, |row| row.id);
    let by_address = index(rows);
    let mut later = Vec::new();
    for mut request in waiting {
        if range.page.more && request.cursor >= through {
            request.rounds += 1;
            if request.rounds >= MAX_ROUNDS {
                let _ = request.reply.send(Answer::Alone);
            } else {
                later.push(request);
            }
            continue;
        }
        reader.metrics.shared_streams.inc();
        let share = Share {
            messages: part(rows, &by_address, &request),
            through: through.max(request.cursor),
            more: range.page.more,
            pruned_through: range.page.pruned_through,
            oldest_id: range.oldest_id,
            reservation: reservation.clone(),
        };
        let _ = request.reply.send(Answer::Shared(share));
    }
    later
}

/// Address → the positions in `rows` of the rows that name it, ascending.
fn index(rows: &[Arc<Message>]) -> HashMap<&str, Vec<usize>> {
    let mut by_address: HashMap<&str, Vec<usize>> = HashMap::new();
    for (at, row) in rows.iter().enumerate() {
        for address in &row.participants {
            let positions = by_address.entry(address.as_str()).or_default();
            // A row naming an address twice is listed once.
            if positions.last() != Some(&at) {
                positions.push(at);
            }
        }
    }
    by_address
}

/// The rows after `request`'s cursor that name one of its addresses, in id order, each once:
/// what `participants && addresses AND id > cursor` selects from `rows`.
fn part(
    rows: &[Arc<Message>],
    by_address: &HashMap<&str, Vec<usize>>,
    request: &Request,
) -> Vec<Arc<Message>> {
    let first = rows.partition_point(|row| row.id <= request.cursor);
    let mut positions: Vec<usize> = request
        .addresses
        .iter()
        .filter_map(|address| by_address.get(address.as_str()))
        .flat_map(|positions| {
            let start = positions.partition_point(|&at| at < first);
            positions[start..].iter().copied()
        })
        .collect();
    positions.sort_unstable();
    positions.dedup();
    positions
        .into_iter()
        .map(|at| Arc::clone(&rows[at]))
        .collect()
}
