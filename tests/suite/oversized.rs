//! Bounded whatever the row: a stored message larger than `--max-event-bytes` reaches streams
//! and history pages as the `oversized` stand-in (its own id, in order), is read whole only
//! with `GET /v1/messages/{id}` by someone it is addressed to, and no row of any size, read by
//! any number of streams, swells the relay.

use std::time::Duration;

use crate::common::*;
use pgrelay::Settings;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

/// Inserts a message for `participants` whose payload is `{"blob": "<bytes hex characters>"}`:
/// md5 hex, which PostgreSQL's compression cannot shrink, so it is as large on disk as in JSON.
pub async fn insert_blob(client: &Client, participants: &[&str], bytes: usize) {
    let participants: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
    let md5s = bytes.div_ceil(32) as i32;
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT $1, jsonb_build_object('blob', left(string_agg(md5(g::text), ''), $3)) \
               FROM generate_series(1, $2) g",
            &[&participants, &md5s, &(bytes as i32)],
        )
        .await
        .unwrap();
}

/// The stored size the relay measures: the payload's JSON text and the participants' text.
async fn stored_bytes(client: &Client, id: i64) -> i64 {
    client
        .query_one(
            "SELECT (octet_length(payload::text) + octet_length(participants::text))::int8 \
               FROM pgrelay.messages WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

/// `small`, `big` (1.5 MB, over the default 1 MiB), `small` for alice and bob: returns the
/// three ids once numbered.
async fn small_big_small(client: &Client) -> [i64; 3] {
    insert(client, &["alice", "bob"], json!({"n": 1})).await;
    insert_blob(client, &["alice", "bob"], 1_500_000).await;
    insert(client, &["alice", "bob"], json!({"n": 3})).await;
    let ids = ids_for(client, "alice").await;
    ids.try_into().expect("three messages")
}

/// Checks `data` is the stand-in of message `id`, sent by nobody, for alice and bob.
fn assert_stand_in(data: &Value, id: i64, bytes: i64) {
    assert_eq!(
        data,
        &json!({"id": id, "kind": "message", "sender": null,
                "participants": ["alice", "bob"], "bytes": bytes}),
        "the stand-in carries what routing and display need, never the payload"
    );
}

/// Reads the next three message events of `stream` and checks they are small, the stand-in of
/// the big one, small, with their own ids in order.
async fn assert_small_stand_in_small(stream: &mut Subscriber, ids: [i64; 3], bytes: i64) {
    let (id, kind, data) = stream.next_message().await;
    assert_eq!(
        (id, kind.as_str(), &data["payload"]),
        (ids[0], "message", &json!({"n": 1}))
    );
    let (id, kind, data) = stream.next_message().await;
    assert_eq!((id, kind.as_str()), (ids[1], "oversized"));
    assert_stand_in(&data, ids[1], bytes);
    let (id, kind, data) = stream.next_message().await;
    assert_eq!(
        (id, kind.as_str(), &data["payload"]),
        (ids[2], "message", &json!({"n": 3}))
    );
}

/// A row over `--max-event-bytes` arrives as `event: oversized` with its own `id:`, between its
/// neighbours, live and in catch-up; history pages carry the same stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_row_arrives_as_a_stand_in_live_in_catch_up_and_in_history() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let mut live = relay.subscribe("alice", "", None).await;
    let opened_at = live.opening_position().await;

    let ids = small_big_small(&client).await;
    let bytes = stored_bytes(&client, ids[1]).await;
    assert_small_stand_in_small(&mut live, ids, bytes).await;

    let mut resumed = relay.subscribe("bob", "", Some(opened_at)).await;
    assert_small_stand_in_small(&mut resumed, ids, bytes).await;

    let page = history_page(&relay.base, &relay.token("alice", &[]), "since_id=0").await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{page}");
    assert_eq!(messages[0]["payload"], json!({"n": 1}));
    assert_stand_in(&messages[1], ids[1], bytes);
    assert_eq!(messages[2]["payload"], json!({"n": 3}));
    assert_eq!(page["next_since_id"], ids[2]);
}

/// `GET /v1/messages/{id}` as `token`.
async fn get_message(base: &str, token: &str, id: impl std::fmt::Display) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/messages/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `GET /v1/messages/{id}` answers the message whole (the stream's JSON, payload included) to
/// anyone whose addresses it names (the participant, a room from the token or from
/// `pgrelay.member_rooms`, everyone) and 404 to anyone else, so nothing about it leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_message_is_read_only_by_its_audience() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    let [_, big, _] = small_big_small(&client).await;
    insert_blob(&client, &["#ops"], 1_200_000).await;
    insert(&client, &["*"], json!({"to": "everyone"})).await;
    number_pending(&client).await;
    let ids = ids_for_addresses(&client, &["#ops".into(), "*".into()]).await;
    let [room, everyone] = ids.try_into().unwrap();

    let whole = get_message(&relay.base, &relay.token("bob", &[]), big).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["id"], big);
    assert_eq!(whole["kind"], "message");
    assert_eq!(whole["participants"], json!(["alice", "bob"]));
    assert_eq!(whole["payload"]["blob"].as_str().unwrap().len(), 1_500_000);
    assert!(whole["created_at"].as_str().unwrap().ends_with('Z'));

    // A stranger learns nothing, not even that the id exists.
    let mallory = relay.token("mallory", &[]);
    for id in [big, room] {
        let refused = get_message(&relay.base, &mallory, id).await;
        assert_json_error(refused, 404, "not_found", "a stranger").await;
    }
    let anyone = get_message(&relay.base, &mallory, everyone).await;
    assert_eq!(
        anyone.json::<Value>().await.unwrap()["payload"]["to"],
        "everyone"
    );

    // A room's members read it: by the token's claim, or by the app's membership.
    let claimed = relay
        .keys
        .mint_with_rooms("carol", Duration::from_secs(600), &[], &["#ops"]);
    let by_claim = get_message(&relay.base, &claimed, room).await;
    assert_eq!(by_claim.status(), 200);
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[] \
             LANGUAGE sql STABLE AS $$ SELECT CASE WHEN participant = 'dave' \
             THEN ARRAY['#ops'] ELSE '{}'::text[] END $$",
        )
        .await
        .unwrap();
    let dave = relay.token("dave", &[]);
    let by_membership: Value = get_message(&relay.base, &dave, room)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_membership["participants"], json!(["#ops"]));

    // No such id, a malformed one.
    let token = relay.token("alice", &[]);
    let missing = get_message(&relay.base, &token, everyone + 100).await;
    assert_json_error(missing, 404, "not_found", "no such id").await;
    let malformed = get_message(&relay.base, &token, "12abc").await;
    assert_json_error(malformed, 400, "bad_request", "malformed id").await;
    let unauthenticated = reqwest::get(format!("{}/v1/messages/{big}", relay.base)).await;
    assert_json_error(unauthenticated.unwrap(), 401, "missing_token", "no token").await;
}

