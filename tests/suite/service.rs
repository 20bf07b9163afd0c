//! Backends that publish: scope `service` (a sender of its choosing, any person or room, a
//! limit of its own) and `Idempotency-Key` on `POST /v1/messages` (a retry publishes nothing
//! again, also when the retries race).

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::common::*;

/// `POST /v1/messages` as `token` with `body`, and an `Idempotency-Key` when `key` is given.
async fn publish(relay: &Relay, token: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// The stored messages, oldest first: `(id, sender, participants)`.
async fn stored(db: &str) -> Vec<(i64, Option<String>, Vec<String>)> {
    connect(db)
        .await
        .query(
            "SELECT id, sender, participants FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// A service token publishes as the user it names, to a room neither it nor the user is a
/// member of and to a person; the message reaches that person's stream from that user, and the
/// service itself is not made a participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishes_for_a_user_to_a_room_it_is_not_in() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let service = relay.token("billing", &["service"]);
    let body = json!({"sender": "alice", "participants": ["#ops", "bob"], "payload": {"n": 1}});
    let (status, answer) = status_and_json(publish(&relay, &service, None, &body).await).await;
    assert_eq!(status, 201, "{answer}");

    let (id, _, data) = bob.next_message().await;
    assert_eq!(Some(id), answer["id"].as_i64());
    assert_eq!(data["sender"], "alice");
    let rows = stored(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.as_deref(), Some("alice"));
    assert_eq!(
        rows[0].2,
        ["#ops", "bob", "alice"],
        "the sender is added, not the service"
    );

    // Everyone still needs scope `broadcast`.
    let everyone = json!({"sender": "alice", "participants": ["*"], "payload": {}});
    let refused = publish(&relay, &service, None, &everyone).await;
    assert_json_error(refused, 403, "broadcast_not_allowed", "* without broadcast").await;
    // A sender follows the subject rule: a person, never a room or everyone.
    for sender in [json!("#ops"), json!("*"), json!(""), json!(7)] {
        let body = json!({"sender": sender, "participants": ["bob"], "payload": {}});
        let refused = publish(&relay, &service, None, &body).await;
        assert_json_error(refused, 422, "invalid", &format!("sender {sender}")).await;
    }
    assert_eq!(stored(&db).await.len(), 1, "nothing refused was stored");
}

/// A service's signal, too, comes from the user it names and may go to a room the service is
/// not in: a member's stream gets it with that sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_signals_for_a_user() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let bob = relay
        .keys
        .mint_with_rooms("bob", Duration::from_secs(600), &[], &["#ops"]);
    let mut stream = Subscriber::open(&relay.base, &bob, "", None).await;
    stream.opening_position().await;
    let service = relay.token("billing", &["service"]);
    let body =
        json!({"sender": "alice", "participants": ["#ops"], "kind": "typing", "payload": {}});
    let answer = post(&relay.base, "/v1/signals", &service, body).await;
    assert_eq!(answer.status(), 202);
    let event = loop {
        let event = stream.next().await;
        if event.event.as_deref() == Some("typing") {
            break event;
        }
    };
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["sender"], "alice");
    assert_eq!(data["participants"], json!(["#ops", "alice"]));
}

/// A token without scope `service` cannot choose its sender, not even its own name: 403
/// `sender_not_allowed`, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_token_cannot_set_the_sender() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mallory = relay.token("mallory", &["publish", "broadcast"]);
    for sender in ["alice", "mallory"] {
        let body = json!({"sender": sender, "participants": ["bob"], "payload": {}});
        let refused = publish(&relay, &mallory, None, &body).await;
        assert_json_error(refused, 403, "sender_not_allowed", sender).await;
        let signal =
            json!({"sender": sender, "participants": ["bob"], "kind": "typing", "payload": {}});
        let refused = post(&relay.base, "/v1/signals", &mallory, signal).await;
        assert_json_error(refused, 403, "sender_not_allowed", sender).await;
    }
    assert!(stored(&db).await.is_empty());
}

