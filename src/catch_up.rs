//! Shared catch-up reads: a reconnect storm costs the rows of the log, not streams × rows.
//!
//! After a deploy or a crash every client of an instance comes back at once with its
//! `Last-Event-ID`, and the listener's reconnect asks every open stream to catch up at once.
//! Read one stream at a time, the database reads the same recent rows once per stream (12,000
//! streams: 2 queries and ~4,000 tuples each, to deliver four rows). So, like group commit for
//! publishing (`publisher`), streams whose cursor is recent hand their catch-up to one task,
//! which keeps the recent stretch of the log in memory (the *tail*: every row, whoever it is
//! addressed to, control rows included, in pages of the primary key's range) and answers each
//! stream with its part of one page: the rows with an id above its cursor that its catch-up
//! addresses name, just what its own indexed page query would have returned. The stream applies
//! them as it applies such a page (control rows at their positions included).
//!
//! While one read runs, the next requests gather. Each round reads the log once, forward from
//! the tail's end (or, when a cursor lies below the tail, from the lowest cursor, starting a new
//! tail), with the retention bounds from the same snapshot, and then answers every waiting
//! stream: one read per round however many streams wait, and streams that join late (a storm's
//! reconnects arrive over seconds) find their rows already in memory instead of making the
//! round read them again. The read that answers a request always starts after the request was
//! made, so a stream learns of every row committed before it asked, exactly as its own query
//! would; a page that is not the tail's last, or a cut read, says `more`.
//!
//! Whether a range is worth reading depends on how many streams it serves: it costs the rows
//! from the oldest cursor it serves to the newest id, while each stream's own indexed query
//! costs about what [`ROWS_PER_STREAM`] rows of the range cost. So each round serves the most
//! recent cursors for which the range costs no more than their own queries would (cursors in
//! the tail cost nothing), and sends the others back to their own queries: a stream far behind
//! (one client back after a day) never makes every reader read a day of log. No stream joins a
//! range longer than [`MAX_SHARED_SPAN`].
//!
//! Bounded as the per-stream pages are: a page holds at most [`SHARED_ROWS`] rows and
//! [`SHARED_BYTES`] bytes and reserves its worst case in the instance's page budget (shared by
//! the streams it served until the last of them has sent its part) and one of the `reads`
//! permits while it is read; the tail holds at most [`TAIL_PAGES`] pages (and never more than
//! half of the page budget) and is dropped once no request came for [`TAIL_KEPT`]; at most
//! [`MAX_WAITING`] requests wait (past that a stream reads alone), and a stream's answer holds
//! at most a stream page's worth of its rows and of the budget: the reservations of the pages
//! its rows come from, no more than its own page would reserve (plus the page that reaches it),
//! and a stream asks for its next answer only once its last one is written
//! (`budget::watch_written`), so a client that stops reading holds what its own read would,
//! never the tail or two answers. Fair: every round answers every waiting stream it admits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::budget::{ByteBudget, Reservation, SharedReservation};
use crate::error::Error;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replica::{ExactReads, Position, Read, Through};
use crate::store;

/// Messages read per catch-up query of a stream's own. The query costs about the same for 100
/// rows as for 1,000 (PostgreSQL sorts the participant's matching rows either way), so pages
/// are large.
pub const CATCH_UP_PAGE: i64 = 1000;

/// Most bytes one catch-up page of a stream's own holds, as [`store::page_sql`] counts them
/// (payload, participants and their names; the query cuts the page, so nothing is read
/// twice), plus one message of at most `--max-event-bytes`. Bounds a stream's memory when
/// payloads are large (1,000 × 64 KiB would be 64 MiB), also while its reader does not read;
/// the page budget bounds all streams together. 1 MiB holds 1,000 messages of ten participants
/// and a few hundred bytes: at 256 KiB such a catch-up took four queries and twice the time.
pub const CATCH_UP_BYTES: i64 = 1024 * 1024;