/// The attack: one 40 MB row and 12 streams resuming from before it. Each stream used to
/// read the whole row into the relay (the catch-up page always holds one row): from 19 MiB to
/// 981 MiB. Now each gets the stand-in and the relay stays within 64 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forty_megabyte_row_and_twelve_resuming_streams_do_not_swell_the_relay() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": "before"})).await;
    let [before] = ids_for(&client, "alice").await.try_into().unwrap();
    let relay = RelayProcess::start(&db, &[], None).await;
    let rss_before = relay.rss_kib();

    insert_blob(&client, &["alice"], 40_000_000).await;
    insert(&client, &["alice"], json!({"n": "after"})).await;
    let ids = ids_for(&client, "alice").await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        streams.push(relay.subscribe("alice", "", Some(before)).await);
    }
    let sampler = {
        let pid = relay.child.id();
        tokio::spawn(async move {
            let mut peak = 0;
            while let Some(rss) = rss_kib_of(pid) {
                peak = rss.max(peak);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    for stream in &mut streams {
        let mut received = Vec::new();
        while received.len() < 2 {
            // Generous: before the fix each stream carried the whole row.
            let event = stream.next_within(6 * PATIENCE).await.expect("an event");
            if let (Some(id), Some(kind)) = (event.id, event.event) {
                if kind != "position" {
                    received.push((id.parse::<i64>().unwrap(), kind));
                }
            }
        }
        assert_eq!(received[0].0, ids[1]);
        assert_eq!(received[1], (ids[2], "message".to_owned()));
    }
    let rss_after = relay.rss_kib();
    drop(streams);
    drop(relay);
    let peak = sampler.await.unwrap().max(rss_after);
    eprintln!("relay RSS: {rss_before} KiB before, {peak} KiB at the peak");
    assert!(
        peak.saturating_sub(rss_before) <= 64 * 1024,
        "one 40 MB row and 12 resuming streams grew the relay from {rss_before} KiB to {peak} KiB"
    );
}

/// Names cost the relay more than their text: each is a string in the message's list of
/// participants besides its bytes in the event's JSON and in its frame, so a page of messages
/// with many short names holds many times what their text measures. Counting names by their
/// text, the relay grew by 47 MiB while its budget said 11 MB were held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_many_short_names_are_held_within_the_budget() {
    names_are_held_within_the_budget("'n' || g").await;
}

/// As above, with names no two rows share (`n<row>.<name>`), so that the shared tail's index
/// of its rows by address has as many keys as the rows have names. Held as a map, with a copy
/// of each name, a list and a table slot, the index outgrew the page itself outside the
/// budget: the relay grew by 14.5–16.1 MiB, against 5.4–6.1 MiB with the index counted and
/// compact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_names_no_rows_share_are_held_within_the_budget() {
    names_are_held_within_the_budget("'n' || m || '.' || g").await;
}

/// 100 messages, each to alice and 9,999 names from `name` (an SQL expression of the row's
/// number `m` and the name's `g`), and 40 streams that resume over them from one cursor and
/// never read, on a relay with a 16 MiB `--catch-up-budget`. The budget counts at most those
/// 16 MiB; the bound, three quarters of them, is measured rather than derived: with every
/// page's memory counted the relay grows by 5.4–6.3 MiB, and the uncounted index made it grow
/// by 14.5–16.1 MiB. One worker thread, as on a small host: each further worker's allocator
/// arena adds its own slack (with four, 6–9 MiB), which is not what the budget bounds.
async fn names_are_held_within_the_budget(name: &str) {
    let db = fresh_database().await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": "before"})).await;
    let [before] = ids_for(&client, "alice").await.try_into().unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 SELECT ARRAY['alice'] || ARRAY(SELECT {name} FROM generate_series(1, 9999) g), \
                        jsonb_build_object('n', m) \
                   FROM generate_series(1, 100) m"
            ),
            &[],
        )
        .await
        .unwrap();
    // Numbered here, so the relay's own pass never reads them: only the catch-ups do.
    number_pending(&client).await;
    let budget = 16 * 1024 * 1024;
    let flags = ["--catch-up-budget", "16MiB", "--worker-threads", "1"];
    let relay = RelayProcess::start(&db, &flags, None).await;
    let rss_before = relay.rss_kib();
    let token = relay.token("alice", &[]);
    let request = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: {before}\r\n\r\n"
    );
    let mut streams = Vec::new();
    for _ in 0..40 {
        let mut socket = slow_reader(address(&relay.base).parse().unwrap()).await;
        socket.write_all(request.as_bytes()).await.unwrap();
        streams.push(socket);
    }
    let pid = relay.child.id();
    let mut peak = 0;
    // Long enough for every stream to have read its first pages and stalled on its socket.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        peak = rss_kib_of(pid).unwrap_or(0).max(peak);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = metric(&relay.base, "pgrelay_catch_up_reserved_bytes").await;
    drop(streams);
    drop(relay);
    eprintln!("relay RSS: {rss_before} KiB before, {peak} KiB at the peak; {held} bytes reserved");
    assert!(held > 0, "no stream was holding a page");
    assert!(
        peak.saturating_sub(rss_before) <= 3 * budget / 4 / 1024,
        "pages of names ({name}) grew the relay from {rss_before} KiB to {peak} KiB \
         with a budget of {budget} bytes"
    );
}

