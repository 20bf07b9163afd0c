//! The in-repo benchmark suite: what pgrelay adds on top of PostgreSQL, and where it stops.
//!
//! ```text
//! cargo run --release --example bench              # full run, about 5 minutes
//! cargo run --release --example bench -- --quick   # smoke run, under 2 minutes
//! cargo run --release --example bench -- --throughput  # ceilings and ladders only, ~2 minutes
//! ```
//!
//! The example first runs `cargo build --release --bin pgrelay` (a no-op when the binary is
//! fresh; pass `--no-build` to skip it) and then runs that binary, `target/release/pgrelay
//! serve`, found next to its own executable, as a child process: the relay gets its own process,
//! runtime and memory, as in production. It starts a throwaway PostgreSQL on 127.0.0.1
//! (`fsync=off`, `synchronous_commit=off`), creates one database per phase, and removes the
//! cluster at the end, also on failure, Ctrl-C or the overall time limit.
//!
//! # What it measures
//!
//! - **Floor**: commit-to-notification latency of a raw `LISTEN pgrelay` connection, no relay.
//! - **Ceiling**: rows per second PostgreSQL commits through the outbox trigger (advisory lock,
//!   id, NOTIFY) with 8 writers going flat out, 1 and 100 rows per transaction, one raw
//!   listener draining the queue; and with 10 listeners, the fan-out of 10 relay instances.
//! - **Commit-to-SSE latency** at 1,000 messages/s, 3 recipients each, with 10,000 and with
//!   1,000 connected subscribers (each a distinct participant; recipients drawn from them).
//! - **Sustained throughput**: the message rate is stepped up (1 and 100 rows per transaction);
//!   the highest rate at which every delivery arrives, p99 stays under 50 ms and the writers
//!   keep their schedule, against the ceiling.
//! - **Socket floor**: the CPU that carrying the same events over loopback TCP takes with no
//!   relay at all (one thread writing frames, tokio tasks reading them), at 95% of the ceiling:
//!   the part of a throughput step no relay can avoid.
//! - **Memory**: relay RSS before and after opening 10,000 idle streams.
//! - **Catch-up**: 1,000 missed messages of one participant out of 1,000,000 rows, served by a
//!   stream opened with `since_id` and by `GET /v1/messages?limit=1000`.
//! - **Cold start**: spawn to the first `/readyz` 200, median of 10.
//!
//! Latency runs from the moment a writer's `INSERT` (its own transaction) returns to the moment
//! the subscriber's socket read that completed the event returns, both on the monotonic clock of
//! this process. Writers follow a fixed schedule (transaction `i` is due at `start + i·rows/rate`)
//! and never wait for deliveries, so a slow relay cannot slow the load down (no coordinated
//! omission); how far the writers fell behind their schedule is reported separately. Every
//! delivery must arrive exactly once, in id order, to its own recipient only; anything else is
//! reported and makes the run exit 1. Missed targets do not change the exit code.
//!
//! The subscribers are hand-written HTTP/1.1 clients (chunked transfer coding, then
//! [`SseParser`]) on tokio `TcpStream`s, so 10,000 of them are cheap; the open-file limit is
//! raised for this process and inherited by the relay. BENCHMARKS.md has the method in full.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use pgrelay::auth::Keys;
use pgrelay::cluster::TempCluster;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// The secret the relay verifies the subscribers' tokens with.
const SECRET: &str = "pgrelay-bench-secret-0123456789";

/// Connected subscribers in the large phases (each a distinct participant).
const MANY: u32 = 10_000;

/// Connected subscribers in the small latency phase and the throughput ladder.
const FEW: u32 = 1_000;

/// Recipients of every benchmark message.
const RECIPIENTS: usize = 3;

/// Writer connections, each with its own share of the schedule.
const WRITERS: usize = 8;

/// Messages per second in the latency phases.
const LATENCY_RATE: f64 = 1_000.0;

/// A throughput step passes when p99 stays under this.
const P99_LIMIT_MS: f64 = 50.0;

/// ...and the writers commit at least this share of the offered rate.
const KEPT_SCHEDULE: f64 = 0.97;

/// A message's payload key is `run · KEY_BASE + sequence number`.
const KEY_BASE: i64 = 1_000_000_000;

/// Padding that makes a payload the size of a short chat message.
const TEXT: &str = "a benchmark message, about as long as a short line of chat in a browser tab";

/// A collector that hears nothing for this long gives up on the missing deliveries.
const SILENCE: Duration = Duration::from_secs(5);

/// How long collectors keep listening after the last expected delivery, to catch duplicates.
const DUPLICATE_WATCH: Duration = Duration::from_millis(200);

/// Streams opened at once while connecting subscribers.
const OPEN_CONCURRENCY: usize = 200;

/// Open files this process (and the relay it spawns) needs: two sockets per subscriber on
/// loopback are split between the two processes, plus database connections and slack.
const WANTED_FILES: libc::rlim_t = 65_536;
const NEEDED_FILES: libc::rlim_t = MANY as libc::rlim_t + 1_000;

const USAGE: &str =
    "usage: cargo run --release --example bench [-- --quick] [-- --throughput] [-- --no-build]

  --quick      short smoke run (under 2 minutes): shorter phases, fewer throughput steps
  --throughput only the ceilings and the throughput ladders (with 1,000 subscribers), for
               trying a change to the hot path in about two minutes
  --no-build   do not run `cargo build --release --bin pgrelay` first

Starts its own throwaway PostgreSQL and its own `target/release/pgrelay serve` processes on
127.0.0.1, prints a Markdown summary on stdout and progress on stderr.";

/// How long each phase runs.
struct Profile {
    quick: bool,
    /// Only the ceilings and the throughput ladders (`--throughput`).
    throughput_only: bool,
    floor: Duration,
    latency: Duration,
    ceiling: Duration,
    step: Duration,
    idle: Duration,
    fanout: Duration,
    bisections: usize,
    catch_up_rows: i64,
    catch_up_repeats: usize,
    cold_starts: usize,
    fetch_calls: usize,
    time_limit: Duration,
}

impl Profile {
    fn full() -> Profile {
        Profile {
            quick: false,
            throughput_only: false,
            floor: Duration::from_secs(20),
            latency: Duration::from_secs(30),
            ceiling: Duration::from_secs(5),
            step: Duration::from_secs(5),
            idle: Duration::from_secs(10),
            fanout: Duration::from_secs(5),
            bisections: 2,
            catch_up_rows: 1_000_000,
            catch_up_repeats: 7,
            cold_starts: 10,
            fetch_calls: 1_000,
            time_limit: Duration::from_secs(20 * 60),
        }
    }

    fn quick() -> Profile {
        Profile {
            quick: true,
            throughput_only: false,
            floor: Duration::from_secs(3),
            latency: Duration::from_secs(3),
            ceiling: Duration::from_millis(1500),
            step: Duration::from_secs(2),
            idle: Duration::from_secs(2),
            fanout: Duration::from_secs(2),
            bisections: 0,
            catch_up_rows: 1_000_000,
            catch_up_repeats: 3,
            cold_starts: 10,
            fetch_calls: 200,
            time_limit: Duration::from_secs(5 * 60),
        }
    }
}

struct Options {
    profile: Profile,
    build: bool,
}

impl Options {
    fn from_args() -> Result<Options, String> {
        let mut options = Options {
            profile: Profile::full(),
            build: true,
        };
        let mut throughput_only = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => options.profile = Profile::quick(),
                "--throughput" => throughput_only = true,
                "--no-build" => options.build = false,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        options.profile.throughput_only = throughput_only;
        Ok(options)
    }
}

