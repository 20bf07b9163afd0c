//! The HTTP API: `app(shared)` builds the router, one handler per route.
//!
//! Every failure is an [`ApiError`], so every error answer is JSON with its status. Request
//! bodies and query strings are parsed by hand rather than by axum's extractors, because the
//! extractors' rejections are plain text.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use crate::auth::{self, Claims};
use crate::error::ApiError;
use crate::state::Shared;
use crate::store::{self, DbError, NewMessage};
use crate::stream::{EventStream, OpenError};

/// Most messages one `GET /v1/messages` returns.
const MAX_PAGE: i64 = 1000;

/// Most bytes of payloads and participants one `GET /v1/messages` page holds (at least one
/// message is always returned); `next_since_id` continues after the last one.
const MAX_PAGE_BYTES: i64 = 1024 * 1024;

/// Largest signal payload, in bytes of JSON: signals are small and frequent.
const MAX_SIGNAL_PAYLOAD: usize = 1024;

/// The browser client module, served at `/v1/client.js`.
const CLIENT_JS: &str = include_str!("../clients/js/src/index.js");

/// The OpenAPI 3.1 document of this API, served at `/v1/openapi.json` (tests/openapi.rs
/// checks the live server against it).
const OPENAPI_JSON: &str = include_str!("../docs/openapi.json");

/// The demo chat page, served at `/` by `pgrelay demo` and `pgrelay serve --demo`.
const DEMO_HTML: &str = include_str!("../static/demo.html");

/// Builds the relay's router.
pub fn app(shared: Arc<Shared>) -> Router {
    let cors = cors_layer(&shared.settings.allow_origins);
    let mut router = Router::new();
    if shared.settings.demo_page {
        router = router.route("/", get(demo_page));
    }
    router
        .route("/v1/stream", get(stream))
        .route("/v1/messages", get(list_messages).post(post_message))
        .route("/v1/signals", post(post_signal))
        .route("/v1/presence", get(presence))
        .route("/v1/client.js", get(client_js))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors)
        .layer(middleware::from_fn(request_span))
        .with_state(shared)
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
        ])
        .max_age(Duration::from_secs(3600))
}

/// A span per request naming the method and path only: query strings carry tokens.
async fn request_span(request: Request, next: Next) -> Response {
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    next.run(request).instrument(span).await
}

/// The query parameters the API knows; unknown ones are ignored.
#[derive(Deserialize, Default)]
struct Params {
    token: Option<String>,
    since_id: Option<String>,
    limit: Option<String>,
    participants: Option<String>,
}

fn parse_query(query: Option<&str>) -> Result<Params, ApiError> {
    match query {
        None => Ok(Params::default()),
        Some(query) => serde_urlencoded::from_str(query)
            .map_err(|_| ApiError::bad_request("the query string is malformed")),
    }
}

/// Parses the query string and verifies the request's token (`Authorization: Bearer …`, else
/// `?token=`): every authenticated route starts here.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Params, Claims), ApiError> {
    let params = parse_query(query)?;
    let claims = verify_token(shared, headers, &params)?;
    Ok((params, claims))
}

/// The verified claims of the request's token: `Authorization: Bearer …`, else `?token=`.
fn verify_token(shared: &Shared, headers: &HeaderMap, params: &Params) -> Result<Claims, ApiError> {
    let token = match headers.get(header::AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            // The scheme name is case-insensitive (RFC 7235).
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
            .ok_or_else(|| {
                unauthorized("bad_authorization", "use `Authorization: Bearer <token>`")
            })?,
        None => params
            .token
            .as_deref()
            .ok_or_else(|| unauthorized("missing_token", "a token is required"))?,
    };
    shared
        .keys
        .verify(token.trim(), auth::now_unix())
        .map_err(|error| unauthorized(error.code(), error.to_string()))
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// Parses a message id given by a client (`since_id`, `Last-Event-ID`).
fn parse_id(name: &str, value: &str) -> Result<i64, ApiError> {
    match value.trim().parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a message id (a whole number from 0 to 9223372036854775807)"
        ))),
    }
}

/// `GET /v1/stream`: Server-Sent Events for the token's participant.
async fn stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (params, claims) = authenticate(&shared, &headers, query.as_deref())?;
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
    let events = EventStream::open(Arc::clone(&shared), claims.sub, resume, expires_in)
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

