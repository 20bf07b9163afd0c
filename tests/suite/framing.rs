//! Framing: no data can break an SSE stream. Payloads and kinds of any content arrive as
//! exactly one event with the right id; tokens of any content never panic the verifier and
//! only the minted one verifies; the test SSE parser reads back exactly what axum encodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use pgrelay::auth::{Keys, TokenError};
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Payloads and kinds through a real relay
// ---------------------------------------------------------------------------------------------

/// Text made of the pieces most likely to break a line-based framing, mixed with anything.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\r\n".to_owned()),
        Just("\n\n".to_owned()),
        Just("data:".to_owned()),
        Just("data: x\n\n".to_owned()),
        Just("id: 99".to_owned()),
        Just("event: x".to_owned()),
        Just("retry: 1".to_owned()),
        Just(":".to_owned()),
        Just("\\".to_owned()),
        Just("\"".to_owned()),
        Just("\u{2028}\u{2029}\u{85}\u{feff}".to_owned()),
        // PostgreSQL refuses NUL in text and jsonb, so the relay never has to frame one.
        any::<char>()
            .prop_filter("no NUL", |c| *c != '\0')
            .prop_map(String::from),
        "[ -~]{0,8}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// JSON payloads carrying tricky text as a bare string, as a value and as a key.
fn tricky_payload() -> impl Strategy<Value = Value> {
    (tricky_text(), 0..3u8).prop_map(|(text, shape)| match shape {
        0 => json!(text),
        1 => json!({ "text": text }),
        _ => json!({ text.clone(): [text, { "nested": text }] }),
    })
}

