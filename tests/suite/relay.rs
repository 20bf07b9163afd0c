//! Delivery: from an INSERT or a POST to the right streams, and nowhere else.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// A row inserted the way psql would reaches the participant's open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_insert_reaches_stream() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    let position = alice.opening_position().await;
    assert_eq!(position, 0);

    client
        .batch_execute(
            r#"INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice,bob}', '{"text":"hi"}')"#,
        )
        .await
        .unwrap();
    let (id, kind, data) = alice.next_message().await;
    assert_eq!(kind, "message");
    assert_eq!(data["id"], id);
    assert_eq!(data["payload"], json!({"text": "hi"}));
    assert_eq!(data["participants"], json!(["alice", "bob"]));
    assert_eq!(data["sender"], json!(null));
    assert!(data["created_at"].as_str().unwrap().ends_with('Z'));
}

/// A subscriber never receives a message whose participants do not include it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_between_participants() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    let mut carol = relay.subscribe("carol", "", None).await;
    alice.opening_position().await;
    carol.opening_position().await;

    insert(&client, &["bob", "carol"], json!({"n": 1})).await;
    insert(&client, &["alice"], json!({"n": 2})).await;
    insert(&client, &["alicia", "Alice", "alice "], json!({"n": 3})).await;
    insert(&client, &["carol", "alice"], json!({"n": 4})).await;

    let (_, _, first) = alice.next_message().await;
    let (_, _, second) = alice.next_message().await;
    assert_eq!(first["payload"]["n"], 2);
    assert_eq!(second["payload"]["n"], 4);
    let (_, _, first) = carol.next_message().await;
    let (_, _, second) = carol.next_message().await;
    assert_eq!(first["payload"]["n"], 1);
    assert_eq!(second["payload"]["n"], 4);
    assert!(alice
        .next_within(Duration::from_millis(300))
        .await
        .is_none());

    // The JSON API applies the same rule.
    let token = relay.token("alice", &[]);
    let page = history_page(&relay.base, &token, "since_id=0").await;
    let payloads: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"]["n"].clone())
        .collect();
    assert_eq!(payloads, vec![json!(2), json!(4)]);
}

/// Several streams of one participant (browser tabs) each get every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tab_gets_each_message_once() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let mut tab = relay.subscribe("alice", "", None).await;
        tab.opening_position().await;
        tabs.push(tab);
    }
    // Listed twice, still delivered once.
    insert(&client, &["alice", "alice"], json!({"n": 1})).await;
    insert(&client, &["alice"], json!({"n": 2})).await;
    for tab in &mut tabs {
        assert_eq!(tab.next_message().await.2["payload"]["n"], 1);
        assert_eq!(tab.next_message().await.2["payload"]["n"], 2);
        assert!(tab.next_within(Duration::from_millis(200)).await.is_none());
    }
}

