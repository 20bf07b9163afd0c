//! The HTTP API: [`app`] builds the router; each route family has a module of its own.
//!
//! - [`streams`]: `GET /v1/stream`, the Server-Sent-Events stream;
//! - [`history`]: `GET /v1/messages`, the same events as JSON pages;
//! - [`fetch`]: `GET /v1/messages/{id}`, one message whole (an `oversized` one, say);
//! - [`publish`]: `POST /v1/messages` and `POST /v1/signals`;
//! - [`presence`]: `GET /v1/presence`;
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics` (on the public address, or on one of its own
//!   with [`metrics_app`]);
//! - [`assets`]: the browser client, the OpenAPI document and the demo page;
//! - [`extract`]: the token and query-string extractors every route shares;
//! - [`addresses`]: whom a caller hears and may address (person, rooms, everyone);
//! - [`error`]: [`ApiError`], the JSON answer of every failure.
//!
//! Every failure is an [`ApiError`], so every error answer is JSON with its status.

mod addresses;
mod assets;
mod error;
mod extract;
mod fetch;
mod history;
mod idempotency;
mod ops;
mod presence;
mod publish;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

pub use error::ApiError;
pub use publish::largest_body;

use crate::auth::Keys;
use crate::budget::ByteBudget;
use crate::config::Settings;
use crate::limits::{ConcurrencyLimit, RateLimiter};
use crate::listener::Health;
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::store::DbPool;
use crate::stream::StreamContext;

/// What the handlers share.
pub struct AppState {
    /// Configuration.
    pub settings: Settings,
    /// Query connections (never used for LISTEN: pooled connections drop notifications).
    pub pool: DbPool,
    /// Token keys.
    pub keys: Keys,
    /// Opens streams; its registry and read permits are the ones history reads use too.
    pub streams: Arc<StreamContext>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Whether the LISTEN connection is up and numbering keeps up; `/readyz` reads it.
    pub listener: Arc<Health>,
    /// Per-client rate and concurrency limits.
    pub limits: RequestLimits,
    /// Stores `POST /v1/messages` in shared transactions (group commit).
    pub publisher: Publisher,
    /// The bytes whole messages (`GET /v1/messages/{id}`) may hold at once on this instance.
    pub fetch_budget: ByteBudget,
}

/// Per-client limits, so one token holder cannot exhaust the relay for everyone else.
pub struct RequestLimits {
    /// Per-sender rate of `POST /v1/signals`.
    pub signals: RateLimiter,
    /// Per-sender rate of `POST /v1/messages`.
    pub publishing: RateLimiter,
    /// Per-token-subject rate of both for tokens with scope `service` (backends), which
    /// publish for many senders.
    pub service: RateLimiter,
    /// Per-caller rate of `GET /v1/presence`.
    pub presence: RateLimiter,
    /// Per-participant `GET /v1/messages` in flight.
    pub history: ConcurrencyLimit,
}

/// `GET /v1/presence` requests each caller may make per second, sustained, and in a burst.
const PRESENCE_RATE: f64 = 5.0;
const PRESENCE_BURST: f64 = 20.0;

impl RequestLimits {
    /// The limits `settings` asks for.
    pub fn new(settings: &Settings) -> RequestLimits {
        RequestLimits {
            signals: RateLimiter::new(settings.signal_rate, settings.signal_burst),
            publishing: RateLimiter::new(settings.publish_rate, settings.publish_burst),
            service: RateLimiter::new(
                settings.service_publish_rate,
                settings.service_publish_burst,
            ),
            presence: RateLimiter::new(PRESENCE_RATE, PRESENCE_BURST),
            history: ConcurrencyLimit::new(settings.max_history_requests),
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAt {
    /// With the API, on the public address.
    Public,
    /// Only on an address of its own ([`metrics_app`]); the public one answers 404.
    Apart,
}

/// Builds the relay's router.
pub fn app(state: Arc<AppState>, metrics_at: MetricsAt) -> Router {
    let cors = cors_layer(&state.settings.allow_origins);
    let mut router = Router::new();
    if state.settings.demo_page {
        router = router.route("/", get(assets::demo_page));
    }
    if metrics_at == MetricsAt::Public {
        router = router.route("/metrics", get(ops::metrics));
    }
    let stream = get(streams::stream).layer(middleware::map_response(streams::end_connection));
    router
        .route("/v1/stream", stream)
        .route(
            "/v1/messages",
            get(history::list_messages).post(publish::post_message),
        )
        .route("/v1/messages/{id}", get(fetch::whole_message))
        .route("/v1/signals", post(publish::post_signal))
        .route("/v1/presence", get(presence::presence))
        .route("/v1/client.js", get(assets::client_js))
        .route("/v1/openapi.json", get(assets::openapi_json))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors)
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// The router of the address that serves `/metrics` apart from the API (`--metrics-bind`):
/// that route only, so a scraper's network reaches nothing else.
pub fn metrics_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Browsers on other origins may call the API; streams need `Access-Control-Allow-Origin`
/// even without a preflight, POSTs with `Authorization` or JSON get one.
fn cors_layer(allow_origins: &[String]) -> CorsLayer {
    let origin = if allow_origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            allow_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// A span per request naming the method and path only: query strings carry tokens.
async fn request_span(request: Request, next: Next) -> Response {
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    next.run(request).instrument(span).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
