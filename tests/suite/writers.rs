//! What a role granted to write can do to everyone else: nothing. Whatever it does inside its
//! own transaction, other commits, the relay's publishes, signals and presence are not held up,
//! and no message is pruned before the retention period has passed since its commit.
//!
//! The writer has exactly the grants docs/security.md gives an application role.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// docs/security.md's grants for an application role that writes messages, sends signals and
/// wants ids back.
const APP_WRITER_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA pgrelay TO {role}",
    "GRANT INSERT ON pgrelay.messages TO {role}",
    "GRANT EXECUTE ON FUNCTION pgrelay.signal(text[], text, jsonb, text), \
     pgrelay.publish(text[], jsonb, text, text), pgrelay.message_id(bigint, interval) TO {role}",
];

/// Settings with presence fast enough to see within a test.
fn quick_presence() -> pgrelay::Settings {
    let mut settings = test_settings();
    settings.presence_debounce = Duration::from_millis(300);
    settings.presence_ttl = Duration::from_secs(2);
    settings
}

/// A writer fires every trigger and function it may inside its transaction (a message, `SET
/// CONSTRAINTS ALL IMMEDIATE`, `pgrelay.signal`, `pgrelay.publish`) and keeps the transaction
/// open. Meanwhile POST /v1/messages, POST /v1/signals, the owner's INSERT, another writer's
/// INSERT and presence all arrive, and the relay stays ready. Only the holder's own message
/// and signal wait for its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_holding_its_transaction_open_delays_no_one() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    // Consent for presence: alice wrote to bob.
    owner
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{alice,bob}', 'alice', '{}')",
        )
        .await
        .unwrap();
    let relay = Relay::start_with(&db, quick_presence()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;

    let holder = Role::create(&db, "holder", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    holder
        .batch_execute(
            "BEGIN; \
             INSERT INTO pgrelay.messages (participants, payload) VALUES ('{bob}', '{\"by\":\"holder\"}'); \
             SET CONSTRAINTS ALL IMMEDIATE; \
             SELECT pgrelay.signal('{bob}', 'typing', '{\"by\":\"holder\"}'); \
             SELECT pgrelay.publish('{bob}', '{\"by\":\"holder publish\"}'); \
             SET CONSTRAINTS ALL IMMEDIATE;",
        )
        .await
        .unwrap();

    let others = async {
        let publisher = relay.token("carol", &["publish"]);
        let posted = post(
            &relay.base,
            "/v1/messages",
            &publisher,
            json!({"participants": ["bob"], "payload": {"by": "POST"}}),
        )
        .await;
        assert_eq!(posted.status(), 201);
        let signalled = post(
            &relay.base,
            "/v1/signals",
            &publisher,
            json!({"participants": ["bob"], "kind": "typing", "payload": {"by": "POST"}}),
        )
        .await;
        assert_eq!(signalled.status(), 202);
        insert(&owner, &["bob"], json!({"by": "owner"})).await;
        let other_writer = Role::create(&db, "other", APP_WRITER_GRANTS)
            .await
            .connect()
            .await;
        insert(&other_writer, &["bob"], json!({"by": "other writer"})).await;
        let _alice = relay.subscribe("alice", "", None).await;

        let mut seen = Vec::new();
        while seen.len() < 5 {
            let event = bob.next().await;
            let data: serde_json::Value =
                serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
            let who = match event.event.as_deref() {
                Some("presence") => format!("presence {}", data["participant"]),
                Some(kind) => format!("{kind} {}", data["payload"]["by"]),
                None => continue,
            };
            seen.push(who);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "message \"POST\"",
                "message \"other writer\"",
                "message \"owner\"",
                "presence \"alice\"",
                "typing \"POST\"",
            ]
        );
        let ready = reqwest::get(format!("{}/readyz", relay.base))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "the relay stays ready");
    };
    // Everything above must happen while the holder's transaction is still open: if any of it
    // waited for that transaction, it would wait forever here.
    tokio::time::timeout(3 * PATIENCE, others)
        .await
        .expect("someone waited for the writer's open transaction");

    holder.batch_execute("COMMIT").await.unwrap();
    let mut own = Vec::new();
    while own.len() < 3 {
        let event = bob.next().await;
        let data: serde_json::Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
        own.push(format!(
            "{} {}",
            event.event.unwrap(),
            data["payload"]["by"]
        ));
    }
    own.sort();
    assert_eq!(
        own,
        [
            "message \"holder publish\"",
            "message \"holder\"",
            "typing \"holder\"",
        ]
    );
}

