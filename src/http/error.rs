//! One error type for every HTTP answer that is not a success.
//!
//! Client mistakes are answered with their status and a JSON body and are not logged (a
//! hostile client must not be able to fill the logs); internal failures are logged with their
//! cause and answered with a generic body, so database details never reach a browser.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An HTTP error: a status, a stable machine-readable code and a human sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, on 429s and 503s that know when to come back.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error answered as-is: `code` is the JSON `error` field, `message` the human text.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: the client is over a rate; `Retry-After` says when a request will be taken
    /// (rounded up to whole seconds, as the header wants).
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 503: this instance is at a limit of its own (not the client's), for a moment:
    /// `Retry-After` says when to try again.
    pub fn over_capacity(message: impl Into<String>, retry_after: std::time::Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "over_capacity", message)
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed but invalid.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 503 for a failure on our side. The cause is logged here, never shown to the client.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "{context}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the relay cannot reach its database right now; retry shortly",
        )
    }

    /// Maps a failed write: data PostgreSQL refuses ([`Error::is_refused_data`], e.g. a row
    /// that breaks a constraint the application added; what `jsonb` itself refuses is
    /// answered before it gets this far) is the client's mistake, anything else is ours. A taken id is ours too: the client does not
    /// choose ids, so a conflict means ids were tampered with.
    pub fn from_database(context: &str, error: &Error) -> ApiError {
        if error.is_id_conflict() {
            ApiError::internal(
                &format!("{context}: a message id was taken (were ids inserted by hand?)"),
                error,
            )
        } else if error.is_too_large() {
            // pgrelay.signal()'s size limit, measured on the payload as jsonb stores it
            // (which can be longer than the JSON sent: `[0,0]` becomes `[0, 0]`).
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the payload is too large once stored",
            )
        } else if error.is_refused_data() {
            ApiError::invalid("the database refused this message's data")
        } else {
            ApiError::internal(context, error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // RFC 6750 §3: the scheme, and why, without echoing the token. A request that sent
        // no credentials gets no error code.
        let challenge = match (self.status, self.code) {
            (StatusCode::UNAUTHORIZED, "missing_token") => {
                Some(r#"Bearer realm="pgrelay""#.to_owned())
            }
            (StatusCode::UNAUTHORIZED, code) => Some(format!(
                r#"Bearer realm="pgrelay", error="invalid_token", error_description="{code}""#
            )),
            (StatusCode::FORBIDDEN, "insufficient_scope") => Some(
                r#"Bearer realm="pgrelay", error="insufficient_scope", scope="publish""#.to_owned(),
            ),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
