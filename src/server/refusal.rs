//! The answers the server gives itself, before a request reaches the router: a head or body
//! framing it cannot take, or no room for another connection. Each is the same JSON error
//! every route answers with ([`ApiError`]), and the connection closes after it, since what
//! follows a malformed request cannot be trusted to start another.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// Why a request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The JSON `error` code.
    pub code: &'static str,
    /// The JSON `message`.
    pub message: Cow<'static, str>,
}

impl Refusal {
    /// 400: the head or the body's framing is malformed.
    pub fn malformed(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// 431: too many header fields, or a head too long.
    pub fn head_too_large(message: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "headers_too_large",
            message: message.into(),
        }
    }

    /// 505: a version other than HTTP/1.0 and HTTP/1.1 (`HTTP/1.2`, an HTTP/2 preface). A
    /// client that speaks a later 1.x would be served as 1.1 by RFC 9112's letter, but none
    /// exists, and a version the relay has never seen says the bytes are not what they seem.
    pub fn version() -> Refusal {
        Refusal {
            status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            code: "http_version_not_supported",
            message: "the relay speaks HTTP/1.1 (and 1.0)".into(),
        }
    }

    /// 501: a transfer coding other than `chunked` (RFC 9112 §6.1).
    pub fn transfer_coding() -> Refusal {
        Refusal {
            status: StatusCode::NOT_IMPLEMENTED,
            code: "not_implemented",
            message: "the only transfer coding the relay takes is `chunked`".into(),
        }
    }

    /// 413: a body larger than any route takes (the same code the routes use).
    pub fn body_too_large() -> Refusal {
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: "the request body is too large".into(),
        }
    }

    /// 503: every connection slot serves a request.
    pub fn over_capacity() -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "over_capacity",
            message: "too many connections; retry in a moment".into(),
        }
    }

    /// The JSON answer (with `Retry-After` on a 503).
    pub fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = ApiError::new(self.status, self.code, self.message).into_response();
        if retry {
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
