//! Fault injection against a real PostgreSQL: the LISTEN session killed, the whole cluster
//! restarted, a half-open LISTEN connection (through the tests' small TCP proxy, `common::Proxy`), a
//! reconnect that stalls, pool connections killed mid-dispatch, and tokens expiring under a
//! writer. Each test owns its cluster, and each ends by checking that every subscriber got
//! exactly its messages, once, in increasing id order, on the connection it opened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use pgrelay::auth::Keys;
use pgrelay::Settings;
use pgrelay_cluster::TempCluster;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_postgres::Client;

/// A fresh throwaway cluster with the schema migrated into its `postgres` database.
async fn migrated_cluster() -> (TempCluster, String) {
    let cluster = TempCluster::start().await.unwrap();
    let db = cluster.url("postgres");
    pgrelay::migrate::migrate(&db, "pgrelay").await.unwrap();
    (cluster, db)
}

/// The test settings with a fast heartbeat, so lost connections are found quickly.
fn fast_settings() -> Settings {
    let mut settings = test_settings();
    settings.heartbeat = Duration::from_millis(200);
    settings
}

/// One message event as a reader task saw it.
#[derive(Clone, Debug)]
struct Got {
    id: i64,
    data: Value,
    at: Instant,
}

/// A subscriber read continuously by a background task, so arrival times are exact.
struct Collector {
    events: Arc<Mutex<Vec<Got>>>,
    ended: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Reads `subscriber` (whose opening block was already consumed) until it ends.
    fn spawn(mut subscriber: Subscriber) -> Collector {
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let (task_events, task_ended) = (Arc::clone(&events), Arc::clone(&ended));
        let task = tokio::spawn(async move {
            loop {
                match subscriber.next_within(Duration::from_secs(3600)).await {
                    Some(event) => {
                        let Some(data) = event.data else { continue };
                        let data: Value = serde_json::from_str(&data).unwrap();
                        // Control events carry no id; a message event must.
                        let id = match event.id {
                            Some(id) => id.parse().unwrap(),
                            None => panic!("unexpected event without id: {data}"),
                        };
                        let at = Instant::now();
                        task_events.lock().unwrap().push(Got { id, data, at });
                    }
                    None => {
                        task_ended.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        Collector {
            events,
            ended,
            task,
        }
    }

    fn snapshot(&self) -> Vec<Got> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `expected.len()` events arrived (and a little longer, to catch extras),
    /// then checks they are exactly `expected` and the connection is still open.
    async fn assert_exact(&self, expected: &[i64], who: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.events.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ids: Vec<i64> = self.snapshot().iter().map(|got| got.id).collect();
        if ids != expected {
            let missing: Vec<_> = expected.iter().filter(|id| !ids.contains(id)).collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            panic!(
                "{who}: received {} events ({} distinct), expected {}; missing {missing:?}; \
                 in order: {}",
                ids.len(),
                sorted.len(),
                expected.len(),
                ids.windows(2).all(|w| w[0] < w[1]),
            );
        }
        assert!(
            !self.ended.load(Ordering::SeqCst),
            "{who}: the stream was closed by the relay"
        );
    }

    /// When the message whose `payload.probe` is `probe` arrived.
    fn probe_arrival(&self, probe: usize) -> Instant {
        self.snapshot()
            .iter()
            .find(|got| got.data["payload"]["probe"] == json!(probe))
            .unwrap_or_else(|| panic!("probe {probe} never arrived"))
            .at
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ids for `participant` above `after`.
async fn ids_after(client: &Client, participant: &str, after: i64) -> Vec<i64> {
    let mut ids = ids_for(client, participant).await;
    ids.retain(|&id| id > after);
    ids
}

/// `pgrelay_listener_reconnects_total` from `/metrics`.
async fn listener_reconnects(base: &str) -> u64 {
    metric(base, "pgrelay_listener_reconnects_total").await
}

/// Terminates the sessions with this `application_name`; returns how many.
async fn terminate(admin: &Client, application_name: &str) -> usize {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .iter()
        .filter(|row| row.get::<_, bool>(0))
        .count()
}

/// Opens alice live and bob resuming after bob's second-oldest message (at least three must
/// exist); returns both collectors and their starting positions.
async fn open_alice_live_and_bob_resuming(
    base: &str,
    keys: &Keys,
    client: &Client,
) -> ((Collector, i64), (Collector, i64)) {
    let bob_ids = ids_for(client, "bob").await;
    let bob_resume = bob_ids[1];
    let hour = Duration::from_secs(3600);
    let mut alice = Subscriber::open(base, &keys.mint("alice", hour, &[]), "", None).await;
    let alice_position = alice.opening_position().await;
    let mut bob = Subscriber::open(base, &keys.mint("bob", hour, &[]), "", Some(bob_resume)).await;
    assert_eq!(bob.opening_position().await, bob_resume);
    (
        (Collector::spawn(alice), alice_position),
        (Collector::spawn(bob), bob_resume),
    )
}

/// Inserts `count` messages for `participants`, the n-th with the payload `{label: n}`.
async fn insert_numbered(client: &Client, participants: &[&str], label: &str, count: usize) {
    for n in 0..count {
        insert(client, participants, json!({ label: n })).await;
    }
}

/// Checks that alice (live) and bob (resumed), as opened by
/// [`open_alice_live_and_bob_resuming`], each got exactly their messages after their opening
/// positions, in order, on streams that are still open.
async fn assert_alice_and_bob_exact(
    client: &Client,
    (alice, alice_from): (&Collector, i64),
    (bob, bob_from): (&Collector, i64),
) {
    alice
        .assert_exact(
            &ids_after(client, "alice", alice_from).await,
            "alice (live)",
        )
        .await;
    bob.assert_exact(&ids_after(client, "bob", bob_from).await, "bob (resumed)")
        .await;
}

/// Killing the LISTEN session three times under a steady writer: `/readyz` reports each
/// outage, the streams stay open, and every message arrives exactly once in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_backend_terminated() {
    let (cluster, db) = migrated_cluster().await;
    let relay = Relay::start_with(&db, fast_settings()).await;
    let client = connect(&db).await;
    insert_numbered(&client, &["alice", "bob"], "old", 5).await;
    let ((alice, alice_from), (bob, bob_from)) =
        open_alice_live_and_bob_resuming(&relay.base, &relay.keys, &client).await;
    let reconnects_before = listener_reconnects(&relay.base).await;

    let writer = spawn_writer(&db, 400, 1, Duration::from_millis(10));
    let admin = connect(&db).await;
    let mut kills = Vec::new();
    for probe in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let killed_at = Instant::now();
        assert_eq!(
            terminate(&admin, "pgrelay-listen").await,
            1,
            "one LISTEN session"
        );
        insert(&admin, &["alice"], json!({"probe": probe})).await;
        let down = wait_readyz(&relay.base, 503, Duration::from_secs(2)).await;
        assert!(
            down.is_some(),
            "/readyz never answered 503 after kill {probe}"
        );
        let up = wait_readyz(&relay.base, 200, PATIENCE).await;
        assert!(up.is_some(), "/readyz never recovered after kill {probe}");
        kills.push(killed_at);
    }
    writer.await.unwrap();

    assert_alice_and_bob_exact(&client, (&alice, alice_from), (&bob, bob_from)).await;
    let reconnects = listener_reconnects(&relay.base).await - reconnects_before;
    assert!(reconnects >= 3, "only {reconnects} listener reconnects");
    for (probe, killed_at) in kills.iter().enumerate() {
        let gap_fill = alice.probe_arrival(probe) - *killed_at;
        eprintln!("listen_backend_terminated: kill {probe}: gap-fill time {gap_fill:?}");
    }
    drop((alice, bob));
    relay.stop().await;
    cluster.shutdown().await.unwrap();
}

/// A stop and restart of the whole cluster: `/readyz` is 503 while it is down and 200 after,
/// the open stream stays open, and messages inserted before the listener is back (gap fill)
/// and after arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_restart() {
    let (mut cluster, db) = migrated_cluster().await;
    let relay = Relay::start_with(&db, fast_settings()).await;
    {
        let client = connect(&db).await;
        insert_numbered(&client, &["alice", "bob"], "old", 5).await;
    }
    let (alice, alice_from, bob, bob_from) = {
        let client = connect(&db).await;
        let ((alice, alice_from), (bob, bob_from)) =
            open_alice_live_and_bob_resuming(&relay.base, &relay.keys, &client).await;
        insert_numbered(&client, &["alice", "bob"], "before", 10).await;
        (alice, alice_from, bob, bob_from)
    };
    // Everything before the outage has arrived.
    let deadline = Instant::now() + PATIENCE;
    while alice.snapshot().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alice.snapshot().len(), 10);

    cluster.stop().await.unwrap();
    let stopped_at = Instant::now();
    assert!(
        wait_readyz(&relay.base, 503, PATIENCE).await.is_some(),
        "/readyz never answered 503 with the database down"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, &relay.base).await, 503, "still down");

    cluster.restart().await.unwrap();
    let client = connect(&db).await;
    let probe_inserted = Instant::now();
    insert(&client, &["alice"], json!({"probe": 0})).await;
    let listener_was_down = readyz(&http, &relay.base).await == 503;
    insert_numbered(&client, &["alice", "bob"], "gap", 5).await;
    assert!(
        wait_readyz(&relay.base, 200, PATIENCE).await.is_some(),
        "/readyz never recovered after the restart"
    );
    insert_numbered(&client, &["alice", "bob"], "after", 20).await;

    assert_alice_and_bob_exact(&client, (&alice, alice_from), (&bob, bob_from)).await;
    eprintln!(
        "cluster_restart: down for {:?}; probe inserted with the listener {}; \
         probe delivered {:?} after its insert",
        probe_inserted - stopped_at,
        if listener_was_down {
            "still down (gap fill)"
        } else {
            "already back"
        },
        alice.probe_arrival(0) - probe_inserted,
    );
    drop((alice, bob));
    relay.stop().await;
    cluster.shutdown().await.unwrap();
}

/// An in-process relay whose LISTEN connection uses `listen_url`.
async fn start_split_relay(database_url: &str, listen_url: &str, settings: Settings) -> Relay {
    Relay::launch(RelayOptions {
        listen_database_url: Some(listen_url.to_owned()),
        settings,
        ..RelayOptions::new(database_url)
    })
    .await
}

/// A half-open LISTEN connection (a proxy that silently stops forwarding) is found by the
/// heartbeat, replaced, and the messages inserted meanwhile arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_listen_connection() {
    let (cluster, db) = migrated_cluster().await;
    let proxy = Proxy::start(cluster.port()).await;
    let listen_url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let relay = start_split_relay(&db, &listen_url, fast_settings()).await;
    let client = connect(&db).await;
    insert_numbered(&client, &["alice", "bob"], "old", 5).await;
    let ((alice, alice_from), (bob, bob_from)) =
        open_alice_live_and_bob_resuming(&relay.base, &relay.keys, &client).await;
    insert_numbered(&client, &["alice", "bob"], "before", 10).await;
    let deadline = Instant::now() + PATIENCE;
    while alice.snapshot().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        alice.snapshot().len(),
        10,
        "live delivery through the proxy"
    );
    let reconnects_before = listener_reconnects(&relay.base).await;

