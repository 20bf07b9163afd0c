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

/// A fresh database with an app's `schema` in it.
async fn database_with(schema: &str) -> (String, tokio_postgres::Client) {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client.batch_execute(schema).await.unwrap();
    (db, client)
}

/// The app's own INSERT reaches exactly the conversation's members, with kind and sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_insert_reaches_members() {
    let (db, app) = database_with(APP_SCHEMA).await;
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
    let (db, app) = database_with(APP_SCHEMA).await;
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
    let (_db, app) = database_with(APP_SCHEMA).await;
    let wrong = [
        "participants => 'ARRAY[NEW.no_such_column]'",
        "participants => 'ARRAY[NEW.sender'",
        "participants => 'NEW.conversation_id'",
        "participants => 'ARRAY[NEW.sender]', payload => 'NEW.nope'",
        "participants => 'ARRAY[NEW.sender]', kind => 'presence'",
        "participants => 'ARRAY[NEW.sender]', kind => 'rooms'",
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

/// A kind can come from the row; an empty participant list is skipped (and recorded) without
/// failing the app's insert; detach stops relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_expression_empty_audience_and_detach() {
    let (db, app) = database_with(APP_SCHEMA).await;
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

/// An app table whose every column can make a row unpublishable.
const POSTS: &str = "
    CREATE TABLE posts (
        id bigserial PRIMARY KEY,
        author text,
        audience text[],
        kind text,
        body text,
        divisor int NOT NULL DEFAULT 1,
        amount text NOT NULL DEFAULT '1');
    SELECT pgrelay.attach('posts'::regclass,
        participants => 'NEW.audience',
        kind         => 'NEW.kind',
        payload      => 'CASE WHEN NEW.body IS NOT NULL THEN jsonb_build_object(
                             ''body'', NEW.body, ''ratio'', 10 / NEW.divisor, ''amount'', NEW.amount::int) END',
        sender       => 'NEW.author')";

/// The one number `query` answers.
async fn count(client: &tokio_postgres::Client, query: &str) -> i64 {
    client.query_one(query, &[]).await.unwrap().get(0)
}

/// The skips recorded so far: (reason, detail), oldest first.
async fn skips(client: &tokio_postgres::Client) -> Vec<(String, Option<String>)> {
    client
        .query(
            "SELECT reason, detail FROM pgrelay.attach_skips WHERE source = 'posts'::regclass ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The app's statement never fails because of pgrelay: NULL and refused addresses are left
/// out, and rows with nothing publishable (no address left, a NULL payload, a bad kind or
/// sender, an expression that raises) commit unpublished and are recorded as skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_writes_never_fail_because_of_pgrelay() {
    let (db, app) = database_with(POSTS).await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    app.batch_execute(
        "INSERT INTO posts (author, audience, kind, body, divisor, amount) VALUES
            ('alice', '{bob,NULL}',                'chat',      'null left out', 1, '1'),
            ('alice', E'{bob,ali\\u200Bce}',       'chat',      'refused left out', 1, '1'),
            ('alice', E'{ali\\u200Bce,\"x\\u2028\"}', 'chat',   'all refused', 1, '1'),
            ('alice', NULL,                        'chat',      'no audience', 1, '1'),
            ('alice', '{bob}',                     'chat',      NULL, 1, '1'),
            ('alice', '{bob}',                     'two words', 'bad kind', 1, '1'),
            ('alice', '{bob}',                     'presence',  'reserved kind', 1, '1'),
            ('alice', '{bob}',                     NULL,        'no kind', 1, '1'),
            (E'bob\\u0007', '{bob}',               'chat',      'bad sender', 1, '1'),
            ('alice', '{bob}',                     'chat',      'division by zero', 0, '1'),
            ('alice', '{bob}',                     'chat',      'failed cast', 1, 'x'),
            ('alice', '{{bob,carol}}',             'chat',      'two dimensions', 1, '1'),
            (NULL,    '{bob}',                     'chat',      'no sender', 1, '1')",
    )
    .await
    .expect("the app's insert must succeed");
    let stored = count(&app, "SELECT count(*) FROM posts").await;
    assert_eq!(stored, 13, "every app row committed");

    let mut delivered = Vec::new();
    for _ in 0..4 {
        let (_, kind, data) = bob.next_message().await;
        assert_eq!(kind, "chat");
        delivered.push((
            data["payload"]["body"].clone(),
            data["participants"].clone(),
        ));
    }
    assert_eq!(
        delivered,
        [
            (json!("null left out"), json!(["bob"])),
            (json!("refused left out"), json!(["bob"])),
            (json!("two dimensions"), json!(["bob", "carol"])),
            (json!("no sender"), json!(["bob"])),
        ]
    );
    assert!(bob.next_within(Duration::from_millis(300)).await.is_none());

    let reasons: Vec<String> = skips(&app)
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "participants_refused",
            "no_participants",
            "payload_null",
            "kind_invalid",
            "kind_invalid",
            "kind_invalid",
            "sender_invalid",
            "expression_failed",
            "expression_failed",
        ]
    );
    let details: Vec<Option<String>> = skips(&app).await.into_iter().map(|(_, d)| d).collect();
    assert!(
        details[7]
            .as_deref()
            .unwrap()
            .starts_with("22012: division by zero"),
        "{details:?}"
    );
    assert!(
        details[8].as_deref().unwrap().starts_with("22P02: "),
        "{details:?}"
    );
}

