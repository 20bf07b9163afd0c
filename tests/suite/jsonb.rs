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