/// A page holds its last row whatever its size (the cut counts the rows before it). A row of
/// 10,000 names of about 256 `"`, which JSON escapes, takes about 13.7 MB once read (its
/// stand-in's JSON, its frame, its names), against the 4.7 MB a page reserves at the defaults:
/// the budget said 4.7 MB were held while a stream held the whole row, for each of the readers
/// at once. Such a page now takes what it lacks if the budget has it (carol's, here), else is
/// given back and read again under a reservation of its size once the budget has that
/// (alice's, by her own query: carol's row leaves too little of the 24 MiB budget until she
/// goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_a_row_larger_than_its_reservation_is_counted_whole() {
    // Alice's cursor is far behind: she reads alone.
    let (rows, relay) = LargeRows::start(true, "24MiB").await;

    // Carol's stream stalls on her row's frame, which is larger than the sockets' buffers.
    let carol = rows.open(&relay, "carol", 0).await;
    rows.assert_counted(&relay, "carol").await;

    let mut alice = rows.open(&relay, "alice", rows.before).await;
    let reread = async {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while LargeRows::rereads(&relay).await < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no read was done again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut reading = Box::pin(rows.read_up_to_large(&mut alice));
    // She reads her row again once the budget has room for all of it: once carol goes.
    let waited = tokio::select! {
        _ = reread => true,
        _ = &mut reading => false,
    };
    drop(carol);
    if waited {
        reading.await;
    } else {
        drop(reading);
    }
    rows.assert_counted(&relay, "alice").await;
    assert!(waited, "alice's read was not done again");
    drop(alice);
    rows.assert_delivered(&relay).await;
}

