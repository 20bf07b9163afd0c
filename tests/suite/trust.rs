//! The trust boundary: other database logins and token holders are attackers.
//!
//! Each test is one attack from the security review, written against the contract (nothing
//! lost, repeated or reordered; nothing leaked; nothing forged; nothing exhausted).

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// The grants an application role that writes messages gets (see the README's security model).
const WRITER_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA pgrelay TO {role}",
    "GRANT INSERT ON pgrelay.messages TO {role}",
];

/// The grants the README gives a relay role that is not the schema owner.
const RELAY_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA pgrelay TO {role}",
    "GRANT SELECT ON pgrelay.messages, pgrelay.signals, pgrelay.retention, pgrelay.presence, \
     pgrelay.presence_last_seen, pgrelay.message_id_seq, pgrelay.revocations TO {role}",
    "GRANT DELETE ON pgrelay.messages TO {role}",
    "GRANT UPDATE ON pgrelay.retention, pgrelay.presence TO {role}",
    "GRANT SELECT, UPDATE (reported) ON pgrelay.attach_skips TO {role}",
    "GRANT EXECUTE ON FUNCTION pgrelay.sequence(integer), pgrelay.publish_many(jsonb), \
     pgrelay.signal(text[], text, jsonb, text), \
     pgrelay.presence_update(text, text[], text[], interval), pgrelay.presence_expire(interval), \
     pgrelay.presence_visible(text, text), pgrelay.presence_audience(text), \
     pgrelay.member_rooms(text) TO {role}",
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
            let Ok(row) = oracle
                .query_one("SELECT coalesce(max(id), 0) FROM pgrelay.messages", &[])
                .await
            else {
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
        got.extend(
            event
                .data
                .and(event.id)
                .map(|id| id.parse::<i64>().unwrap()),
        );
    }
    assert_eq!(
        got, expected,
        "bob's live stream skipped or reordered messages"
    );
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
        let body = json!({"participants": ["bob"], "kind": "typing",
                          "payload": {"draft": "secret-draft-text"}});
        let response = post(&relay.base, "/v1/signals", &publisher, body).await;
        assert_eq!(response.status(), 202);
        // bob comes online: a presence change for his audience (alice shares a message).
        let mut bob = relay.subscribe("bob", "", None).await;
        bob.opening_position().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert!(
        !heard.is_empty(),
        "the intruder heard wake-ups (the test listens correctly)"
    );
    for payload in &heard {
        for secret in [
            "alice",
            "bob",
            "secret-message-text",
            "secret-draft-text",
            "participant",
        ] {
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
    let writer = Role::create(&db, "writer", WRITER_GRANTS)
        .await
        .connect()
        .await;
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
    let token = relay.token("carol", &["publish"]);
    let body = json!({"participants": ["dave"], "payload": {}});
    let response = post(&relay.base, "/v1/messages", &token, body).await;
    assert_eq!(response.status(), 201);
}

/// Inserts `count` messages of about `size` bytes for `participants` in one transaction.
async fn insert_large(client: &Client, participants: &[&str], count: i64, size: i64) {
    let participants: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT $1, jsonb_build_object('n', n, 'pad', repeat('x', $3::int8::int)) \
             FROM generate_series(1, $2::int8) AS n",
            &[&participants, &count, &size],
        )
        .await
        .unwrap();
}

/// Memory pinned by one token, part 1: a history page is capped in bytes as well as rows,
/// and following `next_since_id` still returns every message exactly once, in order.
#[tokio::test]
async fn history_pages_are_capped_in_bytes() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    insert_large(&app, &["mallory"], 60, 60_000).await;
    let relay = Relay::start(&db).await;
    let token = relay.token("mallory", &[]);
    let mut since = 0;
    let mut got = Vec::new();
    for _ in 0..60 {
        let response = history(&relay.base, &token, &format!("since_id={since}&limit=1000")).await;
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert!(
            body.len() <= 1024 * 1024 + 64 * 1024,
            "one page held {} bytes",
            body.len()
        );
        let page: Value = serde_json::from_slice(&body).unwrap();
        let messages = page["messages"].as_array().unwrap();
        if messages.is_empty() {
            break;
        }
        got.extend(messages.iter().map(|m| m["id"].as_i64().unwrap()));
        since = page["next_since_id"].as_i64().unwrap();
    }
    assert_eq!(got, ids_for(&app, "mallory").await);
}

