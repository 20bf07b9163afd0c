//! Commit-to-browser latency of one subscriber on loopback, next to the floor that PostgreSQL's
//! own LISTEN/NOTIFY sets.
//!
//! ```text
//! cargo run --release --example latency [-- --messages 2000 --rate 200]
//! ```
//!
//! # Method
//!
//! The benchmark starts a throwaway PostgreSQL (or, when `DATABASE_URL` is set, creates a fresh
//! database in that server and drops it afterwards) and migrates it. It then runs two phases
//! with the same writer:
//!
//! 1. **Floor.** A raw tokio-postgres connection runs `LISTEN pgrelay`. Nothing else runs.
//! 2. **Relay.** The relay runs in this process on `127.0.0.1:0`; one subscriber holds
//!    `GET /v1/stream` open and parses it with [`pgrelay::sse::SseParser`].
//!
//! In each phase a separate connection inserts `--messages` rows into `pgrelay.messages`, one
//! per autocommit transaction, each payload carrying its sequence number. Send times are fixed
//! in advance at `start + i / rate`, so a slow relay never slows the writer down (no
//! coordinated omission): a late message is measured as late. A message's latency runs from
//! the moment its INSERT returns to the writer (the commit is done) to the moment the receiver
//! parsed it (the notification, or the SSE event carrying that sequence number), both read
//! from the same monotonic clock. NOTIFY can reach a listener before the writer's own
//! confirmation does, so floor latencies near zero may come out slightly negative.
//!
//! Every message must arrive exactly once and in order; anything else fails the run. The
//! report shows p50/p90/p99/max of both phases and the relay's cost over the floor. A
//! throwaway cluster runs with `fsync=off` and `synchronous_commit=off`, which removes disk
//! flushes from the writer's commit, not from the delivery path being measured.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use pgrelay::RelayConfig;
use pgrelay::Settings;
use pgrelay_cluster::TempCluster;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The participant every benchmark message is addressed to.
const PARTICIPANT: &str = "bench";

/// The secret the in-process relay verifies the subscriber's token with.
const SECRET: &str = "latency-benchmark-secret";

/// A receiver that hears nothing for this long has lost messages.
const SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// How long to keep listening after the last expected message, to catch duplicates.
const DUPLICATE_WATCH: Duration = Duration::from_millis(300);

const USAGE: &str = "usage: cargo run --release --example latency [-- --messages N --rate R]

  --messages N   messages per phase (default 2000)
  --rate R       messages per second, one per transaction (default 200)

Uses DATABASE_URL when set (a fresh database is created in it and dropped afterwards),
else a throwaway PostgreSQL cluster.";

/// What to run, from the command line.
struct Options {
    messages: usize,
    rate: f64,
}

