//! The dispatcher's pass: number what has committed, then read everything after a position,
//! messages and signals, in one round trip on the LISTEN connection, with the listener's role.
//!
//! PostgreSQL flushes its answers at the end of every statement sent on its own, and each flush
//! wakes the relay: a pass sent as four (BEGIN, the numbering, the read, COMMIT) woke it three
//! or four times for every message. So the session defines the pass as one function in its own
//! temporary schema, made from the same statements, and a pass is one statement, one answer,
//! one wake-up (BENCHMARKS.md, "CPU per event"). A role that may not create temporary objects
//! runs the four statements instead, pipelined as before.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, Row, Statement};
use tracing::info;

use super::{matching, message_from_row, page_sql, COMMITTED_AT, CONTROL, FETCHED};
use crate::error::Error;
use crate::message::{Message, Signal};

/// The primary's WAL insert position, as a number of bytes (`pg_lsn` minus zero): every
/// transaction visible to a statement that ran before this one has its commit record below
/// it (a commit is written to the WAL before it becomes visible), so a replica whose replay
/// has reached it shows all of them (`crate::replica`).
pub const WAL_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

/// The read's parameters: the last message id read, most rows, most bytes, the last signal id
/// read, and the size above which a message is read without its payload.
const READ_TYPES: [Type; 5] = [Type::INT8, Type::INT8, Type::INT8, Type::INT8, Type::INT8];

/// The dispatcher's statements, prepared on the LISTEN connection.
pub struct NewsStatements {
    /// Every message after `$1` (a page of at most `$2` rows and `$3` bytes, messages over `$5`
    /// bytes without their payload) and every signal after `$4` (a page of the same bounds).
    /// Wake-ups carry nothing, so this is all the relay knows of what is new.
    read: Statement,
    /// How the pass numbers before it reads.
    numbering: Numbering,
    /// [`WAL_POSITION`], read after each pass's commit when a read replica needs to know how
    /// far the rows a pass read reach in the WAL; `None` without a replica (it costs the
    /// database a statement per pass).
    wal: Option<Statement>,
}

/// How a pass numbers committed pending rows and reads, in one transaction.
enum Numbering {
    /// `pg_temp.pgrelay_pass(<the read's parameters>, max_rows, lock_timeout)`: one statement
    /// that runs `pgrelay.sequence(max_rows)`, then the read, and ends with one row whose
    /// first column is NULL and whose second is how many rows it numbered.
    OneStatement(Statement),
    /// `pgrelay.sequence($1)`, sent between BEGIN and COMMIT with the read, where the session
    /// may not create its temporary function.
    Transaction(Statement),
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
/// `pgrelay.sequence()` and the pass's function, which it calls: left to choose, PostgreSQL
/// plans a statement anew at every execution whenever its one-time plan looks costlier than
/// those made for the parameters, which began once presence churn had moved the statistics,
/// and then each pass paid for planning (commit → event p50 1.0 ms before, 1.6 ms after;
/// BENCHMARKS.md). Its transactions are READ COMMITTED whatever the database's default: a pass
/// must see what the previous holder of the order lock committed.
pub async fn prepare_news(client: &Client, with_wal: bool) -> Result<NewsStatements, Error> {
    client
        .batch_execute(
            "SET plan_cache_mode = force_generic_plan; \
             SET default_transaction_isolation = 'read committed'",
        )
        .await?;
    let messages = page_sql(&matching("id > $1", 2), 3, 5);
    // A signal row has no size limit of its own (presence's may be 32 KiB of participants),
    // so its page ends at the row that reaches `$3` bytes, as a page of messages does.
    // (Its ORDER BY is inside its own parentheses: outside them it would sort the whole UNION.)
    let read_sql = format!(
        "SELECT false, * FROM ({messages}) messages \
         UNION ALL \
         (SELECT true, id, kind, sender, participants, payload, NULL, NULL, fetched, NULL, NULL \
            FROM (SELECT s.*, sum(s.size) OVER (ORDER BY s.id) AS upto, \
                         count(*) OVER () AS fetched \
                    FROM (SELECT *, octet_length(participants::text) \
                                    + octet_length(payload::text) AS size \
                            FROM pgrelay.signals WHERE id > $4 ORDER BY id LIMIT $2) s) signals \
           WHERE upto - size < $3 ORDER BY id)"
    );
    let read = client.prepare_typed(&read_sql, &READ_TYPES).await?;
    let numbering = match client.batch_execute(&pass_function(&read_sql, &read)).await {
        Ok(()) => {
            let call = "SELECT * FROM pg_temp.pgrelay_pass($1, $2, $3, $4, $5, $6, $7)";
            let types = [&READ_TYPES[..], &[Type::INT4, Type::TEXT]].concat();
            Numbering::OneStatement(client.prepare_typed(call, &types).await?)
        }
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            info!(%error, "the listener may not create its temporary function: each pass is four statements (GRANT TEMPORARY ON DATABASE makes it one)");
            let number = "SELECT pgrelay.sequence($1)";
            Numbering::Transaction(client.prepare_typed(number, &[Type::INT4]).await?)
        }
        Err(error) => return Err(error.into()),
    };
    Ok(NewsStatements {
        read,
        numbering,
        wal: match with_wal {
            true => Some(client.prepare_typed(WAL_POSITION, &[]).await?),
            false => None,
        },
    })
}

