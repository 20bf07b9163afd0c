//! Reconnect storms: many streams resuming on one instance at once share their reads of the
//! log (one query serves many cursors, the relay routes the rows in memory), and each still
//! receives exactly its own messages, once, in order, with its rooms' changes at their
//! positions; a stream far behind still reads its own sparse history, and a revoked
//! participant's resuming stream is refused.
//!
//! These tests run on a cluster of their own with `pg_stat_statements` loaded, so the
//! catch-up queries are counted where they run, in PostgreSQL, and not only by the relay.

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use pgrelay_cluster::TempCluster;
use serde_json::json;
use tokio_postgres::Client;

/// Streams resuming at once in [`resuming_streams_share_their_catch_up_reads`].
const STREAMS: usize = 200;

/// A cluster with `pg_stat_statements` loaded, and a migrated database in it with the
/// extension created.
async fn counted_cluster() -> (TempCluster, String) {
    let (cluster, db) = cluster_with(&[("shared_preload_libraries", "pg_stat_statements")]).await;
    connect(&db)
        .await
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    (cluster, db)
}

/// Catch-up reads PostgreSQL ran since the last reset: every catch-up statement (a stream's
/// own page or a shared read) reads the retention bound in the same snapshot.
async fn catch_up_statements(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
              WHERE query LIKE '%pgrelay.retention r%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Statements run since the last reset that read an opening's access (`member_rooms`) and
/// its position check (the retention bounds, which read the id sequence).
async fn opening_statements(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls) FILTER (WHERE query LIKE '%member_rooms%'), 0)::int8, \
                    coalesce(sum(calls) FILTER (WHERE query LIKE '%message_id_seq%'), 0)::int8 \
               FROM pg_stat_statements",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `app.members (member, room)` backs `pgrelay.member_rooms`; participant `u{i}` is in room
/// `#r{i % 10}`.
async fn membership(client: &Client) {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.members (member text, room text, PRIMARY KEY (member, room));
             INSERT INTO app.members
                  SELECT 'u' || i, '#r' || (i % 10) FROM generate_series(0, {}) AS i;
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg(room ORDER BY room), '{{}}') FROM app.members
                  WHERE member = participant $$;",
            STREAMS - 1
        ))
        .await
        .unwrap();
}

