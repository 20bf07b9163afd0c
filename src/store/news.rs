//! The dispatcher's pass: number what has committed, then read everything after a position,
//! messages and signals, in one round trip on the LISTEN connection, with the listener's role.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::{matching, message_from_row, page_sql, COMMITTED_AT, CONTROL, FETCHED};
use crate::error::Error;
use crate::message::{Message, Signal};

/// The primary's WAL insert position, as a number of bytes (`pg_lsn` minus zero): every
/// transaction visible to a statement that ran before this one has its commit record below
/// it (a commit is written to the WAL before it becomes visible), so a replica whose replay
/// has reached it shows all of them (`crate::replica`).
pub const WAL_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

/// The dispatcher's statements, prepared on the LISTEN connection.
pub struct NewsStatements {
    /// `pgrelay.sequence($1)`: numbers at most `$1` committed pending messages (and as many
    /// signals); answers how many it numbered.
    number: Statement,
    /// Every message after `$1` (a page of at most `$2` rows and `$3` bytes, messages over `$5`
    /// bytes without their payload) and every signal after `$4` (at most `$2`). Wake-ups carry
    /// nothing, so this is all the relay knows of what is new.
    read: Statement,
    /// [`WAL_POSITION`], read after each pass's COMMIT when a read replica needs to know how
    /// far the rows a pass read reach in the WAL; `None` without a replica (it costs the
    /// database a statement per pass).
    wal: Option<Statement>,
}

impl NewsStatements {
    /// [`WAL_POSITION`] now, if prepared: read after whatever this connection read before.
    pub async fn wal_position(&self, client: &Client) -> Result<Option<i64>, Error> {
        Ok(match &self.wal {
            Some(wal) => Some(client.query_one(wal, &[]).await?.try_get(0)?),
            None => None,
        })
    }
}

