//! Token verification over HTTP: every bad token is refused with a JSON 401 on every
//! authenticated route, good tokens are accepted from both places, keys rotate, scopes gate
//! publishing, and a stream ends with `token_expired` when its token runs out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use pgrelay::auth::Keys;
use serde_json::{json, Value};
use sha2::{Sha256, Sha512};

/// The authenticated routes.
#[derive(Clone, Copy, Debug)]
enum Route {
    Stream,
    List,
    Post,
}

const ROUTES: [Route; 3] = [Route::Stream, Route::List, Route::Post];

/// How a request carries its credential.
#[derive(Clone, Debug)]
enum Credential {
    /// No `Authorization` header and no `?token=`.
    Nothing,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: <value>` exactly as given.
    Header(String),
    /// `?token=<token>` (the token must be URL-safe, which base64url JWTs are).
    Query(String),
}

impl Credential {
    /// The secret text this credential carries, which must never be echoed back.
    fn secret_text(&self) -> Option<&str> {
        match self {
            Credential::Nothing => None,
            Credential::Bearer(token) | Credential::Query(token) => Some(token),
            Credential::Header(value) => Some(value.split_once(' ').map_or(value, |(_, t)| t)),
        }
    }
}

/// Sends one request to `route` with `credential`; POSTs carry a valid JSON body so the token
/// is the only thing that can be wrong.
async fn call(base: &str, route: Route, credential: &Credential) -> reqwest::Response {
    let path = match route {
        Route::Stream => "/v1/stream",
        Route::List | Route::Post => "/v1/messages",
    };
    let url = match credential {
        Credential::Query(token) => format!("{base}{path}?token={token}"),
        _ => format!("{base}{path}"),
    };
    let client = reqwest::Client::new();
    let mut request = match route {
        Route::Post => client
            .post(url)
            .json(&json!({"participants": ["bob"], "payload": {"text": "hi"}})),
        Route::Stream | Route::List => client.get(url),
    };
    match credential {
        Credential::Bearer(token) => request = request.bearer_auth(token),
        Credential::Header(value) => request = request.header("Authorization", value.as_str()),
        Credential::Nothing | Credential::Query(_) => {}
    }
    request.send().await.unwrap()
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How a crafted token is signed.
enum Signature<'a> {
    /// HMAC-SHA256 with this key.
    Hs256(&'a str),
    /// HMAC-SHA512 with this key.
    Hs512(&'a str),
    /// An empty signature segment.
    Empty,
}

/// A JWT with exactly this header and these claims, signed as asked.
fn craft(header: &Value, claims: &Value, signature: Signature) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match signature {
        Signature::Hs256(key) => Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .unwrap()
            .chain_update(input.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec(),
        Signature::Hs512(key) => Hmac::<Sha512>::new_from_slice(key.as_bytes())
            .unwrap()
            .chain_update(input.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec(),
        Signature::Empty => Vec::new(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The standard header.
fn hs256_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

/// Claims for `alice`, valid for an hour, allowed to publish.
fn good_claims() -> Value {
    json!({"sub": "alice", "iat": now(), "exp": now() + 3600, "scope": "publish"})
}

/// A correctly signed HS256 token with these claims.
fn signed(claims: &Value) -> String {
    craft(&hs256_header(), claims, Signature::Hs256(SECRET))
}

/// Checks a refusal: the status, a JSON `{"error": code, "message": text}` body that does not
/// contain `secret`, and (for 401) a `WWW-Authenticate: Bearer …` challenge.
async fn assert_refused(
    response: reqwest::Response,
    status: u16,
    code: &str,
    secret: Option<&str>,
    context: &str,
) {
    if status == 401 {
        let challenge = response
            .headers()
            .get("www-authenticate")
            .unwrap_or_else(|| panic!("{context}: no WWW-Authenticate"))
            .to_str()
            .unwrap();
        assert!(
            challenge.starts_with("Bearer"),
            "{context}: challenge {challenge:?}"
        );
        if let Some(secret) = secret {
            assert!(
                !challenge.contains(secret),
                "{context}: challenge echoes the token"
            );
        }
    }
    let body = assert_json_error(response, status, code, context).await;
    let object = body.as_object().expect("the error body is an object");
    assert_eq!(object.len(), 2, "{context}: {body}");
    if let Some(secret) = secret {
        assert_no_token_text(&body.to_string(), secret, context);
    }
}

/// Asserts that no recognisable piece of `secret` (a token or header value) is in `text`.
fn assert_no_token_text(text: &str, secret: &str, context: &str) {
    assert!(!text.contains(secret), "{context}: body echoes the token");
    for segment in secret.split(['.', ' ']).filter(|s| s.len() >= 12) {
        assert!(
            !text.contains(segment),
            "{context}: body echoes part of the token: {segment:?}"
        );
    }
}

/// Every bad, forged, expired or misplaced token gets a JSON 401 and Bearer challenge everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_json_401() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let good = signed(&good_claims());
    let [header, claims, signature]: [&str; 3] =
        good.split('.').collect::<Vec<_>>().try_into().unwrap();

    // One character of the signature changed; the first character only touches the first
    // byte's top bits, so the segment still decodes and the signature check itself refuses it.
    let mut flipped = signature.to_owned();
    let first = if flipped.starts_with('A') { "B" } else { "A" };
    flipped.replace_range(..1, first);
    let one_char_changed = format!("{header}.{claims}.{flipped}");

    let huge = signed(&json!({
        "sub": "alice",
        "exp": now() + 3600,
        "scope": "publish ".repeat(100 * 1024 / 8),
    }));
    assert!(huge.len() > 100 * 1024);

    let cases: Vec<(&str, Credential, &str)> = vec![
        ("missing token", Credential::Nothing, "missing_token"),
        (
            "garbage",
            Credential::Bearer("not-a-token-at-all".into()),
            "invalid_token",
        ),
        (
            "truncated in the claims",
            Credential::Bearer(good[..header.len() + 1 + claims.len() / 2].to_owned()),
            "invalid_token",
        ),
        (
            "signature dropped",
            Credential::Bearer(format!("{header}.{claims}.")),
            "bad_signature",
        ),
        (
            "one signature char changed",
            Credential::Bearer(one_char_changed),
            "bad_signature",
        ),
        (
            "wrong key",
            Credential::Bearer(craft(
                &hs256_header(),
                &good_claims(),
                Signature::Hs256("some-other-secret"),
            )),
            "bad_signature",
        ),
        (
            "alg none, empty signature",
            Credential::Bearer(craft(
                &json!({"alg": "none", "typ": "JWT"}),
                &good_claims(),
                Signature::Empty,
            )),
            "unsupported_algorithm",
        ),
        (
            "alg none, with a signature",
            Credential::Bearer(craft(
                &json!({"alg": "none", "typ": "JWT"}),
                &good_claims(),
                Signature::Hs256(SECRET),
            )),
            "unsupported_algorithm",
        ),
        (
            "alg None (capitalised), with a signature",
            Credential::Bearer(craft(
                &json!({"alg": "None"}),
                &good_claims(),
                Signature::Hs256(SECRET),
            )),
            "unsupported_algorithm",
        ),
        (
            "HS512 signed with the right key",
            Credential::Bearer(craft(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &good_claims(),
                Signature::Hs512(SECRET),
            )),
            "unsupported_algorithm",
        ),
        (
            "RS256 header, HMAC signature with the right key",
            Credential::Bearer(craft(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &good_claims(),
                Signature::Hs256(SECRET),
            )),
            "unsupported_algorithm",
        ),
        (
            "expired",
            Credential::Bearer(signed(&json!({
                "sub": "alice", "exp": now() - 10, "scope": "publish",
            }))),
            "token_expired",
        ),
        (
            "nbf in the future",
            Credential::Bearer(signed(&json!({
                "sub": "alice", "exp": now() + 3600, "nbf": now() + 600, "scope": "publish",
            }))),
            "token_not_yet_valid",
        ),
        (
            "missing sub",
            Credential::Bearer(signed(&json!({"exp": now() + 3600, "scope": "publish"}))),
            "missing_subject",
        ),
        (
            "numeric sub",
            Credential::Bearer(signed(&json!({
                "sub": 12345, "exp": now() + 3600, "scope": "publish",
            }))),
            "invalid_subject",
        ),
        (
            "missing exp",
            Credential::Bearer(signed(&json!({"sub": "alice", "scope": "publish"}))),
            "missing_expiry",
        ),
        (
            "100 KB token (correctly signed)",
            Credential::Bearer(huge),
            "token_too_long",
        ),
        (
            "Authorization: Basic",
            Credential::Header(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice:password")
            )),
            "bad_authorization",
        ),
        (
            "Authorization: Bearer without a space-separated token",
            Credential::Header(format!("Bearer{good}")),
            "bad_authorization",
        ),
        (
            "20 KB token in ?token=",
            Credential::Query(signed(&json!({
                "sub": "alice",
                "exp": now() + 3600,
                "scope": "publish ".repeat(20 * 1024 / 8),
            }))),
            "token_too_long",
        ),
        (
            "garbage in ?token=",
            Credential::Query("not-a-token-at-all".into()),
            "invalid_token",
        ),
        (
            "expired in ?token=",
            Credential::Query(signed(&json!({"sub": "alice", "exp": now() - 10}))),
            "token_expired",
        ),
        (
            "wrong key in ?token=",
            Credential::Query(craft(
                &hs256_header(),
                &good_claims(),
                Signature::Hs256("some-other-secret"),
            )),
            "bad_signature",
        ),
    ];

    for (name, credential, code) in &cases {
        for route in ROUTES {
            let context = format!("{name} on {route:?}");
            let response = call(&relay.base, route, credential).await;
            assert_refused(response, 401, code, credential.secret_text(), &context).await;
        }
    }
    assert_eq!(
        message_count(&connect(&db).await).await,
        0,
        "a refused POST stored a message"
    );
}

/// A valid token works from `Authorization: Bearer` and `?token=`; the header wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_token_is_accepted_from_header_and_query() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    for credential in [Credential::Bearer(token.clone()), Credential::Query(token)] {
        for route in ROUTES {
            let response = call(&relay.base, route, &credential).await;
            let expected = match route {
                Route::Post => 201,
                _ => 200,
            };
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{credential:?} on {route:?}"
            );
            if let Route::Stream = route {
                assert_eq!(response.headers()["content-type"], "text/event-stream");
            }
        }
    }
    assert_eq!(message_count(&connect(&db).await).await, 2);

    let response = reqwest::Client::new()
        .get(format!("{}/v1/messages?token=garbage", relay.base))
        .bearer_auth(relay.token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the Bearer header takes precedence");
}

/// The `Bearer` scheme name is case-insensitive (RFC 7235 §2.1): `bearer <token>` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let credential = Credential::Header(format!("{scheme} {token}"));
        for route in ROUTES {
            let response = call(&relay.base, route, &credential).await;
            let expected = match route {
                Route::Post => 201,
                _ => 200,
            };
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{scheme} on {route:?}"
            );
        }
    }
}

/// With secrets "new,old" tokens signed by either key are accepted, any other key refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_accepts_every_listed_key() {
    let db = fresh_database().await;
    let relay =
        Relay::start_with_secrets(&db, "new-secret-key, old-secret-key", test_settings()).await;
    let claims = good_claims();
    for key in ["new-secret-key", "old-secret-key"] {
        let token = craft(&hs256_header(), &claims, Signature::Hs256(key));
        for credential in [Credential::Bearer(token.clone()), Credential::Query(token)] {
            for route in ROUTES {
                let response = call(&relay.base, route, &credential).await;
                let expected = match route {
                    Route::Post => 201,
                    _ => 200,
                };
                assert_eq!(
                    response.status().as_u16(),
                    expected,
                    "key {key}, {credential:?} on {route:?}"
                );
            }
        }
    }
    assert_eq!(message_count(&connect(&db).await).await, 4);

    // The first key signs what `pgrelay token` would mint, and a list key is not a prefix match.
    let minted = Keys::from_secret_list("new-secret-key").unwrap().mint(
        "alice",
        Duration::from_secs(60),
        &[],
    );
    let response = call(&relay.base, Route::List, &Credential::Bearer(minted)).await;
    assert_eq!(response.status(), 200);
    for key in [
        SECRET,
        "new-secret",
        "old-secret-key,",
        "new-secret-key, old",
    ] {
        let token = craft(&hs256_header(), &claims, Signature::Hs256(key));
        for route in ROUTES {
            let credential = Credential::Bearer(token.clone());
            let response = call(&relay.base, route, &credential).await;
            let context = format!("key {key:?} on {route:?}");
            assert_refused(response, 401, "bad_signature", Some(&token), &context).await;
        }
    }
    assert_eq!(message_count(&connect(&db).await).await, 4);
    relay.stop().await;
}

/// A token without scope `publish` can read but gets 403 `insufficient_scope` on POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_the_publish_scope() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let exp = now() + 3600;
    let cases: Vec<(&str, String)> = vec![
        ("no scope claim", relay.token("alice", &[])),
        ("scope read", relay.token("alice", &["read"])),
        (
            "empty scope",
            signed(&json!({"sub": "alice", "exp": exp, "scope": ""})),
        ),
        (
            "scope publisher (prefix)",
            signed(&json!({"sub": "alice", "exp": exp, "scope": "publisher"})),
        ),
        (
            "scope Publish (case)",
            signed(&json!({"sub": "alice", "exp": exp, "scope": "Publish"})),
        ),
        (
            "scope read,publish (comma, not space)",
            signed(&json!({"sub": "alice", "exp": exp, "scope": "read,publish"})),
        ),
    ];
    for (name, token) in &cases {
        for credential in [
            Credential::Bearer(token.clone()),
            Credential::Query(token.clone()),
        ] {
            let response = call(&relay.base, Route::Post, &credential).await;
            let context = format!("{name}, {credential:?}");
            assert_refused(response, 403, "insufficient_scope", Some(token), &context).await;
            for route in [Route::Stream, Route::List] {
                let response = call(&relay.base, route, &credential).await;
                assert_eq!(response.status(), 200, "{context} on {route:?}");
            }
        }
    }
    assert_eq!(message_count(&connect(&db).await).await, 0);

    // Among other scopes, `publish` is found.
    let token = signed(&json!({"sub": "alice", "exp": exp, "scope": "read publish admin"}));
    let response = call(&relay.base, Route::Post, &Credential::Bearer(token)).await;
    assert_eq!(response.status(), 201);
    assert_eq!(message_count(&connect(&db).await).await, 1);
}

/// Error answers never echo the request's token, whatever else was wrong with the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_never_contain_the_token() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let client = reqwest::Client::new();
    let base = &relay.base;
    let requests: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "stream, bad since_id, token in query",
            client.get(format!("{base}/v1/stream?token={token}&since_id=abc")),
            400,
        ),
        (
            "list, bad limit, token in query",
            client.get(format!("{base}/v1/messages?token={token}&limit=abc")),
            422,
        ),
        (
            "list, malformed query string",
            client.get(format!("{base}/v1/messages?token={token}&since_id=%ZZ")),
            400,
        ),
        (
            "post, invalid JSON echoing the token",
            client
                .post(format!("{base}/v1/messages?token={token}"))
                .header("content-type", "application/json")
                .body(format!("{{\"participants\": [\"{token}\"], {token}")),
            400,
        ),
        (
            "post, wrong content type",
            client
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body(token.clone()),
            415,
        ),
        (
            "post, invalid kind containing the token",
            client
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&token)
                .json(&json!({"participants": ["bob"], "kind": token, "payload": 1})),
            422,
        ),
        (
            "post, token as a participant with a control character",
            client
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&token)
                .json(&json!({"participants": [format!("{token}\n")], "payload": 1})),
            422,
        ),
        (
            "unknown route, token in query",
            client.get(format!("{base}/v1/nothing?token={token}")),
            404,
        ),
    ];
    for (name, request, status) in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(body["error"].is_string(), "{name}: {text}");
        assert!(body["message"].is_string(), "{name}: {text}");
        assert_no_token_text(&text, &token, name);
    }
    assert_eq!(message_count(&connect(&db).await).await, 0);
}

/// An expiring token ends its stream with `event: token_expired`, `{"reason":"token_expired"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_with_token_expired() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.keys.mint("alice", Duration::from_secs(2), &[]);
    let mut stream = Subscriber::open(&relay.base, &token, "", None).await;
    stream.opening_position().await;

    // A message before expiry is still delivered.
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": 1})).await;
    let (_, kind, data) = stream.next_message().await;
    assert_eq!(kind, "message");
    assert_eq!(data["payload"], json!({"n": 1}));

    let event = stream
        .next_within(Duration::from_secs(5))
        .await
        .expect("no token_expired event within 5 s");
    assert_eq!(event.event.as_deref(), Some("token_expired"), "{event:?}");
    assert_eq!(
        event.data.as_deref(),
        Some(r#"{"reason":"token_expired"}"#),
        "{event:?}"
    );
    assert_eq!(event.id, None, "token_expired must not move Last-Event-ID");

    let waited = tokio::time::Instant::now();
    let after = stream.next_within(Duration::from_secs(5)).await;
    assert!(after.is_none(), "the stream went on: {after:?}");
    assert!(
        waited.elapsed() < Duration::from_secs(3),
        "the stream stayed open after token_expired"
    );

    // Reconnecting with the now-expired token is refused.
    let response = call(
        &relay.base,
        Route::Stream,
        &Credential::Query(token.clone()),
    )
    .await;
    assert_refused(response, 401, "token_expired", Some(&token), "reconnect").await;
}

/// A validly signed token whose `exp` lies beyond what the clock can hold (10^19 s), under a
/// relay that bounds no token's lifetime (`--max-token-lifetime 0s`, as the test relays),
/// opens its stream; the stream's end at `exp` overflowed the clock and the request panicked
/// (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_beyond_the_clock_opens_a_stream() {
    use crate::common::idp::{hs256_token, unix_time};
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = hs256_token(
        SECRET.as_bytes(),
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": "alice", "iat": unix_time(0), "exp": 10_000_000_000_000_000_000u64}),
    );
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/stream", relay.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the relay answers");
    assert_eq!(answer.status(), 200);
}