fn main() -> ExitCode {
    let options = match Options::from_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    let limit = options.profile.time_limit;
    let outcome = runtime.block_on(async {
        // Dropping `run` (Ctrl-C, time limit) drops the relays (killed) and the cluster (stopped
        // and deleted) it owns.
        tokio::select! {
            result = run(&options, &mut report) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            _ = tokio::time::sleep(limit) => Err(format!("gave up after {limit:?}").into()),
        }
    });
    report.print();
    match outcome {
        Ok(()) if report.problems.is_empty() => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("bench: FAILED: see the problems above");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("bench: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn run(options: &Options, report: &mut Report) -> Res<()> {
    let profile = &options.profile;
    report.mode = if profile.quick { "quick" } else { "full" };
    let relay_bin = relay_binary(options.build)?;
    report.load_start = load_average();
    let started = Instant::now();
    let files = raise_open_file_limit()?;
    let logs = LogDir::create()?;
    progress(format!(
        "relay {}, open-file limit {files}, logs in {}",
        relay_bin.display(),
        logs.path.display()
    ));

    progress("starting a throwaway PostgreSQL…");
    let cluster = TempCluster::start_with(&[
        ("max_connections", "500"),
        ("shared_buffers", "512MB"),
        ("max_wal_size", "8GB"),
    ])
    .await?;
    let result = phases(&cluster, &relay_bin, profile, &logs, report).await;
    report.load_end = load_average();
    report.elapsed = started.elapsed();
    let stopped = cluster.shutdown().await;
    result?;
    stopped?;
    logs.remove();
    Ok(())
}

async fn phases(
    cluster: &TempCluster,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    report: &mut Report,
) -> Res<()> {
    let admin = connect(&cluster.url("postgres"), "pgrelay-bench").await?;
    report.machine = Machine::describe(&admin).await?;
    let names: Names = Arc::new((0..MANY).map(|i| format!("p{i:05}")).collect());
    let keys = Keys::from_secret_list(SECRET)?;

    let main = create_database(cluster, &admin, "bench_main").await?;
    if profile.throughput_only {
        let ceiling_db = create_database(cluster, &admin, "bench_ceiling").await?;
        return relay_phases(
            &main,
            &ceiling_db,
            relay_bin,
            profile,
            logs,
            &names,
            &keys,
            report,
        )
        .await;
    }
    // Cold start first, against a fresh, small database, with nothing else running.
    progress(format!("cold start: {} starts…", profile.cold_starts));
    report.cold_starts = cold_starts(relay_bin, &main, logs, profile.cold_starts).await?;

    let floor_db = create_database(cluster, &admin, "bench_floor").await?;
    progress("floor: raw LISTEN at 1,000 messages/s…");
    report.floor = Some(floor_phase(&floor_db, profile, &names).await?);

    let ceiling_db = create_database(cluster, &admin, "bench_ceiling").await?;
    for (writers, rows, listeners) in [
        (WRITERS, 1, 1),
        (WRITERS, 100, 1),
        (WRITERS, 1, 10),
        (1, 1, 1),
    ] {
        progress(format!(
            "ceiling: {writers} writer(s) flat out, {rows} row(s) per transaction, {listeners} listener(s)…"
        ));
        let ceiling = ceiling_phase(&ceiling_db, writers, rows, listeners, profile, &names).await?;
        progress(format!(
            "  {:.0} rows/s, {:.0} commits/s; DB CPU {:.0} µs per commit in the writers' backends, \
             {:.1} µs per notification per listener; machine {}",
            ceiling.rows_per_second(),
            ceiling.commits_per_second(),
            ceiling.commit_us(),
            ceiling.listener_us(),
            ceiling.cpu.machine()
        ));
        report.ceilings.push(ceiling);
    }

    relay_phases(
        &main,
        &ceiling_db,
        relay_bin,
        profile,
        logs,
        &names,
        &keys,
        report,
    )
    .await?;

    let catch_up_db = create_database(cluster, &admin, "bench_catch_up").await?;
    report.catch_up =
        Some(catch_up_phase(&catch_up_db, relay_bin, profile, logs, &keys, &names).await?);
    Ok(())
}

/// Everything that needs one long-lived relay with many subscribers: memory, latency with
/// 10,000 and 1,000 subscribers, the costs the scaling model uses, the throughput ladders.
#[allow(clippy::too_many_arguments)]
async fn relay_phases(
    url: &str,
    ceiling_db: &str,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    names: &Names,
    keys: &Keys,
    report: &mut Report,
) -> Res<()> {
    let db = connect(url, "pgrelay-bench").await?;
    let mut relay = RelayChild::spawn(relay_bin, url, logs.file("relay-main.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    // Let start-up work (first prune, first presence tick) finish before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.rss_kib()?;

    let (arrivals, mut heard) = mpsc::unbounded_channel::<Arrival>();
    let hub = Arc::new(Hub::new(arrivals));
    let mut subscribers = Subscribers::default();

    let ctx = RelayCtx {
        url,
        relay: &relay,
        names,
        db: &db,
    };
    if profile.throughput_only {
        subscribers
            .open(relay.addr, keys, names, 0..FEW, &hub)
            .await?;
        presence_settled(&db, i64::from(FEW), Duration::from_secs(60)).await?;
    } else {
        latency_phases(
            &ctx,
            &mut subscribers,
            &hub,
            &mut heard,
            keys,
            profile,
            rss_before,
            report,
        )
        .await?;
    }

    for rows in [1, 100] {
        // The ceiling varies from run to run on a shared machine: measure it again (the relay
        // idles meanwhile; it does not hear another database's notifications) and step up to
        // the higher of the two readings.
        progress(format!(
            "ceiling again: 8 writers flat out, {rows} row(s) per transaction, 1 listener…"
        ));
        let mut again = ceiling_phase(ceiling_db, WRITERS, rows, 1, profile, names).await?;
        again.repeat = true;
        progress(format!("  {:.0} rows/s", again.rows_per_second()));
        report.ceilings.push(again);
        let Some(ceiling) = report.ceiling(rows, 1) else {
            continue;
        };
        let ceiling = ceiling.rows_per_second();
        let floor_rate = (0.95 * ceiling / 100.0).ceil() * 100.0;
        progress(format!(
            "socket floor: {floor_rate:.0} msg/s x 3 events, {rows} row(s) per transaction, no relay…"
        ));
        let floor = socket_floor(floor_rate, rows, profile.step).await?;
        progress(format!(
            "  {:.1} µs CPU per event, {:.0}% of a core",
            floor.us_per_event(),
            floor.cpu.bench_cores * 100.0
        ));
        report.socket_floors.push(floor);
        progress(format!(
            "throughput: {rows} row(s) per transaction, ceiling {ceiling:.0} rows/s…"
        ));
        let steps = ladder(&ctx, &mut heard, rows, ceiling, profile).await?;
        for step in &steps {
            if !step.complete() {
                report.problems.push(format!(
                    "throughput step {:.0} msg/s x {rows}: {}",
                    step.rate,
                    step.delivery_problem()
                ));
            }
        }
        report.ladders.push((rows, steps));
    }

    let problems = hub.take_problems();
    report.problems.extend(problems);
    let closed = hub.closed.load(Ordering::Relaxed);
    if closed > 0 {
        report.problems.push(format!(
            "{closed} streams ended while they should have been open"
        ));
    }
    report.signals = hub.signals.load(Ordering::Relaxed);
    drop(subscribers);
    relay.stop();
    Ok(())
}

/// The latency phase with `subscribers` connected: 1,000 messages/s × 3 recipients, checked
/// for lost, doubled or misrouted deliveries.
async fn latency_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    subscribers: u32,
    profile: &Profile,
    report: &mut Report,
) -> Res<Step> {
    progress(format!(
        "latency: 1,000 messages/s x 3 recipients, {subscribers} subscribers…"
    ));
    let plan = Plan::new(LATENCY_RATE, profile.latency, 1, subscribers);
    let step = relay_step(ctx, heard, plan).await?;
    progress(format!("  {}", step.one_line()));
    report.check_step(&format!("latency with {subscribers} subscribers"), &step);
    Ok(step)
}

/// Memory at 10,000 idle streams, latency with 10,000 and then 1,000 subscribers, and the
/// costs the scaling model uses. Leaves 1,000 subscribers open.
#[allow(clippy::too_many_arguments)]
async fn latency_phases(
    ctx: &RelayCtx<'_>,
    subscribers: &mut Subscribers,
    hub: &Arc<Hub>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    keys: &Keys,
    profile: &Profile,
    rss_before: u64,
    report: &mut Report,
) -> Res<()> {
    let (url, relay, names, db) = (ctx.url, ctx.relay, ctx.names, ctx.db);
    progress(format!("memory: opening {MANY} idle streams…"));
    let opening = subscribers
        .open(relay.addr, keys, names, 0..MANY, hub)
        .await?;
    progress(format!(
        "  opened in {:.2} s ({:.0} streams/s)",
        opening.as_secs_f64(),
        f64::from(MANY) / opening.as_secs_f64()
    ));
    let settled = presence_settled(db, i64::from(MANY), Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = relay.rss_kib()?;
    progress(format!(
        "  RSS {rss_before} KiB -> {rss_after} KiB ({:.2} KiB per stream); presence announced {:.1} s after the last open",
        (rss_after as f64 - rss_before as f64) / f64::from(MANY),
        settled.as_secs_f64()
    ));
    let idle = measure_idle(relay, profile.idle).await?;
    progress(format!(
        "  idle with {MANY} streams: relay {:.1}% of a core",
        idle.relay_cores * 100.0
    ));
    report.memory = Some(Memory {
        streams: MANY,
        rss_before,
        rss_after,
        opening,
        presence_settled: settled,
        idle,
    });

    report.latency_many = Some(latency_step(ctx, heard, MANY, profile, report).await?);

    progress("presence costs with 10,000 participants on one instance…");
    report.presence = Some(presence_costs(db).await?);

    progress(format!("closing {} streams…", MANY - FEW));
    subscribers.close_from(FEW);
    presence_settled(db, i64::from(FEW), Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    report.latency_few = Some(latency_step(ctx, heard, FEW, profile, report).await?);

    progress("fan-out: messages for participants with no stream on this instance…");
    report.skip = Some(skip_cost(ctx, db, profile).await?);
    progress("dispatch fetch query cost…");
    report.fetch = fetch_cost(url, profile.fetch_calls).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup: the relay binary, file limits, databases
// ---------------------------------------------------------------------------------------------

/// `target/release/pgrelay`, next to this example's `target/release/examples/bench`; built first
/// unless `--no-build`.
fn relay_binary(build: bool) -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("pgrelay"))
        .ok_or("cannot find the target directory from this executable's path")?;
    if build {
        progress("cargo build --release --bin pgrelay…");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--bin", "pgrelay"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map_err(|error| format!("cannot run cargo: {error}"))?;
        if !status.success() {
            return Err(format!("cargo build --release --bin pgrelay failed: {status}").into());
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist: run `cargo build --release` first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// Raises RLIMIT_NOFILE (soft, and hard when privileged) so 10,000 streams fit; the relay
/// child inherits it. Returns the new soft limit.
fn raise_open_file_limit() -> Res<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err("getrlimit(RLIMIT_NOFILE) failed".into());
        }
        if limit.rlim_cur < WANTED_FILES {
            let wanted = libc::rlimit {
                rlim_cur: WANTED_FILES,
                rlim_max: limit.rlim_max.max(WANTED_FILES),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                // Not allowed to raise the hard limit: take everything it allows.
                let most = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &most);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    let soft = limit.rlim_cur;
    if soft < NEEDED_FILES {
        return Err(format!(
            "the open-file limit is {soft} and cannot be raised to {NEEDED_FILES}; \
             raise it (ulimit -n) and run again"
        )
        .into());
    }
    Ok(soft)
}

/// A plain connection, driven in the background, named for `pg_stat_activity`.
async fn connect(url: &str, application_name: &str) -> Res<Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates and migrates a database; returns its URL.
async fn create_database(cluster: &TempCluster, admin: &Client, name: &str) -> Res<String> {
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = cluster.url(name);
    pgrelay::migrate::migrate(&url, "pgrelay").await?;
    Ok(url)
}

/// Where the relays' stderr goes; removed after a successful run.
struct LogDir {
    path: PathBuf,
}

impl LogDir {
    fn create() -> Res<LogDir> {
        let path = std::env::temp_dir().join(format!("pgrelay-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(LogDir { path })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn progress(message: impl std::fmt::Display) {
    eprintln!("bench: {message}");
}

// ---------------------------------------------------------------------------------------------
// Measuring: clocks, CPU, percentiles
// ---------------------------------------------------------------------------------------------

/// Nearest-rank percentiles of latencies in microseconds.
#[derive(Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// Signed microseconds from `from` to `to`.
fn micros_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(after) => after.as_secs_f64() * 1e6,
        None => -(from.duration_since(to).as_secs_f64() * 1e6),
    }
}

/// User and system CPU time of a process (all threads, living and exited), from
/// /proc/<pid>/stat.
fn process_cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime / ticks, stime / ticks))
}

/// CPU time of one single-threaded process (a PostgreSQL backend), in nanosecond resolution.
fn backend_cpu_seconds(pid: i32) -> Option<f64> {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos: f64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(nanos / 1e9)
}

/// write-family system calls and context switches (all threads) of a process so far, from
/// /proc/<pid>/io and /proc/<pid>/task/*/status.
fn process_switches(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let writes = io
        .lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        switches += status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|value| value.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    (writes, switches)
}

/// Busy, stolen and total jiffies of the whole machine, from /proc/stat. Steal is time the
/// hypervisor gave this virtual machine's cores to other guests; it counts as busy.
fn machine_jiffies() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let steal = values.get(7).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = values.iter().take(8).sum();
    Some((total - idle, steal, total))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

/// CPU counters at one moment.
struct CpuSnapshot {
    at: Instant,
    relay: (f64, f64),
    relay_switches: (u64, u64),
    bench: (f64, f64),
    machine: (u64, u64, u64),
}

/// What was busy between two snapshots, in cores (1.0 = one core all the time).
#[derive(Clone, Copy, Default)]
struct CpuUse {
    seconds: f64,
    relay_cores: f64,
    /// The part of `relay_cores` spent in the kernel (system calls).
    relay_system_cores: f64,
    bench_cores: f64,
    machine_busy: f64,
    /// The part of `machine_busy` stolen by the hypervisor for other guests.
    machine_steal: f64,
    /// The relay's write system calls and context switches (threads that exited during the
    /// interval are not counted).
    relay_writes: u64,
    relay_context_switches: u64,
}

impl CpuUse {
    /// "61% busy, 2% stolen": how busy the machine was, and how much of that other guests of
    /// the host took.
    fn machine(&self) -> String {
        format!(
            "{:.0}% busy, {:.0}% stolen",
            self.machine_busy * 100.0,
            self.machine_steal * 100.0
        )
    }
}

impl CpuSnapshot {
    fn take(relay: Option<&RelayChild>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            relay: relay
                .and_then(|relay| process_cpu_seconds(&relay.pid().to_string()))
                .unwrap_or((0.0, 0.0)),
            relay_switches: relay.map_or((0, 0), |relay| process_switches(relay.pid())),
            bench: process_cpu_seconds("self").unwrap_or((0.0, 0.0)),
            machine: machine_jiffies().unwrap_or((0, 0, 0)),
        }
    }

    fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let busy = later.machine.0.saturating_sub(self.machine.0) as f64;
        let steal = later.machine.1.saturating_sub(self.machine.1) as f64;
        let total = later.machine.2.saturating_sub(self.machine.2) as f64;
        CpuUse {
            seconds,
            relay_cores: (later.relay.0 + later.relay.1 - self.relay.0 - self.relay.1) / seconds,
            relay_system_cores: (later.relay.1 - self.relay.1) / seconds,
            bench_cores: (later.bench.0 + later.bench.1 - self.bench.0 - self.bench.1) / seconds,
            machine_busy: if total > 0.0 { busy / total } else { 0.0 },
            machine_steal: if total > 0.0 { steal / total } else { 0.0 },
            relay_writes: later.relay_switches.0.saturating_sub(self.relay_switches.0),
            relay_context_switches: later.relay_switches.1.saturating_sub(self.relay_switches.1),
        }
    }
}

/// CPU seconds of the database backends of some `application_name`s, by pid.
struct DbCpu(HashMap<i32, (String, f64)>);

impl DbCpu {
    async fn take(db: &Client, applications: &[&str]) -> Res<DbCpu> {
        let rows = db
            .query(
                "SELECT pid, application_name FROM pg_stat_activity WHERE application_name = ANY($1)",
                &[&applications],
            )
            .await?;
        Ok(DbCpu(
            rows.iter()
                .filter_map(|row| {
                    let pid: i32 = row.get(0);
                    Some((pid, (row.get(1), backend_cpu_seconds(pid)?)))
                })
                .collect(),
        ))
    }

    /// CPU seconds per application since `earlier` (backends started since count in full).
    fn since(&self, earlier: &DbCpu) -> HashMap<String, f64> {
        let mut used = HashMap::new();
        for (pid, (application, seconds)) in &self.0 {
            let before = earlier.0.get(pid).map_or(0.0, |(_, seconds)| *seconds);
            *used.entry(application.clone()).or_insert(0.0) += seconds - before;
        }
        used
    }
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

type Names = Arc<Vec<String>>;

/// Numbers the runs, so every run's payload keys are its own.
static RUNS: AtomicU32 = AtomicU32::new(1);

/// Small, fast, seedable: picks recipients without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Three distinct numbers below `population`.
    fn recipients(&mut self, population: u32) -> [u32; RECIPIENTS] {
        loop {
            let mut pick = || (self.next() % u64::from(population)) as u32;
            let chosen = [pick(), pick(), pick()];
            if chosen[0] != chosen[1] && chosen[1] != chosen[2] && chosen[0] != chosen[2] {
                return chosen;
            }
        }
    }
}

/// A run's schedule: `count` messages at `rate` per second, `rows` per transaction, each
/// addressed to three of the first `population` names.
#[derive(Clone)]
struct Plan {
    run: u32,
    rate: f64,
    rows: usize,
    count: usize,
    recipients: Arc<Vec<[u32; RECIPIENTS]>>,
}

impl Plan {
    fn new(rate: f64, duration: Duration, rows: usize, population: u32) -> Plan {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let count = ((rate * duration.as_secs_f64()).round() as usize / rows).max(1) * rows;
        let mut random = SplitMix(0x5EED_0000 + u64::from(run));
        let recipients = (0..count).map(|_| random.recipients(population)).collect();
        Plan {
            run,
            rate,
            rows,
            count,
            recipients: Arc::new(recipients),
        }
    }

    fn key(&self, seq: usize) -> i64 {
        i64::from(self.run) * KEY_BASE + seq as i64
    }

    fn sequence_number(&self, key: i64) -> Option<usize> {
        (key / KEY_BASE == i64::from(self.run)).then_some((key % KEY_BASE) as usize)
    }

    fn transactions(&self) -> usize {
        self.count / self.rows
    }

    /// When transaction `tx` is due, counted from the start.
    fn due(&self, tx: usize) -> Duration {
        Duration::from_secs_f64((tx * self.rows) as f64 / self.rate)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.count as f64 / self.rate)
    }
}

const INSERT_ONE: &str = "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, $2)";
const INSERT_MANY: &str = "INSERT INTO pgrelay.messages (participants, payload) \
     SELECT ARRAY[a, b, c], p FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
     AS t(a, b, c, p)";

/// One writer connection: plain INSERTs, one transaction each (autocommit).
struct Writer {
    client: Client,
    one: Statement,
    many: Statement,
    /// Its backend's process id, for its CPU time.
    pid: i32,
}

impl Writer {
    async fn connect(url: &str) -> Res<Writer> {
        let client = connect(url, "pgrelay-bench-writer").await?;
        let one = client.prepare(INSERT_ONE).await?;
        let many = client.prepare(INSERT_MANY).await?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(Writer {
            client,
            one,
            many,
            pid,
        })
    }

    /// CPU seconds of these writers' backends so far.
    fn backends_cpu(writers: &[Writer]) -> f64 {
        writers
            .iter()
            .filter_map(|writer| backend_cpu_seconds(writer.pid))
            .sum()
    }

    async fn connect_all(url: &str, count: usize) -> Res<Vec<Writer>> {
        let mut writers = Vec::with_capacity(count);
        for _ in 0..count {
            writers.push(Writer::connect(url).await?);
        }
        Ok(writers)
    }

    /// One transaction: message `keys[i]` to `recipients[i]`.
    async fn insert(
        &self,
        names: &[String],
        keys: &[i64],
        recipients: &[[u32; RECIPIENTS]],
    ) -> Res<()> {
        let name = |index: u32| names[index as usize].as_str();
        if let ([key], [to]) = (keys, recipients) {
            let participants: Vec<&str> = to.iter().map(|&index| name(index)).collect();
            let payload = json!({ "s": key, "x": TEXT });
            self.client
                .execute(&self.one, &[&participants, &payload])
                .await?;
        } else {
            let column =
                |j: usize| -> Vec<&str> { recipients.iter().map(|to| name(to[j])).collect() };
            let payloads: Vec<Value> = keys
                .iter()
                .map(|key| json!({ "s": key, "x": TEXT }))
                .collect();
            self.client
                .execute(&self.many, &[&column(0), &column(1), &column(2), &payloads])
                .await?;
        }
        Ok(())
    }
}

/// What the writers did: when each message's transaction returned, and how late each
/// transaction was sent.
struct Written {
    commits: Vec<Instant>,
    lags_us: Vec<f64>,
    start: Instant,
    /// When the last transaction was sent (its due time plus its lag).
    last_send: Instant,
    /// CPU seconds the writers' backends used (inserts, trigger, NOTIFY, commit).
    db_seconds: f64,
}

/// Runs `make()` on a thread of its own with a single-threaded runtime, so the writers' clocks
/// are read the moment their replies arrive, whatever the subscribers keep busy.
fn on_writer_thread<T, F>(make: impl FnOnce() -> F + Send + 'static) -> impl Future<Output = Res<T>>
where
    T: Send + 'static,
    F: Future<Output = Res<T>> + 'static,
{
    let (done, result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("bench-writers".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(BoxError::from)
                .and_then(|runtime| runtime.block_on(make()));
            let _ = done.send(outcome);
        });
    async move {
        spawned?;
        result
            .await
            .map_err(|_| BoxError::from("the writer thread panicked"))?
    }
}

/// Sends `plan` from `WRITERS` connections: transaction `tx` goes out on connection
/// `tx % WRITERS` at `start + plan.due(tx)`, however late earlier ones were.
fn write_on_schedule(url: &str, plan: &Plan, names: &Names) -> impl Future<Output = Res<Written>> {
    let (url, plan, names) = (url.to_owned(), plan.clone(), Arc::clone(names));
    on_writer_thread(move || async move {
        let writers = Writer::connect_all(&url, WRITERS).await?;
        let cpu_before = Writer::backends_cpu(&writers);
        let transactions = plan.transactions();
        let start = Instant::now() + Duration::from_millis(100);
        let runs = writers.iter().enumerate().map(|(w, writer)| {
            let (plan, names) = (&plan, &names);
            async move {
                let mut done = Vec::with_capacity(transactions / WRITERS + 1);
                for tx in (w..transactions).step_by(WRITERS) {
                    let due = start + plan.due(tx);
                    tokio::time::sleep_until(due.into()).await;
                    let lag = Instant::now().saturating_duration_since(due);
                    let first = tx * plan.rows;
                    let keys: Vec<i64> = (first..first + plan.rows).map(|s| plan.key(s)).collect();
                    writer
                        .insert(names, &keys, &plan.recipients[first..first + plan.rows])
                        .await?;
                    done.push((tx, Instant::now(), lag));
                }
                Ok::<_, BoxError>(done)
            }
        });
        let mut written = Written {
            commits: vec![start; plan.count],
            lags_us: Vec::with_capacity(transactions),
            start,
            last_send: start,
            db_seconds: 0.0,
        };
        for result in futures::future::join_all(runs).await {
            for (tx, commit, lag) in result? {
                for seq in tx * plan.rows..(tx + 1) * plan.rows {
                    written.commits[seq] = commit;
                }
                written.lags_us.push(lag.as_secs_f64() * 1e6);
                written.last_send = written.last_send.max(start + plan.due(tx) + lag);
            }
        }
        written.db_seconds = Writer::backends_cpu(&writers) - cpu_before;
        Ok(written)
    })
}

// ---------------------------------------------------------------------------------------------
// Floor and ceiling: PostgreSQL alone
// ---------------------------------------------------------------------------------------------

/// A raw `LISTEN pgrelay` connection that counts notifications and, if asked, reports the
/// moment each wake-up was read. Wake-ups are empty (heartbeats are not), one per notifying
/// commit, and arrive in commit order, which is id order.
struct RawListener {
    _client: Client,
    driver: tokio::task::JoinHandle<()>,
    heard: Arc<AtomicU64>,
    pid: i32,
}

impl RawListener {
    async fn start(
        url: &str,
        arrivals: Option<mpsc::UnboundedSender<Instant>>,
    ) -> Res<RawListener> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name("pgrelay-bench-listen");
        let (client, mut connection) = config.connect(NoTls).await?;
        let heard = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&heard);
        // Spawning the connection as a plain future would drop notifications: poll_message.
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(notification) = message {
                    let at = Instant::now();
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(arrivals) = &arrivals {
                        if notification.payload().is_empty() {
                            let _ = arrivals.send(at);
                        }
                    }
                }
            }
        });
        client.batch_execute("LISTEN pgrelay").await?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(RawListener {
            _client: client,
            driver,
            heard,
            pid,
        })
    }
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The integer after `key` and a colon in a JSON text (spaces allowed, as PostgreSQL's
/// `json_build_object` writes them).
fn json_int_after(text: &str, key: &str) -> Option<i64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A latency run without the relay.
struct Floor {
    latencies: Percentiles,
    lag: Percentiles,
}

/// Commit return to notification receipt on a raw LISTEN connection, at the latency phases'
/// rate and with the same writers.
async fn floor_phase(url: &str, profile: &Profile, names: &Names) -> Res<Floor> {
    let (arrivals, mut heard) = mpsc::unbounded_channel();
    let listener = RawListener::start(url, Some(arrivals)).await?;
    let client = connect(url, "pgrelay-bench").await?;
    let before: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM pgrelay.messages", &[])
        .await?
        .get(0);
    let plan = Plan::new(LATENCY_RATE, profile.floor, 1, MANY);
    let deadline = Instant::now() + plan.duration() + Duration::from_secs(20);
    let collecting = async {
        let mut got: Vec<Instant> = Vec::with_capacity(plan.count);
        while got.len() < plan.count {
            let wait = (Instant::now() + SILENCE).min(deadline);
            match tokio::time::timeout_at(wait.into(), heard.recv()).await {
                Ok(Some(arrival)) => got.push(arrival),
                _ => break,
            }
        }
        let watch = Instant::now() + DUPLICATE_WATCH;
        while let Ok(Some(arrival)) = tokio::time::timeout_at(watch.into(), heard.recv()).await {
            got.push(arrival);
        }
        got
    };
    let (written, got) = tokio::join!(write_on_schedule(url, &plan, names), collecting);
    drop(listener);
    let written = written?;

    // Wake-ups name nothing, but the k-th one is the k-th commit, which drew the k-th id:
    // map them through the table.
    let rows = client
        .query(
            "SELECT (payload->>'s')::int8 FROM pgrelay.messages WHERE id > $1 ORDER BY id",
            &[&before],
        )
        .await?;
    if got.len() != rows.len() {
        return Err(format!(
            "floor: {} wake-ups for {} commits (another writer on the channel?)",
            got.len(),
            rows.len()
        )
        .into());
    }
    let mut seen = vec![false; plan.count];
    let mut latencies = Vec::with_capacity(plan.count);
    for (row, at) in rows.iter().zip(got) {
        let key: Option<i64> = row.get(0);
        let seq = key
            .and_then(|key| plan.sequence_number(key))
            .ok_or("floor: a commit that is not a message of this run")?;
        if std::mem::replace(&mut seen[seq], true) {
            return Err(format!("floor: message {seq} was committed twice").into());
        }
        latencies.push(micros_between(written.commits[seq], at));
    }
    if latencies.len() != plan.count {
        return Err(format!(
            "floor: {} of {} notifications arrived",
            latencies.len(),
            plan.count
        )
        .into());
    }
    let floor = Floor {
        latencies: Percentiles::of(&latencies),
        lag: Percentiles::of(&written.lags_us),
    };
    progress(format!(
        "  p50/p90/p99/max {}; writers at most {} behind schedule",
        floor.latencies.describe(),
        ms(floor.lag.max)
    ));
    Ok(floor)
}

/// NOTIFY through the outbox trigger with nothing else in the way.
struct Ceiling {
    /// Measured again before a throughput ladder.
    repeat: bool,
    writers: usize,
    rows_per_tx: usize,
    listeners: usize,
    rows: u64,
    commits: u64,
    seconds: f64,
    /// Every listener heard every notification.
    all_heard: bool,
    cpu: CpuUse,
    /// CPU seconds of the writers' backends and of all the listeners' backends.
    writers_db_seconds: f64,
    listeners_db_seconds: f64,
}

impl Ceiling {
    /// Database CPU per commit in the writers' backends, in µs.
    fn commit_us(&self) -> f64 {
        self.writers_db_seconds * 1e6 / self.commits as f64
    }

    /// Database CPU per notification per listening backend, in µs.
    fn listener_us(&self) -> f64 {
        self.listeners_db_seconds * 1e6 / (self.rows as f64 * self.listeners as f64)
    }

    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

/// `writer_count` writers insert as fast as they can for `profile.ceiling`, `rows` per
/// transaction, while `listeners` raw LISTEN connections drain the notification queue.
async fn ceiling_phase(
    url: &str,
    writer_count: usize,
    rows: usize,
    listeners: usize,
    profile: &Profile,
    names: &Names,
) -> Res<Ceiling> {
    let mut raw = Vec::with_capacity(listeners);
    for _ in 0..listeners {
        raw.push(RawListener::start(url, None).await?);
    }
    let heard_before: Vec<u64> = raw
        .iter()
        .map(|l| l.heard.load(Ordering::Relaxed))
        .collect();
    let listeners_cpu = || -> f64 {
        raw.iter()
            .filter_map(|listener| backend_cpu_seconds(listener.pid))
            .sum()
    };
    let listeners_before = listeners_cpu();
    let duration = profile.ceiling;
    let before = CpuSnapshot::take(None);
    let (url_owned, names_owned) = (url.to_owned(), Arc::clone(names));
    let (committed_rows, commits, seconds, writers_db_seconds) =
        on_writer_thread(move || async move {
            let writers = Writer::connect_all(&url_owned, writer_count).await?;
            let cpu_before = Writer::backends_cpu(&writers);
            let start = Instant::now();
            let deadline = start + duration;
            let runs = writers.iter().enumerate().map(|(w, writer)| {
                let names = &names_owned;
                async move {
                    let mut random = SplitMix(w as u64 + 1);
                    let (mut rows_done, mut commits, mut last) = (0u64, 0u64, start);
                    while Instant::now() < deadline {
                        let keys = vec![0i64; rows];
                        let to: Vec<[u32; RECIPIENTS]> =
                            (0..rows).map(|_| random.recipients(MANY)).collect();
                        writer.insert(names, &keys, &to).await?;
                        last = Instant::now();
                        rows_done += rows as u64;
                        commits += 1;
                    }
                    Ok::<_, BoxError>((rows_done, commits, last))
                }
            });
            let (mut total_rows, mut total_commits, mut last) = (0, 0, start);
            for result in futures::future::join_all(runs).await {
                let (rows_done, commits, finished) = result?;
                total_rows += rows_done;
                total_commits += commits;
                last = last.max(finished);
            }
            Ok((
                total_rows,
                total_commits,
                last.duration_since(start).as_secs_f64(),
                Writer::backends_cpu(&writers) - cpu_before,
            ))
        })
        .await?;
    let cpu = before.until(&CpuSnapshot::take(None));
    // Let the listeners drain what is queued.
    let drained = Instant::now() + Duration::from_secs(10);
    let all_heard = loop {
        let done = raw
            .iter()
            .zip(&heard_before)
            .all(|(l, before)| l.heard.load(Ordering::Relaxed) - before >= committed_rows);
        if done || Instant::now() > drained {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listeners_db_seconds = listeners_cpu() - listeners_before;
    Ok(Ceiling {
        repeat: false,
        writers: writer_count,
        rows_per_tx: rows,
        listeners,
        rows: committed_rows,
        commits,
        seconds,
        all_heard,
        cpu,
        writers_db_seconds,
        listeners_db_seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------------------------------

/// A `pgrelay serve` child process on a free loopback port; killed when dropped.
struct RelayChild {
    child: Child,
    addr: SocketAddr,
    spawned: Instant,
    log: PathBuf,
}

impl RelayChild {
    fn spawn(bin: &Path, url: &str, log: PathBuf) -> Res<RelayChild> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stderr = std::fs::File::create(&log)?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--bind", &addr.to_string()])
            // Room for 10,000 streams plus the odd request.
            .args(["--max-connections", "20000"])
            .env_clear()
            .env("DATABASE_URL", url)
            .env("PGRELAY_SECRET", SECRET)
            .env("PGRELAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", bin.display()))?;
        Ok(RelayChild {
            child,
            addr,
            spawned,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every millisecond until it answers 200; returns when it did.
    async fn wait_ready(&mut self, patience: Duration) -> Res<Instant> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz", None).await {
                return Ok(Instant::now());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "pgrelay serve exited during start-up ({status}):\n{}",
                    self.log_tail()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pgrelay serve was not ready after {patience:?}:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Resident set size in KiB, from /proc/<pid>/status.
    fn rss_kib(&self) -> Res<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/<pid>/status".into())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A GET with `Connection: close`; returns the status and the body (read to its
/// Content-Length).
async fn http_get(addr: SocketAddr, target: &str, bearer: Option<&str>) -> Res<(u16, Vec<u8>)> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n{authorization}Connection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(64 * 1024);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut expected: Option<usize> = None;
    loop {
        if let Some(head_end) = find(&response, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
            let length = head.lines().find_map(|line| {
                line.strip_prefix("content-length:")
                    .and_then(|value| value.trim().parse::<usize>().ok())
            });
            expected = length.map(|length| head_end + 4 + length);
        }
        if expected.is_some_and(|total| response.len() >= total) {
            break;
        }
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    let head_end = find(&response, b"\r\n\r\n").ok_or("no complete response head")?;
    let status = std::str::from_utf8(&response[..head_end])?
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("a malformed status line")?;
    Ok((status, response[head_end + 4..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// The SSE client
// ---------------------------------------------------------------------------------------------

/// HTTP/1.1 chunked transfer coding, then the event stream inside it.
struct SseDecoder {
    pending: Vec<u8>,
    state: Chunk,
    parser: SseParser,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(usize),
    /// The CRLF after a chunk's data.
    End,
    /// The last chunk has been read.
    Done,
}

impl SseDecoder {
    fn new() -> SseDecoder {
        SseDecoder {
            pending: Vec::new(),
            state: Chunk::Size,
            parser: SseParser::new(),
        }
    }

    /// Decodes `bytes` and appends the completed SSE items to `items`.
    fn feed(&mut self, bytes: &[u8], items: &mut Vec<SseItem>) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(end) = find(&self.pending[at..], b"\r\n") else {
                        break;
                    };
                    let line = &self.pending[at..at + end];
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                        .ok_or_else(|| {
                            format!("bad chunk size {:?}", String::from_utf8_lossy(line))
                        })?;
                    at += end + 2;
                    self.state = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let available = self.pending.len() - at;
                    if available == 0 {
                        break;
                    }
                    let take = left.min(available);
                    items.extend(self.parser.feed(&self.pending[at..at + take]));
                    at += take;
                    self.state = if take == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::End => {
                    if self.pending.len() - at < 2 {
                        break;
                    }
                    if &self.pending[at..at + 2] != b"\r\n" {
                        return Err("a chunk does not end with CRLF".into());
                    }
                    at += 2;
                    self.state = Chunk::Size;
                }
                Chunk::Done => break,
            }
        }
        self.pending.drain(..at);
        Ok(())
    }
}

/// A stream past its response head and opening block.
struct OpenStream {
    socket: TcpStream,
    decoder: SseDecoder,
    /// Items parsed after the opening block, not yet handled.
    items: Vec<SseItem>,
    /// The opening block's `id:`: the stream's position.
    position: i64,
}

/// `GET /v1/stream?token=…[&since_id=…]`, read up to and including the opening block.
async fn open_stream(addr: SocketAddr, token: &str, since: Option<i64>) -> Res<OpenStream> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let since = since
        .map(|id| format!("&since_id={id}"))
        .unwrap_or_default();
    let request = format!("GET /v1/stream?token={token}{since} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut received = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    let body_start = loop {
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Err("the relay closed the connection before answering".into());
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = find(&received, b"\r\n\r\n") {
            break end + 4;
        }
        if received.len() > 16 * 1024 {
            return Err("the response head is too long".into());
        }
    };
    let head = String::from_utf8_lossy(&received[..body_start]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let answer = String::from_utf8_lossy(&received);
        return Err(format!("the stream was refused: {answer}").into());
    }
    if !head
        .lines()
        .any(|line| line.trim() == "transfer-encoding: chunked")
    {
        return Err("the stream is not chunked".into());
    }
    let mut decoder = SseDecoder::new();
    let mut items = Vec::new();
    decoder.feed(&received[body_start..], &mut items)?;
    loop {
        if let Some(index) = items
            .iter()
            .position(|item| matches!(item, SseItem::Event(_)))
        {
            let SseItem::Event(opening) = items.remove(index) else {
                unreachable!("position found an event");
            };
            items.drain(..index);
            if !opening.is_opening() || opening.retry.is_none() {
                return Err(format!("unexpected opening block {opening:?}").into());
            }
            let position = event_id(&opening).ok_or("the opening block has no id")?;
            return Ok(OpenStream {
                socket,
                decoder,
                items,
                position,
            });
        }
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Err("the stream ended before its opening block".into());
        }
        decoder.feed(&buffer[..read], &mut items)?;
    }
}

fn event_id(event: &SseEvent) -> Option<i64> {
    event.id.as_deref().and_then(|id| id.parse().ok())
}

/// The benchmark key in a message event's data (`…"payload":{"s": KEY, …}…`).
fn payload_key(data: &str) -> Option<i64> {
    let payload = &data[data.find("\"payload\"")?..];
    json_int_after(payload, "\"s\"")
}

/// One delivery: a message (by key) reached a participant's stream at `at`.
struct Arrival {
    key: i64,
    participant: u32,
    at: Instant,
}

/// Where the subscribers report.
struct Hub {
    arrivals: mpsc::UnboundedSender<Arrival>,
    /// Streams that ended on their own.
    closed: AtomicUsize,
    /// Signal events (presence) seen.
    signals: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl Hub {
    fn new(arrivals: mpsc::UnboundedSender<Arrival>) -> Hub {
        Hub {
            arrivals,
            closed: AtomicUsize::new(0),
            signals: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
        }
    }

    fn problem(&self, problem: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(problem);
        }
    }

    fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().unwrap())
    }
}

/// Reads one subscriber's stream until it ends or is aborted, reporting every message event.
async fn read_live(mut stream: OpenStream, participant: u32, hub: Arc<Hub>) {
    let mut last_id = stream.position;
    let mut buffer = vec![0u8; 4096];
    let mut items = std::mem::take(&mut stream.items);
    let mut at = Instant::now();
    loop {
        for item in items.drain(..) {
            let SseItem::Event(event) = item else {
                continue; // keep-alive comment
            };
            let Some(data) = event.data.as_deref().filter(|_| !event.is_opening()) else {
                continue; // the opening block
            };
            let Some(id) = event_id(&event) else {
                hub.signals.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if id <= last_id {
                hub.problem(format!(
                    "participant {participant}: id {id} after id {last_id}"
                ));
            }
            last_id = id;
            match payload_key(data) {
                Some(key) if event.event.as_deref() == Some("message") => {
                    let _ = hub.arrivals.send(Arrival {
                        key,
                        participant,
                        at,
                    });
                }
                _ => hub.problem(format!("participant {participant}: unexpected {event:?}")),
            }
        }
        match stream.socket.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                hub.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(read) => {
                at = Instant::now();
                if let Err(error) = stream.decoder.feed(&buffer[..read], &mut items) {
                    hub.problem(format!("participant {participant}: {error}"));
                    hub.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The open subscribers, by participant number; aborting a reader closes its socket.
#[derive(Default)]
struct Subscribers {
    open: Vec<(u32, AbortHandle)>,
}

impl Subscribers {
    /// Opens a stream for each participant in `range` and starts reading it; returns how long
    /// opening them all took (every stream had sent its opening block).
    async fn open(
        &mut self,
        addr: SocketAddr,
        keys: &Keys,
        names: &Names,
        range: Range<u32>,
        hub: &Arc<Hub>,
    ) -> Res<Duration> {
        let started = Instant::now();
        let opened: Vec<(u32, AbortHandle)> = futures::stream::iter(range)
            .map(|index| {
                let token = keys.mint(&names[index as usize], Duration::from_secs(7200), &[]);
                let hub = Arc::clone(hub);
                async move {
                    let stream = open_stream(addr, &token, None)
                        .await
                        .map_err(|error| format!("subscriber {index}: {error}"))?;
                    let reader = tokio::spawn(read_live(stream, index, hub));
                    Ok::<_, String>((index, reader.abort_handle()))
                }
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .try_collect()
            .await?;
        self.open.extend(opened);
        Ok(started.elapsed())
    }

    /// Closes every stream of participant number `first` and above.
    fn close_from(&mut self, first: u32) {
        self.open.retain(|(index, reader)| {
            let keep = *index < first;
            if !keep {
                reader.abort();
            }
            keep
        });
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.close_from(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Runs through the relay
// ---------------------------------------------------------------------------------------------

/// What a relay run needs.
struct RelayCtx<'a> {
    url: &'a str,
    relay: &'a RelayChild,
    names: &'a Names,
    db: &'a Client,
}

/// Deliveries of one run, by sequence number and recipient slot.
struct Collected {
    arrivals: Vec<[Option<Instant>; RECIPIENTS]>,
    received: usize,
    duplicates: usize,
    misrouted: usize,
}

/// Takes arrivals until every delivery of `plan` is in, the subscribers fall silent, or
/// `deadline`; then watches a little longer for duplicates.
async fn collect(
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    plan: &Plan,
    deadline: Instant,
) -> Collected {
    let expected = plan.count * RECIPIENTS;
    let mut collected = Collected {
        arrivals: vec![[None; RECIPIENTS]; plan.count],
        received: 0,
        duplicates: 0,
        misrouted: 0,
    };
    let record = |arrival: Arrival, collected: &mut Collected| {
        // Arrivals of an earlier run (late deliveries of a failed step) are ignored.
        let Some(seq) = plan.sequence_number(arrival.key) else {
            return;
        };
        let slot = plan
            .recipients
            .get(seq)
            .and_then(|to| to.iter().position(|&r| r == arrival.participant));
        match slot {
            None => collected.misrouted += 1,
            Some(slot) if collected.arrivals[seq][slot].is_some() => collected.duplicates += 1,
            Some(slot) => {
                collected.arrivals[seq][slot] = Some(arrival.at);
                collected.received += 1;
            }
        }
    };
    while collected.received < expected {
        let wait = (Instant::now() + SILENCE).min(deadline);
        match tokio::time::timeout_at(wait.into(), heard.recv()).await {
            Ok(Some(arrival)) => record(arrival, &mut collected),
            _ => break,
        }
    }
    let watch = Instant::now() + DUPLICATE_WATCH;
    while let Ok(Some(arrival)) = tokio::time::timeout_at(watch.into(), heard.recv()).await {
        record(arrival, &mut collected);
    }
    collected
}

/// One run through the relay: a latency phase or a throughput step.
struct Step {
    rate: f64,
    rows: usize,
    messages: usize,
    expected: usize,
    received: usize,
    duplicates: usize,
    misrouted: usize,
    latencies: Percentiles,
    lag: Percentiles,
    /// Messages sent per second: the writers' pace, from the first due time to the last send.
    achieved: f64,
    cpu: CpuUse,
    /// Database CPU seconds: the writers' backends, the relay's pool backends (catch-ups,
    /// presence) and its LISTEN backend (notifications and the dispatcher's fetches).
    db_writers: f64,
    db_pool: f64,
    db_listen: f64,
    /// Share of messages within `SHARE_BOUNDS` from commit to the relay's dispatch (its own
    /// histogram), and of deliveries end to end.
    dispatched_shares: Vec<f64>,
    delivered_shares: Vec<f64>,
}

impl Step {
    fn complete(&self) -> bool {
        self.received == self.expected && self.duplicates == 0 && self.misrouted == 0
    }

    fn passes(&self) -> bool {
        self.complete()
            && self.latencies.p99 <= P99_LIMIT_MS * 1000.0
            && self.achieved >= KEPT_SCHEDULE * self.rate
    }

    /// Why a step failed.
    fn why(&self) -> String {
        let mut reasons = Vec::new();
        if !self.complete() {
            reasons.push("deliveries missing".to_owned());
        }
        if self.latencies.p99 > P99_LIMIT_MS * 1000.0 {
            reasons.push(format!("p99 over {P99_LIMIT_MS} ms"));
        }
        if self.achieved < KEPT_SCHEDULE * self.rate {
            reasons.push("writers fell behind".to_owned());
        }
        reasons.join(", ")
    }

    fn delivery_problem(&self) -> String {
        format!(
            "{} of {} deliveries arrived, {} duplicates, {} to the wrong participant",
            self.received, self.expected, self.duplicates, self.misrouted
        )
    }

    fn one_line(&self) -> String {
        format!(
            "{:.0} msg/s x {} rows/tx: p50/p90/p99/max {}; {}/{} delivered; writers {:.0} msg/s, \
             lag p99 {} max {}; relay {:.0}% ({:.0}% sys) bench {:.0}% machine {}; \
             per message: relay {:.0} µs, DB writers {:.0} µs, relay pool {:.0} µs, LISTEN (with fetches) {:.0} µs",
            self.rate,
            self.rows,
            self.latencies.describe(),
            self.received,
            self.expected,
            self.achieved,
            ms(self.lag.p99),
            ms(self.lag.max),
            self.cpu.relay_cores * 100.0,
            self.cpu.relay_system_cores * 100.0,
            self.cpu.bench_cores * 100.0,
            self.cpu.machine(),
            self.per_message_us(self.cpu.relay_cores * self.cpu.seconds),
            self.per_message_us(self.db_writers),
            self.per_message_us(self.db_pool),
            self.per_message_us(self.db_listen),
        )
    }

    /// CPU seconds spread over the step's messages, in µs each.
    fn per_message_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.messages as f64
    }
}

async fn relay_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    plan: Plan,
) -> Res<Step> {
    const RELAY_BACKENDS: [&str; 2] = ["pgrelay", "pgrelay-listen"];
    let db_before = DbCpu::take(ctx.db, &RELAY_BACKENDS).await?;
    let histogram_before = commit_to_send(ctx.relay.addr).await?;
    let before = CpuSnapshot::take(Some(ctx.relay));
    let deadline = Instant::now() + plan.duration() + Duration::from_secs(20);
    let (written, collected) = tokio::join!(
        write_on_schedule(ctx.url, &plan, ctx.names),
        collect(heard, &plan, deadline)
    );
    let cpu = before.until(&CpuSnapshot::take(Some(ctx.relay)));
    let histogram_after = commit_to_send(ctx.relay.addr).await?;
    let db_used = DbCpu::take(ctx.db, &RELAY_BACKENDS)
        .await?
        .since(&db_before);
    let written = written?;
    let mut latencies = Vec::with_capacity(collected.received);
    for (seq, slots) in collected.arrivals.iter().enumerate() {
        for at in slots.iter().flatten() {
            latencies.push(micros_between(written.commits[seq], *at));
        }
    }
    // On schedule, the last transaction goes out one transaction-interval before the end of
    // the schedule; a writer that fell behind sends it later.
    let span = written
        .last_send
        .duration_since(written.start)
        .as_secs_f64()
        + plan.rows as f64 / plan.rate;
    Ok(Step {
        rate: plan.rate,
        rows: plan.rows,
        messages: plan.count,
        expected: plan.count * RECIPIENTS,
        received: collected.received,
        duplicates: collected.duplicates,
        misrouted: collected.misrouted,
        latencies: Percentiles::of(&latencies),
        delivered_shares: latency_shares(&latencies),
        dispatched_shares: histogram_shares(&histogram_before, &histogram_after),
        lag: Percentiles::of(&written.lags_us),
        achieved: plan.count as f64 / span,
        cpu,
        db_writers: written.db_seconds,
        db_pool: db_used.get("pgrelay").copied().unwrap_or(0.0),
        db_listen: db_used.get("pgrelay-listen").copied().unwrap_or(0.0),
    })
}

/// Upper bounds (seconds) at which latency shares are compared.
const SHARE_BOUNDS: [f64; 4] = [0.001, 0.0025, 0.005, 0.01];

/// The relay's `pgrelay_commit_to_send_seconds` histogram (commit, as stamped by the trigger,
/// to the dispatcher handing the message to the streams' inboxes): cumulative counts by upper
/// bound in seconds.
async fn commit_to_send(addr: SocketAddr) -> Res<Vec<(f64, u64)>> {
    let (status, body) = http_get(addr, "/metrics", None).await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}").into());
    }
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("pgrelay_commit_to_send_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect())
}

/// The share of observations at or below each of `SHARE_BOUNDS`, from two histogram readings.
fn histogram_shares(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<f64> {
    let count = |reading: &[(f64, u64)], bound: f64| {
        reading
            .iter()
            .find(|(b, _)| *b == bound || (*b - bound).abs() < 1e-12)
            .map_or(0, |(_, c)| *c)
    };
    let total = count(after, f64::INFINITY).saturating_sub(count(before, f64::INFINITY));
    SHARE_BOUNDS
        .iter()
        .map(|&bound| {
            let within = count(after, bound).saturating_sub(count(before, bound));
            within as f64 / total.max(1) as f64
        })
        .collect()
}

/// The share of latencies (µs) at or below each of `SHARE_BOUNDS`.
fn latency_shares(latencies_us: &[f64]) -> Vec<f64> {
    SHARE_BOUNDS
        .iter()
        .map(|&bound| {
            let within = latencies_us.iter().filter(|&&us| us <= bound * 1e6).count();
            within as f64 / latencies_us.len().max(1) as f64
        })
        .collect()
}

/// Shares as "≤1 ms 95.1%, ≤2.5 ms …".
fn describe_shares(shares: &[f64]) -> String {
    SHARE_BOUNDS
        .iter()
        .zip(shares)
        .map(|(bound, share)| format!("≤{} ms {:.1}%", bound * 1000.0, share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until `pgrelay.presence` holds `expected` rows (the relay announced its
/// participants); returns how long that took.
async fn presence_settled(db: &Client, expected: i64, patience: Duration) -> Res<Duration> {
    let started = Instant::now();
    loop {
        let count: i64 = db
            .query_one("SELECT count(*) FROM pgrelay.presence", &[])
            .await?
            .get(0);
        if count == expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() > patience {
            return Err(format!("presence: {count} rows, expected {expected}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relay CPU while nothing is sent.
async fn measure_idle(relay: &RelayChild, duration: Duration) -> Res<CpuUse> {
    let before = CpuSnapshot::take(Some(relay));
    tokio::time::sleep(duration).await;
    Ok(before.until(&CpuSnapshot::take(Some(relay))))
}

/// Idle streams and their cost.
struct Memory {
    streams: u32,
    rss_before: u64,
    rss_after: u64,
    opening: Duration,
    presence_settled: Duration,
    idle: CpuUse,
}

impl Memory {
    fn kib_per_stream(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / f64::from(self.streams)
    }
}

/// What presence costs the database per instance with 10,000 participants.
struct PresenceCosts {
    rows: i64,
    refresh_ms: f64,
    expire_ms: f64,
}

/// Times the statements the presence task runs every `presence_ttl / 3` (30 s / 3 by
/// default): the instance's refresh UPDATE and `presence_expire`. Median of 5.
async fn presence_costs(db: &Client) -> Res<PresenceCosts> {
    let row = db
        .query_one(
            "SELECT instance, count(*) FROM pgrelay.presence GROUP BY instance ORDER BY 2 DESC LIMIT 1",
            &[],
        )
        .await?;
    let (instance, rows): (String, i64) = (row.get(0), row.get(1));
    let refresh = db
        .prepare("UPDATE pgrelay.presence SET heartbeat_at = now() WHERE instance = $1 RETURNING 1")
        .await?;
    let expire = db
        .prepare("SELECT pgrelay.presence_expire(make_interval(secs => 30))")
        .await?;
    let (mut refresh_ms, mut expire_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        db.query(&refresh, &[&instance]).await?;
        refresh_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        db.query(&expire, &[]).await?;
        expire_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let costs = PresenceCosts {
        rows,
        refresh_ms: median(&mut refresh_ms),
        expire_ms: median(&mut expire_ms),
    };
    progress(format!(
        "  {} rows: refresh UPDATE {:.2} ms, presence_expire {:.2} ms",
        costs.rows, costs.refresh_ms, costs.expire_ms
    ));
    Ok(costs)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The cost of a notification an instance has no local recipient for: what every instance
/// pays for every message in the cluster.
struct SkipCost {
    context_switches: f64,
    system_share: f64,
    notifications: usize,
    rate: f64,
    relay_us: f64,
    backend_us: f64,
    baseline_cores: f64,
}

/// Sends messages addressed to participants nobody subscribes to and measures the relay's
/// CPU (minus its idle baseline) and its LISTEN backend's CPU per notification.
async fn skip_cost(ctx: &RelayCtx<'_>, db: &Client, profile: &Profile) -> Res<SkipCost> {
    let backend: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'pgrelay-listen' AND datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    let baseline = measure_idle(ctx.relay, profile.fanout).await?;
    let nobody: Names = Arc::new((0..MANY).map(|i| format!("nobody{i:05}")).collect());
    let rate = 2_000.0;
    let plan = Plan::new(rate, profile.fanout, 1, MANY);
    let before = CpuSnapshot::take(Some(ctx.relay));
    let backend_before = backend_cpu_seconds(backend).unwrap_or(0.0);
    write_on_schedule(ctx.url, &plan, &nobody).await?;
    // The last notifications are still being read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = before.until(&CpuSnapshot::take(Some(ctx.relay)));
    let backend_seconds = backend_cpu_seconds(backend).unwrap_or(0.0) - backend_before;
    let relay_seconds = (cpu.relay_cores - baseline.relay_cores).max(0.0) * cpu.seconds;
    let cost = SkipCost {
        context_switches: cpu.relay_context_switches as f64 / plan.count as f64,
        system_share: cpu.relay_system_cores / cpu.relay_cores.max(1e-9),
        notifications: plan.count,
        rate,
        relay_us: relay_seconds * 1e6 / plan.count as f64,
        backend_us: backend_seconds * 1e6 / plan.count as f64,
        baseline_cores: baseline.relay_cores,
    };
    progress(format!(
        "  {} notifications at {rate:.0}/s: relay {:.1} µs each (over an idle {:.1}% of a core), LISTEN backend {:.1} µs each",
        cost.notifications,
        cost.relay_us,
        cost.baseline_cores * 100.0,
        cost.backend_us
    ));
    Ok(cost)
}

/// Bytes of one delivered event as the relay writes it (chunk header, `id:`, `event:` and
/// `data:` lines of a message with 3 recipients and a 100-byte payload, chunk trailer).
const SOCKET_FLOOR_FRAME: usize = 300;

/// The socket floor: what the kernel and the subscribers alone cost to carry events over
/// loopback TCP, with no relay, HTTP or database. One thread writes frames of
/// [`SOCKET_FLOOR_FRAME`] bytes to `FEW` connections, `3 × rows` of them (to random
/// connections) for each transaction of the same schedule as a throughput step at `rate`
/// messages/s; tokio tasks on this process's runtime read them, as the subscribers do.
struct SocketFloor {
    rate: f64,
    rows: usize,
    events: u64,
    cpu: CpuUse,
}

impl SocketFloor {
    /// CPU (this process: writer and readers, user and kernel) per event, in microseconds.
    fn us_per_event(&self) -> f64 {
        self.cpu.bench_cores * self.cpu.seconds * 1e6 / self.events as f64
    }
}

async fn socket_floor(rate: f64, rows: usize, duration: Duration) -> Res<SocketFloor> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..FEW {
        let reader = TcpStream::connect(addr).await?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        writers.push(writer);
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            let mut reader = reader;
            let mut buffer = vec![0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer).await {
                received.fetch_add(read as u64, Ordering::Relaxed);
            }
        }));
    }
    let transactions = (rate * duration.as_secs_f64() / rows as f64).round() as u64;
    let events = transactions * rows as u64 * 3;
    let before = CpuSnapshot::take(None);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::Write;
        let frame = [b'x'; SOCKET_FLOOR_FRAME];
        let interval = Duration::from_secs_f64(rows as f64 / rate);
        let started = Instant::now();
        let mut next = 0u64;
        for transaction in 0..transactions {
            if let Some(wait) =
                (started + interval * transaction as u32).checked_duration_since(Instant::now())
            {
                std::thread::sleep(wait);
            }
            for _ in 0..rows * 3 {
                // A cheap, evenly spread choice of connection (an LCG step).
                next = next
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let index = (next >> 33) as usize % writers.len();
                writers[index].write_all(&frame)?;
            }
        }
        Ok(())
    });
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the socket floor writer panicked")?;
    written?;
    let expected = events * SOCKET_FLOOR_FRAME as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu = before.until(&CpuSnapshot::take(None));
    for reader in readers {
        reader.abort();
    }
    if received.load(Ordering::Relaxed) < expected {
        return Err("the socket floor's readers did not receive every frame".into());
    }
    Ok(SocketFloor {
        rate,
        rows,
        events,
        cpu,
    })
}

/// Round trip of the dispatcher's fetch query (`store::news`, the relay's own code, prepared
/// once as on the relay's LISTEN connection), by how many new rows it reads, in microseconds.
async fn fetch_cost(url: &str, calls: usize) -> Res<Vec<(usize, f64)>> {
    let client = connect(url, "pgrelay-bench").await?;
    let fetch = pgrelay::store::prepare_news(&client).await?;
    let newest = pgrelay::store::news_position(&client).await?;
    let mut costs = Vec::new();
    for size in [1usize, 10, 100] {
        let position = pgrelay::store::NewsPosition {
            message: newest.message - size as i64,
            ..newest
        };
        let read = || pgrelay::store::news(&client, &fetch, position, 500, 4 << 20, |_| true);
        for _ in 0..20 {
            read().await?;
        }
        let started = Instant::now();
        for _ in 0..calls {
            if read().await?.messages.len() != size {
                return Err("the fetch query lost rows".into());
            }
        }
        let each = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        progress(format!("  {size} row(s): {each:.0} µs per fetch"));
        costs.push((size, each));
    }
    Ok(costs)
}

/// The rates a throughput ladder tries, in messages per second: a fixed ladder below 95% of
/// the ceiling, then 95% and 100% of it.
fn ladder_rates(rows: usize, ceiling: f64, quick: bool) -> Vec<f64> {
    let round = |rate: f64| (rate / 100.0).round() * 100.0;
    // Up, so that passing this step means reaching 95%.
    let top = [(0.95 * ceiling / 100.0).ceil() * 100.0, round(ceiling)];
    let mut rates: Vec<f64> = if quick {
        [if rows == 1 { 1_000.0 } else { 5_000.0 }].to_vec()
    } else if rows == 1 {
        [
            1_000.0, 2_000.0, 3_000.0, 4_000.0, 6_000.0, 8_000.0, 10_000.0, 12_000.0, 15_000.0,
            20_000.0, 25_000.0, 30_000.0, 40_000.0,
        ]
        .to_vec()
    } else {
        [
            5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 60_000.0, 80_000.0, 100_000.0,
            150_000.0, 200_000.0,
        ]
        .to_vec()
    };
    rates.retain(|&rate| rate < top[0]);
    rates.extend(top);
    if quick {
        rates.pop(); // 100% of the ceiling: the full run only
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    rates
}

/// Steps the rate up until a step fails, then (full run) bisects between the best pass and
/// the first failure.
async fn ladder(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    rows: usize,
    ceiling: f64,
    profile: &Profile,
) -> Res<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for rate in ladder_rates(rows, ceiling, profile.quick) {
        let step = ladder_step(ctx, heard, rate, rows, profile).await?;
        let passed = step.passes();
        steps.push(step);
        if !passed {
            break;
        }
    }
    for _ in 0..profile.bisections {
        let best = steps
            .iter()
            .filter(|s| s.passes())
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let Some(fail) = steps
            .iter()
            .filter(|s| !s.passes())
            .map(|s| s.rate)
            .min_by(f64::total_cmp)
        else {
            break;
        };
        let middle = ((best + fail) / 2.0 / 100.0).round() * 100.0;
        if best == 0.0 || fail / best < 1.1 || middle <= best || middle >= fail {
            break;
        }
        steps.push(ladder_step(ctx, heard, middle, rows, profile).await?);
    }
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Ok(steps)
}

/// One step of a ladder at `rate` messages/s, reported as it ends, followed by a pause that
/// lets a backlog drain before the next step.
async fn ladder_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    rate: f64,
    rows: usize,
    profile: &Profile,
) -> Res<Step> {
    let step = relay_step(ctx, heard, Plan::new(rate, profile.step, rows, FEW)).await?;
    let passed = step.passes();
    progress(format!(
        "  {} {} {}",
        if passed { "pass" } else { "FAIL" },
        step.one_line(),
        step.why()
    ));
    tokio::time::sleep(Duration::from_secs(if passed { 1 } else { 3 })).await;
    Ok(step)
}

// ---------------------------------------------------------------------------------------------
// Catch-up
// ---------------------------------------------------------------------------------------------

struct CatchUp {
    rows: i64,
    fill: Duration,
    analyze: Duration,
    /// Stream opened with since_id until the 1,000th event, each repeat.
    stream_ms: Vec<f64>,
    /// Of those, until the first message event.
    first_event_ms: Vec<f64>,
    /// `GET /v1/messages?limit=1000`, each repeat.
    page_ms: Vec<f64>,
    /// EXPLAIN ANALYZE of one stream page (100 rows) and of the 1,000-row page.
    plans: Vec<(String, String)>,
}

/// How many messages the catch-up participant has; also the size of the catch-up.
const MISSED: usize = 1_000;

/// Fills the outbox with `rows` messages for 10,000 participants (groups of 10, one message
/// per group per 1,000 rows, so every participant has 1,000 messages spread over the whole
/// table), then times serving one participant's 1,000 messages.
async fn catch_up_phase(
    url: &str,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    keys: &Keys,
    names: &Names,
) -> Res<CatchUp> {
    let rows = profile.catch_up_rows;
    let mut db = connect(url, "pgrelay-bench").await?;
    progress(format!("catch-up: filling the outbox with {rows} rows…"));
    let started = Instant::now();
    // Ten participants per row, `p` + group·10 + k, group = row mod 1,000.
    let members: Vec<String> = (0..10)
        .map(|k| format!("'p' || lpad(((g % 1000) * 10 + {k})::text, 5, '0')"))
        .collect();
    // The rows the trigger would produce (ids from the commit-order sequence, drawn under the
    // order lock as pgrelay.publish does), written without firing a trigger and NOTIFY per
    // row: that is a million notifications nobody listens to.
    let fill = format!(
        "INSERT INTO pgrelay.messages (id, participants, payload) \
         SELECT nextval('pgrelay.message_id_seq'), ARRAY[{}], \
                jsonb_build_object('s', g, 'x', '{TEXT}') \
         FROM generate_series($1::int8, $2::int8) AS g ORDER BY g",
        members.join(", ")
    );
    let chunk = 250_000;
    let mut first = 1;
    while first <= rows {
        let last = (first + chunk - 1).min(rows);
        let transaction = db.transaction().await?;
        transaction
            .batch_execute(
                "SET LOCAL session_replication_role = replica; \
                 LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE",
            )
            .await?;
        transaction.execute(&fill, &[&first, &last]).await?;
        transaction.commit().await?;
        first = last + 1;
    }
    let fill_time = started.elapsed();
    let started = Instant::now();
    db.batch_execute("VACUUM (ANALYZE) pgrelay.messages")
        .await?;
    let analyze = started.elapsed();
    progress(format!(
        "  filled in {:.1} s, VACUUM ANALYZE {:.1} s",
        fill_time.as_secs_f64(),
        analyze.as_secs_f64()
    ));

    let participant = &names[0];
    let mut expected: Vec<i64> = db
        .query(
            "SELECT id FROM pgrelay.messages WHERE participants @> ARRAY[$1::text] \
             ORDER BY id DESC LIMIT $2",
            &[participant, &(MISSED as i64)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    expected.reverse();
    if expected.len() != MISSED {
        return Err(format!(
            "catch-up: {participant} has {} messages, not {MISSED}",
            expected.len()
        )
        .into());
    }
    let since = expected[0] - 1;

    let mut plans = Vec::new();
    for limit in [100i64, MISSED as i64] {
        let explained = db
            .query(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) \
                 SELECT id, kind, sender, participants, payload, created_at FROM pgrelay.messages \
                 WHERE participants @> ARRAY[$1::text] AND id > $2 ORDER BY id LIMIT $3",
                &[participant, &since, &limit],
            )
            .await?;
        let lines: Vec<String> = explained.iter().map(|row| row.get(0)).collect();
        let execution = lines
            .iter()
            .find(|line| line.starts_with("Execution Time"))
            .cloned()
            .unwrap_or_default();
        plans.push((format!("LIMIT {limit}: {execution}"), lines.join("\n")));
    }

    let mut relay = RelayChild::spawn(relay_bin, url, logs.file("relay-catch-up.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    // The start-up prune scans the table once; let it finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = keys.mint(participant, Duration::from_secs(3600), &[]);

    let (mut stream_ms, mut first_event_ms, mut page_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..profile.catch_up_repeats {
        let (total, first) = time_catch_up_stream(relay.addr, &token, since, &expected).await?;
        stream_ms.push(total);
        first_event_ms.push(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..profile.catch_up_repeats {
        page_ms.push(time_catch_up_page(relay.addr, &token, since, &expected).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(relay);
    let catch_up = CatchUp {
        rows,
        fill: fill_time,
        analyze,
        stream_ms,
        first_event_ms,
        page_ms,
        plans,
    };
    progress(format!(
        "  stream: {} ms (median {:.2}); GET: {} ms (median {:.2})",
        list_ms(&catch_up.stream_ms),
        median(&mut catch_up.stream_ms.clone()),
        list_ms(&catch_up.page_ms),
        median(&mut catch_up.page_ms.clone())
    ));
    Ok(catch_up)
}

fn list_ms(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opens a stream with `since_id` and reads until the last expected event; returns the time
/// to that event and to the first one, in ms, from before the connect.
async fn time_catch_up_stream(
    addr: SocketAddr,
    token: &str,
    since: i64,
    expected: &[i64],
) -> Res<(f64, f64)> {
    let started = Instant::now();
    let mut stream = open_stream(addr, token, Some(since)).await?;
    if stream.position != since {
        return Err(format!("catch-up stream opened at {}", stream.position).into());
    }
    let mut got = 0usize;
    let mut first = None;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut items = std::mem::take(&mut stream.items);
    let mut at = Instant::now();
    loop {
        for item in items.drain(..) {
            let SseItem::Event(event) = item else {
                continue;
            };
            if event.data.is_none() || event.is_opening() {
                continue;
            }
            let Some(id) = event_id(&event) else {
                continue; // a presence signal
            };
            if expected.get(got) != Some(&id) {
                return Err(format!("catch-up: event {got} has id {id}").into());
            }
            got += 1;
            first.get_or_insert(at);
            if got == expected.len() {
                let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1000.0;
                return Ok((ms(at), ms(first.unwrap_or(at))));
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.socket.read(&mut buffer))
            .await
            .map_err(|_| format!("catch-up: stuck after {got} events"))??;
        if read == 0 {
            return Err(format!("catch-up: the stream ended after {got} events").into());
        }
        at = Instant::now();
        stream.decoder.feed(&buffer[..read], &mut items)?;
    }
}

/// `GET /v1/messages?since_id=…&limit=1000`; returns its time in ms.
async fn time_catch_up_page(
    addr: SocketAddr,
    token: &str,
    since: i64,
    expected: &[i64],
) -> Res<f64> {
    let started = Instant::now();
    let target = format!("/v1/messages?since_id={since}&limit={}", expected.len());
    let (status, body) = http_get(addr, &target, Some(token)).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        return Err(format!("GET /v1/messages answered {status}").into());
    }
    let page: Value = serde_json::from_slice(&body)?;
    let ids: Vec<i64> = page["messages"]
        .as_array()
        .ok_or("no messages in the page")?
        .iter()
        .filter_map(|message| message["id"].as_i64())
        .collect();
    if ids != expected {
        return Err(format!("GET /v1/messages returned {} other ids", ids.len()).into());
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// Cold start
// ---------------------------------------------------------------------------------------------

/// Spawn to the first `/readyz` 200, `count` times; each relay is killed before the next.
async fn cold_starts(bin: &Path, url: &str, logs: &LogDir, count: usize) -> Res<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let mut relay = RelayChild::spawn(bin, url, logs.file(&format!("relay-cold-{i}.log")))?;
        let ready = relay.wait_ready(Duration::from_secs(20)).await?;
        times.push(ready.duration_since(relay.spawned).as_secs_f64() * 1000.0);
        drop(relay);
    }
    progress(format!("  {} ms", list_ms(&times)));
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
    postgres: String,
}

impl Machine {
    async fn describe(admin: &Client) -> Res<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "?".into());
        Ok(Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            postgres: admin
                .query_one("SHOW server_version", &[])
                .await?
                .get::<_, String>(0),
        })
    }
}

#[derive(Default)]
struct Report {
    mode: &'static str,
    machine: Machine,
    load_start: String,
    load_end: String,
    elapsed: Duration,
    cold_starts: Vec<f64>,
    floor: Option<Floor>,
    ceilings: Vec<Ceiling>,
    memory: Option<Memory>,
    latency_many: Option<Step>,
    latency_few: Option<Step>,
    presence: Option<PresenceCosts>,
    skip: Option<SkipCost>,
    fetch: Vec<(usize, f64)>,
    ladders: Vec<(usize, Vec<Step>)>,
    socket_floors: Vec<SocketFloor>,
    catch_up: Option<CatchUp>,
    signals: u64,
    problems: Vec<String>,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Report {
    /// The higher reading of the 8-writer ceiling with `rows` per transaction and `listeners`
    /// listeners.
    fn ceiling(&self, rows: usize, listeners: usize) -> Option<&Ceiling> {
        self.ceilings
            .iter()
            .filter(|c| c.writers == WRITERS && c.rows_per_tx == rows && c.listeners == listeners)
            .max_by(|a, b| a.rows_per_second().total_cmp(&b.rows_per_second()))
    }

    fn check_step(&mut self, what: &str, step: &Step) {
        if !step.complete() {
            self.problems
                .push(format!("{what}: {}", step.delivery_problem()));
        }
    }

    /// The highest passing rate of a ladder.
    fn sustained(&self, rows: usize) -> Option<f64> {
        let (_, steps) = self.ladders.iter().find(|(r, _)| *r == rows)?;
        Some(
            steps
                .iter()
                .filter(|s| s.passes())
                .map(|s| s.rate)
                .fold(0.0, f64::max),
        )
    }

    fn print(&self) {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut row = |figure: &str, measured: String, target: &str, result: &str| {
            rows.push([
                figure.to_owned(),
                measured,
                target.to_owned(),
                result.to_owned(),
            ]);
        };
        let floor = self.floor.as_ref().map(|f| f.latencies);
        if let Some(floor) = &floor {
            row(
                "Floor: raw LISTEN, commit → notification, p50 / p90 / p99 / max",
                floor.describe(),
                "(reference)",
                "",
            );
        }
        for ceiling in &self.ceilings {
            row(
                &format!(
                    "Ceiling: NOTIFY through the trigger, {} writer(s), {} row(s)/tx, {} listener(s){}",
                    ceiling.writers,
                    ceiling.rows_per_tx,
                    ceiling.listeners,
                    if ceiling.repeat {
                        ", again before the ladder"
                    } else {
                        ""
                    }
                ),
                format!(
                    "{:.0} rows/s ({:.0} commits/s){}",
                    ceiling.rows_per_second(),
                    ceiling.commits_per_second(),
                    if ceiling.all_heard {
                        ""
                    } else {
                        "; listeners fell behind"
                    }
                ),
                "(reference)",
                "",
            );
        }
        for (label, step) in [("1,000", &self.latency_few), ("10,000", &self.latency_many)] {
            let Some(step) = step else { continue };
            row(
                &format!(
                    "Commit → SSE, 1,000 msg/s × 3 recipients, {label} subscribers, p50 / p90 / p99 / max"
                ),
                step.latencies.describe(),
                "",
                "",
            );
            if let Some(floor) = &floor {
                let p50 = step.latencies.p50 - floor.p50;
                let p99 = step.latencies.p99 - floor.p99;
                let targeted = label == "10,000";
                row(
                    &format!("Relay over floor, {label} subscribers: p50 / p99"),
                    format!("+{} / +{}", ms(p50), ms(p99)),
                    "≤ 1 ms / ≤ 5 ms",
                    if targeted {
                        verdict(p50 <= 1000.0 && p99 <= 5000.0)
                    } else {
                        ""
                    },
                );
            }
        }
        for (rows_per_tx, name) in [(1, "1 row/tx"), (100, "100 rows/tx")] {
            let (Some(sustained), Some(ceiling)) =
                (self.sustained(rows_per_tx), self.ceiling(rows_per_tx, 1))
            else {
                continue;
            };
            let share = sustained / ceiling.rows_per_second();
            let next = self
                .ladders
                .iter()
                .find(|(r, _)| *r == rows_per_tx)
                .and_then(|(_, steps)| steps.iter().find(|s| s.rate > sustained && !s.passes()))
                .map(|s| format!(" (at {:.0}: {})", s.rate, s.why()))
                .unwrap_or_default();
            row(
                &format!("Sustained throughput, {name}, 3 recipients, 1,000 subscribers"),
                format!(
                    "{sustained:.0} msg/s = {:.0}% of the ceiling{next}",
                    share * 100.0
                ),
                "≥ 95% of ceiling (the higher reading)",
                verdict(share >= 0.95),
            );
        }
        for floor in &self.socket_floors {
            row(
                &format!(
                    "Socket floor: {:.0} msg/s × 3 events ({} row(s)/tx schedule) over 1,000 loopback TCP connections, no relay",
                    floor.rate, floor.rows
                ),
                format!(
                    "{:.1} µs CPU per event = {:.0}% of a core (machine {})",
                    floor.us_per_event(),
                    floor.cpu.bench_cores * 100.0,
                    floor.cpu.machine()
                ),
                "(reference)",
                "",
            );
        }
        if let Some(memory) = &self.memory {
            let per = memory.kib_per_stream();
            row(
                "RSS per idle stream (10,000 streams)",
                format!(
                    "{per:.1} KiB ({} → {} KiB)",
                    memory.rss_before, memory.rss_after
                ),
                "≤ 16 KiB",
                verdict(per <= 16.0),
            );
        }
        if let Some(catch_up) = &self.catch_up {
            let stream = median(&mut catch_up.stream_ms.clone());
            let page = median(&mut catch_up.page_ms.clone());
            let of = if catch_up.rows == 1_000_000 {
                "1,000,000".to_owned()
            } else {
                catch_up.rows.to_string()
            };
            row(
                &format!("Catch-up: 1,000 of {of} rows, stream with since_id, median"),
                format!("{stream:.2} ms"),
                "≤ 20 ms",
                verdict(stream <= 20.0),
            );
            row(
                &format!("Catch-up: 1,000 of {of} rows, GET /v1/messages?limit=1000, median"),
                format!("{page:.2} ms"),
                "≤ 20 ms",
                verdict(page <= 20.0),
            );
        }
        if !self.cold_starts.is_empty() {
            let cold = median(&mut self.cold_starts.clone());
            row(
                &format!(
                    "Cold start: spawn → /readyz 200, median of {}",
                    self.cold_starts.len()
                ),
                format!("{cold:.1} ms"),
                "≤ 100 ms",
                verdict(cold <= 100.0),
            );
        }

        let m = &self.machine;
        println!();
        println!("## pgrelay benchmark ({} run)", self.mode);
        println!();
        println!(
            "{} cores ({}), Linux {}, PostgreSQL {}; load average {} at the start, {} at the end; {:.0} s",
            m.cores,
            m.cpu,
            m.kernel,
            m.postgres,
            self.load_start,
            self.load_end,
            self.elapsed.as_secs_f64()
        );
        println!();
        println!("| Figure | Measured | Target | Result |");
        println!("|---|---|---|---|");
        for [figure, measured, target, result] in &rows {
            println!("| {figure} | {measured} | {target} | {result} |");
        }
        self.print_details();
        if !self.problems.is_empty() {
            println!();
            println!("### Problems");
            println!();
            for problem in &self.problems {
                println!("- {problem}");
            }
        }
    }

    fn print_details(&self) {
        println!();
        println!("### Details");
        println!();
        if let Some(floor) = &self.floor {
            println!(
                "- Floor writers: lag behind schedule p99 {}, max {}.",
                ms(floor.lag.p99),
                ms(floor.lag.max)
            );
        }
        for ceiling in &self.ceilings {
            println!(
                "- Ceiling, {} writer(s), {} row(s)/tx, {} listener(s){}: {} rows in {:.2} s; machine {}, this process {:.0}% of a core; \
                 database CPU {:.0} µs per commit in the writers' backends, {:.1} µs per notification in each listener's backend.",
                ceiling.writers,
                ceiling.rows_per_tx,
                ceiling.listeners,
                if ceiling.repeat { " (again)" } else { "" },
                ceiling.rows,
                ceiling.seconds,
                ceiling.cpu.machine(),
                ceiling.cpu.bench_cores * 100.0,
                ceiling.commit_us(),
                ceiling.listener_us()
            );
        }
        for (label, step) in [("1,000", &self.latency_few), ("10,000", &self.latency_many)] {
            if let Some(step) = step {
                println!(
                    "- Latency, {label} subscribers: {} messages, {} deliveries; writers lag p99 {} max {}; \
                     relay {:.1}% of a core ({:.0}% of it in the kernel), this process {:.0}%, machine {}. \
                     CPU per message: relay {:.0} µs; database: writer {:.0} µs, relay pool {:.0} µs, relay LISTEN backend (notifications and fetches) {:.0} µs. \
                     Relay system calls per message: {:.1} writes; context switches {:.1}.",
                    step.messages,
                    step.received,
                    ms(step.lag.p99),
                    ms(step.lag.max),
                    step.cpu.relay_cores * 100.0,
                    100.0 * step.cpu.relay_system_cores / step.cpu.relay_cores.max(1e-9),
                    step.cpu.bench_cores * 100.0,
                    step.cpu.machine(),
                    step.per_message_us(step.cpu.relay_cores * step.cpu.seconds),
                    step.per_message_us(step.db_writers),
                    step.per_message_us(step.db_pool),
                    step.per_message_us(step.db_listen),
                    step.cpu.relay_writes as f64 / step.messages as f64,
                    step.cpu.relay_context_switches as f64 / step.messages as f64,
                );
                println!(
                    "  - Commit → relay dispatch (the relay's `pgrelay_commit_to_send_seconds`): {}. \
                     Commit → SSE receipt: {}.",
                    describe_shares(&step.dispatched_shares),
                    describe_shares(&step.delivered_shares)
                );
            }
        }
        if let Some(memory) = &self.memory {
            println!(
                "- Opening {} streams took {:.2} s ({:.0} streams/s); presence rows for all of them {:.1} s after the last; \
                 idle with {} streams the relay used {:.1}% of a core.",
                memory.streams,
                memory.opening.as_secs_f64(),
                f64::from(memory.streams) / memory.opening.as_secs_f64(),
                memory.presence_settled.as_secs_f64(),
                memory.streams,
                memory.idle.relay_cores * 100.0
            );
        }
        if let Some(presence) = &self.presence {
            println!(
                "- Presence, {} rows of one instance: refresh UPDATE {:.2} ms, presence_expire {:.2} ms (each every 10 s per instance by default).",
                presence.rows, presence.refresh_ms, presence.expire_ms
            );
        }
        if let Some(skip) = &self.skip {
            println!(
                "- A notification with no local recipient ({} at {:.0}/s): relay {:.1} µs CPU ({:.0}% in the kernel, {:.2} context switches), \
                 its LISTEN backend {:.1} µs CPU.",
                skip.notifications,
                skip.rate,
                skip.relay_us,
                skip.system_share * 100.0,
                skip.context_switches,
                skip.backend_us
            );
        }
        if !self.fetch.is_empty() {
            let fetch: Vec<String> = self
                .fetch
                .iter()
                .map(|(size, us)| format!("{size} id(s) {us:.0} µs"))
                .collect();
            println!(
                "- Dispatch fetch query (`store::messages_by_id`) round trip: {}.",
                fetch.join(", ")
            );
        }
        for (rows, steps) in &self.ladders {
            println!();
            println!("Throughput ladder, {rows} row(s) per transaction, 3 recipients, 1,000 subscribers:");
            println!();
            println!("| Offered msg/s | Sent msg/s | Delivered | p50 / p90 / p99 / max | Writer lag max | Relay CPU (sys) | DB CPU/msg: writer, relay pool, relay LISTEN + fetch | Machine busy (stolen) | Pass |");
            println!("|---|---|---|---|---|---|---|---|---|");
            for step in steps {
                println!(
                    "| {:.0} | {:.0} | {}/{} | {} | {} | {:.0}% ({:.0}%) | {:.0}, {:.0}, {:.0} µs | {:.0}% ({:.0}%) | {} |",
                    step.rate,
                    step.achieved,
                    step.received,
                    step.expected,
                    step.latencies.describe(),
                    ms(step.lag.max),
                    step.cpu.relay_cores * 100.0,
                    step.cpu.relay_system_cores * 100.0,
                    step.per_message_us(step.db_writers),
                    step.per_message_us(step.db_pool),
                    step.per_message_us(step.db_listen),
                    step.cpu.machine_busy * 100.0,
                    step.cpu.machine_steal * 100.0,
                    if step.passes() { "yes".to_owned() } else { format!("no: {}", step.why()) }
                );
            }
        }
        if let Some(catch_up) = &self.catch_up {
            println!();
            println!(
                "Catch-up: {} rows filled in {:.1} s, VACUUM ANALYZE {:.1} s. Stream runs {} ms (first event after {} ms); \
                 GET runs {} ms.",
                catch_up.rows,
                catch_up.fill.as_secs_f64(),
                catch_up.analyze.as_secs_f64(),
                list_ms(&catch_up.stream_ms),
                list_ms(&catch_up.first_event_ms),
                list_ms(&catch_up.page_ms)
            );
            for (summary, plan) in &catch_up.plans {
                println!();
                println!("Catch-up query, {summary}:");
                println!();
                println!("```text");
                println!("{plan}");
                println!("```");
            }
        }
        if !self.cold_starts.is_empty() {
            println!();
            println!("Cold starts: {} ms.", list_ms(&self.cold_starts));
        }
        if self.signals > 0 {
            println!();
            println!(
                "Subscribers also received {} presence signals (not counted as deliveries).",
                self.signals
            );
        }
    }
}
