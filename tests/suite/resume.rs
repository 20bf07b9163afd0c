//! Resume: `Last-Event-ID` and `since_id` give every later message once, in order, while
//! writers keep inserting; the opening `id:` line makes even a silent stream resumable.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// How a reconnecting client tells the relay where it stopped.
#[derive(Clone, Copy)]
enum ResumeWith {
    LastEventId,
    SinceId,
}

/// Reads alice's stream in short connections, reconnecting from the last id each time, until
/// every message she should get has arrived; returns the ids in the order received.
async fn read_with_reconnects(relay: &Relay, resume: ResumeWith, expected: usize) -> Vec<i64> {
    let mut received: Vec<i64> = Vec::new();
    let mut last: Option<i64> = None;
    let mut connection = 0usize;
    while received.len() < expected {
        connection += 1;
        let mut stream = match (resume, last) {
            (_, None) => relay.subscribe("alice", "since_id=0", None).await,
            (ResumeWith::LastEventId, Some(id)) => relay.subscribe("alice", "", Some(id)).await,
            (ResumeWith::SinceId, Some(id)) => {
                relay
                    .subscribe("alice", &format!("since_id={id}"), None)
                    .await
            }
        };
        let position = stream.opening_position().await;
        assert_eq!(
            position,
            last.unwrap_or(0),
            "the opening id is the resume point"
        );
        // Read a varying number of messages, then drop the connection mid-stream.
        for _ in 0..(3 + connection * 7 % 23) {
            if received.len() == expected {
                break;
            }
            let (id, _, _) = stream.next_message().await;
            received.push(id);
            last = Some(id);
        }
    }
    received
}

async fn resume_is_exact(resume: ResumeWith) {
    let db = fresh_database().await;
    let relay = Arc::new(Relay::start(&db).await);
    let writer = spawn_writer(&db, 600, 10, Duration::from_millis(5));
    let expected = 600;
    let received = read_with_reconnects(&relay, resume, expected).await;
    writer.await.unwrap();
    let client = connect(&db).await;
    assert_eq!(received, ids_for(&client, "alice").await);
    let mut stream = relay
        .subscribe("alice", "", Some(*received.last().unwrap()))
        .await;
    stream.opening_position().await;
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more"
    );
}

/// Reconnecting with `Last-Event-ID` while writers insert loses and doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_last_event_id_is_exact() {
    resume_is_exact(ResumeWith::LastEventId).await;
}

/// Reconnecting with `?since_id=` while writers insert loses and doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_id_is_exact() {
    resume_is_exact(ResumeWith::SinceId).await;
}

/// `Last-Event-ID` wins over `since_id` (a browser's automatic reconnect keeps the old URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_wins_over_since_id() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    for n in 0..4 {
        insert(&client, &["alice"], json!({"n": n})).await;
    }
    let ids = ids_for(&client, "alice").await;
    let mut stream = relay.subscribe("alice", "since_id=0", Some(ids[2])).await;
    assert_eq!(stream.opening_position().await, ids[2]);
    assert_eq!(stream.next_message().await.0, ids[3]);
}

/// A live stream that drops before its first message resumes exactly from its opening `id:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_resumes_from_opening_position() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": "old"})).await;
    insert(&client, &["bob"], json!({"n": "other"})).await;
    number_pending(&client).await;

    let mut stream = relay.subscribe("alice", "", None).await;
    let position = stream.opening_position().await;
    assert_eq!(
        position,
        *ids_for(&client, "bob").await.last().unwrap(),
        "newest id overall"
    );
    drop(stream);

    insert(&client, &["alice"], json!({"n": "missed 1"})).await;
    insert(&client, &["alice"], json!({"n": "missed 2"})).await;
    let mut stream = relay.subscribe("alice", "", Some(position)).await;
    stream.opening_position().await;
    assert_eq!(stream.next_message().await.2["payload"]["n"], "missed 1");
    assert_eq!(stream.next_message().await.2["payload"]["n"], "missed 2");
    assert!(stream
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

/// An app that renders history from `GET /v1/messages` and then subscribes with the page's
/// `next_since_id` misses nothing, even with writers inserting in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_subscribe_misses_nothing() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let writer = spawn_writer(&db, 300, 10, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let token = relay.token("alice", &[]);
    let mut received = Vec::new();
    let mut since = 0;
    // Page through history the way a polling client would.
    loop {
        let page = history_page(&relay.base, &token, &format!("since_id={since}&limit=50")).await;
        let messages = page["messages"].as_array().unwrap();
        received.extend(messages.iter().map(|m| m["id"].as_i64().unwrap()));
        since = page["next_since_id"].as_i64().unwrap();
        if messages.len() < 50 {
            break;
        }
    }
    let mut stream = relay
        .subscribe("alice", &format!("since_id={since}"), None)
        .await;
    assert_eq!(stream.opening_position().await, since);
    writer.await.unwrap();
    let client = connect(&db).await;
    let expected = ids_for(&client, "alice").await;
    while received.len() < expected.len() {
        received.push(stream.next_message().await.0);
    }
    assert_eq!(received, expected);
}