/// Most rows one page of the tail holds: the same as a stream's own page, so a stream served
/// by it holds no more than its own page would.
pub const SHARED_ROWS: i64 = CATCH_UP_PAGE;

/// Most bytes one page of the tail holds (plus one message of `--max-event-bytes`): as much as
/// a stream's own page, which its rows then serve for every stream they concern.
const SHARED_BYTES: i64 = CATCH_UP_BYTES;

/// Most pages the tail keeps (and at most half of the page budget): as far back as
/// [`MAX_SHARED_SPAN`] reaches.
const TAIL_PAGES: usize = 50;

/// How long the tail is kept after the last request: a storm's requests come seconds apart
/// at most; a quiet instance holds no tail.
const TAIL_KEPT: Duration = Duration::from_secs(1);

/// How far below the listener's position (in ids) a stream's cursor may be for it to join a
/// shared read at all: fifty pages. Farther behind, its own indexed query costs what its own
/// messages cost, while the tail would hold every other stream for many rounds.
pub const MAX_SHARED_SPAN: i64 = 50 * SHARED_ROWS;

/// What a stream's own catch-up query costs the database, in rows of a shared range read:
/// a range serves `k` streams when it is at most `k` times this long. Measured with
/// `bench --storm` (`pg_stat_statements`' mean execution times, BENCHMARKS.md): a stream's
/// own page query took 1–11 ms, a page of 1,000 rows of the range about as long (and costs
/// the relay one routing pass, not one query's worth of parsing, planning and sorting).
const ROWS_PER_STREAM: i64 = 1000;

/// How long a request that finds the reader idle waits for others to join it: a reconnect
/// storm's streams arrive over a second or more, not in the same instant.
const GATHER: Duration = Duration::from_millis(2);

/// Most requests waiting for a shared read; past them streams read alone.
const MAX_WAITING: usize = 16 * 1024;

/// The handle streams submit their catch-ups through.
pub struct CatchUps {
    queue: mpsc::Sender<Request>,
}

/// Where an instance reads pages and within what bounds: shared by the catch-up task, every
/// stream's own catch-up and the history routes.
pub struct Reader {
    /// Where the shared reads go: a read replica when it has replayed what the listener
    /// routed, else the primary (as a stream's own catch-up).
    pub exact: Arc<ExactReads>,
    /// Where the listener's position is read: how recent a cursor is.
    pub registry: Arc<Registry>,
    /// The pool connections catch-ups (and history reads) may hold at once, so that however
    /// many readers fall behind, publishing, presence and `/readyz` still get a connection.
    pub reads: Arc<Semaphore>,
    /// The bytes catch-up and history pages may hold at once on this instance: each page
    /// reserves its worst case before it is read, keeps what it holds until it is sent, and
    /// gives back the rest at once.
    pub page_budget: ByteBudget,
    /// Messages larger than this are read as `oversized` stand-ins.
    pub max_event_bytes: i64,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// One stream's catch-up, waiting for a shared read.
struct Request {
    /// The stream's cursor: it wants the rows after it.
    cursor: i64,
    /// What it reads (`Access::catch_up_addresses`).
    addresses: Vec<String>,
    reply: oneshot::Sender<Answer>,
}

/// What a stream gets back.
pub enum Answer {
    /// Its part of a shared read.
    Shared(Share),
    /// Read alone with your own query: the range would cost more than it saves, or the read
    /// failed (the stream's own query then retries and backs off as usual).
    Alone,
}

/// A stream's part of a page of the tail: what its own page query would have returned.
pub struct Share {
    /// The rows after its cursor its addresses name, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Every row up to this id was read: the stream has heard all it may from there down.
    pub through: i64,
    /// Whether more may follow right after `through` (a later page, or a cut read).
    pub more: bool,
    /// The retention bounds of the round's read.
    pub pruned_through: i64,
    pub oldest_id: i64,
    /// The shares of the page budget of the pages its rows came from, held until the stream
    /// has sent them.
    pub reservations: Vec<SharedReservation>,
}

/// What [`Reader::read_page`] reads: the messages after `since` addressed to `addresses`.
pub struct PageQuery<'a> {
    /// Where the read is exact through ([`ExactReads::position`]).
    pub at: Position,
    /// What `/metrics` counts it as.
    pub read: Read,
    /// The rows naming any of these.
    pub addresses: &'a [String],
    /// Whether control rows come too.
    pub rows: store::Rows,
    /// The rows after this id.
    pub since: i64,
    /// Most messages.
    pub limit: i64,
    /// Most bytes, as [`store::page_sql`] counts them.
    pub bytes: i64,
}