/// `GET /v1/messages?since_id=N&limit=M`: the stream's events as a JSON page.
async fn list_messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (params, claims) = authenticate(&shared, &headers, query.as_deref())?;
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
    let Some(_in_flight) = shared.history_limit.enter(&claims.sub) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "this participant has too many history requests in flight; wait for one to finish",
        ));
    };
    let page = {
        let _connection = shared.history_reads.acquire().await;
        store::messages_for(&shared.pool, &claims.sub, since, limit, MAX_PAGE_BYTES)
            .await
            .map_err(|error| ApiError::internal("listing messages failed", &error))?
    };
    let messages = page.messages;
    let page = MessagePage {
        next_since_id: messages.last().map_or(since, |message| message.id),
        messages: messages.iter().map(|message| &*message.data).collect(),
    };
    Ok(Json(page).into_response())
}

/// A page of `GET /v1/messages`; the events' JSON is copied as stored, not re-encoded.
#[derive(Serialize)]
struct MessagePage<'a> {
    messages: Vec<&'a RawValue>,
    next_since_id: i64,
}

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

/// A validated publish request (message or signal) from the token's participant.
struct Publication {
    sender: String,
    /// Recipients, deduplicated, the sender included.
    participants: Vec<String>,
    /// `None` when the body named no kind.
    kind: Option<String>,
    payload: Box<RawValue>,
}

/// Authenticates (scope `publish`) and validates a publish request's body, with payloads of
/// at most `max_payload` bytes.
async fn read_publication(
    shared: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
    max_payload: usize,
) -> Result<Publication, ApiError> {
    let (_, claims) = authenticate(shared, headers, query)?;
    if !claims.has_scope("publish") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "publishing needs a token with scope `publish`",
        ));
    }
    require_json(headers)?;
    let max_participants = shared.settings.max_participants;
    // Room for the payload plus the largest participant list and the field names.
    let body_limit = max_payload + max_participants * (crate::MAX_NAME_LEN + 8) + 4096;
    let mut fields = parse_object(&read_body(body, body_limit).await?)?;

    let participants = validate_participants(
        field(&fields, "participants"),
        &claims.sub,
        max_participants,
    )?;
    let kind = match field::<String>(&fields, "kind") {
        None => None,
        Some(Ok(kind)) if crate::valid_kind(&kind) => Some(kind),
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
    Ok(Publication {
        sender: claims.sub,
        participants,
        kind,
        payload,
    })
}

/// `POST /v1/messages` (scope `publish`): stores a message from the token's participant.
async fn post_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let max_payload = shared.settings.max_payload;
    let publication =
        read_publication(&shared, &headers, query.as_deref(), body, max_payload).await?;
    if let Err(wait) = shared.publish_limiter.try_take(&publication.sender) {
        return Err(ApiError::rate_limited(
            "too many messages from this sender; slow down",
            wait,
        ));
    }
    let message = NewMessage {
        participants: &publication.participants,
        kind: publication.kind.as_deref().unwrap_or("message"),
        sender: &publication.sender,
        payload: &publication.payload,
    };
    let id = store::publish(&shared.pool, &message)
        .await
        .map_err(|error| database_error("publishing a message failed", &error))?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

