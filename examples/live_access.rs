//! Access that changes while streams are open (issue 21, items 1 and 2), measured on two
//! `pgrelay serve` processes sharing one database:
//!
//! ```text
//! cargo build --release && cargo run --release --example live_access -- target/release/pgrelay
//! ```
//!
//! 1. **Membership changes.** A writer inserts messages to `#a` and `#b` without pause while
//!    dave's membership (a watched table) flips between `#a` and `#b` 20 times; dave's stream
//!    is open on the *other* instance. Reports the messages of a room delivered while he was
//!    not in it (after the change that removed it; target 0) and those missed while he was
//!    (after the change that added it; target 0), with each change's position read from the
//!    table.
//! 2. **Revocation.** Three streams of mallory on each instance; `pgrelay.revoke_tokens`
//!    commits; reports the time from the commit until each stream has ended (after `event:
//!    revoked`), over 5 rounds.
//! 3. **What revocations cost a stream open.** The primary-key lookup folded into the query
//!    every open makes, timed inside PostgreSQL over 100,000 lookups with 10,000 revocations
//!    stored.
//!
//! Everything runs on 127.0.0.1 and stops by itself.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use serde_json::Value;

#[path = "support/relay_process.rs"]
mod relay_process;
use relay_process::{setup, BoxError, Relay, Setup};

const SECRET: &str = "live-access-example-secret-0123456789";

/// Membership flips in phase 1.
const FLIPS: usize = 20;

