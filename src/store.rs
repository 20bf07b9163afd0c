//! The query pool and every query the relay runs against `pgrelay.messages`.
//!
//! Pool queries use `query_typed`, which sends the unnamed statement with explicit parameter
//! types: named prepared statements break behind PgBouncer in transaction mode, and the
//! unnamed statement costs no extra round trip. The one prepared statement is the
//! dispatcher's fetch ([`prepare_messages_by_id`]), which runs on the LISTEN connection: that
//! is always a session of its own (LISTEN does not work through a transaction-mode pooler),
//! and the fetch runs for every notified batch, where parsing and planning each time cost the
//! database more than executing.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use crate::tls;

/// The pool of query connections, shared by every request and stream.
pub type DbPool = Pool;

/// Errors from the pool or a query.
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// One stored message, with its SSE `data` rendered once and shared by every recipient.
#[derive(Debug)]
pub struct Message {
    /// The commit-ordered id: the SSE `id:` field and the resume position.
    pub id: i64,
    /// The SSE `event:` name; validated by a CHECK constraint, so it cannot break framing.
    pub kind: String,
    /// Who receives it; the registry routes on this.
    pub participants: Vec<String>,
    /// The event's JSON, exactly as sent on the stream and in `GET /v1/messages`.
    pub data: Box<RawValue>,
}

/// The JSON shape of a message event (the contract's `data:` object).
#[derive(Serialize)]
struct MessageData<'a> {
    id: i64,
    kind: &'a str,
    sender: Option<&'a str>,
    participants: &'a [String],
    payload: &'a RawValue,
    created_at: &'a str,
}

/// Columns every message query selects, in the order `message_from_row` reads them.
/// `created_at` is formatted in SQL so the answer does not depend on the session's TimeZone.
const MESSAGE_COLUMNS: &str = "id, kind, sender, participants, payload, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn message_from_row(row: &Row) -> Result<Arc<Message>, DbError> {
    let id: i64 = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let sender: Option<&str> = row.try_get(2)?;
    let participants: Vec<String> = row.try_get(3)?;
    let Json(payload): Json<Box<RawValue>> = row.try_get(4)?;
    let created_at: &str = row.try_get(5)?;
    let data = serde_json::value::to_raw_value(&MessageData {
        id,
        kind: &kind,
        sender,
        participants: &participants,
        payload: &payload,
        created_at,
    })?;
    Ok(Arc::new(Message {
        id,
        kind,
        participants,
        data,
    }))
}

/// Builds the query pool. Connections name themselves `pgrelay` in `pg_stat_activity` unless
/// the URL already sets an `application_name`.
pub fn connect_pool(database_url: &str, size: usize) -> Result<DbPool, DbError> {
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
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// Messages addressed to `participant` with `id > since`, oldest first, at most `limit`.
pub async fn messages_for(
    pool: &DbPool,
    participant: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<Arc<Message>>, DbError> {
    let client = pool.get().await?;
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM pgrelay.messages \
         WHERE participants @> ARRAY[$1::text] AND id > $2 ORDER BY id LIMIT $3"
    );
    let rows = client
        .query_typed(
            &sql,
            &[
                (&participant, Type::TEXT),
                (&since, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(message_from_row).collect()
}

/// Prepares the dispatcher's fetch, "the messages with these ids", on `client`.
pub async fn prepare_messages_by_id(client: &Client) -> Result<Statement, DbError> {
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM pgrelay.messages WHERE id = ANY($1) ORDER BY id");
    Ok(client.prepare_typed(&sql, &[Type::INT8_ARRAY]).await?)
}

/// The messages with these ids, oldest first (ids that do not exist are skipped), with the
/// statement from [`prepare_messages_by_id`] on the same `client`.
pub async fn messages_by_id(
    client: &Client,
    statement: &Statement,
    ids: &[i64],
) -> Result<Vec<Arc<Message>>, DbError> {
    let rows = client.query(statement, &[&ids]).await?;
    rows.iter().map(message_from_row).collect()
}

/// The newest visible message id (0 when there is none). Because ids are commit-ordered,
/// every message committed later has a larger id.
pub async fn newest_id(pool: &DbPool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT coalesce(max(id), 0)::int8 FROM pgrelay.messages",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// What a resuming stream checks its position against.
pub struct RetentionBounds {
    /// The highest id removed by retention pruning.
    pub pruned_through: i64,
    /// The oldest id still stored (0 if none).
    pub oldest_id: i64,
    /// The newest visible id (0 if none).
    pub newest_id: i64,
    /// The highest id ever drawn (committed or not): no client can have seen a larger one.
    pub highest_issued: i64,
}

/// The retention bounds, in one round trip.
pub async fn retention_bounds(pool: &DbPool) -> Result<RetentionBounds, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_typed_one(
            "SELECT pruned_through, \
                    coalesce((SELECT min(id) FROM pgrelay.messages WHERE id > 0), 0)::int8, \
                    coalesce((SELECT max(id) FROM pgrelay.messages), 0)::int8, \
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

/// A message to publish (or a signal to send), already validated.
pub struct NewMessage<'a> {
    /// Recipients, the sender included.
    pub participants: &'a [String],
    /// The SSE event name.
    pub kind: &'a str,
    /// The token's subject.
    pub sender: &'a str,
    /// Any JSON value.
    pub payload: &'a RawValue,
}

/// Stores a message and returns its commit-ordered id.
pub async fn publish(pool: &DbPool, message: &NewMessage<'_>) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let payload = Json(message.payload);
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&message.participants, Type::TEXT_ARRAY),
        (&payload, Type::JSONB),
        (&message.kind, Type::TEXT),
        (&message.sender, Type::TEXT),
    ];
    let row = client
        .query_typed_one("SELECT pgrelay.publish($1, $2, $3, $4)", &params)
        .await?;
    Ok(row.try_get(0)?)
}

/// Sends a signal (a message that is never stored) through `pgrelay.signal`.
pub async fn signal(pool: &DbPool, signal: &NewMessage<'_>) -> Result<(), DbError> {
    let client = pool.get().await?;
    let payload = Json(signal.payload);
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
    /// Whether the caller may see this participant (in their audience, or themselves).
    pub visible: bool,
    /// Online since (RFC 3339), when online.
    pub since: Option<String>,
    /// Last seen (RFC 3339), when offline and ever seen.
    pub last_seen: Option<String>,
}

/// The presence of `participants` as seen by `caller`, in the order asked.
pub async fn presence(
    pool: &DbPool,
    caller: &str,
    participants: &[String],
    ttl: Duration,
) -> Result<Vec<PresenceState>, DbError> {
    let client = pool.get().await?;
    let ttl = ttl.as_secs_f64();
    let params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&participants, Type::TEXT_ARRAY),
        (&caller, Type::TEXT),
        (&ttl, Type::FLOAT8),
    ];
    let rows = client
        .query_typed(
            "SELECT p, \
                    p = $2 OR $2 = ANY(coalesce(pgrelay.presence_audience(p), '{}')), \
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

/// Whether the database answers a trivial query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        client.query_typed("SELECT 1", &[]).await.ok()
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(_)))
}
