//! `GET /v1/messages/{id}`: one message whole, to someone it is addressed to.
//!
//! Streams and history pages carry a message larger than `--max-event-bytes` as its
//! `oversized` stand-in; this is where the message itself is read. Whom it is for is decided as
//! for streams (the caller's participant, rooms and `*` meet the message's participants), and a
//! message that is not the caller's is answered 404 exactly like one that does not exist, so
//! nothing about it leaks.
//!
//! The driver reads a whole row into memory, so before it does, each read reserves the
//! message's size from the instance's fetch budget (`--fetch-budget`). A read the budget cannot
//! give now is answered 503 with `Retry-After` at once rather than queued (a queue of large
//! reads would hold its clients' connections); one larger than the whole budget is answered 503
//! `message_too_large`, since this relay will never hold it. The payload is sent from the
//! driver's buffer without a copy, and the reservation is given back once it has been written.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::addresses;
use super::extract::{parse_id, Authenticated};
use super::{ApiError, AppState};
use crate::error::Error;
use crate::replica::{Read, Through};
use crate::store;

/// What a whole read holds beyond the message's size: the row's other columns, the JSON
/// around the payload, the driver's message framing.
const READ_OVERHEAD: u64 = 64 * 1024;

/// When a client turned away by a full budget should come back.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// The message `id`, whole, if the caller may read it.
pub async fn whole_message(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    // A path axum cannot decode (percent-encoded bytes that are not UTF-8) is no id either;
    // axum's own rejection would be plain text.
    let id = parse_id("the message id", id.as_ref().map_or("", |Path(id)| id))?;
    let Some(_in_flight) = state.limits.history.enter(&claims.sub) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "this participant has too many history requests in flight; wait for one to finish",
        ));
    };
    let addresses = addresses::listening(&state, &claims, None)
        .await?
        .0
        .addresses();
    let failed = |error: Error| ApiError::internal("reading a message failed", &error);
    let exact = &state.streams.reader.exact;
    // Everything committed before the request: the message may have been announced as an
    // `oversized` stand-in by any instance a moment ago.
    let at = exact.position(Through::Committed).await;
    let size = {
        let _connection = state.streams.reader.reads.acquire().await;
        exact
            .run(at, Read::Message, &addresses, |client, addresses| {
                Box::pin(store::message_size(client, id, addresses))
            })
            .await
            .map_err(failed)?
    };
    let Some(size) = size else {
        return Err(no_such_message());
    };
    let wanted = size.max(0) as u64 + READ_OVERHEAD;
    if !state.fetch_budget.can_hold(wanted) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "message_too_large",
            format!(
                "this message is {size} bytes, more than this relay reads whole \
                 (--fetch-budget); read it from the database"
            ),
        ));
    }
    let Some(reservation) = state.fetch_budget.try_reserve(wanted) else {
        return Err(ApiError::over_capacity(
            "this relay is reading as many large messages as it may hold; retry shortly",
            BUSY_RETRY,
        ));
    };
    let message = {
        let _connection = state.streams.reader.reads.acquire().await;
        exact
            .run(at, Read::Message, &addresses, |client, addresses| {
                Box::pin(store::whole_message(client, id, addresses))
            })
            .await
            .map_err(failed)?
    };
    // Pruned in between.
    let Some(message) = message else {
        return Err(no_such_message());
    };
    let [before, payload, after] = message.into_json().map_err(failed)?;
    let length = before.len() + payload.len() + after.len();
    // The last piece holds the reservation, and with it the row the payload lives in.
    let pieces = [before, payload, reservation.held_by(after)];
    let body = Body::from_stream(futures::stream::iter(
        pieces.map(Ok::<_, std::convert::Infallible>),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}

fn no_such_message() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no message with this id is addressed to you",
    )
}
