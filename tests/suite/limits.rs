//! Limits: a client over any limit gets a JSON error with the right status (or, below HTTP, a
//! closed connection), the relay never crashes, and it serves normally afterwards.

use std::time::Duration;

use crate::common::*;
use pgrelay::ConnectionLimits;
use pgrelay::Settings;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A relay with these connection limits.
async fn limited_relay(database_url: &str, limits: ConnectionLimits) -> Relay {
    Relay::launch(RelayOptions {
        limits,
        ..RelayOptions::new(database_url)
    })
    .await
}

/// The stream URL for a token.
fn stream_url(base: &str, token: &str) -> String {
    format!("{base}/v1/stream?token={token}")
}

/// Waits (up to `wait`) until the subscriber gauge reads `expected`.
async fn wait_for_subscribers(base: &str, expected: u64, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let count = metric(base, "pgrelay_subscribers").await;
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgrelay_subscribers stayed at {count}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts `/healthz` answers 200.
async fn assert_healthy(base: &str) {
    let response = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
}

/// The status code of a raw HTTP/1.1 answer, if it has a status line.
fn status_of(response: &[u8]) -> Option<u16> {
    let rest = response.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// Sends `request` on a fresh connection (ignoring write errors: the relay may close early)
/// and reads until the relay closes it. A reset after an answer still gives the answer (a
/// socket closed with unread input is reset); a reset before any answer is `Err`.
async fn raw_exchange(addr: &str, request: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let socket = TcpStream::connect(addr).await?;
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write // kept open (not half-closed) until the exchange is over
    });
    let mut response = Vec::new();
    let read_result = tokio::time::timeout(PATIENCE, read.read_to_end(&mut response))
        .await
        .expect("the relay neither answered nor closed the connection");
    drop(writer.await);
    match read_result {
        Err(error) if response.is_empty() => Err(error),
        _ => Ok(response),
    }
}

/// Alice's 4th stream over a limit of 3 gets 429 `too_many_streams`; bob is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_participant_are_limited() {
    let db = fresh_database().await;
    let settings = Settings {
        max_streams_per_participant: 3,
        ..test_settings()
    };
    let relay = Relay::start_with(&db, settings).await;
    let mut alice = Vec::new();
    for _ in 0..3 {
        let mut stream = relay.subscribe("alice", "", None).await;
        stream.opening_position().await;
        alice.push(stream);
    }

    let token = relay.token("alice", &[]);
    for _ in 0..3 {
        let refused = reqwest::get(stream_url(&relay.base, &token)).await.unwrap();
        assert_json_error(refused, 429, "too_many_streams", "").await;
    }
    // The limit is per participant, and refused attempts hold nothing.
    let mut bobs = Vec::new();
    for _ in 0..3 {
        let mut stream = relay.subscribe("bob", "", None).await;
        stream.opening_position().await;
        bobs.push(stream);
    }
    assert_eq!(metric(&relay.base, "pgrelay_subscribers").await, 6);

    // Closing one of alice's streams frees a slot once the relay notices the disconnect.
    drop(alice.pop());
    wait_for_subscribers(&relay.base, 5, Duration::from_secs(5)).await;
    let mut fresh = relay.subscribe("alice", "", None).await;
    fresh.opening_position().await;
    let refused = reqwest::get(stream_url(&relay.base, &token)).await.unwrap();
    assert_json_error(refused, 429, "too_many_streams", "").await;

    // The new stream is a working one, and so are the old ones.
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": 1})).await;
    assert_eq!(fresh.next_message().await.2["payload"]["n"], 1);
    for stream in &mut alice {
        assert_eq!(stream.next_message().await.2["payload"]["n"], 1);
    }
}