/// Retention counts from the commit, not from `created_at`, which writers set: 500 fresh
/// messages and then one backdated to 2000 lose nothing to the next prune (the backdated one
/// is fresh too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_row_prunes_nothing_fresh() {
    let db = fresh_database().await;
    let writer = Role::create(&db, "backdater", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    writer
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 500) n; \
             INSERT INTO pgrelay.messages (participants, payload, created_at) \
             VALUES ('{alice}', '{\"n\":\"backdated\"}', '2000-01-01')",
        )
        .await
        .unwrap();
    let owner = connect(&db).await;
    number_pending(&owner).await;
    let week = Duration::from_secs(7 * 24 * 3600);
    let pruned = prune_with_a_relay(&db, week).await;
    assert_eq!(pruned, 0, "fresh messages were pruned");
    assert_eq!(message_count(&owner).await, 501);
}

/// A transaction that stays open longer than the retention period does not make its own
/// messages look old: they are kept for the retention period after it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_is_not_pruned_early() {
    let db = fresh_database().await;
    let writer = Role::create(&db, "slow", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    let retention = Duration::from_secs(2);
    writer
        .batch_execute(
            "BEGIN; INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 100) n",
        )
        .await
        .unwrap();
    tokio::time::sleep(retention + Duration::from_secs(1)).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let owner = connect(&db).await;
    number_pending(&owner).await;
    let pruned = prune_with_a_relay(&db, retention).await;
    assert_eq!(pruned, 0, "messages committed just now were pruned");

    tokio::time::sleep(retention + Duration::from_millis(500)).await;
    let pruned = prune_with_a_relay(&db, retention).await;
    assert_eq!(
        pruned, 100,
        "once the period has passed since the commit, they go"
    );
}

/// A stream that is behind when retention prunes past its position (here: its relay lost the
/// LISTEN connection, so it catches up from its cursor) is told with `reset` before it goes on,
/// and gets every retained message after it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_behind_the_pruned_point_gets_reset() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let owner = connect(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    let opened_at = alice.opening_position().await;

    // Messages the relay is never woken for (no trigger, so no NOTIFY), numbered as a relay
    // would and committed long ago: the stream has not read them.
    owner
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE; \
             INSERT INTO pgrelay.messages (id, participants, payload, committed_at) \
             SELECT nextval('pgrelay.message_id_seq'), '{alice}', jsonb_build_object('n', n), \
                    now() - interval '8 days' \
               FROM generate_series(1, 10) n; \
             COMMIT",
        )
        .await
        .unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(prune_with_a_relay(&db, week).await, 10);

    // The LISTEN session is cut: on reconnecting, every stream catches up from its cursor.
    owner
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'pgrelay-listen' AND datname = current_database()",
        )
        .await
        .unwrap();
    let reset = alice.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert!(reset.id.is_none(), "reset must not move Last-Event-ID");
    let data: serde_json::Value = serde_json::from_str(reset.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["reason"], "history_truncated");

    insert(&owner, &["alice"], json!({"n": "after"})).await;
    let (id, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], "after");
    assert!(id > opened_at + 10);
    assert!(
        alice
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "one reset, no repeats"
    );
}

/// A relay that cannot number (here the order lock is held, as by a peer relay stuck inside
/// its transaction) says so: `/readyz` answers 503 and `pgrelay_numbering_lag_seconds` grows.
/// Once the lock is free, the waiting message is numbered and delivered, and the relay is
/// ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_cannot_number_says_so() {
    let db = fresh_database().await;
    let settings = pgrelay::Settings {
        heartbeat: Duration::from_secs(1),
        ..test_settings()
    };
    let relay = Relay::start_with(&db, settings).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let stuck_peer = hold_the_order_lock(&db).await;
    insert(&connect(&db).await, &["alice"], json!({"n": "waiting"})).await;

    assert!(
        wait_readyz(&relay.base, 503, PATIENCE).await.is_some(),
        "numbering could not progress and /readyz did not say so"
    );
    let answer = reqwest::get(format!("{}/readyz", relay.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains("waited"), "{answer}");
    let lag = try_metric(&relay.base, "pgrelay_numbering_lag_seconds")
        .await
        .unwrap();
    assert!(lag >= 1.0, "lag {lag}");
    assert!(metric(&relay.base, "pgrelay_numbering_failures_total").await > 0);

    stuck_peer.batch_execute("COMMIT").await.unwrap();
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], "waiting");
    assert!(wait_readyz(&relay.base, 200, PATIENCE).await.is_some());
    // Not exactly zero: a heartbeat's pass may be running, and the lag counts from its start.
    let lag = try_metric(&relay.base, "pgrelay_numbering_lag_seconds")
        .await
        .unwrap();
    assert!(lag < 0.5, "lag {lag} after numbering caught up");
}

