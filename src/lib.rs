//! pgrelay turns PostgreSQL into a real-time message broker for browsers.
//!
//! Applications insert rows into the outbox table `pgrelay.messages` (or attach their own
//! table to it); each relay instance keeps one `LISTEN` connection and streams every message
//! to its participants over Server-Sent Events. Ids are assigned in commit order, so a client
//! that resumes with the last id it saw gets exactly what it missed, from any instance: the
//! database is the only broker.
//!
//! # Layout
//!
//! - [`config`]: command-line flags, each with its environment variable.
//! - [`migrate`]: applies the SQL in `sql/` (outbox table, commit-ordered ids, NOTIFY trigger).
//! - [`listener`]: the dedicated LISTEN connection: reconnects, gap fills, dispatch.
//! - [`registry`]: participant → open streams, each with a bounded inbox.
//! - [`signal`]: live-only events (typing, presence).
//! - [`limits`]: per-client rate and concurrency limits.
//! - [`stream`]: one subscriber's SSE stream: catch-up, live, keep-alive, expiry, shutdown.
//! - [`frame`]: the stream's wire format, each event rendered once into bytes.
//! - [`server`]: the accept loop: connection limit, header timeout, graceful shutdown.
//! - [`http`]: the router and its handlers; [`error`] turns failures into JSON answers.
//! - [`auth`]: HS256 JSON Web Tokens: verify and mint.
//! - [`store`]: the query pool and every query; [`tls`]: `sslmode` as libpq means it.
//! - [`metrics`]: Prometheus counters and the latency histogram.
//! - [`presence`]: who is online across instances, announced to each participant's audience.
//! - [`retention`]: prunes messages older than the retention period, one instance at a time.
//! - [`state`]: what the tasks of a running relay share.
//! - [`cluster`]: a throwaway PostgreSQL for `pgrelay demo` and the tests.
//! - [`sse`]: an event-stream parser for `pgrelay tail` and the tests.
//! - [`tail`], [`demo`]: the `tail` and `demo` subcommands; [`shutdown`]: Ctrl-C and SIGTERM.
//!
//! # Data flow
//!
//! `INSERT INTO pgrelay.messages` → at COMMIT the deferred trigger draws the id under a table
//! lock and sends an empty `NOTIFY pgrelay` (sql/) → the [`listener`] reads every message and
//! signal committed since the last ones it read, from the tables, with its own role (one
//! prepared query per batch of wake-ups, on the LISTEN connection itself) → the [`registry`]
//! pushes each row that has local subscribers into the inboxes of its participants' streams
//! → each [`stream`] drops ids it already sent and writes the rest as SSE events. A stream
//! whose inbox overflowed, or that may have missed notifications while the listener
//! reconnected, reads the table from its cursor instead. A notification is only a hint: any
//! login may send one, so nothing in it is read.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod frame;
pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod presence;
pub mod registry;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod signal;
pub mod sse;
pub mod state;
pub mod store;
pub mod stream;
pub mod tail;
pub mod tls;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Keys;
use crate::limits::{ConcurrencyLimit, RateLimiter};
use crate::registry::Registry;
use crate::state::{Settings, Shared};
use crate::store::DbError;

/// Everything `run` needs to serve.
pub struct RelayConfig {
    /// Connection string for the query pool (may go through a transaction-mode pooler).
    pub database_url: String,
    /// Direct session connection for LISTEN.
    pub listen_database_url: String,
    /// Size of the query pool.
    pub pool_size: usize,
    /// Token keys.
    pub keys: Keys,
    /// Behaviour of the running relay.
    pub settings: Settings,
    /// Connection limits of the HTTP server.
    pub limits: server::ConnectionLimits,
}

