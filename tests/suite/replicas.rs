//! Read replicas (`--replica-url`): catch-ups and history pages are read from a streaming
//! replica whenever its replay has reached what the read must see, and from the primary
//! otherwise, so a paused, lagging or stopped replica never loses or holds back an event.
//!
//! Each test runs its own primary and a real streaming replica of it (`pg_basebackup -R`),
//! because pausing a replica's replay pauses it for every database of the cluster. Most run
//! without heartbeat passes: each pass is a new position the replica would have to replay
//! first, and what a test waited for must stay what reads need.

use std::time::Duration;

use crate::common::*;
use pgrelay::Settings;
use pgrelay_cluster::TempCluster;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_postgres::Client;

/// A primary with a migrated database, a streaming replica of it, and a relay reading both.
struct Replicated {
    /// Kept running for the test's length.
    _primary: TempCluster,
    replica: TempCluster,
    /// Connected to the primary's database as its owner.
    client: Client,
    relay: Relay,
}

impl Replicated {
    /// Starts the primary (committing synchronously, as a production server does, so what
    /// commits is streamed at once), the replica and a relay on `settings`.
    async fn start(settings: Settings) -> Replicated {
        let primary = primary_cluster(&[]).await;
        let db = primary.url("relay");
        let replica = primary
            .start_replica()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let relay = Relay::launch(RelayOptions {
            replica_url: Some(replica.url("relay")),
            settings,
            ..RelayOptions::new(&db)
        })
        .await;
        let client = connect(&db).await;
        Replicated {
            _primary: primary,
            replica,
            client,
            relay,
        }
    }

    /// A session on the replica's copy of the database.
    async fn replica_client(&self) -> Client {
        connect(&self.replica.url("relay")).await
    }

    /// Waits until the replica has replayed everything the primary has written so far.
    async fn replayed(&self) {
        let target: i64 = self
            .client
            .query_one(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let replica = self.replica_client().await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let replayed: i64 = replica
                .query_one(
                    "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if replayed >= target {
                return;
            }
            assert!(Instant::now() < deadline, "the replica never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops (or resumes) the replica's replay: it keeps receiving WAL, and shows nothing new.
    async fn pause_replay(&self, paused: bool) {
        let call = if paused {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        self.replica_client()
            .await
            .batch_execute(call)
            .await
            .unwrap();
    }

    /// A reads counter of `/metrics`: `read` (catch_up, history, message), `source` (replica,
    /// primary) and `reason`.
    async fn reads(&self, read: &str, source: &str, reason: &str) -> u64 {
        let name = format!(
            "pgrelay_reads_total{{read=\"{read}\",source=\"{source}\",reason=\"{reason}\"}}"
        );
        metric(&self.relay.base, &name).await
    }

    /// The rows `read` took from `source`.
    async fn rows(&self, read: &str, source: &str) -> u64 {
        let name = format!("pgrelay_read_rows_total{{read=\"{read}\",source=\"{source}\"}}");
        metric(&self.relay.base, &name).await
    }
}

/// A throwaway primary committing synchronously, as a production server does (so what commits
/// is streamed at once), with `settings` besides, and a migrated database `relay` in it.
async fn primary_cluster(settings: &[(&str, &str)]) -> TempCluster {
    cluster_with(&[&[("synchronous_commit", "on")], settings].concat())
        .await
        .0
}

/// Every message event a stream resuming after `since` receives until it has been quiet for
/// a moment: their ids, in order.
async fn resume_ids(relay: &Relay, sub: &str, since: i64) -> Vec<i64> {
    let mut stream = relay.subscribe(sub, "", Some(since)).await;
    let mut ids = Vec::new();
    while let Some(event) = stream.next_within(Duration::from_millis(700)).await {
        if event.is_opening() || event.data.is_none() {
            continue;
        }
        ids.push(event.id.unwrap().parse().unwrap());
    }
    ids
}

/// Resumes `sub` after `since` until the stream was caught up from the replica (tries until
/// `PATIENCE`: a replay that takes longer than the relay waits sends a read to the primary),
/// checking that every attempt receives exactly `expected`.
async fn resume_from_replica(setup: &Replicated, sub: &str, since: i64, expected: &[i64]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = setup.reads("catch_up", "replica", "replayed").await;
        assert_eq!(resume_ids(&setup.relay, sub, since).await, expected);
        if setup.reads("catch_up", "replica", "replayed").await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up was read from the replica"
        );
    }
}

/// Streams that resume are caught up from the replica and receive exactly their messages, and
/// history pages are read there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_streams_and_history_read_from_the_replica() {
    let setup = Replicated::start(no_heartbeat_passes()).await;
    for n in 0..30 {
        let to: &[&str] = if n % 3 == 0 { &["bob"] } else { &["alice"] };
        insert(&setup.client, to, json!({"n": n})).await;
    }
    let alice = ids_for(&setup.client, "alice").await;
    let bob = ids_for(&setup.client, "bob").await;
    assert_eq!((alice.len(), bob.len()), (20, 10));
    setup.replayed().await;

    resume_from_replica(&setup, "alice", 0, &alice).await;
    resume_from_replica(&setup, "bob", bob[4], &bob[5..]).await;
    assert!(setup.rows("catch_up", "replica").await >= 5);

    let token = setup.relay.token("bob", &[]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ids = history_ids(&setup.relay.base, &token, "since_id=0").await;
        assert_eq!(ids, bob);
        if setup.reads("history", "replica", "replayed").await > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no history read on the replica");
    }
    assert!(setup.rows("history", "replica").await >= 10);
    for gauge in ["pgrelay_replica_lag_bytes", "pgrelay_replica_lag_seconds"] {
        assert!(
            try_metric(&setup.relay.base, gauge).await.is_some(),
            "{gauge}"
        );
    }
}

/// With the replica's replay paused, streams resuming after messages it has not replayed
/// receive every one of them (from the primary, after the relay's short wait), and so do
/// live streams; once replay resumes, catch-ups go back to the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_loses_and_holds_back_nothing() {
    let setup = Replicated::start(no_heartbeat_passes()).await;
    insert(&setup.client, &["alice"], json!({"n": 0})).await;
    let first = ids_for(&setup.client, "alice").await;
    setup.replayed().await;
    resume_from_replica(&setup, "alice", 0, &first).await;