/// Prepares the dispatcher's statements on the LISTEN connection, with [`WAL_POSITION`] when
/// `with_wal` (a read replica is configured).
///
/// The session plans them once (`plan_cache_mode`), and so the statements inside
/// `pgrelay.sequence()`, which it calls: left to choose, PostgreSQL plans a statement anew at
/// every execution whenever its one-time plan looks costlier than those made for the
/// parameters, which began once presence churn had moved the statistics, and then each pass
/// paid for planning (commit → event p50 1.0 ms before, 1.6 ms after; BENCHMARKS.md).
pub async fn prepare_news(client: &Client, with_wal: bool) -> Result<NewsStatements, Error> {
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await?;
    let messages = page_sql(&matching("id > $1", 2), 3, 5);
    let read = format!(
        "SELECT false, * FROM ({messages}) messages \
         UNION ALL \
         SELECT true, id, kind, sender, participants, payload, NULL, NULL, NULL, NULL, NULL \
           FROM (SELECT * FROM pgrelay.signals WHERE id > $4 ORDER BY id LIMIT $2) signals"
    );
    Ok(NewsStatements {
        number: client
            .prepare_typed("SELECT pgrelay.sequence($1)", &[Type::INT4])
            .await?,
        read: client
            .prepare_typed(
                &read,
                &[Type::INT8, Type::INT8, Type::INT8, Type::INT8, Type::INT8],
            )
            .await?,
        wal: match with_wal {
            true => Some(client.prepare_typed(WAL_POSITION, &[]).await?),
            false => None,
        },
    })
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

/// What one pass found.
pub struct News {
    /// New messages for a local stream, each with the time its id was assigned (microseconds
    /// since the epoch) when known.
    pub messages: Vec<(Arc<Message>, Option<i64>)>,
    /// New signals for a local stream.
    pub signals: Vec<Arc<Signal>>,
    /// Where the next read starts.
    pub position: NewsPosition,
    /// Whether more messages may follow (the page hit a limit): read again right away.
    pub more: bool,
    /// How numbering went: how many pending rows this pass numbered, or why it could not.
    pub numbered: Result<u64, Error>,
    /// The primary's [`WAL_POSITION`] read after the pass committed, with the statements that
    /// have it: every row this pass read (and numbered) is below it.
    pub wal: Option<i64>,
}

/// How much one pass may do.
#[derive(Debug, Clone, Copy)]
pub struct PassLimits {
    /// Most messages (and, separately, signals) read.
    pub rows: i64,
    /// Most bytes of messages' payload and participants read (at least one message is).
    pub bytes: i64,
    /// Messages larger than this are read without their payload, as `oversized` stand-ins.
    pub max_event_bytes: i64,
    /// Most pending messages (and, separately, signals) numbered.
    pub numbered: i32,
    /// Longest wait for the order lock before numbering gives up for this pass.
    pub lock_wait: Duration,
}

/// One pass of the dispatcher: numbers committed pending messages and signals, then reads
/// what is visible after `position`, within `limits`. Rows that `wanted` refuses (given their
/// participants and whether they are a control row) are skipped before their JSON is rendered.
///
/// Both run in one READ COMMITTED transaction, sent in one round trip (tokio-postgres pipelines
/// requests that are issued together), so the rows this pass numbered are read by the same
/// transaction that numbered them and are handed on only once its COMMIT has succeeded. When
/// numbering fails (the order lock stays taken past `lock_timeout`, or the role may not run
/// it), the transaction rolls back and the rows are read on their own: what other relays
/// numbered is still delivered, and [`News::numbered`] says why this pass numbered nothing.
pub async fn news(
    client: &Client,
    statements: &NewsStatements,
    position: NewsPosition,
    limits: PassLimits,
    wanted: impl Fn(&[String], bool) -> bool,
) -> Result<News, Error> {
    let begin = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {}",
        limits.lock_wait.as_millis().max(1)
    );
    let params: [&(dyn ToSql + Sync); 5] = [
        &position.message,
        &limits.rows,
        &limits.bytes,
        &position.signal,
        &limits.max_event_bytes,
    ];
    let number_params: [&(dyn ToSql + Sync); 1] = [&limits.numbered];
    // The WAL position goes last, after the COMMIT, so it covers the numbering too.
    let (begun, numbered, read, committed, wal) = tokio::join!(
        client.batch_execute(&begin),
        client.query_one(&statements.number, &number_params),
        client.query(&statements.read, &params),
        client.batch_execute("COMMIT"),
        statements.wal_position(client),
    );
    begun?;
    let (numbered, found, wal) = match numbered {
        Ok(row) => {
            let found = read?;
            committed?;
            let count: i32 = row.try_get(0)?;
            (Ok(count.max(0) as u64), found, wal?)
        }
        // A closed connection fails the session; anything else only this pass's numbering.
        Err(error) if error.is_closed() => return Err(error.into()),
        Err(error) => {
            committed?;
            let found = client.query(&statements.read, &params).await?;
            (
                Err(error.into()),
                found,
                statements.wal_position(client).await?,
            )
        }
    };
    let mut news = News {
        messages: Vec::new(),
        signals: Vec::new(),
        position,
        more: false,
        numbered,
        wal,
    };
    // Column 0 says which part of the UNION a row comes from; the row proper starts at 1.
    let mut message_rows = 0;
    for row in &found {
        let is_signal: bool = row.try_get(0)?;
        let id: i64 = row.try_get(1)?;
        let participants: Vec<String> = row.try_get(4)?;
        if is_signal {
            news.position.signal = id;
            if wanted(&participants, false) {
                news.signals
                    .push(Arc::new(signal_from_row(row, participants)?));
            }
            continue;
        }
        news.position.message = id;
        message_rows += 1;
        let fetched: i64 = row.try_get(1 + FETCHED)?;
        news.more = fetched == limits.rows || message_rows < fetched;
        let control: bool = row.try_get(1 + CONTROL)?;
        if wanted(&participants, control) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{connect, fresh_database};

    /// Room for everything a test writes, and a short wait for the order lock.
    const LIMITS: PassLimits = PassLimits {
        rows: 500,
        bytes: 1 << 20,
        max_event_bytes: 1 << 20,
        numbered: 1000,
        lock_wait: Duration::from_secs(1),
    };

    /// The dispatcher's statements are planned once for the session, not at each pass: left to
    /// choose, PostgreSQL planned them anew for every execution once the statistics had moved, and
    /// a pass then cost half again as much (BENCHMARKS.md, "Side by side").
    #[tokio::test]
    async fn the_dispatcher_plans_its_pass_once() {
        let db = fresh_database().await;
        let client = connect(&db).await;
        let statements = prepare_news(&client, false).await.unwrap();
        let mut position = news_position(&client).await.unwrap();
        for pass in 0..12 {
            client
                .execute(
                    "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', $1)",
                    &[&serde_json::json!({ "pass": pass })],
                )
                .await
                .unwrap();
            let found = news(&client, &statements, position, LIMITS, |_, _| true)
                .await
                .unwrap();
            assert_eq!(found.messages.len(), 1, "pass {pass}");
            position = found.position;
        }
        let (generic, custom): (i64, i64) = client
            .query_one(
                "SELECT coalesce(sum(generic_plans), 0)::int8, coalesce(sum(custom_plans), 0)::int8 \
                   FROM pg_prepared_statements",
                &[],
            )
            .await
            .map(|row| (row.get(0), row.get(1)))
            .unwrap();
        assert!(generic >= 12, "the passes ran {generic} planned statements");
        assert_eq!(
            custom, 0,
            "statements planned for their parameters at a pass"
        );
    }

    /// A pass numbers and reads whatever isolation level the database gives its sessions by
    /// default: numbering must see what the previous holder of the order lock committed, which
    /// a REPEATABLE READ or SERIALIZABLE snapshot would not (`pgrelay.sequence()` refuses them).
    #[tokio::test]
    async fn a_pass_numbers_under_a_serializable_default() {
        let db = fresh_database().await;
        connect(&db)
            .await
            .batch_execute(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation \
                 = serializable', current_database()); END $$",
            )
            .await
            .unwrap();
        let client = connect(&db).await;
        let statements = prepare_news(&client, false).await.unwrap();
        let position = news_position(&client).await.unwrap();
        client
            .execute(
                "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{}')",
                &[],
            )
            .await
            .unwrap();
        let found = news(&client, &statements, position, LIMITS, |_, _| true)
            .await
            .unwrap();
        assert_eq!(found.numbered.map_err(|error| error.to_string()), Ok(1));
        assert_eq!(found.messages.len(), 1);
    }
}
