//! Operations: liveness, readiness and Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::extract::{bearer, unauthorized};
use super::{ApiError, AppState};
use crate::metrics::{self, ListenerGauges};
use crate::store;

/// `GET /healthz`: the process is running.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only while the LISTEN connection is up, numbering keeps up and the
/// database answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if !state.listener.is_up() {
        return Err(not_ready("the LISTEN connection is down"));
    }
    // A pass takes milliseconds; one heartbeat interval without a successful one means
    // committed messages are waiting for their ids (a relay stuck holding the order lock, or
    // this relay's role lacking the grant for pgrelay.sequence).
    let lag = state.listener.numbering_lag();
    if lag >= state.settings.heartbeat {
        return Err(not_ready(&format!(
            "committed messages have waited {:.1} s for their ids",
            lag.as_secs_f64()
        )));
    }
    if let Some(Err(why)) = state.keys.jwks().map(|jwks| jwks.readiness()) {
        return Err(not_ready(&format!(
            "the identity provider's key set (--jwks-url) has not loaded: {why}"
        )));
    }
    if !store::ping(&state.pool, Duration::from_secs(2)).await {
        return Err(not_ready("the database does not answer"));
    }
    Ok(Json(json!({ "status": "ready" })))
}

fn not_ready(message: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
}

/// `GET /metrics`: Prometheus text format, to a scraper that sends the configured bearer
/// credential, if there is one (the query string is not looked at: it would be logged by
/// proxies).
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.settings.metrics_token {
        let presented = bearer(&headers)?
            .ok_or_else(|| unauthorized("missing_token", "/metrics wants a bearer credential"))?;
        if !token.matches(presented.trim()) {
            return Err(unauthorized(
                "invalid_token",
                "that is not the metrics credential",
            ));
        }
    }
    let mut body = state.metrics.render(
        state.streams.reader.registry.stream_count(),
        ListenerGauges {
            up: state.listener.is_up(),
            numbering_lag: state.listener.numbering_lag().as_secs_f64(),
            listener_lag: state.listener.listener_lag().as_secs_f64(),
        },
        &[
            ("catch_up", &state.streams.reader.page_budget),
            ("fetch", &state.fetch_budget),
        ],
    );
    state.streams.reader.exact.render(&mut body);
    if let Some(jwks) = state.keys.jwks() {
        metrics::render_jwks(&mut body, jwks);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