/// As above, through the shared tail (alice's cursor is recent), which holds a page of her
/// smaller rows when it reads her large one, so that the 14 MiB budget cannot add what the
/// read lacks. The tail must drop its page to read the row again: otherwise it waits for
/// budget only it can give back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_page_with_a_row_larger_than_its_reservation_is_counted_whole() {
    let (rows, relay) = LargeRows::start(false, "14MiB").await;

    let mut alice = rows.open(&relay, "alice", rows.before).await;
    tokio::time::timeout(2 * PATIENCE, rows.read_up_to_large(&mut alice))
        .await
        .expect("alice's stream reaches her large row");
    rows.assert_counted(&relay, "alice").await;
    assert!(
        LargeRows::rereads(&relay).await >= 1,
        "alice's read was not done again"
    );
    drop(alice);
    rows.assert_delivered(&relay).await;
}

/// As above, with a second stream that resumes inside the tail's first page and asks while
/// the tail reads its next one. When that read drops the first page to read a large row
/// again, the request is no longer covered and must read alone: answered from the pages left,
/// it lost the rows between its cursor and them (45 of 201 arrived). Carol first holds
/// most of the budget, so the first round waits for her and the second stream's request
/// joins the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_below_the_pages_a_shared_read_drops_reads_alone() {
    let (rows, relay) = LargeRows::start(false, "14MiB").await;
    let carol = rows.open(&relay, "carol", 0).await;
    rows.assert_counted(&relay, "carol").await;
    let mut first = rows.open(&relay, "alice", rows.before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cursor = rows.ids[100];
    let mut second = relay.subscribe("alice", "", Some(cursor)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(carol);
    rows.read_up_to_large(&mut first).await;
    // The first stream holds the large row, and the second's own read needs room too.
    drop(first);
    let expected: Vec<i64> = rows.ids.iter().copied().filter(|&id| id > cursor).collect();
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let Some(event) = second.next_within(PATIENCE).await else {
            break;
        };
        if let (false, Some(id)) = (event.is_opening(), event.id) {
            received.push(id.parse::<i64>().unwrap());
        }
    }
    assert_eq!(
        received, expected,
        "every row after its cursor, once, in order"
    );
    assert!(
        LargeRows::rereads(&relay).await >= 1,
        "the shared read was not done again"
    );
}