impl Reader {
    /// Reads one page of a stream's catch-up or of `GET /v1/messages`: within the page budget
    /// (reserving its worst case first, [`ByteBudget::read_within`]) and one of the `reads`
    /// permits, so that however many read at once they hold at most the budget and a part of
    /// the pool. Returns the page and a reservation of at least what it holds.
    pub async fn read_page(
        &self,
        query: PageQuery<'_>,
    ) -> (Result<store::Page, Error>, Reservation) {
        let worst = store::page_memory(query.limit, query.bytes, self.max_event_bytes);
        let query = &query;
        let read = || async move {
            let _permit = self.reads.acquire().await;
            self.exact
                .run(
                    query.at,
                    query.read,
                    query.addresses,
                    |client, addresses| {
                        Box::pin(store::messages_for(
                            client,
                            addresses,
                            query.rows,
                            query.since,
                            query.limit,
                            query.bytes,
                            self.max_event_bytes,
                        ))
                    },
                )
                .await
        };
        self.page_budget
            .read_within(worst, |_| {}, read, store::Page::memory)
            .await
    }
}

impl CatchUps {
    /// Starts the reading task; it ends when the last handle is dropped.
    pub fn start(reader: Arc<Reader>) -> CatchUps {
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
            reply,
        };
        if self.queue.try_send(request).is_err() {
            return Answer::Alone;
        }
        answer.await.unwrap_or(Answer::Alone)
    }
}

/// One page of the tail: every row of the log with an id in (the previous page's end,
/// `through`].
struct TailPage {
    rows: Vec<Arc<Message>>,
    /// Where each address appears in `rows`, for routing: every (row, name) position, sorted
    /// by the name and then the row, so that the rows naming an address from a given row on are
    /// one run that a binary search finds. It holds 8 bytes a name and no copy of one: a map
    /// from names held each name again, with a list and a table slot, which outgrew the page
    /// itself when no two rows shared a name.
    by_address: Vec<(u32, u32)>,
    through: i64,
    /// Its share of the page budget, and how many bytes that is (its rows and its index).
    reservation: SharedReservation,
    bytes: u64,
}

impl TailPage {
    /// The tail's page of `page`'s rows, up to `through`, keeping of `reservation` what the
    /// rows and their index hold.
    fn new(page: store::Page, through: i64, mut reservation: Reservation) -> TailPage {
        let bytes = TailPage::memory(&page);
        let rows = page.messages;
        let by_address = index(&rows);
        reservation.shrink_to(bytes);
        TailPage {
            rows,
            by_address,
            through,
            reservation: reservation.share(),
            bytes,
        }
    }

    /// What the tail's page of `page` holds: its rows, and at most one entry of the index for
    /// each of their names.
    fn memory(page: &store::Page) -> u64 {
        let names: usize = page.messages.iter().map(|row| row.participants.len()).sum();
        page.memory() + (names * size_of::<(u32, u32)>()) as u64
    }

