//! The in-repo benchmark suite: what pgrelay adds on top of PostgreSQL, and where it stops.
//!
//! ```text
//! cargo run --release --example bench              # full run, about 5 minutes
//! cargo run --release --example bench -- --quick   # smoke run, under 2 minutes
//! cargo run --release --example bench -- --throughput  # ceilings and ladders only, ~2 minutes
//! cargo run --release --example bench -- --latency     # floor, memory, latency, CPU per event, ~2 minutes
//! cargo run --release --example bench -- --publish     # POST throughput, group commit, poisoning, ~2 minutes
//! cargo run --release --example bench -- --fleet       # 1, 3 and 10 instances on one database
//! cargo run --release --example bench -- --attacks     # a hostile writer and retention, ~2 minutes
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
//! - **CPU per event**: the relay's CPU per delivered event in the 10,000-subscriber latency
//!   phase, against the socket floor at that load (1,000 msg/s × 3 over 9,000 connections).
//! - **Many streams** (`many_streams.rs`): 19,000 idle streams on one instance, then 100,000
//!   over six instances on one database with the client side in child processes, 1,000
//!   messages delivered exactly and `/readyz` polled throughout.
//! - **Catch-up**: 1,000 missed messages of one participant out of 1,000,000 rows, served by a
//!   stream opened with `since_id` and by `GET /v1/messages?limit=1000`.
//! - **Publishing** (`publishing.rs`): `POST /v1/messages` from 100 publishers flat out, one
//!   transaction per request and with group commit.
//! - **Poisoning** (`poisoning.rs`): 50 honest publishers flat out, alone and beside one sender
//!   posting 200 a second (ten times the default per-sender limit) payloads `jsonb` refuses or
//!   rows a CHECK constraint refuses: the honest throughput as a share of alone, and latency.
//! - **Cold start**: spawn to the first `/readyz` 200, median of 10.
//! - **Reconnect storm** (`storm.rs`, only with `--storm`): 12,000 streams on one instance with
//!   200 messages/s flowing; that instance frozen, one message written to every participant, the
//!   instance killed, and every stream resuming on a second instance with its `Last-Event-ID`:
//!   time to caught up, exactness, statements counted by `pg_stat_statements`, peak memory.
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

mod attacks;
mod catch_up;
mod cold_start;
mod fleet;
mod many_streams;
mod measure;
mod poisoning;
mod postgres;
mod publishing;
mod relay;
mod report;
mod rooms;
mod run;
mod setup;
mod sse_client;
mod steps;
mod storm;
mod writers;

use attacks::*;
use catch_up::*;
use cold_start::*;
use fleet::*;
use many_streams::*;
use measure::*;
use poisoning::*;
use postgres::*;
use publishing::*;
use relay::*;
use report::*;
use rooms::*;
use run::*;
use setup::*;
use sse_client::*;
use steps::*;
use storm::*;
use writers::*;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use pgrelay::auth::Keys;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use pgrelay_cluster::TempCluster;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Res<T> = Result<T, BoxError>;

/// The secret the relay verifies the subscribers' tokens with.
pub(crate) const SECRET: &str = "pgrelay-bench-secret-0123456789-abcdef";

/// Connected subscribers in the large phases (each a distinct participant).
pub(crate) const MANY: u32 = 10_000;

/// Connected subscribers in the small latency phase and the throughput ladder.
pub(crate) const FEW: u32 = 1_000;

/// Recipients of every benchmark message.
pub(crate) const RECIPIENTS: usize = 3;

/// Writer connections, each with its own share of the schedule.
pub(crate) const WRITERS: usize = 8;

/// Messages per second in the latency phases.
pub(crate) const LATENCY_RATE: f64 = 1_000.0;

/// A throughput step passes when p99 stays under this.
pub(crate) const P99_LIMIT_MS: f64 = 50.0;

/// ...and the writers commit at least this share of the offered rate.
pub(crate) const KEPT_SCHEDULE: f64 = 0.97;

/// A message's payload key is `run · KEY_BASE + sequence number`.
pub(crate) const KEY_BASE: i64 = 1_000_000_000;

/// Padding that makes a payload the size of a short chat message.
pub(crate) const TEXT: &str =
    "a benchmark message, about as long as a short line of chat in a browser tab";

/// A collector that hears nothing for this long gives up on the missing deliveries.
pub(crate) const SILENCE: Duration = Duration::from_secs(5);

/// How long collectors keep listening after the last expected delivery, to catch duplicates.
pub(crate) const DUPLICATE_WATCH: Duration = Duration::from_millis(200);

/// Streams opened at once while connecting subscribers.
pub(crate) const OPEN_CONCURRENCY: usize = 200;

/// Open files this process (and the relay it spawns) needs: two sockets per subscriber on
/// loopback are split between the two processes, plus database connections and slack.
pub(crate) const WANTED_FILES: u64 = 65_536;
pub(crate) const NEEDED_FILES: u64 = MANY as u64 + 1_000;