/// The rows of the three tests above: carol's large row; then, beyond the 50,000 ids within which
/// a stream may join a shared read, alice's: `before`, 300 of 4 KB (a page and a bit), her
/// large one, and one after it. All numbered, so the relay's own pass never reads them: only
/// the catch-ups do.
struct LargeRows {
    before: i64,
    /// Alice's rows after `before`.
    ids: Vec<i64>,
    large: i64,
}

impl LargeRows {
    /// A fresh database with these rows, and a relay on it with a page budget of `budget`.
    async fn start(alice_far_behind: bool, budget: &str) -> (LargeRows, RelayProcess) {
        let db = fresh_database().await;
        let rows = Self::insert(&connect(&db).await, alice_far_behind).await;
        let relay = RelayProcess::start(&db, &["--catch-up-budget", budget], None).await;
        (rows, relay)
    }

    async fn insert(client: &Client, alice_far_behind: bool) -> LargeRows {
        Self::insert_large(client, "carol").await;
        number_pending(client).await;
        let far =
            "SELECT setval('pgrelay.message_id_seq', nextval('pgrelay.message_id_seq') + 100000)";
        client.batch_execute(far).await.unwrap();
        insert(client, &["alice"], json!({"n": "before"})).await;
        number_pending(client).await;
        let [before] = ids_for(client, "alice").await.try_into().unwrap();
        if alice_far_behind {
            client.batch_execute(far).await.unwrap();
        }
        client
            .batch_execute(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 SELECT '{alice}', jsonb_build_object('text', repeat('x', 4000)) \
                   FROM generate_series(1, 300)",
            )
            .await
            .unwrap();
        Self::insert_large(client, "alice").await;
        insert(client, &["alice"], json!({"n": "after"})).await;
        number_pending(client).await;
        let ids = ids_for(client, "alice").await[1..].to_vec();
        let large = ids[ids.len() - 2];
        LargeRows { before, ids, large }
    }

    /// `first` and 9,999 names of 250 `"` and a number.
    fn names(first: &str) -> Vec<String> {
        let mut names = vec![first.to_owned()];
        names.extend((1..10_000).map(|g| format!("{}{g}", "\"".repeat(250))));
        names
    }

    async fn insert_large(client: &Client, first: &str) {
        client
            .execute(
                "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, '{}')",
                &[&Self::names(first)],
            )
            .await
            .unwrap();
    }