    /// The positions of the rows from position `first` on that name `address`, ascending.
    fn rows_naming<'a>(
        &'a self,
        address: &'a str,
        first: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let start = self
            .by_address
            .partition_point(|&entry| (self.name(entry), entry.0 as usize) < (address, first));
        self.by_address[start..]
            .iter()
            .take_while(move |&&entry| self.name(entry) == address)
            .map(|&(at, _)| at as usize)
    }

    /// The name an entry of `by_address` points at.
    fn name(&self, (at, n): (u32, u32)) -> &str {
        &self.rows[at as usize].participants[n as usize]
    }
}

/// The (row, name) positions of `rows`' participants, sorted by the name and then the row, a row
/// naming an address twice listed once: [`TailPage::by_address`].
fn index(rows: &[Arc<Message>]) -> Vec<(u32, u32)> {
    let names = rows.iter().map(|row| row.participants.len()).sum();
    // Sorted with each name beside its positions: reached through its row at each comparison,
    // the sort took up to twice as long.
    let mut named: Vec<(&str, u32, u32)> = Vec::with_capacity(names);
    for (at, row) in rows.iter().enumerate() {
        let at = u32::try_from(at).expect("a page holds at most SHARED_ROWS rows");
        for (n, name) in row.participants.iter().enumerate() {
            let n = u32::try_from(n).expect("a PostgreSQL array holds fewer than 2³² names");
            named.push((name, at, n));
        }
    }
    named.sort_unstable();
    named.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    named.into_iter().map(|(_, at, n)| (at, n)).collect()
}

/// The recent stretch of the log held in memory: every row with an id in (`from`, the last
/// page's `through`], in pages, each starting where the one before ends.
#[derive(Default)]
struct Tail {
    from: i64,
    pages: VecDeque<TailPage>,
    /// The bytes the pages hold, their rows and indexes (what each keeps of its reservation).
    bytes: u64,
    /// Whether the last read was cut (more rows follow the last page right away).
    cut: bool,
    /// The highest retention bounds (pruned through, oldest id) any of its reads saw. A
    /// stream's part may come from pages read in earlier rounds, and with a replica a later
    /// round may read a server that has not replayed the prune yet: the tail holds no rows
    /// below the highest bounds, so a stream whose cursor lies below them must hear `reset`.
    pruned: (i64, i64),
}

impl Tail {
    fn through(&self) -> i64 {
        self.pages.back().map_or(self.from, |page| page.through)
    }

    /// Whether the tail holds every row after `cursor` up to its end, `cursor` within it.
    fn covers(&self, cursor: i64) -> bool {
        !self.pages.is_empty() && cursor >= self.from && cursor <= self.through()
    }
}