/// Opens a stream, retrying while the relay still counts connections that are closing.
async fn open_stream_when_a_slot_is_free(base: &str, token: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A connection refused over the limit may end in a reset rather than a read 503.
        if let Ok(response) = reqwest::get(stream_url(base, token)).await {
            if response.status() == 200 {
                return response;
            }
            assert_eq!(response.status(), 503, "unexpected answer");
        }
        assert!(Instant::now() < deadline, "no connection slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks a raw answer is the 503 `over_capacity` JSON error with `Retry-After`.
fn assert_over_capacity(answer: &[u8], context: &str) {
    let text = String::from_utf8_lossy(answer);
    assert_eq!(status_of(answer), Some(503), "{context}: {text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{context}: {head}"
    );
    assert!(head.contains("\r\nretry-after: "), "{context}: {head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "over_capacity", "{context}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// With `max_connections` 5 and five streams open, a 6th connection gets 503 `over_capacity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 5,
        ..ConnectionLimits::default()
    };
    let relay = limited_relay(&db, limits).await;
    let mut streams = Vec::new();
    for n in 0..5 {
        let token = relay.token(&format!("user{n}"), &[]);
        streams.push(open_stream_when_a_slot_is_free(&relay.base, &token).await);
    }

    // Every further connection is refused, whatever it asks for; one that sends nothing is
    // closed unanswered (an answer before the request would confuse real clients).
    for path in ["/healthz", "/v1/stream", "/metrics", "/nowhere"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        let answer = raw_exchange(address(&relay.base), request).await.unwrap();
        assert_over_capacity(&answer, path);
    }
    let mut silent = TcpStream::connect(address(&relay.base)).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.is_empty(),
        "a silent refused connection is closed unanswered"
    );

    // One stream closes: connections are served again.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(response) = reqwest::get(format!("{}/healthz", relay.base)).await {
            if response.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = relay.token("user4", &[]);
    let stream = open_stream_when_a_slot_is_free(&relay.base, &token).await;
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(stream);
    drop(streams);
    relay.stop().await;
}

/// A hyper-based client (reqwest, `pgrelay tail`) over the limit sees the 503, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_answer_reaches_http_clients() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 1,
        ..ConnectionLimits::default()
    };
    let relay = limited_relay(&db, limits).await;
    let stream = open_stream_when_a_slot_is_free(&relay.base, &relay.token("alice", &[])).await;
    for _ in 0..10 {
        let response = reqwest::get(format!("{}/healthz", relay.base))
            .await
            .unwrap_or_else(|error| panic!("no 503 but {error:?}"));
        assert_eq!(response.headers()["retry-after"], "5");
        assert_json_error(response, 503, "over_capacity", "").await;
    }
    drop(stream);
    relay.stop().await;
}

/// The header-timeout limits these tests use.
fn short_header_timeout() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 1000,
        header_timeout: Duration::from_millis(500),
        ..ConnectionLimits::default()
    }
}

/// Sends `head`, then trickles one more header byte every 200 ms; returns how long the relay
/// kept the connection open (it closes it, or stops reading it, or the test gives up at 5 s).
async fn trickle_until_closed(addr: String, head: &'static [u8]) -> Duration {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let started = Instant::now();
    let trickler = tokio::spawn(async move {
        if write.write_all(head).await.is_err() {
            return;
        }
        for byte in b"X-Slow: ".iter().chain([b'a'; 40].iter()).cycle().take(25) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = [0u8; 1024];
    let closed_after = loop {
        match tokio::time::timeout_at(started + Duration::from_secs(5), read.read(&mut buffer))
            .await
        {
            Err(_) => break started.elapsed(),
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            // An answer (e.g. 408) before the close is fine; keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    };
    trickler.abort();
    closed_after
}

/// Slowloris: trickled headers are cut off after the header timeout; others are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let db = fresh_database().await;
    let relay = limited_relay(&db, short_header_timeout()).await;
    let addr = address(&relay.base).to_owned();
    let mut tricklers = JoinSet::new();
    for _ in 0..20 {
        tricklers.spawn(trickle_until_closed(
            addr.clone(),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        ));
    }
    // Served while the tricklers hang on.
    for _ in 0..5 {
        assert_healthy(&relay.base).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(closed_after) = tricklers.join_next().await {
        let closed_after = closed_after.unwrap();
        assert!(
            closed_after >= Duration::from_millis(400) && closed_after < Duration::from_secs(2),
            "a trickling client was closed after {closed_after:?}"
        );
    }
    assert_healthy(&relay.base).await;
    relay.stop().await;
}

/// Reads (discarding what arrives) until the relay closes `socket`; how long that took, or
/// `None` if it was still open after `limit`.
async fn wait_for_close(socket: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + limit, socket.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connections that never send a byte are closed after the header timeout too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_off() {
    // Otherwise `max_connections` sockets that say nothing lock every real client out for good.
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 5,
        ..short_header_timeout()
    };
    let relay = limited_relay(&db, limits).await;
    let addr = address(&relay.base).to_owned();
    // Let the start-up check's connection close, then take every slot without a word.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    for socket in &mut silent {
        let closed_after = wait_for_close(socket, Duration::from_secs(3)).await;
        assert!(
            closed_after.is_some(),
            "a silent connection was still open after 3 s (header timeout 500 ms)"
        );
    }
    assert_healthy(&relay.base).await;
    relay.stop().await;
}

/// A partial HTTP/2 preface, or an h2c preface without requests, is closed in time too (the
/// relay speaks HTTP/1.1 only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_without_a_request_are_cut_off() {
    let db = fresh_database().await;
    let relay = limited_relay(&db, short_header_timeout()).await;
    let addr = address(&relay.base).to_owned();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(&preface[..16]).await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(preface).await.unwrap();
    idle.write_all(&settings).await.unwrap();
    let limit = Duration::from_secs(3);
    let partial_closed = wait_for_close(&mut partial, limit).await;
    let idle_closed = wait_for_close(&mut idle, limit).await;
    assert!(
        partial_closed.is_some(),
        "a partial HTTP/2 preface kept its connection open for 3 s"
    );
    assert!(
        idle_closed.is_some(),
        "an HTTP/2 connection without requests stayed open for 3 s"
    );
    assert_healthy(&relay.base).await;
    relay.stop().await;
}

/// An idle HTTP/1.1 keep-alive connection is closed after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_cut_off() {
    let db = fresh_database().await;
    let relay = limited_relay(&db, short_header_timeout()).await;
    let mut socket = TcpStream::connect(address(&relay.base)).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed_after = wait_for_close(&mut socket, Duration::from_secs(3))
        .await
        .expect("an idle keep-alive connection stayed open for 3 s");
    assert!(
        closed_after >= Duration::from_millis(400),
        "{closed_after:?}"
    );
    relay.stop().await;
}

/// How one storm connection misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Sends part of a request, then goes away.
    PartialRequest,
    /// Sends a complete stream request, then goes away at once.
    StreamThenDrop,
    /// Sends a complete stream request, waits for the answer to start, then goes away.
    StreamReadThenDrop,
}

