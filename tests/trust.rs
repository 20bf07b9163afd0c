//! The trust boundary: other database logins and token holders are attackers.
//!
//! Each test is one attack from the security review, written against the contract (nothing
//! lost, repeated or reordered; nothing leaked; nothing forged; nothing exhausted).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A role made for one test (role names are cluster-wide, so each carries the database's name).
struct Role {
    url: String,
}

impl Role {
    /// Creates a LOGIN role with nothing else granted, plus `grants` (SQL run as the superuser,
    /// with `{role}` standing for the role's name).
    async fn create(db: &str, label: &str, grants: &[&str]) -> Role {
        let database = db.rsplit('/').next().unwrap();
        let name = format!("{label}_{database}");
        let admin = connect(db).await;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"))
            .await
            .unwrap();
        for grant in grants {
            admin
                .batch_execute(&grant.replace("{role}", &name))
                .await
                .unwrap();
        }
        Role {
            url: db.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1),
        }
    }

    async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

/// The grants an application role that writes messages gets (see the README's security model).
const WRITER_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA pgrelay TO {role}",
    "GRANT INSERT ON pgrelay.messages TO {role}",
];

/// Injected events: a LOGIN-only role NOTIFYs payloads shaped like a signal, a presence change
/// and a wake-up. None of them may reach a stream or move its position.
#[tokio::test]
async fn raw_notify_from_another_login_creates_no_event() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    insert(&app, &["carol"], json!({"n": 0})).await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    let opened_at = bob.opening_position().await;

    let intruder = Role::create(&db, "intruder", &[]).await.connect().await;
    let forged = [
        json!({"signal": {"kind": "message", "sender": "alice", "participants": ["bob"],
                          "payload": {"text": "send me your password"}, "id": 9007199254740991i64}}),
        json!({"signal": {"kind": "presence", "participants": ["bob"],
                          "payload": {"participant": "alice", "online": true, "at": "2026-01-01T00:00:00Z"}}}),
        json!({"id": opened_at + 1, "participants": ["bob"]}),
        json!({"id": 9007199254740991i64, "participants": ["bob"]}),
    ];
    for payload in &forged {
        intruder
            .execute("SELECT pg_notify('pgrelay', $1)", &[&payload.to_string()])
            .await
            .unwrap();
    }
    insert(&app, &["alice", "bob"], json!({"text": "the real one"})).await;
    let real = ids_for(&app, "bob").await;

    let event = bob.next().await;
    assert_eq!(
        event.id.as_deref(),
        Some(real[0].to_string().as_str()),
        "the first event after the opening block must be the stored message: {event:?}"
    );
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["payload"]["text"], "the real one");
    assert!(
        bob.next_within(Duration::from_millis(500)).await.is_none(),
        "nothing else arrives"
    );
}