    proxy.blackhole_open_connections();
    let blackholed_at = Instant::now();
    insert(&client, &["alice"], json!({"probe": 0})).await;
    insert_numbered(&client, &["alice", "bob"], "during", 10).await;
    let detected_at = loop {
        if listener_reconnects(&relay.base).await > reconnects_before {
            break Instant::now();
        }
        assert!(
            blackholed_at.elapsed() < PATIENCE,
            "the half-open LISTEN connection was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        wait_readyz(&relay.base, 200, PATIENCE).await.is_some(),
        "the listener never came back"
    );
    insert_numbered(&client, &["alice", "bob"], "after", 10).await;

    assert_alice_and_bob_exact(&client, (&alice, alice_from), (&bob, bob_from)).await;
    eprintln!(
        "half_open_listen_connection: detected after {:?}; first message of the blackhole \
         delivered after {:?}",
        detected_at - blackholed_at,
        alice.probe_arrival(0) - blackholed_at,
    );
    drop((alice, bob));
    drop(relay);
    cluster.shutdown().await.unwrap();
}

/// When the dispatcher's fetch on the LISTEN connection fails (here: its role loses SELECT on
/// the outbox), the session ends, the relay reports not ready while reconnecting fails, and once
/// the fetch works again every stream catches up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fetch_fails_then_recovers() {
    let (cluster, db) = migrated_cluster().await;
    let admin = connect(&db).await;
    admin
        .batch_execute(
            "CREATE ROLE relay_listener LOGIN; \
             GRANT USAGE ON SCHEMA pgrelay TO relay_listener; \
             GRANT SELECT ON pgrelay.messages, pgrelay.signals TO relay_listener; \
             GRANT EXECUTE ON FUNCTION pgrelay.sequence(integer) TO relay_listener;",
        )
        .await
        .unwrap();
    let listen_url = format!(
        "postgres://relay_listener@127.0.0.1:{}/postgres",
        cluster.port()
    );
    let relay = start_split_relay(&db, &listen_url, fast_settings()).await;
    insert_numbered(&admin, &["alice", "bob"], "old", 5).await;
    let ((alice, alice_from), (bob, bob_from)) =
        open_alice_live_and_bob_resuming(&relay.base, &relay.keys, &admin).await;
    insert_numbered(&admin, &["alice", "bob"], "before", 5).await;
    let reconnects_before = listener_reconnects(&relay.base).await;