/// Opens one connection, misbehaves, and drops it (with a reset when `reset`, else a FIN);
/// returns whether the relay had started answering with 200 (only known when it read).
async fn misbehave(addr: String, token: String, how: Misbehaviour, reset: bool) -> bool {
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    if reset {
        socket.set_zero_linger().unwrap();
    }
    let request = format!(
        "GET /v1/stream?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    match how {
        Misbehaviour::PartialRequest => {
            let _ = socket.write_all(&request.as_bytes()[..40]).await;
            false
        }
        Misbehaviour::StreamThenDrop => {
            let _ = socket.write_all(request.as_bytes()).await;
            false
        }
        Misbehaviour::StreamReadThenDrop => {
            let _ = socket.write_all(request.as_bytes()).await;
            let mut buffer = [0u8; 256];
            let read = tokio::time::timeout(PATIENCE, socket.read(&mut buffer)).await;
            matches!(read, Ok(Ok(n)) if status_of(&buffer[..n]) == Some(200))
        }
    }
}

/// 1,000 abandoned connections leave a healthy relay with no subscribers that still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_connections_leave_nothing_behind() {
    // Partial requests, streams dropped at once or after their first bytes, with FIN or RST.
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let addr = address(&relay.base).to_owned();
    let mut opened = 0;
    for batch in 0..10 {
        let mut connections = JoinSet::new();
        for n in 0..100 {
            let i = batch * 100 + n;
            let how = match i % 4 {
                0 | 2 => Misbehaviour::PartialRequest,
                1 => Misbehaviour::StreamThenDrop,
                _ => Misbehaviour::StreamReadThenDrop,
            };
            let token = relay.token(&format!("storm{i}"), &[]);
            connections.spawn(misbehave(addr.clone(), token, how, i % 8 < 4));
        }
        while let Some(done) = connections.join_next().await {
            opened += usize::from(done.unwrap());
        }
    }
    assert_eq!(
        opened, 250,
        "every stream that waited for its answer got 200"
    );
    assert_healthy(&relay.base).await;
    wait_for_subscribers(&relay.base, 0, Duration::from_secs(5)).await;

    let mut stream = relay.subscribe("carol", "", None).await;
    stream.opening_position().await;
    let client = connect(&db).await;
    insert(&client, &["carol"], json!({"after": "storm"})).await;
    let (id, _, data) = stream.next_message().await;
    assert_eq!(data["payload"]["after"], "storm");
    assert_eq!(data["id"], id);
    relay.stop().await;
}

