//! An identity provider's published key set (`--jwks-url`), kept fresh: fetched at start and
//! every 5 minutes, again when a token names a `kid` the set lacks (at most once every
//! 10 s, however many such tokens arrive), and never lost to a bad fetch.
//!
//! A fetch that fails (no connection, a timeout, a status other than 200, a body over
//! [`MAX_SET_BYTES`], or a body that holds no usable key) changes nothing: the last good set
//! keeps verifying, so an outage at the provider locks no one out. Until a first set has
//! loaded, `/readyz` says why the relay is not ready and asymmetric tokens are answered 503.
//!
//! Every fetch goes through one async lock, held for the fetch: tokens with an unknown `kid`
//! that arrive while a fetch is in flight wait for that fetch (bounded by its timeouts)
//! instead of starting their own, then find the fetch recent and do not fetch again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_LENGTH};
use reqwest::Url;
use tokio_util::sync::CancellationToken;

use super::jwk::{Algorithm, KeySet};
use super::TokenError;

/// Largest key set taken. Real ones are a few KiB; a bigger answer is not a key set.
pub const MAX_SET_BYTES: usize = 256 * 1024;

/// How long a fetch may take to connect, and in all (body included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// When the set is fetched.
#[derive(Debug, Clone, Copy)]
pub struct JwksTiming {
    /// Between fetches while they succeed.
    pub refresh: Duration,
    /// Least time between a fetch and one caused by an unknown `kid`: a flood of made-up
    /// `kid`s costs the provider one request per interval.
    pub min_refetch: Duration,
    /// After a failed fetch, the first retry; each further failure doubles it, up to a minute
    /// (or `refresh`, if shorter).
    pub retry: Duration,
}

impl Default for JwksTiming {
    fn default() -> JwksTiming {
        JwksTiming {
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
            retry: Duration::from_secs(1),
        }
    }
}

/// How a fetch ended, as `/metrics` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A usable set arrived and replaced the last one.
    Loaded,
    /// No answer: the connection failed or a timeout passed.
    Unreachable,
    /// An answer other than 200.
    Status,
    /// A body larger than [`MAX_SET_BYTES`].
    TooLarge,
    /// A body that is not a key set, or holds no usable key.
    Malformed,
}

impl FetchOutcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [FetchOutcome; 5] = [
        FetchOutcome::Loaded,
        FetchOutcome::Unreachable,
        FetchOutcome::Status,
        FetchOutcome::TooLarge,
        FetchOutcome::Malformed,
    ];

    /// The label `/metrics` gives it.
    pub fn label(self) -> &'static str {
        match self {
            FetchOutcome::Loaded => "loaded",
            FetchOutcome::Unreachable => "unreachable",
            FetchOutcome::Status => "status",
            FetchOutcome::TooLarge => "too_large",
            FetchOutcome::Malformed => "malformed",
        }
    }
}

/// The key set of one URL, shared by every request (cloning shares it).
#[derive(Clone)]
pub struct Jwks {
    shared: Arc<Shared>,
}

struct Shared {
    url: Url,
    client: reqwest::Client,
    timing: JwksTiming,
    /// The last set that loaded. A std lock: it is held only to clone or replace the `Arc`.
    current: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch started; held across each fetch so that fetches never overlap and
    /// an unknown `kid` that arrives mid-fetch waits for that fetch.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// Why the last fetch failed, while no set has loaded yet, for `/readyz`.
    failure: Mutex<String>,
    /// Fetches by outcome, indexed as [`FetchOutcome::ALL`].
    fetches: [AtomicU64; FetchOutcome::ALL.len()],
}