/// Gathers requests and serves them, one read a round.
async fn run(reader: Arc<Reader>, mut requests: mpsc::Receiver<Request>) {
    let mut waiting: Vec<Request> = Vec::new();
    let mut tail = Tail::default();
    loop {
        if waiting.is_empty() {
            let came =
                tokio::time::timeout(TAIL_KEPT, requests.recv_many(&mut waiting, MAX_WAITING))
                    .await;
            match came {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => {
                    // Quiet: give the tail's memory back, and wait for as long as it takes.
                    tail = Tail::default();
                    if requests.recv_many(&mut waiting, MAX_WAITING).await == 0 {
                        return;
                    }
                }
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
        let alone = admit(&mut waiting, &tail, reader.registry.routed_through());
        for request in alone {
            let _ = request.reply.send(Answer::Alone);
        }
        if !waiting.is_empty() {
            serve(&reader, &mut tail, std::mem::take(&mut waiting)).await;
        }
    }
}

/// Keeps in `waiting` the requests a shared read serves and returns the others: those whose
/// cursor the tail covers, and of the rest the `k` most recent cursors, for the largest `k`
/// whose range (from the `k`-th cursor to `newest`, the listener's position) is at most `k` ×
/// [`ROWS_PER_STREAM`] and [`MAX_SHARED_SPAN`] long.
fn admit(waiting: &mut Vec<Request>, tail: &Tail, newest: i64) -> Vec<Request> {
    waiting.sort_unstable_by_key(|request| std::cmp::Reverse(request.cursor));
    let mut shared = 0;
    for (k, request) in waiting.iter().enumerate() {
        let span = newest.saturating_sub(request.cursor);
        let streams = k as i64 + 1;
        if tail.covers(request.cursor)
            || (span <= MAX_SHARED_SPAN && span <= streams * ROWS_PER_STREAM)
        {
            shared = k + 1;
        }
    }
    waiting.split_off(shared)
}

/// Reads the log for `waiting` once, forward from the tail's end (from the lowest cursor,
/// as a new tail, when one lies below it), and answers every request with its part of the tail.
async fn serve(reader: &Reader, tail: &mut Tail, waiting: Vec<Request>) {
    let lowest = waiting
        .iter()
        .map(|request| request.cursor)
        .min()
        .unwrap_or(0);
    let worst = store::page_memory(SHARED_ROWS, SHARED_BYTES, reader.max_event_bytes);
    // Room for the next page first, so that what the requests are answered from is what the
    // tail holds when it is read.
    make_room(tail, worst, reader.page_budget.total());
    if !tail.covers(lowest) {
        *tail = Tail {
            from: lowest,
            ..Tail::default()
        };
    }
    let bounds = match extend(reader, tail, worst).await {
        Ok(bounds) => {
            tail.pruned = tail.pruned.max(bounds);
            tail.pruned
        }
        Err(error) => {
            tracing::warn!(%error, streams = waiting.len(), "shared catch-up read failed; streams read alone");
            *tail = Tail::default();
            for request in waiting {
                let _ = request.reply.send(Answer::Alone);
            }
            return;
        }
    };
    // What a stream's own page may reserve: a share holds no more of the tail's pages.
    let most_held = store::page_memory(CATCH_UP_PAGE, CATCH_UP_BYTES, reader.max_event_bytes);
    for request in waiting {
        if request.cursor < tail.from {
            // The tail dropped the pages after its cursor to read a page larger than its
            // reservation again (`extend`): its rows are no longer all here.
            let _ = request.reply.send(Answer::Alone);
            continue;
        }
        if tail.cut && request.cursor >= tail.through() {
            // Its rows lie beyond what the tail has read, which grows a page a round: its own
            // page is one read away, and it would wait for the tail to crawl up to it.
            let _ = request.reply.send(Answer::Alone);
            continue;
        }
        let mut share = Share {
            messages: Vec::new(),
            through: request.cursor,
            more: tail.cut,
            pruned_through: bounds.0,
            oldest_id: bounds.1,
            reservations: Vec::new(),
        };
        // Page by page from the first that ends above the cursor, holding the pages its rows
        // come from until they are sent (the others it passes over hold nothing of its).
        let mut held = 0;
        for (at, page) in tail.pages.iter().enumerate() {
            if page.through <= share.through {
                continue;
            }
            let rows = part(page, share.through, &request.addresses);
            if !rows.is_empty() {
                share.messages.extend(rows);
                share.reservations.push(page.reservation.clone());
                held += page.bytes;
            }
            share.through = page.through;
            let full = share.messages.len() as i64 >= SHARED_ROWS || held >= most_held;
            if full && at + 1 < tail.pages.len() {
                // A stream page's worth: the rest in its next round.
                share.more = true;
                break;
            }
        }
        reader.metrics.shared_streams.inc();
        let _ = request.reply.send(Answer::Shared(share));
    }
}

/// Drops the tail's oldest pages until a page of `worst` bytes fits beside it: the tail keeps
/// at most [`TAIL_PAGES`] pages and half of the page budget (`budget` bytes), never the part its
/// own next page needs, so that page's reservation never waits on the tail itself.
fn make_room(tail: &mut Tail, worst: u64, budget: u64) {
    let room = budget / 2;
    while !tail.pages.is_empty()
        && (tail.pages.len() >= TAIL_PAGES || tail.bytes + worst.min(room) > room)
    {
        if let Some(page) = tail.pages.pop_front() {
            tail.from = page.through;
            tail.bytes -= page.bytes;
        }
    }
}

/// Reads the rows after the tail's end into a new page (none when there are none), reserving
/// `worst` bytes for it first; returns the retention bounds (pruned through, oldest id) of the
/// read's snapshot.
async fn extend(reader: &Reader, tail: &mut Tail, worst: u64) -> Result<(i64, i64), Error> {
    let since = tail.through();
    // Found after the requests this read serves were made, so it covers what their inboxes
    // dropped; before the permit, since it may wait for a listener pass.
    let at = reader.exact.position(Through::Routed).await;
    let read = || async move {
        let _permit = reader.reads.acquire().await;
        reader
            .exact
            .run(at, Read::CatchUp, &since, |client, since| {
                Box::pin(store::log_range(
                    client,
                    *since,
                    SHARED_ROWS,
                    SHARED_BYTES,
                    reader.max_event_bytes,
                ))
            })
            .await
    };
    let total = reader.page_budget.total();
    // A page larger than `worst` (its last row is read whatever its size) may be read again
    // under a reservation of its size, which the tail's own pages must not keep from it. (The
    // first `make_room`, for `worst`, finds the room `serve` already made.)
    let (range, reservation) = reader
        .page_budget
        .read_within(
            worst,
            |bytes| make_room(tail, bytes, total),
            read,
            |range| TailPage::memory(&range.page),
        )
        .await;
    let range = range?;
    reader.metrics.catch_up_queries.inc();
    reader.metrics.shared_reads.inc();
    reader
        .metrics
        .shared_rows
        .add(range.page.messages.len() as u64);
    tail.cut = range.page.more;
    let bounds = (range.page.pruned_through, range.oldest_id);
    if let Some(through) = range.page.messages.last().map(|last| last.id) {
        let page = TailPage::new(range.page, through, reservation);
        tail.bytes += page.bytes;
        tail.pages.push_back(page);
    }
    Ok(bounds)
}

/// The rows of `page` after `cursor` that name one of `addresses`, in id order, each once:
/// what `participants && addresses AND id > cursor` selects from the page.
fn part(page: &TailPage, cursor: i64, addresses: &[String]) -> Vec<Arc<Message>> {
    let rows = &page.rows;
    let first = rows.partition_point(|row| row.id <= cursor);
    let mut positions: Vec<usize> = addresses
        .iter()
        .flat_map(|address| page.rows_naming(address, first))
        .collect();
    positions.sort_unstable();
    positions.dedup();
    positions
        .into_iter()
        .map(|at| Arc::clone(&rows[at]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StoredRow;
    use serde_json::value::RawValue;

    fn row(id: i64, participants: &[&str]) -> Arc<Message> {
        let payload = RawValue::from_string("{}".into()).unwrap();
        let message = Message::from_row(StoredRow {
            id,
            kind: "message".into(),
            sender: None,
            participants: participants.iter().map(|p| p.to_string()).collect(),
            payload: Some(&payload),
            created_at: "2026-12-05T00:00:00.000000Z",
            bytes: 2,
            control: false,
        })
        .unwrap();
        Arc::new(message)
    }

    fn request(cursor: i64) -> Request {
        Request {
            cursor,
            addresses: vec!["alice".into()],
            reply: oneshot::channel().0,
        }
    }

    async fn page(rows: Vec<Arc<Message>>) -> TailPage {
        let through = rows.last().map_or(0, |row| row.id);
        let page = store::Page {
            messages: rows,
            more: false,
            pruned_through: 0,
        };
        TailPage::new(
            page,
            through,
            ByteBudget::new(1 << 24).reserve(1 << 24).await,
        )
    }

    /// Ids of the rows `part` gives for `cursor` and `addresses`.
    fn ids(page: &TailPage, cursor: i64, addresses: &[&str]) -> Vec<i64> {
        let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        part(page, cursor, &addresses)
            .iter()
            .map(|m| m.id)
            .collect()
    }

    /// A stream's part of a page is what `participants && addresses AND id > cursor` selects:
    /// after the cursor, any of its addresses, each row once even when it names several.
    #[tokio::test]
    async fn a_part_is_what_the_stream_query_would_select() {
        let page = page(vec![
            row(10, &["alice"]),
            row(11, &["bob"]),
            row(12, &["alice", "#a", "alice"]),
            row(13, &["*"]),
            row(14, &["#a"]),
            row(15, &["#b", "bob", ""]),
        ])
        .await;
        assert_eq!(ids(&page, 0, &["alice", "#a", "*"]), [10, 12, 13, 14]);
        assert_eq!(ids(&page, 12, &["alice", "#a", "*"]), [13, 14]);
        assert_eq!(ids(&page, 0, &["#b"]), [15]);
        assert_eq!(ids(&page, 15, &["bob"]), Vec::<i64>::new());
        // A prefix of a name is another name.
        assert_eq!(ids(&page, 0, &["al", "alicex", "#"]), Vec::<i64>::new());
        assert_eq!(ids(&page, 0, &[""]), [15]);
    }

    /// The same against a plain filter, over a page of names drawn from a small alphabet (so
    /// that names repeat, share prefixes and recur within a row), from cursors before, inside
    /// and after it.
    #[tokio::test]
    async fn a_part_matches_a_plain_filter() {
        let alphabet = [
            "", "a", "al", "alice", "Alice", "alié", "*", "#a", "#b", "b",
        ];
        let mut seed: u64 = 7;
        let mut next = |below: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % below
        };
        let rows: Vec<Arc<Message>> = (1..=300)
            .map(|id| {
                let names: Vec<&str> = (0..1 + next(4)).map(|_| alphabet[next(10)]).collect();
                row(id, &names)
            })
            .collect();
        let page = page(rows.clone()).await;
        let rows_memory: u64 = rows.iter().map(|row| row.memory()).sum();
        assert!(
            page.bytes > rows_memory,
            "the page counts its index beside its rows"
        );
        for cursor in (0..=300).step_by(7).chain([300, 301]) {
            let addresses = [alphabet[next(10)], alphabet[next(10)]];
            let expected: Vec<i64> = rows
                .iter()
                .filter(|row| row.id > cursor)
                .filter(|row| {
                    row.participants
                        .iter()
                        .any(|p| addresses.contains(&p.as_str()))
                })
                .map(|row| row.id)
                .collect();
            assert_eq!(
                ids(&page, cursor, &addresses),
                expected,
                "{addresses:?} after {cursor}"
            );
        }
    }

    /// A round shares the most recent cursors while the range costs no more than their own
    /// queries; a cursor far behind reads alone, and one the tail covers always shares.
    #[test]
    fn the_far_behind_read_alone() {
        let mut waiting = vec![request(9_990), request(9_995), request(1_000)];
        let alone = admit(&mut waiting, &Tail::default(), 10_000);
        let shared: Vec<i64> = waiting.iter().map(|r| r.cursor).collect();
        assert_eq!(shared, [9_995, 9_990]);
        assert_eq!(alone.iter().map(|r| r.cursor).collect::<Vec<_>>(), [1_000]);

        // Twenty streams 10,000 ids behind: the range costs less than their own queries.
        let mut waiting: Vec<Request> = (0..20).map(|_| request(0)).collect();
        assert!(admit(&mut waiting, &Tail::default(), 10_000).is_empty());
        // One far behind past the limit never shares, however many wait.
        let mut waiting: Vec<Request> = (0..100).map(|_| request(0)).collect();
        assert_eq!(admit(&mut waiting, &Tail::default(), 1_000_000).len(), 100);
    }
}
