//! Rooms and broadcast: a message to `#room` reaches the room's members, one to `*` every
//! open stream, and resuming covers people, rooms and broadcasts alike with the same exact
//! catch-up, on any instance.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// How long a stream must stay quiet to show that a message did not reach it.
const QUIET: Duration = Duration::from_millis(500);

/// A token for `sub` with `scopes` whose streams also receive `rooms`.
fn token(relay: &Relay, sub: &str, scopes: &[&str], rooms: &[&str]) -> String {
    relay
        .keys
        .mint_with_rooms(sub, Duration::from_secs(3600), scopes, rooms)
}

/// Opens a stream with `token` and reads its opening.
async fn listen(relay: &Relay, token: &str, query: &str) -> Subscriber {
    let mut stream = Subscriber::open(&relay.base, token, query, None).await;
    stream.opening_position().await;
    stream
}

/// The `n` payload field of the next message.
async fn next_n(stream: &mut Subscriber) -> i64 {
    stream.next_message().await.2["payload"]["n"]
        .as_i64()
        .unwrap()
}

/// Asserts that the stream receives no message within [`QUIET`].
async fn assert_quiet(stream: &mut Subscriber, who: &str) {
    if let Some(event) = stream.next_within(QUIET).await {
        panic!("{who} received {event:?}");
    }
}

/// A message to `#general` reaches every member's stream on both instances, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_message_reaches_members_on_two_instances_and_no_one_else() {
    let db = fresh_database().await;
    let (first, second) = (Relay::start(&db).await, Relay::start(&db).await);
    let client = connect(&db).await;
    let mut alice = listen(&first, &token(&first, "alice", &[], &["#general"]), "").await;
    let mut bob = listen(&second, &token(&second, "bob", &[], &["#general"]), "").await;
    let mut carol = listen(&first, &token(&first, "carol", &[], &["#random"]), "").await;

    insert(&client, &["#general"], json!({"n": 1})).await;
    assert_eq!(next_n(&mut alice).await, 1);
    assert_eq!(next_n(&mut bob).await, 1);
    assert_quiet(&mut carol, "carol, not in #general,").await;
}

/// A message to `*` reaches every open stream, on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_open_stream() {
    let db = fresh_database().await;
    let (first, second) = (Relay::start(&db).await, Relay::start(&db).await);
    let client = connect(&db).await;
    let mut streams = Vec::new();
    for (relay, sub) in [(&first, "alice"), (&second, "bob"), (&second, "carol")] {
        streams.push(listen(relay, &relay.token(sub, &[]), "").await);
    }
    insert(&client, &["*"], json!({"n": 7})).await;
    for stream in &mut streams {
        assert_eq!(next_n(stream).await, 7);
    }
}

/// A member who was offline gets, on resume, exactly the messages to them, their rooms and
/// everyone, once each and in id order, together; `GET /v1/messages` returns the same union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_member_resumes_direct_room_and_broadcast_messages_exactly_once() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let alice = token(&relay, "alice", &[], &["#general"]);
    let mut stream = Subscriber::open(&relay.base, &alice, "", None).await;
    let position = stream.opening_position().await;
    drop(stream);

    let sends: &[(&[&str], i64)] = &[
        (&["alice", "bob"], 1),
        (&["#general"], 2),
        (&["bob"], 3),
        (&["*"], 4),
        (&["#random"], 5),
        (&["alice", "#general", "*"], 6),
        (&["#general", "bob"], 7),
    ];
    for (participants, n) in sends {
        insert(&client, participants, json!({"n": n})).await;
    }
    let expected = [1, 2, 4, 6, 7];

    let mut resumed = Subscriber::open(&relay.base, &alice, "", Some(position)).await;
    resumed.opening_position().await;
    let mut ids = Vec::new();
    for n in expected {
        let (id, _, data) = resumed.next_message().await;
        assert_eq!(data["payload"]["n"], n);
        ids.push(id);
    }
    assert_quiet(&mut resumed, "alice after her five messages").await;
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

    let page = history_page(&relay.base, &alice, &format!("since_id={position}")).await;
    let listed: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["payload"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, expected);
}

