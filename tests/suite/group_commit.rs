//! Group commit: `POST /v1/messages` requests that arrive together share transactions, each
//! still answered with its own id, and a row the database refuses fails only its own request.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};

use crate::common::*;

/// Sends `bodies` as concurrent `POST /v1/messages` from different senders; returns each
/// answer's status and JSON, in order.
async fn post_together(relay: &Relay, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let posts = bodies.into_iter().enumerate().map(|(n, body)| async move {
        let token = relay.token(&format!("sender{n}"), &["publish"]);
        status_and_json(post(&relay.base, "/v1/messages", &token, body).await).await
    });
    join_all(posts).await
}

/// Fifty concurrent publishers: every request gets the id of its own message, every message is
/// stored once, and they took fewer transactions than messages (rows of one transaction share
/// `xmin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_transactions() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut inbox = relay.subscribe("inbox", "", None).await;
    inbox.opening_position().await;
    let bodies = (0..50)
        .map(|n| json!({"participants": ["inbox"], "payload": {"n": n}}))
        .collect();
    let answers = post_together(&relay, bodies).await;
    let ids: HashSet<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body}");
            body["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 50, "every request has an id of its own");

    let client = connect(&db).await;
    let rows = client
        .query(
            "SELECT id, xmin::text, payload->>'n' FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let stored: HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(stored, ids, "the ids answered are the ids stored");
    // Each answer names its own message, not a neighbour's in the same transaction.
    for (n, (_, body)) in answers.iter().enumerate() {
        let id = body["id"].as_i64().unwrap();
        let row = rows.iter().find(|row| row.get::<_, i64>(0) == id).unwrap();
        assert_eq!(
            row.get::<_, String>(2),
            n.to_string(),
            "request {n} got id {id}"
        );
    }
    // A live subscriber gets all fifty, once each, in id order.
    let mut live = Vec::new();
    for _ in 0..50 {
        live.push(inbox.next_message().await.0);
    }
    let mut in_order = live.clone();
    in_order.sort_unstable();
    in_order.dedup();
    assert_eq!(
        live, in_order,
        "delivered in increasing id order, once each"
    );
    assert_eq!(live.into_iter().collect::<HashSet<_>>(), ids);
    let transactions: HashSet<String> = rows.iter().map(|row| row.get(1)).collect();
    println!("50 messages in {} transactions", transactions.len());
    assert!(
        transactions.len() < 50,
        "no two concurrent publishes shared a transaction"
    );
}

/// A message PostgreSQL would refuse (a `\u0000` in its payload) among concurrent ones fails
/// with its own 422; the others are stored and answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_fails_only_its_own_request() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let bodies = (0..20)
        .map(|n| {
            let text = if n == 7 {
                "bad \u{0} byte".to_owned()
            } else {
                format!("ok {n}")
            };
            json!({"participants": ["inbox"], "payload": {"text": text}})
        })
        .collect();
    let answers = post_together(&relay, bodies).await;
    for (n, (status, body)) in answers.iter().enumerate() {
        let expected = if n == 7 { 422 } else { 201 };
        assert_eq!(*status, expected, "request {n}: {body}");
    }
    let count = message_count(&connect(&db).await).await;
    assert_eq!(count, 19);
}

/// Makes the outbox refuse payloads with a key `poison`, as an application's own constraint
/// might, and count the statements that try to insert into it (in a sequence, which does not
/// roll back with the statements that fail): see [`insert_attempts`].
async fn refuse_poison_and_count_attempts(client: &Client) {
    client
        .batch_execute(
            "ALTER TABLE pgrelay.messages
                 ADD CONSTRAINT app_refuses_poison CHECK (NOT payload ? 'poison');
             CREATE SEQUENCE public.insert_attempts;
             CREATE FUNCTION public.count_insert_attempt() RETURNS trigger
                 LANGUAGE plpgsql AS $$
                 BEGIN PERFORM nextval('public.insert_attempts'); RETURN NULL; END $$;
             CREATE TRIGGER count_insert_attempts BEFORE INSERT ON pgrelay.messages
                 FOR EACH STATEMENT EXECUTE FUNCTION public.count_insert_attempt();",
        )
        .await
        .unwrap();
}

