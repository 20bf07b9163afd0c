//! What a running relay is configured to do: everything [`crate::run`] needs, in one place.
//!
//! The command line (`src/cli/args.rs`) builds a [`RelayConfig`]; an application embedding
//! the relay builds one itself, starting from the defaults, which are the command line's.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::auth::Keys;

/// Everything `run` needs to serve.
pub struct RelayConfig {
    /// Connection string for the query pool (may go through a transaction-mode pooler).
    pub database_url: String,
    /// Direct session connection for LISTEN and for reading new rows.
    pub listen_database_url: String,
    /// A streaming read replica of the database, for catch-ups and history reads whenever
    /// its replay has reached what the read must see (`crate::replica`); `None` reads the
    /// primary alone.
    pub replica_url: Option<String>,
    /// Size of the query pool (and of the replica's).
    pub pool_size: usize,
    /// Token keys and the policy tokens must meet.
    pub keys: Keys,
    /// Behaviour of the running relay.
    pub settings: Settings,
    /// Connection limits of the HTTP server.
    pub limits: ConnectionLimits,
}

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
    /// heartbeat that has not come back one interval later means the connection is lost. Also
    /// how often the relay looks for new rows in `pgrelay.attach_skips`.
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
    /// Messages and signals each token with scope `service` (a backend) may publish per
    /// second, sustained, whichever senders it names: a backend publishes for many people.
    pub service_publish_rate: f64,
    /// Messages and signals each `service` token may publish in a burst.
    pub service_publish_burst: f64,
    /// Most `POST /v1/messages` one transaction commits (group commit); 1 commits each alone.
    pub publish_batch: usize,
    /// Most `GET /v1/messages` requests of one participant in flight on this instance.
    pub max_history_requests: usize,
    /// A stored message larger than this (its payload's JSON and its participants, in bytes)
    /// reaches streams and history pages as the `oversized` stand-in, never loaded whole.
    pub max_event_bytes: u64,
    /// Most bytes this instance holds for catch-up and history pages at once.
    pub catch_up_budget: u64,
    /// Most bytes this instance holds for whole messages (`GET /v1/messages/{id}`) at once.
    pub fetch_budget: u64,
    /// The bearer credential `/metrics` wants, if any.
    pub metrics_token: Option<MetricsToken>,
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
            service_publish_rate: 1000.0,
            service_publish_burst: 2000.0,
            publish_batch: 100,
            max_history_requests: 4,
            max_event_bytes: 1024 * 1024,
            catch_up_budget: 32 * 1024 * 1024,
            fetch_budget: 128 * 1024 * 1024,
            metrics_token: None,
        }
    }
}

/// Limits on connections, as configured.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most open HTTP connections; streams are connections, so this also caps streams.
    pub max_connections: usize,
    /// One deadline for each request head: from the connection's start for its first request,
    /// from the end of the previous answer for the next. A body must then keep arriving: no
    /// read of it waits longer.
    pub header_timeout: Duration,
    /// How long a write may stall before the connection is closed.
    pub write_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The command line's defaults.
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The bearer credential a Prometheus scraper sends for `/metrics`. Its `Debug` output hides
/// it, so no log line can carry it.
#[derive(Clone)]
pub struct MetricsToken(String);

impl MetricsToken {
    /// The credential `token`.
    pub fn new(token: impl Into<String>) -> MetricsToken {
        MetricsToken(token.into())
    }

    /// Whether `presented` is the credential. The comparison is of SHA-256 digests, byte by
    /// byte without stopping early, so its time tells nothing of how close a guess came.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let presented = Sha256::digest(presented.as_bytes());
        let difference = expected
            .iter()
            .zip(presented.iter())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        difference == 0
    }
}

impl fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

/// Channel names are identifiers: the SQL quotes them, but a plain name keeps
/// `LISTEN`/`NOTIFY` from psql simple too.
pub fn validate_channel(channel: &str) -> Result<(), String> {
    let valid = (1..=63).contains(&channel.len())
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "--channel {channel:?} must be 1 to 63 letters, digits or underscores"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_token_matches_itself_only_and_never_shows() {
        let token = MetricsToken::new("scrape-secret");
        assert!(token.matches("scrape-secret"));
        assert!(!token.matches("scrape-secreT"));
        assert!(!token.matches("scrape-secret "));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("scrape"));
    }
}
