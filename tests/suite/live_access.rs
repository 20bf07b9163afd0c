//! Access that changes while streams are open, on two relay instances sharing one database:
//! membership changes (pgrelay.rooms_changed, watched membership tables) apply at their
//! position in the message order, live and in catch-ups, and pgrelay.revoke_tokens ends a
//! participant's streams and refuses its old tokens.

use std::time::{Duration, Instant};

use crate::common::*;
use pgrelay::sse::SseEvent;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// The app's membership table, `app.members (member, room)` with rooms stored as `#name`,
/// backing `pgrelay.member_rooms`; `dave` starts in `#a`. With `watch`, every write to it
/// counts as a membership change (the room taken from the row, too).
async fn membership(db: &str, watch: bool) -> Client {
    let client = connect(db).await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.members (member text, room text, PRIMARY KEY (member, room));
             INSERT INTO app.members VALUES ('dave', '#a');
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg(room ORDER BY room), '{}') FROM app.members
                  WHERE member = participant $$;",
        )
        .await
        .unwrap();
    if watch {
        client
            .batch_execute(
                "SELECT pgrelay.watch_membership('app.members'::regclass, \
                     participant => 'NEW.member', room => 'NEW.room')",
            )
            .await
            .unwrap();
    }
    client
}

/// Two relays on `db`, each with a stream of dave's open, and the smaller of the two streams'
/// opening positions.
async fn dave_on_two_instances(db: &str) -> ((Relay, Subscriber), (Relay, Subscriber), i64) {
    let (one, two) = (Relay::start(db).await, Relay::start(db).await);
    let mut on_one = one.subscribe("dave", "", None).await;
    let mut on_two = two.subscribe("dave", "", None).await;
    let opened = on_one
        .opening_position()
        .await
        .min(on_two.opening_position().await);
    ((one, on_one), (two, on_two), opened)
}

/// Inserts one message per address in `to`, each `{"n": n, "to": address}`, in one
/// transaction.
async fn send(client: &Client, to: &[&str], n: usize) {
    for address in to {
        insert(client, &[address], json!({"n": n, "to": address})).await;
    }
}

/// The events of `stream` (opening excluded) up to and including the message whose payload
/// says `{"end": true}`.
async fn events_until_end(stream: &mut Subscriber) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        let event = stream.next().await;
        if event.is_opening() {
            continue;
        }
        let end = event
            .data
            .as_deref()
            .and_then(|data| serde_json::from_str::<Value>(data).ok())
            .is_some_and(|data| data["payload"]["end"] == true);
        events.push(event);
        if end {
            return events;
        }
    }
}

/// Ids of the message events among `events` that went to `room`.
fn ids_to(events: &[SseEvent], room: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|event| event.event.as_deref() == Some("message"))
        .filter(|event| {
            let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
            data["participants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == room)
        })
        .map(|event| event.id.as_deref().unwrap().parse().unwrap())
        .collect()
}

/// Checks that `got` is `want` (ids in order), reporting what was delivered that should not
/// have been and what was missed, not two long lists.
fn assert_ids(got: &[i64], want: &[i64], context: &str) {
    if got != want {
        let extra: Vec<&i64> = got
            .iter()
            .filter(|id| !want.contains(id))
            .take(10)
            .collect();
        let missed: Vec<&i64> = want
            .iter()
            .filter(|id| !got.contains(id))
            .take(10)
            .collect();
        panic!(
            "{context}: {} delivered, {} expected; not theirs (first 10): {extra:?}; \
             missed (first 10): {missed:?}",
            got.len(),
            want.len()
        );
    }
}