/// POST /v1/messages stores the message with the token's subject as sender and participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_publishes_with_sender() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    bob.opening_position().await;
    alice.opening_position().await;

    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(relay.token("alice", &["publish"]))
        .json(&json!({"participants": ["bob"], "kind": "chat.text", "payload": {"text": "hello"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();

    for stream in [&mut bob, &mut alice] {
        let (got, kind, data) = stream.next_message().await;
        assert_eq!(got, id);
        assert_eq!(kind, "chat.text");
        assert_eq!(data["sender"], "alice");
        assert_eq!(data["participants"], json!(["bob", "alice"]));
    }
}

/// A payload of 64 KiB (far over NOTIFY's 8000-byte limit) arrives intact, as does a message
/// whose participant list alone overflows a notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_and_participant_list_arrive() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    // 64 KiB of JSON exactly: {"text":"xxx…"} with newlines and SSE-looking text inside.
    let filler = "line\ndata: injected\r\n\u{e9}".repeat(64 * 1024 / 25);
    let mut text = filler;
    let overhead = json!({"text": ""}).to_string().len();
    while json!({"text": text}).to_string().len() > 64 * 1024 {
        text.pop();
    }
    while json!({"text": text}).to_string().len() < 64 * 1024 {
        text.push('x');
    }
    assert!(overhead > 0);
    let payload = json!({"text": text});
    assert_eq!(payload.to_string().len(), 64 * 1024);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(relay.token("alice", &["publish"]))
        .json(&json!({"participants": ["bob"], "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (_, kind, data) = bob.next_message().await;
    assert_eq!(kind, "message");
    assert_eq!(data["payload"], payload);

    let crowd: Vec<String> = (0..1000)
        .map(|i| format!("participant-number-{i:04}"))
        .collect();
    let mut participants: Vec<&str> = crowd.iter().map(String::as_str).collect();
    participants.push("bob");
    let client = connect(&db).await;
    insert(&client, &participants, json!({"crowd": true})).await;
    let (_, _, data) = bob.next_message().await;
    assert_eq!(data["payload"], json!({"crowd": true}));
    assert_eq!(data["participants"].as_array().unwrap().len(), 1001);
}

/// The health, readiness and metrics endpoints answer, and heartbeats keep a healthy
/// listener connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics() {
    let db = fresh_database().await;
    let mut settings = test_settings();
    settings.heartbeat = Duration::from_millis(50);
    let relay = Relay::start_with(&db, settings).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(format!("{}{path}", relay.base)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = reqwest::get(format!("{}/metrics", relay.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "pgrelay_subscribers",
        "pgrelay_notifications_received_total",
        "pgrelay_events_delivered_total",
        "pgrelay_catch_up_queries_total",
        "pgrelay_listener_reconnects_total",
        "pgrelay_commit_to_send_seconds_bucket",
        "pgrelay_notification_queue_usage_ratio",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("pgrelay_listener_reconnects_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("pgrelay_listener_up 1"), "{metrics}");
}

/// Shutdown ends open streams instead of waiting for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let stopped = tokio::time::timeout(Duration::from_secs(4), relay.stop()).await;
    assert!(
        stopped.is_ok(),
        "the relay did not stop while a stream was open"
    );
    assert!(alice.next_within(Duration::from_secs(2)).await.is_none());
}

/// A commit wakes the relay once. When a pass numbers rows, `pgrelay.sequence()` notifies the
/// other relays; this relay read those rows in the same pass, so its own notification must not
/// make it run another (which doubled the passes, and the database's work, under traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_once() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let wakeups = || async {
        let metrics = reqwest::get(format!("{}/metrics", relay.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("pgrelay_notifications_received_total "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = wakeups().await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": 1})).await;
    alice.next_message().await;
    // Long enough for the relay's own notification to arrive, which it did at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wakeups().await - before, 1);
}

/// Two relays on one database: each writer's commit wakes both, one numbers the row and the
/// other reads it once the order lock is free. The wake-up the numbering relay then sends
/// names what it numbered, and the other relay, which has read that far, skips it: about one
/// pass per message and relay, not two for the relay that did not number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_numbering_costs_no_second_pass() {
    let db = fresh_database().await;
    let first = Relay::start_with(&db, no_heartbeat_passes()).await;
    let second = Relay::start_with(&db, no_heartbeat_passes()).await;
    let mut alice = second.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let passes = || async {
        metric(&first.base, "pgrelay_listener_passes_total").await
            + metric(&second.base, "pgrelay_listener_passes_total").await
    };
    let before = passes().await;
    let writer = connect(&db).await;
    let messages: u64 = 30;
    for n in 0..messages {
        insert(&writer, &["alice"], json!({ "n": n })).await;
        let (_, _, data) = alice.next_message().await;
        assert_eq!(data["payload"]["n"], n);
        // Both relays' passes for this message end before the next one commits.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let passes = passes().await - before;
    eprintln!("a_peers_numbering_costs_no_second_pass: {passes} passes for {messages} messages");
    assert!(
        passes <= messages * 5 / 2,
        "{passes} passes for {messages} messages on two relays"
    );
}

/// A relay that may not number (its LISTEN role lacks EXECUTE on `pgrelay.sequence`) reads
/// what a peer numbers at the peer's wake-up, which names ids it has not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_may_not_number_reads_at_a_peers_wake_up() {
    let (cluster, db) = cluster_with(&[]).await;
    let owner = connect(&db).await;
    owner
        .batch_execute(
            "CREATE ROLE reader LOGIN; \
             GRANT USAGE ON SCHEMA pgrelay TO reader; \
             GRANT SELECT ON pgrelay.messages, pgrelay.signals TO reader;",
        )
        .await
        .unwrap();
    let relay = Relay::launch(RelayOptions {
        listen_database_url: Some(format!(
            "postgres://reader@127.0.0.1:{}/relay",
            cluster.port()
        )),
        settings: no_heartbeat_passes(),
        ..RelayOptions::new(&db)
    })
    .await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let failures = metric(&relay.base, "pgrelay_numbering_failures_total").await;
    insert(&owner, &["alice"], json!({"n": "pending"})).await;
    // The writer's wake-up came and went: its pass could not number the row.
    wait_for_metric(
        &relay.base,
        "pgrelay_numbering_failures_total",
        |now| now > failures,
        "no pass failed to number",
    )
    .await;
    assert!(alice
        .next_within(Duration::from_millis(200))
        .await
        .is_none());

    // A peer numbers it; the next heartbeat pass is a minute away.
    owner
        .batch_execute("SELECT pgrelay.sequence(10000)")
        .await
        .unwrap();
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], "pending");
    drop((alice, relay));
    cluster.shutdown().await.unwrap();
}

/// A relay whose numbering failed tries again by itself, soon after: when the order lock's
/// holder lets go without numbering and nothing else commits, no wake-up comes, and the row
/// must not wait for the heartbeat's pass (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_numbering_failed_retries_without_a_wake_up() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, no_heartbeat_passes()).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let failures = metric(&relay.base, "pgrelay_numbering_failures_total").await;
    let holder = hold_the_order_lock(&db).await;
    let writer = connect(&db).await;
    insert(&writer, &["alice"], json!({"n": 1})).await;
    wait_for_metric(
        &relay.base,
        "pgrelay_numbering_failures_total",
        |now| now > failures,
        "no pass failed to number",
    )
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], 1);
}

/// A relay whose numbering failed retries at any wake-up, even a peer's naming ids it has
/// read: rows that peer left pending must not wait for the heartbeat. Here the owner holds
/// the order lock past the relay's wait (5 s with a 60 s heartbeat), then numbers one row of
/// three; a second lock holder takes over and lets go without numbering, after the relay's
/// pass begun meanwhile has given up and read the one numbered row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_numbering_failed_retries_at_a_peers_wake_up() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, no_heartbeat_passes()).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let failures = metric(&relay.base, "pgrelay_numbering_failures_total").await;
    let first_holder = hold_the_order_lock(&db).await;
    let writer = connect(&db).await;
    writer
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 3) n",
        )
        .await
        .unwrap();
    wait_for_metric(
        &relay.base,
        "pgrelay_numbering_failures_total",
        |now| now > failures,
        "no pass failed to number",
    )
    .await;

    // The second holder queues for the lock; a writer's commit starts a pass that queues too.
    let second_db = db.clone();
    let second_holder = tokio::spawn(async move {
        let second = hold_the_order_lock(&second_db).await;
        // Past the wait of the pass below, which queued 0.2 s after this one.
        tokio::time::sleep(Duration::from_secs(6)).await;
        second.batch_execute("COMMIT").await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    insert(&writer, &["alice"], json!({"n": 4})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    first_holder
        .batch_execute("SELECT pgrelay.sequence(1); COMMIT")
        .await
        .unwrap();
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], 1);
    second_holder.await.unwrap();
    for n in 2..=4 {
        let (_, _, data) = alice.next_message().await;
        assert_eq!(data["payload"]["n"], n);
    }
}