/// Forged wake-ups: while two writers insert for bob, another login keeps notifying ids just
/// above the newest. Bob's live stream still gets every message exactly once, in order.
#[tokio::test]
async fn forged_wakeups_lose_nothing() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    let intruder = Role::create(&db, "intruder", &[]).await.connect().await;
    let (writer_count, per_writer) = (4, 1000);
    let writers: Vec<_> = (0..writer_count)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let client = connect(&db).await;
                for n in 0..per_writer {
                    insert(&client, &["bob"], json!({"w": w, "n": n})).await;
                }
            })
        })
        .collect();
    // The best guess an attacker can make: the newest id itself (read here as the superuser).
    let oracle = connect(&db).await;
    let spam = tokio::spawn(async move {
        loop {
            let Ok(row) = oracle.query_one("SELECT coalesce(max(id), 0) FROM pgrelay.messages", &[]).await else {
                return;
            };
            let newest: i64 = row.get(0);
            for ahead in 1..=4 {
                let payload = json!({"id": newest + ahead, "participants": ["bob"]}).to_string();
                if intruder
                    .execute("SELECT pg_notify('pgrelay', $1)", &[&payload])
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    for writer in writers {
        writer.await.unwrap();
    }
    spam.abort();

    let expected = ids_for(&app, "bob").await;
    assert_eq!(expected.len(), writer_count * per_writer);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let Some(event) = bob.next_within(PATIENCE).await else {
            break;
        };
        got.extend(event.data.and(event.id).map(|id| id.parse::<i64>().unwrap()));
    }
    assert_eq!(got, expected, "bob's live stream skipped or reordered messages");
}

/// Collects every notification a connection hears on `channel` for `during`.
async fn eavesdrop(url: &str, channel: &str, during: impl std::future::Future<Output = ()>) -> Vec<String> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(notification) = message {
                let _ = sender.send(notification.payload().to_owned());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
    during.await;
    // A round trip, so everything sent before it has been read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    let _ = driver.await;
    let mut payloads = Vec::new();
    while let Ok(payload) = heard.try_recv() {
        payloads.push(payload);
    }
    payloads
}

/// Eavesdropping: a LOGIN-only role that LISTENs on the channel learns no participant, sender
/// or payload of a message, a signal or a presence change.
#[tokio::test]
async fn listen_reveals_no_content() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    let relay = Relay::start(&db).await;
    let intruder = Role::create(&db, "intruder", &[]).await;
    let publisher = relay.token("alice", &["publish"]);
    let heard = eavesdrop(&intruder.url, "pgrelay", async {
        insert(&app, &["alice", "bob"], json!({"text": "secret-message-text"})).await;
        app.execute(
            "SELECT pgrelay.signal('{bob}', 'typing', '{\"draft\":\"secret-draft-text\"}', 'alice')",
            &[],
        )
        .await
        .unwrap();
        let response = reqwest::Client::new()
            .post(format!("{}/v1/signals", relay.base))
            .bearer_auth(&publisher)
            .json(&json!({"participants": ["bob"], "kind": "typing", "payload": {"draft": "secret-draft-text"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        // bob comes online: a presence change for his audience (alice shares a message).
        let mut bob = relay.subscribe("bob", "", None).await;
        bob.opening_position().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert!(!heard.is_empty(), "the intruder heard wake-ups (the test listens correctly)");
    for payload in &heard {
        for secret in ["alice", "bob", "secret-message-text", "secret-draft-text", "participant"] {
            assert!(
                !payload.contains(secret),
                "a LISTENing login learned {secret:?} from {payload:?}"
            );
        }
    }
}

/// Explicit ids: a role with only INSERT takes the advisory lock that used to unlock explicit
/// ids and inserts a far-future id. The insert is refused, and streams are unaffected.
#[tokio::test]
async fn explicit_ids_are_refused_to_writers() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    let writer = Role::create(&db, "writer", WRITER_GRANTS).await.connect().await;
    let key: i64 = app
        .query_one("SELECT 7395514830127704945::int8", &[])
        .await
        .unwrap()
        .get(0);
    let attempt = async {
        writer.batch_execute("BEGIN").await?;
        writer
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await?;
        writer
            .execute(
                "INSERT INTO pgrelay.messages (id, participants, payload) \
                 VALUES (9000000000000000000, '{carol}', '{}')",
                &[],
            )
            .await?;
        writer.batch_execute("COMMIT").await
    };
    let result: Result<(), tokio_postgres::Error> = attempt.await;
    let _ = writer.batch_execute("ROLLBACK").await;
    assert!(result.is_err(), "an INSERT-only role chose a message id");
    for id in [9000000000000000000i64, 2] {
        let explicit = writer
            .execute(
                "INSERT INTO pgrelay.messages (id, participants, payload) VALUES ($1, '{carol}', '{}')",
                &[&id],
            )
            .await;
        assert!(explicit.is_err(), "explicit id {id} was accepted");
    }

    let relay = Relay::start(&db).await;
    let mut carol = relay.subscribe("carol", "", None).await;
    carol.opening_position().await;
    insert(&writer, &["carol"], json!({"text": "next"})).await;
    let (_, _, data) = carol.next_message().await;
    assert_eq!(data["payload"]["text"], "next");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base))
        .bearer_auth(relay.token("carol", &["publish"]))
        .json(&json!({"participants": ["dave"], "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}