/// A message committed but not yet numbered keeps its negative placeholder id, which is no
/// position: a stream opened meanwhile starts at 0, a resume from beyond every issued id is
/// told the newest id is 0, and both get the message once it is numbered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_before_the_first_message_is_numbered_starts_at_zero() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let stuck_peer = hold_the_order_lock(&db).await;
    insert(&connect(&db).await, &["alice"], json!({"n": "waiting"})).await;

    let mut live = relay.subscribe("alice", "", None).await;
    assert_eq!(live.opening_position().await, 0);
    let mut resumed = relay.subscribe("alice", "", Some(7)).await;
    resumed.opening_position().await;
    let reset = resumed.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    let data: Value = serde_json::from_str(reset.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["newest_id"], 0, "{data}");

    stuck_peer.batch_execute("COMMIT").await.unwrap();
    for stream in [&mut live, &mut resumed] {
        let (id, _, data) = stream.next_message().await;
        assert_eq!((id, &data["payload"]["n"]), (1, &json!("waiting")));
    }
}

/// A pending row that no longer passes the kind rule when a relay numbers it (the rule was
/// changed while it waited, as 0008 reserved three kinds) is numbered as `message`: one such
/// row must not stop numbering for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_kind_became_reserved_does_not_stop_numbering() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    owner
        .batch_execute(
            "BEGIN; \
             ALTER TABLE pgrelay.messages DROP CONSTRAINT messages_kind_valid; \
             INSERT INTO pgrelay.messages (participants, kind, payload) VALUES ('{alice}', 'rooms', '{}'); \
             ALTER TABLE pgrelay.messages ADD CONSTRAINT messages_kind_valid \
                 CHECK (pgrelay.valid_kind(kind)) NOT VALID; \
             COMMIT",
        )
        .await
        .unwrap();
    insert(&owner, &["alice"], json!({"n": "after"})).await;
    let ids = ids_for(&owner, "alice").await;
    assert_eq!(ids.len(), 2, "both numbered: {ids:?}");
    let kind: String = owner
        .query_one(
            "SELECT kind FROM pgrelay.messages WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "message");
}

/// Inserts `rows` messages in one transaction, each naming 10,000 participants (the most a
/// message may) and with the payload `{"r": "<its number>"}`, from 1.
async fn insert_wide_rows(client: &Client, rows: i32) {
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT ARRAY(SELECT 'v' || g || '-' || r FROM generate_series(1, 10000) g), \
                    jsonb_build_object('r', r::text) \
               FROM generate_series(1, $1) r",
            &[&rows],
        )
        .await
        .unwrap();
}