pub(crate) const USAGE: &str =
    "usage: cargo run --release --example bench [-- --quick] [-- --throughput | --latency | --publish | --fleet | --streams | --attacks | --catch-up | --storm] [-- --no-build]

  --quick      short smoke run (under 2 minutes): shorter phases, fewer throughput steps
  --throughput only the ceilings and the throughput ladders (with 1,000 subscribers), for
               trying a change to the hot path in about two minutes
  --latency    only the LISTEN floor, memory per idle stream, commit-to-SSE latency with
               10,000 and 1,000 subscribers, broadcasts to the 10,000 and the relay's CPU per
               event against the socket floor, in about two minutes (add --quick for a
               shorter run)
  --publish    only the 1-row ceiling, POST /v1/messages throughput from 100 publishers,
               with group commit and without (--publish-batch 1), and 50 publishers beside
               one sender posting payloads the database refuses, in about two minutes
  --fleet      only 1, 3 and 10 instances on one database under the latency load, and what
               each adds to the database per message
  --streams    only the many-streams phase: 19,000 streams on one instance, then 100,000
               over six instances (client side in child processes), in about two minutes
  --attacks    only the database-side attacks: how long others wait while a writer holds its
               transaction open (12 s), and what retention deletes after a backdated row and
               a long transaction, and whether a stream behind the pruned point gets reset
  --catch-up   only the catch-up phase: 1,000 of 1,000,000 rows by stream and by GET, for a
               participant and for a member of 20 rooms, in about a minute
  --storm      only the reconnect storm (storm.rs): 12,000 streams on one instance with
               messages flowing, that instance killed, every stream resuming on a second one
               at once; about a minute (PGRELAY_BENCH_RELAY=path runs another relay build)
  --no-build   do not run `cargo build --release --bin pgrelay` first

Starts its own throwaway PostgreSQL and its own `target/release/pgrelay serve` processes on
127.0.0.1, prints a Markdown summary on stdout and progress on stderr.";

/// How long each phase runs.
pub(crate) struct Profile {
    pub(crate) quick: bool,
    /// Only the ceilings and the throughput ladders (`--throughput`).
    pub(crate) throughput_only: bool,
    /// Only the floor, memory, latency and CPU per event (`--latency`).
    pub(crate) latency_only: bool,
    /// Only the ceiling, `POST` throughput with and without group commit, and poisoning
    /// (`--publish`).
    pub(crate) publish_only: bool,
    /// Only 1, 3 and 10 instances on one database (`--fleet`).
    pub(crate) fleet_only: bool,
    /// Only the many-streams phase (`--streams`).
    pub(crate) streams_only: bool,
    /// Only the database-side attacks (`--attacks`).
    pub(crate) attacks_only: bool,
    /// Only the catch-up phase (`--catch-up`).
    pub(crate) catch_up_only: bool,
    pub(crate) floor: Duration,
    pub(crate) latency: Duration,
    pub(crate) ceiling: Duration,
    pub(crate) step: Duration,
    pub(crate) idle: Duration,
    pub(crate) fanout: Duration,
    pub(crate) bisections: usize,
    pub(crate) catch_up_rows: i64,
    pub(crate) catch_up_repeats: usize,
    pub(crate) cold_starts: usize,
    pub(crate) fetch_calls: usize,
    pub(crate) time_limit: Duration,
}

impl Profile {
    pub(crate) fn full() -> Profile {
        Profile {
            quick: false,
            throughput_only: false,
            latency_only: false,
            publish_only: false,
            fleet_only: false,
            streams_only: false,
            attacks_only: false,
            catch_up_only: false,
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

    pub(crate) fn quick() -> Profile {
        Profile {
            quick: true,
            throughput_only: false,
            latency_only: false,
            publish_only: false,
            fleet_only: false,
            streams_only: false,
            attacks_only: false,
            catch_up_only: false,
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

pub(crate) struct Options {
    pub(crate) profile: Profile,
    pub(crate) build: bool,
}

impl Options {
    pub(crate) fn from_args() -> Result<Options, String> {
        let mut options = Options {
            profile: Profile::full(),
            build: true,
        };
        let mut throughput_only = false;
        let mut latency_only = false;
        let mut publish_only = false;
        let mut fleet_only = false;
        let mut streams_only = false;
        let mut attacks_only = false;
        let mut catch_up_only = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => options.profile = Profile::quick(),
                "--throughput" => throughput_only = true,
                "--latency" => latency_only = true,
                "--publish" => publish_only = true,
                "--fleet" => fleet_only = true,
                "--streams" => streams_only = true,
                "--attacks" => attacks_only = true,
                "--catch-up" => catch_up_only = true,
                "--no-build" => options.build = false,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        options.profile.throughput_only = throughput_only;
        options.profile.latency_only = latency_only;
        options.profile.publish_only = publish_only;
        options.profile.fleet_only = fleet_only;
        options.profile.streams_only = streams_only;
        options.profile.attacks_only = attacks_only;
        options.profile.catch_up_only = catch_up_only;
        Ok(options)
    }
}

/// Logs warnings to stderr and starts the runtime a bench run works on; `None` (said on
/// stderr) when tokio cannot start.
fn bench_runtime() -> Option<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("bench: cannot start tokio: {error}");
            None
        }
    }
}

pub(crate) fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(HOLD_STREAMS) {
        return hold_streams_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some(STORM_STREAMS) {
        return storm_streams_main(&args[1..]);
    }
    if args.iter().any(|arg| arg == STORM) {
        return storm_main();
    }
    let options = match Options::from_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = bench_runtime() else {
        return ExitCode::FAILURE;
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