/// Whether `kind` may name a message or signal: it becomes the SSE `event:` field, so it must
/// not be able to break the framing, and the relay's own event names are reserved. The SQL
/// CHECK constraint `pgrelay.valid_kind` is the same rule.
///
/// ```
/// assert!(pgrelay::valid_kind("chat.edit"));
/// assert!(!pgrelay::valid_kind("two words"));
/// assert!(!pgrelay::valid_kind("line\nbreak"));
/// assert!(!pgrelay::valid_kind("presence")); // reserved for the relay
/// assert!(!pgrelay::valid_kind("position")); // the stream's opening event
/// ```
pub fn valid_kind(kind: &str) -> bool {
    (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && !matches!(kind, "presence" | "position" | "reset" | "token_expired")
}

/// Longest participant (or sender, or token subject) name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Whether `name` may name a participant, a sender or a token's subject: 1 to 256 bytes with
/// no control characters and no Unicode format characters (invisible ones such as U+200B, and
/// U+202E, which reverses how the rest of a name is displayed). Names appear in other people's
/// streams, so one must not be able to pass for another. The SQL function
/// `pgrelay.valid_name` is the same rule and guards every stored row.
///
/// ```
/// assert!(pgrelay::valid_name("alice"));
/// assert!(pgrelay::valid_name("Zoë 🦀"));
/// assert!(!pgrelay::valid_name(""));
/// assert!(!pgrelay::valid_name("bob\u{0}"));
/// assert!(!pgrelay::valid_name("\u{202E}ecila"));
/// assert!(!pgrelay::valid_name("ali\u{200B}ce"));
/// ```
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && !name
            .chars()
            .any(|c| c.is_control() || is_format_character(c))
}

/// Unicode's format characters (general category Cf), as of Unicode 15; the SQL rule lists
/// the same ranges.
fn is_format_character(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Serves the relay on `listener` until `shutdown` resolves, then ends every stream, stops
/// the listener and returns within the grace period.
pub async fn run(
    config: RelayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DbError> {
    let pool = store::connect_pool(&config.database_url, config.pool_size)?;
    check_schema(&pool, &config.settings.channel).await?;
    let grace = config.settings.grace;
    let settings = &config.settings;
    let signal_limiter = RateLimiter::new(settings.signal_rate, settings.signal_burst);
    let publish_limiter = RateLimiter::new(settings.publish_rate, settings.publish_burst);
    let presence_limiter = RateLimiter::new(PRESENCE_RATE, PRESENCE_BURST);
    let history_limit = ConcurrencyLimit::new(settings.max_history_requests);
    let history_reads = Semaphore::new(history_connections(config.pool_size));
    let shared = Arc::new(Shared {
        settings: config.settings,
        pool,
        registry: Arc::new(Registry::default()),
        keys: config.keys,
        listener_up: AtomicBool::new(false),
        metrics: Default::default(),
        signal_limiter,
        publish_limiter,
        presence_limiter,
        history_limit,
        history_reads,
        instance: instance_name(),
        shutdown: CancellationToken::new(),
    });
    let listener_task = tokio::spawn(listener::run(
        Arc::clone(&shared),
        config.listen_database_url,
    ));

    let pruner_task = tokio::spawn(retention::run(Arc::clone(&shared)));
    let presence_task = tokio::spawn(presence::run(Arc::clone(&shared)));

    let app = http::app(Arc::clone(&shared));
    let stopping = shared.shutdown.clone();
    let limits = config.limits;
    let mut server = tokio::spawn(server::serve(listener, app, limits, stopping));
    info!("relay ready");
    tokio::select! {
        result = &mut server => {
            shared.shutdown.cancel();
            result?;
        }
        _ = shutdown => {
            info!("shutting down");
            // Streams watch this token and end, which lets axum's graceful shutdown finish.
            shared.shutdown.cancel();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result?,
                Err(_) => {
                    warn!(?grace, "grace period over; closing the remaining connections");
                    server.abort();
                }
            }
        }
    }
    let _ = tokio::join!(listener_task, pruner_task, presence_task);
    shared.pool.close();
    info!("stopped");
    Ok(())
}

/// `GET /v1/presence` requests each caller may make per second, sustained, and in a burst.
const PRESENCE_RATE: f64 = 5.0;
const PRESENCE_BURST: f64 = 20.0;

/// How many of the pool's connections catch-ups and history reads may hold at once: three
/// quarters, so that at least one (and a quarter of the pool) is always left for publishing,
/// presence, pruning and `/readyz`.
fn history_connections(pool_size: usize) -> usize {
    (pool_size * 3 / 4).clamp(1, pool_size.saturating_sub(1).max(1))
}

/// A name for this process, unique per start: host, pid and start time.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}:{}:{started}", std::process::id())
}

/// Refuses to start against a database without the schema, or whose trigger notifies on
/// another channel: either way no message would ever arrive.
async fn check_schema(pool: &store::DbPool, channel: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    match migrate::installed_channel(&client).await? {
        None => Err(
            "the pgrelay schema is missing in this database; run `pgrelay migrate` first".into(),
        ),
        Some(installed) if installed != channel => Err(format!(
            "the outbox trigger notifies on channel {installed:?} but --channel is {channel:?}; \
             run `pgrelay migrate --channel {channel}` or change --channel"
        )
        .into()),
        Some(_) => Ok(()),
    }
}