    admin
        .batch_execute("REVOKE SELECT ON pgrelay.messages FROM relay_listener")
        .await
        .unwrap();
    insert_numbered(&admin, &["alice", "bob"], "during", 10).await;
    assert!(
        wait_readyz(&relay.base, 503, PATIENCE).await.is_some(),
        "the failing fetch did not take the relay out of service"
    );
    assert!(listener_reconnects(&relay.base).await > reconnects_before);
    let live_during_outage = alice.snapshot().len();
    admin
        .batch_execute("GRANT SELECT ON pgrelay.messages TO relay_listener")
        .await
        .unwrap();
    assert!(
        wait_readyz(&relay.base, 200, PATIENCE).await.is_some(),
        "the listener never came back after SELECT was granted again"
    );
    insert_numbered(&admin, &["alice", "bob"], "after", 5).await;

    assert_alice_and_bob_exact(&admin, (&alice, alice_from), (&bob, bob_from)).await;
    eprintln!(
        "listen_fetch_fails_then_recovers: alice had {live_during_outage} events when SELECT \
         came back, {} after",
        alice.snapshot().len()
    );
    drop((alice, bob));
    relay.stop().await;
    cluster.shutdown().await.unwrap();
}

/// Killing the relay's pool connections over and over while a writer inserts loses and
/// doubles nothing: catch-ups that fail retry, and live delivery (fetched on the LISTEN
/// connection) goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_connections_terminated_while_delivering() {
    // Often enough that queries and retries die too, not only idle connections.
    const KILL_EVERY: Duration = Duration::from_millis(5);
    let (cluster, db) = migrated_cluster().await;
    let relay = Relay::start_with(&db, fast_settings()).await;
    let client = connect(&db).await;
    insert_numbered(&client, &["alice", "bob"], "old", 5).await;
    let ((alice, alice_from), (bob, bob_from)) =
        open_alice_live_and_bob_resuming(&relay.base, &relay.keys, &client).await;

    let catch_ups_before = metric(&relay.base, "pgrelay_catch_up_queries_total").await;
    let writer = spawn_writer(&db, 300, 1, Duration::from_millis(10));
    let admin = connect(&db).await;
    let mut killed = 0;
    let mut rounds = 0;
    while !writer.is_finished() {
        killed += terminate(&admin, "pgrelay").await;
        rounds += 1;
        tokio::time::sleep(KILL_EVERY).await;
    }
    writer.await.unwrap();
    assert!(killed >= 10, "only {killed} pool connections were killed");

    assert_alice_and_bob_exact(&client, (&alice, alice_from), (&bob, bob_from)).await;
    let catch_ups = metric(&relay.base, "pgrelay_catch_up_queries_total").await - catch_ups_before;
    eprintln!(
        "pool_connections_terminated_while_delivering: {killed} pool sessions killed in \
         {rounds} rounds; {catch_ups} catch-up queries"
    );
    drop((alice, bob));
    relay.stop().await;
    cluster.shutdown().await.unwrap();
}

