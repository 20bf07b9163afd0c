//! What one big row costs a relay (issue 20, attack 4), for any `pgrelay` binary:
//!
//! ```text
//! cargo build --release && cargo run --release --example oversized -- target/release/pgrelay
//! ```
//!
//! Starts a throwaway PostgreSQL and the given `pgrelay serve` (default flags), then:
//!
//! 1. **Resuming streams**: one 40 MB row for alice (md5 hex, which PostgreSQL cannot compress)
//!    between two small ones; 12 streams resume from before it and read until the message after
//!    it. Reports the relay's RSS before and its peak (sampled every 10 ms), and the event name
//!    the big row arrived as.
//! 2. **Whole reads**: 4 concurrent `GET /v1/messages/{id}` of the 40 MB row, read to the end.
//!    Reports the RSS peak and how many were answered 200 and 503.
//!
//! Everything runs on 127.0.0.1 and stops by itself (each read is bounded to 120 s).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseItem, SseParser};

#[path = "support/relay_process.rs"]
mod relay_process;
use relay_process::{rss_kib_of, setup, BoxError, Relay, Setup};

const SECRET: &str = "oversized-example-secret-0123456789";

/// How long any one read may take before the example gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// Samples the RSS of process `pid` every 10 ms until the returned flag is raised; the task
/// answers the peak in KiB.
fn sample_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = rss_kib_of(pid).max(peak);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            rss_kib_of(pid).max(peak)
        }
    });
    (stop, task)
}

/// Reads alice's stream from after `since` until message `until`; answers the event name the
/// message after `since` arrived as.
async fn resume(base: String, token: String, since: i64, until: i64) -> Result<String, BoxError> {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/stream"))
        .bearer_auth(token)
        .header("Last-Event-ID", since.to_string())
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        for item in parser.feed(&chunk?) {
            let SseItem::Event(event) = item else {
                continue;
            };
            if event.is_opening() {
                continue;
            }
            let id: Option<i64> = event.id.as_deref().and_then(|id| id.parse().ok());
            if first.is_none() {
                first = event.event.clone();
            }
            if id == Some(until) {
                return Ok(first.unwrap_or_default());
            }
        }
    }
    Err("the stream ended early".into())
}

/// `GET /v1/messages/{id}` read to the end: the status and the body's length.
async fn fetch_whole(base: String, token: String, id: i64) -> Result<(u16, usize), BoxError> {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/messages/{id}"))
        .bearer_auth(token)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.len()))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Setup {
        binary,
        _cluster,
        url,
        db,
    } = setup("oversized").await?;
    let keys = Keys::from_secret_list(SECRET)?;
    let token = keys.mint("alice", Duration::from_secs(3600), &[]);

    let relay = Relay::start(&binary, &url, SECRET).await?;
    db.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{\"n\": 1}')",
    )
    .await?;
    let numbered = "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM pgrelay.messages \
                    WHERE id > 0";
    let ids = wait_for_ids(&db, numbered, 1).await?;
    let since = ids[0];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = relay.rss_kib();

    let (stop, peak) = sample_rss(relay.child.id());
    db.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT '{alice}', jsonb_build_object('blob', string_agg(md5(g::text), '')) \
           FROM generate_series(1, 1250000) g; \
         INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{\"n\": 3}')",
    )
    .await?;
    let ids = wait_for_ids(&db, numbered, 3).await?;
    let (big, last) = (ids[1], ids[2]);
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let read = resume(relay.base.clone(), token.clone(), since, last);
        streams.spawn(tokio::time::timeout(PATIENCE, read));
    }
    let mut arrived_as = Vec::new();
    for result in streams.join_all().await {
        arrived_as.push(result.map_err(|_| "a stream took too long")??);
    }
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await?;
    arrived_as.dedup();
    println!(
        "resuming streams: relay RSS {before} KiB before, {peak} KiB at the peak (growth {} KiB) \
         with one 40 MB row and 12 streams resuming over it; the row arrived as {arrived_as:?}",
        peak.saturating_sub(before)
    );

    let before = relay.rss_kib();
    let (stop, peak) = sample_rss(relay.child.id());
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let read = fetch_whole(relay.base.clone(), token.clone(), big);
        reads.spawn(tokio::time::timeout(PATIENCE, read));
    }
    let mut statuses = Vec::new();
    for result in reads.join_all().await {
        let (status, length) = result.map_err(|_| "a read took too long")??;
        statuses.push(format!("{status} ({length} bytes)"));
    }
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await?;
    statuses.sort();
    println!(
        "whole reads: relay RSS {before} KiB before, {peak} KiB at the peak (growth {} KiB) with \
         4 concurrent GET /v1/messages/{big}: {statuses:?}",
        peak.saturating_sub(before)
    );
    Ok(())
}

/// The numbered message ids, once there are `count` of them (the relay numbers them).
async fn wait_for_ids(
    db: &tokio_postgres::Client,
    query: &str,
    count: usize,
) -> Result<Vec<i64>, BoxError> {
    for _ in 0..1000 {
        let ids: Vec<i64> = db.query_one(query, &[]).await?.get(0);
        if ids.len() >= count {
            return Ok(ids);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the relay never numbered the messages".into())
}