/// The ids of the messages (not control rows) addressed to one of `addresses` with an id in
/// `(after, until]`.
async fn ids_between(client: &Client, addresses: &[String], after: i64, until: i64) -> Vec<i64> {
    client
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants && $1 AND NOT control \
              AND id > $2 AND id <= $3 ORDER BY id",
            &[&addresses, &after, &until],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The ids of every message event `stream` sends up to and including `last`, and the
/// (id, data) of every `rooms` event on the way.
async fn read_through(stream: &mut Subscriber, last: i64) -> (Vec<i64>, Vec<(i64, String)>) {
    let (mut ids, mut rooms) = (Vec::new(), Vec::new());
    loop {
        let event = stream.next().await;
        if event.is_opening() {
            continue;
        }
        let id: i64 = event
            .id
            .as_deref()
            .expect("an event with an id")
            .parse()
            .unwrap();
        if event.event.as_deref() == Some("rooms") {
            rooms.push((id, event.data.unwrap_or_default()));
            continue;
        }
        assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
        ids.push(id);
        if id >= last {
            return (ids, rooms);
        }
    }
}

/// 200 streams resuming at once from recent cursors share their catch-up queries, counted by
/// the relay and by PostgreSQL (and their openings share access reads and position checks),
/// and each receives exactly its own messages (its participant, its room, broadcasts), once,
/// in order; a membership change inside the range they share is read by the access of now (the
/// rooms of a resuming stream are those it has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_streams_share_their_catch_up_reads() {
    let (_cluster, db) = counted_cluster().await;
    let client = connect(&db).await;
    membership(&client).await;
    let relay = Relay::start(&db).await;
    insert(&client, &["u0"], json!({"before": true})).await;
    let cursor = *ids_for(&client, "u0").await.last().unwrap();
    // After the cursor: one message to each participant, one to each room, one to a pair,
    // broadcasts; and u7 moves from #r7 to #x in the middle of it.
    for i in 0..STREAMS {
        let pair = format!("u{}", (i + 1) % STREAMS);
        insert(&client, &[&format!("u{i}"), &pair], json!({"to": i})).await;
    }
    for room in 0..10 {
        insert(&client, &[&format!("#r{room}")], json!({"room": room})).await;
    }
    insert(&client, &["*"], json!({"everyone": 1})).await;
    insert(&client, &["#x"], json!({"x": "before"})).await;
    client
        .batch_execute(
            "UPDATE app.members SET room = '#x' WHERE member = 'u7';
             SELECT pgrelay.rooms_changed('u7');",
        )
        .await
        .unwrap();
    for room in ["#r7", "#x"] {
        insert(&client, &[room], json!({"after": room})).await;
    }
    insert(&client, &["*"], json!({"everyone": 2})).await;
    number_pending(&client).await;
    let last = *ids_for(&client, "*").await.last().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = metric(&relay.base, "pgrelay_catch_up_queries_total").await;
    client
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .unwrap();
    let mut streams = join_all((0..STREAMS).map(|i| {
        let token = relay.token(&format!("u{i}"), &[]);
        let base = relay.base.clone();
        async move { Subscriber::open(&base, &token, "", Some(cursor)).await }
    }))
    .await;
    let received = join_all(streams.iter_mut().map(|s| read_through(s, last))).await;
    let relay_queries = metric(&relay.base, "pgrelay_catch_up_queries_total").await - before;
    let database_queries = catch_up_statements(&client).await;
    let (access_reads, position_checks) = opening_statements(&client).await;

    // How many share one read depends on how closely they arrive: 2 to 8 queries on a quiet
    // machine, 7 to 11 beside three busy cores' worth of load, 20 beside another test suite.
    // Reading alone, they would run at least 200. A quarter leaves room for a loaded machine;
    // issue 23's one query per 10 streams is the storm benchmark's to measure (BENCHMARKS.md,
    // "Reconnect storms": 0.002 to 0.003 per stream).
    assert!(
        relay_queries < (STREAMS / 4) as u64,
        "{STREAMS} resuming streams ran {relay_queries} catch-up queries (relay's count)"
    );
    assert!(
        database_queries < (STREAMS / 4) as i64,
        "{STREAMS} resuming streams ran {database_queries} catch-up queries (pg_stat_statements)"
    );
    // Openings share statements the same way.
    assert!(
        access_reads < (STREAMS / 4) as i64 && position_checks < (STREAMS / 4) as i64,
        "{STREAMS} openings read their access in {access_reads} statements and checked their \
         positions in {position_checks}"
    );
    for (i, (ids, rooms)) in received.iter().enumerate() {
        let me = format!("u{i}");
        // Resuming reads by the access of now: u7's history is #x's, from before it joined
        // too, and none of #r7's.
        let room = if i == 7 {
            "#x".to_owned()
        } else {
            format!("#r{}", i % 10)
        };
        let expected = ids_between(&client, &[me.clone(), room, "*".into()], cursor, last).await;
        assert!(rooms.is_empty(), "{me} got {rooms:?}");
        assert_eq!(ids, &expected, "{me}: its own messages, once, in order");
    }
}

/// A stream whose cursor is far behind the newest message reads its own sparse history (the
/// per-stream indexed query), also while recent streams share a read, and gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_far_behind_gets_its_sparse_history() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    insert(&client, &["old"], json!({"n": 0})).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{noise}', jsonb_build_object('n', n) FROM generate_series(1, 30000) n",
        )
        .await
        .unwrap();
    insert(&client, &["old"], json!({"n": 1})).await;
    insert(&client, &["recent"], json!({"n": 2})).await;
    let old = ids_for(&client, "old").await;
    let recent = ids_for(&client, "recent").await;
    let mut far = relay.subscribe("old", "", Some(0)).await;
    let mut near = relay.subscribe("recent", "", Some(recent[0] - 1)).await;
    for id in &old {
        assert_eq!(far.next_message().await.0, *id);
    }
    assert_eq!(near.next_message().await.0, recent[0]);
}

/// A revoked participant resuming in a storm is refused (401 `token_revoked`), and the
/// others resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_participant_is_refused_in_a_storm() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    let tokens: Vec<(String, String)> = (0..20)
        .map(|i| (format!("p{i}"), relay.token(&format!("p{i}"), &[])))
        .collect();
    for (sub, _) in &tokens {
        insert(&client, &[sub], json!({"to": sub})).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .batch_execute("SELECT pgrelay.revoke_tokens('p13')")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let answers = join_all(tokens.iter().map(|(_, token)| {
        http.get(format!("{}/v1/stream?token={token}", relay.base))
            .header("Last-Event-ID", "0")
            .send()
    }))
    .await;
    for ((sub, _), answer) in tokens.iter().zip(answers) {
        let answer = answer.unwrap();
        if sub == "p13" {
            assert_json_error(answer, 401, "token_revoked", "p13 resuming").await;
        } else {
            assert_eq!(answer.status(), 200, "{sub}");
        }
    }
}

