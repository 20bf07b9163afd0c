//! Shared test harness: a real PostgreSQL, a fresh database per test, an in-process relay on
//! 127.0.0.1:0, and an SSE client.
//!
//! The server and the databases come from `pgrelay_cluster::test_server`: `DATABASE_URL` when
//! set (each test still gets its own database in it), else one throwaway cluster for the suite.

pub mod external;
mod http;
pub mod idp;
mod proxy;
mod raw;

pub use http::*;
pub use pgrelay_cluster::test_server::connect;
pub use proxy::*;
pub use raw::*;

use std::time::Duration;

use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use pgrelay::RelayConfig;
use pgrelay::Settings;
use pgrelay_cluster::test_server;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// The secret every test relay verifies with.
pub const SECRET: &str = "test-secret-0123456789-0123456789";

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A URL of the test server with `{db}` where the database name goes.
pub fn server_url_template() -> &'static str {
    test_server::url_template()
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> String {
    let url = empty_database().await;
    pgrelay::migrate::migrate(&url, "pgrelay").await.unwrap();
    url
}

/// A fresh database without pgrelay's schema, for tests that migrate it themselves; dropped when
/// the test ends.
pub async fn empty_database() -> String {
    test_server::empty_database().await
}

/// The relay settings tests use unless they say otherwise: the defaults, except that a
/// sender may publish as fast as a test likes (tests post in bulk; tests/suite/trust.rs checks the
/// default rate limit).
pub fn test_settings() -> Settings {
    Settings {
        publish_rate: 1e6,
        publish_burst: 1e6,
        ..Settings::default()
    }
}

/// The test settings with heartbeat passes a minute apart: during a test every pass answers a
/// wake-up, and a row that waits for the heartbeat does not arrive within [`PATIENCE`].
pub fn no_heartbeat_passes() -> Settings {
    Settings {
        heartbeat: Duration::from_secs(60),
        ..test_settings()
    }
}

/// The connection limits tests use unless they say otherwise.
pub fn test_limits() -> pgrelay::ConnectionLimits {
    pgrelay::ConnectionLimits {
        max_connections: 1000,
        ..Default::default()
    }
}

/// A relay running in this process on 127.0.0.1:0; stopped when dropped.
pub struct Relay {
    pub base: String,
    pub keys: Keys,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// How to start a test relay; `RelayOptions::new(db)` gives the defaults.
pub struct RelayOptions {
    pub database_url: String,
    /// The LISTEN connection's URL (a proxy, say); the database URL when `None`.
    pub listen_database_url: Option<String>,
    /// A streaming read replica's URL (`--replica-url`).
    pub replica_url: Option<String>,
    /// Comma-separated token secrets.
    pub secrets: String,
    /// Keys to verify with instead of `secrets` (an identity provider's key set, a policy).
    pub keys: Option<Keys>,
    pub settings: Settings,
    pub limits: pgrelay::ConnectionLimits,
}

impl RelayOptions {
    pub fn new(database_url: &str) -> RelayOptions {
        RelayOptions {
            database_url: database_url.to_owned(),
            listen_database_url: None,
            replica_url: None,
            secrets: SECRET.to_owned(),
            keys: None,
            settings: test_settings(),
            limits: test_limits(),
        }
    }
}

impl Relay {
    /// Starts a relay on `database_url` with the test settings.
    pub async fn start(database_url: &str) -> Relay {
        Relay::launch(RelayOptions::new(database_url)).await
    }

    /// Starts a relay with these settings and waits until its listener is up.
    pub async fn start_with(database_url: &str, settings: Settings) -> Relay {
        Relay::launch(RelayOptions {
            settings,
            ..RelayOptions::new(database_url)
        })
        .await
    }

    /// Starts a relay verifying tokens with this comma-separated secret list.
    pub async fn start_with_secrets(
        database_url: &str,
        secrets: &str,
        settings: Settings,
    ) -> Relay {
        Relay::launch(RelayOptions {
            secrets: secrets.to_owned(),
            settings,
            ..RelayOptions::new(database_url)
        })
        .await
    }

    /// Starts a relay as `options` say and waits until it is ready.
    pub async fn launch(options: RelayOptions) -> Relay {
        let relay = Relay::spawn(options).await;
        relay.wait_ready().await;
        relay
    }