/// Heads past the relay's limits get 431 or a closed connection, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    // The relay's limits: 160 KiB of head, and 100 header fields.
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let addr = address(&relay.base).to_owned();
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "one 1 MiB header",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        (
            "a 1 MiB request target",
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        (
            "500 headers",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
                (0..500)
                    .map(|n| format!("X-H{n}: v\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
        ),
    ];
    for (name, request) in cases {
        match raw_exchange(&addr, request).await {
            Ok(answer) if answer.is_empty() => {}
            Ok(answer) => {
                let status = status_of(&answer);
                assert!(
                    status.is_some_and(|s| (400..500).contains(&s)),
                    "{name}: answered {:?}",
                    String::from_utf8_lossy(&answer[..answer.len().min(200)])
                );
            }
            // Reset while the client was still sending: a closed connection.
            Err(_) => {}
        }
        assert_healthy(&relay.base).await;
    }

    // A 100 KB header: refused as too large, or served; either way no 5xx and no crash.
    let big = "b".repeat(100 * 1024);
    let response = reqwest::Client::new()
        .get(format!("{}/healthz", relay.base))
        .header("X-Big", big.as_str())
        .send()
        .await;
    if let Ok(response) = response {
        let status = response.status().as_u16();
        assert!(status == 200 || status == 431, "100 KB header: {status}");
    }
    // A huge token in the query string is an ordinary 401.
    let token = "t".repeat(32 * 1024);
    let response = reqwest::get(stream_url(&relay.base, &token)).await.unwrap();
    assert_json_error(response, 401, "token_too_long", "").await;
    assert_healthy(&relay.base).await;
    relay.stop().await;
}

/// Holds one flooding connection that sends a single byte and waits, opening a new one each
/// time the relay closes it, until `stop`; returns how many it opened.
async fn flood_one_byte(addr: String, stop: tokio_util::sync::CancellationToken) -> u32 {
    let mut opened = 0;
    while !stop.is_cancelled() {
        let Ok(mut socket) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        opened += 1;
        let _ = socket.write_all(b"G").await;
        let mut buffer = [0u8; 256];
        tokio::select! {
            _ = socket.read(&mut buffer) => {}
            _ = stop.cancelled() => {}
        }
        // Re-opened once it is closed, after a pause that keeps the churn within what this
        // test's two shared cores can schedule (examples/slot_flood.rs floods flat out).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    opened
}

/// A flood of connections that send one byte and never finish a head cannot lock genuine
/// clients out: they hold at most half the slots, and the oldest gives way to a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_flood_leaves_room_for_genuine_clients() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 100,
        header_timeout: Duration::from_secs(5),
        ..ConnectionLimits::default()
    };
    let relay = limited_relay(&db, limits).await;
    let addr = address(&relay.base).to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flooders = JoinSet::new();
    for _ in 0..120 {
        flooders.spawn(flood_one_byte(addr.clone(), stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Genuine streams open one after another and stay open, as a page's would.
    let mut streams = Vec::new();
    let mut refused = Vec::new();
    for n in 0..12 {
        let token = relay.token(&format!("genuine{n}"), &[]);
        match reqwest::get(stream_url(&relay.base, &token)).await {
            Ok(response) if response.status() == 200 => streams.push(response),
            Ok(response) => refused.push(format!("{}", response.status())),
            Err(error) => refused.push(format!("{error}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut opened = 0;
    while let Some(count) = flooders.join_next().await {
        opened += count.unwrap();
    }
    assert!(opened >= 120, "the flood opened only {opened} connections");
    assert!(
        refused.is_empty(),
        "{} of 12 genuine streams refused during the flood: {refused:?}",
        refused.len()
    );
    drop(streams);
    relay.stop().await;
}

/// A head whose first 16,000 bytes arrive at once, 1,000 more at 1.5 s (past what a first
/// reader might buffer before handing the connection on) and then a byte every 100 ms, is
/// closed at one header timeout (2 s) from the connection's start, whoever parses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_large_head_is_closed_at_one_header_timeout() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(2),
        ..short_header_timeout()
    };
    let relay = limited_relay(&db, limits).await;
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: c=".to_vec();
    head.resize(16_000, b'c');
    let mut connection = RawConnection::open(&relay.base).await;
    let started = Instant::now();
    connection.send(&head).await;
    let (mut read, mut write) = connection.socket.into_split();
    let trickler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if write.write_all(&[b'c'; 1000]).await.is_err() {
            return;
        }
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b"c").await.is_err() {
                return;
            }
        }
    });
    let mut buffer = [0u8; 1024];
    let closed_after = loop {
        match tokio::time::timeout_at(started + Duration::from_secs(6), read.read(&mut buffer))
            .await
        {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    };
    trickler.abort();
    // 3.5 s would mean a second deadline started when the head changed hands at 1.5 s.
    assert!(
        closed_after >= Duration::from_millis(1800) && closed_after < Duration::from_millis(3000),
        "a trickling head was closed after {closed_after:?} (header timeout 2 s)"
    );
    relay.stop().await;
}

/// A kept-alive connection idle between requests counts as waiting: when newcomers fill the
/// waiting share it gives way (closed long before its header timeout), and a connection
/// serving a stream does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_gives_way_under_pressure() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 5,
        header_timeout: Duration::from_secs(10),
        ..ConnectionLimits::default()
    };
    let relay = limited_relay(&db, limits).await;
    // Let the start-up check's connection close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = open_stream_when_a_slot_is_free(&relay.base, &relay.token("alice", &[])).await;
    let mut idle = RawConnection::open(&relay.base).await;
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);

    // Two silent newcomers fill the share of two: the idle connection, the oldest, gives way.
    let _silent: Vec<TcpStream> = vec![
        TcpStream::connect(address(&relay.base)).await.unwrap(),
        TcpStream::connect(address(&relay.base)).await.unwrap(),
    ];
    let closed_after = idle.closed_within(Duration::from_secs(3)).await;
    assert!(
        closed_after.is_some(),
        "an idle kept-alive connection held its slot under pressure"
    );
    // The stream kept its slot and still delivers.
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"still": "open"})).await;
    let mut events = stream.bytes_stream();
    let deadline = Instant::now() + PATIENCE;
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("still") {
        let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut events))
            .await
            .expect("the stream delivered nothing")
            .expect("the stream ended")
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    relay.stop().await;
}