    /// A stream of `sub` from `cursor` whose reader reads only when told to.
    async fn open(&self, relay: &RelayProcess, sub: &str, cursor: i64) -> tokio::net::TcpStream {
        let mut socket = slow_reader(address(&relay.base).parse().unwrap()).await;
        let request = format!(
            "GET /v1/stream HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {}\r\n\
             Last-Event-ID: {cursor}\r\n\r\n",
            relay.token(sub, &[])
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        socket
    }

    /// Reads alice's `stream` until her large row's frame begins, and no further: the frame is
    /// larger than the sockets' buffers, so the stream then holds the row. Every row before it
    /// has arrived once, in order.
    async fn read_up_to_large(&self, stream: &mut tokio::net::TcpStream) {
        let frame = format!("id: {}\nevent: oversized\n", self.large);
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        while !String::from_utf8_lossy(&received).contains(&frame) {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the relay closed the stream");
            received.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&received);
        let lines: Vec<&str> = text.lines().collect();
        let ids: Vec<i64> = lines
            .windows(2)
            .filter(|pair| pair[1] != "event: position")
            .filter_map(|pair| pair[0].strip_prefix("id: ")?.parse().ok())
            .collect();
        let through_large = self.ids.len() - 1;
        assert_eq!(
            ids,
            self.ids[..through_large],
            "alice's rows up to the large one"
        );
    }

    /// Waits for the page budget to count at least what a stream that holds a large row holds
    /// of it: its event's JSON and its frame, each with every name escaped.
    async fn assert_counted(&self, relay: &RelayProcess, sub: &str) {
        let least = 2 * serde_json::to_string(&Self::names(sub)).unwrap().len() as u64;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut held = 0;
        while held < least && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            held = metric(&relay.base, "pgrelay_catch_up_reserved_bytes").await;
        }
        assert!(
            held >= least,
            "{sub}'s stream holds a large row, at least {least} bytes, and the budget counts {held}"
        );
    }

    /// Reads the relay has given back and done again under a larger reservation.
    async fn rereads(relay: &RelayProcess) -> u64 {
        metric(&relay.base, "pgrelay_catch_up_budget_rereads_total").await
    }

    /// Every row of alice's after `before` arrives once, in order, the large one as a stand-in
    /// that names everyone.
    async fn assert_delivered(&self, relay: &RelayProcess) {
        let mut stream = relay.subscribe("alice", "", Some(self.before)).await;
        let mut received = Vec::new();
        while received.len() < self.ids.len() {
            let (id, kind, data) = stream.next_message().await;
            if id == self.large {
                assert_eq!(kind, "oversized");
                assert_eq!(data["participants"].as_array().unwrap().len(), 10_000);
            }
            received.push(id);
        }
        assert_eq!(received, self.ids);
    }
}

