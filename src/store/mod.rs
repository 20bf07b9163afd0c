//! The query pool and every query the relay runs against pgrelay's tables.
//!
//! Pool queries use `query_typed`, which sends the unnamed statement with explicit parameter
//! types: named prepared statements break behind PgBouncer in transaction mode, and the
//! unnamed statement costs no extra round trip. The only prepared statements are the
//! dispatcher's ([`prepare_news`]), which run on the LISTEN connection: that
//! is always a session of its own (LISTEN does not work through a transaction-mode pooler),
//! and the fetch runs for every batch of wake-ups, where parsing and planning each time cost the
//! database more than executing.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::value::RawValue;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, Row};

use crate::error::Error;
use crate::message::{Message, NewMessage, StoredRow, MESSAGE_OVERHEAD, NAME_OVERHEAD};
use crate::tls;

mod news;
mod publish;
mod whole;

pub use news::{
    news, news_position, prepare_news, NewsPosition, NewsStatements, PassLimits, WAL_POSITION,
};
pub use publish::{publish, publish_all, Author, IdempotencyKey, Outgoing, Published};
pub use whole::{message_size, whole_message};

/// The pool of query connections, shared by every request and stream.
pub type DbPool = Pool;

/// Columns every message query selects, in the order `message_from_row` reads them: the
/// payload is NULL when the message is over the page's `max_event_bytes` (see [`page_sql`]).
/// `created_at` is formatted in SQL so the answer does not depend on the session's TimeZone.
const MESSAGE_COLUMNS: &str = "id, kind, sender, participants, \
     CASE WHEN size > $MAX_EVENT AND NOT control THEN NULL ELSE payload END, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// A message's size as the relay measures it: the bytes of its payload's JSON text and of its
/// participants' text, which is what reading it whole costs the relay (the JSON arrives as
/// text). Measured on the rendered text, not with `pg_column_size`: that is the compressed
/// size, and a payload of 40 MB that compresses to 1 MB would pass for small. The price is
/// that PostgreSQL renders each payload it measures (reading a 40 MB row costs the database
/// about as much as before; the relay, nothing).
pub(crate) const MESSAGE_SIZE: &str =
    "octet_length(m.payload::text) + octet_length(m.participants::text)";

/// What a message costs the relay beyond [`MESSAGE_SIZE`] once read, in SQL, for a page's
/// cut: each participant is also a name in the message's list ([`NAME_OVERHEAD`] beyond its
/// bytes), and the sender, in the event's JSON and its frame, may take two bytes a character
/// there (`"` and `\` are escaped).
fn held_beyond_size() -> String {
    format!(
        "octet_length(m.participants::text) + {NAME_OVERHEAD} * cardinality(m.participants) \
         + 2 * coalesce(octet_length(m.sender), 0)"
    )
}

/// The messages `source` selects (rows of `pgrelay.messages`, in id order, at most `$rows`
/// of them), cut to `$bytes` of payload and participants (always at least one row), plus how
/// many rows the row limit alone would have given. The cut happens in SQL, so a page of large
/// messages is never read only to be thrown away. `$bytes` is the parameter numbered `bytes`.
///
/// A message larger than `$max_event` bytes ([`MESSAGE_SIZE`]) comes without its payload: the
/// relay makes its `oversized` stand-in and never loads the payload, and the page counts only
/// its participants. So a page holds at most `$bytes` plus one message of `$max_event` bytes.
/// A control row ([`crate::message::Control`], written by pgrelay's SQL: a participant's
/// rooms or a revocation) always comes whole: the relay needs it to apply it.
pub(crate) fn page_sql(source: &str, bytes: u8, max_event: u8) -> String {
    // Typed here, for clients that let PostgreSQL infer the parameters' types (the sizes are
    // `integer`; the limit is `bigint`).
    let columns = MESSAGE_COLUMNS.replace("$MAX_EVENT", &format!("${max_event}::int8"));
    let held = held_beyond_size();
    format!(
        "SELECT {columns}, (extract(epoch FROM committed_at) * 1000000)::int8, fetched, \
                size::int8, control \
         FROM (SELECT m.*, s.size, s.loaded, sum(s.loaded) OVER (ORDER BY m.id) AS upto, \
                      count(*) OVER () AS fetched \
                 FROM ({source}) m, \
                      LATERAL (SELECT size, \
                                      CASE WHEN size > ${max_event}::int8 AND NOT m.control \
                                           THEN octet_length(m.participants::text) \
                                           ELSE size END + {held} AS loaded \
                                 FROM (SELECT {MESSAGE_SIZE} AS size) measured) s) page \
         WHERE upto - loaded < ${bytes} ORDER BY id"
    )
}