/// `?rooms=` narrows a stream and a history read to some of the caller's rooms: exactly the
/// messages that name one of them. A room the caller does not have is a 403, and so is
/// publishing to it, or to `*` without scope `broadcast`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_and_the_403s() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let alice = token(&relay, "alice", &["publish"], &["#general", "#random"]);
    let mut general = listen(&relay, &alice, "rooms=%23general").await;

    insert(&client, &["alice"], json!({"n": 1})).await;
    insert(&client, &["*"], json!({"n": 2})).await;
    insert(&client, &["#random"], json!({"n": 3})).await;
    insert(&client, &["bob", "#general"], json!({"n": 4})).await;
    assert_eq!(next_n(&mut general).await, 4);
    assert_quiet(&mut general, "a stream narrowed to #general").await;
    let page = history_page(&relay.base, &alice, "since_id=0&rooms=%23general,%23random").await;
    let listed: Vec<&Value> = page["messages"].as_array().unwrap().iter().collect();
    assert_eq!(
        listed
            .iter()
            .map(|m| m["payload"]["n"].clone())
            .collect::<Vec<_>>(),
        [json!(3), json!(4)]
    );

    let stream = reqwest::get(format!(
        "{}/v1/stream?token={alice}&rooms=%23secret",
        relay.base
    ))
    .await
    .unwrap();
    assert_json_error(
        stream,
        403,
        "room_not_granted",
        "stream narrowed to a stranger room",
    )
    .await;
    let listed = history(&relay.base, &alice, "rooms=%23secret").await;
    assert_json_error(
        listed,
        403,
        "room_not_granted",
        "history of a stranger room",
    )
    .await;
    let malformed = history(&relay.base, &alice, "rooms=general").await;
    assert_json_error(malformed, 422, "invalid", "a room without #").await;

    let body = |to: &str| json!({"participants": [to], "payload": {"n": 9}});
    let posted = post(&relay.base, "/v1/messages", &alice, body("#secret")).await;
    assert_json_error(
        posted,
        403,
        "room_not_granted",
        "posting to a stranger room",
    )
    .await;
    let posted = post(&relay.base, "/v1/messages", &alice, body("*")).await;
    assert_json_error(
        posted,
        403,
        "broadcast_not_allowed",
        "broadcast without scope",
    )
    .await;
    let (status, _) =
        status_and_json(post(&relay.base, "/v1/messages", &alice, body("#general")).await).await;
    assert_eq!(status, 201, "a member posts to their room");
    let admin = token(&relay, "ops", &["publish", "broadcast"], &[]);
    let (status, _) =
        status_and_json(post(&relay.base, "/v1/messages", &admin, body("*")).await).await;
    assert_eq!(status, 201, "scope broadcast may send to everyone");
    let (status, _) =
        status_and_json(post(&relay.base, "/v1/messages", &admin, body("#secret")).await).await;
    assert_eq!(status, 201, "scope broadcast may send to any room");
}

/// The app backs `pgrelay.member_rooms` with its own membership table: members receive the
/// room's messages (history from before they joined included) and may post there, with
/// nothing about rooms in their tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_rooms_backed_by_the_apps_table() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.memberships (member text, room text, PRIMARY KEY (member, room));
             INSERT INTO app.memberships VALUES ('dave', 'team'), ('erin', 'team');
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg('#' || room), '{}') FROM app.memberships
                  WHERE member = participant $$;",
        )
        .await
        .unwrap();
    insert(&client, &["#team"], json!({"n": 1})).await;
    let relay = Relay::start(&db).await;
    let dave = relay.token("dave", &["publish"]);
    let mut stream = Subscriber::open(&relay.base, &dave, "since_id=0", None).await;
    stream.opening_position().await;
    assert_eq!(
        next_n(&mut stream).await,
        1,
        "history from before the stream opened"
    );

    let erin = relay.token("erin", &["publish"]);
    let body = json!({"participants": ["#team"], "payload": {"n": 2}});
    let (status, _) = status_and_json(post(&relay.base, "/v1/messages", &erin, body).await).await;
    assert_eq!(status, 201);
    assert_eq!(next_n(&mut stream).await, 2);

    let mallory = relay.token("mallory", &["publish"]);
    let body = json!({"participants": ["#team"], "payload": {"n": 3}});
    let posted = post(&relay.base, "/v1/messages", &mallory, body).await;
    assert_json_error(
        posted,
        403,
        "room_not_granted",
        "a non-member posting to #team",
    )
    .await;
}

/// A signal to a room reaches its members' open streams, once each, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_a_rooms_members() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let alice = token(&relay, "alice", &["publish"], &["#general"]);
    let mut bob = listen(&relay, &token(&relay, "bob", &[], &["#general"]), "").await;
    let mut carol = listen(&relay, &relay.token("carol", &[]), "").await;
    // Bob is named and is in the room: one event, not one per address (signals have no id
    // the stream could drop a second copy by).
    let body = json!({"participants": ["#general", "bob"], "kind": "typing", "payload": {}});
    let (status, _) = status_and_json(post(&relay.base, "/v1/signals", &alice, body).await).await;
    assert_eq!(status, 202);
    let event = bob.next().await;
    assert_eq!(event.event.as_deref(), Some("typing"));
    assert!(event.id.is_none(), "signals carry no id");
    assert_quiet(&mut bob, "bob after his one typing event").await;
    assert_quiet(&mut carol, "carol, not in #general,").await;
}
