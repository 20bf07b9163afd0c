//! Presence: online while any stream is open on any instance, announced to the audience.

use std::time::{Duration, Instant};

use crate::common::*;
use pgrelay::sse::SseEvent;
use serde_json::{json, Value};

/// Settings with presence fast enough to test: short debounce and TTL.
fn quick_presence() -> pgrelay::Settings {
    let mut settings = test_settings();
    settings.presence_debounce = Duration::from_millis(300);
    settings.presence_ttl = Duration::from_secs(2);
    settings
}

const QUICK_FLAGS: &[&str] = &["--presence-debounce", "300ms", "--presence-ttl", "2s"];

/// The next `presence` event's data, skipping other events.
async fn next_presence(stream: &mut Subscriber, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event: SseEvent = stream.next_within(left).await?;
        if event.event.as_deref() == Some("presence") {
            assert!(event.id.is_none(), "presence must not move Last-Event-ID");
            return Some(serde_json::from_str(&event.data.unwrap()).unwrap());
        }
    }
}

/// `GET /v1/presence?participants=…`: the status and the JSON answer.
async fn get_presence(base: &str, token: &str, participants: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/presence?participants={participants}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    status_and_json(response).await
}

/// alice coming online and going offline reaches bob, who shares a message with her; the
/// presence API agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_offline_reach_the_audience() {
    let db = fresh_database().await;
    insert(&connect(&db).await, &["alice", "bob"], json!({"hi": 1})).await;
    let relay = Relay::start_with(&db, quick_presence()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;

    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let online = next_presence(&mut bob, PATIENCE)
        .await
        .expect("no online event");
    assert_eq!(online["participant"], "alice");
    assert_eq!(online["online"], true);
    assert!(online["at"].as_str().unwrap().ends_with('Z'));

    let bob_token = relay.token("bob", &[]);
    let (status, answer) = get_presence(&relay.base, &bob_token, "alice,bob").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["presence"]["alice"]["online"], true);
    assert!(answer["presence"]["alice"]["since"].is_string());
    assert_eq!(answer["presence"]["bob"]["online"], true);

    drop(alice);
    let offline = next_presence(&mut bob, PATIENCE)
        .await
        .expect("no offline event");
    assert_eq!(
        offline,
        json!({"participant": "alice", "online": false, "at": offline["at"]})
    );
    let (_, answer) = get_presence(&relay.base, &bob_token, "alice").await;
    assert_eq!(answer["presence"]["alice"]["online"], false);
    assert!(answer["presence"]["alice"]["last_seen"].is_string());
}

/// Tab reloads inside the debounce period announce nothing beyond the first online and the
/// final offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_is_absorbed() {
    let db = fresh_database().await;
    insert(&connect(&db).await, &["alice", "bob"], json!({})).await;
    // A debounce well above the reload gap, even on a loaded machine.
    let mut settings = quick_presence();
    settings.presence_debounce = Duration::from_millis(1500);
    let relay = Relay::start_with(&db, settings).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Ten reloads: each closes the stream, and a new one opens 100 ms later.
    for _ in 0..10 {
        drop(alice);
        tokio::time::sleep(Duration::from_millis(100)).await;
        alice = relay.subscribe("alice", "", None).await;
        alice.opening_position().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alice);
    let mut seen = Vec::new();
    while let Some(change) = next_presence(&mut bob, Duration::from_secs(3)).await {
        seen.push(change["online"].clone());
    }
    assert_eq!(seen, [json!(true), json!(false)], "one online, one offline");
}