/// A relay on its own runtime, shared by every case of one property (one relay per test,
/// not per case).
struct Fixture {
    runtime: tokio::runtime::Runtime,
    relay: Relay,
    db: tokio_postgres::Client,
    http: reqwest::Client,
    publisher: String,
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (relay, db) = runtime.block_on(async {
            let url = fresh_database().await;
            let settings = pgrelay::Settings {
                // No keep-alive comment during the test: every item on a stream is an event.
                keepalive: Duration::from_secs(3600),
                ..test_settings()
            };
            let relay = Relay::start_with(&url, settings).await;
            let db = connect(&url).await;
            (relay, db)
        });
        let publisher = relay.token("writer", &["publish"]);
        Fixture {
            runtime,
            relay,
            db,
            http: reqwest::Client::new(),
            publisher,
        }
    }

    /// A participant name no other case uses.
    fn fresh_participant(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!("reader{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// `POST /v1/messages` as `writer`; the status and the JSON answer.
    async fn post(&self, to: &str, kind: Option<&str>, payload: &Value) -> (u16, Value) {
        let mut body = json!({ "participants": [to], "payload": payload });
        if let Some(kind) = kind {
            body["kind"] = json!(kind);
        }
        let response = self
            .http
            .post(format!("{}/v1/messages", self.relay.base))
            .bearer_auth(&self.publisher)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Posts a message that must be accepted; its id.
    async fn post_ok(&self, to: &str, kind: Option<&str>, payload: &Value) -> i64 {
        let (status, answer) = self.post(to, kind, payload).await;
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_i64().unwrap()
    }
}

/// What one event must be: its id, its `event:` name and its message's payload.
struct Expected<'a> {
    id: i64,
    kind: &'a str,
    payload: &'a Value,
}

/// Reads the next event and checks it is exactly `expected`, carried on one `data:` line.
async fn expect_event(
    stream: &mut Subscriber,
    expected: &Expected<'_>,
) -> Result<(), TestCaseError> {
    let event = stream.next().await;
    prop_assert_eq!(event.id, Some(expected.id.to_string()));
    prop_assert_eq!(event.event.as_deref(), Some(expected.kind));
    prop_assert_eq!(event.retry, None);
    let data = event.data.expect("a message event has data");
    prop_assert!(!data.contains('\n'), "more than one data line: {:?}", data);
    let data: Value = serde_json::from_str(&data).unwrap();
    prop_assert_eq!(&data["id"], &json!(expected.id));
    prop_assert_eq!(&data["kind"], &json!(expected.kind));
    prop_assert_eq!(&data["payload"], expected.payload);
    Ok(())
}

/// Reads the `expected` events, in order and nothing else, from a live stream and from a
/// catch-up stream opened at the live one's opening position.
async fn expect_on_both_paths(
    fixture: &Fixture,
    participant: &str,
    live: &mut Subscriber,
    position: i64,
    expected: &[Expected<'_>],
) -> Result<(), TestCaseError> {
    for event in expected {
        expect_event(live, event).await?;
    }
    let query = format!("since_id={position}");
    let mut catch_up = fixture.relay.subscribe(participant, &query, None).await;
    prop_assert_eq!(catch_up.opening_position().await, position);
    for event in expected {
        expect_event(&mut catch_up, event).await?;
    }
    prop_assert_eq!(live.comments + catch_up.comments, 0);
    Ok(())
}

/// Settings for the properties that run against the database: fewer cases, bounded shrinking.
fn database_config() -> Config {
    Config {
        cases: 64,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any JSON payload posted through a relay arrives as exactly one event, id and payload intact.
#[test]
fn any_payload_arrives_as_exactly_one_event() {
    let fixture = Fixture::start();
    let mut runner = TestRunner::new(database_config());
    runner
        .run(&tricky_payload(), |payload| {
            fixture.runtime.block_on(async {
                let participant = fixture.fresh_participant();
                let mut live = fixture.relay.subscribe(&participant, "", None).await;
                let position = live.opening_position().await;
                let id = fixture.post_ok(&participant, None, &payload).await;
                // A plain message after it proves nothing else was framed in between.
                let end = json!("end");
                let end_id = fixture.post_ok(&participant, None, &end).await;
                let expected = [
                    Expected {
                        id,
                        kind: "message",
                        payload: &payload,
                    },
                    Expected {
                        id: end_id,
                        kind: "message",
                        payload: &end,
                    },
                ];
                expect_on_both_paths(&fixture, &participant, &mut live, position, &expected).await
            })
        })
        .unwrap();
}

/// The contract's rule for kinds, written out independently of the relay's code.
fn kind_is_valid(kind: &str) -> bool {
    (1..=64).contains(&kind.chars().count())
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        && ![
            "oversized",
            "position",
            "presence",
            "reset",
            "revoked",
            "rooms",
            "token_expired",
        ]
        .contains(&kind)
}

/// Kinds: valid ones, ones just too long, reserved ones, and tricky text.
fn any_kind() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.:-]{1,64}",
        "[A-Za-z0-9_.:-]{65,70}",
        Just("presence".to_owned()),
        Just("reset".to_owned()),
        Just("token_expired".to_owned()),
        Just("oversized".to_owned()),
        Just("rooms".to_owned()),
        Just("revoked".to_owned()),
        Just("message\ndata: injected".to_owned()),
        Just("x\r".to_owned()),
        tricky_text(),
    ]
}

/// Only framing-safe kinds are accepted (HTTP 422, SQL CHECK); accepted ones arrive as named.
#[test]
fn only_framing_safe_kinds_are_accepted() {
    let fixture = Fixture::start();
    let mut runner = TestRunner::new(database_config());
    runner
        .run(&any_kind(), |kind| {
            fixture.runtime.block_on(async {
                let valid = kind_is_valid(&kind);
                let participant = fixture.fresh_participant();
                let mut live = fixture.relay.subscribe(&participant, "", None).await;
                let position = live.opening_position().await;
                let payload = json!({ "kind was": kind });

                let (status, answer) = fixture.post(&participant, Some(&kind), &payload).await;
                let mut expected = Vec::new();
                if valid {
                    prop_assert_eq!(status, 201, "{:?}: {}", kind, answer);
                    let id = answer["id"].as_i64().unwrap();
                    expected.push((id, kind.as_str()));
                } else {
                    prop_assert_eq!(status, 422, "{:?}: {}", kind, answer);
                    prop_assert_eq!(&answer["error"], "invalid");
                }

                let inserted = fixture
                    .db
                    .execute(
                        "INSERT INTO pgrelay.messages (participants, kind, payload) \
                         VALUES (ARRAY[$1], $2, $3)",
                        &[&participant, &kind, &payload],
                    )
                    .await;
                match inserted {
                    Ok(_) => prop_assert!(valid, "SQL accepted kind {:?}", kind),
                    Err(error) => {
                        prop_assert!(!valid, "SQL refused kind {:?}: {}", kind, error);
                        let code = error.code().map(|code| code.code().to_owned());
                        prop_assert_eq!(code.as_deref(), Some("23514"), "{}", error);
                    }
                }
                let end = json!("end");
                let end_id = fixture.post_ok(&participant, None, &end).await;
                if valid {
                    let ids = ids_for(&fixture.db, &participant).await;
                    prop_assert_eq!(ids.len(), 3);
                    // The SQL insert's id is assigned at commit: the middle one.
                    expected.push((ids[1], kind.as_str()));
                }
                expected.push((end_id, "message"));
                let expected: Vec<Expected> = expected
                    .iter()
                    .map(|&(id, kind)| Expected {
                        id,
                        kind,
                        payload: if id == end_id { &end } else { &payload },
                    })
                    .collect();
                expect_on_both_paths(&fixture, &participant, &mut live, position, &expected).await
            })
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// The keys the token properties sign and verify with.
fn keys() -> Keys {
    Keys::from_secret_list("framing-secret-0123456789").unwrap()
}

/// A token for `sub`, valid for an hour.
fn mint(sub: &str) -> String {
    keys().mint(sub, Duration::from_secs(3600), &["publish"])
}

/// The characters a mutation puts into a token: its own alphabet, and anything else.
fn token_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => prop::sample::select(vec!['.', '=', '+', '/', ' ', '\t', '\n', '%']),
        1 => any::<char>(),
    ]
}

/// One edit of a token.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, char),
    Insert(Index, char),
    Delete(Index),
    Truncate(Index),
    Swap(Index, Index),
    Append(char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), token_char()).prop_map(|(at, c)| Mutation::Replace(at, c)),
        (any::<Index>(), token_char()).prop_map(|(at, c)| Mutation::Insert(at, c)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        token_char().prop_map(Mutation::Append),
    ]
}