/// Streams ended by `token_expired` and reopened with a fresh token and `Last-Event-ID` (the
/// last id received, or the opening position) give every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_resumes_exactly() {
    let (cluster, db) = migrated_cluster().await;
    let relay = Relay::start_with(&db, fast_settings()).await;
    let writer = spawn_writer(&db, 300, 1, Duration::from_millis(20));

    let mut received: Vec<i64> = Vec::new();
    let mut last: Option<i64> = None;
    let mut expirations = 0;
    // Short-lived tokens while the writer runs.
    while !writer.is_finished() {
        let token = relay.keys.mint("alice", Duration::from_secs(2), &[]);
        let query = if last.is_none() { "since_id=0" } else { "" };
        let mut stream = Subscriber::open(&relay.base, &token, query, last).await;
        let position = stream.opening_position().await;
        assert_eq!(position, last.unwrap_or(0), "resumes where it stopped");
        last = Some(position);
        loop {
            let event = stream
                .next_within(Duration::from_secs(5))
                .await
                .expect("the stream ended or went quiet before token_expired");
            if event.event.as_deref() == Some("token_expired") {
                assert_eq!(event.id, None, "token_expired carries no id");
                let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
                assert_eq!(data, json!({"reason": "token_expired"}));
                break;
            }
            if event.data.is_some() {
                let id: i64 = event.id.expect("a message has an id").parse().unwrap();
                received.push(id);
                last = Some(id);
            }
        }
        assert!(
            stream.next_within(Duration::from_secs(2)).await.is_none(),
            "the stream ends after token_expired"
        );
        expirations += 1;
    }
    writer.await.unwrap();
    assert!(expirations >= 2, "only {expirations} token expirations");

    let client = connect(&db).await;
    let expected = ids_for(&client, "alice").await;
    let mut stream = relay.subscribe("alice", "", last).await;
    assert_eq!(stream.opening_position().await, last.unwrap());
    while received.len() < expected.len() {
        received.push(stream.next_message().await.0);
    }
    assert_eq!(received, expected);
    assert!(
        stream
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing more"
    );
    eprintln!(
        "token_refresh_resumes_exactly: {} messages over {expirations} token expirations",
        expected.len()
    );
    drop(stream);
    relay.stop().await;
    cluster.shutdown().await.unwrap();
}