/// Opens `/v1/stream` and hands every event (opening included) to the returned channel until
/// the stream ends, which closes the channel.
async fn stream(
    base: &str,
    token: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<SseEvent>, BoxError> {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/stream"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut parser = SseParser::new();
        while let Some(Ok(chunk)) = body.next().await {
            for item in parser.feed(&chunk) {
                if let SseItem::Event(event) = item {
                    if send.send(event).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(receive)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Setup {
        binary,
        _cluster,
        url,
        db,
    } = setup("live_access").await?;
    let one = Relay::start(&binary, &url, SECRET).await?;
    let two = Relay::start(&binary, &url, SECRET).await?;
    let keys = Keys::from_secret_list(SECRET)?;
    let token = |sub: &str| keys.mint(sub, Duration::from_secs(3600), &[]);

    // 1. Membership changes, the stream on instance two.
    db.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.members (member text, room text, PRIMARY KEY (member, room));
         INSERT INTO app.members VALUES ('dave', '#a');
         CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
         LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
             SELECT coalesce(array_agg(room), '{}') FROM app.members WHERE member = participant $$;
         SELECT pgrelay.watch_membership('app.members'::regclass,
                                         participant => 'NEW.member', room => 'NEW.room');",
    )
    .await?;
    let mut dave = stream(&two.base, &token("dave")).await?;
    let opened: i64 = dave
        .recv()
        .await
        .ok_or("no opening")?
        .id
        .ok_or("no position")?
        .parse()?;
    let writing = {
        let url = url.clone();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            for n in 0..4000 {
                let room = if n % 2 == 0 { "#a" } else { "#b" };
                client
                    .execute(
                        "INSERT INTO pgrelay.messages (participants, payload) \
                         VALUES (ARRAY[$1], jsonb_build_object('n', $2::int))",
                        &[&room, &n],
                    )
                    .await?;
            }
            Ok::<_, BoxError>(())
        })
    };
    for flip in 0..FLIPS {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (from, to) = if flip % 2 == 0 {
            ("#a", "#b")
        } else {
            ("#b", "#a")
        };
        db.batch_execute(&format!(
            "BEGIN; DELETE FROM app.members WHERE member = 'dave' AND room = '{from}';
             INSERT INTO app.members VALUES ('dave', '{to}'); COMMIT;"
        ))
        .await?;
    }
    writing.await??;
    db.batch_execute(
        "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{dave}', '{\"end\": true}')",
    )
    .await?;
    let mut delivered: Vec<(i64, String)> = Vec::new();
    let mut room_events = 0;
    while let Some(event) = dave.recv().await {
        let data: Value = serde_json::from_str(event.data.as_deref().unwrap_or("null"))?;
        match event.event.as_deref() {
            Some("rooms") => room_events += 1,
            Some("message") if data["payload"]["end"] == true => break,
            Some("message") => delivered.push((
                data["id"].as_i64().ok_or("no id")?,
                data["participants"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )),
            _ => {}
        }
    }
    // What dave should have received: each room's messages while the latest change (in id
    // order, the newest version winning) held it.
    let rows = db
        .query(
            "SELECT id, control, participants[1], payload FROM pgrelay.messages \
              WHERE id > $1 AND (control OR participants && '{#a,#b}') ORDER BY id",
            &[&opened],
        )
        .await?;
    let mut rooms: HashSet<String> = HashSet::from(["#a".to_owned()]);
    let mut version = 0;
    let mut expected: Vec<(i64, String)> = Vec::new();
    for row in &rows {
        let (id, control, to, payload): (i64, bool, String, Value) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if control {
            let newer = payload["version"].as_i64().unwrap_or(0);
            if newer > version {
                version = newer;
                rooms = payload["rooms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|room| room.as_str().map(str::to_owned))
                    .collect();
            }
        } else if rooms.contains(&to) {
            expected.push((id, to));
        }
    }
    let delivered_set: HashSet<&(i64, String)> = delivered.iter().collect();
    let expected_set: HashSet<&(i64, String)> = expected.iter().collect();
    let leaked = delivered_set.difference(&expected_set).count();
    let missed = expected_set.difference(&delivered_set).count();
    println!(
        "membership: {FLIPS} flips among {} messages; on the other instance: {} delivered, \
         {room_events} rooms events, removed room's messages delivered after the change: \
         {leaked}, added room's messages missed: {missed}, in id order: {}",
        rows.len() - FLIPS,
        delivered.len(),
        delivered.windows(2).all(|pair| pair[0].0 < pair[1].0)
    );

    // 2. Revocation: the time from the commit to the end of every stream, on both instances.
    for round in 1..=5 {
        // `iat` has whole seconds: wait for a second after the previous cutoff.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mallory = token("mallory");
        let mut streams = Vec::new();
        for relay in [&one, &two, &one, &two, &one, &two] {
            let mut events = stream(&relay.base, &mallory).await?;
            events.recv().await.ok_or("no opening")?;
            streams.push(events);
        }
        db.batch_execute("SELECT pgrelay.revoke_tokens('mallory')")
            .await?;
        let committed = Instant::now();
        let ends = futures::future::join_all(streams.into_iter().map(|mut events| async move {
            let mut revoked = false;
            while let Some(event) = events.recv().await {
                revoked |= event.event.as_deref() == Some("revoked");
            }
            (revoked, committed.elapsed())
        }))
        .await;
        let all_revoked = ends.iter().all(|(revoked, _)| *revoked);
        let slowest = ends.iter().map(|(_, took)| *took).max().unwrap_or_default();
        println!(
            "revocation round {round}: 6 streams (3 per instance) ended {} after the commit \
             (slowest), all after `revoked`: {all_revoked}",
            humantime::format_duration(Duration::from_micros(slowest.as_micros() as u64))
        );
    }

    // 3. The revocation lookup an open makes, with 10,000 revocations stored.
    db.batch_execute(
        "INSERT INTO pgrelay.revocations (participant, issued_before) \
         SELECT 'user-' || n, now() FROM generate_series(1, 10000) AS n ON CONFLICT DO NOTHING;
         ANALYZE pgrelay.revocations;",
    )
    .await?;
    let timed = |sql: &'static str| {
        let db = &db;
        async move {
            let start = Instant::now();
            db.batch_execute(sql).await?;
            Ok::<_, BoxError>(start.elapsed())
        }
    };
    let with = timed(
        "SELECT count(*) FROM generate_series(1, 100000) AS g \
          WHERE EXISTS (SELECT 1 FROM pgrelay.revocations r \
                         WHERE r.participant = 'user-' || (g % 20000) \
                           AND 1e9 < extract(epoch FROM r.issued_before))",
    )
    .await?;
    let without = timed(
        "SELECT count(*) FROM generate_series(1, 100000) AS g WHERE 'user-' || (g % 20000) <> ''",
    )
    .await?;
    println!(
        "revocation check: {:.2} µs per stream open (100,000 lookups, 10,000 revocations stored)",
        with.saturating_sub(without).as_secs_f64() * 1e6 / 100_000.0
    );
    println!(
        "relays' RSS at the end: {} KiB and {} KiB",
        one.rss_kib(),
        two.rss_kib()
    );
    Ok(())
}