/// Applies `mutations` to `token`, character by character.
fn mutate(token: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    for mutation in mutations {
        if chars.is_empty() {
            break;
        }
        match mutation {
            Mutation::Replace(at, c) => {
                let at = at.index(chars.len());
                chars[at] = *c;
            }
            Mutation::Insert(at, c) => {
                let at = at.index(chars.len() + 1);
                chars.insert(at, *c);
            }
            Mutation::Delete(at) => {
                chars.remove(at.index(chars.len()));
            }
            Mutation::Truncate(at) => chars.truncate(at.index(chars.len())),
            Mutation::Swap(a, b) => {
                let (a, b) = (a.index(chars.len()), b.index(chars.len()));
                chars.swap(a, b);
            }
            Mutation::Append(c) => chars.push(*c),
        }
    }
    chars.into_iter().collect()
}

/// Subjects of 1 to 256 bytes: any unicode (at most 64 characters of at most 4 bytes), or
/// printable ASCII up to the full 256 bytes.
/// Valid subjects: participant names (pgrelay::valid_name) that are not rooms or everyone.
fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 1..=64).prop_map(String::from_iter),
        "[ -~]{1,256}",
    ]
    .prop_filter("a valid subject", |sub| {
        pgrelay::valid_name(sub) && !sub.starts_with('#') && sub != "*"
    })
}