/// A service publishes under its own limit: with a person's at 2 in a burst, the person's third
/// message is refused with 429 while the service's fifty all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishes_under_its_own_limit() {
    let db = fresh_database().await;
    let settings = pgrelay::Settings {
        publish_rate: 0.01,
        publish_burst: 2.0,
        service_publish_rate: 0.01,
        service_publish_burst: 50.0,
        ..test_settings()
    };
    let relay = Relay::start_with(&db, settings).await;
    let person = relay.token("alice", &["publish"]);
    let service = relay.token("backend", &["service"]);
    let body = json!({"participants": ["bob"], "payload": {}});
    for _ in 0..2 {
        assert_eq!(publish(&relay, &person, None, &body).await.status(), 201);
    }
    let refused = publish(&relay, &person, None, &body).await;
    assert_json_error(refused, 429, "rate_limited", "a person's third").await;
    for n in 0..50 {
        // Half of them as alice: the service's limit is the service's, whoever it speaks for.
        let body = json!({"sender": if n % 2 == 0 { "alice" } else { "backend" },
                          "participants": ["bob"], "payload": {"n": n}});
        let answer = publish(&relay, &service, None, &body).await;
        assert_eq!(answer.status(), 201, "service message {n}");
    }
    let refused = publish(&relay, &service, None, &body).await;
    assert_json_error(refused, 429, "rate_limited", "the service's 51st").await;
}

/// Three retries with one key, sent at once to two relay instances, store one message and
/// all answer its id: one 201 and two 200. Repeated with fresh keys (`PGRELAY_RACE_ROUNDS`,
/// default 10) so that the race is run many times; prints the duplicates found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_with_one_key_store_one_message() {
    let rounds: usize = std::env::var("PGRELAY_RACE_ROUNDS").map_or(10, |n| n.parse().unwrap());
    let db = fresh_database().await;
    let relays = [Relay::start(&db).await, Relay::start(&db).await];
    let service = relays[0].token("backend", &["service"]);
    let mut wrong_answers = Vec::new();
    for round in 0..rounds {
        let key = format!("order-{round}");
        let body = json!({"sender": "alice", "participants": ["bob"], "payload": {"round": round}});
        let retries = (0..3).map(|n| publish(&relays[n % 2], &service, Some(&key), &body));
        let mut answers = Vec::new();
        for response in join_all(retries).await {
            answers.push(status_and_json(response).await);
        }
        let ids: Vec<&Value> = answers.iter().map(|(_, answer)| &answer["id"]).collect();
        let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        statuses.sort_unstable();
        if statuses != [200, 200, 201] || ids.iter().any(|id| *id != ids[0]) {
            wrong_answers.push(answers);
        }
    }
    let duplicates = stored(&db).await.len() as i64 - rounds as i64;
    println!(
        "{rounds} rounds of 3 racing retries over 2 instances: {duplicates} duplicates, \
         {} rounds answered otherwise than one 201 and two 200 with one id",
        wrong_answers.len()
    );
    assert_eq!(duplicates, 0);
    assert!(wrong_answers.is_empty(), "{wrong_answers:?}");
}

/// A retry after the first publish answered gets 200 and the same id, and nothing reaches a
/// stream again; the same key from another token subject is another publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_answers_the_first_id_and_publishes_nothing() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {"text": "once"}});
    let (status, first) = status_and_json(publish(&relay, &alice, Some("k-1"), &body).await).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = status_and_json(publish(&relay, &alice, Some("k-1"), &body).await).await;
    assert_eq!((status, &again), (200, &first));

    let carol = relay.token("carol", &["publish"]);
    let (status, other) = status_and_json(publish(&relay, &carol, Some("k-1"), &body).await).await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["id"], first["id"]);

    assert_eq!(bob.next_message().await.0, first["id"].as_i64().unwrap());
    assert_eq!(bob.next_message().await.0, other["id"].as_i64().unwrap());
    assert_eq!(stored(&db).await.len(), 2);
}