/// Catching an expression's error costs a subtransaction per row, which must never take a
/// transaction id of its own: more than 64 in one transaction overflow every snapshot's cache
/// and slow the whole cluster. A row written in a subtransaction carries its id as `xmin`, so
/// before the commit (whose id assignment rewrites the outbox rows) every row the transaction
/// wrote must carry one and the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rows_in_one_transaction_take_no_subtransaction_ids() {
    let (_db, app) = database_with(POSTS).await;
    app.batch_execute(
        "BEGIN;
         INSERT INTO posts (author, audience, kind, body, divisor)
              SELECT 'alice', ARRAY['bob', CASE WHEN n % 3 = 0 THEN NULL ELSE 'carol' END],
                     CASE WHEN n % 5 = 0 THEN 'bad kind' ELSE 'chat' END, 'n' || n, n % 7
                FROM generate_series(1, 500) n;",
    )
    .await
    .unwrap();
    let transaction_ids = count(
        &app,
        "SELECT count(DISTINCT xmin::text) FROM (
             SELECT xmin FROM posts UNION ALL SELECT xmin FROM pgrelay.messages
             UNION ALL SELECT xmin FROM pgrelay.attach_skips) written",
    )
    .await;
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(transaction_ids, 1, "only the transaction's own id");
    let published = count(&app, "SELECT count(*) FROM pgrelay.messages").await;
    let skipped = skips(&app).await.len() as i64;
    assert_eq!(published + skipped, 500);
    assert!(
        published > 0 && skipped > 0,
        "{published} published, {skipped} skipped"
    );
}

/// The fleet's count of reported skips: the sum of its instances' counters.
async fn fleet_skips(relays: &[Relay]) -> u64 {
    let mut sum = 0;
    for relay in relays {
        sum += metric(&relay.base, "pgrelay_attach_skips_total").await;
    }
    sum
}

