//! The stream's HTTP/1.1 on the wire, read off raw sockets: streams are written by the relay's
//! own writer (src/server/writer.rs), so their framing, their refusals and their end are
//! checked byte by byte here.

use std::time::Duration;

use pgrelay::sse::{SseItem, SseParser};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A response read off a raw socket: its head (lowercased) and the body bytes read so far.
struct RawResponse {
    socket: TcpStream,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    /// Sends `request` in one write and reads the response head.
    async fn send(base: &str, request: &[u8]) -> RawResponse {
        let mut socket = TcpStream::connect(address(base)).await.unwrap();
        socket.write_all(request).await.unwrap();
        RawResponse::read_head(socket).await
    }

    async fn read_head(mut socket: TcpStream) -> RawResponse {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(PATIENCE, socket.read(&mut buffer))
                .await
                .expect("no response head in time")
                .unwrap();
            assert!(read > 0, "closed before a response head: {received:?}");
            received.extend_from_slice(&buffer[..read]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(received[..end].to_vec()).unwrap();
                return RawResponse {
                    socket,
                    head: head.to_ascii_lowercase(),
                    body: received[end + 4..].to_vec(),
                };
            }
        }
    }

    fn has_header(&self, line: &str) -> bool {
        self.head.lines().any(|l| l.trim() == line)
    }

    /// Reads until the body holds `needle`; false if the connection closed or `wait` passed.
    async fn read_until(&mut self, needle: &[u8], wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buffer = [0u8; 4096];
        while !self.body.windows(needle.len()).any(|w| w == needle) {
            match tokio::time::timeout_at(deadline, self.socket.read(&mut buffer)).await {
                Ok(Ok(read)) if read > 0 => self.body.extend_from_slice(&buffer[..read]),
                _ => return false,
            }
        }
        true
    }

    /// Reads to the end of the connection; `None` if it is still open after `wait`.
    async fn read_to_close(&mut self, wait: Duration) -> Option<()> {
        // A reset counts as a close too.
        let read = tokio::time::timeout(wait, self.socket.read_to_end(&mut self.body)).await;
        read.ok().map(|_| ())
    }
}

fn stream_request(token: &str, version: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET /v1/stream?token={token} HTTP/{version}\r\nHost: relay\r\n{extra_headers}\r\n")
        .into_bytes()
}

/// An HTTP/1.0 client gets the stream delimited by the close, with no chunk framing, and a
/// message arrives in it as one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_stream_is_unchunked_and_carries_events() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let token = relay.token("alice", &[]);
    let mut response = RawResponse::send(&relay.base, &stream_request(&token, "1.0", "")).await;
    assert!(
        response.head.starts_with("http/1.1 200"),
        "{}",
        response.head
    );
    assert!(response.has_header("content-type: text/event-stream"));
    assert!(response.has_header("connection: close"));
    assert!(
        !response.head.contains("transfer-encoding"),
        "{}",
        response.head
    );
    assert!(response.read_until(b"event: position", PATIENCE).await);

    insert(&client, &["alice"], json!({"text": "over 1.0"})).await;
    assert!(response.read_until(b"over 1.0", PATIENCE).await);
    let events: Vec<_> = SseParser::new()
        .feed(&response.body)
        .into_iter()
        .filter_map(|item| match item {
            SseItem::Event(event) if event.event.as_deref() == Some("message") => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let data: Value = serde_json::from_str(events[0].data.as_deref().unwrap()).unwrap();
    assert_eq!(data["payload"]["text"], "over 1.0");
    relay.stop().await;
}

/// A request head that arrives a few bytes at a time (within the header timeout) still opens
/// a chunked stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_in_pieces_opens_the_stream() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &[]);
    let request = stream_request(&token, "1.1", "Accept: text/event-stream\r\n");
    let mut socket = TcpStream::connect(address(&relay.base)).await.unwrap();
    for piece in request.chunks(request.len() / 6 + 1) {
        socket.write_all(piece).await.unwrap();
        socket.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut response = RawResponse::read_head(socket).await;
    assert!(
        response.head.starts_with("http/1.1 200"),
        "{}",
        response.head
    );
    assert!(response.has_header("transfer-encoding: chunked"));
    assert!(response.read_until(b"event: position", PATIENCE).await);
    relay.stop().await;
}

/// A large head (a browser with big cookies, 40 KiB) still opens the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stream_request_head_is_still_served() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &[]);
    let cookie = format!("Cookie: big={}\r\n", "c".repeat(40 * 1024));
    let mut response =
        RawResponse::send(&relay.base, &stream_request(&token, "1.1", &cookie)).await;
    assert!(
        response.head.starts_with("http/1.1 200"),
        "{}",
        response.head
    );
    assert!(response.read_until(b"event: position", PATIENCE).await);
    relay.stop().await;
}

/// A refused stream gets its JSON error with a length, and the connection closes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_gets_json_with_a_length_then_the_close() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut response =
        RawResponse::send(&relay.base, &stream_request("not-a-token", "1.1", "")).await;
    assert!(
        response.head.starts_with("http/1.1 401"),
        "{}",
        response.head
    );
    assert!(response.has_header("content-type: application/json"));
    assert!(response.has_header("connection: close"));
    response
        .read_to_close(PATIENCE)
        .await
        .expect("the connection stayed open after the refusal");
    let length: usize = response
        .head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("no content-length")
        .parse()
        .unwrap();
    assert_eq!(response.body.len(), length);
    let error: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(error["error"], "invalid_token");
    relay.stop().await;
}

/// A stream's client only listens. One that sends more bytes (a pipelined request, junk) is
/// disconnected and its stream unregistered, instead of the relay buffering what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_sends_more_is_disconnected() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &[]);
    let mut response = RawResponse::send(&relay.base, &stream_request(&token, "1.1", "")).await;
    assert!(response.read_until(b"event: position", PATIENCE).await);
    assert_eq!(metric(&relay.base, "pgrelay_subscribers").await, 1);

    // The relay may close before it has all of it.
    let _ = response.socket.write_all(&vec![b'x'; 64 * 1024]).await;
    response
        .read_to_close(Duration::from_secs(5))
        .await
        .expect("a stream whose client sent 64 KiB was still open after 5 s");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_subscribers").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream stayed registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}