/// Presence queries answer 403 for participants outside the caller's audience, and the
/// application's own `presence_audience` decides who that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_audience_is_honoured() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    insert(&client, &["alice", "bob"], json!({})).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgrelay.presence_audience(participant text) RETURNS text[]
                 LANGUAGE sql STABLE AS $$ SELECT CASE WHEN participant = 'alice' THEN '{carol}'::text[] ELSE '{}' END $$",
        )
        .await
        .unwrap();
    let relay = Relay::start_with(&db, quick_presence()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    let mut carol = relay.subscribe("carol", "", None).await;
    bob.keep_presence = true;
    carol.keep_presence = true;
    bob.opening_position().await;
    carol.opening_position().await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;

    let change = next_presence(&mut carol, PATIENCE)
        .await
        .expect("carol is the audience");
    assert_eq!(change["participant"], "alice");
    assert!(
        next_presence(&mut bob, Duration::from_millis(800))
            .await
            .is_none(),
        "bob is not"
    );

    let (status, answer) = get_presence(&relay.base, &relay.token("bob", &[]), "alice").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "not_in_audience");
    let (status, _) = get_presence(&relay.base, &relay.token("carol", &[]), "alice").await;
    assert_eq!(status, 200);
    let (status, _) = get_presence(&relay.base, &relay.token("bob", &[]), "bob").await;
    assert_eq!(status, 200, "everyone may see themselves");
    let (status, _) = get_presence(&relay.base, &relay.token("carol", &[]), "alice,bob").await;
    assert_eq!(
        status, 403,
        "one hidden participant refuses the whole query"
    );
    for bad in ["", "a,,b", &"x,".repeat(101)] {
        let (status, answer) = get_presence(&relay.base, &relay.token("bob", &[]), bad).await;
        assert_eq!(status, 422, "{bad:?}: {answer}");
    }
    let (status, _) = get_presence(&relay.base, "garbage", "bob").await;
    assert_eq!(status, 401);
}

/// Across three instances: a participant online on two stays online when one is SIGKILLed;
/// one online only on the killed instance goes offline once its rows expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_instances_survives_sigkill() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    insert(&client, &["alice", "bob", "dave"], json!({})).await;
    let a = RelayProcess::start(&db, QUICK_FLAGS, None).await;
    let b = RelayProcess::start(&db, QUICK_FLAGS, None).await;
    let c = RelayProcess::start(&db, QUICK_FLAGS, None).await;
    let mut bob = b.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;

    let mut alice_on_a = a.subscribe("alice", "", None).await;
    alice_on_a.opening_position().await;
    let mut alice_on_c = c.subscribe("alice", "", None).await;
    alice_on_c.opening_position().await;
    let mut dave_on_a = a.subscribe("dave", "", None).await;
    dave_on_a.opening_position().await;
    let mut online = Vec::new();
    for _ in 0..2 {
        let change = next_presence(&mut bob, PATIENCE)
            .await
            .expect("online events");
        assert_eq!(change["online"], true);
        online.push(change["participant"].as_str().unwrap().to_owned());
    }
    online.sort();
    assert_eq!(online, ["alice", "dave"]);

    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    let change = next_presence(&mut bob, Duration::from_secs(10))
        .await
        .expect("dave goes offline");
    eprintln!(
        "offline propagated {:?} after SIGKILL (TTL 2 s)",
        killed.elapsed()
    );
    assert_eq!(
        change,
        json!({"participant": "dave", "online": false, "at": change["at"]})
    );
    // alice is still online through instance C: no event for her.
    assert!(next_presence(&mut bob, Duration::from_secs(3))
        .await
        .is_none());
    let (_, answer) = get_presence(&b.base, &b.token("bob", &[]), "alice,dave").await;
    assert_eq!(answer["presence"]["alice"]["online"], true);
    assert_eq!(answer["presence"]["dave"]["online"], false);
    drop(alice_on_a);
    drop(dave_on_a);
}

/// Who receives a participant's changes and who may `GET` them are one rule: alice once wrote
/// to `#general`, so her audience is `{#general}`, and bob, a member of `#general` by his
/// token, receives her `presence` events on his stream; `GET /v1/presence` answered him 403
/// `not_in_audience`, reading only his own name in her audience (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_in_the_audience_lets_its_members_get_presence() {
    let db = fresh_database().await;
    connect(&db)
        .await
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{#general,alice}', 'alice', '{}')",
        )
        .await
        .unwrap();
    let relay = Relay::start_with(&db, quick_presence()).await;
    let bob_token =
        relay
            .keys
            .mint_with_rooms("bob", Duration::from_secs(3600), &[], &["#general"]);
    let mut bob = Subscriber::open(&relay.base, &bob_token, "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;

    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let streamed = next_presence(&mut bob, PATIENCE).await;
    assert!(streamed.is_some(), "bob's stream heard alice come online");
    let (status, answer) = get_presence(&relay.base, &bob_token, "alice").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["presence"]["alice"]["online"], true, "{answer}");
    // carol, in no room of alice's audience, is still refused.
    let carol = relay.token("carol", &[]);
    assert_eq!(get_presence(&relay.base, &carol, "alice").await.0, 403);
}