/// Every open stream catching up at once after the listener's reconnect is served by shared
/// reads, each stream exactly its own messages, and a membership change read in them applies at
/// its position: `u7` leaves `#r7` for `#x` and gets `event: rooms` there, `#r7`'s messages
/// before it and `#x`'s after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_reconnect_storm_applies_changes_at_their_positions() {
    const LIVE: usize = 30;
    let db = fresh_database().await;
    let client = connect(&db).await;
    membership(&client).await;
    let relay = Relay::start(&db).await;
    let mut streams = Vec::new();
    let mut opened = Vec::new();
    for i in 0..LIVE {
        let mut stream = relay.subscribe(&format!("u{i}"), "", None).await;
        opened.push(stream.opening_position().await);
        streams.push(stream);
    }
    let shared_before = metric(&relay.base, "pgrelay_shared_catch_up_reads_total").await;
    // The listener goes away; what commits next is read by the streams' catch-ups once it is
    // back (or, committed after its LISTEN, routed live too, and dropped as already sent).
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'pgrelay-listen'",
            &[],
        )
        .await
        .unwrap();
    for i in 0..LIVE {
        insert(&client, &[&format!("u{i}")], json!({"to": i})).await;
    }
    insert(&client, &["#r7"], json!({"r7": "before"})).await;
    client
        .batch_execute(
            "UPDATE app.members SET room = '#x' WHERE member = 'u7';
             SELECT pgrelay.rooms_changed('u7');",
        )
        .await
        .unwrap();
    insert(&client, &["#r7"], json!({"r7": "after"})).await;
    insert(&client, &["#x"], json!({"x": "after"})).await;
    insert(&client, &["*"], json!({"everyone": "last"})).await;
    number_pending(&client).await;
    let last = *ids_for(&client, "*").await.last().unwrap();
    let change: i64 = client
        .query_one(
            "SELECT max(id) FROM pgrelay.messages WHERE control AND participants[1] = 'u7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    for (i, stream) in streams.iter_mut().enumerate() {
        let me = format!("u{i}");
        let (ids, rooms) = read_through(stream, last).await;
        let expected = if i == 7 {
            assert_eq!(rooms.len(), 1, "u7 gets one rooms event: {rooms:?}");
            assert_eq!(rooms[0].0, change, "at the change's position");
            assert_eq!(rooms[0].1, r##"{"added":["#x"],"removed":["#r7"]}"##);
            let r7 = [me.clone(), "#r7".into(), "*".into()];
            let x = [me.clone(), "#x".into(), "*".into()];
            let mut ids = ids_between(&client, &r7, opened[i], change).await;
            ids.extend(ids_between(&client, &x, change, last).await);
            ids
        } else {
            assert!(rooms.is_empty(), "{me} got {rooms:?}");
            let mine = [me.clone(), format!("#r{}", i % 10), "*".into()];
            ids_between(&client, &mine, opened[i], last).await
        };
        assert_eq!(ids, expected, "{me}: its own messages, once, in order");
    }
    assert!(
        metric(&relay.base, "pgrelay_shared_catch_up_reads_total").await > shared_before,
        "the reconnect's catch-ups went through shared reads"
    );
}

/// One participant whose `member_rooms` fails (an app function that raises) is answered 503
/// when its stream opens among many at once; the others' openings, read in the same gathered
/// statement, still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_member_rooms_fails_only_its_own_opening() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE plpgsql STABLE AS $$
             BEGIN
                 IF participant = 'broken' THEN
                     RAISE EXCEPTION 'member_rooms is broken for this one';
                 END IF;
                 RETURN '{}';
             END $$;",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let subs: Vec<String> = (0..40)
        .map(|i| {
            if i == 17 {
                "broken".into()
            } else {
                format!("p{i}")
            }
        })
        .collect();
    let http = reqwest::Client::new();
    let answers = join_all(subs.iter().map(|sub| {
        let token = relay.token(sub, &[]);
        http.get(format!("{}/v1/stream?token={token}", relay.base))
            .header("Last-Event-ID", "0")
            .send()
    }))
    .await;
    for (sub, answer) in subs.iter().zip(answers) {
        let answer = answer.unwrap();
        if sub == "broken" {
            assert_json_error(answer, 503, "unavailable", "the broken member_rooms").await;
        } else {
            assert_eq!(answer.status(), 200, "{sub}");
        }
    }
}