    /// Starts a relay as `options` say, without waiting for it to be ready.
    pub async fn spawn(options: RelayOptions) -> Relay {
        let keys = options
            .keys
            .unwrap_or_else(|| Keys::from_secret_list(&options.secrets).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let config = RelayConfig {
            listen_database_url: options
                .listen_database_url
                .unwrap_or_else(|| options.database_url.clone()),
            database_url: options.database_url,
            replica_url: options.replica_url,
            pool_size: 8,
            keys: keys.clone(),
            settings: options.settings,
            limits: options.limits,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pgrelay::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("the relay failed");
        });
        Relay {
            base,
            keys,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(response) = reqwest::get(format!("{}/readyz", self.base)).await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A token for `sub` with the given scopes, valid for an hour.
    pub fn token(&self, sub: &str, scopes: &[&str]) -> String {
        self.keys.mint(sub, Duration::from_secs(3600), scopes)
    }

    /// Opens `/v1/stream` as `sub`, with optional extra query (e.g. `since_id=3`) and
    /// `Last-Event-ID`.
    pub async fn subscribe(
        &self,
        sub: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> Subscriber {
        let token = self.token(sub, &[]);
        Subscriber::open(&self.base, &token, query, last_event_id).await
    }

    /// Stops the relay and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Prunes as a relay does, as the login of `database_url`, with `retention`: starts a relay
/// (which prunes as it starts), waits for its first round, and answers how many messages that
/// round deleted.
pub async fn prune_with_a_relay(database_url: &str, retention: Duration) -> u64 {
    let settings = Settings {
        retention,
        ..test_settings()
    };
    let relay = Relay::start_with(database_url, settings).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_pruning_rounds_total").await < 1 {
        assert_eq!(
            metric(&relay.base, "pgrelay_pruning_failures_total").await,
            0,
            "pruning failed"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pruning round finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pruned = metric(&relay.base, "pgrelay_messages_pruned_total").await;
    relay.stop().await;
    pruned
}

/// An open SSE connection.
pub struct Subscriber {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    buffered: std::collections::VecDeque<SseEvent>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    /// Whether `presence` events are returned; off by default, because any test whose
    /// participants share messages would otherwise see them arrive at unpredictable moments.
    pub keep_presence: bool,
}

impl Subscriber {
    /// Connects and checks the answer is a 200 event stream.
    pub async fn open(
        base: &str,
        token: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> Subscriber {
        let separator = if query.is_empty() { "" } else { "&" };
        let url = format!("{base}/v1/stream?token={token}{separator}{query}");
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "stream refused: {:?}",
            response.text().await
        );
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Subscriber {
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            buffered: Default::default(),
            comments: 0,
            keep_presence: false,
        }
    }

    /// The next event block (including id-only blocks), or `None` if none comes within `wait`
    /// or the stream ended.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            for item in self.parser.feed(&chunk.ok()?) {
                match item {
                    SseItem::Event(event)
                        if event.event.as_deref() == Some("presence") && !self.keep_presence => {}
                    SseItem::Event(event) => self.buffered.push_back(event),
                    SseItem::Comment(_) => self.comments += 1,
                }
            }
        }
    }

    /// Whether the relay ends the stream within `wait` with no further event (`false` when
    /// it stays open that long; an event before the end fails the test).
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.buffered.pop_front() {
                panic!("an event where the stream should end: {event:?}");
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(chunk))) => {
                    for item in self.parser.feed(&chunk) {
                        match item {
                            SseItem::Event(event) => self.buffered.push_back(event),
                            SseItem::Comment(_) => self.comments += 1,
                        }
                    }
                }
            }
        }
    }

    /// The next event, which must come within `PATIENCE`.
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(PATIENCE)
            .await
            .expect("no event arrived in time")
    }

    /// The next message event (skipping the opening), as (id, kind, data).
    pub async fn next_message(&mut self) -> (i64, String, Value) {
        loop {
            let event = self.next().await;
            if event.is_opening() {
                continue;
            }
            if let Some(data) = event.data {
                let id = event
                    .id
                    .expect("a message event has an id")
                    .parse()
                    .unwrap();
                return (
                    id,
                    event.event.unwrap_or_default(),
                    serde_json::from_str(&data).unwrap(),
                );
            }
        }
    }

    /// The opening block's position: the `position` event, whose id and data agree.
    pub async fn opening_position(&mut self) -> i64 {
        let event = self.next().await;
        assert!(
            event.is_opening(),
            "the first block must be the position event: {event:?}"
        );
        let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
        assert_eq!(
            data["position"].to_string(),
            event.id.clone().unwrap(),
            "{event:?}"
        );
        assert!(
            event.retry.is_some(),
            "the first block must carry retry: {event:?}"
        );
        assert!(
            data["position"].as_i64() >= Some(0),
            "a position is never negative: {event:?}"
        );
        event
            .id
            .expect("the first block carries the position")
            .parse()
            .unwrap()
    }
}