/// The first `$rows` messages matching `filter`, for [`page_sql`].
pub(crate) fn matching(filter: &str, rows: u8) -> String {
    format!("SELECT * FROM pgrelay.messages WHERE {filter} ORDER BY id LIMIT ${rows}")
}

/// Column index of the commit time (microseconds since the epoch) in a [`page_sql`] row.
pub(crate) const COMMITTED_AT: usize = 6;
/// Column index of the row limit's count in a [`page_sql`] row.
pub(crate) const FETCHED: usize = 7;
/// Column index of the message's size ([`MESSAGE_SIZE`]) in a [`page_sql`] row.
pub(crate) const SIZE: usize = 8;
/// Column index of the row's `control` flag in a [`page_sql`] row.
pub(crate) const CONTROL: usize = 9;

/// The most memory a page of at most `rows` messages, cut at `bytes` (their payloads,
/// participants and names as [`page_sql`] measures them), can take while it is converted and
/// sent, messages over `max_event_bytes` being stand-ins: twice its size (each message's JSON,
/// then the frame rendered from it; or the rows the driver read, then the messages made from
/// them). The cut counts the rows before a row, so a page holds its last row whatever that
/// row's size: a stand-in with thousands of long names can take more than this, and
/// [`Page::memory`] then says so (`ByteBudget::read_within` then reserves the rest).
pub fn page_memory(rows: i64, bytes: i64, max_event_bytes: i64) -> u64 {
    let rows = rows.max(1) as u64;
    2 * (bytes.max(0) as u64 + max_event_bytes.max(0) as u64 + rows * MESSAGE_OVERHEAD as u64)
}

/// A page of messages in id order.
pub struct Page {
    /// The messages, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Whether more may follow right after the last one (the page hit its row or byte limit).
    pub more: bool,
    /// The highest id retention had removed when the page was read (same snapshot): a reader
    /// whose position is below it may have lost messages it never saw.
    pub pruned_through: i64,
}

impl Page {
    /// The memory this page takes while it is sent ([`Message::memory`]).
    pub fn memory(&self) -> u64 {
        self.messages.iter().map(|message| message.memory()).sum()
    }

    /// Reads the rows of [`with_pruned_through`]: column 0 the bound, the message from column
    /// `at` (all NULL in the one row of an empty page).
    fn from_rows(rows: &[Row], limit: i64, at: usize) -> Result<Page, Error> {
        let pruned_through = match rows.first() {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        let found: Vec<&Row> = rows
            .iter()
            .filter(|row| matches!(row.try_get::<_, Option<i64>>(at), Ok(Some(_))))
            .collect();
        let fetched = match found.first() {
            Some(row) => row.try_get::<_, i64>(at + FETCHED)?,
            None => 0,
        };
        Ok(Page {
            more: fetched == limit || (found.len() as i64) < fetched,
            messages: found
                .into_iter()
                .map(|row| message_from_row(row, at))
                .collect::<Result<_, _>>()?,
            pruned_through,
        })
    }
}

/// `page` (a [`page_sql`] query) with `pgrelay.retention.pruned_through` in front of every row,
/// and one row of NULLs when the page is empty, so the bound comes from the same snapshot.
fn with_pruned_through(page: &str) -> String {
    format!(
        "SELECT r.pruned_through, page.* FROM pgrelay.retention r \
           LEFT JOIN ({page}) page ON true ORDER BY page.id"
    )
}

/// Reads the message of the [`page_sql`] row that starts at column `at` of `row`: the message
/// itself, or its `oversized` stand-in when the page left its payload out.
pub(crate) fn message_from_row(row: &Row, at: usize) -> Result<Arc<Message>, Error> {
    let payload: Option<Json<Box<RawValue>>> = row.try_get(at + 4)?;
    let payload = payload.map(|Json(payload)| payload);
    let message = Message::from_row(StoredRow {
        id: row.try_get(at)?,
        kind: row.try_get(at + 1)?,
        sender: row.try_get(at + 2)?,
        participants: row.try_get(at + 3)?,
        payload: payload.as_deref(),
        created_at: row.try_get(at + 5)?,
        bytes: row.try_get(at + SIZE)?,
        control: row.try_get(at + CONTROL)?,
    })?;
    Ok(Arc::new(message))
}

/// Builds the query pool. Connections name themselves `pgrelay` in `pg_stat_activity` unless
/// the URL already sets an `application_name`.
pub fn connect_pool(database_url: &str, size: usize) -> Result<DbPool, Error> {
    let (mut config, tls) = tls::connect_config(database_url)?;
    if config.get_application_name().is_none() {
        config.application_name("pgrelay");
    }
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(30));
    let manager = Manager::from_config(
        config,
        tls,
        // Fast: a broken connection is found by the query that uses it and then discarded.
        // (Clean would run `UNLISTEN *` and `DISCARD`, pointless for a pool that never LISTENs.)
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|error| Error::setup(format!("cannot build the connection pool: {error}")))
}