/// The `rooms` events among `events`, as (id, data).
fn room_events(events: &[SseEvent]) -> Vec<(i64, Value)> {
    events
        .iter()
        .filter(|event| event.event.as_deref() == Some("rooms"))
        .map(|event| {
            (
                event.id.as_deref().unwrap().parse().unwrap(),
                serde_json::from_str(event.data.as_deref().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The ids of the messages to `room` in (`after`, `until`), once numbered.
async fn stored_ids(client: &Client, room: &str, after: i64, until: i64) -> Vec<i64> {
    number_pending(client).await;
    client
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants @> ARRAY[$1] AND NOT control \
               AND id > $2 AND id < $3 ORDER BY id",
            &[&room, &after, &until],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The ids of `participant`'s `rooms` control rows, in order.
async fn change_ids(client: &Client, participant: &str) -> Vec<i64> {
    number_pending(client).await;
    client
        .query(
            "SELECT id FROM pgrelay.messages WHERE control AND kind = 'rooms' \
               AND participants[1] = $1 ORDER BY id",
            &[&participant],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// What a stream opened at `from` must have delivered of `room` up to the end marker `end`:
/// the room's messages between the positions where the stream held it.
async fn expected(client: &Client, room: &str, held: &[(i64, i64)]) -> Vec<i64> {
    let mut ids = Vec::new();
    for &(from, until) in held {
        ids.extend(stored_ids(client, room, from, until).await);
    }
    ids
}

/// dave leaves `#a` and joins `#b` (a watched table's write) while messages to both keep
/// coming: his streams on both instances, opened before, deliver every `#a` message before the
/// change's position and none after it, every `#b` message after it and none before, and
/// `event: rooms` at that position, without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_applies_at_its_position_on_every_instance() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let ((_one, mut on_one), (_two, mut on_two), opened) = dave_on_two_instances(&db).await;

    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let client = connect(&db).await;
            for n in 0..300 {
                send(&client, &["#a", "#b"], n).await;
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    client
        .batch_execute(
            "BEGIN; DELETE FROM app.members WHERE member = 'dave' AND room = '#a';
             INSERT INTO app.members VALUES ('dave', '#b'); COMMIT;",
        )
        .await
        .unwrap();
    writer.await.unwrap();
    insert(&client, &["dave"], json!({"end": true})).await;

    let changes = change_ids(&client, "dave").await;
    assert_eq!(changes.len(), 1, "one transaction, one change");
    let change = changes[0];
    let removed_before = expected(&client, "#a", &[(opened, change)]).await;
    let added_after = expected(&client, "#b", &[(change, i64::MAX)]).await;
    assert!(
        !removed_before.is_empty() && !added_after.is_empty(),
        "the change must fall among the messages"
    );
    for (name, stream) in [("one", &mut on_one), ("two", &mut on_two)] {
        let events = events_until_end(stream).await;
        assert_eq!(
            room_events(&events),
            [(change, json!({"added": ["#b"], "removed": ["#a"]}))],
            "instance {name}"
        );
        assert_ids(
            &ids_to(&events, "#a"),
            &removed_before,
            &format!("instance {name}, #a"),
        );
        assert_ids(
            &ids_to(&events, "#b"),
            &added_after,
            &format!("instance {name}, #b"),
        );
    }
}

/// Two transactions change dave's membership at once: T1 removes `#a`, T2 (which began by
/// publishing something, so the sequencer numbers its rows first) adds `#b`, and both commit
/// before either is numbered. T2's set must show T1's removal (it waits for T1's lock) and
/// T1's older set, numbered after it, must change nothing: dave ends in `#b` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_of_one_participant_come_out_right() {
    let db = fresh_database().await;
    let client = membership(&db, false).await;
    // A first change, so that dave's lock row exists: the second transaction must wait for
    // the lock, not for the first one's insert of that row.
    client
        .batch_execute("SELECT pgrelay.rooms_changed('dave')")
        .await
        .unwrap();
    let ((_one, mut on_one), (_two, mut on_two), _) = dave_on_two_instances(&db).await;

    // Nothing is numbered while the test holds the order lock.
    let holder = connect(&db).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let t1 = connect(&db).await;
    let t2 = connect(&db).await;
    t2.batch_execute("BEGIN").await.unwrap();
    insert(&t2, &["erin"], json!({"first": true})).await;
    t1.batch_execute(
        "BEGIN; DELETE FROM app.members WHERE member = 'dave' AND room = '#a';
         SELECT pgrelay.rooms_changed('dave');",
    )
    .await
    .unwrap();
    t2.batch_execute("INSERT INTO app.members VALUES ('dave', '#b')")
        .await
        .unwrap();
    // Waits for T1's lock on dave, then evaluates member_rooms with T1's change visible.
    let t2_changes = tokio::spawn(async move {
        t2.batch_execute("SELECT pgrelay.rooms_changed('dave'); COMMIT")
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!t2_changes.is_finished(), "T2 waits for T1's lock on dave");
    t1.batch_execute("COMMIT").await.unwrap();
    t2_changes.await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();

    let changes = change_ids(&client, "dave").await[1..].to_vec();
    let sets: Vec<Value> = client
        .query(
            "SELECT payload FROM pgrelay.messages WHERE control AND participants[1] = 'dave' \
             ORDER BY id OFFSET 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sets[0]["rooms"], json!(["#b"]), "T2's set, numbered first");
    assert_eq!(
        sets[1]["rooms"],
        json!([]),
        "T1's older set, numbered after"
    );

    send(&client, &["#a", "#b"], 1).await;
    insert(&client, &["dave"], json!({"end": true})).await;
    let after = expected(&client, "#b", &[(changes[1], i64::MAX)]).await;
    for (name, stream) in [("one", &mut on_one), ("two", &mut on_two)] {
        let events = events_until_end(stream).await;
        assert_eq!(
            room_events(&events),
            [(changes[0], json!({"added": ["#b"], "removed": ["#a"]}))],
            "instance {name}: only the newer set changes anything"
        );
        assert_eq!(ids_to(&events, "#a"), Vec::<i64>::new(), "instance {name}");
        assert_ids(
            &ids_to(&events, "#b"),
            &after,
            &format!("instance {name}, #b"),
        );
    }
}

/// dave is removed from `#a` and added back: `#a`'s messages between the two changes are not
/// his, those after the re-add are, and each change arrives as its own `event: rooms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_then_re_add() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let ((_one, mut on_one), (_two, mut on_two), opened) = dave_on_two_instances(&db).await;
    send(&client, &["#a"], 1).await;
    client
        .batch_execute("DELETE FROM app.members WHERE member = 'dave' AND room = '#a'")
        .await
        .unwrap();
    send(&client, &["#a"], 2).await;
    client
        .batch_execute("INSERT INTO app.members VALUES ('dave', '#a')")
        .await
        .unwrap();
    send(&client, &["#a"], 3).await;
    insert(&client, &["dave"], json!({"end": true})).await;

    let changes = change_ids(&client, "dave").await;
    assert_eq!(changes.len(), 2);
    let wanted = expected(
        &client,
        "#a",
        &[(opened, changes[0]), (changes[1], i64::MAX)],
    )
    .await;
    assert_eq!(wanted.len(), 2);
    for (name, stream) in [("one", &mut on_one), ("two", &mut on_two)] {
        let events = events_until_end(stream).await;
        assert_eq!(
            room_events(&events),
            [
                (changes[0], json!({"added": [], "removed": ["#a"]})),
                (changes[1], json!({"added": ["#a"], "removed": []})),
            ],
            "instance {name}"
        );
        assert_ids(
            &ids_to(&events, "#a"),
            &wanted,
            &format!("instance {name}, #a"),
        );
    }
}

/// A reader that falls behind (its inbox overflows) and is served from the table meets the
/// changes inside its catch-up: it applies each there exactly as live delivery would (the
/// page read before a removal holds the removed room's later messages; the one read before an
/// addition lacks the added room's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_inside_a_catch_up_apply_at_their_positions() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let ((one, mut on_one), (two, mut on_two), opened) = dave_on_two_instances(&db).await;
    // The readers do not read until everything is committed: 3 × 3000 messages of 4 KB fill
    // the sockets and overflow their inboxes.
    let burst = |rooms: &str| {
        format!(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT ARRAY[(ARRAY[{rooms}])[1 + n % cardinality(ARRAY[{rooms}])]], \
                    jsonb_build_object('n', n, 'pad', repeat('x', 4000)) \
             FROM generate_series(1, 3000) AS n"
        )
    };
    client.batch_execute(&burst("'#a', '#b'")).await.unwrap();
    client
        .batch_execute("DELETE FROM app.members WHERE member = 'dave' AND room = '#a'")
        .await
        .unwrap();
    client.batch_execute(&burst("'#a', '#b'")).await.unwrap();
    client
        .batch_execute("INSERT INTO app.members VALUES ('dave', '#b')")
        .await
        .unwrap();
    client.batch_execute(&burst("'#a', '#b'")).await.unwrap();
    insert(&client, &["dave"], json!({"end": true})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let changes = change_ids(&client, "dave").await;
    let before = expected(&client, "#a", &[(opened, changes[0])]).await;
    let after = expected(&client, "#b", &[(changes[1], i64::MAX)]).await;
    assert_eq!((before.len(), after.len()), (1500, 1500));
    for (name, stream, relay) in [("one", &mut on_one, &one), ("two", &mut on_two, &two)] {
        let events = events_until_end(stream).await;
        assert_eq!(
            room_events(&events),
            [
                (changes[0], json!({"added": [], "removed": ["#a"]})),
                (changes[1], json!({"added": ["#b"], "removed": []})),
            ],
            "instance {name}"
        );
        assert_ids(
            &ids_to(&events, "#a"),
            &before,
            &format!("instance {name}, #a"),
        );
        assert_ids(
            &ids_to(&events, "#b"),
            &after,
            &format!("instance {name}, #b"),
        );
        assert!(
            metric(&relay.base, "pgrelay_catch_up_queries_total").await > 2,
            "instance {name}: the changes must have been met in catch-ups"
        );
    }
}

/// A stream narrowed with `?rooms=` loses a room it is removed from, and never gains one it
/// did not ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_stream_only_loses_rooms() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let relay = Relay::start(&db).await;
    client
        .batch_execute("INSERT INTO app.members VALUES ('dave', '#c')")
        .await
        .unwrap();
    let mut narrowed = relay.subscribe("dave", "rooms=%23a,%23c", None).await;
    narrowed.opening_position().await;
    client
        .batch_execute(
            "BEGIN; DELETE FROM app.members WHERE member = 'dave' AND room = '#a';
             INSERT INTO app.members VALUES ('dave', '#b'); COMMIT;",
        )
        .await
        .unwrap();
    send(&client, &["#a", "#b", "#c"], 1).await;
    insert(&client, &["#c"], json!({"end": true})).await;
    let change = *change_ids(&client, "dave").await.last().unwrap();
    let events = events_until_end(&mut narrowed).await;
    assert_eq!(
        room_events(&events),
        [(change, json!({"added": [], "removed": ["#a"]}))]
    );
    assert!(ids_to(&events, "#a").is_empty() && ids_to(&events, "#b").is_empty());
    assert_eq!(ids_to(&events, "#c").len(), 2);
}

/// Writes to a watched table never fail because of pgrelay: a `member_rooms` that raises
/// is recorded as a skip and the participant's streams lose their member rooms (they never
/// keep rooms they may have lost), while other participants' streams go on; a TRUNCATE counts
/// as a change for everyone it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_member_rooms_fails_no_write_and_truncate_counts() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    client
        .batch_execute(
            "INSERT INTO app.members VALUES ('erin', '#a');
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
             BEGIN
                 IF participant = 'dave' AND EXISTS (SELECT 1 FROM app.members
                                                      WHERE room = '#boom') THEN
                     RAISE EXCEPTION 'member_rooms is broken for dave';
                 END IF;
                 RETURN (SELECT coalesce(array_agg(room ORDER BY room), '{}') FROM app.members
                          WHERE member = participant);
             END $$;",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let mut dave = relay.subscribe("dave", "", None).await;
    let mut erin = relay.subscribe("erin", "", None).await;
    dave.opening_position().await;
    erin.opening_position().await;
    client
        .batch_execute("INSERT INTO app.members VALUES ('dave', '#boom')")
        .await
        .expect("the app's write must not fail");
    let skips: i64 = client
        .query_one(
            "SELECT count(*) FROM pgrelay.attach_skips WHERE reason = 'member_rooms_failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(skips, 1);
    send(&client, &["#a"], 1).await;
    insert(&client, &["dave"], json!({"end": true})).await;
    let events = events_until_end(&mut dave).await;
    assert_eq!(
        room_events(&events)[0].1,
        json!({"added": [], "removed": ["#a"]})
    );
    assert!(ids_to(&events, "#a").is_empty());

    client
        .batch_execute("TRUNCATE app.members")
        .await
        .expect("TRUNCATE of a watched table");
    send(&client, &["#a"], 2).await;
    insert(&client, &["erin"], json!({"end": true})).await;
    let events = events_until_end(&mut erin).await;
    assert_eq!(
        room_events(&events).last().unwrap().1,
        json!({"added": [], "removed": ["#a"]}),
        "erin's membership went with the TRUNCATE"
    );
    assert_eq!(
        ids_to(&events, "#a").len(),
        1,
        "the message before the TRUNCATE only"
    );
}

/// Only pgrelay's own functions write the reserved kinds: an app role can neither insert a
/// `rooms` or `revoked` row nor mark a row `control`, and may not revoke tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pgrelay_writes_changes_of_access() {
    let db = fresh_database().await;
    let writer = Role::create(
        &db,
        "writer",
        &[
            "GRANT USAGE ON SCHEMA pgrelay TO {role}",
            "GRANT INSERT ON pgrelay.messages TO {role}",
        ],
    )
    .await
    .connect()
    .await;
    for (sql, what) in [
        (
            "INSERT INTO pgrelay.messages (participants, kind, payload) \
             VALUES ('{dave}', 'rooms', '{\"version\": 99, \"rooms\": [\"#secret\"]}')",
            "a rooms row",
        ),
        (
            "INSERT INTO pgrelay.messages (participants, kind, payload, control) \
             VALUES ('{dave}', 'rooms', '{\"version\": 99, \"rooms\": [\"#secret\"]}', true)",
            "a control rooms row",
        ),
        (
            "INSERT INTO pgrelay.messages (participants, payload, control) \
             VALUES ('{dave}', '{}', true)",
            "a control row",
        ),
        ("SELECT pgrelay.revoke_tokens('dave')", "a revocation"),
        (
            "SELECT pgrelay.rooms_changed('dave')",
            "a membership change",
        ),
    ] {
        assert!(
            writer.batch_execute(sql).await.is_err(),
            "{what} was accepted"
        );
    }
}

/// The time from `revoke_tokens`'s commit until `stream` ends, right after `event: revoked`.
async fn ends_after_revoked(stream: &mut Subscriber, committed: Instant) -> Duration {
    let event = stream.next().await;
    assert_eq!(event.event.as_deref(), Some("revoked"), "{event:?}");
    assert_eq!(event.data.as_deref(), Some(r#"{"reason":"token_revoked"}"#));
    assert!(
        event.id.is_none(),
        "a client resumes after its last message: {event:?}"
    );
    assert!(
        stream.ends_within(PATIENCE).await,
        "the stream must end after `revoked`"
    );
    committed.elapsed()
}

/// `revoke_tokens` ends mallory's streams on both instances (after `event: revoked`, with
/// nothing after it), and her old token is refused everywhere (401 `token_revoked`), while a
/// token issued after the cutoff works; a cutoff before a token's `iat` leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_streams_everywhere_and_refuses_old_tokens() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let (one, two) = (Relay::start(&db).await, Relay::start(&db).await);
    let old = one.token("mallory", &["publish"]);
    let mut on_one = Subscriber::open(&one.base, &old, "", None).await;
    let mut on_two = Subscriber::open(&two.base, &old, "", None).await;
    on_one.opening_position().await;
    on_two.opening_position().await;

    // A cutoff an hour ago does not reach a token issued now.
    client
        .batch_execute("SELECT pgrelay.revoke_tokens('mallory', now() - interval '1 hour')")
        .await
        .unwrap();
    insert(&client, &["mallory"], json!({"n": 1})).await;
    for stream in [&mut on_one, &mut on_two] {
        assert_eq!(stream.next_message().await.2["payload"]["n"], 1);
    }

    client
        .batch_execute("SELECT pgrelay.revoke_tokens('mallory')")
        .await
        .unwrap();
    let committed = Instant::now();
    insert(&client, &["mallory"], json!({"n": 2})).await;
    let (first, second) = tokio::join!(
        ends_after_revoked(&mut on_one, committed),
        ends_after_revoked(&mut on_two, committed)
    );
    println!("revoke_tokens commit → streams ended: {first:?} (one), {second:?} (two)");

    for relay in [&one, &two] {
        let stream = reqwest::get(format!("{}/v1/stream?token={old}", relay.base))
            .await
            .unwrap();
        assert_json_error(stream, 401, "token_revoked", "stream").await;
        assert_json_error(
            history(&relay.base, &old, "").await,
            401,
            "token_revoked",
            "history",
        )
        .await;
        let posted = post(
            &relay.base,
            "/v1/messages",
            &old,
            json!({"participants": ["bob"], "payload": {}}),
        )
        .await;
        assert_json_error(posted, 401, "token_revoked", "publish").await;
    }

    // `iat` has whole seconds: a token of the next second is issued after the cutoff.
    let next_second = 1000
        - (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis() as u64);
    tokio::time::sleep(Duration::from_millis(next_second + 10)).await;
    let fresh = two.token("mallory", &["publish"]);
    let mut renewed = Subscriber::open(&one.base, &fresh, "", None).await;
    renewed.opening_position().await;
    let posted = post(
        &two.base,
        "/v1/messages",
        &fresh,
        json!({"participants": ["mallory"], "payload": {"n": 3}}),
    )
    .await;
    assert_eq!(posted.status(), 201);
    assert_eq!(renewed.next_message().await.2["payload"]["n"], 3);
}

/// With `room =>`, an UPDATE that moves a grant counts for the old and the new participant,
/// and one that changes neither participant nor room counts for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_count_only_when_they_move_a_grant() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    client
        .batch_execute("UPDATE app.members SET room = room, member = member")
        .await
        .unwrap();
    assert!(change_ids(&client, "dave").await.is_empty());
    client
        .batch_execute("UPDATE app.members SET member = 'erin' WHERE member = 'dave'")
        .await
        .unwrap();
    assert_eq!(change_ids(&client, "dave").await.len(), 1);
    assert_eq!(change_ids(&client, "erin").await.len(), 1);
    let erin: Value = client
        .query_one(
            "SELECT payload FROM pgrelay.messages WHERE control AND participants[1] = 'erin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(erin["rooms"], json!(["#a"]));
}

/// A reader with a backlog (its inbox overflowed) ends at the revocation all the same: it
/// sends nothing with a larger id than the revocation's, then `revoked`, and ends without
/// working through its backlog first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_reader_with_a_backlog_ends_at_once() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    let mut stream = relay.subscribe("mallory", "", None).await;
    stream.opening_position().await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{mallory}', jsonb_build_object('n', n, 'pad', repeat('x', 4000)) \
             FROM generate_series(1, 3000) AS n;
             SELECT pgrelay.revoke_tokens('mallory');",
        )
        .await
        .unwrap();
    insert(&client, &["mallory"], json!({"after": true})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    number_pending(&client).await;
    let revocation: i64 = client
        .query_one(
            "SELECT id FROM pgrelay.messages WHERE control AND kind = 'revoked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut delivered = 0;
    loop {
        let event = stream.next().await;
        if event.event.as_deref() == Some("revoked") {
            break;
        }
        let id: i64 = event.id.as_deref().unwrap().parse().unwrap();
        assert!(id < revocation, "message {id} is after the revocation");
        delivered += 1;
    }
    assert!(stream.ends_within(PATIENCE).await);
    assert!(delivered < 3000, "the backlog was not worked through first");
}

/// `GET /v1/messages` lists messages, never the changes a stream applies, and a page of
/// `limit` holds `limit` messages when there are that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_messages_not_changes() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let relay = Relay::start(&db).await;
    insert(&client, &["dave"], json!({"n": 1})).await;
    client
        .batch_execute(
            "SELECT pgrelay.rooms_changed('dave'); SELECT pgrelay.rooms_changed('dave');
             SELECT pgrelay.revoke_tokens('dave', now() - interval '1 day');",
        )
        .await
        .unwrap();
    insert(&client, &["dave"], json!({"n": 2})).await;
    number_pending(&client).await;
    let page = history_page(&relay.base, &relay.token("dave", &[]), "limit=2").await;
    let kinds: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["kind"])
        .collect();
    assert_eq!(kinds, [&json!("message"), &json!("message")], "{page}");
    assert_eq!(page["messages"][1]["payload"]["n"], 2);
}

/// Migration 0010 applies again in place (as on a database that had 0009), and lets a role
/// that already reads the messages, such as a relay's, read revocations, which a stream open
/// checks: upgrading needs no new grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_lets_existing_readers_check_revocations() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let reader = Role::create(
        &db,
        "reader",
        &[
            "GRANT USAGE ON SCHEMA pgrelay TO {role}",
            "GRANT SELECT ON pgrelay.messages TO {role}",
        ],
    )
    .await;
    let name = reader
        .url
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let readable = || async {
        client
            .query_one(
                "SELECT has_table_privilege($1, 'pgrelay.revocations', 'SELECT')",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(!readable().await);
    client
        .batch_execute("DELETE FROM pgrelay.schema_migrations WHERE version = 10")
        .await
        .unwrap();
    pgrelay::migrate::migrate(&db, "pgrelay").await.unwrap();
    assert!(readable().await);
}

/// Changes committed (and numbered, as by another instance) while an instance's LISTEN
/// connection is lost are applied at their positions by the catch-up that fills the gap, as
/// live delivery would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_listener_outage_applies_at_its_position() {
    let db = fresh_database().await;
    let client = membership(&db, true).await;
    let relay = Relay::start(&db).await;
    let mut dave = relay.subscribe("dave", "", None).await;
    let opened = dave.opening_position().await;
    send(&client, &["#a", "#b"], 1).await;
    let cut: i64 = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE application_name = 'pgrelay-listen' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .len() as i64;
    assert_eq!(cut, 1);
    client
        .batch_execute("DELETE FROM app.members WHERE member = 'dave' AND room = '#a'")
        .await
        .unwrap();
    send(&client, &["#a", "#b"], 2).await;
    client
        .batch_execute("INSERT INTO app.members VALUES ('dave', '#b')")
        .await
        .unwrap();
    send(&client, &["#a", "#b"], 3).await;
    insert(&client, &["dave"], json!({"end": true})).await;
    // Numbered now, as a peer instance would: the reconnected listener starts after them, so
    // only the gap's catch-up reads them.
    number_pending(&client).await;
    let events = events_until_end(&mut dave).await;
    let changes = change_ids(&client, "dave").await;
    assert_eq!(
        room_events(&events),
        [
            (changes[0], json!({"added": [], "removed": ["#a"]})),
            (changes[1], json!({"added": ["#b"], "removed": []})),
        ]
    );
    let a = expected(&client, "#a", &[(opened, changes[0])]).await;
    let b = expected(&client, "#b", &[(changes[1], i64::MAX)]).await;
    assert_ids(&ids_to(&events, "#a"), &a, "#a");
    assert_ids(&ids_to(&events, "#b"), &b, "#b");
    assert!(metric(&relay.base, "pgrelay_listener_reconnects_total").await >= 1);
}

/// A revocation that commits while mallory's message waits to be stored refuses it: the check
/// runs inside the publishing transaction, after the order lock, not in a query before it.
/// Here a peer holds the order lock, so the POST passes every check the relay makes up front
/// and then waits; meanwhile `revoke_tokens` commits. The POST must be answered 401
/// `token_revoked` and store nothing, and bob's message in the same wait is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_a_message_waits_refuses_it() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    let (mallory, bob) = (
        relay.token("mallory", &["publish"]),
        relay.token("bob", &["publish"]),
    );
    let peer = connect(&db).await;
    peer.batch_execute("BEGIN; LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();

    let base = relay.base.clone();
    let posts = tokio::spawn(async move {
        let body = |n: i32| json!({"participants": ["alice"], "payload": {"n": n}});
        tokio::join!(
            post(&base, "/v1/messages", &mallory, body(1)),
            post(&base, "/v1/messages", &bob, body(2))
        )
    });
    // Both wait for the order lock inside publish_many.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND wait_event_type = 'Lock' \
                    AND query LIKE '%publish_many%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the POSTs never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .batch_execute("SELECT pgrelay.revoke_tokens('mallory')")
        .await
        .unwrap();
    peer.batch_execute("COMMIT").await.unwrap();

    let (from_mallory, from_bob) = posts.await.unwrap();
    assert_eq!(from_bob.status(), 201);
    assert_json_error(from_mallory, 401, "token_revoked", "publish").await;
    let stored = stored_numbers(&client).await;
    assert_eq!(stored, [2], "only bob's message is stored");
}

/// A stream whose client stalls falls behind; meanwhile its participant leaves `#a`
/// (`rooms_changed`), and retention prunes that control row before the stream reads it. After
/// its `reset` (history_truncated) the stream reads its member rooms again: a message to `#a`
/// committed after the removal does not reach the former member. (Before, the cursor jumped
/// past the pruned row, the stream's access kept `#a`, and that message was delivered; found
/// by an outside review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_pruned_before_a_stalled_stream_read_it_still_applies() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.memberships (member text, room text, PRIMARY KEY (member, room));
             INSERT INTO app.memberships VALUES ('alice', 'a');
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg('#' || room), '{}') FROM app.memberships
                  WHERE member = participant $$;",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    // Alice's client opens her stream and then stops reading.
    let socket = stalled_stream(&relay, "alice").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Enough to fill the socket's buffers and overflow her inbox.
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', g, 'blob', repeat('x', 100000)) \
               FROM generate_series(1, 80) g",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('small', g) FROM generate_series(1, 300) g",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Alice leaves #a, and retention passes over all of that, the control row included.
    client
        .batch_execute(
            "DELETE FROM app.memberships WHERE member = 'alice'; \
             SELECT pgrelay.rooms_changed('alice')",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(prune_with_a_relay(&db, Duration::from_secs(1)).await > 0);

    // After her removal: a message to #a, then one to alice herself as a marker.
    insert(&client, &["#a"], json!({"secret": "for #a members only"})).await;
    insert(&client, &["alice"], json!({"marker": "after"})).await;
    number_pending(&client).await;

    // Alice's client reads again.
    let text = drain(socket, Duration::from_secs(3)).await;
    assert!(text.contains("history_truncated"), "the stream was told");
    assert!(text.contains("\"marker\""), "the stream went on");
    assert!(
        text.contains("event: rooms"),
        "the stream heard that it left #a"
    );
    assert!(
        !text.contains("for #a members only"),
        "a message to #a committed after alice left #a reached her stream"
    );
}

/// A revoked token's stream ends within a second even while its catch-up read is held up:
/// here the read waits on a lock (a replica that stopped answering, or a storm's queue for
/// the page budget, hold it the same way). Before, the stream looked at its revocation only
/// once the read returned (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_stream_ends_while_its_catch_up_waits() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    let mut stream = relay.subscribe("alice", "", None).await;
    stream.opening_position().await;

    // Something holds the retention table (a migration, VACUUM FULL…): catch-up reads wait.
    let mut locker = connect(&db).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pgrelay.retention IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Alice's inbox overflows, so her stream catches up from the table.
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', g) FROM generate_series(1, 400) g",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .batch_execute("SELECT pgrelay.revoke_tokens('alice')")
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let mut ended = None;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        if let Some(event) = stream.next_within(Duration::from_millis(200)).await {
            if event.event.as_deref() == Some("revoked") {
                ended = Some(revoked_at.elapsed());
                break;
            }
        }
    }
    lock.rollback().await.unwrap();
    assert!(
        ended.is_some_and(|after| after < Duration::from_secs(1)),
        "the revoked stream did not end within a second: {ended:?}"
    );
}

/// After `revoke_tokens('mallory')` a token of hers issued before the cutoff is answered 401
/// `token_revoked` by `GET /v1/presence` as by every other route. The presence route asked
/// nothing about revocations, and the revoked token kept reading who was online in her
/// audience (found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_presence() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let relay = Relay::start(&db).await;
    // bob wrote to mallory: she is in his presence audience.
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{bob,mallory}', 'bob', '{}')",
            &[],
        )
        .await
        .unwrap();
    number_pending(&client).await;
    let old = relay.token("mallory", &[]);
    let url = format!("{}/v1/presence?participants=bob", relay.base);
    let ask = || reqwest::Client::new().get(&url).bearer_auth(&old).send();
    assert_eq!(ask().await.unwrap().status(), 200, "before the revocation");

    client
        .batch_execute("SELECT pgrelay.revoke_tokens('mallory')")
        .await
        .unwrap();
    assert_json_error(ask().await.unwrap(), 401, "token_revoked", "presence").await;
}