/// A stream near the head of the log is not held behind a shared tail that a stream far
/// behind started: the tail grows a page a round, and the recent stream reads its own page
/// instead of waiting for the tail to crawl up to it. Bob resumes from the start over 600
/// rows of 60 KB (a page of the tail holds about 17); carol resumes one message behind the
/// head, and has it while bob still has most of his to go. (Before, carol waited until bob's
/// tail had read nearly everything; found by an outside review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_stream_does_not_wait_for_a_tail_far_behind() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             SELECT '{bob}', 'bob', jsonb_build_object('n', g, 'blob', repeat('x', 60000)) \
               FROM generate_series(1, 600) g",
        )
        .await
        .unwrap();
    insert(&client, &["carol"], json!({"for": "carol"})).await;
    let carol_ids = ids_for(&client, "carol").await;
    let relay = Relay::start(&db).await;

    let mut bob = relay.subscribe("bob", "", Some(0)).await;
    let bob_received = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&bob_received);
    let bob_reader = tokio::spawn(async move {
        while let Some(event) = bob.next_within(Duration::from_secs(20)).await {
            if event.data.is_some() && !event.is_opening() {
                counting.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut carol = relay.subscribe("carol", "", Some(carol_ids[0] - 1)).await;
    let (id, _, _) = carol.next_message().await;
    let bob_then = bob_received.load(Ordering::Relaxed);
    bob_reader.abort();
    assert_eq!(id, carol_ids[0]);
    assert!(
        bob_then < 300,
        "carol waited until bob had {bob_then} of his 600 messages"
    );
}

/// A stalled client's part of a shared read holds no more of the page budget than a page of
/// its own would. A share used to hold every page of the tail it spanned, whoever their rows
/// were for, until its last frame was written: one client that stopped reading kept up to the
/// tail's half of the budget after the tail had let go, for as long as the write timeout, and
/// two such clients could hold all of it, leaving every catch-up and history read of the
/// instance waiting (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_holds_no_more_budget_than_its_own_page() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::launch(RelayOptions {
        settings: pgrelay::Settings {
            catch_up_budget: 64 << 20,
            ..test_settings()
        },
        limits: pgrelay::ConnectionLimits {
            write_timeout: Duration::from_secs(60),
            ..test_limits()
        },
        ..RelayOptions::new(&db)
    })
    .await;
    insert(&client, &["bob"], json!({"start": true})).await;
    let cursor = *ids_for(&client, "bob").await.last().unwrap();
    let big = |who: &str, rows: i32| {
        format!(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{{{who}}}', jsonb_build_object('n', g, 'blob', repeat('x', 40000)) \
               FROM generate_series(1, {rows}) g"
        )
    };
    // Enough of mallory's rows to fill his socket, eight pages of the tail of bob's, and as
    // many of mallory's after them: with rows of his on both sides, his share of the tail and
    // the one after it can both be ready while his socket is full.
    client.batch_execute(&big("mallory", 100)).await.unwrap();
    client.batch_execute(&big("bob", 200)).await.unwrap();
    client.batch_execute(&big("mallory", 100)).await.unwrap();
    let last_bob = *ids_for(&client, "bob").await.last().unwrap();

    // Bob resumes first, and his rounds read the tail a page at a time; mallory resumes from
    // the same cursor while the tail is kept, and stops reading.
    let mut bob = relay.subscribe("bob", "", Some(cursor)).await;
    while bob.next_message().await.0 < last_bob {}
    let mallory = stalled_stream_from(&relay, "mallory", Some(cursor)).await;
    // The tail lets go of its pages once no request has come for a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = metric(&relay.base, "pgrelay_catch_up_reserved_bytes").await;
    drop(mallory);

    // A page of a stream's own reserves at most 4.5 MiB here (1,000 rows, 1 MiB and one
    // message of 1 MiB, twice); mallory's one share of the tail holds 6.5 MB of it. The tail's
    // pages of bob's rows held about 16 MiB, and two shares at once 13 MB.
    assert!(
        held < 8 << 20,
        "a stalled stream holds {held} bytes of the page budget"
    );
}