/// Which rows a page of [`messages_for`] holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rows {
    /// Messages and control rows (a participant's rooms, a revocation): what a stream applies
    /// at their positions.
    WithControl,
    /// Messages only: what `GET /v1/messages` lists, so that a full page has `limit` of them.
    MessagesOnly,
}

/// Rows (as `rows` says) addressed to any of `addresses` with `id > since`, oldest first: at most `limit`
/// rows and `max_bytes` of payload and participants (but always one, if there is one), each
/// larger than `max_event_bytes` as its `oversized` stand-in. One statement, so it may run on a
/// replica inside the transaction that checks its replay (`crate::replica`).
pub async fn messages_for(
    client: &Client,
    addresses: &[String],
    rows: Rows,
    since: i64,
    limit: i64,
    max_bytes: i64,
    max_event_bytes: i64,
) -> Result<Page, Error> {
    let sql = with_pruned_through(&messages_sql(addresses.len(), rows));
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&since, Type::INT8),
        (&limit, Type::INT8),
        (&max_bytes, Type::INT8),
        (&max_event_bytes, Type::INT8),
    ];
    if addresses.len() > MAX_ADDRESS_BRANCHES {
        params.push((&addresses, Type::TEXT_ARRAY));
    } else {
        params.extend(
            addresses
                .iter()
                .map(|a| (a as &(dyn ToSql + Sync), Type::TEXT)),
        );
    }
    let rows = client.query_typed(&sql, &params).await?;
    Page::from_rows(&rows, limit, 1)
}

/// A stretch of the log read for many readers at once: see [`log_range`].
pub struct Range {
    /// Every row (messages and control rows) after the start, in id order, as a page of
    /// [`messages_for`] holds them.
    pub page: Page,
    /// The oldest id still stored, from the same snapshot: what `history_truncated` names.
    pub oldest_id: i64,
}

/// Every row with `id > since`, whoever it is addressed to, oldest first: at most `limit`
/// rows and `max_bytes` of payload and participants (always one, if there is one), each larger
/// than `max_event_bytes` as its `oversized` stand-in; with the retention bounds read in the same
/// snapshot. The primary key's range alone: it costs the rows read, not the readers served.
pub async fn log_range(
    client: &Client,
    since: i64,
    limit: i64,
    max_bytes: i64,
    max_event_bytes: i64,
) -> Result<Range, Error> {
    let page = page_sql(&matching("id > $1", 2), 3, 4);
    let sql = format!(
        "SELECT r.pruned_through, \
                coalesce((SELECT min(id) FROM pgrelay.messages WHERE id > 0), 0)::int8, page.* \
           FROM pgrelay.retention r LEFT JOIN ({page}) page ON true ORDER BY page.id"
    );
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&since, Type::INT8),
        (&limit, Type::INT8),
        (&max_bytes, Type::INT8),
        (&max_event_bytes, Type::INT8),
    ];
    let rows = client.query_typed(&sql, &params).await?;
    let oldest_id = match rows.first() {
        Some(row) => row.try_get(1)?,
        None => 0,
    };
    Ok(Range {
        page: Page::from_rows(&rows, limit, 2)?,
        oldest_id,
    })
}