/// Numbering a row writes each of its names into the participants index again, so a row that
/// names 10,000 participants takes tens of milliseconds to number. A writer commits 100 of them
/// in one transaction, then another writer a message for bob: it arrives. A pass that numbered
/// a page of 10,000 rows, whatever they name, outlasted the relay's patience (two heartbeats,
/// here two seconds), was cut off and rolled back, and so was the next: nothing was numbered
/// again (an outside review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_name_many_participants_do_not_stop_numbering() {
    let db = fresh_database().await;
    let settings = pgrelay::Settings {
        heartbeat: Duration::from_secs(1),
        ..test_settings()
    };
    let relay = Relay::start_with(&db, settings).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let wide = Role::create(&db, "wide", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    insert_wide_rows(&wide, 100).await;
    let other = Role::create(&db, "other", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    insert(&other, &["bob"], json!({"by": "other"})).await;
    let event = bob
        .next_within(3 * PATIENCE)
        .await
        .expect("numbering stopped behind the wide rows");
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["payload"]["by"], "other");
    let pending: i64 = connect(&db)
        .await
        .query_one("SELECT count(*) FROM pgrelay.messages WHERE id < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
}

/// A publish gives its messages ids after every message committed before it, so it numbers
/// those first, under the order lock every pass and publish waits for. It numbered them all:
/// with 90 rows of 10,000 names pending, one publish held the lock for 6 s and the next failed
/// at its 5 s `lock_timeout` (an outside review's finding). It now numbers one page, as a pass
/// does, and with more pending stores nothing and says so; called again, it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_numbers_one_page_of_what_committed_before_it() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    // 120,000 names: a page ends at 50,000.
    insert_wide_rows(&owner, 12).await;
    let publish = "SELECT id, outcome FROM pgrelay.publish_many('[{\"participants\": [\"bob\"], \"payload\": {}}]')";
    let answer: Vec<(Option<i64>, String)> = owner
        .query(publish, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(answer, [(None, "numbering_behind".to_owned())]);
    let pending: i64 = owner
        .query_one("SELECT count(*) FROM pgrelay.messages WHERE id < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        pending > 0 && pending < 12,
        "{pending} of 12 rows left pending"
    );
    let mut calls = 1;
    let id = loop {
        calls += 1;
        let row = owner.query_one(publish, &[]).await.unwrap();
        if let Some(id) = row.get::<_, Option<i64>>(0) {
            assert_eq!(row.get::<_, &str>(1), "published");
            break id;
        }
        assert!(calls < 12, "a page a call");
    };
    assert_eq!(id, 13, "after the 12 committed before it");
}

/// Through HTTP the relay calls again until the publish is stored: `POST /v1/messages` with
/// more pending than a page is answered 201, with an id after all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_behind_many_pending_rows_gets_an_id_after_them() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, no_heartbeat_passes()).await;
    let wide = Role::create(&db, "wide", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    // The relay is woken by this commit, and its passes number pages meanwhile.
    insert_wide_rows(&wide, 12).await;
    let token = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {}});
    let response = post(&relay.base, "/v1/messages", &token, body).await;
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    let highest_before: i64 = connect(&db)
        .await
        .query_one(
            "SELECT max(id) FROM pgrelay.messages WHERE payload ? 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(highest_before, 12, "all numbered first");
    assert_eq!(answer["id"], 13);
}

/// A relay whose pass numbered a page that ended at its names goes on at once: the page's
/// wake-up comes from the relay's own session, and a relay ignores its own `numbered` wake-ups
/// but not this one. Fifteen rows of 10,000 names (three pages), then a message for bob, on a
/// relay whose heartbeat passes are a minute apart: it arrives (an outside review found the
/// relay dropping its own wake-up, each page waiting for the next heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_ends_at_its_names_is_followed_at_once() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, no_heartbeat_passes()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;
    let owner = connect(&db).await;
    insert_wide_rows(&owner, 15).await;
    insert(&owner, &["bob"], json!({"by": "owner"})).await;
    let event = bob
        .next_within(PATIENCE)
        .await
        .expect("the pages after the first waited for a heartbeat");
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["payload"]["by"], "owner");
}

/// A numbering page of 10,000 rows ends before the row that would take it past 50,000 names
/// (five a row), and wakes the relays so that their next pass goes on at once; that pass
/// finishes the transaction the page cut before anything that committed after it. Twelve rows
/// of 10,000 names in one transaction, then a row for bob: `sequence()` numbers five, five,
/// then the last two and bob's, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbering_page_ends_at_its_names_and_wakes_the_relays() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    insert_wide_rows(&owner, 12).await;
    insert(&owner, &["bob"], json!({"r": "bob's"})).await;
    let channel: String = owner
        .query_one("SELECT pgrelay.channel()", &[])
        .await
        .unwrap()
        .get(0);
    let mut pages = Vec::new();
    let heard = eavesdrop(&db, &channel, async {
        loop {
            let numbered: i32 = owner
                .query_one("SELECT pgrelay.sequence()", &[])
                .await
                .unwrap()
                .get(0);
            if numbered == 0 {
                break;
            }
            pages.push(numbered);
        }
    })
    .await;
    assert_eq!(pages, [5, 5, 3]);
    let wake_ups = heard.iter().filter(|payload| payload.is_empty()).count();
    assert_eq!(wake_ups, 2, "{heard:?}");
    let order: Vec<String> = owner
        .query(
            "SELECT payload ->> 'r' FROM pgrelay.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<String> = (1..=12)
        .map(|r| r.to_string())
        .chain(["bob's".to_owned()])
        .collect();
    assert_eq!(order, expected);
}

