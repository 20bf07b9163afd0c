//! `GET /v1/messages?since_id=N&limit=M`: the stream's messages as JSON pages (never the
//! `rooms` and `revoked` rows a stream applies: a read decides by the access it has now).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::addresses;
use super::extract::{parse_id, Authenticated, Params};
use super::{ApiError, AppState};
use crate::catch_up::PageQuery;
use crate::replica::{Read, Through};
use crate::store;

/// Most messages one `GET /v1/messages` returns.
const MAX_PAGE: i64 = 1000;

/// Most bytes of payloads and participants one `GET /v1/messages` page holds (at least one
/// message is always returned); `next_since_id` continues after the last one.
const MAX_PAGE_BYTES: i64 = 1024 * 1024;

/// The query parameters of `GET /v1/messages`.
#[derive(Deserialize, Default)]
pub struct HistoryParams {
    since_id: Option<String>,
    limit: Option<String>,
    rooms: Option<String>,
}

/// A page of `GET /v1/messages`; the events' JSON is copied as stored, not re-encoded (an
/// `oversized` message is its stand-in, as on the stream).
#[derive(Serialize)]
struct MessagePage<'a> {
    messages: Vec<&'a RawValue>,
    next_since_id: i64,
}

/// The participant's messages after `since_id`, oldest first.
pub async fn list_messages(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    Params(params): Params<HistoryParams>,
) -> Result<Response, ApiError> {
    let since = match params.since_id.as_deref() {
        Some(value) => parse_id("since_id", value)?,
        None => 0,
    };
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(value) => match value.trim().parse::<i64>() {
            Ok(limit) if limit >= 1 => limit.min(MAX_PAGE),
            _ => {
                return Err(ApiError::invalid(
                    "limit must be a whole number from 1 to 1000",
                ))
            }
        },
    };
    let Some(_in_flight) = state.limits.history.enter(&claims.sub) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "this participant has too many history requests in flight; wait for one to finish",
        ));
    };
    let (access, _) = addresses::listening(&state, &claims, params.rooms.as_deref()).await?;
    let addresses = access.addresses();
    let streams = &state.streams;
    // Everything committed before the request: the caller may know of any of it.
    let at = streams.reader.exact.position(Through::Committed).await;
    // History pages share the catch-ups' budget and permits: they are the same reads.
    let (page, mut reservation) = streams
        .reader
        .read_page(PageQuery {
            at,
            read: Read::History,
            addresses: &addresses,
            rows: store::Rows::MessagesOnly,
            since,
            limit,
            bytes: MAX_PAGE_BYTES,
        })
        .await;
    let page = page.map_err(|error| ApiError::internal("listing messages failed", &error))?;
    let body = serde_json::to_vec(&MessagePage {
        next_since_id: page.messages.last().map_or(since, |message| message.id),
        messages: page.messages.iter().map(|message| &*message.data).collect(),
    })
    .map_err(|error| ApiError::internal("rendering messages failed", &error))?;
    drop(page);
    // The answer holds its share until it is written.
    reservation.shrink_to(body.len() as u64);
    let body = reservation.held_by(body.into());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
