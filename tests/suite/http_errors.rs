//! Bad input gets a clear JSON error with the right status, never a 5xx, and changes nothing.

use crate::common::*;
use pgrelay::Settings;
use reqwest::header::HeaderValue;
use serde_json::{json, Value};

/// A `POST /v1/messages` body with `payload` spliced in as raw JSON.
fn body_with_payload(payload: &str) -> String {
    format!(r#"{{"participants":["bob"],"payload":{payload}}}"#)
}

/// A JSON object payload of exactly `len` bytes: `{"t":"xxx…"}`.
fn payload_of_len(len: usize) -> String {
    let payload = json!({ "t": "x".repeat(len - 8) }).to_string();
    assert_eq!(payload.len(), len);
    payload
}

/// What a POST case sends and what it must get back.
struct PostCase {
    name: &'static str,
    content_type: Option<&'static str>,
    body: String,
    /// 201 for accepted cases; anything else is an error with `code`.
    status: u16,
    code: &'static str,
}

fn json_case(
    name: &'static str,
    body: impl Into<String>,
    status: u16,
    code: &'static str,
) -> PostCase {
    PostCase {
        name,
        content_type: Some("application/json"),
        body: body.into(),
        status,
        code,
    }
}

/// Sends one POST case as alice with scope `publish`; returns the stored-message count change.
async fn post_case(relay: &Relay, db: &tokio_postgres::Client, case: &PostCase) -> i64 {
    let before = message_count(db).await;
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(relay.token("alice", &["publish"]))
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    if case.status == 201 {
        assert_eq!(response.status(), 201, "{}", case.name);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["id"].as_i64().is_some_and(|id| id > 0),
            "{}",
            case.name
        );
    } else {
        assert_json_error(response, case.status, case.code, case.name).await;
    }
    message_count(db).await - before
}