/// Most addresses [`messages_sql`] gives a branch of their own.
const MAX_ADDRESS_BRANCHES: usize = 64;

/// The query of [`messages_for`] for `addresses` addresses holding the rows `rows` says, with
/// `$1` the position, `$2` the row limit, `$3` the byte limit, `$4` the largest message read
/// whole and `$5`… the addresses (or, past 64 of them, `$5` an array).
///
/// One branch per address, each the first `$2` messages of that address after `$1`, found through
/// the GIN index on `participants` (or, for a recent `$1`, the primary key's range), planned
/// with that address's own statistics. `ORDER BY id + 0` keeps PostgreSQL from the plan it
/// otherwise picks for a name it has no statistics for: walking the primary key in order and
/// filtering, hoping to meet `$2` matches early, which for a quiet room or an address with no
/// rows at all reads the whole table (measured in a 1,000,000-row outbox: 1.4 s for a member
/// of 20 rooms; a single `participants && $addresses`, 1.9 s). A branch now costs what its
/// address has after `$1`. (Past 64 addresses, one `&&` keeps the statement small.)
fn messages_sql(addresses: usize, rows: Rows) -> String {
    let which = match rows {
        Rows::WithControl => "",
        Rows::MessagesOnly => " AND NOT control",
    };
    if addresses > MAX_ADDRESS_BRANCHES {
        return page_sql(
            &matching(&format!("participants && $5::text[] AND id > $1{which}"), 2),
            3,
            4,
        );
    }
    let branches: Vec<String> = (0..addresses)
        .map(|k| {
            format!(
                "(SELECT * FROM pgrelay.messages WHERE participants @> ARRAY[${}::text] \
                   AND id > $1{which} ORDER BY id + 0 LIMIT $2)",
                k + 5
            )
        })
        .collect();
    // A message to several of the addresses comes out of several branches: once it is.
    let source = format!(
        "SELECT DISTINCT ON (id) * FROM ({}) branches ORDER BY id LIMIT $2",
        branches.join(" UNION ALL ")
    );
    page_sql(&source, 3, 4)
}

/// The plan lines of `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)` for the page of at most `limit`
/// messages after `since` for `addresses`, read as a catch-up reads it (1 MiB, messages up
/// to 1 MiB whole): what the tests and the benchmark check the relay's plans by.
#[cfg(any(test, feature = "internals"))]
pub async fn explain_messages_for(
    client: &Client,
    addresses: &[String],
    since: i64,
    limit: i64,
) -> Result<Vec<String>, Error> {
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        messages_sql(addresses.len(), Rows::WithControl)
    );
    let (bytes, max_event): (i64, i64) = (1024 * 1024, 1024 * 1024);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since, &limit, &bytes, &max_event];
    params.extend(addresses.iter().map(|a| a as &(dyn ToSql + Sync)));
    let rows = client.query(&sql, &params).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// What a resuming stream checks its position against.
#[derive(Debug, Clone, Copy)]
pub struct RetentionBounds {
    /// The highest id removed by retention pruning.
    pub pruned_through: i64,
    /// The oldest id still stored (0 if none).
    pub oldest_id: i64,
    /// The newest numbered id (0 if none: a pending row's negative placeholder is no
    /// position).
    pub newest_id: i64,
    /// The highest id ever drawn (committed or not): no client can have seen a larger one.
    pub highest_issued: i64,
}

/// The retention bounds, in one round trip.
pub async fn retention_bounds(pool: &DbPool) -> Result<RetentionBounds, Error> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT pruned_through, \
                    coalesce((SELECT min(id) FROM pgrelay.messages WHERE id > 0), 0)::int8, \
                    coalesce((SELECT max(id) FROM pgrelay.messages WHERE id > 0), 0)::int8, \
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END \
                       FROM pgrelay.message_id_seq)::int8 \
             FROM pgrelay.retention",
            &[],
        )
        .await?;
    Ok(RetentionBounds {
        pruned_through: row.try_get(0)?,
        oldest_id: row.try_get(1)?,
        newest_id: row.try_get(2)?,
        highest_issued: row.try_get(3)?,
    })
}

