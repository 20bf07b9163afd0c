//! Signals: live-only events that reach open streams on every instance and are never stored.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// `POST /v1/signals`: the status and the JSON answer.
async fn post_signal(base: &str, token: &str, body: &Value) -> (u16, Value) {
    status_and_json(post(base, "/v1/signals", token, body.clone()).await).await
}

/// A signal POSTed to one instance reaches the participant's streams on every instance, as an
/// event without `id:`, and is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reaches_every_instance_without_id() {
    let db = fresh_database().await;
    let first = Relay::start(&db).await;
    let second = Relay::start(&db).await;
    let mut on_first = first.subscribe("bob", "", None).await;
    let mut on_second = second.subscribe("bob", "", None).await;
    let position = on_first.opening_position().await;
    on_second.opening_position().await;

    let token = first.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "kind": "typing", "payload": {"conversation": 7}});
    let (status, answer) = post_signal(&first.base, &token, &body).await;
    assert_eq!(status, 202, "{answer}");
    for stream in [&mut on_first, &mut on_second] {
        let event = stream.next().await;
        assert_eq!(event.event.as_deref(), Some("typing"));
        assert!(event.id.is_none(), "a signal must not move Last-Event-ID");
        let data: Value = serde_json::from_str(&event.data.unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"kind": "typing", "sender": "alice", "participants": ["bob", "alice"], "payload": {"conversation": 7}})
        );
    }

    // Never stored: not in the table, not in catch-up, not in GET /v1/messages.
    let client = connect(&db).await;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM pgrelay.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    let mut resumed = first.subscribe("bob", "since_id=0", None).await;
    resumed.opening_position().await;
    assert!(resumed
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    let page = history_page(&first.base, &first.token("bob", &[]), "since_id=0").await;
    assert_eq!(page["messages"], json!([]));

    // A message after the signal resumes from the pre-signal position exactly.
    insert(&client, &["bob"], json!({"n": 1})).await;
    let (id, _, _) = on_first.next_message().await;
    let mut again = first.subscribe("bob", "", Some(position)).await;
    again.opening_position().await;
    assert_eq!(again.next_message().await.0, id);
}

/// `SELECT pgrelay.signal(…)` from SQL reaches streams; reserved kinds are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_signal_reaches_streams() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let client = connect(&db).await;
    client
        .batch_execute("SELECT pgrelay.signal('{bob}', 'typing', '{\"by\":\"psql\"}')")
        .await
        .unwrap();
    let event = bob.next().await;
    assert_eq!(event.event.as_deref(), Some("typing"));
    let data: Value = serde_json::from_str(&event.data.unwrap()).unwrap();
    assert_eq!(data["payload"], json!({"by": "psql"}));
    assert_eq!(data["sender"], json!(null));
    for refused in [
        "SELECT pgrelay.signal('{bob}', 'presence', '{}')",
        "SELECT pgrelay.signal('{bob}', 'two words', '{}')",
        "SELECT pgrelay.signal('{}', 'typing', '{}')",
        "SELECT pgrelay.signal('{bob}', 'typing', to_jsonb(repeat('x', 2000)))",
    ] {
        assert!(
            client.batch_execute(refused).await.is_err(),
            "accepted: {refused}"
        );
    }
}

/// Each sender gets a burst of 10 signals, then 429 until its bucket refills; bad signals get
/// JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_rate_limited_and_validated() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "kind": "typing", "payload": null});
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(post_signal(&relay.base, &alice, &body).await.0);
    }
    assert_eq!(statuses, [202; 10]);
    // The bucket refills at 5 per second, so on a slow machine one more may pass; a burst
    // beyond that is refused.
    let mut more = Vec::new();
    while more.len() < 20 && !more.contains(&429) {
        more.push(post_signal(&relay.base, &alice, &body).await.0);
    }
    assert!(more.contains(&429), "never rate limited: {more:?}");
    let (status, answer) =
        post_signal(&relay.base, &relay.token("carol", &["publish"]), &body).await;
    assert_eq!(status, 202, "another sender is not limited: {answer}");

    let carol = relay.token("carol", &["publish"]);
    let cases = [
        (json!({"participants": ["bob"], "payload": 1}), 422),
        (
            json!({"participants": ["bob"], "kind": "presence", "payload": 1}),
            422,
        ),
        (
            json!({"participants": [], "kind": "typing", "payload": 1}),
            422,
        ),
        (
            json!({"participants": ["bob"], "kind": "typing", "payload": "x".repeat(1100)}),
            413,
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post_signal(&relay.base, &carol, &body).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"].is_string());
    }
    let (status, _) = post_signal(&relay.base, &relay.token("dave", &[]), &body).await;
    assert_eq!(status, 403, "signals need scope publish");
}

/// A role granted `pgrelay.signal` sends signals whose participants take at most 32 KiB: one
/// to bob and 5,000 made-up 200-byte names reached bob's stream as one 1 MB event, past
/// `--max-event-bytes`, and such signals grew a relay by hundreds of MiB (migration 0017;
/// found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_signal_has_at_most_32_kib_of_participants() {
    let db = fresh_database().await;
    let writer = Role::create(
        &db,
        "signaller",
        &[
            "GRANT USAGE ON SCHEMA pgrelay TO {role}",
            "GRANT EXECUTE ON FUNCTION pgrelay.signal(text[], text, jsonb, text) TO {role}",
        ],
    )
    .await
    .connect()
    .await;
    let signal = |extra: usize| {
        format!(
            "SELECT pgrelay.signal(ARRAY['bob'] || ARRAY(SELECT repeat('x', 195) || g \
                                                     FROM generate_series(1, {extra}) g), \
                                   'typing', '{{}}')"
        )
    };
    let refused = writer.batch_execute(&signal(5000)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::PROGRAM_LIMIT_EXCEEDED),
        "{refused:?}"
    );
    // 150 names of about 200 bytes: 30 KB.
    writer.batch_execute(&signal(150)).await.unwrap();
}

/// More signals than one pass reads (500) written at once all arrive: the dispatcher read the
/// first page and stopped, and the rest waited for the next wake-up, here the heartbeat's a
/// minute later. (Bob's 100 come last, within his inbox: a burst past it drops live-only
/// signals by design.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_signals_past_one_page_arrives_whole() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, no_heartbeat_passes()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    connect(&db)
        .await
        .batch_execute(
            "SELECT pgrelay.signal(ARRAY[CASE WHEN n > 1100 THEN 'bob' ELSE 'carol' END], \
                                   'typing', to_jsonb(n)) \
               FROM generate_series(1, 1200) n",
        )
        .await
        .unwrap();
    for n in 1101..=1200 {
        let event = bob
            .next_within(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("signal {n} did not arrive"));
        let data: Value = serde_json::from_str(&event.data.unwrap()).unwrap();
        assert_eq!(data["payload"], n, "signals arrive in order");
    }
}
