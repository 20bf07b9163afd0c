//! What every route takes from a request: the verified token and the query string, each
//! rejecting with the project's JSON errors (axum's own extractors answer in plain text).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::auth::{self, Claims, TokenError};

/// The verified claims of the request's token: `Authorization: Bearer …`, else `?token=`.
pub struct Authenticated(pub Claims);

/// The query string, parsed as `T`; unknown parameters are ignored.
pub struct Params<T>(pub T);

/// The one parameter [`Authenticated`] reads.
#[derive(Deserialize, Default)]
struct TokenParam {
    token: Option<String>,
}

impl<T: DeserializeOwned + Default + Send> FromRequestParts<Arc<AppState>> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, ApiError> {
        parse_query(parts.uri.query()).map(Params)
    }
}

fn parse_query<T: DeserializeOwned + Default>(query: Option<&str>) -> Result<T, ApiError> {
    match query {
        None => Ok(T::default()),
        Some(query) => serde_urlencoded::from_str(query)
            .map_err(|_| ApiError::bad_request("the query string is malformed")),
    }
}

impl FromRequestParts<Arc<AppState>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        // A malformed query string is answered as such even when the token is in the header.
        let TokenParam { token: from_query } = parse_query(parts.uri.query())?;
        let token = match bearer(&parts.headers)? {
            Some(token) => token,
            None => from_query
                .as_deref()
                .ok_or_else(|| unauthorized("missing_token", "a token is required"))?,
        };
        match state
            .keys
            .verify_fetching_keys(token.trim(), auth::now_unix())
            .await
        {
            Ok(claims) => Ok(Authenticated(claims)),
            // Not the token's fault: a 401 would make clients give up on a good token.
            Err(error @ TokenError::KeysUnavailable) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error.code(),
                error.to_string(),
            )),
            Err(error) => Err(unauthorized(error.code(), error.to_string())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; `None` without the header, 401
/// `bad_authorization` when it names another scheme.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        // The scheme name is case-insensitive (RFC 7235).
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
        .map(Some)
        .ok_or_else(|| unauthorized("bad_authorization", "use `Authorization: Bearer <token>`"))
}

/// 401 with `code`.
pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// Parses a message id given by a client (`since_id`, `Last-Event-ID`).
pub fn parse_id(name: &str, value: &str) -> Result<i64, ApiError> {
    match value.trim().parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a message id (a whole number from 0 to 9223372036854775807)"
        ))),
    }
}

/// A comma-separated list from a query string, each entry once, in the order given. Entries
/// are taken exactly as given (white space may be part of a name); the first one `valid`
/// refuses makes the whole list invalid, answered with `what` ("a comma-separated list of …").
pub fn comma_list(
    list: &str,
    valid: impl Fn(&str) -> bool,
    name: &str,
    what: &str,
) -> Result<Vec<String>, ApiError> {
    let mut entries: Vec<String> = Vec::new();
    for entry in list.split(',') {
        if !valid(entry) {
            return Err(ApiError::invalid(format!(
                "`{name}` must be a comma-separated list of {what}"
            )));
        }
        if !entries.iter().any(|known| known == entry) {
            entries.push(entry.to_owned());
        }
    }
    Ok(entries)
}