/// `POST /v1/signals` (scope `publish`): a live-only event to the participants' open streams.
async fn post_signal(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let publication = read_publication(
        &shared,
        &headers,
        query.as_deref(),
        body,
        MAX_SIGNAL_PAYLOAD,
    )
    .await?;
    let Some(kind) = publication.kind.as_deref() else {
        return Err(ApiError::invalid(
            "a signal needs a `kind`, such as \"typing\"",
        ));
    };
    if let Err(wait) = shared.signal_limiter.try_take(&publication.sender) {
        return Err(ApiError::rate_limited("too many signals; slow down", wait));
    }
    let signal = NewMessage {
        participants: &publication.participants,
        kind,
        sender: &publication.sender,
        payload: &publication.payload,
    };
    store::signal(&shared.pool, &signal)
        .await
        .map_err(|error| database_error("sending a signal failed", &error))?;
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
        if !crate::valid_name(&name) {
            return Err(ApiError::invalid(format!(
                "participant names must be 1 to {} bytes with no control or format characters",
                crate::MAX_NAME_LEN
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

/// Maps a database error: data PostgreSQL refuses (SQLSTATE classes 22 and 23, e.g. a
/// `\u0000` in a payload, and 54, e.g. JSON nested past PostgreSQL's stack depth limit) is
/// the client's mistake, anything else is ours. A unique violation is ours too: the only key
/// is the id, which the client does not choose, so a conflict means ids were tampered with.
fn database_error(context: &str, error: &DbError) -> ApiError {
    let sqlstate = error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|error| error.code())
        .map(|code| code.code().to_owned());
    match sqlstate {
        Some(code) if code == "23505" => ApiError::internal(
            &format!("{context}: a message id was taken (were ids inserted by hand?)"),
            error,
        ),
        // pgrelay.signal()'s size limit, measured on the payload as jsonb stores it (which can
        // be longer than the JSON sent: `[0,0]` becomes `[0, 0]`).
        Some(code) if code == "54000" => too_large("the payload is too large once stored"),
        Some(code)
            if ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class)) =>
        {
            ApiError::invalid("the database refused this message's data")
        }
        _ => ApiError::internal(context, error),
    }
}

/// Most participants one `GET /v1/presence` may ask about.
const MAX_PRESENCE_QUERY: usize = 100;

/// `GET /v1/presence?participants=a,b`: who is online, for participants the caller may see.
async fn presence(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (params, claims) = authenticate(&shared, &headers, query.as_deref())?;
    if let Err(wait) = shared.presence_limiter.try_take(&claims.sub) {
        return Err(ApiError::rate_limited(
            "too many presence requests; slow down",
            wait,
        ));
    }
    let mut asked: Vec<String> = Vec::new();
    for name in params.participants.as_deref().unwrap_or("").split(',') {
        // Names are taken exactly as given: white space may be part of one.
        if !crate::valid_name(name) {
            return Err(ApiError::invalid(
                "`participants` must be a comma-separated list of participant names",
            ));
        }
        if !asked.iter().any(|known| known == name) {
            asked.push(name.to_owned());
        }
    }
    if asked.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::invalid(format!(
            "ask about at most {MAX_PRESENCE_QUERY} participants at once"
        )));
    }
    let states = store::presence(
        &shared.pool,
        &claims.sub,
        &asked,
        shared.settings.presence_ttl,
    )
    .await
    .map_err(|error| ApiError::internal("reading presence failed", &error))?;
    let hidden: Vec<&str> = states
        .iter()
        .filter(|state| !state.visible)
        .map(|state| state.participant.as_str())
        .collect();
    if !hidden.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_in_audience",
            format!(
                "you are not in the presence audience of: {}",
                hidden.join(", ")
            ),
        ));
    }
    let presence: serde_json::Map<String, Value> = states
        .into_iter()
        .map(|state| {
            let entry = match state.since {
                Some(since) => json!({ "online": true, "since": since }),
                None => json!({ "online": false, "last_seen": state.last_seen }),
            };
            (state.participant, entry)
        })
        .collect();
    Ok(Json(json!({ "presence": presence })).into_response())
}

/// `GET /v1/client.js`: the browser client, an ES module.
async fn client_js() -> Response {
    static_file("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /v1/openapi.json`: the machine-readable description of this API.
async fn openapi_json() -> Response {
    static_file("application/json", OPENAPI_JSON)
}

/// `GET /`: the demo chat page, with a Content-Security-Policy that lets it run its own inline
/// script and style (by hash) and load and call nothing but this origin.
async fn demo_page() -> Response {
    static DEMO_CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let hash = |open: &str, close: &str| {
            let start = DEMO_HTML.find(open).expect("the demo page has the block") + open.len();
            let end = start + DEMO_HTML[start..].find(close).expect("the block ends");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&DEMO_HTML.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        let policy = format!(
            "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script type=\"module\">", "</script>"),
            hash("<style>", "</style>"),
        );
        HeaderValue::from_str(&policy).expect("the policy is ASCII")
    });
    let mut response = static_file("text/html; charset=utf-8", DEMO_HTML);
    response
        .headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, DEMO_CSP.clone());
    response
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// `GET /healthz`: the process is running.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only while the LISTEN connection is up and the database answers.
async fn readyz(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    if !shared.listener_up.load(Ordering::SeqCst) {
        return Err(not_ready("the LISTEN connection is down"));
    }
    if !store::ping(&shared.pool, Duration::from_secs(2)).await {
        return Err(not_ready("the database does not answer"));
    }
    Ok(Json(json!({ "status": "ready" })))
}

fn not_ready(message: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render(
        shared.registry.stream_count(),
        shared.listener_up.load(Ordering::SeqCst),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
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
