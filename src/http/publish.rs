//! `POST /v1/messages` and `POST /v1/signals` (scope `publish`): the token's participant sends
//! to the participants the body names. A backend's token (scope `service`) may name the
//! `sender` it publishes for, address any person or room, and has a rate limit of its own.
//!
//! Bodies are read by hand rather than with axum's `Json` extractor: an oversized body must be
//! drained before the 413 (or the client sees a reset instead of the answer), and each wrong
//! field gets its own message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::addresses::{self, RevocationCheck};
use super::extract::Authenticated;
use super::idempotency;
use super::{ApiError, AppState};
use crate::auth::Claims;
use crate::config::Settings;
use crate::jsonb;
use crate::limits::RateLimiter;
use crate::message::{
    is_room, valid_kind, valid_name, valid_room, valid_subject, NewMessage, MAX_NAME_LEN,
};
use crate::store::{self, Author, Published};

/// Largest signal payload, in bytes of JSON: signals are small and frequent.
const MAX_SIGNAL_PAYLOAD: usize = 1024;

/// Most bytes of an oversized body read and thrown away before answering 413: closing a
/// socket with unread data makes the kernel reset it, and the client would see a broken
/// connection instead of the answer.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Reads a body of at most `limit` bytes; a larger one is answered 413 after draining.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
        total += chunk.len();
        if total <= limit {
            bytes.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT || tokio::time::Instant::now() > drain_deadline {
            break;
        }
    }
    if total > limit {
        return Err(too_large("the request body is too large"));
    }
    Ok(bytes)
}

/// Parses a JSON object body into its fields, each left as raw JSON until validated, so every
/// mistake gets its own message (and an array is not mistaken for a struct).
fn parse_object(bytes: &[u8]) -> Result<HashMap<String, Box<RawValue>>, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        if error.is_data() {
            ApiError::invalid("the body must be a JSON object")
        } else {
            ApiError::bad_request(format!("the body is not valid JSON: {error}"))
        }
    })
}

/// The optional field `name`, parsed as `T`.
fn field<T: serde::de::DeserializeOwned>(
    fields: &HashMap<String, Box<RawValue>>,
    name: &str,
) -> Option<Result<T, serde_json::Error>> {
    fields.get(name).map(|raw| serde_json::from_str(raw.get()))
}

/// A validated publish request (message or signal).
struct Publication {
    /// The token: its subject is answerable for the request (its rate limit, its idempotency
    /// keys), and the store refuses it if it was revoked.
    author: Author,
    /// Whether the token has scope `service`.
    service: bool,
    /// The token's subject, or the `sender` a `service` token named.
    sender: String,
    /// Recipients, deduplicated, the sender included.
    participants: Vec<String>,
    /// `None` when the body named no kind.
    kind: Option<String>,
    payload: Box<RawValue>,
}

/// The largest body of a publish with payloads of at most `max_payload` bytes: room for the
/// payload plus the largest participant list and the field names. A name's bytes are counted
/// once decoded, and a JSON encoder writes each in at most three (a `"` or `\` in a name is
/// always two; Python's default writes `é`, two bytes, as `\u00e9`), so a list the contract
/// allows fits as encoders write it.
fn body_limit(max_payload: usize, max_participants: usize) -> usize {
    max_payload + max_participants * (3 * MAX_NAME_LEN + 8) + 4096
}

/// The largest request body any route takes (a publish's): the server reads no larger one.
pub fn largest_body(settings: &Settings) -> usize {
    body_limit(
        settings.max_payload.max(MAX_SIGNAL_PAYLOAD),
        settings.max_participants,
    )
}

/// Validates a publish request's body (with payloads of at most `max_payload` bytes) from a
/// token with scope `publish` or `service`.
async fn read_publication(
    state: &AppState,
    claims: Claims,
    headers: &HeaderMap,
    body: Body,
    max_payload: usize,
    revocation: RevocationCheck,
) -> Result<Publication, ApiError> {
    let service = claims.is_service();
    if !claims.has_scope("publish") && !service {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "publishing needs a token with scope `publish`",
        ));
    }
    require_json(headers)?;
    let max_participants = state.settings.max_participants;
    let body_limit = body_limit(max_payload, max_participants);
    let mut fields = parse_object(&read_body(body, body_limit).await?)?;

    let sender = match field::<Value>(&fields, "sender") {
        None => claims.sub.clone(),
        Some(_) if !service => return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sender_not_allowed",
            "only a token with scope `service` may set `sender`; the sender is the token's `sub`",
        )),
        Some(Ok(Value::String(sender))) if valid_subject(&sender) => sender,
        Some(_) => {
            return Err(ApiError::invalid(
                "`sender` must be a person's name (the name rule; not a room or *)",
            ))
        }
    };
    let participants =
        validate_participants(field(&fields, "participants"), &sender, max_participants)?;
    let kind = match field::<String>(&fields, "kind") {
        None => None,
        Some(Ok(kind)) if valid_kind(&kind) => Some(kind),
        Some(_) => return Err(invalid_kind()),
    };
    let payload = fields
        .remove("payload")
        .ok_or_else(|| ApiError::invalid("`payload` is required (any JSON value)"))?;
    if payload.get().len() > max_payload {
        return Err(too_large(&format!(
            "the payload is larger than {max_payload} bytes"
        )));
    }
    // Here, not in the database: a message the database refuses would fail its whole
    // group-commit batch first, and cost every other sender in it a retry.
    jsonb::check(payload.get())
        .map_err(|refused| ApiError::invalid(format!("the payload cannot be stored: {refused}")))?;
    // What streams and reads serve is the stored text, in which `1e131071` has 131,072 digits.
    if jsonb::stored_len(payload.get()) > max_payload {
        return Err(too_large(&format!(
            "the payload is larger than {max_payload} bytes as stored (numbers written with \
             an exponent are stored digit by digit)"
        )));
    }
    addresses::check_may_address(state, &claims, &participants, revocation).await?;
    Ok(Publication {
        author: Author {
            subject: claims.sub,
            issued_at: claims.iat,
        },
        service,
        sender,
        participants,
        kind,
        payload,
    })
}