/// The pass as one function of this session: its first five parameters are the read's, so the
/// read's text goes in as it is; the columns it returns are those `read` was prepared with.
fn pass_function(read_sql: &str, read: &Statement) -> String {
    let types: Vec<&str> = read.columns().iter().map(|c| c.type_().name()).collect();
    let columns: Vec<String> = (types.iter().enumerate())
        .map(|(at, name)| format!("c{at} {name}"))
        .collect();
    // The count's row: NULL where a row says whether it is a signal, the count where its id is.
    let count: Vec<String> = (types.iter().enumerate())
        .map(|(at, name)| match at {
            1 => "numbered::int8".to_owned(),
            _ => format!("NULL::{name}"),
        })
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION pg_temp.pgrelay_pass(int8, int8, int8, int8, int8, int4, text) \
           RETURNS TABLE ({columns}) LANGUAGE plpgsql AS $pass$ \
         DECLARE numbered int4; \
         BEGIN \
           PERFORM set_config('lock_timeout', $7, true); \
           numbered := pgrelay.sequence($6); \
           RETURN QUERY {read_sql}; \
           RETURN QUERY SELECT {count}; \
         END $pass$",
        columns = columns.join(", "),
        count = count.join(", "),
    )
}

/// Where the dispatcher has read up to: the last message id and the last signal id.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NewsPosition {
    /// The last message id read.
    pub message: i64,
    /// The last signal id read.
    pub signal: i64,
}