/// Each malformed or invalid POST gets its exact status and a JSON error and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_posts_get_json_errors_and_store_nothing() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;

    let names = |n: usize| -> Vec<String> { (0..n).map(|i| format!("p{i:04}")).collect() };
    let with_participants = |participants: Value| {
        json!({"participants": participants, "payload": {"t": 1}}).to_string()
    };
    let with_kind = |kind: Value| {
        json!({"participants": ["bob"], "kind": kind, "payload": {"t": 1}}).to_string()
    };
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    let unicode = json!({
        "participants": ["bob", "zoë", "李"],
        "kind": "chat",
        "payload": {"t": "héllo 👋 \u{1F600} ✓ \u{2028}"},
    })
    .to_string();

    let cases = vec![
        json_case(
            "invalid JSON",
            r#"{"participants": ["bob"], "payload": "#,
            400,
            "bad_request",
        ),
        json_case("empty body", "", 400, "bad_request"),
        json_case(
            "trailing garbage",
            r#"{"participants":["bob"],"payload":1} x"#,
            400,
            "bad_request",
        ),
        json_case("body is an empty array", "[]", 422, "invalid"),
        json_case("body is an array of numbers", "[1, 2, 3]", 422, "invalid"),
        json_case("body is a string", r#""hello""#, 422, "invalid"),
        json_case("body is a number", "42", 422, "invalid"),
        json_case("body is null", "null", 422, "invalid"),
        PostCase {
            name: "Content-Type text/plain",
            content_type: Some("text/plain"),
            body: with_participants(json!(["bob"])),
            status: 415,
            code: "unsupported_media_type",
        },
        PostCase {
            name: "Content-Type application/x-www-form-urlencoded",
            content_type: Some("application/x-www-form-urlencoded"),
            body: with_participants(json!(["bob"])),
            status: 415,
            code: "unsupported_media_type",
        },
        PostCase {
            name: "no Content-Type",
            content_type: None,
            body: with_participants(json!(["bob"])),
            status: 415,
            code: "unsupported_media_type",
        },
        json_case(
            "participants missing",
            r#"{"payload": {"t": 1}}"#,
            422,
            "invalid",
        ),
        json_case(
            "participants empty",
            with_participants(json!([])),
            422,
            "invalid",
        ),
        json_case(
            "participants a string",
            with_participants(json!("bob")),
            422,
            "invalid",
        ),
        json_case(
            "participants null",
            with_participants(json!(null)),
            422,
            "invalid",
        ),
        json_case(
            "participants an object",
            with_participants(json!({"bob": true})),
            422,
            "invalid",
        ),
        json_case(
            "participant a number",
            with_participants(json!(["bob", 7])),
            422,
            "invalid",
        ),
        json_case(
            "participant null",
            with_participants(json!(["bob", null])),
            422,
            "invalid",
        ),
        json_case(
            "participant an array",
            with_participants(json!([["bob"]])),
            422,
            "invalid",
        ),
        json_case(
            "participant empty string",
            with_participants(json!(["bob", ""])),
            422,
            "invalid",
        ),
        json_case(
            "participant with a newline",
            with_participants(json!(["bo\nb"])),
            422,
            "invalid",
        ),
        json_case(
            "participant of 257 bytes",
            with_participants(json!(["b".repeat(257)])),
            422,
            "invalid",
        ),
        json_case(
            "1001 participants",
            with_participants(json!(names(1001))),
            422,
            "invalid",
        ),
        json_case(
            "1000 participants",
            with_participants(json!(names(1000))),
            201,
            "",
        ),
        json_case(
            "kind with a space",
            with_kind(json!("bad kind")),
            422,
            "invalid",
        ),
        json_case(
            "kind with a newline",
            with_kind(json!("x\ny")),
            422,
            "invalid",
        ),
        json_case(
            "kind of 65 chars",
            with_kind(json!("k".repeat(65))),
            422,
            "invalid",
        ),
        json_case("kind empty", with_kind(json!("")), 422, "invalid"),
        json_case("kind a number", with_kind(json!(5)), 422, "invalid"),
        json_case(
            "kind reserved: presence",
            with_kind(json!("presence")),
            422,
            "invalid",
        ),
        json_case(
            "kind reserved: reset",
            with_kind(json!("reset")),
            422,
            "invalid",
        ),
        json_case(
            "kind reserved: token_expired",
            with_kind(json!("token_expired")),
            422,
            "invalid",
        ),
        json_case(
            "kind of 64 chars",
            with_kind(json!("k".repeat(64))),
            201,
            "",
        ),
        json_case(
            "payload missing",
            r#"{"participants": ["bob"]}"#,
            422,
            "invalid",
        ),
        json_case(
            "payload of 65537 bytes",
            body_with_payload(&payload_of_len(65537)),
            413,
            "too_large",
        ),
        json_case(
            "payload of 65536 bytes",
            body_with_payload(&payload_of_len(65536)),
            201,
            "",
        ),
        // Over the relay's whole-body limit (payload limit plus the largest participant list),
        // yet small enough to sit in the socket buffers: see `five_megabyte_body_gets_413`.
        json_case(
            "1 MB body",
            body_with_payload(&payload_of_len(1024 * 1024)),
            413,
            "too_large",
        ),
        // A top-level array is not an object, however deep.
        json_case("body nested 10,000 deep", deep(10_000), 422, "invalid"),
        json_case(
            "participants nested 10,000 deep",
            format!(r#"{{"participants":{},"payload":1}}"#, deep(10_000)),
            422,
            "invalid",
        ),
        json_case(
            "payload with \\u0000",
            body_with_payload(r#"{"t":"a\u0000b"}"#),
            422,
            "invalid",
        ),
        json_case(
            "payload with a \\u0000 key",
            body_with_payload(r#"{"a\u0000":1}"#),
            422,
            "invalid",
        ),
        json_case(
            "payload with a lone surrogate",
            body_with_payload(r#""\ud800""#),
            422,
            "invalid",
        ),
        json_case("unicode and emoji payload", unicode, 201, ""),
    ];

    for case in &cases {
        let stored = post_case(&relay, &client, case).await;
        let expected = i64::from(case.status == 201);
        assert_eq!(
            stored, expected,
            "{}: stored-message count changed by {stored}",
            case.name
        );
    }

    // The accepted unicode payload is stored exactly.
    let row = client
        .query_one(
            "SELECT payload->>'t', participants FROM pgrelay.messages WHERE kind = 'chat'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "héllo 👋 \u{1F600} ✓ \u{2028}");
    assert_eq!(row.get::<_, Vec<String>>(1), ["bob", "zoë", "李", "alice"]);
}

/// A JSON array body is refused with 422 even when its elements line up with the fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_array_body_is_not_an_object() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    for body in [r#"[["bob"], null, {"t": 1}]"#, r#"[["bob"], "chat", "hi"]"#] {
        let case = json_case("array body matching the fields", body, 422, "invalid");
        let stored = post_case(&relay, &client, &case).await;
        assert_eq!(stored, 0, "{body}");
    }
}

/// `"payload": null` is a JSON value like any other and is stored, not reported missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_payload_is_stored() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let case = json_case("payload null", body_with_payload("null"), 201, "");
    assert_eq!(post_case(&relay, &client, &case).await, 1);
    let stored: Value = client
        .query_one("SELECT payload FROM pgrelay.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, Value::Null);
}

/// A 5 MB body gets a JSON 413 every time (not a reset connection) and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabyte_body_gets_413() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let case = json_case(
        "5 MB body",
        body_with_payload(&payload_of_len(5 * 1024 * 1024)),
        413,
        "too_large",
    );
    for _ in 0..10 {
        assert_eq!(post_case(&relay, &client, &case).await, 0);
    }
}

/// A signal payload under 1 KiB as sent but over it as jsonb renders it (`[0,0,…]` becomes
/// `[0, 0, …]`) is too large, 413, not invalid data (found by schemathesis).
#[tokio::test]
async fn a_signal_payload_that_grows_when_stored_gets_413() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/signals", relay.base))
        .bearer_auth(relay.token("alice", &["publish"]))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"participants":["bob"],"kind":"typing","payload":[{}]}}"#,
            vec!["0"; 500].join(",")
        ))
        .send()
        .await
        .unwrap();
    assert_json_error(response, 413, "too_large", "500 zeros").await;
}