/// A role made for one test (role names are cluster-wide, so each carries the database's name).
pub struct Role {
    pub url: String,
}

impl Role {
    /// Creates a LOGIN role with nothing else granted, plus `grants` (SQL run as the superuser,
    /// with `{role}` standing for the role's name).
    pub async fn create(db: &str, label: &str, grants: &[&str]) -> Role {
        let database = db.rsplit('/').next().unwrap();
        let name = format!("{label}_{database}");
        let admin = connect(db).await;
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"
            ))
            .await
            .unwrap();
        for grant in grants {
            admin
                .batch_execute(&grant.replace("{role}", &name))
                .await
                .unwrap();
        }
        Role {
            url: db.replacen("postgres://postgres@", &format!("postgres://{name}@"), 1),
        }
    }

    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

/// Inserts a message the way an application would from psql; returns nothing, since the id is
/// assigned after commit (by a relay, or by [`number_pending`]).
pub async fn insert(client: &Client, participants: &[&str], payload: Value) {
    let participants: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
    client
        .execute(
            "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, $2)",
            &[&participants, &payload],
        )
        .await
        .unwrap();
}

/// A writer task: `count` messages for alice, every third also for bob, pausing `pause` after
/// every `every` messages, so streams see a steady flow while a test does something to them.
pub fn spawn_writer(
    db: &str,
    count: usize,
    every: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let db = db.to_owned();
    tokio::spawn(async move {
        let client = connect(&db).await;
        for n in 0..count {
            let participants: &[&str] = if n % 3 == 0 {
                &["alice", "bob"]
            } else {
                &["alice"]
            };
            insert(&client, participants, serde_json::json!({"n": n})).await;
            if n % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// The payloads' `n` of every stored message (not the relay's control rows), in id order.
pub async fn stored_numbers(client: &Client) -> Vec<i64> {
    client
        .query(
            "SELECT (payload ->> 'n')::int8 FROM pgrelay.messages WHERE NOT control ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Gives every committed pending message its id now, as a relay's next pass would (the test
/// connects as the schema owner, who may run `pgrelay.sequence`).
pub async fn number_pending(client: &Client) {
    client
        .batch_execute("SELECT pgrelay.sequence(1000000)")
        .await
        .unwrap();
}

/// Every message id addressed to `participant`, ascending (pending messages numbered first).
pub async fn ids_for(client: &Client, participant: &str) -> Vec<i64> {
    ids_for_addresses(client, &[participant.to_owned()]).await
}

/// The ids of every message addressed to one of `addresses` (people, rooms, `*`), in order,
/// once pending messages are numbered.
pub async fn ids_for_addresses(client: &Client, addresses: &[String]) -> Vec<i64> {
    number_pending(client).await;
    client
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants && $1 ORDER BY id",
            &[&addresses],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A `pgrelay serve` child process, for tests that kill, signal or measure a real process.
/// Killed (SIGKILL) when dropped.
pub struct RelayProcess {
    pub base: String,
    pub child: std::process::Child,
}

impl RelayProcess {
    /// Starts `pgrelay serve` on a free loopback port with the test secret and `extra` flags,
    /// logging to `log` (or nowhere), and waits until it is ready.
    pub async fn start(
        database_url: &str,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> RelayProcess {
        RelayProcess::start_under(&[], database_url, extra, log).await
    }

    /// Like [`RelayProcess::start`], run through `wrapper` (a command such as
    /// `["prlimit", "--nofile=1024:", "--"]` that execs the rest of its arguments).
    pub async fn start_under(
        wrapper: &[&str],
        database_url: &str,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> RelayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RelayProcess::spawn(wrapper, port, database_url, extra, log).await
    }

    /// Like [`RelayProcess::start`], on a given port (to start a relay again where its
    /// clients will reconnect).
    pub async fn start_on(port: u16, database_url: &str, extra: &[&str]) -> RelayProcess {
        RelayProcess::spawn(&[], port, database_url, extra, None).await
    }

    async fn spawn(
        wrapper: &[&str],
        port: u16,
        database_url: &str,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> RelayProcess {
        let stderr = match log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
            None => std::process::Stdio::null(),
        };
        let binary = env!("CARGO_BIN_EXE_pgrelay");
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = std::process::Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => std::process::Command::new(binary),
        };
        let child = command
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("PGRELAY_SECRET", SECRET)
            .env_remove("LISTEN_DATABASE_URL")
            .env_remove("PORT")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut process = RelayProcess {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(response) = reqwest::get(format!("{}/readyz", process.base)).await {
                if response.status() == 200 {
                    return process;
                }
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("pgrelay serve exited during start-up: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgrelay serve never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A token for `sub`, signed with the test secret.
    pub fn token(&self, sub: &str, scopes: &[&str]) -> String {
        Keys::from_secret_list(SECRET)
            .unwrap()
            .mint(sub, Duration::from_secs(3600), scopes)
    }

    /// Opens `/v1/stream` on this process.
    pub async fn subscribe(
        &self,
        sub: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> Subscriber {
        Subscriber::open(&self.base, &self.token(sub, &[]), query, last_event_id).await
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        pgrelay_cluster::signal(self.child.id(), signal).unwrap();
    }

    /// The process's resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id()).expect("the relay runs")
    }
}

/// The resident set size of process `pid` in KiB, from /proc, while it runs.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same database reached through another port on 127.0.0.1 (a pooler or a proxy).
pub fn via_port(database_url: &str, port: u16) -> String {
    let config: tokio_postgres::Config = database_url.parse().unwrap();
    let original = config.get_ports()[0];
    database_url.replacen(&format!(":{original}/"), &format!(":{port}/"), 1)
}

/// The TCP port of a postgres:// URL.
pub fn port_of(database_url: &str) -> u16 {
    let config: tokio_postgres::Config = database_url.parse().unwrap();
    config.get_ports()[0]
}

/// Number of stored messages.
pub async fn message_count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM pgrelay.messages", &[])
        .await
        .unwrap()
        .get(0)
}

/// SQL that made a writer's session pass for the owner of `pgrelay.messages` in pgrelay's
/// insert triggers until migration 15: `before_insert` and `clear_foreign_idempotency` ran
/// with `search_path = pg_catalog, pgrelay`, which does not name `pg_temp`, so PostgreSQL
/// searched the session's temporary schema first for tables, and their unqualified `pg_class`
/// was this table, whose `relowner` for `pgrelay.messages` is the writer itself.
pub const PASS_FOR_THE_OWNER: &str = "CREATE TEMP TABLE pg_class (oid oid, relowner oid); \
     INSERT INTO pg_class SELECT 'pgrelay.messages'::regclass::oid, oid \
       FROM pg_roles WHERE rolname = current_user";

/// A throwaway cluster of the test's own with `settings` (for a setting the shared test
/// server does not have, or a server the test stops or copies), and the URL of a migrated
/// database `relay` in it.
pub async fn cluster_with(settings: &[(&str, &str)]) -> (pgrelay_cluster::TempCluster, String) {
    let cluster = pgrelay_cluster::TempCluster::start_with(settings)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    connect(&cluster.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE relay")
        .await
        .unwrap();
    let db = cluster.url("relay");
    pgrelay::migrate::migrate(&db, "pgrelay").await.unwrap();
    (cluster, db)
}

/// A stalled client's SSE connection: it sends its request and reads nothing until `drain`.
pub async fn stalled_stream(relay: &Relay, sub: &str) -> tokio::net::TcpStream {
    stalled_stream_from(relay, sub, None).await
}

/// [`stalled_stream`], resuming after `last_event_id` when given.
pub async fn stalled_stream_from(
    relay: &Relay,
    sub: &str,
    last_event_id: Option<i64>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let token = relay.token(sub, &[]);
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let mut socket = slow_reader(address(&relay.base).parse().unwrap()).await;
    socket
        .write_all(
            format!("GET /v1/stream?token={token} HTTP/1.1\r\nHost: relay\r\n{resume}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    socket
}

/// Reads `socket` until it is quiet for `quiet`; the body's bytes (de-chunked if need be).
pub async fn drain(mut socket: tokio::net::TcpStream, quiet: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(quiet, socket.read(&mut buffer)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Ok(Err(error)) => panic!("{error}"),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            out.push_str(&after[..size.min(after.len())]);
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A session inside an open transaction that holds the order lock, as a peer relay stuck in
/// its pass would: nothing is numbered until it commits.
pub async fn hold_the_order_lock(db: &str) -> Client {
    let peer = connect(db).await;
    peer.batch_execute("BEGIN; LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    peer
}

/// Collects every notification a connection hears on `channel` for `during`.
pub async fn eavesdrop(
    url: &str,
    channel: &str,
    during: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = sender.send(notification.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    during.await;
    // A round trip, so everything sent before it has been read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    let _ = driver.await;
    let mut payloads = Vec::new();
    while let Ok(payload) = heard.try_recv() {
        payloads.push(payload);
    }
    payloads
}