/// Dave's membership changes (`change`, ending with `rooms_changed('dave')`) while a message to
/// `room`, whose transaction inserted its row before the change, commits after it; both commit
/// while a peer holds the order lock (a relay in its pass), so one pass numbers them. On a
/// server recording commit timestamps, as these tests' own is. Returns what dave's open stream
/// heard until the message to him that follows, and the message's id.
async fn a_message_committed_after_a_change(change: &str, room: &str) -> (Vec<SseEvent>, i64) {
    let (_cluster, db) = cluster_with(&[("track_commit_timestamp", "on")]).await;
    let client = membership(&db, false).await;
    let relay = Relay::start(&db).await;
    let mut dave = relay.subscribe("dave", "", None).await;
    dave.opening_position().await;

    let peer = hold_the_order_lock(&db).await;
    let late = connect(&db).await;
    late.batch_execute("BEGIN").await.unwrap();
    insert(&late, &[room], json!({"late": true})).await;
    client
        .batch_execute(&format!("BEGIN; {change}; COMMIT"))
        .await
        .unwrap();
    late.batch_execute("COMMIT").await.unwrap();
    peer.batch_execute("COMMIT").await.unwrap();
    insert(&client, &["dave"], json!({"end": true})).await;

    let events = events_until_end(&mut dave).await;
    number_pending(&client).await;
    let late_id = client
        .query_one(
            "SELECT id FROM pgrelay.messages WHERE payload = '{\"late\": true}'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (events, late_id)
}

/// A message to `#a` that commits after dave's removal from `#a` has committed does not
/// reach him, though its transaction inserted first: numbered in one pass with the change, it
/// got the smaller id (first insert decided), and dave's stream delivered it as if it had
/// committed before (migration 0016; found by an outside review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_after_a_removal_does_not_reach_the_former_member() {
    let (events, late) = a_message_committed_after_a_change(
        "DELETE FROM app.members WHERE member = 'dave' AND room = '#a'; \
         SELECT pgrelay.rooms_changed('dave')",
        "#a",
    )
    .await;
    assert_ids(
        &ids_to(&events, "#a"),
        &[],
        &format!("#a ({late}) after dave's removal"),
    );
}