/// The newest numbered message and signal ids (pending rows' negative placeholders are no
/// positions): where a fresh LISTEN session starts reading.
pub async fn news_position(client: &Client) -> Result<NewsPosition, Error> {
    let row = client
        .query_typed_one(
            "SELECT coalesce((SELECT max(id) FROM pgrelay.messages WHERE id > 0), 0)::int8, \
                    coalesce((SELECT max(id) FROM pgrelay.signals WHERE id > 0), 0)::int8",
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
    /// Whether more messages or signals may follow (a page hit a limit): read again right away.
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
    /// Most bytes of messages' payload and participants read (at least one message is), and,
    /// separately, of signals'.
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
/// Both run in one READ COMMITTED transaction, sent in one round trip, so the rows this pass
/// numbered are read by the same transaction that numbered them and are handed on only once
/// its commit has succeeded (the driver reads a statement's answer up to the end of its
/// transaction, which reports a failed commit). When numbering fails (the order lock stays
/// taken past `lock_timeout`, or the role may not run it), the transaction rolls back and the
/// rows are read on their own: what other relays numbered is still delivered, and
/// [`News::numbered`] says why this pass numbered nothing.
pub async fn news(
    client: &Client,
    statements: &NewsStatements,
    position: NewsPosition,
    limits: PassLimits,
    wanted: impl Fn(&[String], bool) -> bool,
) -> Result<News, Error> {
    let read_params: [&(dyn ToSql + Sync); 5] = [
        &position.message,
        &limits.rows,
        &limits.bytes,
        &position.signal,
        &limits.max_event_bytes,
    ];
    let lock_timeout = format!("{}ms", limits.lock_wait.as_millis().max(1));
    // The WAL position goes last, after the commit, so it covers the numbering too.
    let (attempt, wal) = match &statements.numbering {
        Numbering::OneStatement(pass) => {
            let params = [&read_params[..], &[&limits.numbered, &lock_timeout]].concat();
            let (found, wal) =
                tokio::join!(client.query(pass, &params), statements.wal_position(client));
            (found.map(counted), wal)
        }
        Numbering::Transaction(number) => {
            let begin = format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{lock_timeout}'"
            );
            let number_params: [&(dyn ToSql + Sync); 1] = [&limits.numbered];
            let (begun, numbered, read, committed, wal) = tokio::join!(
                client.batch_execute(&begin),
                client.query_one(number, &number_params),
                client.query(&statements.read, &read_params),
                client.batch_execute("COMMIT"),
                statements.wal_position(client),
            );
            begun?;
            let attempt = match numbered {
                Ok(row) => {
                    let found = read?;
                    committed?;
                    let count: i32 = row.try_get(0)?;
                    Ok((Ok(i64::from(count)), found))
                }
                // A failed numbering aborted the transaction; its COMMIT rolled it back.
                Err(error) if !error.is_closed() => {
                    committed?;
                    Err(error)
                }
                Err(error) => Err(error),
            };
            (attempt, wal)
        }
    };
    let (numbered, found, wal) = match attempt {
        Ok((count, found)) => (Ok(count?.max(0) as u64), found, wal?),
        // A closed connection fails the session; anything else only this pass's numbering.
        Err(error) if error.is_closed() => return Err(error.into()),
        Err(error) => {
            let found = client.query(&statements.read, &read_params).await?;
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
    // Each part is a page: it was cut short when its rows hit the row limit or fewer came
    // back than it fetched (the byte limit).
    let (mut message_rows, mut signal_rows) = (0, 0);
    let (mut messages_fetched, mut signals_fetched) = (0, 0);
    for row in &found {
        let is_signal: bool = row.try_get(0)?;
        let id: i64 = row.try_get(1)?;
        let participants: Vec<String> = row.try_get(4)?;
        let fetched: i64 = row.try_get(1 + FETCHED)?;
        if is_signal {
            news.position.signal = id;
            (signal_rows, signals_fetched) = (signal_rows + 1, fetched);
            if wanted(&participants, false) {
                news.signals
                    .push(Arc::new(signal_from_row(row, participants)?));
            }
            continue;
        }
        news.position.message = id;
        (message_rows, messages_fetched) = (message_rows + 1, fetched);
        let control: bool = row.try_get(1 + CONTROL)?;
        if wanted(&participants, control) {
            let committed_at: Option<i64> = row.try_get(1 + COMMITTED_AT)?;
            news.messages
                .push((message_from_row(row, 1)?, committed_at));
        }
    }
    let cut_short = |rows: i64, fetched: i64| fetched == limits.rows || rows < fetched;
    news.more =
        cut_short(message_rows, messages_fetched) || cut_short(signal_rows, signals_fetched);
    Ok(news)
}

/// The rows of a one-statement pass without its last, and the count that row carries.
fn counted(mut found: Vec<Row>) -> (Result<i64, Error>, Vec<Row>) {
    let count = match found.pop() {
        Some(row) => row.try_get(1).map_err(Error::from),
        None => Err(Error::connection("a pass answered without its count")),
    };
    (count, found)
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

    /// Signals are read in pages of at most `rows` rows and about `bytes` bytes, as messages
    /// are, and a full page says `more`: 1,200 signals written at once were read 500 to a pass
    /// with nothing to say the rest were there (they waited for the next wake-up), and a page
    /// of presence rows held whatever their participants came to.
    #[tokio::test]
    async fn signals_are_read_in_bounded_pages() {
        let db = fresh_database().await;
        let client = connect(&db).await;
        let statements = prepare_news(&client, false).await.unwrap();
        let mut position = news_position(&client).await.unwrap();
        // 1,200 small signals, then 40 of about 20 KB of participants each (800 KB).
        client
            .batch_execute(
                "SELECT pgrelay.signal('{bob}', 'typing', to_jsonb(n)) \
                   FROM generate_series(1, 1200) n; \
                 SELECT pgrelay.signal(ARRAY(SELECT repeat('x', 190) || p \
                                             FROM generate_series(1, 100) p), 'typing') \
                   FROM generate_series(1, 40)",
            )
            .await
            .unwrap();
        let limits = PassLimits {
            bytes: 100_000,
            ..LIMITS
        };
        // Each page's signals and the bytes of their participants.
        let mut pages = Vec::new();
        loop {
            let found = news(&client, &statements, position, limits, |_, _| true)
                .await
                .unwrap();
            let bytes: usize = (found.signals.iter())
                .flat_map(|signal| &signal.participants)
                .map(String::len)
                .sum();
            pages.push((found.signals.len(), bytes));
            position = found.position;
            if !found.more {
                break;
            }
        }
        let read: usize = pages.iter().map(|(signals, _)| signals).sum();
        assert_eq!(read, 1240, "pages: {pages:?}");
        // A page ends at the row that reaches its bytes, one of 20 KB at most.
        assert!(
            (pages.iter()).all(|&(signals, bytes)| signals <= 500 && bytes < 125_000),
            "pages: {pages:?}"
        );
    }

    /// A role with the relay's grants and nothing else, connected to `db`; with `temporary`,
    /// the database lets it create temporary objects (PostgreSQL's default, revoked here when
    /// false).
    async fn relay_role(db: &str, temporary: bool) -> Client {
        let database = db.rsplit('/').next().unwrap();
        let name = format!("relay_{database}");
        let revoke = match temporary {
            true => String::new(),
            false => format!("REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC;"),
        };
        connect(db)
            .await
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; {revoke} \
                 GRANT USAGE ON SCHEMA pgrelay TO {name}; \
                 GRANT SELECT ON pgrelay.messages, pgrelay.signals TO {name}; \
                 GRANT EXECUTE ON FUNCTION pgrelay.sequence(integer) TO {name}"
            ))
            .await
            .unwrap();
        let mut config: tokio_postgres::Config = db.parse().unwrap();
        let (client, connection) = config
            .user(&name)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// The relay's role numbers and reads what an app committed, in one statement where the
    /// database lets it create its temporary function and in four where it does not.
    #[tokio::test]
    async fn a_pass_numbers_and_reads_with_or_without_temporary_objects() {
        for temporary in [true, false] {
            let db = fresh_database().await;
            let relay = relay_role(&db, temporary).await;
            let statements = prepare_news(&relay, false).await.unwrap();
            assert_eq!(
                matches!(statements.numbering, Numbering::OneStatement(_)),
                temporary,
                "a pass is one statement exactly where temporary objects are allowed"
            );
            let position = news_position(&relay).await.unwrap();
            connect(&db)
                .await
                .batch_execute(
                    "INSERT INTO pgrelay.messages (participants, payload) \
                     VALUES ('{alice}', '{\"n\": 1}'), ('{bob}', '{\"n\": 2}')",
                )
                .await
                .unwrap();
            let found = news(&relay, &statements, position, LIMITS, |_, _| true)
                .await
                .unwrap();
            assert_eq!(found.numbered.map_err(|error| error.to_string()), Ok(2));
            let ids: Vec<i64> = found.messages.iter().map(|(m, _)| m.id).collect();
            assert_eq!(ids, [position.message + 1, position.message + 2]);
            assert_eq!(found.position.message, position.message + 2);
            let again = news(&relay, &statements, found.position, LIMITS, |_, _| true)
                .await
                .unwrap();
            assert_eq!(again.numbered.map_err(|error| error.to_string()), Ok(0));
            assert!(again.messages.is_empty(), "nothing is read twice");
        }
    }

    /// When the order lock stays taken past the pass's wait, the pass numbers nothing, says why,
    /// and still reads what is numbered; the next pass numbers what waited.
    #[tokio::test]
    async fn a_pass_reads_when_the_order_lock_is_taken() {
        let db = fresh_database().await;
        let client = connect(&db).await;
        let statements = prepare_news(&client, false).await.unwrap();
        let position = news_position(&client).await.unwrap();
        let owner = connect(&db).await;
        let insert =
            "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{}')";
        // One statement at a time: a string of several runs them in one transaction.
        for statement in [
            insert,
            "SELECT pgrelay.sequence()",
            insert,
            "BEGIN",
            "LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE",
        ] {
            owner.batch_execute(statement).await.unwrap();
        }
        let limits = PassLimits {
            lock_wait: Duration::from_millis(50),
            ..LIMITS
        };
        let stuck = news(&client, &statements, position, limits, |_, _| true)
            .await
            .unwrap();
        let why = stuck.numbered.expect_err("the lock was taken").to_string();
        assert!(why.contains("lock timeout"), "{why}");
        assert_eq!(stuck.messages.len(), 1, "what was numbered is still read");
        owner.batch_execute("COMMIT").await.unwrap();
        let after = news(&client, &statements, stuck.position, limits, |_, _| true)
            .await
            .unwrap();
        assert_eq!(after.numbered.map_err(|error| error.to_string()), Ok(1));
        assert_eq!(after.messages.len(), 1);
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