impl Options {
    /// Parses `--messages N` and `--rate R` by hand; `--help` prints the usage.
    fn from_args() -> Result<Options, String> {
        let mut options = Options {
            messages: 2000,
            rate: 200.0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                "--messages" => {
                    options.messages = value("--messages")?
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--messages must be a whole number above zero")?;
                }
                "--rate" => {
                    options.rate = value("--rate")?
                        .parse()
                        .ok()
                        .filter(|&r: &f64| r.is_finite() && r > 0.0)
                        .ok_or("--rate must be a number of messages per second above zero")?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        Ok(options)
    }

    /// When message `seq` is due, counted from the phase's start.
    fn due(&self, seq: usize) -> Duration {
        Duration::from_secs_f64(seq as f64 / self.rate)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("latency: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let options = Options::from_args()?;
    let database = Database::create().await?;
    // The database is removed whether or not the benchmark succeeded.
    let result = benchmark(&database.url, &options).await;
    let described = database.description();
    database.remove().await?;
    let (floor, relay, version) = result?;
    print_report(&options, &described, &version, &floor, &relay);
    Ok(())
}

/// Runs both phases and returns their latencies (µs, indexed by sequence number) and the
/// server version.
async fn benchmark(url: &str, options: &Options) -> Result<(Phase, Phase, String), BoxError> {
    pgrelay::migrate::migrate(url, "pgrelay").await?;
    let version = {
        let client = connect(url, "pgrelay-latency").await?;
        client
            .query_one("SHOW server_version", &[])
            .await?
            .get::<_, String>(0)
    };
    eprintln!(
        "latency: floor phase ({} messages at {}/s over raw LISTEN)…",
        options.messages, options.rate
    );
    let floor = listen_phase(url, options).await?;
    eprintln!("latency: relay phase (same schedule, one SSE subscriber)…");
    let relay = relay_phase(url, options).await?;
    Ok((floor, relay, version))
}

/// Where the benchmark's database lives, and how to get rid of it.
struct Database {
    url: String,
    owner: Owner,
}

enum Owner {
    /// A private cluster, stopped and deleted at the end.
    Cluster(TempCluster),
    /// A database created in `DATABASE_URL`'s server, dropped at the end.
    Server { admin_url: String, name: String },
}

impl Database {
    async fn create() -> Result<Database, BoxError> {
        match std::env::var("DATABASE_URL") {
            Ok(admin_url) => {
                let name = format!("pgrelay_latency_{}", std::process::id());
                let admin = connect(&admin_url, "pgrelay-latency").await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await?;
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await?;
                Ok(Database {
                    url: with_database(&admin_url, &name),
                    owner: Owner::Server { admin_url, name },
                })
            }
            Err(_) => {
                eprintln!("latency: starting a throwaway PostgreSQL…");
                let cluster = TempCluster::start().await?;
                Ok(Database {
                    url: cluster.url("postgres"),
                    owner: Owner::Cluster(cluster),
                })
            }
        }
    }

    fn description(&self) -> String {
        match &self.owner {
            Owner::Cluster(_) => {
                "throwaway cluster on 127.0.0.1 (fsync=off, synchronous_commit=off)".into()
            }
            Owner::Server { name, .. } => format!("DATABASE_URL server, database {name}"),
        }
    }

    async fn remove(self) -> Result<(), BoxError> {
        match self.owner {
            Owner::Cluster(cluster) => cluster.shutdown().await?,
            Owner::Server { admin_url, name } => {
                let admin = connect(&admin_url, "pgrelay-latency").await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Points a connection string at another database: the path of a `postgres://` URL, or a
/// `dbname=` appended to a key-value string (the last one wins).
fn with_database(url: &str, database: &str) -> String {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return format!("{url} dbname={database}");
    }
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host = match base[authority_start..].find('/') {
        Some(path_start) => &base[..authority_start + path_start],
        None => base,
    };
    match query {
        Some(query) => format!("{host}/{database}?{query}"),
        None => format!("{host}/{database}"),
    }
}

/// A plain connection, driven in the background, named for `pg_stat_activity`.
async fn connect(url: &str, application_name: &str) -> Result<Client, BoxError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One phase's result: latencies in microseconds, indexed by sequence number, and how far
/// behind its schedule the writer ever was.
struct Phase {
    latencies_us: Vec<f64>,
    writer_lag: Duration,
}

/// Something a receiver heard: a key (a message id or a sequence number) and when it was
/// parsed; or why the receiver gave up.
type Arrival = Result<(i64, Instant), String>;

/// Phase 1: the same inserts, heard by a raw `LISTEN pgrelay` connection.
async fn listen_phase(url: &str, options: &Options) -> Result<Phase, BoxError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name("pgrelay-latency-listen");
    let (client, mut connection) = config.connect(NoTls).await?;
    let (arrivals, heard) = mpsc::unbounded_channel::<Arrival>();
    // The driver stamps each notification the moment the connection yields it. Spawning the
    // connection as a plain future would discard notifications, hence `poll_message`.
    // Wake-ups are empty, one per commit, in commit order: each is stamped with its ordinal.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
        let mut ordinal = 0;
        while let Some(message) = messages.next().await {
            let arrival = match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let at = Instant::now();
                    if !notification.payload().is_empty() {
                        continue; // a relay's heartbeat
                    }
                    ordinal += 1;
                    Ok((ordinal, at))
                }
                Ok(_) => continue,
                Err(error) => Err(format!("the LISTEN connection failed: {error}")),
            };
            if arrivals.send(arrival).is_err() {
                return;
            }
        }
    });
    client.batch_execute("LISTEN pgrelay").await?;

    let (writer_lag, committed, arrived) = write_and_receive(url, "listen", options, heard).await;
    driver.abort();
    let (committed, arrived) = (committed?, arrived?);

    // The writer cannot learn ids (they are assigned at commit), but the k-th wake-up is the
    // k-th commit: map ordinals to sequence numbers through the table, in id order.
    let in_commit_order = sequence_numbers_in_commit_order(url, "listen").await?;
    let arrived = arrived
        .into_iter()
        .map(
            |(ordinal, at)| match in_commit_order.get(ordinal as usize - 1) {
                Some(&seq) => Ok((seq, at)),
                None => Err(format!(
                "wake-up {ordinal} has no commit of this phase (another writer on the channel?)"
            )),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Phase {
        latencies_us: latencies(&committed, &arrived)?,
        writer_lag,
    })
}

/// The sequence numbers of `phase`'s messages, in id (that is, commit) order.
async fn sequence_numbers_in_commit_order(url: &str, phase: &str) -> Result<Vec<i64>, BoxError> {
    let client = connect(url, "pgrelay-latency").await?;
    let rows = client
        .query(
            "SELECT (payload->>'seq')::int8 FROM pgrelay.messages WHERE payload->>'phase' = $1 \
             ORDER BY id",
            &[&phase],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Phase 2: the relay in this process, one SSE subscriber.
async fn relay_phase(url: &str, options: &Options) -> Result<Phase, BoxError> {
    let keys = Keys::from_secret_list(SECRET)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let config = RelayConfig {
        database_url: url.to_owned(),
        listen_database_url: url.to_owned(),
        pool_size: 8,
        keys: keys.clone(),
        settings: Settings::default(),
        limits: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(pgrelay::run(config, listener, async {
        let _ = stopped.await;
    }));

    let result = async {
        wait_ready(&base).await?;
        let token = keys.mint(PARTICIPANT, Duration::from_secs(3600), &[]);
        let mut stream = SseStream::open(&base, &token).await?;
        let (arrivals, heard) = mpsc::unbounded_channel::<Arrival>();
        let reader = tokio::spawn(async move { stream.forward_messages(arrivals).await });
        let (writer_lag, committed, arrived) =
            write_and_receive(url, "relay", options, heard).await;
        // Dropping the reader closes the subscriber's connection.
        reader.abort();
        Ok::<_, BoxError>(Phase {
            latencies_us: latencies(&committed?, &arrived?)?,
            writer_lag,
        })
    }
    .await;

    let _ = stop.send(());
    relay.await??;
    result
}

/// Waits until the relay's `/readyz` answers 200 (its LISTEN connection is up).
async fn wait_ready(base: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + SILENCE_LIMIT;
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the relay did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An open `GET /v1/stream`, parsed event by event.
struct SseStream {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    /// Events parsed but not yet taken, each with the moment it was parsed.
    parsed: VecDeque<(SseEvent, Instant)>,
    /// The last `id:` seen; message ids must rise strictly.
    last_id: i64,
}

impl SseStream {
    /// Subscribes and reads the opening block, so the stream is registered with the relay
    /// (and its position fixed) before the writer starts.
    async fn open(base: &str, token: &str) -> Result<SseStream, BoxError> {
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/stream"))
            .bearer_auth(token)
            .send()
            .await?;
        if response.status() != 200 {
            let status = response.status();
            return Err(format!("the stream answered {status}: {}", response.text().await?).into());
        }
        let mut stream = SseStream {
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            parsed: VecDeque::new(),
            last_id: 0,
        };
        let (opening, _) = stream
            .next_event()
            .await?
            .ok_or("the stream ended before its opening block")?;
        if !opening.is_opening() || opening.retry.is_none() {
            return Err(format!("unexpected opening block: {opening:?}").into());
        }
        stream.last_id = parse_id(&opening)?;
        Ok(stream)
    }

    /// The next event block, or `None` when the stream ended.
    async fn next_event(&mut self) -> Result<Option<(SseEvent, Instant)>, String> {
        loop {
            if let Some(event) = self.parsed.pop_front() {
                return Ok(Some(event));
            }
            let Some(chunk) = self.body.next().await else {
                return Ok(None);
            };
            let chunk = chunk.map_err(|error| format!("the stream failed: {error}"))?;
            let items = self.parser.feed(&chunk);
            let at = Instant::now();
            for item in items {
                if let SseItem::Event(event) = item {
                    self.parsed.push_back((event, at));
                }
            }
        }
    }

    /// Sends each message's sequence number and parse time to `arrivals` until the stream or
    /// the receiving side ends; a problem with the stream is sent as an error. Events without
    /// an `id:` are signals (such as presence), not messages, and are skipped.
    async fn forward_messages(&mut self, arrivals: mpsc::UnboundedSender<Arrival>) {
        loop {
            let arrival = match self.next_event().await {
                Ok(Some((event, _))) if event.id.is_none() => continue,
                Ok(Some((event, at))) => self.sequence_number(&event).map(|seq| (seq, at)),
                Ok(None) => Err("the stream ended".into()),
                Err(error) => Err(error),
            };
            let failed = arrival.is_err();
            if arrivals.send(arrival).is_err() || failed {
                return;
            }
        }
    }

    /// Checks a message event (a rising id, kind `message`) and returns its payload's `seq`.
    fn sequence_number(&mut self, event: &SseEvent) -> Result<i64, String> {
        let id = parse_id(event)?;
        if id <= self.last_id {
            return Err(format!("id {id} came after id {}", self.last_id));
        }
        self.last_id = id;
        if event.event.as_deref() != Some("message") {
            return Err(format!("unexpected event: {event:?}"));
        }
        let data: Value = event
            .data
            .as_deref()
            .and_then(|data| serde_json::from_str(data).ok())
            .ok_or_else(|| format!("event {id} carries no JSON data"))?;
        data["payload"]["seq"]
            .as_i64()
            .ok_or_else(|| format!("event {id} has no payload.seq: {data}"))
    }
}

fn parse_id(event: &SseEvent) -> Result<i64, String> {
    event
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("an event without a numeric id: {event:?}"))
}

/// Runs the writer and collects what the receiver hears, concurrently. Returns the writer's
/// worst lag behind schedule, the commit times by sequence number, and the arrivals in the
/// order they were heard.
async fn write_and_receive(
    url: &str,
    phase: &str,
    options: &Options,
    heard: mpsc::UnboundedReceiver<Arrival>,
) -> (
    Duration,
    Result<Vec<Instant>, BoxError>,
    Result<Vec<(i64, Instant)>, BoxError>,
) {
    let collector = tokio::spawn(collect(heard, options.messages));
    let written = write_on_schedule(url, phase, options).await;
    let arrived = match collector.await {
        Ok(arrived) => arrived.map_err(BoxError::from),
        Err(error) => Err(error.into()),
    };
    match written {
        Ok((lag, committed)) => (lag, Ok(committed), arrived),
        Err(error) => (Duration::ZERO, Err(error), arrived),
    }
}

/// Inserts `options.messages` rows, one per transaction, message `i` sent at `start + i/rate`
/// whether or not earlier ones have been delivered. Returns the worst lag behind schedule and
/// when each INSERT returned.
async fn write_on_schedule(
    url: &str,
    phase: &str,
    options: &Options,
) -> Result<(Duration, Vec<Instant>), BoxError> {
    let client = connect(url, "pgrelay-latency-writer").await?;
    let insert = client
        .prepare("INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, $2)")
        .await?;
    let participants = vec![PARTICIPANT.to_owned()];
    let mut committed = Vec::with_capacity(options.messages);
    let mut worst_lag = Duration::ZERO;
    let start = Instant::now();
    for seq in 0..options.messages {
        let due = start + options.due(seq);
        tokio::time::sleep_until(due).await;
        worst_lag = worst_lag.max(Instant::now().saturating_duration_since(due));
        let payload = json!({ "phase": phase, "seq": seq });
        client.execute(&insert, &[&participants, &payload]).await?;
        committed.push(Instant::now());
    }
    Ok((worst_lag, committed))
}

/// Collects arrivals until `expected` have come, then keeps listening briefly so duplicates
/// show. Fails when the receiver reports a problem or falls silent.
async fn collect(
    mut heard: mpsc::UnboundedReceiver<Arrival>,
    expected: usize,
) -> Result<Vec<(i64, Instant)>, String> {
    let mut arrived = Vec::with_capacity(expected);
    while arrived.len() < expected {
        match tokio::time::timeout(SILENCE_LIMIT, heard.recv()).await {
            Ok(Some(arrival)) => arrived.push(arrival?),
            Ok(None) => return Err("the receiver stopped".into()),
            Err(_) => {
                return Err(format!(
                    "only {} of {expected} messages arrived; nothing more for {SILENCE_LIMIT:?}",
                    arrived.len()
                ))
            }
        }
    }
    let watch_until = Instant::now() + DUPLICATE_WATCH;
    while let Ok(Some(arrival)) = tokio::time::timeout_at(watch_until, heard.recv()).await {
        arrived.push(arrival?);
    }
    Ok(arrived)
}

/// Checks that sequence numbers arrived exactly once each and in order, and returns each
/// message's latency in microseconds (negative when it was heard before its INSERT returned).
fn latencies(committed: &[Instant], arrived: &[(i64, Instant)]) -> Result<Vec<f64>, String> {
    if arrived.len() != committed.len() {
        return Err(format!(
            "{} messages were sent but {} arrived (duplicates?)",
            committed.len(),
            arrived.len()
        ));
    }
    committed
        .iter()
        .zip(arrived)
        .enumerate()
        .map(|(expected, (&commit, &(seq, heard)))| {
            if seq != expected as i64 {
                return Err(format!(
                    "message {seq} arrived where message {expected} was due: lost, repeated or reordered"
                ));
            }
            Ok(match heard.checked_duration_since(commit) {
                Some(after) => after.as_secs_f64() * 1e6,
                None => -(commit.duration_since(heard).as_secs_f64() * 1e6),
            })
        })
        .collect()
}

/// p50, p90, p99 and max of some latencies, nearest-rank.
fn percentiles(latencies_us: &[f64]) -> [f64; 4] {
    let mut sorted = latencies_us.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    [rank(0.50), rank(0.90), rank(0.99), rank(1.0)]
}

fn print_report(options: &Options, server: &str, version: &str, floor: &Phase, relay: &Phase) {
    let floor_p = percentiles(&floor.latencies_us);
    let relay_p = percentiles(&relay.latencies_us);
    let difference: Vec<f64> = relay_p.iter().zip(&floor_p).map(|(r, f)| r - f).collect();
    let ms = |us: f64| format!("{:.3} ms", us / 1000.0);

    println!();
    println!(
        "pgrelay commit-to-delivery latency: {} messages per phase at {}/s, one per transaction",
        options.messages, options.rate
    );
    println!("server: PostgreSQL {version}, {server}");
    println!(
        "every message arrived exactly once, in order; writer at most {:.3} ms behind schedule",
        floor.writer_lag.max(relay.writer_lag).as_secs_f64() * 1000.0
    );
    println!();
    println!(
        "{:<24}{:>12}{:>12}{:>12}{:>12}",
        "", "p50", "p90", "p99", "max"
    );
    let rows: [(&str, &[f64]); 3] = [
        ("LISTEN/NOTIFY (floor)", &floor_p),
        ("pgrelay SSE", &relay_p),
        ("difference", &difference),
    ];
    for (label, values) in rows {
        println!(
            "{:<24}{:>12}{:>12}{:>12}{:>12}",
            label,
            ms(values[0]),
            ms(values[1]),
            ms(values[2]),
            ms(values[3])
        );
    }
}
