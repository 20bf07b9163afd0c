//! What one token holder can pin, and what catch-up costs: the figures of the trust-boundary
//! work (issue 10, attack 5), for any `pgrelay` binary.
//!
//! ```text
//! cargo build --release && cargo run --release --example pinning -- target/release/pgrelay
//! ```
//!
//! Starts a throwaway PostgreSQL and the given `pgrelay serve`, then:
//!
//! 1. **Pinning**: 300 messages of 60 KB for mallory; 15 `GET /v1/messages?since_id=0&limit=1000`
//!    requests (mallory's token) whose clients never read, from sockets with a 4 KiB receive
//!    buffer. Reports the relay's RSS before, and 5 s and 35 s after, and how many of the 15
//!    connections the relay has closed by then.
//! 2. **Catch-up**: 1,000 small messages for carol among 100,000 for others; a stream opened
//!    with `since_id=0` reads all 1,000; median of 5 runs from the request to the last event.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgrelay::auth::Keys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "pinning-example-secret-0123456789";

#[path = "support/relay_process.rs"]
mod relay_process;
use relay_process::{setup, BoxError, Relay, Setup};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Setup {
        binary,
        _cluster,
        url,
        db,
    } = setup("pinning").await?;
    let keys = Keys::from_secret_list(SECRET)?;

    db.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT '{mallory}', jsonb_build_object('n', n, 'pad', repeat('x', 60000)) \
         FROM generate_series(1, 300) AS n",
    )
    .await?;
    let relay = Relay::start(&binary, &url, SECRET).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = relay.rss_kib();
    let token = keys.mint("mallory", Duration::from_secs(3600), &[]);
    let address = relay.base.trim_start_matches("http://").parse()?;
    let mut sockets = Vec::new();
    for _ in 0..15 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut socket = socket.connect(address).await?;
        let request = format!(
            "GET /v1/messages?since_id=0&limit=1000 HTTP/1.1\r\nHost: relay\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await?;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_5s = relay.rss_kib();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_35s = relay.rss_kib();
    let mut closed = 0;
    for socket in &mut sockets {
        if closed_by_peer(socket).await {
            closed += 1;
        }
    }
    println!(
        "pinning: relay RSS {before} KiB before, {after_5s} KiB 5 s after 15 non-reading \
         history requests, {after_35s} KiB after 35 s; {closed} of 15 connections closed by the relay"
    );
    drop(relay);

    db.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT ARRAY['user' || (n % 1000)], jsonb_build_object('n', n) \
         FROM generate_series(1, 100000) AS n; \
         INSERT INTO pgrelay.messages (participants, payload) \
         SELECT '{carol}', jsonb_build_object('n', n, 'text', 'hello') \
         FROM generate_series(1, 1000) AS n",
    )
    .await?;
    let relay = Relay::start(&binary, &url, SECRET).await?;
    let token = keys.mint("carol", Duration::from_secs(3600), &[]);
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(catch_up(&relay.base, &token, 1000).await?);
    }
    runs.sort();
    println!(
        "catch-up: 1,000 of 101,000 rows over a stream with since_id=0: median {:.1} ms (runs {:?})",
        runs[2].as_secs_f64() * 1e3,
        runs.iter()
            .map(|run| format!("{:.1}", run.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Whether the peer has closed the connection: reads what the kernel buffered until the end
/// (true) or until nothing more comes for a second (false, still open).
async fn closed_by_peer(socket: &mut TcpStream) -> bool {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Time from requesting a stream with `since_id=0` to its `expected`-th message event.
async fn catch_up(base: &str, token: &str, expected: usize) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let response = reqwest::get(format!("{base}/v1/stream?since_id=0&token={token}")).await?;
    let mut body = response.bytes_stream();
    let mut parser = pgrelay::sse::SseParser::new();
    let mut seen = 0;
    while let Some(chunk) = body.next().await {
        for item in parser.feed(&chunk?) {
            if let pgrelay::sse::SseItem::Event(event) = item {
                if event.data.is_some() && event.event.as_deref() == Some("message") {
                    seen += 1;
                }
            }
        }
        if seen == expected {
            return Ok(started.elapsed());
        }
    }
    Err("the stream ended early".into())
}
