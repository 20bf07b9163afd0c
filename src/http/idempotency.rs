//! The `Idempotency-Key` header of `POST /v1/messages`: a backend that timed out retries with
//! the same key, and the relay answers the first message's id instead of storing it again
//! (`pgrelay.publish_many` decides, see sql/0011_idempotency.sql).

use axum::http::{HeaderMap, HeaderName, StatusCode};

use super::ApiError;
use crate::store::IdempotencyKey;

/// The header's name.
const HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key: Stripe's bound, and plenty for a UUID or a hash of the job.
const MAX_KEY_LEN: usize = 255;

/// The request's key for `subject` (the token's `sub`), if it sent one: 1 to 255 visible ASCII
/// characters, given once. Anything else is a 400: a key the relay could not compare exactly
/// would make a retry publish twice.
pub fn key(headers: &HeaderMap, subject: &str) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("send one `Idempotency-Key` header, not several"));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            invalid("an `Idempotency-Key` is 1 to 255 visible ASCII characters (no spaces)")
        })?;
    Ok(Some(IdempotencyKey {
        subject: subject.to_owned(),
        key: key.to_owned(),
    }))
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_key_is_visible_ascii_of_at_most_255_bytes_given_once() {
        assert_eq!(key(&with(&[]), "a").unwrap(), None);
        let found = key(&with(&[b"job-42:retry~!"]), "a").unwrap().unwrap();
        assert_eq!(
            (found.subject.as_str(), found.key.as_str()),
            ("a", "job-42:retry~!")
        );
        assert!(key(&with(&["k".repeat(255).as_bytes()]), "a").is_ok());
        for bad in [
            &b""[..],
            &b"a b"[..],
            &b"a\tb"[..],
            "caf\u{e9}".as_bytes(),
            &[b'k'; 256][..],
        ] {
            assert!(key(&with(&[bad]), "a").is_err(), "{bad:?}");
        }
        assert!(key(&with(&[b"a", b"a"]), "a").is_err());
    }
}