/// PostgreSQL takes a statement's table locks when it parses it, before it checks privileges,
/// and keeps them until the transaction ends, even when the statement then fails. A writer
/// that prepares a DELETE from the tables whose locks order numbering and presence, and keeps
/// its transaction open, held a lock that every pass and every presence change waits for
/// (an outside review's finding). The order tables now live in a schema writers may not look
/// in, so the writer's statement fails before it locks anything, and numbering and presence
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_lock_the_order_tables_by_naming_them() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    let writer = Role::create(&db, "locker", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    let mut tries = Vec::new();
    for table in ["id_order", "presence_order"] {
        // Wherever the table is, by its qualified name.
        let name: String = owner
            .query_one(
                "SELECT c.oid::regclass::text FROM pg_class c \
                  JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND n.nspname LIKE 'pgrelay%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        writer.batch_execute("BEGIN").await.unwrap();
        let prepared = writer
            .batch_execute(&format!("PREPARE take AS DELETE FROM {name}"))
            .await;
        tries.push(format!("{name}: {:?}", prepared.map_err(|e| e.to_string())));
        owner
            .batch_execute(
                "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{}')",
            )
            .await
            .unwrap();
        let after_the_writer = owner
            .batch_execute(
                "BEGIN; SET LOCAL lock_timeout = '2s'; SELECT pgrelay.sequence(); \
                 SELECT pgrelay.announce_presence('alice', true); COMMIT",
            )
            .await;
        let _ = owner.batch_execute("ROLLBACK").await;
        writer.batch_execute("ROLLBACK").await.unwrap();
        assert!(
            after_the_writer.is_ok(),
            "numbering or presence waited for the writer ({tries:?}): {after_the_writer:?}"
        );
    }
}

/// A relay whose LISTEN connection is gone runs no passes, so its numbering lag stays zero;
/// `pgrelay_listener_lag_seconds` is what says it has stopped delivering. Here the database
/// refuses new connections while the LISTEN session is cut: the lag grows, and returns to zero
/// once the relay listens again and has delivered what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_cannot_listen_reports_its_lag() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    assert_eq!(
        try_metric(&relay.base, "pgrelay_listener_lag_seconds").await,
        Some(0.0)
    );

    let owner = connect(&db).await;
    owner
        .batch_execute(&format!(
            "{}; SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'pgrelay-listen' AND datname = current_database()",
            allow_connections(false)
        ))
        .await
        .unwrap();
    insert(&owner, &["alice"], json!({"n": "missed"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lag = try_metric(&relay.base, "pgrelay_listener_lag_seconds")
        .await
        .unwrap();
    assert!(lag >= 1.0, "lag {lag} while the relay cannot listen");
    assert_eq!(
        try_metric(&relay.base, "pgrelay_numbering_lag_seconds").await,
        Some(0.0),
        "no pass ran, so numbering cannot tell"
    );

    owner.batch_execute(&allow_connections(true)).await.unwrap();
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["n"], "missed");
    // The pass that delivered it marks the relay caught up just after handing it over.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while try_metric(&relay.base, "pgrelay_listener_lag_seconds").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener lag stayed above zero after delivering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQL that lets (or stops) new sessions connect to the current database, superusers too.
/// `ALTER DATABASE` refuses to do it from inside the database, so the catalog is set directly.
fn allow_connections(allow: bool) -> String {
    format!("UPDATE pg_database SET datallowconn = {allow} WHERE datname = current_database()")
}

/// A writer keeps 20,000 messages and 20,000 signals pending in an open transaction while
/// another writer commits a message: a numbering pass numbers that one without stepping over
/// the others. It used to scan every pending row and visit each of the open transaction's
/// 40,000, so every pass and every publish slowed in proportion (52 ms a pass with 300,000
/// held: an outside review's finding). The count is PostgreSQL's own (index entries the pass's
/// scans of the two tables returned), not a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holding_many_pending_rows_does_not_slow_numbering() {
    let db = fresh_database().await;
    let holder = Role::create(&db, "holder", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    holder
        .batch_execute(
            "BEGIN; \
             INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{w}', '{}' FROM generate_series(1, 20000); \
             SELECT pgrelay.signal('{w}', 'typing') FROM generate_series(1, 20000);",
        )
        .await
        .unwrap();
    let other = Role::create(&db, "other", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    insert(&other, &["bob"], json!({"by": "other"})).await;

    let owner = connect(&db).await;
    // A session's first pass ends by looking at every pending row, for rows copied in with
    // the triggers off (0032), as one pass a minute then does.
    owner
        .batch_execute("SELECT pgrelay.sequence()")
        .await
        .unwrap();
    insert(&other, &["bob"], json!({"by": "other", "n": 2})).await;
    let (numbered, entries) = pass_counting_entries(&owner).await;
    assert_eq!(numbered, 1, "the other writer's second message");
    assert!(
        entries < 1000,
        "the pass stepped over {entries} index entries for one message beside 40,000 pending \
         rows held open"
    );
    // Skipped while open, numbered once committed.
    holder.batch_execute("COMMIT").await.unwrap();
    let numbered: i32 = owner
        .query_one("SELECT pgrelay.sequence(100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(numbered, 40_000);
}

/// A login with no grant at all holds a snapshot (`REPEATABLE READ`, one query, and stays
/// open) while 20,000 messages are written and numbered: the versions numbering left behind
/// cannot be removed while that snapshot might need them, and a pass used to step over all of
/// them to find one new message (17 ms against 0.8 ms after 100,000: an outside review's
/// finding). A pass now starts where the last complete one left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_snapshot_does_not_slow_numbering() {
    let db = fresh_database().await;
    let stranger = Role::create(&db, "stranger", &[]).await.connect().await;
    stranger
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;")
        .await
        .unwrap();
    let owner = connect(&db).await;
    for _ in 0..20 {
        owner
            .batch_execute(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 SELECT '{w}', '{}' FROM generate_series(1, 1000)",
            )
            .await
            .unwrap();
        owner
            .batch_execute("SELECT pgrelay.sequence()")
            .await
            .unwrap();
    }
    insert(&owner, &["bob"], json!({"by": "owner"})).await;
    let (numbered, entries) = pass_counting_entries(&owner).await;
    stranger.batch_execute("COMMIT").await.unwrap();
    assert_eq!(numbered, 1);
    assert!(
        entries < 1000,
        "the pass stepped over {entries} index entries for one message after 20,000 numbered \
         under a held snapshot"
    );
}

/// Once a minute a pass looks at every pending row for rows copied in with the triggers off
/// (0032), the open transactions' included. It looks after its own work, so a pass that fails
/// at the order lock's timeout (as a relay's does while a peer holds the lock, and retries)
/// does not pay for the look: here a due pass fails, in a savepoint, beside 20,000 rows held
/// open, and steps over few entries. The first version looked first, so every failed retry
/// looked again (an outside review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_fails_at_the_order_lock_does_not_look_for_strays() {
    let db = fresh_database().await;
    let _holder = hold_pending_messages(&db, 20_000).await;
    insert(&connect(&db).await, &["bob"], json!({"n": 1})).await;
    let stuck_peer = hold_the_order_lock(&db).await;
    let relay = connect(&db).await;
    relay
        .batch_execute(
            "SET pgrelay.stray_check_interval = '0s'; SET lock_timeout = '200ms'; BEGIN; \
             SAVEPOINT pass",
        )
        .await
        .unwrap();
    let before = index_entries_read(&relay).await;
    let failed = relay.batch_execute("SELECT pgrelay.sequence()").await;
    assert!(failed.is_err(), "the pass got the lock a peer holds");
    relay
        .batch_execute("ROLLBACK TO SAVEPOINT pass")
        .await
        .unwrap();
    let entries = index_entries_read(&relay).await - before;
    relay.batch_execute("COMMIT").await.unwrap();
    stuck_peer.batch_execute("COMMIT").await.unwrap();
    assert!(
        entries < 1000,
        "the failed pass stepped over {entries} index entries: it looked for strays"
    );
}

/// A pass that has numbered holds the order lock, and a look for strays would read every
/// pending row under it (2.9 s behind 600,000 dead entries, in an outside review). Such a pass
/// looks only once its look is a minute overdue; one that takes no lock looks when it is due.
/// Here the look is due (every pass's, by the interval), and a pass that numbers one message
/// beside 20,000 rows held open steps over few entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_numbers_leaves_the_look_for_strays_to_one_that_does_not() {
    let db = fresh_database().await;
    let _holder = hold_pending_messages(&db, 20_000).await;
    let relay = connect(&db).await;
    relay
        .batch_execute("SET pgrelay.stray_check_interval = '0s'; SELECT pgrelay.sequence()")
        .await
        .unwrap();
    insert(&connect(&db).await, &["bob"], json!({"n": 1})).await;
    let (numbered, entries) = pass_counting_entries(&relay).await;
    assert_eq!(numbered, 1);
    assert!(
        entries < 1000,
        "the numbering pass stepped over {entries} index entries: it looked for strays"
    );
}

/// A pass remembers, per session, the snapshot of its last pass that left nothing pending,
/// and later passes skip every transaction it saw ended. A pass run inside a transaction that
/// has already written (the owner's, here) sees its own transaction as ended once a later one
/// has committed; it must remember it as still open, or the rows that transaction inserts
/// after the pass would never be numbered (an outside review's reading of 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_transaction_inserts_after_its_own_pass_are_numbered() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    owner.batch_execute("BEGIN").await.unwrap();
    insert(&owner, &["alice"], json!({"n": 1})).await;
    // A transaction that began after the owner's commits first.
    insert(&connect(&db).await, &["bob"], json!({"n": 2})).await;
    owner
        .batch_execute("SELECT pgrelay.sequence()")
        .await
        .unwrap();
    insert(&owner, &["alice"], json!({"n": 3})).await;
    owner.batch_execute("COMMIT").await.unwrap();
    owner
        .batch_execute("SELECT pgrelay.sequence()")
        .await
        .unwrap();
    let pending: i64 = owner
        .query_one("SELECT count(*) FROM pgrelay.messages WHERE id < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "the row inserted after the pass stayed pending");
}

/// A pass looks for pending rows, waits for the order lock, and looks again: what committed
/// while it waited is numbered too. A pass that found only a signal pending at its first look,
/// while a message committed during its wait, must not remember the second look as done with
/// that message: the same session's next pass must number it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_while_a_pass_waits_for_the_lock_is_numbered() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    owner
        .batch_execute("SELECT pgrelay.signal('{bob}', 'typing')")
        .await
        .unwrap();
    let holder = connect(&db).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let pass = tokio::spawn(async move {
        owner
            .batch_execute("SELECT pgrelay.sequence()")
            .await
            .unwrap();
        owner
    });
    // The pass has looked and waits for the lock.
    let waiting = connect(&db).await;
    for _ in 0..100 {
        let waits: i64 = waiting
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                  WHERE wait_event_type = 'Lock' AND query LIKE '%sequence%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waits > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert(&waiting, &["bob"], json!({"during": "the wait"})).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let owner = pass.await.unwrap();
    owner
        .batch_execute("SELECT pgrelay.sequence()")
        .await
        .unwrap();
    let pending: i64 = owner
        .query_one("SELECT count(*) FROM pgrelay.messages WHERE id < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pending, 0,
        "the message committed during the wait stayed pending"
    );
}

/// A writer with docs/security.md's grants that inserts `count` messages and keeps its
/// transaction open; the rows stay pending while the returned session lives.
async fn hold_pending_messages(db: &str, count: i32) -> Client {
    let holder = Role::create(db, "holder", APP_WRITER_GRANTS)
        .await
        .connect()
        .await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{w}', '{}' FROM generate_series(1, $1)",
            &[&count],
        )
        .await
        .unwrap();
    holder
}

/// One `pgrelay.sequence()` in a transaction of its own: how many rows it numbered, and how
/// many index entries its scans stepped over ([`index_entries_read`]).
async fn pass_counting_entries(client: &Client) -> (i32, i64) {
    client.batch_execute("BEGIN").await.unwrap();
    let before = index_entries_read(client).await;
    let numbered: i32 = client
        .query_one("SELECT pgrelay.sequence()", &[])
        .await
        .unwrap()
        .get(0);
    let entries = index_entries_read(client).await - before;
    client.batch_execute("COMMIT").await.unwrap();
    (numbered, entries)
}

/// Index entries this session's scans of the messages and signals tables have returned,
/// visible or not, since its counts were last reported: PostgreSQL's count of what a scan
/// stepped over. Two readings in one transaction bracket what ran between them (counts are
/// reported only between transactions).
async fn index_entries_read(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid))::bigint FROM pg_index \
              WHERE indrelid IN ('pgrelay.messages'::regclass, 'pgrelay.signals'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
