//! Read replicas under a resume storm (issue 23, item 2): where the catch-up rows are read,
//! and that a paused replica loses nothing.
//!
//! ```text
//! cargo run --release --example replicas [-- --streams 2000] [--no-replica]
//! ```
//!
//! Starts a throwaway primary (committing synchronously, as production servers do), a
//! streaming replica of it (`pg_basebackup -R`) and a relay in this process with
//! `--replica-url`, while a writer commits 200 messages/s to someone else (so the primary's
//! WAL, and the positions reads need, keep moving). Then:
//!
//! 1. **Storm**: `--streams` participants (default 2,000) each have 3 messages; all of them
//!    resume at once with `Last-Event-ID: 0`. Reports the time until every stream had exactly
//!    its messages, and the catch-up reads and rows by source and reason from `/metrics`.
//! 2. **Paused replica**: replay paused (`pg_wal_replay_pause()`), one more message each,
//!    all resume at once from their last id. Reports the same, and whether anything was lost.
//!
//! For each phase it also reports what the primary ran meanwhile (`pg_stat_statements`,
//! the writer's inserts left out): statements and the rows they returned, the busiest ones
//! first. `--no-replica` runs the storm without `--replica-url`, for comparison.
//!
//! Figures only: nothing here asserts a timing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseItem, SseParser};
use pgrelay_cluster::TempCluster;
use tokio_postgres::{Client, NoTls};

#[path = "support/relay_in_process.rs"]
mod relay_in_process;

use relay_in_process::Relay;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SECRET: &str = "replicas-benchmark-secret-0123456789";

/// Requests sent again because they got no answer (see [`receive`]).
static RETRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long one stream may take to catch up before the example calls it lost.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let streams: usize = match std::env::args().skip_while(|a| a != "--streams").nth(1) {
        Some(n) => n.parse()?,
        None => 2000,
    };
    let with_replica = !std::env::args().any(|a| a == "--no-replica");
    pgrelay::open_files::raise_limit(4 * streams as u64 + 1024)?;
    let primary = TempCluster::start_with(&[
        ("synchronous_commit", "on"),
        ("shared_preload_libraries", "pg_stat_statements"),
    ])
    .await?;
    let url = primary.url("postgres");
    pgrelay::migrate::migrate(&url, "pgrelay").await?;
    let db = connect(&url).await?;
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await?;
    let replica = primary.start_replica().await?;
    let replica_url = replica.url("postgres");
    let relay = Relay::start(&url, with_replica.then_some(&*replica_url), SECRET).await?;
    let base = relay.base.clone();
    let writer = tokio::spawn(write_elsewhere(url.clone()));

    let people: Vec<String> = (0..streams).map(|n| format!("p{n}")).collect();
    for _ in 0..3 {
        insert_one_each(&db, &people).await?;
    }
    let wal = primary_wal(&db).await?;
    wait_replayed(&replica, wal).await?;
    println!(
        "storm: {streams} streams resume from 0, 3 messages each, {}",
        match with_replica {
            true => "replica streaming",
            false => "no replica",
        }
    );
    let before = reads(&base).await?;
    storm(&base, &db, &people, |_| 0).await?;
    report(&before, &reads(&base).await?);
    primary_load(&db, streams).await?;
    if !with_replica {
        return Ok(());
    }

    let replica_db = connect(&replica.url("postgres")).await?;
    replica_db
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await?;
    let last = newest_ids(&db, &people).await?;
    insert_one_each(&db, &people).await?;
    println!(
        "paused: replay paused, 1 more message each, {streams} streams resume from their last id"
    );
    let before = reads(&base).await?;
    storm(&base, &db, &people, |n| last[n]).await?;
    report(&before, &reads(&base).await?);
    primary_load(&db, streams).await?;
    replica_db
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await?;

    writer.abort();
    relay.stop().await;
    Ok(())
}

async fn connect(url: &str) -> Result<Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// 200 messages/s to a participant nobody follows, until aborted.
async fn write_elsewhere(url: String) {
    let Ok(client) = connect(&url).await else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    loop {
        ticks.tick().await;
        let inserted = client
            .batch_execute(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 VALUES ('{elsewhere}', '{\"n\":1}')",
            )
            .await;
        if inserted.is_err() {
            return;
        }
    }
}

/// One message for each of `people`, in one transaction, numbered before it returns.
async fn insert_one_each(db: &Client, people: &[String]) -> Result<(), BoxError> {
    db.execute(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT ARRAY[p], jsonb_build_object('to', p) FROM unnest($1::text[]) p",
        &[&people],
    )
    .await?;
    db.batch_execute("SELECT pgrelay.sequence(1000000)").await?;
    Ok(())
}