/// `POST /v1/messages`: stores a message from the token's participant; answers its id.
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers, &claims.sub)?;
    let max_payload = state.settings.max_payload;
    let publication = read_publication(
        &state,
        claims,
        &headers,
        body,
        max_payload,
        RevocationCheck::WhenStored,
    )
    .await?;
    take_rate(&state, &publication, &state.limits.publishing)
        .map_err(|wait| ApiError::rate_limited("too many messages; slow down", wait))?;
    let message = NewMessage {
        participants: publication.participants,
        kind: publication.kind.unwrap_or_else(|| "message".to_owned()),
        sender: publication.sender,
        payload: publication.payload,
    };
    let published = state
        .publisher
        .publish(message, publication.author, key)
        .await
        .map_err(|error| ApiError::from_database("publishing a message failed", &error))?;
    match published {
        Published::New(id) => Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response()),
        // A retry: the first publish's answer, with 200 so a client can tell if it cares.
        Published::Replayed(id) => Ok((StatusCode::OK, Json(json!({ "id": id }))).into_response()),
        // 409, not 422: the same bytes were acceptable until another message took the key; the
        // refusal comes from stored state, which is what a conflict is.
        Published::KeyReused(id) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "this Idempotency-Key was used for another message (id {id}); a retry must \
                 send the same body, and a new message a new key"
            ),
        )),
        Published::TokenRevoked => Err(addresses::token_revoked()),
    }
}

/// Takes one publish from the request's rate limit: a person's `limiter` (messages or
/// signals), counted by sender, or for a `service` token the service limit, counted by the
/// token's subject whichever senders it names.
fn take_rate(
    state: &AppState,
    publication: &Publication,
    limiter: &RateLimiter,
) -> Result<(), Duration> {
    if publication.service {
        state.limits.service.try_take(&publication.author.subject)
    } else {
        limiter.try_take(&publication.sender)
    }
}

/// `POST /v1/signals`: a live-only event to the participants' open streams.
pub async fn post_signal(
    State(state): State<Arc<AppState>>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut publication = read_publication(
        &state,
        claims,
        &headers,
        body,
        MAX_SIGNAL_PAYLOAD,
        RevocationCheck::Now,
    )
    .await?;
    let Some(kind) = publication.kind.take() else {
        return Err(ApiError::invalid(
            "a signal needs a `kind`, such as \"typing\"",
        ));
    };
    take_rate(&state, &publication, &state.limits.signals)
        .map_err(|wait| ApiError::rate_limited("too many signals; slow down", wait))?;
    let signal = NewMessage {
        participants: publication.participants,
        kind,
        sender: publication.sender,
        payload: publication.payload,
    };
    store::signal(&state.pool, &signal)
        .await
        .map_err(|error| ApiError::from_database("sending a signal failed", &error))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json`",
        ))
    }
}

fn too_large(message: &str) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

fn invalid_kind() -> ApiError {
    ApiError::invalid(
        "`kind` must match [A-Za-z0-9_.:-]{1,64} and not be presence, position, reset or token_expired",
    )
}

/// The recipients: the given names, deduplicated, with the sender added.
fn validate_participants(
    participants: Option<Result<Value, serde_json::Error>>,
    sender: &str,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let Some(Ok(Value::Array(values))) = participants else {
        return Err(ApiError::invalid(
            "`participants` must be an array of names",
        ));
    };
    if values.is_empty() {
        return Err(ApiError::invalid(
            "`participants` must name at least one recipient",
        ));
    }
    if values.len() > max {
        return Err(ApiError::invalid(format!(
            "`participants` may name at most {max} recipients"
        )));
    }
    let mut names: Vec<String> = Vec::with_capacity(values.len() + 1);
    for value in values {
        let Value::String(name) = value else {
            return Err(ApiError::invalid("every participant must be a string"));
        };
        if !valid_name(&name) || (is_room(&name) && !valid_room(&name)) {
            return Err(ApiError::invalid(format!(
                "participants must be names, rooms (#name) or * of 1 to {} bytes with no \
                 control, format, separator, invisible or blank-looking characters",
                MAX_NAME_LEN
            )));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if !names.iter().any(|name| name == sender) {
        names.push(sender.to_owned());
    }
    Ok(names)
}
