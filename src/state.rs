//! The state every task of a running relay shares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::limits::{ConcurrencyLimit, RateLimiter};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::DbPool;

/// What a running relay is configured to do (the parts its handlers and tasks read).
#[derive(Debug, Clone)]
pub struct Settings {
    /// NOTIFY channel the listener LISTENs on.
    pub channel: String,
    /// Interval of the SSE keep-alive comment.
    pub keepalive: Duration,
    /// How long messages are kept for catch-up.
    pub retention: Duration,
    /// Largest accepted payload, in bytes of JSON.
    pub max_payload: usize,
    /// Most participants one message may name.
    pub max_participants: usize,
    /// Most open streams of one participant on this instance.
    pub max_streams_per_participant: usize,
    /// Whether `GET /` serves the demo chat page.
    pub demo_page: bool,
    /// CORS origins allowed from browsers; empty means any.
    pub allow_origins: Vec<String>,
    /// How often the listener proves its connection with a heartbeat NOTIFY to itself; a
    /// heartbeat that has not come back one interval later means the connection is lost.
    pub heartbeat: Duration,
    /// How long shutdown waits for open work.
    pub grace: Duration,
    /// How long a presence row lives without a refresh: a crashed instance's participants go
    /// offline this long after its last heartbeat.
    pub presence_ttl: Duration,
    /// How long a participant's last stream must stay closed before they count as offline.
    pub presence_debounce: Duration,
    /// Signals each sender may send per second (sustained).
    pub signal_rate: f64,
    /// Signals each sender may send in a burst.
    pub signal_burst: f64,
    /// Messages each sender may publish over HTTP per second (sustained).
    pub publish_rate: f64,
    /// Messages each sender may publish over HTTP in a burst.
    pub publish_burst: f64,
    /// Most `GET /v1/messages` requests of one participant in flight on this instance.
    pub max_history_requests: usize,
}

impl Default for Settings {
    /// The command line's defaults, for embedding the relay as a library.
    fn default() -> Settings {
        Settings {
            channel: "pgrelay".into(),
            keepalive: Duration::from_secs(15),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_payload: 64 * 1024,
            max_participants: 1000,
            max_streams_per_participant: 32,
            allow_origins: Vec::new(),
            demo_page: false,
            heartbeat: Duration::from_secs(5),
            grace: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
            presence_debounce: Duration::from_secs(3),
            signal_rate: 5.0,
            signal_burst: 10.0,
            publish_rate: 20.0,
            publish_burst: 50.0,
            max_history_requests: 4,
        }
    }
}

/// Handles shared by the HTTP handlers, the streams and the listener; cheap to clone as `Arc`.
pub struct Shared {
    /// Configuration.
    pub settings: Settings,
    /// Query connections (never used for LISTEN: pooled connections drop notifications).
    pub pool: DbPool,
    /// Open streams by participant; the listener delivers into it.
    pub registry: Arc<Registry>,
    /// Token keys.
    pub keys: Keys,
    /// True while the LISTEN connection is up; `/readyz` reads it.
    pub listener_up: AtomicBool,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// This process's name in `pgrelay.presence`, unique per start.
    pub instance: String,
    /// Per-sender rate limit of `POST /v1/signals`.
    pub signal_limiter: RateLimiter,
    /// Per-sender rate limit of `POST /v1/messages`.
    pub publish_limiter: RateLimiter,
    /// Per-caller rate limit of `GET /v1/presence`.
    pub presence_limiter: RateLimiter,
    /// Per-participant limit of `GET /v1/messages` in flight.
    pub history_limit: ConcurrencyLimit,
    /// The pool connections stream catch-ups and history reads may use at once: the rest stay
    /// free for publishing, presence and `/readyz`, however many readers fall behind.
    pub history_reads: Semaphore,
    /// Cancelled once at shutdown; the listener and every stream watch it.
    pub shutdown: CancellationToken,
}
