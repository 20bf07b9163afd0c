//! The database side under attack (issue 20), measured with a relay process and a writer role
//! that has exactly docs/security.md's grants: how long everyone else waits while the writer
//! holds its transaction open, and what retention deletes after a backdated row and after a
//! long transaction, and whether a stream left behind the pruned point is told.

use super::*;

/// How long the hostile writer keeps its transaction open.
pub(crate) const HOLD_SECONDS: u64 = 12;
const HOLD: Duration = Duration::from_secs(HOLD_SECONDS);

/// The `--retention` of the long-transaction and left-behind scenarios, and how long the long
/// transaction stays open (longer than the period).
const SHORT_RETENTION: &str = "20s";
const LONG_TRANSACTION: Duration = Duration::from_secs(22);

/// docs/security.md's grants for an application role that writes, signals and wants ids.
const WRITER_GRANTS: &str = "GRANT USAGE ON SCHEMA pgrelay TO {role}; \
     GRANT INSERT ON pgrelay.messages TO {role}; \
     GRANT EXECUTE ON FUNCTION pgrelay.signal(text[], text, jsonb, text), \
     pgrelay.publish(text[], jsonb, text, text), pgrelay.message_id(bigint, interval) TO {role}";

/// What the attacks cost.
pub(crate) struct Attacks {
    /// Each operation's wait, without a hold and during one: (what, baseline, during the hold).
    pub(crate) hold_waits: Vec<(&'static str, Duration, Duration)>,
    /// Whether the relay answered `/readyz` 200 throughout the hold.
    pub(crate) ready_during_hold: bool,
    /// Fresh messages deleted by the prune at the next relay start after a backdated row (of
    /// 500).
    pub(crate) backdated_deleted: i64,
    /// Messages of a transaction open longer than the retention period deleted by the next
    /// prune after its commit (of 100).
    pub(crate) long_transaction_deleted: i64,
    /// A stream that was behind when 600 of its messages were pruned: how many of them it
    /// still delivered, the `reset` events it sent, and whether the next message followed.
    pub(crate) behind_delivered: usize,
    pub(crate) behind_resets: usize,
    pub(crate) behind_continued: bool,
}

pub(crate) async fn attacks_phase(bench: &Bench<'_>) -> Res<Attacks> {
    let (hold_waits, ready_during_hold) = hold(bench).await?;
    let backdated_deleted = backdated(bench).await?;
    let long_transaction_deleted = long_transaction(bench).await?;
    let (behind_delivered, behind_resets, behind_continued) = left_behind(bench).await?;
    Ok(Attacks {
        hold_waits,
        ready_during_hold,
        backdated_deleted,
        long_transaction_deleted,
        behind_delivered,
        behind_resets,
        behind_continued,
    })
}

/// A fresh database with a writer role (named after it) holding docs/security.md's grants;
/// returns the owner's URL and the writer's.
async fn database_with_writer(bench: &Bench<'_>, name: &str) -> Res<(String, String)> {
    let url = create_database(bench.cluster, bench.admin, name).await?;
    let role = format!("{name}_writer");
    let owner = connect(&url, "pgrelay-bench").await?;
    owner
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; {}",
            WRITER_GRANTS.replace("{role}", &role)
        ))
        .await?;
    let writer_url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    Ok((url, writer_url))
}

/// The next event on `stream` that `wanted` accepts, within `patience`; when it arrived.
async fn wait_for(
    stream: &mut OpenStream,
    patience: Duration,
    mut wanted: impl FnMut(&SseEvent) -> bool,
) -> Res<Instant> {
    let deadline = Instant::now() + patience;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        while !stream.items.is_empty() {
            if let SseItem::Event(event) = stream.items.remove(0) {
                if wanted(&event) {
                    return Ok(Instant::now());
                }
            }
        }
        let read = tokio::time::timeout_at(deadline.into(), stream.socket.read(&mut buffer))
            .await
            .map_err(|_| format!("the awaited event did not arrive within {patience:?}"))??;
        if read == 0 {
            return Err("the stream ended".into());
        }
        stream.decoder.feed(&buffer[..read], &mut stream.items)?;
    }
}

/// Whether `event` is a message or signal whose payload says `"by": by`.
fn by(event: &SseEvent, by: &str) -> bool {
    let Some(data) = event.data.as_deref() else {
        return false;
    };
    serde_json::from_str::<Value>(data).is_ok_and(|data| data["payload"]["by"] == by)
}

