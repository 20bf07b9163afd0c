//! Attaching an application's own table: its rows become events in the same transaction.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// A small chat app's schema: conversations, their members, and messages.
const APP_SCHEMA: &str = "
    CREATE TABLE conversations (id bigserial PRIMARY KEY, title text NOT NULL);
    CREATE TABLE conversation_members (
        conversation_id bigint REFERENCES conversations, user_name text NOT NULL);
    CREATE TABLE chat_messages (
        id bigserial PRIMARY KEY,
        conversation_id bigint NOT NULL REFERENCES conversations,
        sender text NOT NULL,
        body text NOT NULL,
        message_type text NOT NULL DEFAULT 'chat',
        sent_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO conversations (title) VALUES ('team'), ('private');
    INSERT INTO conversation_members VALUES (1, 'alice'), (1, 'bob'), (1, 'carol'), (2, 'alice'), (2, 'dave');
";

const ATTACH: &str = "
    SELECT pgrelay.attach('public.chat_messages'::regclass,
        participants => 'ARRAY(SELECT user_name FROM conversation_members m WHERE m.conversation_id = NEW.conversation_id)',
        kind         => 'chat',
        payload      => 'jsonb_build_object(''conversation'', NEW.conversation_id, ''body'', NEW.body, ''app_id'', NEW.id)',
        sender       => 'NEW.sender')";

async fn app_database() -> (String, tokio_postgres::Client) {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client.batch_execute(APP_SCHEMA).await.unwrap();
    (db, client)
}

/// The app's own INSERT reaches exactly the conversation's members, with kind and sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_insert_reaches_members() {
    let (db, app) = app_database().await;
    app.batch_execute(ATTACH).await.unwrap();
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    let mut dave = relay.subscribe("dave", "", None).await;
    bob.opening_position().await;
    dave.opening_position().await;

    app.batch_execute(
        "INSERT INTO chat_messages (conversation_id, sender, body) VALUES (1, 'alice', 'hi team')",
    )
    .await
    .unwrap();
    let (_, kind, data) = bob.next_message().await;
    assert_eq!(kind, "chat");
    assert_eq!(data["sender"], "alice");
    assert_eq!(data["participants"], json!(["alice", "bob", "carol"]));
    assert_eq!(
        data["payload"],
        json!({"conversation": 1, "body": "hi team", "app_id": 1})
    );
    assert!(
        dave.next_within(Duration::from_millis(300)).await.is_none(),
        "dave is not a member"
    );
}

/// A rolled-back app insert delivers nothing; the outbox row goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_app_insert_delivers_nothing() {
    let (db, app) = app_database().await;
    app.batch_execute(ATTACH).await.unwrap();
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    app.batch_execute(
        "BEGIN; INSERT INTO chat_messages (conversation_id, sender, body) VALUES (1, 'alice', 'oops'); ROLLBACK;",
    )
    .await
    .unwrap();
    let count: i64 = app
        .query_one("SELECT count(*) FROM pgrelay.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    app.batch_execute(
        "INSERT INTO chat_messages (conversation_id, sender, body) VALUES (1, 'alice', 'kept')",
    )
    .await
    .unwrap();
    assert_eq!(bob.next_message().await.2["payload"]["body"], "kept");
    assert!(bob.next_within(Duration::from_millis(300)).await.is_none());
}

/// A wrong expression fails at attach time, and leaves the table as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expressions_fail_at_attach() {
    let (_db, app) = app_database().await;
    let wrong = [
        "participants => 'ARRAY[NEW.no_such_column]'",
        "participants => 'ARRAY[NEW.sender'",
        "participants => 'NEW.conversation_id'",
        "participants => 'ARRAY[NEW.sender]', payload => 'NEW.nope'",
        "participants => 'ARRAY[NEW.sender]', kind => 'presence'",
        "participants => 'ARRAY[NEW.sender]', kind => 'NEW.missing_kind'",
        "participants => 'ARRAY[NEW.sender]', sender => 'NEW.senderr'",
    ];
    for arguments in wrong {
        let statement = format!("SELECT pgrelay.attach('chat_messages'::regclass, {arguments})");
        assert!(
            app.batch_execute(&statement).await.is_err(),
            "accepted: {arguments}"
        );
    }
    let triggers: i64 = app
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgrelay_outbox'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    app.batch_execute(
        "INSERT INTO chat_messages (conversation_id, sender, body) VALUES (1, 'alice', 'x')",
    )
    .await
    .unwrap();
}

/// A kind can come from the row; empty participant lists are skipped without failing the
/// app's insert; detach stops relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_expression_empty_audience_and_detach() {
    let (db, app) = app_database().await;
    app.batch_execute(
        "SELECT pgrelay.attach('chat_messages'::regclass,
             participants => 'ARRAY(SELECT user_name FROM conversation_members m WHERE m.conversation_id = NEW.conversation_id)',
             kind => 'NEW.message_type')",
    )
    .await
    .unwrap();
    let relay = Relay::start(&db).await;
    let mut dave = relay.subscribe("dave", "", None).await;
    dave.opening_position().await;

    app.batch_execute(
        "INSERT INTO conversations (title) VALUES ('empty');
         INSERT INTO chat_messages (conversation_id, sender, body) VALUES (3, 'nobody', 'to no one');
         INSERT INTO chat_messages (conversation_id, sender, body, message_type) VALUES (2, 'alice', 'x', 'chat.edit')",
    )
    .await
    .unwrap();
    let (_, kind, data) = dave.next_message().await;
    assert_eq!(kind, "chat.edit");
    assert_eq!(
        data["payload"]["body"], "x",
        "the default payload is the whole row"
    );
    assert_eq!(data["sender"], json!(null));

    app.batch_execute("SELECT pgrelay.detach('chat_messages'::regclass)")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO chat_messages (conversation_id, sender, body) VALUES (2, 'alice', 'after detach')")
        .await
        .unwrap();
    assert!(dave.next_within(Duration::from_millis(300)).await.is_none());
    let relayed: i64 = app
        .query_one("SELECT count(*) FROM pgrelay.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(relayed, 1);
}