/// A reader whose inbox overflows (thousands of messages in one burst) is served from the
/// database and still gets every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_larger_than_inbox_falls_back_to_database() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut stream = relay.subscribe("alice", "", None).await;
    stream.opening_position().await;
    // 3000 × 4 KB is more than the sockets buffer, and this reader does not read until all
    // are committed, so the relay's writes block and its inbox for this stream overflows.
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n, 'pad', repeat('x', 4000)) \
             FROM generate_series(1, 3000) AS n",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3000 {
        let (_, _, data) = stream.next_message().await;
        assert_eq!(data["payload"]["n"], n);
    }
    let metrics = reqwest::get(format!("{}/metrics", relay.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let catch_ups: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pgrelay_catch_up_queries_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        catch_ups > 0,
        "the overflow should have been served by catch-up queries"
    );
}

/// Pruning removes messages older than the retention period, and a resume point below the
/// pruned history gets `reset` (with the oldest retained id) and then the retained messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_below_retained_history_gets_reset() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    for n in 0..5 {
        insert(&client, &["alice"], json!({"n": n})).await;
    }
    let ids = ids_for(&client, "alice").await;
    client
        .execute(
            "UPDATE pgrelay.messages SET committed_at = now() - interval '8 days' WHERE id <= $1",
            &[&ids[2]],
        )
        .await
        .unwrap();
    // Two instances pruning at once delete each message once between them.
    let week = Duration::from_secs(7 * 24 * 3600);
    let (first, second) =
        tokio::join!(prune_with_a_relay(&db, week), prune_with_a_relay(&db, week));
    assert_eq!(first + second, 3);
    assert_eq!(ids_for(&client, "alice").await, ids[3..]);

    let mut stream = relay
        .subscribe("alice", &format!("since_id={}", ids[0]), None)
        .await;
    assert_eq!(stream.opening_position().await, ids[0]);
    let reset = stream.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert!(reset.id.is_none(), "reset must not move Last-Event-ID");
    let data: serde_json::Value = serde_json::from_str(&reset.data.unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"reason": "history_truncated", "oldest_id": ids[3]})
    );
    assert_eq!(stream.next_message().await.0, ids[3]);
    assert_eq!(stream.next_message().await.0, ids[4]);

    // since_id=0 asks for all retained history: nothing is missing, so no reset.
    let mut stream = relay.subscribe("alice", "since_id=0", None).await;
    stream.opening_position().await;
    let first = stream.next().await;
    assert_eq!(first.id, Some(ids[3].to_string()), "{first:?}");

    // Resuming at or after the pruned point needs no reset.
    let mut stream = relay.subscribe("alice", "", Some(ids[2])).await;
    stream.opening_position().await;
    assert_eq!(stream.next_message().await.0, ids[3]);
}

/// A resume point above every id ever issued (from a database since recreated, say) gets
/// `unknown_position` and continues from the newest message instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_point_from_elsewhere_gets_reset_to_newest() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": 1})).await;
    let newest = ids_for(&client, "alice").await[0];
    let mut stream = relay.subscribe("alice", "", Some(90_000)).await;
    assert_eq!(
        stream.opening_position().await,
        newest,
        "the stream restarts at the newest id"
    );
    let reset = stream.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    let data: serde_json::Value = serde_json::from_str(&reset.data.unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"reason": "unknown_position", "newest_id": newest})
    );
    insert(&client, &["alice"], json!({"n": 2})).await;
    assert_eq!(stream.next_message().await.2["payload"]["n"], 2);
}