/// An audience padded with made-up names costs its owner, not the relays: eve wrote to bob
/// and to 40,000 made-up names of 32 bytes, and her next online change wrote all of them into
/// one signal row that every relay read whole (one of 50 MB grew a relay from 23 to 130 MiB;
/// found by an outside review). A change now reaches at most 1 MiB of names, in rows of at
/// most 32 KiB, those who can hear it first: bob, online, is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_of_made_up_names_costs_at_most_1_mib_a_change() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             SELECT ARRAY['eve'] || ARRAY(SELECT 'made-up-' || lpad((m * 500 + n)::text, 24, '0') \
                                            FROM generate_series(1, 500) n), \
                    'eve', '{}' \
               FROM generate_series(0, 79) m; \
             INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{eve,bob}', 'eve', '{}')",
        )
        .await
        .unwrap();
    let relay = Relay::start_with(&db, quick_presence()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;
    // eve comes online once bob is recorded as online, as anyone who opened a while ago is.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut eve = relay.subscribe("eve", "", None).await;
    eve.opening_position().await;
    let change = next_presence(&mut bob, PATIENCE)
        .await
        .expect("bob hears eve");
    assert_eq!(change["participant"], "eve");

    let rows: Vec<(i32, bool)> = client
        .query(
            "SELECT octet_length(participants::text), 'bob' = ANY(participants) \
               FROM pgrelay.signals \
              WHERE kind = 'presence' AND payload->>'participant' = 'eve'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let total: i32 = rows.iter().map(|&(bytes, _)| bytes).sum();
    assert!(
        rows.iter().all(|&(bytes, _)| bytes <= 32768) && total <= 1 << 20,
        "{} rows, {total} bytes, the largest {:?}",
        rows.len(),
        rows.iter().map(|&(bytes, _)| bytes).max()
    );
    assert!(rows.iter().any(|&(_, bob)| bob), "bob is in eve's audience");
}

/// A large audience of real participants is announced in rows of at most 32 KiB of names, the
/// bound of any signal (`pgrelay.signal`), each name once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_audience_is_announced_in_rows_of_at_most_32_kib() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    // 3,000 participants seen online before, of 40 bytes each: 126 KB of names.
    client
        .batch_execute(
            "INSERT INTO pgrelay.presence_last_seen \
             SELECT 'member-' || lpad(n::text, 33, '0'), now() FROM generate_series(1, 3000) n; \
             INSERT INTO pgrelay.messages (participants, sender, payload) \
             SELECT ARRAY['eve'] || ARRAY(SELECT 'member-' || lpad((m * 100 + n)::text, 33, '0') \
                                            FROM generate_series(1, 100) n), \
                    'eve', '{}' \
               FROM generate_series(0, 29) m; \
             SELECT pgrelay.sequence(); \
             SELECT pgrelay.announce_presence('eve', true)",
        )
        .await
        .unwrap();
    let rows: Vec<(i32, i64)> = client
        .query(
            "SELECT octet_length(participants::text), cardinality(participants)::int8 \
               FROM pgrelay.signals WHERE kind = 'presence'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(rows.len() >= 4, "{rows:?}");
    assert!(rows.iter().all(|&(bytes, _)| bytes <= 32768), "{rows:?}");
    let distinct: i64 = client
        .query_one(
            "SELECT count(DISTINCT p) FROM pgrelay.signals, unnest(participants) p \
              WHERE kind = 'presence'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let named: i64 = rows.iter().map(|&(_, names)| names).sum();
    assert_eq!((distinct, named), (3000, 3000), "each member once");
}

/// A change written as several rows is heard once: alice's audience is `#general`, zoe and
/// 1,200 colleagues online elsewhere, so her change took two rows, `#general` in the first and
/// zoe in the second, and zoe, a member of `#general`, heard it twice (an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_several_rows_is_heard_once() {
    let db = fresh_database().await;
    connect(&db)
        .await
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{alice,#general}', 'alice', '{}'), ('{alice,zoe}', 'alice', '{}'); \
             INSERT INTO pgrelay.messages (participants, sender, payload) \
             SELECT ARRAY['alice'] || ARRAY(SELECT 'colleague-' || lpad((m * 600 + n)::text, 20, '0') \
                                              FROM generate_series(1, 600) n), 'alice', '{}' \
               FROM generate_series(0, 1) m; \
             INSERT INTO pgrelay.presence (participant, instance, heartbeat_at) \
             SELECT 'colleague-' || lpad(n::text, 20, '0'), 'elsewhere', now() + interval '1 hour' \
               FROM generate_series(1, 1200) n",
        )
        .await
        .unwrap();
    let relay = Relay::start_with(&db, quick_presence()).await;
    let zoe_token =
        relay
            .keys
            .mint_with_rooms("zoe", Duration::from_secs(3600), &[], &["#general"]);
    let mut zoe = Subscriber::open(&relay.base, &zoe_token, "", None).await;
    zoe.keep_presence = true;
    zoe.opening_position().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;

    let mut heard = Vec::new();
    while let Some(change) = next_presence(&mut zoe, Duration::from_secs(2)).await {
        heard.push(change);
    }
    assert_eq!(heard.len(), 1, "zoe heard {heard:?}");
    assert_eq!(heard[0]["participant"], "alice");
}

/// Everyone in an audience who is online hears a change, however large the audience: the
/// bound on names written (1 MiB) counts only names not online now, which cannot hear it.
/// 40,000 online members of 40 bytes got 25,550 names written and 14,450 never heard (an
/// outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_online_member_of_a_large_audience_hears_a_change() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgrelay.presence_audience(participant text) RETURNS text[]
                 LANGUAGE sql STABLE AS $$
                 SELECT ARRAY(SELECT 'member-' || lpad(n::text, 33, '0')
                                FROM generate_series(1, 40000) n) $$;
             INSERT INTO pgrelay.presence (participant, instance, heartbeat_at)
             SELECT 'member-' || lpad(n::text, 33, '0'), 'elsewhere', now()
               FROM generate_series(1, 40000) n;
             SELECT pgrelay.announce_presence('ceo', true)",
        )
        .await
        .unwrap();
    let (reached, largest): (i64, i32) = client
        .query_one(
            "SELECT (SELECT count(DISTINCT p) FROM pgrelay.signals, unnest(participants) p), \
                    (SELECT max(octet_length(participants::text)) FROM pgrelay.signals)",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(reached, 40_000);
    assert!(largest <= 32768, "a row of {largest} bytes");
}

/// Rooms count towards the bound of what a change writes, as names not online do: nothing
/// knows whether a stream listens on a room. A role that may only INSERT wrote messages
/// without a sender to alice and 99,900 made-up rooms, and each of alice's changes wrote all of
/// them, 4 MB in 130 rows (an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_padding_an_audience_are_bounded_too() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT ARRAY['alice'] || ARRAY(SELECT '#padroom-' || lpad((m * 1000 + n)::text, 31, '0') \
                                              FROM generate_series(1, 999) n), '{}' \
               FROM generate_series(0, 99) m; \
             SELECT pgrelay.sequence(100000); \
             SELECT pgrelay.announce_presence('alice', true)",
        )
        .await
        .unwrap();
    let written: i64 = client
        .query_one(
            "SELECT sum(octet_length(participants::text))::int8 FROM pgrelay.signals",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(written <= 1 << 20, "{written} bytes of rooms written");
}