    setup.pause_replay(true).await;
    let mut live = setup.relay.subscribe("alice", "", None).await;
    live.opening_position().await;
    for n in 1..=5 {
        insert(&setup.client, &["alice"], json!({"n": n})).await;
    }
    let all = ids_for(&setup.client, "alice").await;
    for id in &all[1..] {
        assert_eq!(live.next_message().await.0, *id, "live delivery goes on");
    }
    assert_eq!(resume_ids(&setup.relay, "alice", first[0]).await, all[1..]);
    assert_eq!(resume_ids(&setup.relay, "alice", 0).await, all);
    assert!(
        setup.reads("catch_up", "primary", "lagging").await >= 2,
        "the catch-ups the replica could not serve went to the primary"
    );
    let token = setup.relay.token("alice", &[]);
    let page = history_page(&setup.relay.base, &token, "since_id=0").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), all.len());

    setup.pause_replay(false).await;
    setup.replayed().await;
    resume_from_replica(&setup, "alice", 0, &all).await;
}

/// A stopped replica: reads fall back to the primary and nothing is lost, `/readyz` stays
/// green, and once the replica is back the relay reads from it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_falls_back_and_is_retried() {
    let mut setup = Replicated::start(no_heartbeat_passes()).await;
    insert(&setup.client, &["alice"], json!({"n": 0})).await;
    setup.replica.stop().await.unwrap();
    insert(&setup.client, &["alice"], json!({"n": 1})).await;
    let ids = ids_for(&setup.client, "alice").await;
    assert_eq!(resume_ids(&setup.relay, "alice", 0).await, ids);
    assert_eq!(resume_ids(&setup.relay, "alice", ids[0]).await, ids[1..]);
    let token = setup.relay.token("alice", &[]);
    let page = history_page(&setup.relay.base, &token, "since_id=0").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, &setup.relay.base).await, 200);
    assert_eq!(
        setup.reads("catch_up", "replica", "replayed").await,
        0,
        "nothing was read from a stopped replica"
    );
    assert_eq!(
        metric(&setup.relay.base, "pgrelay_replica_up").await,
        0,
        "/metrics says the replica is down"
    );

    setup.replica.restart().await.unwrap();
    setup.replayed().await;
    resume_from_replica(&setup, "alice", 0, &ids).await;
    assert_eq!(metric(&setup.relay.base, "pgrelay_replica_up").await, 1);
}

