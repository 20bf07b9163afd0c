//! The relay's HTTP/1.1 on the wire, read off raw sockets: every head or body framing it
//! cannot take is answered with JSON and its status (never hyper's empty 400), one parser
//! decides where each request ends, and keep-alive, pipelining, chunked bodies,
//! `Expect: 100-continue`, `HEAD` and HTTP/1.0 work as clients expect.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A `POST /v1/messages` head with `fields` (CRLF-terminated lines) and no body yet.
fn post_head(token: &str, fields: &str) -> String {
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{fields}\r\n"
    )
}

/// The JSON body of a message to bob.
fn message_body(text: &str) -> String {
    json!({"participants": ["bob"], "payload": {"text": text}}).to_string()
}

/// What a malformed request sends and what it must get back.
struct Malformed {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn malformed(
    name: &'static str,
    request: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Malformed {
    Malformed {
        name,
        request: request.into(),
        status,
        code,
    }
}

/// Every way a head or its body framing can be wrong that hyper answered with an empty body.
fn malformed_requests() -> Vec<Malformed> {
    let many_fields: String = (0..101).map(|n| format!("X-F{n}: v\r\n")).collect();
    let huge_field = format!("X-Big: {}\r\n", "a".repeat(200 * 1024));
    vec![
        malformed(
            "space before a colon",
            "GET /healthz HTTP/1.1\r\nHost : relay\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "obs-fold",
            "GET /healthz HTTP/1.1\r\nHost: relay\r\nX-A: one\r\n two\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "NUL in a value",
            b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-A: a\0b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        malformed(
            "0xFF in the path",
            b"GET /health\xFFz HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        malformed(
            "a bare LF ends a line",
            "GET /healthz HTTP/1.1\nHost: relay\n\n",
            400,
            "bad_request",
        ),
        malformed(
            "a method that is no token",
            "G(T /healthz HTTP/1.1\r\nHost: relay\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "HTTP/1.2",
            "GET /healthz HTTP/1.2\r\nHost: relay\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
        malformed(
            "an HTTP/2 preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
        malformed(
            "101 header fields",
            format!("GET /healthz HTTP/1.1\r\nHost: relay\r\n{many_fields}\r\n"),
            431,
            "headers_too_large",
        ),
        malformed(
            "a 200 KiB head",
            format!("GET /healthz HTTP/1.1\r\nHost: relay\r\n{huge_field}\r\n"),
            431,
            "headers_too_large",
        ),
        malformed(
            "duplicate Content-Length",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\
             Content-Length: 2\r\n\r\n{}",
            400,
            "bad_request",
        ),
        malformed(
            "two Content-Length values",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Length: 2, 2\r\n\r\n{}",
            400,
            "bad_request",
        ),
        malformed(
            "a signed Content-Length",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Length: +2\r\n\r\n{}",
            400,
            "bad_request",
        ),
        malformed(
            "Content-Length with Transfer-Encoding",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "Transfer-Encoding in HTTP/1.0",
            "POST /v1/messages HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "a transfer coding other than chunked",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "not_implemented",
        ),
        malformed(
            "a chunk size that is not hex",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n\
             zz\r\n{}\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "chunk data longer than its size",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n\
             1\r\n{}\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        malformed(
            "a Content-Length over the largest body",
            "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Length: 999999999\r\n\r\n",
            413,
            "too_large",
        ),
    ]
}

/// Each malformed head or body framing gets JSON with its status, then the connection closes;
/// the relay goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_with_their_status() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    for case in malformed_requests() {
        let mut connection = RawConnection::open(&relay.base).await;
        connection.send(&case.request).await;
        let answer = connection.answer(false).await;
        answer.assert_json_error(case.status, case.code, case.name);
        assert_eq!(answer.header("connection"), Some("close"), "{}", case.name);
        assert!(
            connection.closed_within(PATIENCE).await.is_some(),
            "{}: the connection stayed open",
            case.name
        );
    }
    let healthy = reqwest::get(format!("{}/healthz", relay.base))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
    relay.stop().await;
}

/// A malformed request after a good one on a kept-alive connection gets JSON too: every head
/// is parsed by the relay, not only a connection's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_on_a_kept_alive_connection_gets_json() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    for case in malformed_requests() {
        let mut connection = RawConnection::open(&relay.base).await;
        connection
            .send(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await;
        let first = connection.answer(false).await;
        assert_eq!(first.status, 200, "{}", case.name);
        assert_eq!(
            first.header("connection"),
            None,
            "{}: kept alive",
            case.name
        );
        connection.send(&case.request).await;
        connection
            .answer(false)
            .await
            .assert_json_error(case.status, case.code, case.name);
    }
    relay.stop().await;
}

/// Requests sent back to back in one write are answered in order, bodies included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let body = message_body("pipelined");
    let mut requests = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec();
    requests.extend(post_head(&token, &format!("Content-Length: {}\r\n", body.len())).bytes());
    requests.extend(body.bytes());
    requests.extend(b"GET /nowhere HTTP/1.1\r\nHost: relay\r\n\r\n");
    requests.extend(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    let mut connection = RawConnection::open(&relay.base).await;
    connection.send(&requests).await;
    assert_eq!(connection.answer(false).await.status, 200);
    let published = connection.answer(false).await;
    assert_eq!(
        published.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&published.body)
    );
    connection
        .answer(false)
        .await
        .assert_json_error(404, "not_found", "pipelined 404");
    let last = connection.answer(false).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(connection.closed_within(PATIENCE).await.is_some());
    let client = connect(&db).await;
    assert_eq!(message_count(&client).await, 1);
    relay.stop().await;
}

/// A chunked body (in pieces, with a chunk extension and a trailer) is read whole and
/// published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_post_is_published() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let body = message_body("chunked");
    let (first, second) = body.split_at(10);
    let mut connection = RawConnection::open(&relay.base).await;
    connection
        .send(post_head(&token, "Transfer-Encoding: chunked\r\n").as_bytes())
        .await;
    connection
        .send(format!("{:x};note=1\r\n{first}\r\n", first.len()).as_bytes())
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    connection
        .send(
            format!(
                "{:X}\r\n{second}\r\n0\r\nX-Trailer: t\r\n\r\n",
                second.len()
            )
            .as_bytes(),
        )
        .await;
    let answer = connection.answer(false).await;
    assert_eq!(
        answer.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let id = serde_json::from_slice::<Value>(&answer.body).unwrap()["id"].clone();
    let client = connect(&db).await;
    let row = client
        .query_one("SELECT id, payload->>'text' FROM pgrelay.messages", &[])
        .await
        .unwrap();
    assert_eq!(json!(row.get::<_, i64>(0)), id);
    assert_eq!(row.get::<_, String>(1), "chunked");
    relay.stop().await;
}

/// A chunked body larger than any route takes is refused with 413 JSON, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_body_gets_413() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let mut connection = RawConnection::open(&relay.base).await;
    connection
        .send(post_head(&token, "Transfer-Encoding: chunked\r\n").as_bytes())
        .await;
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    for _ in 0..16 {
        connection.send(chunk.as_bytes()).await;
    }
    connection
        .answer(false)
        .await
        .assert_json_error(413, "too_large", "1 MiB in chunks");
    let client = connect(&db).await;
    assert_eq!(message_count(&client).await, 0);
    relay.stop().await;
}

/// `Expect: 100-continue` gets `100 Continue` before the client sends its body, then the
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let body = message_body("after continue");
    let fields = format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len());
    let mut connection = RawConnection::open(&relay.base).await;
    connection.send(post_head(&token, &fields).as_bytes()).await;
    assert_eq!(connection.answer(false).await.status, 100);
    connection.send(body.as_bytes()).await;
    assert_eq!(connection.answer(false).await.status, 201);
    relay.stop().await;
}

/// `HEAD` gets the head a `GET` would, with its length but without the body, and the
/// connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_no_body_and_keeps_the_connection() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut connection = RawConnection::open(&relay.base).await;
    connection
        .send(b"HEAD /healthz HTTP/1.1\r\nHost: relay\r\n\r\nGET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await;
    let head = connection.answer(true).await;
    assert_eq!(head.status, 200);
    let get = connection.answer(false).await;
    assert_eq!(get.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&get.body).unwrap()["status"],
        "ok"
    );
    relay.stop().await;
}

/// An HTTP/1.0 request is answered and its connection closed; so is an HTTP/1.1 request that
/// says `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_connection_close_end_the_connection() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    for request in [
        &b"GET /healthz HTTP/1.0\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
    ] {
        let mut connection = RawConnection::open(&relay.base).await;
        connection.send(request).await;
        let answer = connection.answer(false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(connection.closed_within(PATIENCE).await.is_some());
    }
    relay.stop().await;
}
