//! A payload `jsonb` refuses is answered 422 over HTTP, on both publishing routes, with the
//! reason; the relay's own check of it agrees with PostgreSQL (src/jsonb/agreement.rs).

use crate::common::*;

/// The deepest nesting docs/http-api.md allows.
const MAX_DEPTH: usize = 512;

/// Arrays nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Each kind of payload jsonb refuses is answered 422 with the reason, on `POST /v1/messages`
/// and on `POST /v1/signals`, and nothing is stored; a payload nested `MAX_DEPTH` deep is
/// stored and read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payloads_are_answered_422_with_the_reason() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let token = relay.token("alice", &["publish"]);
    let refused = [
        (r#"{"t": "a\u0000b"}"#.to_owned(), "\\u0000"),
        (r#"{"\u0000": 1}"#.to_owned(), "\\u0000"),
        (r#"["\ud800"]"#.to_owned(), "surrogate"),
        (r#""\udfff\ud800""#.to_owned(), "surrogate"),
        ("1e999999".to_owned(), "range"),
        (r#"{"n": 0.5e-16383}"#.to_owned(), "range"),
        (nested(MAX_DEPTH + 1), "nested"),
        (nested(20_000), "nested"),
    ];
    for (payload, reason) in refused {
        for (route, extra) in [("/v1/messages", ""), ("/v1/signals", r#","kind":"typing""#)] {
            if route == "/v1/signals" && payload.len() > 1024 {
                continue;
            }
            let body = format!(r#"{{"participants":["bob"],"payload":{payload}{extra}}}"#);
            let context = format!("{route} {}", &payload[..payload.len().min(40)]);
            let response = post_text(&relay.base, route, &token, body).await;
            let error = assert_json_error(response, 422, "invalid", &context).await;
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(reason), "{context}: {message}");
        }
    }
    assert_eq!(message_count(&client).await, 0);

    let deepest = nested(MAX_DEPTH);
    let body = format!(r#"{{"participants":["bob"],"payload":{deepest}}}"#);
    let (status, answer) =
        status_and_json(post_text(&relay.base, "/v1/messages", &token, body).await).await;
    assert_eq!(status, 201, "{answer}");
    // Read as text: serde_json's `Value` stops at 128 levels.
    let page = history(&relay.base, &token, "since_id=0").await;
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!(r#""payload":{deepest}"#)), "{page}");
}

/// A payload whose numbers PostgreSQL stores digit by digit is measured as stored: 1,100 times
/// `1e131071` is 10 KB as sent and 144 MB once `jsonb` renders it, which no stream or whole
/// read could ever serve. It was taken (201) and could never be read; it is refused 413 now
/// (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_of_numbers_larger_once_stored_is_refused() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let alice = relay.token("alice", &["publish"]);
    let payload = format!("[{}]", vec!["1e131071"; 1100].join(","));
    let body = format!(r#"{{"participants":["bob"],"payload":{payload}}}"#);
    let (status, answer) =
        status_and_json(post_text(&relay.base, "/v1/messages", &alice, body).await).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "too_large", "{answer}");
    assert_eq!(message_count(&client).await, 0);
}