/// After a half-open LISTEN connection, a reconnect attempt that stalls (`stall`) is given up
/// and retried, so the relay recovers once the network does, and delivers the gap exactly.
async fn listener_recovers_from_stalled_reconnect(stall: NewConnections) {
    let (cluster, db) = migrated_cluster().await;
    let proxy = Proxy::start(cluster.port()).await;
    let listen_url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let relay = start_split_relay(&db, &listen_url, fast_settings()).await;
    let client = connect(&db).await;
    let token = relay.keys.mint("alice", Duration::from_secs(3600), &[]);
    let mut alice = Subscriber::open(&relay.base, &token, "", None).await;
    let alice_from = alice.opening_position().await;
    let alice = Collector::spawn(alice);
    insert_numbered(&client, &["alice"], "before", 5).await;

    // The open connection goes half-open, and so does every new one for a second.
    proxy.set_new_connections(stall);
    proxy.blackhole_open_connections();
    assert!(
        wait_readyz(&relay.base, 503, PATIENCE).await.is_some(),
        "the half-open LISTEN connection was never noticed"
    );
    insert_numbered(&client, &["alice"], "during", 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_new_connections(NewConnections::Forward);
    let healed_at = Instant::now();
    let recovered = wait_readyz(&relay.base, 200, Duration::from_secs(15)).await;
    let recovered_at = recovered.unwrap_or_else(|| {
        panic!("{stall:?}: the listener never came back after the network healed (15 s)")
    });
    insert_numbered(&client, &["alice"], "after", 5).await;
    alice
        .assert_exact(
            &ids_after(&client, "alice", alice_from).await,
            "alice (live)",
        )
        .await;
    eprintln!(
        "listener_recovers_from_stalled_reconnect({stall:?}): recovered {:?} after the network healed",
        recovered_at - healed_at
    );
    drop(alice);
    drop(relay);
    cluster.shutdown().await.unwrap();
}

/// A reconnect whose server accepts TCP but never answers the startup is abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_recovers_when_reconnect_stalls_at_startup() {
    listener_recovers_from_stalled_reconnect(NewConnections::StallAtAccept).await;
}

/// A reconnect whose connection goes silent right after the startup (during `LISTEN`) is
/// abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_recovers_when_reconnect_stalls_at_listen() {
    listener_recovers_from_stalled_reconnect(NewConnections::StallAfterStartup).await;
}