/// A replica promoted to a primary of its own no longer follows the primary, and may be
/// written to: it is never read again, even for positions it had replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_not_read() {
    let setup = Replicated::start(no_heartbeat_passes()).await;
    for n in 0..2 {
        insert(&setup.client, &["alice"], json!({"n": n})).await;
    }
    let ids = ids_for(&setup.client, "alice").await;
    setup.replayed().await;
    resume_from_replica(&setup, "alice", 0, &ids).await;

    let promoted = setup.replica_client().await;
    promoted.batch_execute("SELECT pg_promote()").await.unwrap();
    promoted
        .execute("DELETE FROM pgrelay.messages WHERE id = $1", &[&ids[0]])
        .await
        .unwrap();
    let before = setup.reads("catch_up", "replica", "replayed").await;
    assert_eq!(resume_ids(&setup.relay, "alice", 0).await, ids);
    assert_eq!(resume_ids(&setup.relay, "alice", 0).await, ids);
    assert_eq!(
        setup.reads("catch_up", "replica", "replayed").await,
        before,
        "nothing read on the promoted server"
    );
}

/// A message announced live as `oversized` can be read whole at once, by id and in a history
/// page, while the replica has not replayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_readable_at_once_while_replay_is_paused() {
    let settings = Settings {
        max_event_bytes: 1000,
        ..no_heartbeat_passes()
    };
    let setup = Replicated::start(settings).await;
    let mut live = setup.relay.subscribe("alice", "", None).await;
    live.opening_position().await;
    setup.pause_replay(true).await;
    crate::oversized::insert_blob(&setup.client, &["alice"], 5000).await;
    let (id, kind, _) = live.next_message().await;
    assert_eq!(kind, "oversized");

    let token = setup.relay.token("alice", &[]);
    let whole = reqwest::Client::new()
        .get(format!("{}/v1/messages/{id}", setup.relay.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200, "readable at once by id");
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["payload"]["blob"].as_str().unwrap().len(), 5000);
    let page = history_page(&setup.relay.base, &token, &format!("since_id={}", id - 1)).await;
    assert_eq!(page["messages"][0]["id"], id, "and in a history page");
    assert!(setup.reads("message", "primary", "lagging").await >= 1);

    setup.pause_replay(false).await;
    setup.replayed().await;
    let deadline = Instant::now() + PATIENCE;
    while setup.reads("message", "replica", "replayed").await == 0 {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/messages/{id}", setup.relay.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "no whole read on the replica");
    }
}

/// While the replica lags, a revocation and a membership change take effect at once: both are
/// read on the primary, never on a replica that has not replayed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_revocation_are_exact_while_the_replica_lags() {
    let setup = Replicated::start(no_heartbeat_passes()).await;
    setup
        .client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.memberships (member text, room text, PRIMARY KEY (member, room));
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg('#' || room), '{}') FROM app.memberships
                  WHERE member = participant $$;",
        )
        .await
        .unwrap();
    let mallory = setup.relay.token("mallory", &[]);
    let dave = setup.relay.token("dave", &[]);
    setup.replayed().await;
    setup.pause_replay(true).await;

    setup
        .client
        .batch_execute(
            "INSERT INTO app.memberships VALUES ('dave', 'team');
             SELECT pgrelay.rooms_changed(VARIADIC ARRAY['dave']);
             SELECT pgrelay.revoke_tokens('mallory');",
        )
        .await
        .unwrap();
    insert(&setup.client, &["#team"], json!({"n": 1})).await;
    let team = ids_for_addresses(&setup.client, &["#team".to_owned()]).await;

    assert_json_error(
        history(&setup.relay.base, &mallory, "since_id=0").await,
        401,
        "token_revoked",
        "a revoked token's history read",
    )
    .await;
    let ids = history_ids(&setup.relay.base, &dave, "since_id=0").await;
    assert_eq!(ids, team, "the new member reads the room at once");
}

/// The `id:` of every `event: message` block of an SSE body, in order.
fn message_ids(body: &str) -> Vec<i64> {
    body.split("\n\n")
        .filter(|block| block.lines().any(|line| line == "event: message"))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|line| line.strip_prefix("id: "))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

