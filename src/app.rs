//! Composition: [`run`] builds every part of a relay from its configuration, starts the
//! tasks, serves HTTP until shutdown, and stops them in order.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::budget::ByteBudget;
use crate::catch_up::{self, CatchUps};
use crate::config::{ConnectionLimits, RelayConfig, Settings};
use crate::error::Error;
use crate::http::{self, AppState, MetricsAt, RequestLimits};
use crate::listener::{self, Health, Listener};
use crate::metrics::Metrics;
use crate::open_reads::OpenReads;
use crate::presence::{self, Presence};
use crate::publisher::Publisher;
use crate::registry::Registry;
use crate::replica::ExactReads;
use crate::stream::StreamContext;
use crate::{attach_skips, migrate, retention, server, store};

/// The sockets a relay serves HTTP on: the public address, and optionally one of its own for
/// `/metrics` scrapers (then the public address answers `/metrics` with 404). A bare
/// `TcpListener` is the public address alone.
pub struct Listeners {
    /// The API, streams, health checks (and `/metrics` when `metrics` is `None`).
    pub public: TcpListener,
    /// `/metrics` only (`--metrics-bind`).
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Listeners {
        Listeners {
            public,
            metrics: None,
        }
    }
}

/// Connections the metrics address holds at once: scrapers are few.
const METRICS_CONNECTIONS: usize = 16;

/// Serves the relay on `listeners` until `shutdown` resolves, then ends every stream, stops
/// the listener and returns within the grace period.
pub async fn run(
    config: RelayConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Listeners {
        public: listener,
        metrics: metrics_listener,
    } = listeners.into();
    let RelayConfig {
        database_url,
        listen_database_url,
        replica_url,
        pool_size,
        keys,
        settings,
        limits,
    } = config;
    let pool = store::connect_pool(&database_url, pool_size)?;
    check_schema(&pool, &settings.channel).await.map_err(
        |error| match crate::tls::connect_config(&database_url) {
            Ok((config, _)) => error.while_connecting(&config),
            Err(_) => error,
        },
    )?;
    let grace = settings.grace;
    let stopping = CancellationToken::new();
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let listener_health = Arc::new(Health::default());
    let replica = replica_url
        .as_deref()
        .map(|url| store::connect_pool(url, pool_size))
        .transpose()?;
    let exact = Arc::new(ExactReads::new(pool.clone(), replica));
    let replica_task = tokio::spawn({
        let (exact, stopping) = (Arc::clone(&exact), stopping.clone());
        async move { exact.watch_replica(stopping).await }
    });

    let listener_task = tokio::spawn(listener::run(
        Listener {
            channel: settings.channel.clone(),
            heartbeat: settings.heartbeat,
            max_event_bytes: event_limit(&settings),
            pool: pool.clone(),
            registry: Arc::clone(&registry),
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&listener_health),
            marks: exact.marks(),
            shutdown: stopping.clone(),
        },
        listen_database_url,
    ));
    let pruner_task = tokio::spawn(retention::run(
        pool.clone(),
        settings.retention,
        Arc::clone(&metrics),
        stopping.clone(),
    ));
    let skips_task = tokio::spawn(attach_skips::run(
        pool.clone(),
        Arc::clone(&metrics),
        settings.heartbeat,
        stopping.clone(),
    ));
    // Started before serving, and never waited for: a relay whose identity provider is down
    // serves HS256 tokens and says on /readyz that it is not ready until a key set loads.
    let jwks_task = keys
        .jwks()
        .map(|jwks| tokio::spawn(jwks.clone().keep_fresh(stopping.clone())));
    let presence_task = tokio::spawn(presence::run(Presence {
        pool: pool.clone(),
        registry: Arc::clone(&registry),
        instance: instance_name(),
        ttl: settings.presence_ttl,
        debounce: settings.presence_debounce,
        shutdown: stopping.clone(),
    }));

    let reader = Arc::new(catch_up::Reader {
        exact,
        registry,
        reads: Arc::new(Semaphore::new(history_connections(pool_size))),
        page_budget: ByteBudget::new(settings.catch_up_budget),
        max_event_bytes: event_limit(&settings),
        metrics: Arc::clone(&metrics),
    });
    let streams = Arc::new(StreamContext {
        catch_ups: CatchUps::start(Arc::clone(&reader)),
        reader,
        keepalive: settings.keepalive,
        max_per_participant: settings.max_streams_per_participant,
        shutdown: stopping.clone(),
        open_reads: OpenReads::start(pool.clone()),
    });
    let publish_batch = settings.publish_batch;
    let max_body = http::largest_body(&settings);
    let state = Arc::new(AppState {
        limits: RequestLimits::new(&settings),
        fetch_budget: ByteBudget::new(settings.fetch_budget),
        settings,
        pool: pool.clone(),
        keys,
        streams,
        metrics,
        listener: listener_health,
        publisher: Publisher::start(pool.clone(), publish_batch),
    });
    let metrics_at = match metrics_listener {
        Some(_) => MetricsAt::Apart,
        None => MetricsAt::Public,
    };
    let metrics_task = metrics_listener.map(|metrics_listener| {
        let metrics_limits = ConnectionLimits {
            max_connections: METRICS_CONNECTIONS,
            ..limits.clone()
        };
        let app = http::metrics_app(Arc::clone(&state));
        tokio::spawn(server::serve(
            metrics_listener,
            app,
            metrics_limits,
            0,
            stopping.clone(),
        ))
    });
    let app = http::app(state, metrics_at);
    let mut server = tokio::spawn(server::serve(
        listener,
        app,
        limits,
        max_body,
        stopping.clone(),
    ));
    info!("relay ready");
    tokio::select! {
        result = &mut server => {
            stopping.cancel();
            result.map_err(server_failed)?;
        }
        _ = shutdown => {
            info!("shutting down");
            // Streams watch this token and end, which lets axum's graceful shutdown finish.
            stopping.cancel();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result.map_err(server_failed)?,
                Err(_) => {
                    warn!(?grace, "grace period over; closing the remaining connections");
                    server.abort();
                }
            }
        }
    }
    if let Some(metrics_task) = metrics_task {
        // Its connections are short requests: it has stopped by now or stops at once.
        let _ = tokio::time::timeout(grace, metrics_task).await;
    }
    if let Some(jwks_task) = jwks_task {
        // It stops at the token, except in a fetch, which its timeout bounds.
        let _ = tokio::time::timeout(grace, jwks_task).await;
    }
    let _ = tokio::join!(
        listener_task,
        pruner_task,
        skips_task,
        presence_task,
        replica_task
    );
    pool.close();
    info!("stopped");
    Ok(())
}