impl Jwks {
    /// The key set at `url`, not fetched yet (see [`Jwks::keep_fresh`]). The URL must be
    /// `https`, or `http` to a loopback address: keys fetched in the clear could be anyone's.
    pub fn new(url: &str, timing: JwksTiming) -> Result<Jwks, String> {
        let url = Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
        let host = url.host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(
                "the key set must be fetched over https (http only from a loopback \
                        address)"
                    .into(),
            );
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            // A redirect could lead anywhere, plain http included: the URL is the set's.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(Jwks {
            shared: Arc::new(Shared {
                url,
                client,
                timing,
                current: RwLock::new(None),
                fetching: tokio::sync::Mutex::new(None),
                failure: Mutex::new("no fetch has finished yet".into()),
                fetches: Default::default(),
            }),
        })
    }

    /// Checks a token's signature with the set's keys for `algorithm` named `kid`.
    /// [`TokenError::KeysUnavailable`] while no set has loaded.
    pub(super) fn verify(
        &self,
        algorithm: Algorithm,
        kid: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let set = self.current().ok_or(TokenError::KeysUnavailable)?;
        set.verify(algorithm, kid, message, signature)
    }

    /// Fetches the set because a token named a `kid` it lacks, unless a fetch started less
    /// than `min_refetch` ago; waits for a fetch in flight either way.
    pub(super) async fn refetch_for_unknown_kid(&self) {
        let mut last_start = self.shared.fetching.lock().await;
        if last_start.is_some_and(|start| start.elapsed() < self.shared.timing.min_refetch) {
            return;
        }
        *last_start = Some(Instant::now());
        self.fetch().await;
    }

    /// Fetches the set now and on its schedule until `shutdown`: every `refresh` while
    /// fetches succeed, sooner (backing off) after a failure.
    pub async fn keep_fresh(self, shutdown: CancellationToken) {
        let timing = self.shared.timing;
        let longest_retry = timing.refresh.min(Duration::from_secs(60));
        let mut retry = timing.retry;
        loop {
            let outcome = {
                let mut last_start = self.shared.fetching.lock().await;
                *last_start = Some(Instant::now());
                self.fetch().await
            };
            let wait = if outcome == FetchOutcome::Loaded {
                retry = timing.retry;
                timing.refresh
            } else {
                let wait = retry;
                retry = (retry * 2).min(longest_retry);
                wait
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Whether a set has loaded, or else why not (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Some(_) => Ok(()),
            None => Err(self.shared.failure.lock().unwrap().clone()),
        }
    }

    /// How many usable keys the current set holds (0 before one loads).
    pub fn key_count(&self) -> usize {
        self.current().map_or(0, |set| set.usable())
    }

    /// Fetches so far, by outcome.
    pub fn fetch_counts(&self) -> impl Iterator<Item = (FetchOutcome, u64)> + '_ {
        FetchOutcome::ALL
            .into_iter()
            .zip(&self.shared.fetches)
            .map(|(outcome, count)| (outcome, count.load(Ordering::Relaxed)))
    }

    /// The URL as logs show it: without its query string, where a provider might want a key.
    fn shown_url(&self) -> String {
        let url = &self.shared.url;
        format!("{}://{}{}", url.scheme(), url.authority(), url.path())
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.shared.current.read().unwrap().clone()
    }

    /// One fetch, with the fetching lock held by the caller: replaces the set if a usable one
    /// arrives, counts and logs the outcome either way.
    async fn fetch(&self) -> FetchOutcome {
        let started = Instant::now();
        let url = self.shown_url();
        let (outcome, detail) = match self.download().await {
            Ok(set) => {
                let detail = format!("{} keys ({} left out)", set.usable(), set.skipped());
                *self.shared.current.write().unwrap() = Some(Arc::new(set));
                (FetchOutcome::Loaded, detail)
            }
            Err((outcome, detail)) => (outcome, detail),
        };
        let index = FetchOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap();
        self.shared.fetches[index].fetch_add(1, Ordering::Relaxed);
        let millis = started.elapsed().as_millis() as u64;
        if outcome == FetchOutcome::Loaded {
            tracing::info!(%url, outcome = outcome.label(), millis, "key set fetched: {detail}");
        } else {
            let keeping = match self.current() {
                Some(set) => format!("keeping the last good set ({} keys)", set.usable()),
                None => "no set has loaded yet".to_owned(),
            };
            tracing::warn!(%url, outcome = outcome.label(), millis, "key set fetch failed: {detail}; {keeping}");
            *self.shared.failure.lock().unwrap() = format!("the last fetch failed: {detail}");
        }
        outcome
    }

    /// GETs the set, refusing a status other than 200 and a body over [`MAX_SET_BYTES`]
    /// (read no further than that), and parses it.
    async fn download(&self) -> Result<KeySet, (FetchOutcome, String)> {
        let unreachable = |error: reqwest::Error| {
            let what = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "could not connect"
            } else {
                "the connection failed"
            };
            (FetchOutcome::Unreachable, what.to_owned())
        };
        let mut response = self
            .shared
            .client
            .get(self.shared.url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err((FetchOutcome::Status, format!("answered {status}")));
        }
        let too_large = || {
            (
                FetchOutcome::TooLarge,
                format!("the body is larger than {} KiB", MAX_SET_BYTES / 1024),
            )
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_SET_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_SET_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body).map_err(|reason| (FetchOutcome::Malformed, reason))
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({}, {} keys)", self.shown_url(), self.key_count())
    }
}