/// Sends a signal (a message that is never stored) through `pgrelay.signal`.
pub async fn signal(pool: &DbPool, signal: &NewMessage) -> Result<(), Error> {
    let client = pool.get().await?;
    let payload = Json(&*signal.payload);
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&signal.participants, Type::TEXT_ARRAY),
        (&signal.kind, Type::TEXT),
        (&payload, Type::JSONB),
        (&signal.sender, Type::TEXT),
    ];
    client
        .query_typed("SELECT pgrelay.signal($1, $2, $3, $4)::text", &params)
        .await?;
    Ok(())
}

/// What `GET /v1/presence` reports about one participant.
pub struct PresenceState {
    /// The participant asked about.
    pub participant: String,
    /// Whether the caller may see this participant (one of its addresses in their audience,
    /// or themselves): `pgrelay.presence_visible`, which answers without computing the
    /// audience.
    pub visible: bool,
    /// Online since (RFC 3339), when online.
    pub since: Option<String>,
    /// Last seen (RFC 3339), when offline and ever seen.
    pub last_seen: Option<String>,
}

/// The presence of `participants` as seen by `caller`, whose stream would hear `addresses`
/// (its name, its rooms, `*`), in the order asked.
pub async fn presence(
    pool: &DbPool,
    caller: &str,
    addresses: &[String],
    participants: &[String],
    ttl: Duration,
) -> Result<Vec<PresenceState>, Error> {
    let client = pool.get().await?;
    let ttl = ttl.as_secs_f64();
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&participants, Type::TEXT_ARRAY),
        (&caller, Type::TEXT),
        (&ttl, Type::FLOAT8),
        (&addresses, Type::TEXT_ARRAY),
    ];
    // Visible to the caller when any of its addresses is in the audience: a presence change is
    // addressed to the audience, and reaches every stream with one of those addresses.
    let rows = client
        .query_typed(
            "SELECT p, \
                    p = $2 OR EXISTS (SELECT 1 FROM unnest($4::text[]) a \
                                       WHERE coalesce(pgrelay.presence_visible(p, a), false)), \
                    to_char((SELECT min(since) FROM pgrelay.presence x \
                              WHERE x.participant = p \
                                AND x.heartbeat_at > now() - make_interval(secs => $3)) \
                            AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    to_char((SELECT last_seen FROM pgrelay.presence_last_seen l WHERE l.participant = p) \
                            AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM unnest($1::text[]) WITH ORDINALITY AS asked(p, n) ORDER BY n",
            &params,
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PresenceState {
                participant: row.try_get(0)?,
                visible: row.try_get(1)?,
                since: row.try_get(2)?,
                last_seen: row.try_get(3)?,
            })
        })
        .collect()
}

/// What decides a request's access, read in one statement (one snapshot): whether the token
/// is revoked, the rooms `pgrelay.member_rooms` says the participant belongs to (the app's
/// membership), the newest membership version recorded for it, and the newest message id.
pub struct AccessNow {
    /// Whether `pgrelay.revocations` refuses a token of this participant with this `iat`.
    pub revoked: bool,
    /// `pgrelay.member_rooms(participant)`; empty when not asked for.
    pub member_rooms: Vec<String>,
    /// The newest version among the participant's recorded membership sets (0 for none): the
    /// member rooms above already show every change up to it (sql/0010_live_access.sql).
    pub version: i64,
    /// The newest numbered message id (0 if none), read before `member_rooms` ran: every
    /// change numbered after it may be missing from the rooms above, and a stream opening now
    /// applies those.
    pub newest_id: i64,
}

/// Whose access to read: a participant holding a token issued at `issued_at` (seconds since
/// the epoch, `None` without `iat`), with `member_rooms` only when `with_rooms` (publishing
/// direct messages does not need it).
#[derive(Debug, Clone)]
pub struct AccessQuery {
    pub participant: String,
    pub issued_at: Option<u64>,
    pub with_rooms: bool,
}