/// Memory pinned by one token, part 2: one participant's history requests in flight are
/// limited (429), so one token cannot pile up database work and response buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_requests_in_flight_are_limited_per_participant() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    insert(&app, &["mallory", "alice"], json!({})).await;
    let relay = Relay::start(&db).await;
    let token = relay.token("mallory", &[]);
    // Hold every history query in the database until this transaction ends.
    let blocker = connect(&db).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE pgrelay.messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiting: Vec<_> = (0..12)
        .map(|_| {
            let (base, token) = (relay.base.clone(), token.clone());
            tokio::spawn(
                async move { history(&base, &token, "since_id=0").await.status().as_u16() },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another participant is not affected by mallory's pile.
    let alice = relay.token("alice", &[]);
    let alice_request = tokio::spawn({
        let base = relay.base.clone();
        async move { history(&base, &alice, "since_id=0").await.status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let mut statuses = Vec::new();
    for request in waiting {
        statuses.push(request.await.unwrap());
    }
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(refused + served, 12, "{statuses:?}");
    assert_eq!(served, 4, "the default allows 4 in flight: {statuses:?}");
    assert_eq!(alice_request.await.unwrap(), 200);
}

/// Memory pinned by one token, part 3: publishing over HTTP is rate limited per sender, with a
/// `Retry-After` that says when to come back; other senders are not affected.
#[tokio::test]
async fn publishing_is_rate_limited_per_sender() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, pgrelay::Settings::default()).await;
    let publish = |sender: &str| {
        let body = json!({"participants": ["alice"], "payload": {}});
        let token = relay.token(sender, &["publish"]);
        let base = relay.base.clone();
        async move { post(&base, "/v1/messages", &token, body).await }
    };
    let mut refused = None;
    for _ in 0..200 {
        let response = publish("mallory").await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 201);
    }
    let refused = refused.expect("200 messages in a burst were all accepted");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(publish("alice").await.status(), 201);
}

/// Memory pinned by one token, part 4: a stream whose client stops reading is closed by the
/// relay once a write has stalled for the write timeout, instead of holding its buffers
/// forever; history requests whose clients do not read hold at most a page each and are
/// closed too. Prints the relay's RSS under the issue's attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = fresh_database().await;
    let app = connect(&db).await;
    insert_large(&app, &["mallory"], 300, 60_000).await;
    let relay = RelayProcess::start(&db, &["--write-timeout", "1s"], None).await;
    let rss_before = relay.rss_kib();
    let token = relay.token("mallory", &[]);
    let address = relay.base.trim_start_matches("http://").parse().unwrap();
    let mut sockets = Vec::new();
    for n in 0..16 {
        let mut socket = slow_reader(address).await;
        let path = if n == 0 {
            "/v1/stream?since_id=0".to_owned()
        } else {
            "/v1/messages?since_id=0&limit=1000".to_owned()
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        sockets.push(socket);
    }
    // The stream: its 18 MB outgrow the kernel's buffers, the write stalls, and the relay
    // closes it while the client still reads nothing.
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    let mut open_streams = u64::MAX;
    while open_streams > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        open_streams = metric(&relay.base, "pgrelay_subscribers").await;
    }
    eprintln!(
        "relay RSS: {rss_before} KiB before, {} KiB with 16 clients not reading",
        relay.rss_kib()
    );
    assert_eq!(open_streams, 0, "the relay kept a stalled stream open");
    // The history requests: each answer is at most a page, and the connection ends (after the
    // write stalls, or as an idle keep-alive connection) instead of staying for good.
    for (n, socket) in sockets.iter_mut().enumerate().skip(1) {
        let mut total = 0usize;
        let mut buffer = vec![0; 64 * 1024];
        let ended = tokio::time::timeout(2 * PATIENCE, async {
            loop {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => total += read,
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "connection {n} was still open ({total} bytes read)"
        );
        assert!(
            total < 1_200_000,
            "connection {n} got {total} bytes, more than a page"
        );
    }
}

/// Catch-up cannot starve the instance: while 400 streams that never read catch up on 9 MB of
/// messages through a small pool, publishing and `/readyz` keep their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_storm_leaves_publishing_and_readiness_alone() {
    use tokio::io::AsyncWriteExt;
    let db = fresh_database().await;
    let app = connect(&db).await;
    insert_large(&app, &["mallory"], 300, 60_000).await;
    let relay = RelayProcess::start(&db, &["--pool-size", "4"], None).await;
    let token = relay.token("mallory", &[]);
    let address: std::net::SocketAddr = relay.base.trim_start_matches("http://").parse().unwrap();
    pgrelay::open_files::raise_limit(u64::MAX).unwrap();
    let mut storm = Vec::new();
    for _ in 0..400 {
        storm.push(slow_reader(address).await);
    }
    // All at once: every stream asks for its catch-up in the same moment.
    let request = format!(
        "GET /v1/stream?since_id=0 HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    for socket in &mut storm {
        socket.write_all(request.as_bytes()).await.unwrap();
    }
    let http = reqwest::Client::new();
    let publisher = relay.token("alice", &["publish"]);
    for round in 0..10 {
        let ready = http
            .get(format!("{}/readyz", relay.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            200,
            "round {round}: /readyz during the storm"
        );
        let body = json!({"participants": ["bob"], "payload": {"round": round}});
        let posted = post(&relay.base, "/v1/messages", &publisher, body).await;
        assert_eq!(posted.status(), 201, "round {round}: POST during the storm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(storm);
}

/// Settings with presence fast enough to test.
fn quick_presence() -> pgrelay::Settings {
    let mut settings = test_settings();
    settings.presence_debounce = Duration::from_millis(300);
    settings.presence_ttl = Duration::from_secs(2);
    settings
}

/// `GET /v1/presence` as `token`: status and body.
async fn presence_of(base: &str, token: &str, participants: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/presence?participants={participants}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Presence by intrusion: mallory sends alice one message and so tries to follow her presence.
/// Without alice's consent (she never wrote to mallory) mallory learns nothing: no presence
/// event, and 403 from the presence API. Once alice writes back, mallory sees her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_follow_presence_by_writing_first() {
    let db = fresh_database().await;
    let relay = Relay::start_with(&db, quick_presence()).await;
    let write = |sender: &str, to: &str| {
        let body = json!({"participants": [to], "payload": {"text": "hi"}});
        let token = relay.token(sender, &["publish"]);
        let base = relay.base.clone();
        async move { post(&base, "/v1/messages", &token, body).await }
    };
    assert_eq!(write("mallory", "alice").await.status(), 201);
    let mut mallory = relay.subscribe("mallory", "", None).await;
    mallory.keep_presence = true;
    mallory.opening_position().await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let mallory_token = relay.token("mallory", &[]);
    while let Some(event) = mallory.next_within(Duration::from_secs(2)).await {
        assert_ne!(
            event.event.as_deref(),
            Some("presence"),
            "mallory learned alice's presence: {event:?}"
        );
    }
    let refused = presence_of(&relay.base, &mallory_token, "alice").await;
    assert_eq!(refused.status(), 403);

    assert_eq!(write("alice", "mallory").await.status(), 201);
    let allowed = presence_of(&relay.base, &mallory_token, "alice").await;
    assert_eq!(allowed.status(), 200);
    let body: Value = allowed.json().await.unwrap();
    assert_eq!(body["presence"]["alice"]["online"], true);
}

/// Expensive refusals: presence requests are rate limited per caller (429 with Retry-After),
/// so a stranger cannot make the relay compute audiences in a loop.
#[tokio::test]
async fn presence_requests_are_rate_limited() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let token = relay.token("mallory", &[]);
    let names: Vec<String> = (0..100).map(|n| format!("user{n}")).collect();
    let names = names.join(",");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = presence_of(&relay.base, &token, &names).await;
        let status = response.status().as_u16();
        if status == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|&s| s == 403 || s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "40 refusals in a row were never rate limited"
    );
}

/// One bad name stops presence: a token whose `sub` holds a NUL (which PostgreSQL text cannot
/// store) is refused, and presence keeps flowing for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_subject_cannot_stop_presence() {
    let db = fresh_database().await;
    insert(&connect(&db).await, &["alice", "bob"], json!({})).await;
    let relay = Relay::start_with(&db, quick_presence()).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;
    let bad = relay.token("mallory\u{0}", &[]);
    let response = reqwest::get(format!("{}/v1/stream?token={bad}", relay.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "a NUL in sub was accepted");
    drop(response);
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    loop {
        let event = bob.next().await;
        if event.event.as_deref() == Some("presence") {
            let data: Value = serde_json::from_str(&event.data.unwrap()).unwrap();
            assert_eq!(data["participant"], "alice");
            assert_eq!(data["online"], true);
            break;
        }
    }
}

/// Loose names: control and format characters, line and paragraph separators, spaces other
/// than U+0020, default-ignorable and blank-looking characters are refused in a token's `sub`,
/// in participants over HTTP and in rows inserted from SQL, so no name can pass for another.
#[tokio::test]
async fn names_with_invisible_characters_are_refused_everywhere() {
    let db = fresh_database().await;
    let app = connect(&db).await;
    let relay = Relay::start(&db).await;
    let publisher = relay.token("alice", &["publish"]);
    for name in [
        "\u{202E}ecila",
        "ali\u{200B}ce",
        "bob\u{7}",
        "\u{FEFF}carol",
        "alice\u{2028}",
        "alice\u{2029}",
        "alice\u{A0}",
        "ali\u{34F}ce",
        "\u{3164}",
        "\u{115F}\u{1160}",
        "\u{FFA0}",
        "\u{2800}",
        "alice\u{FE0F}",
        "alice\u{E0100}",
    ] {
        let token = relay.token(name, &[]);
        let response = history(&relay.base, &token, "").await;
        assert_eq!(response.status(), 401, "sub {name:?} was accepted");
        let body = json!({"participants": [name], "payload": {}});
        let response = post(&relay.base, "/v1/messages", &publisher, body).await;
        assert_eq!(response.status(), 422, "participant {name:?} was accepted");
        let stored = app
            .execute(
                "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, '{}')",
                &[&vec![name.to_owned()]],
            )
            .await;
        assert!(stored.is_err(), "SQL stored participant {name:?}");
        let stored = app
            .execute(
                "INSERT INTO pgrelay.messages (participants, sender, payload) VALUES ('{bob}', $1, '{}')",
                &[&name],
            )
            .await;
        assert!(stored.is_err(), "SQL stored sender {name:?}");
    }
    for subject in ["#general", "*"] {
        let response = history(&relay.base, &relay.token(subject, &[]), "").await;
        assert_eq!(
            response.status(),
            401,
            "sub {subject:?} names a room or everyone"
        );
    }
    assert!(ids_for(&app, "bob").await.is_empty());
}

/// The name rule is one rule: the relay's (tokens, HTTP) and the SQL one (every stored row)
/// refuse exactly the same code points, checked on every one of them.
#[tokio::test]
async fn rust_and_sql_refuse_the_same_characters_in_names() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    // PostgreSQL text holds no U+0000 and no surrogates; the rest of the code space is asked in
    // one query.
    let refused_in_sql: Vec<i32> = client
        .query_one(
            "SELECT coalesce(array_agg(code ORDER BY code), '{}') FROM generate_series(1, 1114111) code
              WHERE code NOT BETWEEN 55296 AND 57343 AND NOT pgrelay.valid_name(chr(code))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let refused_in_rust: Vec<i32> = (1..=0x10FFFF_u32)
        .filter_map(char::from_u32)
        .filter(|&c| !pgrelay::valid_name(&c.to_string()))
        .map(|c| u32::from(c) as i32)
        .collect();
    let only_sql: Vec<_> = refused_in_sql
        .iter()
        .filter(|code| refused_in_rust.binary_search(code).is_err())
        .map(|code| format!("U+{code:04X}"))
        .collect();
    let only_rust: Vec<_> = refused_in_rust
        .iter()
        .filter(|code| refused_in_sql.binary_search(code).is_err())
        .map(|code| format!("U+{code:04X}"))
        .collect();
    assert!(
        only_sql.is_empty() && only_rust.is_empty(),
        "refused only in SQL: {only_sql:?}; only in Rust: {only_rust:?}"
    );
    assert!(refused_in_rust.len() > 4000, "{}", refused_in_rust.len());
}

/// Signs raw claims JSON with the test secret (HS256), for tokens `mint` would never make.
fn sign_claims(claims: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())
        .unwrap()
        .chain_update(input.as_bytes())
        .finalize()
        .into_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Loose tokens: `pgrelay serve` refuses, by default, a token that lives for decades and one
/// whose claim is repeated (`sub` bob, then `sub` alice); with `--token-audience` and
/// `--token-issuer` it refuses tokens for another relay or from another issuer.
#[tokio::test]
async fn tokens_that_live_forever_or_repeat_a_claim_are_refused() {
    let db = fresh_database().await;
    let relay = RelayProcess::start(
        &db,
        &[
            "--token-audience",
            "chat",
            "--token-issuer",
            "https://app.example",
        ],
        None,
    )
    .await;
    let now = pgrelay::auth::now_unix();
    let good = r#""aud":"chat","iss":"https://app.example""#;
    let cases = [
        (
            format!(r#"{{"sub":"alice","exp":{},{good}}}"#, now + 600),
            200,
        ),
        (
            format!(r#"{{"sub":"alice","exp":1000000000000,{good}}}"#),
            401,
        ),
        (
            format!(
                r#"{{"sub":"bob","exp":{0},"sub":"alice",{good}}}"#,
                now + 600
            ),
            401,
        ),
        (
            format!(
                r#"{{"sub":"alice","exp":{0},"exp":{1},{good}}}"#,
                now + 600,
                now + 900
            ),
            401,
        ),
        (
            format!(
                r#"{{"sub":"alice","exp":{},"aud":"other","iss":"https://app.example"}}"#,
                now + 600
            ),
            401,
        ),
        (
            format!(
                r#"{{"sub":"alice","exp":{},"aud":["x","chat"],"iss":"https://app.example"}}"#,
                now + 600
            ),
            200,
        ),
        (
            format!(r#"{{"sub":"alice","exp":{},"aud":"chat"}}"#, now + 600),
            401,
        ),
    ];
    for (claims, status) in cases {
        let response = history(&relay.base, &sign_claims(&claims), "").await;
        assert_eq!(response.status(), status, "claims {claims}");
    }
}

/// File descriptors: started with a soft open-files limit of 1,024 (a common service default),
/// the relay raises it to the hard limit, so 1,500 clients connecting at once are all served
/// before any header timeout could free a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_files_limit_is_raised() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    pgrelay::open_files::raise_limit(u64::MAX).unwrap();
    let db = fresh_database().await;
    let relay =
        RelayProcess::start_under(&["prlimit", "--nofile=1024:", "--"], &db, &[], None).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");

    let address: std::net::SocketAddr = relay.base.trim_start_matches("http://").parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..1500 {
        clients.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // The header timeout is 10 s: served by then means accepted at once, not after idle
    // connections timed out.
    let served = tokio::time::timeout(Duration::from_secs(8), async {
        let mut answered = 0;
        for client in &mut clients {
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
                .await
                .unwrap();
        }
        for client in &mut clients {
            let mut buffer = [0u8; 256];
            let read = client.read(&mut buffer).await.unwrap_or(0);
            if buffer[..read].starts_with(b"HTTP/1.1 200") {
                answered += 1;
            }
        }
        answered
    })
    .await;
    assert_eq!(served, Ok(1500));
}

/// A role that may only insert messages cannot reach past that: no signal or presence change
/// of its own making, no reading of signals, no lock that orders commits. And a LOGIN-only
/// role that holds the advisory locks pgrelay used to take stalls nobody.
#[tokio::test]
async fn writers_and_strangers_cannot_forge_signals_or_stall_commits() {
    let db = fresh_database().await;
    let writer = Role::create(&db, "writer", WRITER_GRANTS)
        .await
        .connect()
        .await;
    for forbidden in [
        "SELECT pgrelay.send_signal('{bob}', 'presence', '{\"participant\":\"alice\",\"online\":true}', NULL)",
        "SELECT pgrelay.signal('{bob}', 'typing', '{}', 'alice')",
        "SELECT pgrelay.presence_update('fake', '{alice}', '{}', '1 hour')",
        "SELECT pgrelay.publish('{bob}', '{}')",
        "SELECT * FROM pgrelay.signals",
        "SELECT * FROM pgrelay.messages",
        "BEGIN; LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE; COMMIT",
    ] {
        let result = writer.batch_execute(forbidden).await;
        let _ = writer.batch_execute("ROLLBACK").await;
        let error = result.expect_err(forbidden);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{forbidden}: {error}"
        );
    }

    // The keys of the advisory locks of earlier versions (commit order, presence, pruning).
    let stranger = Role::create(&db, "stranger", &[]).await.connect().await;
    stranger
        .batch_execute(
            "SELECT pg_advisory_lock(7395514830127704945); \
             SELECT pg_advisory_lock(7395514830127704947); \
             SELECT pg_advisory_lock(hashtext('pgrelay.presence_expire'))",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let mut carol = relay.subscribe("carol", "", None).await;
    carol.opening_position().await;
    insert(&writer, &["carol"], json!({"text": "not stalled"})).await;
    let (_, _, data) = carol.next_message().await;
    assert_eq!(data["payload"]["text"], "not stalled");
    let pruned = prune_with_a_relay(&db, Duration::ZERO).await;
    assert_eq!(pruned, 1, "pruning ran despite the held lock");
}

/// The README's grants for a relay that does not run as the schema owner are enough for
/// everything it does: streams, publishing, signals, presence, history, reporting attach
/// skips and pruning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_role_with_the_documented_grants_works() {
    let db = fresh_database().await;
    let relay_role = Role::create(&db, "relay", RELAY_GRANTS).await;
    let app = Role::create(&db, "app", WRITER_GRANTS)
        .await
        .connect()
        .await;
    insert(&app, &["alice", "bob"], json!({"text": "from the app"})).await;
    let mut options = RelayOptions::new(&relay_role.url);
    options.settings = quick_presence();
    options.settings.heartbeat = Duration::from_millis(200);
    let relay = Relay::launch(options).await;

    let mut bob = relay.subscribe("bob", "since_id=0", None).await;
    bob.keep_presence = true;
    bob.opening_position().await;
    let (_, _, data) = bob.next_message().await;
    assert_eq!(data["payload"]["text"], "from the app");
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let alice_token = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {"text": "over http"}});
    let posted = post(&relay.base, "/v1/messages", &alice_token, body).await;
    assert_eq!(posted.status(), 201);
    let body = json!({"participants": ["bob"], "kind": "typing", "payload": {}});
    let signalled = post(&relay.base, "/v1/signals", &alice_token, body).await;
    assert_eq!(signalled.status(), 202);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 3 {
        let event = bob.next().await;
        match event.event.as_deref() {
            Some("presence") => seen.insert("presence"),
            Some("typing") => seen.insert("typing"),
            Some("message") => seen.insert("message"),
            _ => false,
        };
    }
    let presence = presence_of(&relay.base, &relay.token("bob", &[]), "alice").await;
    assert_eq!(presence.status(), 200, "{:?}", presence.text().await);
    assert_eq!(history(&relay.base, &alice_token, "").await.status(), 200);
    connect(&db)
        .await
        .batch_execute(
            "CREATE TABLE notes (body text);
             SELECT pgrelay.attach('notes'::regclass, participants => 'NULL');
             INSERT INTO notes VALUES ('to nobody')",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_attach_skips_total").await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the skip was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(prune_with_a_relay(&relay_role.url, Duration::ZERO).await, 2);
}

/// A message id taken by hand (here by the owner, with triggers switched off) makes the next
/// `POST /v1/messages` conflict at commit: that is the relay's problem, answered 503 and
/// logged, never a 422 that blames the client.
#[tokio::test]
async fn an_id_taken_by_hand_is_a_503_not_a_422() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    owner
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             INSERT INTO pgrelay.messages (id, participants, payload) \
             SELECT CASE WHEN is_called THEN last_value + 1 ELSE 1 END, '{carol}', '{}' \
             FROM pgrelay.message_id_seq; COMMIT",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let token = relay.token("alice", &["publish"]);
    let body = json!({"participants": ["bob"], "payload": {}});
    let response = post(&relay.base, "/v1/messages", &token, body).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
}

/// Demo page: it runs only its own code. The Content-Security-Policy allows scripts from this
/// origin and the page's own inline script (by hash) and nothing else, and the page trusts no
/// other relay by default (its `pgrelay-relays` allow-list is empty). The browser test checks
/// the same in Chromium with a crafted `?relay=` link.
#[tokio::test]
async fn the_demo_page_runs_only_its_own_code() {
    use base64::Engine;
    use sha2::Digest;
    let db = fresh_database().await;
    let mut settings = test_settings();
    settings.demo_page = true;
    let relay = Relay::start_with(&db, settings).await;
    let response = reqwest::get(format!("{}/", relay.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let page = response.text().await.unwrap();
    let directive = |name: &str| {
        policy
            .split(';')
            .map(str::trim)
            .find_map(|part| part.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {policy}"))
            .trim()
            .to_owned()
    };
    let script = page
        .split("<script type=\"module\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap();
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    assert_eq!(directive("script-src"), format!("'self' 'sha256-{hash}'"));
    assert_eq!(directive("connect-src"), "'self'");
    assert_eq!(directive("default-src"), "'none'");
    assert!(page.contains(r#"<meta name="pgrelay-relays" content="">"#));
}

/// Tokens in logs: the nginx block we ship logs no request line, because tokens travel in
/// query strings. (tests/suite/proxies.rs checks nginx's real log files when nginx is installed.)
#[test]
fn the_nginx_example_logs_no_query_strings() {
    let config: String = include_str!("../../deploy/nginx-location.conf")
        .lines()
        .map(|line| line.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut locations = 0;
    for block in config.split("location ").skip(1) {
        locations += 1;
        let body = block.split('}').next().unwrap();
        assert!(
            body.lines()
                .any(|line| line.trim_start().starts_with("access_log off;")),
            "a location block keeps nginx's default access log: {body}"
        );
    }
    assert!(locations >= 2);
}

/// The events `stream` receives until the message whose payload is `{"marker": true}`, that
/// one excluded, as `(event name, data)`; the opening `position` is skipped.
async fn events_before_marker(stream: &mut Subscriber) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    loop {
        let event = stream.next().await;
        if event.is_opening() {
            continue;
        }
        let data: Value = serde_json::from_str(event.data.as_deref().unwrap_or("null")).unwrap();
        if data["payload"] == json!({"marker": true}) {
            return events;
        }
        events.push((event.event.unwrap_or_default(), data));
    }
}

/// A writer that shadows `pg_class` with a temporary table ([`PASS_FOR_THE_OWNER`]) cannot
/// write a control row: a forged `rooms` change for mallory would put her in `#secret`, and
/// her open stream would receive a message addressed only to `#secret` (and ignore every real
/// membership change after it, its version being the highest there is). Before migration 15
/// it did; found by an outside review, as were the two attacks below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_forge_a_rooms_change_with_a_temporary_pg_class() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    let relay = Relay::start(&db).await;
    let mut mallory = relay.subscribe("mallory", "", None).await;
    mallory.opening_position().await;

    let writer = Role::create(&db, "writer", WRITER_GRANTS)
        .await
        .connect()
        .await;
    let forged = writer
        .batch_execute(&format!(
            "{PASS_FOR_THE_OWNER}; \
             INSERT INTO pgrelay.messages (participants, kind, payload, control) \
             VALUES ('{{mallory}}', 'rooms', \
                     '{{\"version\": 9007199254740991, \"rooms\": [\"#secret\"]}}', true)"
        ))
        .await;
    insert(
        &owner,
        &["#secret"],
        json!({"text": "members of #secret only"}),
    )
    .await;
    insert(&owner, &["mallory"], json!({"marker": true})).await;

    let seen = events_before_marker(&mut mallory).await;
    assert!(
        seen.is_empty(),
        "mallory's stream heard {seen:?} (the writer's forged control row: {forged:?})"
    );
}

/// A writer that shadows `pg_class` cannot revoke someone else's tokens either: a forged
/// `revoked` row would end bob's open stream, and he would miss the message that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_forge_a_revocation_with_a_temporary_pg_class() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    let relay = Relay::start(&db).await;
    let mut bob = relay.subscribe("bob", "", None).await;
    bob.opening_position().await;

    let writer = Role::create(&db, "writer", WRITER_GRANTS)
        .await
        .connect()
        .await;
    let forged = writer
        .batch_execute(&format!(
            "{PASS_FOR_THE_OWNER}; \
             INSERT INTO pgrelay.messages (participants, kind, payload, control) \
             VALUES ('{{bob}}', 'revoked', '{{\"issued_before\": 99999999999}}', true)"
        ))
        .await;
    insert(&owner, &["bob"], json!({"marker": true})).await;

    let seen = bob.next().await;
    let seen = if seen.is_opening() {
        bob.next().await
    } else {
        seen
    };
    assert_eq!(
        seen.event.as_deref(),
        Some("message"),
        "bob's stream got {seen:?} instead of his message (the writer's forged row: {forged:?})"
    );
}

/// A writer that shadows `pg_class` cannot give its rows explicit placeholder ids: holding
/// open a transaction with the next placeholders, it would make an attached table's insert
/// wait for it and then fail with a duplicate key, although the app's writes never fail
/// because of pgrelay and no writer delays another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_take_the_next_placeholders_with_a_temporary_pg_class() {
    let db = fresh_database().await;
    let owner = connect(&db).await;
    owner
        .batch_execute(
            "CREATE TABLE notes (id bigserial PRIMARY KEY, owner_name text NOT NULL, body text); \
             SELECT pgrelay.attach('public.notes'::regclass, participants => 'ARRAY[NEW.owner_name]')",
        )
        .await
        .unwrap();
    let relay = Relay::start(&db).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;

    let holder = Role::create(&db, "holder", WRITER_GRANTS)
        .await
        .connect()
        .await;
    let taken = holder
        .batch_execute(&format!(
            "{PASS_FOR_THE_OWNER}; BEGIN; \
             INSERT INTO pgrelay.messages (id, pending_id, participants, payload) \
             SELECT -n, -n, '{{holder}}', '{{}}' FROM generate_series(1, 10000) n"
        ))
        .await;

    let app = connect(&db).await;
    let started = std::time::Instant::now();
    let write = tokio::spawn(async move {
        let outcome = app
            .batch_execute("INSERT INTO notes (owner_name, body) VALUES ('alice', 'hello')")
            .await
            .map_err(|error| format!("{error:?}"));
        (outcome, started.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = holder.batch_execute("COMMIT").await;
    let (outcome, waited) = write.await.unwrap();
    assert!(
        outcome.is_ok() && waited < Duration::from_secs(1),
        "the app's insert waited {waited:?} for the writer's transaction and ended {outcome:?} \
         (the writer's placeholders: {taken:?})"
    );
    let (_, _, data) = alice.next_message().await;
    assert_eq!(data["payload"]["body"], "hello");
}

/// A writer that owns a schema cannot bend the kind rule with operators of its own first in
/// its `search_path`: the `messages_kind_valid` CHECK runs `pgrelay.valid_kind` in the
/// writer's session, and before migration 26 its body took `~` and `<>` from that path, so a
/// reserved kind (`presence` here) was stored. Numbering rewrote it to `message` before any
/// relay read it, but the CHECK must hold by itself. Found by an outside review.
#[tokio::test]
async fn a_writers_own_operators_cannot_bend_the_kind_rule() {
    let db = fresh_database().await;
    let grants = [WRITER_GRANTS, &["CREATE SCHEMA mine AUTHORIZATION {role}"]].concat();
    let writer = Role::create(&db, "writer", &grants).await.connect().await;
    writer
        .batch_execute(
            "CREATE FUNCTION mine.always(text, text) RETURNS boolean \
                 LANGUAGE sql IMMUTABLE AS 'SELECT true'; \
             CREATE FUNCTION mine.never(text, text) RETURNS boolean \
                 LANGUAGE sql IMMUTABLE AS 'SELECT false'; \
             CREATE OPERATOR mine.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = mine.always); \
             CREATE OPERATOR mine.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = mine.always); \
             CREATE OPERATOR mine.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mine.never); \
             SET search_path = mine, pg_catalog",
        )
        .await
        .unwrap();
    for kind in ["presence", "not a kind"] {
        let stored = writer
            .execute(
                "INSERT INTO pgrelay.messages (participants, kind, payload) \
                 VALUES ('{bob}', $1, '{}')",
                &[&kind],
            )
            .await;
        let error = stored.expect_err(&format!("the kind {kind:?} was stored"));
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{error}"
        );
    }
}