/// The waits of every operation another party does, once without a hold and once while a
/// writer holds its transaction open after firing everything it may (a message, `SET
/// CONSTRAINTS ALL IMMEDIATE`, `pgrelay.signal`, `pgrelay.publish`).
async fn hold(bench: &Bench<'_>) -> Res<(Vec<(&'static str, Duration, Duration)>, bool)> {
    progress(format!(
        "attacks: a writer holds its transaction open for {HOLD:?}…"
    ));
    let (url, writer_url) = database_with_writer(bench, "bench_attack_hold").await?;
    let owner = connect(&url, "pgrelay-bench").await?;
    // Consent for presence: alice wrote to bob.
    owner
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, sender, payload) \
             VALUES ('{alice,bob}', 'alice', '{}')",
        )
        .await?;
    let mut relay = RelayChild::spawn(bench.relay_bin, &url, bench.logs.file("relay-hold.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let hour = Duration::from_secs(3600);
    let mut bob = open_stream(relay.addr, &bench.keys.mint("bob", hour, &[]), None).await?;
    let publisher = bench.keys.mint("carol", hour, &["publish"]);

    let baseline =
        everyone_else(&relay, &owner, &mut bob, &publisher, bench.keys, "before").await?;
    // Alice's stream closes with the baseline; her presence must go offline before it can
    // come back online.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let holder = connect(&writer_url, "pgrelay-bench-holder").await?;
    holder
        .batch_execute(
            "BEGIN; \
             INSERT INTO pgrelay.messages (participants, payload) VALUES ('{bob}', '{\"by\":\"holder\"}'); \
             SET CONSTRAINTS ALL IMMEDIATE; \
             SELECT pgrelay.signal('{bob}', 'typing', '{\"by\":\"holder\"}'); \
             SELECT pgrelay.publish('{bob}', '{\"by\":\"holder\"}')",
        )
        .await?;
    let held_at = Instant::now();
    let readiness = {
        let addr = relay.addr;
        tokio::spawn(async move {
            let mut ready = true;
            while held_at.elapsed() < HOLD {
                ready &= matches!(http_get(addr, "/readyz", None).await, Ok((200, _)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ready
        })
    };
    let during = everyone_else(&relay, &owner, &mut bob, &publisher, bench.keys, "during").await;
    tokio::time::sleep(HOLD.saturating_sub(held_at.elapsed())).await;
    holder.batch_execute("COMMIT").await?;
    let ready = readiness.await?;
    let during = during?;
    relay.stop();

    let waits = baseline
        .into_iter()
        .zip(during)
        .map(|((what, before), (_, held))| (what, before, held))
        .collect::<Vec<_>>();
    for (what, before, held) in &waits {
        progress(format!(
            "  {what}: {:.1} ms without a hold, {:.1} ms during it",
            before.as_secs_f64() * 1e3,
            held.as_secs_f64() * 1e3
        ));
    }
    Ok((waits, ready))
}

/// What the others do, each timed: three `POST /v1/messages` (to the answer), a
/// `POST /v1/signals` and an owner's `INSERT` (to bob's stream), and presence (alice opens a
/// stream: to bob's `presence` event).
async fn everyone_else(
    relay: &RelayChild,
    owner: &Client,
    bob: &mut OpenStream,
    publisher: &str,
    keys: &Keys,
    label: &str,
) -> Res<Vec<(&'static str, Duration)>> {
    let patience = HOLD + Duration::from_secs(10);
    let base = format!("http://{}", relay.addr);
    let http = reqwest::Client::new();
    let mut waits = Vec::new();
    for what in [
        "POST /v1/messages #1",
        "POST /v1/messages #2",
        "POST /v1/messages #3",
    ] {
        let sent = Instant::now();
        let status = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(publisher)
            .json(&json!({"participants": ["bob"], "payload": {"by": label}}))
            .send()
            .await?
            .status();
        if status != 201 {
            return Err(format!("POST /v1/messages answered {status}").into());
        }
        waits.push((what, sent.elapsed()));
    }
    let sent = Instant::now();
    let status = http
        .post(format!("{base}/v1/signals"))
        .bearer_auth(publisher)
        .json(&json!({"participants": ["bob"], "kind": "typing", "payload": {"by": label}}))
        .send()
        .await?
        .status();
    if status != 202 {
        return Err(format!("POST /v1/signals answered {status}").into());
    }
    let arrived = wait_for(bob, patience, |event| {
        event.event.as_deref() == Some("typing") && by(event, label)
    })
    .await?;
    waits.push(("signal, POST to bob's stream", arrived - sent));

    let owner_label = format!("owner {label}");
    owner
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             VALUES ('{bob}', jsonb_build_object('by', $1::text))",
            &[&owner_label],
        )
        .await?;
    let inserted = Instant::now();
    let arrived = wait_for(bob, patience, |event| by(event, &owner_label)).await?;
    waits.push(("owner's INSERT to bob's stream", arrived - inserted));

    let alice_token = keys.mint("alice", Duration::from_secs(60), &[]);
    let opened = Instant::now();
    let alice = open_stream(relay.addr, &alice_token, None).await?;
    let arrived = wait_for(bob, patience, |event| {
        event.event.as_deref() == Some("presence")
            && event
                .data
                .as_deref()
                .and_then(|data| serde_json::from_str::<Value>(data).ok())
                .is_some_and(|data| data["online"] == true)
    })
    .await?;
    waits.push(("presence, stream open to bob's event", arrived - opened));
    drop(alice);
    Ok(waits)
}

/// 500 fresh messages, then one backdated to 2000; the relay restarts (which prunes at once):
/// how many of the fresh ones are gone.
async fn backdated(bench: &Bench<'_>) -> Res<i64> {
    progress("attacks: 500 fresh messages and one backdated to 2000, then a relay restart…");
    let (url, writer_url) = database_with_writer(bench, "bench_attack_backdated").await?;
    let log = bench.logs.file("relay-backdated.log");
    let mut relay = RelayChild::spawn(bench.relay_bin, &url, log.clone())?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let writer = connect(&writer_url, "pgrelay-bench-writer").await?;
    writer
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('fresh', n) FROM generate_series(1, 500) n; \
             INSERT INTO pgrelay.messages (participants, payload, created_at) \
             VALUES ('{alice}', '{}', '2000-01-01')",
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.stop();
    let mut relay = RelayChild::spawn(bench.relay_bin, &url, log)?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    // The prune at start runs beside the listener; give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.stop();
    let owner = connect(&url, "pgrelay-bench").await?;
    let kept: i64 = owner
        .query_one(
            "SELECT count(*) FROM pgrelay.messages WHERE payload ? 'fresh'",
            &[],
        )
        .await?
        .get(0);
    progress(format!("  {} of 500 fresh messages deleted", 500 - kept));
    Ok(500 - kept)
}

/// With `--retention 20s`, a transaction open 22 s commits 100 messages; the relay's next
/// prune (it prunes every 10 s) runs within 12 s of the commit: how many of them it deleted.
async fn long_transaction(bench: &Bench<'_>) -> Res<i64> {
    progress(format!(
        "attacks: --retention {SHORT_RETENTION}, a transaction open {LONG_TRANSACTION:?} commits 100 messages…"
    ));
    let (url, writer_url) = database_with_writer(bench, "bench_attack_long").await?;
    let mut relay = RelayChild::spawn_with(
        bench.relay_bin,
        &url,
        bench.logs.file("relay-long.log"),
        &["--retention", SHORT_RETENTION],
    )?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let writer = connect(&writer_url, "pgrelay-bench-writer").await?;
    writer
        .batch_execute(
            "BEGIN; INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n) FROM generate_series(1, 100) n",
        )
        .await?;
    tokio::time::sleep(LONG_TRANSACTION).await;
    writer.batch_execute("COMMIT").await?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    relay.stop();
    let owner = connect(&url, "pgrelay-bench").await?;
    let kept: i64 = owner
        .query_one("SELECT count(*) FROM pgrelay.messages", &[])
        .await?
        .get(0);
    progress(format!(
        "  {} of 100 deleted within 12 s of the commit",
        100 - kept
    ));
    Ok(100 - kept)
}

/// A stream whose reader stops reading falls behind: 600 messages of 32 KiB fill its socket,
/// its inbox overflows, and it will have to catch up from its cursor. The relay prunes them
/// (`--retention 20s`) before the reader reads again. Returns the messages of the 600 the
/// stream still delivered, the `reset` events it sent before going on, and whether the next
/// message arrived.
async fn left_behind(bench: &Bench<'_>) -> Res<(usize, usize, bool)> {
    progress("attacks: a stream that stops reading, behind the pruned point…");
    let url = create_database(bench.cluster, bench.admin, "bench_attack_behind").await?;
    let mut relay = RelayChild::spawn_with(
        bench.relay_bin,
        &url,
        bench.logs.file("relay-behind.log"),
        // The stream is stalled on purpose for longer than the default 30 s.
        &["--retention", SHORT_RETENTION, "--write-timeout", "120s"],
    )?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let hour = Duration::from_secs(3600);
    let mut alice = open_stream(relay.addr, &bench.keys.mint("alice", hour, &[]), None).await?;
    let owner = connect(&url, "pgrelay-bench").await?;
    owner
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice}', jsonb_build_object('n', n, 'pad', repeat('x', 32768)) \
               FROM generate_series(1, 600) n",
        )
        .await?;
    // The relay prunes every 10 s with this retention, and a message 20 s after its commit.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let left: i64 = owner
            .query_one("SELECT count(*) FROM pgrelay.messages", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the relay did not prune the messages".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    owner
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{\"by\":\"after\"}')",
        )
        .await?;
    let (mut delivered, mut resets) = (0, 0);
    let continued = wait_for(&mut alice, Duration::from_secs(20), |event| {
        match event.event.as_deref() {
            Some("reset") => resets += 1,
            Some("message") if !by(event, "after") => delivered += 1,
            _ => {}
        }
        by(event, "after")
    })
    .await
    .is_ok();
    relay.stop();
    progress(format!(
        "  {delivered} of 600 delivered, then {resets} reset(s); the next message arrived: {continued}"
    ));
    Ok((delivered, resets, continued))
}