/// Reads [`AccessNow`] for each of `asked`, in order, in one statement (one snapshot, one
/// round trip however many there are: a reconnect storm's opens read their access together).
/// The revocation check is a primary-key lookup in the same statement, so it adds nothing.
/// The newest id comes after `member_rooms` in the select list, as it did for one
/// participant: an uncorrelated subquery, evaluated once, when the first row reaches it.
pub async fn access_now(pool: &DbPool, asked: &[AccessQuery]) -> Result<Vec<AccessNow>, Error> {
    let client = pool.get().await?;
    let participants: Vec<&str> = asked.iter().map(|a| a.participant.as_str()).collect();
    let issued_at: Vec<Option<f64>> = asked
        .iter()
        .map(|a| a.issued_at.map(|at| at as f64))
        .collect();
    let with_rooms: Vec<bool> = asked.iter().map(|a| a.with_rooms).collect();
    let rows = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pgrelay.revocations r WHERE r.participant = a.p \
                              AND (a.iat IS NULL \
                                   OR a.iat < extract(epoch FROM r.issued_before))), \
                    CASE WHEN a.rooms THEN coalesce(pgrelay.member_rooms(a.p), '{}') END, \
                    coalesce((SELECT max((payload ->> 'version')::int8) FROM pgrelay.messages \
                               WHERE control AND kind = 'rooms' \
                                 AND participants[1] = a.p), 0), \
                    coalesce((SELECT max(id) FROM pgrelay.messages WHERE id > 0), 0)::int8 \
               FROM unnest($1::text[], $2::float8[], $3::bool[]) \
                    WITH ORDINALITY AS a(p, iat, rooms, n) \
              ORDER BY a.n",
            &[
                (&participants, Type::TEXT_ARRAY),
                (&issued_at, Type::FLOAT8_ARRAY),
                (&with_rooms, Type::BOOL_ARRAY),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let rooms: Option<Vec<Option<String>>> = row.try_get(1)?;
            Ok(AccessNow {
                revoked: row.try_get(0)?,
                member_rooms: rooms.into_iter().flatten().flatten().collect(),
                version: row.try_get(2)?,
                newest_id: row.try_get(3)?,
            })
        })
        .collect()
}

/// Whether the database answers a trivial query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        client.query_typed("SELECT 1", &[]).await.ok()
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{connect, fresh_database};

    /// Catch-up over many addresses probes the GIN index on `participants` once per address: a
    /// member of 20 quiet rooms must not make PostgreSQL walk the whole table, as a single
    /// `participants && addresses` did (it estimates the overlap of many rare names as common).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_over_many_addresses_probes_the_participants_index() {
        let db = fresh_database().await;
        let client = connect(&db).await;
        // 100,000 rows written as the benchmark writes them (ids drawn in order, no trigger):
        // each to ten of 10,000 people, and one row in 1,000 also to one of 20 rooms.
        client
            .batch_execute(
                "BEGIN;
                 SET LOCAL session_replication_role = replica;
                 INSERT INTO pgrelay.messages (id, participants, payload)
                 SELECT nextval('pgrelay.message_id_seq'),
                        ARRAY(SELECT 'p' || ((g * 10 + k) % 10000) FROM generate_series(0, 9) AS k)
                        || CASE WHEN g % 1000 = 500 THEN ARRAY['#r' || ((g / 1000) % 20)]
                                ELSE '{}'::text[] END,
                        '{}'
                 FROM generate_series(1, 100000) AS g ORDER BY g;
                 COMMIT;
                 ANALYZE pgrelay.messages;",
            )
            .await
            .unwrap();
        let mut addresses = vec!["member".to_owned()];
        addresses.extend((0..20).map(|n| format!("#r{n}")));
        addresses.push("*".to_owned());
        // History reads default to 100 rows, catch-ups to 1,000: both must probe.
        for limit in [100i64, 1000] {
            let plan = explain_messages_for(&client, &addresses, 0, limit)
                .await
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("messages_participants_idx"), "{plan}");
            let walked: u64 = plan
                .lines()
                .filter_map(|line| line.trim().strip_prefix("Rows Removed by Filter: "))
                .map(|n| n.parse::<u64>().unwrap())
                .sum();
            assert!(
                walked < 10_000,
                "LIMIT {limit}: {walked} rows read and thrown away:\n{plan}"
            );
        }
    }
}