/// The newest message id of each of `people`, in order.
async fn newest_ids(db: &Client, people: &[String]) -> Result<Vec<i64>, BoxError> {
    let rows = db
        .query(
            "SELECT (SELECT max(id) FROM pgrelay.messages WHERE participants @> ARRAY[p]) \
               FROM unnest($1::text[]) WITH ORDINALITY AS asked(p, n) ORDER BY n",
            &[&people],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

async fn primary_wal(db: &Client) -> Result<i64, BoxError> {
    Ok(db
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await?
        .get(0))
}

async fn wait_replayed(replica: &TempCluster, wal: i64) -> Result<(), BoxError> {
    let client = connect(&replica.url("postgres")).await?;
    loop {
        let replayed: i64 = client
            .query_one(
                "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8",
                &[],
            )
            .await?
            .get(0);
        if replayed >= wal {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every one of `people` resumes after `since(n)` at once; prints when all had exactly their
/// messages after it, and how many did not.
async fn storm(
    base: &str,
    db: &Client,
    people: &[String],
    since: impl Fn(usize) -> i64,
) -> Result<(), BoxError> {
    let http = reqwest::Client::new();
    let keys = Keys::from_secret_list(SECRET)?;
    let mut expected = Vec::new();
    for (n, person) in people.iter().enumerate() {
        let ids: Vec<i64> = db
            .query(
                "SELECT id FROM pgrelay.messages WHERE participants @> ARRAY[$1] AND id > $2 \
                 ORDER BY id",
                &[person, &since(n)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        expected.push(ids);
    }
    db.batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((n, person), expected) in people.iter().enumerate().zip(expected) {
        let request = http
            .get(format!("{base}/v1/stream"))
            .bearer_auth(keys.mint(person, Duration::from_secs(3600), &[]))
            .header("Last-Event-ID", since(n).to_string());
        tasks.push(tokio::spawn(async move {
            let received = tokio::time::timeout(PATIENCE, receive(request, expected.len())).await;
            let exact = match received {
                Ok(Ok(ids)) if ids == expected => true,
                Ok(Ok(ids)) => {
                    eprintln!("  expected {expected:?}, received {ids:?}");
                    false
                }
                Ok(Err(error)) => {
                    eprintln!("  a stream failed: {error}");
                    false
                }
                Err(_) => {
                    eprintln!("  a stream did not catch up within {PATIENCE:?}");
                    false
                }
            };
            (exact, started.elapsed())
        }));
    }
    let mut wrong = 0;
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (exact, took) = task.await?;
        wrong += usize::from(!exact);
        slowest = slowest.max(took);
    }
    println!(
        "  all {} streams caught up within {:.2} s; lost, duplicated or out of order: {wrong}; \
         requests the client sent again (no answer: the accept queue was full): {}",
        people.len(),
        slowest.as_secs_f64(),
        RETRIED.swap(0, std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// The ids of the first `count` message events of the stream `request` opens.
async fn receive(request: reqwest::RequestBuilder, count: usize) -> Result<Vec<i64>, BoxError> {
    // A request that got no answer (thousands connect at once, and the kernel's accept queue
    // turns some away) is sent again, as an EventSource would: that is the client's side of
    // a storm, not the relay's.
    let mut attempts = 0;
    let response = loop {
        let retry = request
            .try_clone()
            .ok_or("a request without a body clones")?;
        match retry.send().await {
            Ok(response) => break response,
            Err(_) if attempts < 5 => {
                attempts += 1;
                RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut ids = Vec::new();
    while ids.len() < count {
        let chunk = body.next().await.ok_or("stream ended")??;
        for item in parser.feed(&chunk) {
            if let SseItem::Event(event) = item {
                if !event.is_opening() && event.data.is_some() {
                    ids.push(event.id.as_deref().unwrap_or("").parse()?);
                }
            }
        }
    }
    Ok(ids)
}

/// What the primary ran since the last reset, the writer's inserts and this example's own
/// statistics queries left out: statements per resuming stream, rows returned, and the
/// busiest statements.
async fn primary_load(db: &Client, streams: usize) -> Result<(), BoxError> {
    let rows = db
        .query(
            "SELECT calls::int8, rows::int8, (shared_blks_hit + shared_blks_read)::int8, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
               FROM pg_stat_statements \
              WHERE query NOT ILIKE 'INSERT%' AND query NOT ILIKE '%pg_stat_statements%' \
              ORDER BY calls DESC",
            &[],
        )
        .await?;
    let calls: i64 = rows.iter().map(|row| row.get::<_, i64>(0)).sum();
    let returned: i64 = rows.iter().map(|row| row.get::<_, i64>(1)).sum();
    let buffers: i64 = rows.iter().map(|row| row.get::<_, i64>(2)).sum();
    println!(
        "  primary: {calls} statements ({:.2} per resuming stream), {returned} rows returned, \
         {buffers} buffers touched",
        calls as f64 / streams as f64
    );
    for row in rows.iter().take(6) {
        let (calls, returned, buffers, query): (i64, i64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!("    {calls:>6} calls {returned:>7} rows {buffers:>8} buffers  {query}");
    }
    Ok(())
}

/// The relay's `pgrelay_reads_total` and `pgrelay_read_rows_total` lines for catch-ups.
async fn reads(base: &str) -> Result<Vec<(String, f64)>, BoxError> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| {
            (line.starts_with("pgrelay_reads_total") || line.starts_with("pgrelay_read_rows_total"))
                && line.contains("read=\"catch_up\"")
        })
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// What changed between two [`reads`], and the replica's share of the rows.
fn report(before: &[(String, f64)], after: &[(String, f64)]) {
    let mut rows = [0.0, 0.0];
    for ((name, old), (_, new)) in before.iter().zip(after) {
        let delta = new - old;
        if delta > 0.0 {
            println!("  {name} +{delta}");
        }
        if name.starts_with("pgrelay_read_rows_total") {
            rows[usize::from(name.contains("primary"))] += delta;
        }
    }
    let total = rows[0] + rows[1];
    if total > 0.0 {
        println!(
            "  catch-up rows read on the replica: {:.1}% ({} of {total})",
            100.0 * rows[0] / total,
            rows[0]
        );
    }
}