/// Shared catch-ups answer a stream from the tail, pages read in earlier rounds, and with a
/// replica the rounds may read different servers: round 1 reads the primary after retention
/// pruned ids up to P there (so the tail holds nothing at or below P), round 2 the replica,
/// which has replayed the listener's position but not the prune (its `pruned_through` is still
/// 0). A stream whose cursor lies below P, answered in round 2, must still hear `reset`: the
/// tail keeps the highest retention bounds any of its reads saw. (Before, it reported the
/// latest read's, and the stream skipped the messages up to P in silence; found by an outside
/// review.) The replica applies commits 6 s late (`recovery_min_apply_delay`); bob's and
/// alice's clients stop reading and are released at chosen moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_catch_up_after_a_prune_the_replica_has_not_replayed_says_reset() {
    let primary = primary_cluster(&[("recovery_min_apply_delay", "6s")]).await;
    let db = primary.url("relay");
    let replica = primary.start_replica().await.unwrap();
    let client = connect(&db).await;
    let relay = Relay::launch(RelayOptions {
        replica_url: Some(replica.url("relay")),
        settings: no_heartbeat_passes(),
        ..RelayOptions::new(&db)
    })
    .await;

    let w = stalled_stream(&relay, "bob").await;
    let v = stalled_stream(&relay, "alice").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let big = |who: &str, from: i32, to: i32| {
        format!(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{{{who}}}', jsonb_build_object('big', g, 'blob', repeat('x', 40000)) \
               FROM generate_series({from}, {to}) g"
        )
    };
    // Bob's client stalls (its socket is full) early in his rows; alice's in her first batch,
    // her stream holding its share of it; her second batch arrives while it is stalled.
    client.batch_execute(&big("bob", 1, 150)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.batch_execute(&big("alice", 1, 250)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.batch_execute(&big("alice", 251, 400)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .batch_execute(
            "INSERT INTO pgrelay.messages (participants, payload) \
             SELECT '{alice,bob}', jsonb_build_object('small', g) FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    let alice_ids = ids_for(&client, "alice").await;
    // Retention will prune through the last big message.
    let pruned_through: i64 = client
        .query_one(
            "SELECT max(id) FROM pgrelay.messages WHERE payload ? 'big'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The listener's last pass (its position: M) is done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();

    // T+4 s: retention prunes, as pgrelay's pruner does (no listener pass follows); the
    // replica applies it at T+10 s.
    tokio::time::sleep_until(t + Duration::from_secs(4)).await;
    client
        .batch_execute(&format!(
            "BEGIN; DELETE FROM pgrelay.messages WHERE id <= {pruned_through}; \
             UPDATE pgrelay.retention SET pruned_through = greatest(pruned_through, {pruned_through}); \
             COMMIT"
        ))
        .await
        .unwrap();

    // T+4.5 s: bob's client reads again: round 1, on the primary (the replica has not applied
    // M yet), builds the tail from bob's cursor.
    tokio::time::sleep_until(t + Duration::from_millis(4500)).await;
    let bob = tokio::spawn(drain(w, Duration::from_secs(4)));
    // Resuming streams of alice keep the tail in use (one at least every second).
    let keep = {
        let base = relay.base.clone();
        let token = relay.token("alice", &[]);
        tokio::spawn(async move {
            for _ in 0..20 {
                let mut s = Subscriber::open(&base, &token, "", Some(pruned_through)).await;
                let _ = s.next_within(Duration::from_millis(300)).await;
                drop(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // T+6.2 s: the replica has applied M (T+~6) but not the prune (T+10): alice's client
    // reads again; her catch-up is answered in a round read on the replica.
    tokio::time::sleep_until(t + Duration::from_millis(6200)).await;
    let alice_body = drain(v, Duration::from_secs(3)).await;
    let bob_body = bob.await.unwrap();
    keep.abort();

    let received = message_ids(&alice_body);
    let replica_reads = metric(
        &relay.base,
        "pgrelay_reads_total{read=\"catch_up\",source=\"replica\",reason=\"replayed\"}",
    )
    .await;
    assert!(replica_reads > 0, "no catch-up was read on the replica");
    assert!(!message_ids(&bob_body).is_empty(), "bob's stream went on");
    let last_received = received
        .iter()
        .copied()
        .filter(|id| *id <= pruned_through)
        .max()
        .unwrap_or(0);
    let skipped = alice_ids
        .iter()
        .filter(|id| **id > last_received && **id <= pruned_through)
        .count();
    assert!(
        alice_body.contains("history_truncated") || skipped == 0,
        "alice's stream skipped {skipped} messages without a reset"
    );
}

/// The replica at `--replica-url` is replaced by one that has replayed less (a standby rebuilt
/// behind the same address, or a pooler that now leads to another): the lag gauge shows how
/// far behind the new one is. Before, it reported the highest position any check had seen,
/// the old replica's, and read 0 bytes behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_replica_that_is_behind_shows_its_lag() {
    let primary = primary_cluster(&[]).await;
    let db = primary.url("relay");
    let client = connect(&db).await;
    // The replacement, its replay held where the primary is now.
    let behind = primary.start_replica().await.unwrap();
    let behind_client = connect(&behind.url("relay")).await;
    wait_replayed(&client, &behind_client).await;
    behind_client
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS x FROM generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    let current = primary.start_replica().await.unwrap();
    let proxy = Proxy::start(current.port()).await;
    let relay = Relay::launch(RelayOptions {
        replica_url: Some(format!(
            "postgres://postgres@127.0.0.1:{}/relay",
            proxy.port
        )),
        settings: no_heartbeat_passes(),
        ..RelayOptions::new(&db)
    })
    .await;
    // A pass, which records the primary's position past the filler.
    insert(&client, &["alice"], json!({"n": 0})).await;
    wait_replayed(&client, &connect(&current.url("relay")).await).await;
    let gauge = |name: &'static str| {
        let base = relay.base.clone();
        async move { try_metric(&base, name).await }
    };
    let deadline = Instant::now() + PATIENCE;
    while gauge("pgrelay_replica_lag_bytes").await != Some(0.0)
        || gauge("pgrelay_replica_up").await != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the current replica never read as caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The current replica goes away, and its address leads to the one behind.
    proxy.set_upstream(behind.port());
    current.shutdown().await.unwrap();
    let gap = (insert_lsn(&client).await - replay_lsn(&behind_client).await) as f64;
    assert!(gap > 1e6, "the replacement is {gap} bytes behind");
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        let up = gauge("pgrelay_replica_up").await;
        let lag = gauge("pgrelay_replica_lag_bytes").await.unwrap_or(0.0);
        if up == Some(1.0) && lag >= gap / 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replacement, {gap} bytes behind, reads up {up:?} and {lag} bytes behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primary's WAL insert position.
async fn insert_lsn(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The replica's replay position.
async fn replay_lsn(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the replica behind `replica` has replayed what `primary` has written so far.
async fn wait_replayed(primary: &Client, replica: &Client) {
    // A record of its own, so that the insert position is not a fresh segment's header (after
    // a WAL switch), which replay never reports.
    primary
        .batch_execute("SELECT pg_logical_emit_message(false, 'review', 'x')")
        .await
        .unwrap();
    let target = insert_lsn(primary).await;
    let deadline = Instant::now() + PATIENCE;
    while replay_lsn(replica).await < target {
        let now = replay_lsn(replica).await;
        assert!(
            Instant::now() < deadline,
            "the replica never caught up: {now} < {target}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--replica-url` names a hot standby of another cluster (a staging replica, a replica of
/// the wrong primary), whose replay position is past the primary's: the relay must not read
/// there (before, it did, and alice received that cluster's messages instead of her own;
/// found by an outside review). Replicas are checked for the primary's system identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_cluster_is_not_read() {
    // The relay's real database.
    let primary = primary_cluster(&[]).await;
    let db = primary.url("relay");
    let client = connect(&db).await;

    // Another, unrelated cluster with its own pgrelay database, and a standby of it.
    let other = primary_cluster(&[]).await;
    let other_client = connect(&other.url("relay")).await;
    for n in 0..5 {
        insert(&other_client, &["alice"], json!({"foreign": n})).await;
    }
    number_pending(&other_client).await;
    // Its WAL is further along than the primary's (any busy cluster's would be).
    let target = insert_lsn(&client).await + 64 * 1024 * 1024;
    while insert_lsn(&other_client).await < target {
        other_client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler VALUES ('x'); \
                 SELECT pg_switch_wal()",
            )
            .await
            .unwrap();
    }
    // A record after the last switch, so that replay can reach the insert position.
    other_client
        .batch_execute("INSERT INTO filler VALUES ('y')")
        .await
        .unwrap();
    let other_replica = other.start_replica().await.unwrap();
    let other_replica_client = connect(&other_replica.url("relay")).await;
    wait_replayed(&other_client, &other_replica_client).await;

    let relay = Relay::launch(RelayOptions {
        replica_url: Some(other_replica.url("relay")),
        settings: no_heartbeat_passes(),
        ..RelayOptions::new(&db)
    })
    .await;
    insert(&client, &["alice"], json!({"own": 0})).await;
    let own = ids_for(&client, "alice").await;
    // Let the relay's listener route it and the replica check run.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        resume_ids(&relay, "alice", 0).await,
        own,
        "alice receives exactly her messages of the primary"
    );
}

/// After an unplanned failover the primary P is gone, standby S1 (which had not received P's
/// last transactions) is promoted and becomes the relay's database, and standby S2, which had
/// replayed them, is still in recovery on the old timeline as the relay's `--replica-url`.
/// S2's replay position is past every position of the new primary, and its rows under the same
/// ids are the lost ones: the relay must not read there (before, alice received the lost
/// messages and missed hers; found by an outside review). Replicas are checked for the
/// primary's timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_left_on_the_old_timeline_after_a_failover_is_not_read() {
    let mut old_primary = primary_cluster(&[]).await;
    let old = connect(&old_primary.url("relay")).await;
    insert(&old, &["alice"], json!({"before_failover": 0})).await;
    number_pending(&old).await;

    let mut s1 = old_primary.start_replica().await.unwrap();
    let s2 = old_primary.start_replica().await.unwrap();
    wait_replayed(&old, &connect(&s1.url("relay")).await).await;
    wait_replayed(&old, &connect(&s2.url("relay")).await).await;

    // S1 falls out (stopped); the old primary commits more, which only S2 receives.
    s1.stop().await.unwrap();
    for n in 0..3 {
        insert(&old, &["alice"], json!({"lost_in_failover": n})).await;
    }
    number_pending(&old).await;
    old.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS x FROM generate_series(1, 30000) g",
    )
    .await
    .unwrap();
    let s2_client = connect(&s2.url("relay")).await;
    wait_replayed(&old, &s2_client).await;
    drop(old);
    old_primary.stop().await.unwrap();

    // Failover: S1 is promoted (timeline 2, forked before the lost transactions).
    s1.restart().await.unwrap();
    let admin = connect(&s1.url("relay")).await;
    admin.batch_execute("SELECT pg_promote()").await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let recovering: bool = admin
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        if !recovering {
            break;
        }
        assert!(Instant::now() < deadline, "S1 never left recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        replay_lsn(&s2_client).await > insert_lsn(&admin).await,
        "S2 looks ahead of the new primary"
    );

    let relay = Relay::launch(RelayOptions {
        replica_url: Some(s2.url("relay")),
        settings: no_heartbeat_passes(),
        ..RelayOptions::new(&s1.url("relay"))
    })
    .await;
    insert(&admin, &["alice"], json!({"after_failover": 0})).await;
    let own = ids_for(&admin, "alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        resume_ids(&relay, "alice", 0).await,
        own,
        "alice receives exactly her messages of the primary"
    );
}

/// History reads that arrive together share one read of the primary's WAL position: a flood
/// costs the primary one connection for their positions, not one each before their permits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_arriving_together_share_a_position_read() {
    let setup = Replicated::start(no_heartbeat_passes()).await;
    let deadline = Instant::now() + PATIENCE;
    while metric(&setup.relay.base, "pgrelay_replica_up").await != 1 {
        assert!(Instant::now() < deadline, "the replica never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reads = || metric(&setup.relay.base, "pgrelay_primary_position_reads_total");
    let before = reads().await;
    let requests = 40;
    let pages = (0..requests).map(|n| {
        let token = setup.relay.token(&format!("reader{n}"), &[]);
        let base = setup.relay.base.clone();
        async move { history_page(&base, &token, "since_id=0").await }
    });
    futures::future::join_all(pages).await;
    let position_reads = reads().await - before;
    eprintln!("reads_arriving_together_share_a_position_read: {position_reads} for {requests}");
    assert!(
        (1..requests).contains(&position_reads),
        "{position_reads} reads of the primary's position for {requests} requests at once"
    );
}