/// Each skip is logged and counted by exactly one relay of a fleet, and marked reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_are_counted_once_per_fleet() {
    let (db, app) = database_with(POSTS).await;
    let mut settings = test_settings();
    settings.heartbeat = Duration::from_millis(100);
    let relays = [
        Relay::start_with(&db, settings.clone()).await,
        Relay::start_with(&db, settings).await,
    ];
    app.batch_execute(
        "INSERT INTO posts (author, audience, kind, body)
              SELECT 'alice', NULL, 'chat', 'n' || n FROM generate_series(1, 30) n",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while fleet_skips(&relays).await < 30 {
        assert!(tokio::time::Instant::now() < deadline, "skips not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet_skips(&relays).await, 30, "each skip counted once");
    let unreported = count(
        &app,
        "SELECT count(*) FROM pgrelay.attach_skips WHERE NOT reported",
    )
    .await;
    assert_eq!(unreported, 0);
}

/// The skips table keeps only the newest skips: it stays small however many rows are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skips_table_stays_small() {
    let (_db, app) = database_with(POSTS).await;
    app.batch_execute(
        "INSERT INTO posts (author, audience, kind, body)
              SELECT 'alice', NULL, 'chat', 'n' || n FROM generate_series(1, 5000) n",
    )
    .await
    .unwrap();
    let (kept, newest): (i64, i64) = app
        .query_one("SELECT count(*), max(id) FROM pgrelay.attach_skips", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(newest, 5000);
    assert!((1000..=1100).contains(&kept), "{kept} skips kept");
}

/// The trigger publishes with the rights of whoever attached the table: a writer needs no
/// grant in schema pgrelay, cannot redirect a message by shadowing a table the expressions read
/// with a temporary one, and cannot put the trigger function on a table of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_need_no_grants_and_cannot_redirect_messages() {
    let (db, app) = database_with(APP_SCHEMA).await;
    app.batch_execute(ATTACH).await.unwrap();
    let role = format!("attached_writer_{}", db.rsplit('/').next().unwrap());
    app.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
         GRANT INSERT ON chat_messages TO {role};
         GRANT USAGE ON SEQUENCE chat_messages_id_seq TO {role};
         GRANT USAGE ON SCHEMA pgrelay TO {role};"
    ))
    .await
    .unwrap();
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    let writer = connect(&db.replacen("postgres@", &format!("{role}@"), 1)).await;
    writer
        .batch_execute(
            "CREATE TEMP TABLE conversation_members (conversation_id bigint, user_name text);
             INSERT INTO conversation_members VALUES (1, 'mallory');
             INSERT INTO chat_messages (conversation_id, sender, body) VALUES (1, 'alice', 'hi')",
        )
        .await
        .expect("a writer of the app table needs nothing in pgrelay");
    let (_, _, data) = bob.next_message().await;
    assert_eq!(data["participants"], json!(["alice", "bob", "carol"]));

    let function: String = app
        .query_one(
            "SELECT pgrelay.attached_function_name('chat_messages'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    writer
        .batch_execute(
            "CREATE TEMP TABLE mine (id bigint, conversation_id bigint, sender text, body text,
                                     message_type text, sent_at timestamptz)",
        )
        .await
        .unwrap();
    let hijack = writer
        .batch_execute(&format!(
            "CREATE TRIGGER steal AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION {function}()"
        ))
        .await
        .expect_err("the trigger function is not the writer's to use");
    assert_eq!(
        hijack.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{hijack}"
    );
    drop(writer);
    drop(bob);
    relay.stop().await;
    app.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

/// A message names at most `pgrelay.max_participants()` addresses (10,000), so no row's
/// participants, which even an oversized message's stand-in carries, can grow without bound:
/// a plain INSERT naming more is refused (SQLSTATE 54000), and an attached table's row that
/// would is skipped, its own insert untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_bounded() {
    let (_db, app) = database_with(POSTS).await;
    let many = "(SELECT array_agg('user' || n) FROM generate_series(1, 10001) n)";
    let refused = app
        .batch_execute(&format!(
            "INSERT INTO pgrelay.messages (participants, payload) VALUES ({many}, '{{}}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "54000", "{refused:?}");
    app.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) \
         VALUES ((SELECT array_agg('user' || n) FROM generate_series(1, 10000) n), '{}')",
    )
    .await
    .expect("10,000 addresses are allowed");

    app.batch_execute(&format!(
        "INSERT INTO posts (author, audience, kind, body) VALUES ('alice', {many}, 'chat', 'hi')"
    ))
    .await
    .expect("the app's own insert commits");
    let reasons: Vec<String> = skips(&app).await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["participants_too_many"]);
}
