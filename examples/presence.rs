//! Signals and presence figures: signal latency, presence propagation across instances, and
//! the audience-query load of a reconnect storm.
//!
//! ```text
//! cargo run --release --example presence [-- --streams 5000]
//! ```
//!
//! Starts a throwaway PostgreSQL with `track_functions = all` (so `pg_stat_user_functions`
//! counts calls of `pgrelay.presence_audience`) and two relays in this process, A and B, then:
//!
//! 1. **Signal latency**: 500 `SELECT pgrelay.signal(…)` calls, 20 ms apart, each timed from
//!    the call's return to the event's arrival on a stream held open on the *other* instance.
//! 2. **Presence propagation**: 20 participants each open a stream on A while an observer who
//!    shares a message with all of them listens on B; time from the stream's response headers
//!    on A to the `presence` online event on B.
//! 3. **Reconnect storm**: `--streams` participants (default 5,000), each sharing a message
//!    with an observer, connect to A (a cold start: every one is a real transition). Then A is
//!    shut down and a new relay A' takes its place, and all of them reconnect at once — what a
//!    rolling restart looks like. Audience-function calls are counted for both phases.
//!
//! Stream clients here are raw sockets that send the request and keep the connection open: the
//! storm measures the relay and the database, not an HTTP client.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseItem, SseParser};
use pgrelay_cluster::TempCluster;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

#[path = "support/relay_in_process.rs"]
mod relay_in_process;

use relay_in_process::Relay;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SECRET: &str = "presence-benchmark-secret-0123456789";

fn token(sub: &str) -> String {
    Keys::from_secret_list(SECRET)
        .unwrap()
        .mint(sub, Duration::from_secs(3600), &[])
}

/// An SSE stream read with reqwest, yielding (event name, data) of events.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    pending: std::collections::VecDeque<(String, String)>,
}

impl Stream {
    async fn open(base: &str, sub: &str) -> Result<Stream, BoxError> {
        let response = reqwest::get(format!("{base}/v1/stream?token={}", token(sub))).await?;
        if response.status() != 200 {
            return Err(format!("stream refused: {}", response.status()).into());
        }
        Ok(Stream {
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            pending: Default::default(),
        })
    }

    /// The next event named `name`.
    async fn next_named(&mut self, name: &str) -> Result<String, BoxError> {
        loop {
            while let Some((event, data)) = self.pending.pop_front() {
                if event == name {
                    return Ok(data);
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await?
                .ok_or("stream ended")??;
            for item in self.parser.feed(&chunk) {
                if let SseItem::Event(event) = item {
                    if let (Some(name), Some(data)) = (event.event, event.data) {
                        self.pending.push_back((name, data));
                    }
                }
            }
        }
    }
}

/// Opens a stream with a raw socket and keeps it open without reading.
async fn raw_stream(base: &str, sub: &str) -> Result<TcpStream, BoxError> {
    let address = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await?;
    let request = format!(
        "GET /v1/stream?token={} HTTP/1.1\r\nHost: {address}\r\n\r\n",
        token(sub)
    );
    socket.write_all(request.as_bytes()).await?;
    Ok(socket)
}

async fn connect(url: &str) -> Result<Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn audience_calls(client: &Client) -> Result<i64, BoxError> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_user_functions \
             WHERE schemaname = 'pgrelay' AND funcname = 'presence_audience'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The number of presence rows in the table.
async fn presence_rows(client: &Client) -> Result<i64, BoxError> {
    Ok(client
        .query_one("SELECT count(*) FROM pgrelay.presence", &[])
        .await?
        .get(0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {label} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        values[values.len() - 1],
        values.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let streams: usize = std::env::args()
        .skip_while(|arg| arg != "--streams")
        .nth(1)
        .map_or(Ok(5000), |n| n.parse())?;
    eprintln!("presence: starting a throwaway PostgreSQL…");
    let cluster =
        TempCluster::start_with(&[("track_functions", "all"), ("max_connections", "200")]).await?;
    let url = cluster.url("postgres");
    pgrelay::migrate::migrate(&url, "pgrelay").await?;
    let db = connect(&url).await?;
    let a = Relay::start(&url, None, SECRET).await?;
    let b = Relay::start(&url, None, SECRET).await?;

    println!("| figure | p50 | p99 | max | samples |\n|---|---|---|---|---|");

    // 1. Signal latency, SQL call return → event on the other instance.
    let mut receiver = Stream::open(&b.base, "listener").await?;
    let mut latencies = Vec::new();
    for n in 0..500 {
        let started = Instant::now();
        db.execute(
            "SELECT pgrelay.signal('{listener}', 'typing', jsonb_build_object('n', $1::int))::text",
            &[&n],
        )
        .await?;
        let returned = started.elapsed();
        receiver.next_named("typing").await?;
        latencies.push((started.elapsed() - returned).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    summary("signal: commit return → SSE on another instance", latencies);

    // 2. Presence propagation A → B.
    let members: Vec<String> = (0..20).map(|i| format!("member{i}")).collect();
    let mut everyone = members.clone();
    everyone.push("observer".into());
    db.execute(
        "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, '{}')",
        &[&everyone],
    )
    .await?;
    let mut observer = Stream::open(&b.base, "observer").await?;
    let mut propagation = Vec::new();
    let mut held = Vec::new();
    for member in &members {
        let opened = Instant::now();
        held.push(Stream::open(&a.base, member).await?);
        loop {
            let data: serde_json::Value =
                serde_json::from_str(&observer.next_named("presence").await?)?;
            if data["participant"] == member.as_str() && data["online"] == true {
                break;
            }
        }
        propagation.push(opened.elapsed().as_secs_f64() * 1000.0);
    }
    summary(
        "presence online: stream opened on A → event on B",
        propagation,
    );
    drop(held);

    // 3. Reconnect storm.
    db.batch_execute(&format!(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT ARRAY['storm' || n, 'storm-observer'], '{{}}' FROM generate_series(1, {streams}) n"
    ))
    .await?;
    let before = audience_calls(&db).await?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(streams);
    for n in 1..=streams {
        sockets.push(raw_stream(&a.base, &format!("storm{n}")).await?);
    }
    let connected = started.elapsed();
    while presence_rows(&db).await? < streams as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = started.elapsed();
    let cold = audience_calls(&db).await? - before;
    println!();
    println!(
        "cold start: {streams} streams connected in {:.2} s, all announced online after {:.2} s; \
         {cold} audience-function calls ({:.0}/s over that time)",
        connected.as_secs_f64(),
        settled.as_secs_f64(),
        cold as f64 / settled.as_secs_f64()
    );

    a.stop().await;
    drop(sockets);
    let replacement = Relay::start(&url, None, SECRET).await?;
    let before = audience_calls(&db).await?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(streams);
    for n in 1..=streams {
        sockets.push(raw_stream(&replacement.base, &format!("storm{n}")).await?);
    }
    let connected = started.elapsed();
    // Wait for the new instance's rows, then for two more presence ticks.
    while presence_rows(&db).await? < 2 * streams as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let storm = audience_calls(&db).await? - before;
    println!(
        "rolling restart: {streams} streams reconnected to a new instance in {:.2} s; \
         {storm} audience-function calls",
        connected.as_secs_f64()
    );

    drop(sockets);
    replacement.stop().await;
    b.stop().await;
    cluster.shutdown().await?;
    Ok(())
}