/// The other way: a message to `#b` that commits after dave joined `#b` reaches him, though
/// its transaction inserted first (before migration 0016 his stream dropped it as older than
/// his joining).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_after_a_join_reaches_the_new_member() {
    let (events, late) = a_message_committed_after_a_change(
        "INSERT INTO app.members VALUES ('dave', '#b'); SELECT pgrelay.rooms_changed('dave')",
        "#b",
    )
    .await;
    assert_ids(&ids_to(&events, "#b"), &[late], "#b after dave joined");
}

/// A writer of a watched membership table records its changes at each statement's end with
/// `SET CONSTRAINTS ALL IMMEDIATE`, so it holds one participant's membership lock while it goes
/// on. Once another transaction, committing two participants' memberships in the usual order
/// (the order of their locks), waits for that lock, the writer changes the other participant.
/// Before, the two deadlocked and PostgreSQL ended the transaction that waited first, the other
/// one: the app's write failed (an outside review's finding). Now a transaction that already
/// holds membership locks does not wait for more in the lock manager: it tries for a second
/// and then fails itself (deadlock_detected, which apps retry), and the other commits with
/// both changes recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_recording_early_cannot_make_another_membership_change_fail() {
    let db = fresh_database().await;
    let owner = membership(&db, true).await;
    // The usual transaction takes `first`'s lock, then `second`'s.
    let alice_first: bool = owner
        .query_one(
            "SELECT pgrelay.room_lock('alice') < pgrelay.room_lock('bob')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (first, second) = match alice_first {
        true => ("alice", "bob"),
        false => ("bob", "alice"),
    };
    let grants = [
        "GRANT USAGE ON SCHEMA app TO {role}",
        "GRANT INSERT ON app.members TO {role}",
    ];
    let early = Role::create(&db, "early", &grants).await.connect().await;
    let usual = Role::create(&db, "usual", &grants).await.connect().await;
    early
        .batch_execute(&format!(
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; \
             INSERT INTO app.members VALUES ('{second}', '#x')"
        ))
        .await
        .unwrap();
    let committing = tokio::spawn(async move {
        usual
            .batch_execute(
                "BEGIN; INSERT INTO app.members VALUES ('alice', '#y'), ('bob', '#y'); COMMIT",
            )
            .await
    });
    let waiting = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                    WHERE usename LIKE 'usual%' AND wait_event_type = 'Lock')";
    while !owner
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early_result = early
        .batch_execute(&format!("INSERT INTO app.members VALUES ('{first}', '#z')"))
        .await;
    let _ = early.batch_execute("ROLLBACK").await;
    let committed = tokio::time::timeout(PATIENCE, committing)
        .await
        .expect("the usual transaction still waits")
        .unwrap();
    assert!(
        committed.is_ok(),
        "the usual transaction failed: {committed:?} (the early one: {early_result:?})"
    );
    let early_error = early_result.expect_err("the early transaction went on");
    assert_eq!(
        early_error.code(),
        Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
        "{early_error:?}"
    );
    for member in ["alice", "bob"] {
        let rooms: Value = owner
            .query_one(
                "SELECT payload -> 'rooms' FROM pgrelay.messages \
                  WHERE control AND kind = 'rooms' AND participants = ARRAY[$1] \
                  ORDER BY id DESC NULLS LAST, pending_id LIMIT 1",
                &[&member],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rooms, json!(["#y"]), "{member}'s recorded rooms");
    }
}

/// A transaction that records membership twice (here two `rooms_changed` calls) and finds the
/// second participant's lock held by a transaction that is not waiting for it waits, as any
/// lock waits, until that one commits: only a wait that would close a cycle ends it. With a
/// flat one-second limit it failed after a second (an outside review's finding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_recording_waits_for_a_holder_that_does_not_wait_for_it() {
    let db = fresh_database().await;
    let _owner = membership(&db, false).await;
    let holder = connect(&db).await;
    holder
        .batch_execute("BEGIN; SELECT pgrelay.rooms_changed('bob')")
        .await
        .unwrap();
    let second = connect(&db).await;
    let recording = tokio::spawn(async move {
        second
            .batch_execute(
                "BEGIN; SELECT pgrelay.rooms_changed('alice'); \
                 SELECT pgrelay.rooms_changed('bob'); COMMIT",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let recorded = tokio::time::timeout(PATIENCE, recording)
        .await
        .expect("the second recording still waits")
        .unwrap();
    assert!(recorded.is_ok(), "{recorded:?}");
}