/// Statements that tried to insert into the outbox so far.
async fn insert_attempts(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.insert_attempts",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Holds the publishing task of `relay`, on database `db`: locks the outbox against inserts in
/// a transaction of `client`'s (connected to `db`) and publishes a first message, which then
/// waits for the lock, so that publishes sent meanwhile queue behind it. Rolling the
/// transaction back lets everything commit; the handle gives the first publish's status and
/// JSON.
async fn hold_publishing<'a>(
    client: &'a mut Client,
    relay: &Relay,
    db: &str,
) -> (Transaction<'a>, JoinHandle<(u16, Value)>) {
    let lock = client.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pgrelay.messages IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let (base, token) = (relay.base.clone(), relay.token("first", &["publish"]));
    let first = tokio::spawn(async move {
        let body = json!({"participants": ["inbox"], "payload": {"from": "the first"}});
        status_and_json(post(&base, "/v1/messages", &token, body).await).await
    });
    tokio::time::timeout(PATIENCE, publish_waits_for_lock(db))
        .await
        .expect("the first publish reached the locked outbox");
    (lock, first)
}

/// Returns once a `pgrelay.publish_many` call waits for a lock. Asked through a connection
/// of its own, outside any transaction: within one, `pg_stat_activity` keeps the snapshot it
/// read first.
async fn publish_waits_for_lock(db: &str) {
    let client = connect(db).await;
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                  WHERE wait_event_type = 'Lock' AND query LIKE '%publish_many%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A payload jsonb refuses is answered 422 before it joins a batch: while the outbox is
/// locked, so that no batch can commit and an honest publish waits, each such payload is
/// still answered at once; then the honest one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payloads_are_answered_without_joining_a_batch() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut locker = connect(&db).await;
    let (lock, honest) = hold_publishing(&mut locker, &relay, &db).await;
    let poisoner = relay.token("poisoner", &["publish"]);
    for payload in [r#""\u0000""#, r#""\ud800""#, "1e999999", r#"{"\u0000": 1}"#] {
        let body = format!(r#"{{"participants": ["inbox"], "payload": {payload}}}"#);
        let post = post_text(&relay.base, "/v1/messages", &poisoner, body);
        let answer = tokio::time::timeout(PATIENCE, post)
            .await
            .unwrap_or_else(|_| panic!("{payload} waited for the locked outbox"));
        assert_json_error(answer, 422, "invalid", payload).await;
    }
    assert!(
        !honest.is_finished(),
        "the honest publish waits for the lock"
    );
    lock.rollback().await.unwrap();
    let (status, body) = honest.await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(message_count(&locker).await, 1);
}

/// A row the database refuses for a reason the relay cannot foresee (here a CHECK constraint
/// an application added) fails only its own request, and its batch is split in halves rather
/// than retried one message per transaction: 64 publishes queued together, one of them
/// refused, cost at most 2·log2(64) + 1 attempts, not 65. Every other request gets 201 and the
/// id of its own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_splits_its_batch_in_halves() {
    const QUEUED: usize = 64;
    const GUILTY: usize = 37;
    let db = fresh_database().await;
    let mut admin = connect(&db).await;
    refuse_poison_and_count_attempts(&admin).await;
    let relay = Relay::start(&db).await;

    let (lock, first) = hold_publishing(&mut admin, &relay, &db).await;
    let bodies = (0..QUEUED)
        .map(|n| {
            let key = if n == GUILTY { "poison" } else { "n" };
            json!({"participants": ["inbox"], "payload": {key: n.to_string()}})
        })
        .collect();
    // Long enough for every request to reach the queue on a busy machine.
    let release = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        lock.rollback().await.unwrap();
    };
    let (answers, ()) = tokio::join!(post_together(&relay, bodies), release);
    assert_eq!(first.await.unwrap().0, 201);

    let rows = admin
        .query("SELECT id, payload->>'n' FROM pgrelay.messages", &[])
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for (n, (status, body)) in answers.iter().enumerate() {
        if n == GUILTY {
            assert_eq!(*status, 422, "the refused request: {body}");
            assert_eq!(body["error"], "invalid");
            continue;
        }
        assert_eq!(*status, 201, "request {n}: {body}");
        let id = body["id"].as_i64().unwrap();
        assert!(ids.insert(id), "id {id} answered twice");
        let row = rows.iter().find(|row| row.get::<_, i64>(0) == id).unwrap();
        assert_eq!(row.get::<_, String>(1), n.to_string(), "request {n}");
    }
    assert_eq!(rows.len(), QUEUED, "the first and every request but one");

    let attempts = insert_attempts(&admin).await;
    // The first publish, then the queued batch: whole, and two halves per level down to the
    // guilty message alone. A request that missed the queue would cost an attempt of its
    // own: two are allowed for.
    let bound = 1 + 2 * QUEUED.ilog2() as i64 + 1 + 2;
    println!("{QUEUED} queued publishes, one refused: {attempts} insert attempts (bound {bound})");
    assert!(attempts <= bound, "{attempts} attempts");
}

