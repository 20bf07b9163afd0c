//! The dispatcher's fetch: everything committed after a position, messages and signals in
//! one round trip, read with the listener's own role on the LISTEN connection.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio_postgres::types::{Json, Type};
use tokio_postgres::{Client, Row, Statement};

use super::{matching, message_from_row, page_sql, COMMITTED_AT, FETCHED};
use crate::error::Error;
use crate::message::{Message, Signal};

/// The dispatcher's fetch, prepared on the LISTEN connection: every message after `$1` (a page
/// of at most `$2` rows and `$3` bytes) and every signal after `$4` (at most `$2`), in one
/// round trip. Wake-ups carry nothing, so this is all the relay knows of what is new.
pub async fn prepare_news(client: &Client) -> Result<Statement, Error> {
    let messages = page_sql(&matching("id > $1", 2), 3);
    let sql = format!(
        "SELECT false, * FROM ({messages}) messages \
         UNION ALL \
         SELECT true, id, kind, sender, participants, payload, NULL, NULL, NULL \
           FROM (SELECT * FROM pgrelay.signals WHERE id > $4 ORDER BY id LIMIT $2) signals"
    );
    Ok(client
        .prepare_typed(&sql, &[Type::INT8, Type::INT8, Type::INT8, Type::INT8])
        .await?)
}

/// Where the dispatcher has read up to: the last message id and the last signal id.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NewsPosition {
    /// The last message id read.
    pub message: i64,
    /// The last signal id read.
    pub signal: i64,
}

/// The newest committed message and signal ids: where a fresh LISTEN session starts reading.
pub async fn news_position(client: &Client) -> Result<NewsPosition, Error> {
    let row = client
        .query_typed_one(
            "SELECT coalesce((SELECT max(id) FROM pgrelay.messages), 0)::int8, \
                    coalesce((SELECT max(id) FROM pgrelay.signals), 0)::int8",
            &[],
        )
        .await?;
    Ok(NewsPosition {
        message: row.try_get(0)?,
        signal: row.try_get(1)?,
    })
}

/// What one fetch of [`prepare_news`] found.
pub struct News {
    /// New messages for a local stream, each with its commit time (microseconds since the
    /// epoch) when known.
    pub messages: Vec<(Arc<Message>, Option<i64>)>,
    /// New signals for a local stream.
    pub signals: Vec<Arc<Signal>>,
    /// Where the next fetch starts.
    pub position: NewsPosition,
    /// Whether more messages may follow (the page hit a limit): fetch again right away.
    pub more: bool,
}

/// Reads what was committed after `position`; rows none of whose participants `wanted`
/// are skipped before their JSON is rendered.
pub async fn news(
    client: &Client,
    statement: &Statement,
    position: NewsPosition,
    rows: i64,
    max_bytes: i64,
    wanted: impl Fn(&[String]) -> bool,
) -> Result<News, Error> {
    let found = client
        .query(
            statement,
            &[&position.message, &rows, &max_bytes, &position.signal],
        )
        .await?;
    let mut news = News {
        messages: Vec::new(),
        signals: Vec::new(),
        position,
        more: false,
    };
    // Column 0 says which part of the UNION a row comes from; the row proper starts at 1.
    let mut message_rows = 0;
    for row in &found {
        let is_signal: bool = row.try_get(0)?;
        let id: i64 = row.try_get(1)?;
        let participants: Vec<String> = row.try_get(4)?;
        if is_signal {
            news.position.signal = id;
            if wanted(&participants) {
                news.signals
                    .push(Arc::new(signal_from_row(row, participants)?));
            }
            continue;
        }
        news.position.message = id;
        message_rows += 1;
        let fetched: i64 = row.try_get(1 + FETCHED)?;
        news.more = fetched == rows || message_rows < fetched;
        if wanted(&participants) {
            let committed_at: Option<i64> = row.try_get(1 + COMMITTED_AT)?;
            news.messages
                .push((message_from_row(row, 1)?, committed_at));
        }
    }
    Ok(news)
}

/// Reads a signal from a [`prepare_news`] row.
fn signal_from_row(row: &Row, participants: Vec<String>) -> Result<Signal, Error> {
    let Json(payload): Json<Box<RawValue>> = row.try_get(5)?;
    Ok(Signal::new(
        row.try_get(2)?,
        row.try_get(3)?,
        participants,
        payload,
    )?)
}