/// A key reused with another body is refused (409 `idempotency_key_reused`; Stripe refuses it
/// too): the caller has a bug, and answering the first message's id would hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_message_is_refused() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {"text": "first"}});
    assert_eq!(
        publish(&relay, &alice, Some("k"), &body).await.status(),
        201
    );
    // The same JSON written differently is the same message.
    let spaced = r#"{ "payload" : {"text":"first"}, "participants" : ["bob"] }"#;
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(&alice)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body(spaced)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    for other in [
        json!({"participants": ["bob"], "payload": {"text": "second"}}),
        json!({"participants": ["bob", "carol"], "payload": {"text": "first"}}),
        json!({"participants": ["bob"], "payload": {"text": "first"}, "kind": "note"}),
    ] {
        let refused = publish(&relay, &alice, Some("k"), &other).await;
        assert_json_error(refused, 409, "idempotency_key_reused", &other.to_string()).await;
    }
    assert_eq!(stored(&db).await.len(), 1);
}

/// An `Idempotency-Key` that is empty, longer than 255 bytes, or not visible ASCII is answered
/// with a JSON 400, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_idempotency_key_is_a_json_400() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {}});
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str(), "two words", "caf\u{e9}"] {
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/messages", relay.base))
            .bearer_auth(&alice)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_json_error(answer, 400, "invalid_idempotency_key", key).await;
    }
    let twice = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(&alice)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_json_error(twice, 400, "invalid_idempotency_key", "two keys").await;
    let longest = "k".repeat(255);
    assert_eq!(
        publish(&relay, &alice, Some(&longest), &body)
            .await
            .status(),
        201
    );
    assert_eq!(stored(&db).await.len(), 1);
}

/// A role granted only to insert runs `prelude` in its session, then writes a row to
/// `participants` that carries alice's idempotency key `k`.
async fn plant_alices_key(db: &str, prelude: &str, participants: &str) {
    Role::create(
        db,
        "writer",
        &[
            "GRANT USAGE ON SCHEMA pgrelay TO {role}",
            "GRANT INSERT ON pgrelay.messages TO {role}",
        ],
    )
    .await
    .connect()
    .await
    .batch_execute(&format!(
        "{prelude} INSERT INTO pgrelay.messages \
           (participants, payload, idempotency_subject, idempotency_key) \
         VALUES ('{participants}', '{{\"text\":\"planted\"}}', 'alice', 'k')"
    ))
    .await
    .unwrap();
}

/// A role granted to insert cannot plant a key for someone else's retries: the columns that
/// record a key are cleared on its rows, so the relay's publish with that key is a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_plant_an_idempotency_key() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    plant_alices_key(&db, "", "{bob}").await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {"text": "planted"}});
    let (status, answer) = status_and_json(publish(&relay, &alice, Some("k"), &body).await).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(stored(&db).await.len(), 2);
}

/// The same plant, by a writer that first shadows `pg_class` with a temporary table
/// ([`PASS_FOR_THE_OWNER`]): the columns must still be cleared, and alice's publish with her
/// key must still be published and reach bob, not answered with the writer's message (before
/// migration 15: 409 `idempotency_key_reused`, and nothing published; found by an outside
/// review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_plant_an_idempotency_key_with_a_temporary_pg_class() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    plant_alices_key(&db, &format!("{PASS_FOR_THE_OWNER};"), "{nobody}").await;
    let alice = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {"text": "from alice"}});
    let (status, answer) = status_and_json(publish(&relay, &alice, Some("k"), &body).await).await;
    assert_eq!(status, 201, "alice's first publish with her key: {answer}");
    let (_, _, data) = bob.next_message().await;
    assert_eq!(data["payload"]["text"], "from alice");
}