/// Once the database has refused one of its messages, a sender publishes alone for a while:
/// its next message, sent while a batch of others is queued, commits (here: fails) in a
/// transaction of its own instead of failing the batch again, so that batch costs one attempt,
/// not 2·log2(n) + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_the_database_refused_publishes_alone_for_a_while() {
    refused_publisher_publishes_alone(&["publish"], None, None).await;
}

/// A backend (scope `service`) is set apart by its own name, not by the senders it names: its
/// second poison, for another user, still publishes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_the_database_refused_publishes_alone_whoever_it_names() {
    refused_publisher_publishes_alone(&["service"], Some("alice"), Some("bob")).await;
}

/// `poisoner`'s poison (with scopes `scopes`, as sender `first`, then `second`) is refused; the
/// second one, sent while a batch is queued, must go alone.
async fn refused_publisher_publishes_alone(
    scopes: &[&str],
    first: Option<&str>,
    second: Option<&str>,
) {
    const QUEUED: usize = 32;
    let db = fresh_database().await;
    let mut admin = connect(&db).await;
    refuse_poison_and_count_attempts(&admin).await;
    let relay = Relay::start(&db).await;
    let poisoner = relay.token("poisoner", scopes);
    let poison = |sender: Option<&str>| {
        let mut body = json!({"participants": ["inbox"], "payload": {"poison": true}});
        if let Some(sender) = sender {
            body["sender"] = sender.into();
        }
        body
    };
    let refused = post(&relay.base, "/v1/messages", &poisoner, poison(first)).await;
    assert_json_error(refused, 422, "invalid", "the first poison").await;
    let before = insert_attempts(&admin).await;

    let (lock, first) = hold_publishing(&mut admin, &relay, &db).await;
    let bodies = (0..QUEUED)
        .map(|n| json!({"participants": ["inbox"], "payload": {"n": n}}))
        .collect();
    let release = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        lock.rollback().await.unwrap();
    };
    let (answers, again, ()) = tokio::join!(
        post_together(&relay, bodies),
        post(&relay.base, "/v1/messages", &poisoner, poison(second)),
        release
    );
    assert_eq!(first.await.unwrap().0, 201);
    for (n, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 201, "request {n}: {body}");
    }
    assert_json_error(again, 422, "invalid", "the second poison").await;
    let attempts = insert_attempts(&admin).await - before;
    println!("{QUEUED} queued publishes beside a quarantined poisoner: {attempts} insert attempts");
    // The first publish, the queued batch, and the poison alone; a request that missed the
    // queue would cost an attempt of its own: two are allowed for.
    assert!(attempts <= 3 + 2, "{attempts} attempts");
}

/// Retries with one `Idempotency-Key` queued in one batch, beside a row the database refuses:
/// the batch is split, yet no retry is refused with the guilty row or stored twice. The first
/// of each key gets 201, the others 200 with its id, and only the guilty request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_a_split_batch_resolve_to_the_first() {
    const KEYS: usize = 8;
    const GUILTY: usize = 5;
    let db = fresh_database().await;
    let mut admin = connect(&db).await;
    refuse_poison_and_count_attempts(&admin).await;
    let relay = Relay::start(&db).await;
    let (lock, first) = hold_publishing(&mut admin, &relay, &db).await;
    let token = relay.token("backend", &["publish"]);
    // Each key three times, the copies spread over the batch, and one poison among them.
    let requests: Vec<(Option<String>, Value)> = (0..3 * KEYS)
        .map(|n| {
            let key = n % KEYS;
            (
                Some(format!("key-{key}")),
                json!({"participants": ["inbox"], "payload": {"n": key}}),
            )
        })
        .chain([(
            None,
            json!({"participants": ["inbox"], "payload": {"poison": GUILTY}}),
        )])
        .collect();
    let posts = requests.iter().map(|(key, body)| {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/messages", relay.base))
            .bearer_auth(&token)
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        async move { status_and_json(request.send().await.unwrap()).await }
    });
    let release = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        lock.rollback().await.unwrap();
    };
    let (answers, ()) = tokio::join!(join_all(posts), release);
    assert_eq!(first.await.unwrap().0, 201);

    let (poison, answers) = answers.split_last().unwrap();
    assert_eq!(poison.0, 422, "the guilty request: {}", poison.1);
    for key in 0..KEYS {
        let copies: Vec<&(u16, Value)> = answers.iter().skip(key).step_by(KEYS).collect();
        let mut statuses: Vec<u16> = copies.iter().map(|(status, _)| *status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 201], "key {key}: {copies:?}");
        assert!(
            copies
                .iter()
                .all(|(_, body)| body["id"] == copies[0].1["id"]),
            "key {key}: {copies:?}"
        );
    }
    assert_eq!(message_count(&admin).await, 1 + KEYS as i64);
}