/// Catch-ups of many streams share one page budget: each reserves its worst case before it
/// reads and holds what its page holds until the page is written. With a budget smaller than
/// one worst-case page (1 MiB against 1.1 MiB: a reservation then takes all of it), 16 streams resuming over ~2.5 MB each (an oversized row among them) all get
/// every message in order (they wait their turn, nobody waits forever), the relay never
/// reserved more than the budget, and everything is given back once the pages are sent.
///
/// The log's last id lies far above the others, so that the streams are too far behind to share a read
/// (`catch_up`) and each reads its own pages: whether 16 streams that share one read ever wait
/// for the budget depends on how fast each writes its part (tests/suite/storm.rs bounds those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_ups_take_turns_within_one_page_budget() {
    let db = fresh_database().await;
    let max_event_bytes = 64 * 1024;
    let budget = 1024 * 1024;
    let relay = Relay::start_with(
        &db,
        Settings {
            max_event_bytes,
            catch_up_budget: budget,
            ..test_settings()
        },
    )
    .await;
    let client = connect(&db).await;
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{*}', jsonb_build_object('n', n, 'text', repeat('x', 8000)) \
               FROM generate_series(1, 300) n",
            &[],
        )
        .await
        .unwrap();
    insert_blob(&client, &["*"], 100_000).await;
    number_pending(&client).await;
    client
        .execute(
            // The last message is numbered far beyond the 50,000 ids within which a stream
            // may join a shared read, so every page of the others is read alone.
            "SELECT setval('pgrelay.message_id_seq', 1000000)",
            &[],
        )
        .await
        .unwrap();
    // Whether a cursor counts as recent is measured against what the listener has routed, so
    // the readers open only once it has routed the last message. The probe may have read that
    // message from the table (a stream that opens during a pass catches up), but a signal is
    // only ever routed, and one sent now is numbered in a later pass than the last message.
    let mut probe = relay.subscribe("probe", "", None).await;
    insert(&client, &["*"], json!({"n": "last"})).await;
    let expected = ids_for(&client, "*").await;
    assert_eq!(probe.next_message().await.0, *expected.last().unwrap());
    client
        .batch_execute("SELECT pgrelay.signal('{probe}', 'routed')")
        .await
        .unwrap();
    while probe.next().await.event.as_deref() != Some("routed") {}
    let shared_rows_before = metric(&relay.base, "pgrelay_shared_catch_up_rows_total").await;

    let mut readers = tokio::task::JoinSet::new();
    for n in 0..16 {
        let mut stream = relay
            .subscribe(&format!("reader{n}"), "since_id=0", None)
            .await;
        let expected = expected.clone();
        readers.spawn(async move {
            let mut received = Vec::new();
            let mut oversized = 0;
            while received.len() < expected.len() {
                let (id, kind, _) = stream.next_message().await;
                oversized += usize::from(kind == "oversized");
                received.push(id);
            }
            assert_eq!(received, expected, "every message once, in order");
            assert_eq!(oversized, 1);
            stream
        });
    }
    let streams = readers.join_all().await;
    // Rows, not reads: a stream whose last page ended at its byte limit asks once more and,
    // its cursor now recent, may share that read (which finds nothing) with others. (The probe
    // may have read the last message in a shared read before the readers opened.)
    assert_eq!(
        metric(&relay.base, "pgrelay_shared_catch_up_rows_total").await,
        shared_rows_before,
        "each stream read its own pages"
    );
    assert!(
        metric(&relay.base, "pgrelay_catch_up_budget_short_total").await > 0,
        "with room for one page at a time, catch-ups waited for each other"
    );
    let peak = metric(&relay.base, "pgrelay_catch_up_reserved_bytes_peak").await;
    assert!(0 < peak && peak <= budget, "peak {peak} of {budget}");
    assert_eq!(
        metric(&relay.base, "pgrelay_catch_up_budget_bytes").await,
        budget
    );
    // Every page has been written: nothing is held any more.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_catch_up_reserved_bytes").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a page kept its bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
}

/// Whole reads share the fetch budget: a message larger than the budget is refused for good
/// (503 `message_too_large`); while a client that does not read holds an 8 MB message, another
/// read is answered 503 `over_capacity` with `Retry-After` (nothing queues behind it); once that
/// client is gone, the message is read whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_reads_are_bounded_by_the_fetch_budget() {
    use tokio::io::AsyncWriteExt;
    let db = fresh_database().await;
    let relay = Relay::start_with(
        &db,
        Settings {
            fetch_budget: 12 * 1024 * 1024,
            ..test_settings()
        },
    )
    .await;
    let client = connect(&db).await;
    insert_blob(&client, &["alice"], 8_000_000).await;
    insert_blob(&client, &["alice"], 20_000_000).await;
    let [eight, twenty] = ids_for(&client, "alice").await.try_into().unwrap();
    let token = relay.token("alice", &[]);

    let too_large = get_message(&relay.base, &token, twenty).await;
    assert_json_error(too_large, 503, "message_too_large", "over the budget").await;

    let mut stalled = slow_reader(address(&relay.base).parse().unwrap()).await;
    let request = format!(
        "GET /v1/messages/{eight} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_fetch_reserved_bytes").await < 8_000_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = get_message(&relay.base, &token, eight).await;
    let retry_after = busy.headers().get("retry-after").cloned();
    assert_json_error(busy, 503, "over_capacity", "budget taken").await;
    assert!(
        retry_after.is_some(),
        "503 over_capacity says when to retry"
    );

    drop(stalled);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_fetch_reserved_bytes").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed read kept its bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let whole = get_message(&relay.base, &token, eight).await;
    assert_eq!(whole.status(), 200);
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["payload"]["blob"].as_str().unwrap().len(), 8_000_000);
    assert!(metric(&relay.base, "pgrelay_fetch_budget_short_total").await >= 1);
}