/// Connections that send a large body and never finish it (so never reach a route, or a token
/// check) cannot pile their bytes up in the relay: the bytes held by waiting connections are
/// bounded together, the oldest giving way, so 800 of them leave the relay's memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bodies_cannot_pile_up_in_memory() {
    let db = fresh_database().await;
    let relay = RelayProcess::start(&db, &[], None).await;
    let before = relay.rss_kib();
    let head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 330000\r\n\r\n";
    let most_of_the_body = vec![b' '; 320_000];
    let mut sockets = Vec::new();
    for _ in 0..800 {
        let mut socket = TcpStream::connect(address(&relay.base)).await.unwrap();
        // A connection that gave way is closed while it writes: that is the point.
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(&most_of_the_body).await;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_kib = relay.rss_kib().saturating_sub(before);
    println!("800 unfinished bodies of 320,000 bytes: the relay grew by {grown_kib} KiB");
    // 256 MB were sent; the waiting connections may hold 32 MiB of it together.
    assert!(
        grown_kib < 128 * 1024,
        "800 unfinished bodies grew the relay by {grown_kib} KiB"
    );
    assert_eq!(
        reqwest::get(format!("{}/healthz", relay.base))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Connections that send whole requests and never read the answers (a pipelined batch of
/// `GET /v1/openapi.json`, 50 KB each, to a 4 KiB receive buffer) cannot lock genuine clients
/// out for the write timeout: an answer of known length is written while its connection counts
/// as waiting, so under pressure the oldest such connection gives way like an idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_cannot_hold_the_slots() {
    let db = fresh_database().await;
    let limits = ConnectionLimits {
        max_connections: 6,
        ..ConnectionLimits::default()
    };
    let relay = limited_relay(&db, limits).await;
    // Let the start-up check's connection close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(400);
    let mut non_readers = Vec::new();
    for _ in 0..6 {
        let mut socket = slow_reader(address(&relay.base).parse().unwrap()).await;
        // Sent whole (the relay reads requests while it answers), never read.
        socket.write_all(&request).await.unwrap();
        non_readers.push(socket);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for every answer to stall on a full socket, far short of the 30 s write
    // timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let genuine = reqwest::get(format!("{}/healthz", relay.base)).await;
    assert!(
        genuine.as_ref().is_ok_and(|r| r.status() == 200),
        "a genuine client was refused while non-readers held the slots: {genuine:?}"
    );
    drop(non_readers);
    relay.stop().await;
}

/// A publish within every documented limit (a payload of at most 64 KiB, at most 1,000
/// participants, each name at most 256 bytes) is taken however its names are written in JSON:
/// `"` and `\` are allowed in names, and JSON writes each as two bytes. The body's limit
/// counted a name's 256 bytes once, and this publish was refused 413 (found by an outside
/// review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_within_the_limits_is_taken_whatever_its_names_escape_to() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let token = relay.token("alice", &["publish"]);
    // 1,000 names of 256 bytes: 252 quotes and a number.
    let names: Vec<String> = (0..1000)
        .map(|n| format!("{}{n:04}", "\"".repeat(252)))
        .collect();
    let body = json!({ "participants": names, "payload": {"t": 1} });
    let (status, answer) =
        status_and_json(post(&relay.base, "/v1/messages", &token, body).await).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(message_count(&client).await, 1);
}