/// The accept loop panicked or was cancelled: the relay cannot serve any more.
fn server_failed(error: tokio::task::JoinError) -> Error {
    Error::connection(format!("the HTTP server stopped: {error}"))
}

/// How many of the pool's connections catch-ups and history reads may hold at once: three
/// quarters, so that at least one (and a quarter of the pool) is always left for publishing,
/// presence, pruning and `/readyz`.
fn history_connections(pool_size: usize) -> usize {
    (pool_size * 3 / 4).clamp(1, pool_size.saturating_sub(1).max(1))
}

/// `--max-event-bytes` as the queries take it.
fn event_limit(settings: &Settings) -> i64 {
    i64::try_from(settings.max_event_bytes).unwrap_or(i64::MAX)
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

/// Refuses to start against a database without the schema, with a schema too old to number
/// messages, or whose trigger notifies on another channel: no message would ever arrive.
async fn check_schema(pool: &store::DbPool, channel: &str) -> Result<(), Error> {
    let client = pool.get().await?;
    match migrate::installed_channel(&client).await? {
        None => Err(Error::setup(
            "the pgrelay schema is missing in this database; run `pgrelay migrate` first",
        )),
        Some(installed) if installed != channel => Err(Error::setup(format!(
            "the outbox trigger notifies on channel {installed:?} but --channel is {channel:?}; \
             run `pgrelay migrate --channel {channel}` or change --channel"
        ))),
        Some(_) if !migrate::has_sequencer(&client).await? => Err(Error::setup(
            "the pgrelay schema in this database predates this relay (no pgrelay.sequence); \
             run `pgrelay migrate` first",
        )),
        Some(_) => Ok(()),
    }
}
