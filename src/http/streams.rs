//! `GET /v1/stream`: Server-Sent Events for the token's participant.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::addresses;
use super::extract::{parse_id, Authenticated, Params};
use super::{ApiError, AppState};
use crate::auth;
use crate::stream::OpenError;

/// The query parameters of `GET /v1/stream`.
#[derive(Deserialize, Default)]
pub struct StreamParams {
    since_id: Option<String>,
    rooms: Option<String>,
}

/// Opens the stream, resuming after `Last-Event-ID` (a browser's reconnect) or `since_id`.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    Params(params): Params<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The relay never sends an empty id, so an empty header is malformed like any other.
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    // Both are checked, so a malformed one is answered even when the other one wins.
    let since_id = params
        .since_id
        .as_deref()
        .map(|id| parse_id("since_id", id))
        .transpose()?;
    let last_event_id = last_event_id
        .map(|id| parse_id("Last-Event-ID", id))
        .transpose()?;
    let resume = last_event_id.or(since_id);
    let expires_in = Duration::from_secs(claims.exp.saturating_sub(auth::now_unix()));
    let (access, newest) = addresses::listening(&state, &claims, params.rooms.as_deref()).await?;
    let events = state
        .streams
        .open(access, newest, resume, expires_in)
        .await
        .map_err(|error| match error {
            OpenError::TooManyStreams => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                "this participant has too many open streams; close one first",
            ),
            OpenError::Database(error) => ApiError::internal("opening a stream failed", &error),
        })?;
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Tells nginx (and proxies that copy it) not to buffer the stream.
        (HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    Ok((headers, Body::from_stream(events.into_body())).into_response())
}

/// Marks every answer of the stream route, refusals included, `Connection: close`. A
/// stream's connection is its own: a client that opened one sends nothing more on it (an
/// EventSource never does, even after an error), so once the stream or its refusal is
/// answered the connection closes rather than idling in a slot until the header timeout.
pub async fn end_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