proptest! {
    #![proptest_config(Config::with_cases(1000))]

    /// Arbitrary bytes, read as text, never verify and never panic the verifier.
    #[test]
    fn arbitrary_text_never_verifies(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(keys().verify(&text, pgrelay::auth::now_unix()).is_err());
    }

    /// Strings shaped like a JWT (three base64-ish segments) never verify.
    #[test]
    fn jwt_shaped_text_never_verifies(
        text in "[A-Za-z0-9_=+/-]{0,60}\\.[A-Za-z0-9_=+/-]{0,200}\\.[A-Za-z0-9_=+/-]{0,60}"
    ) {
        prop_assert!(keys().verify(&text, pgrelay::auth::now_unix()).is_err());
    }

    /// A minted token's header and claims with any other signature never verify.
    #[test]
    fn forged_signatures_never_verify(
        sub in subject(),
        signature in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        use base64::Engine;
        let token = mint(&sub);
        let signed = &token[..token.rfind('.').unwrap()];
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&signature);
        let forged = format!("{signed}.{encoded}");
        prop_assume!(forged != token);
        let refused = keys().verify(&forged, pgrelay::auth::now_unix());
        prop_assert!(
            matches!(refused, Err(TokenError::BadSignature | TokenError::Malformed)),
            "{:?}", refused
        );
    }

    /// Random edits of a valid token never panic the verifier; only the unmodified one verifies.
    #[test]
    fn mutated_tokens_never_verify(
        sub in subject(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let token = mint(&sub);
        let mutated = mutate(&token, &mutations);
        let verified = keys().verify(&mutated, pgrelay::auth::now_unix());
        if mutated == token {
            prop_assert_eq!(verified.unwrap().sub, sub);
        } else {
            prop_assert!(verified.is_err(), "accepted {:?} from {:?}", mutated, token);
        }
    }

    /// Tokens minted for any valid subject verify and give the subject back exactly.
    #[test]
    fn minted_subjects_round_trip(sub in subject()) {
        prop_assert!((1..=256).contains(&sub.len()));
        let claims = keys().verify(&mint(&sub), pgrelay::auth::now_unix()).unwrap();
        prop_assert!(claims.has_scope("publish"));
        prop_assert_eq!(claims.sub, sub);
    }

    /// Tokens minted for subjects over 256 bytes are refused as `invalid_subject`.
    #[test]
    fn over_long_subjects_are_refused(sub in "[ -~]{257,400}") {
        let refused = keys().verify(&mint(&sub), pgrelay::auth::now_unix());
        prop_assert_eq!(refused, Err(TokenError::InvalidSubject));
    }
}

proptest! {
    #![proptest_config(Config::with_cases(64))]

    /// Other encodings of a segment's last character (same bytes, other unused bits) never verify.
    #[test]
    fn sibling_encodings_never_verify(sub in subject()) {
        // A segment's last base64url character carries bits past the data; a lenient decoder
        // would accept siblings that differ only there. Try every one, for each segment.
        let token = mint(&sub);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let ends: Vec<usize> = token
            .match_indices('.')
            .map(|(dot, _)| dot - 1)
            .chain([token.len() - 1])
            .collect();
        for end in ends {
            for c in alphabet.chars() {
                let mut sibling = token.clone();
                sibling.replace_range(end..end + 1, &c.to_string());
                if sibling != token {
                    prop_assert!(
                        keys().verify(&sibling, pgrelay::auth::now_unix()).is_err(),
                        "accepted {:?}, a sibling of {:?}", sibling, token
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test SSE parser against axum's encoder
// ---------------------------------------------------------------------------------------------

/// The bytes axum's SSE response body gives for one event.
fn axum_encode(event: axum::response::sse::Event) -> bytes::Bytes {
    use axum::response::IntoResponse;
    let events = futures::stream::iter(vec![Ok::<_, std::convert::Infallible>(event)]);
    let response = axum::response::sse::Sse::new(events).into_response();
    futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap()
}

/// Data strings: tricky text, or anything at all (NUL included: axum and the parser allow it).
fn any_data() -> impl Strategy<Value = String> {
    prop_oneof![tricky_text(), any::<String>()]
}

proptest! {
    #![proptest_config(Config::with_cases(2000))]

    /// Any event axum encodes parses back, however chunked, as one event with id, name and data.
    #[test]
    fn parser_reads_back_what_axum_encodes(
        id in any::<u64>(),
        name in "[A-Za-z0-9_.:-]{1,64}",
        data in any_data(),
        splits in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let event = axum::response::sse::Event::default()
            .id(id.to_string())
            .event(&name)
            .data(&data);
        // Each CR and each LF in the data ends a `data:` line, so both read back as LF (axum
        // writes CR LF as two line breaks, which the WHATWG rules then read as two).
        let bytes = axum_encode(event);
        let mut cuts: Vec<usize> = splits.iter().map(|at| at.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parser = SseParser::new();
        let mut items = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            items.extend(parser.feed(&bytes[from..cut]));
            from = cut;
        }
        // axum writes no `data:` line at all for empty data.
        let expected_data = (!data.is_empty()).then(|| data.replace('\r', "\n"));
        let expected = SseItem::Event(SseEvent {
            id: Some(id.to_string()),
            event: Some(name),
            data: expected_data,
            retry: None,
        });
        prop_assert_eq!(items, vec![expected], "bytes {:?}", bytes);
    }
}