/// Posts a payload of `depth` nested arrays (within the 64 KiB limit) and checks it is handled
/// without a 5xx: either stored (201) and delivered intact on the stream and by
/// `GET /v1/messages`, or refused with a JSON 400/422 that stores nothing.
async fn check_deep_payload(depth: usize) {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(deep.len() <= 64 * 1024);

    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(relay.token("alice", &["publish"]))
        .header("content-type", "application/json")
        .body(body_with_payload(&deep))
        .send()
        .await
        .unwrap();
    let context = format!("payload nested {depth} deep");
    match response.status().as_u16() {
        201 => {
            assert_eq!(message_count(&client).await, 1, "{context}");
            // Compared as text: serde_json's own recursion limit is 128.
            let expected = format!(r#""payload":{deep}"#);
            let event = bob.next().await;
            assert_eq!(event.event.as_deref(), Some("message"), "{context}");
            assert!(
                event.data.unwrap_or_default().contains(&expected),
                "{context}: the stream altered the payload"
            );
            let page = reqwest::Client::new()
                .get(format!("{}/v1/messages", relay.base))
                .bearer_auth(relay.token("bob", &[]))
                .send()
                .await
                .unwrap();
            assert_eq!(page.status(), 200, "{context}");
            assert!(
                page.text().await.unwrap().contains(&expected),
                "{context}: GET /v1/messages altered the payload"
            );
        }
        status @ (400 | 422) => {
            let code = if status == 400 {
                "bad_request"
            } else {
                "invalid"
            };
            assert_json_error(response, status, code, &context).await;
            assert_eq!(message_count(&client).await, 0, "{context}");
        }
        status => panic!("{context}: answered {status}: {:?}", response.text().await),
    }
    let health = reqwest::get(format!("{}/healthz", relay.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A payload nested 10,000 deep is stored and delivered intact or refused with a JSON 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_nested_10000_deep_is_handled() {
    check_deep_payload(10_000).await;
}

/// A payload nested 32,000 deep (64,000 bytes, too deep for PostgreSQL) gets a 4xx, not a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_nested_32000_deep_is_a_client_error() {
    check_deep_payload(32_000).await;
}

/// Garbage `since_id`/`Last-Event-ID` get JSON 400 and bad `limit` JSON 422 on both GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_get_json_errors() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &[]);
    let http = reqwest::Client::new();

    let bad_ids = [
        "abc",
        "-1",
        "99999999999999999999999",
        "9223372036854775808",
        "1.5",
        "1e3",
        "0x10",
        "",
        "%ZZ",
        "%FF",
        "1%00",
    ];
    for path in ["/v1/stream", "/v1/messages"] {
        for id in bad_ids {
            let response = http
                .get(format!("{}{path}?since_id={id}", relay.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let context = format!("{path}?since_id={id}");
            assert_json_error(response, 400, "bad_request", &context).await;
        }
        // A parameter given twice is ambiguous.
        let response = http
            .get(format!("{}{path}?since_id=1&since_id=2", relay.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_json_error(response, 400, "bad_request", &format!("{path} twice")).await;
    }

    // Found by schemathesis: a malformed since_id is refused even when Last-Event-ID wins.
    let response = http
        .get(format!("{}/v1/stream?since_id=abc", relay.base))
        .bearer_auth(&token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_json_error(
        response,
        400,
        "bad_request",
        "since_id beside Last-Event-ID",
    )
    .await;

    let bad_event_ids: Vec<HeaderValue> = ["abc", "-1", "99999999999999999999999", "1.5", ""]
        .into_iter()
        .map(HeaderValue::from_static)
        .chain([HeaderValue::from_bytes(b"\xff\xfe").unwrap()])
        .collect();
    for id in bad_event_ids {
        let response = http
            .get(format!("{}/v1/stream", relay.base))
            .bearer_auth(&token)
            .header("Last-Event-ID", id.clone())
            .send()
            .await
            .unwrap();
        assert_json_error(
            response,
            400,
            "bad_request",
            &format!("Last-Event-ID {id:?}"),
        )
        .await;
    }

    for limit in ["0", "-1", "abc", "1.5", "", "99999999999999999999999"] {
        let response = http
            .get(format!("{}/v1/messages?limit={limit}", relay.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_json_error(response, 422, "invalid", &format!("limit={limit}")).await;
    }
}

/// A message id in the path that is not one, percent-encoded bytes that are not UTF-8
/// included, gets the JSON 400 (axum's path extractor would answer plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_ids_in_the_path_get_json_errors() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &[]);
    let http = reqwest::Client::new();
    for id in [
        "abc",
        "-1",
        "99999999999999999999999",
        "%ZZ",
        "%FF",
        "%C3%28",
        "1%00",
    ] {
        let response = http
            .get(format!("{}/v1/messages/{id}", relay.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_json_error(response, 400, "bad_request", &format!("/v1/messages/{id}")).await;
    }
}

/// `limit` above 1000 is clamped to 1000 rather than refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_is_clamped_to_1000() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 1005) AS n",
        )
        .await
        .unwrap();
    let ids = ids_for(&client, "alice").await;
    assert_eq!(ids.len(), 1005);

    let alice = relay.token("alice", &[]);
    let page = history_page(&relay.base, &alice, "since_id=0&limit=5000").await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1000);
    assert_eq!(messages[0]["id"], ids[0]);
    assert_eq!(messages[999]["id"], ids[999]);
    assert_eq!(page["next_since_id"], ids[999]);
}

/// Unknown routes get a JSON 404, known routes with the wrong method a JSON 405 with `Allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_json_errors() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let token = relay.token("alice", &["publish"]);
    let http = reqwest::Client::new();
    let cases: [(&str, &str, u16, &str); 9] = [
        ("GET", "/nothing", 404, "not_found"),
        ("GET", "/v1", 404, "not_found"),
        ("GET", "/v1/messages/1", 404, "not_found"),
        ("POST", "/v1/unknown", 404, "not_found"),
        ("GET", "/V1/STREAM", 404, "not_found"),
        ("DELETE", "/v1/messages", 405, "method_not_allowed"),
        ("PUT", "/v1/stream", 405, "method_not_allowed"),
        ("POST", "/v1/stream", 405, "method_not_allowed"),
        ("PATCH", "/v1/messages", 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = http
            .request(method.clone(), format!("{}{path}", relay.base))
            .bearer_auth(&token)
            .json(&json!({"participants": ["bob"], "payload": 1}))
            .send()
            .await
            .unwrap();
        if status == 405 {
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap());
            let methods = if path == "/v1/stream" { "GET" } else { "POST" };
            assert!(
                allow.is_some_and(|allow| allow.contains(methods)),
                "{method} {path}: Allow {allow:?}"
            );
        }
        assert_json_error(response, status, code, &format!("{method} {path}")).await;
    }
    assert_eq!(message_count(&client).await, 0);
}

/// Preflight for a JSON POST with Authorization succeeds; streams and errors carry CORS headers.
/// The CORS preflight a browser sends from `origin` before a `POST /v1/messages` with a token
/// and a JSON body.
async fn preflight_post(http: &reqwest::Client, base: &str, origin: &str) -> reqwest::Response {
    http.request(reqwest::Method::OPTIONS, format!("{base}/v1/messages"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_other_origins() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let http = reqwest::Client::new();
    let origin = "https://app.example";

    let preflight = preflight_post(&http, &relay.base, origin).await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |name: &str| {
        preflight
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_else(|| panic!("preflight lacks {name}"))
    };
    let allowed_origin = header("access-control-allow-origin");
    assert!(
        allowed_origin == "*" || allowed_origin == origin,
        "{allowed_origin}"
    );
    let allowed_headers = header("access-control-allow-headers");
    // A page's `send({idempotencyKey})` sends Idempotency-Key.
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }
    assert!(header("access-control-allow-methods").contains("post"));

    // The stream itself, opened with EventSource from another origin.
    let stream = http
        .get(format!(
            "{}/v1/stream?token={}",
            relay.base,
            relay.token("alice", &[])
        ))
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers().contains_key("access-control-allow-origin"));
    drop(stream);

    // An error answer is readable by the page too.
    let refused = http
        .get(format!("{}/v1/stream", relay.base))
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert!(refused
        .headers()
        .contains_key("access-control-allow-origin"));
    assert_json_error(refused, 401, "missing_token", "stream without a token").await;
}

/// With an origin list, only listed origins get `Access-Control-Allow-Origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_list_is_enforced() {
    let db = fresh_database().await;
    let settings = Settings {
        allow_origins: vec!["https://app.example".into(), "https://other.example".into()],
        ..test_settings()
    };
    let relay = Relay::start_with(&db, settings).await;
    let http = reqwest::Client::new();
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://other.example", true),
        ("https://evil.example", false),
        ("https://app.example.evil", false),
    ] {
        let preflight = preflight_post(&http, &relay.base, origin).await;
        let got = preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|value| value.to_str().unwrap().to_owned());
        if allowed {
            assert!(preflight.status().is_success(), "{origin}");
            assert_eq!(got.as_deref(), Some(origin));
        } else {
            assert_eq!(got, None, "{origin}");
        }
    }
}
