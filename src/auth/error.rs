//! Why a token was refused.

use std::fmt;

/// Why a token was refused; `code()` is a stable machine-readable string used as the JSON error code, Display a short human sentence.
///
/// The variants deliberately carry no data, so neither the token nor any
/// part of it can end up in an error message or a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url segments of JSON objects, a header other than
    /// ours, or a claim of the wrong type.
    Malformed,
    /// Longer than 8 KiB, refused before any decoding.
    TooLong,
    /// The header names an algorithm this relay does not verify: one other than HS256,
    /// RS256, ES256 and EdDSA, HS256 without a secret, or an asymmetric one without
    /// `--jwks-url`.
    UnsupportedAlgorithm,
    /// The identity provider's key set has no key of the token's algorithm with its `kid`
    /// (or the token names no `kid`), even after fetching the set again.
    UnknownKey,
    /// No key set has loaded from `--jwks-url` yet: the relay cannot tell, and is not ready.
    KeysUnavailable,
    /// No configured key produced the signature.
    BadSignature,
    /// The `exp` time has been reached.
    Expired,
    /// The `nbf` time has not been reached yet.
    NotYetValid,
    /// There is no `exp` claim; tokens that never expire are not accepted.
    MissingExpiry,
    /// The `sub` claim is absent or empty.
    MissingSubject,
    /// The `sub` claim is not a valid participant name (see [`crate::message::valid_name`]),
    /// or names a room or everyone.
    InvalidSubject,
    /// `exp` is further ahead than the policy's maximum lifetime.
    LivesTooLong,
    /// The policy requires an `aud` the token does not carry.
    WrongAudience,
    /// The policy requires an `iss` the token does not carry.
    WrongIssuer,
}

impl TokenError {
    /// A stable machine-readable identifier for the error, for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "invalid_token",
            TokenError::TooLong => "token_too_long",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeysUnavailable => "not_ready",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::MissingExpiry => "missing_expiry",
            TokenError::MissingSubject => "missing_subject",
            TokenError::InvalidSubject => "invalid_subject",
            TokenError::LivesTooLong => "token_lifetime_too_long",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "the token is not a well-formed JWT",
            TokenError::TooLong => "the token is longer than 8 KiB",
            TokenError::UnsupportedAlgorithm => {
                "the token is signed with an algorithm this relay does not accept"
            }
            TokenError::UnknownKey => {
                "the token's kid names no key of its algorithm in the identity provider's key set"
            }
            TokenError::KeysUnavailable => {
                "the identity provider's key set has not loaded yet; retry shortly"
            }
            TokenError::BadSignature => "the token signature does not match any configured key",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::MissingExpiry => "the token has no expiry time",
            TokenError::MissingSubject => "the token has no subject",
            TokenError::InvalidSubject => {
                "the token subject is not a name of 1 to 256 bytes without control, format, \
                 separator, invisible or blank-looking characters, or names a room or everyone"
            }
            TokenError::LivesTooLong => "the token expires further ahead than this relay accepts",
            TokenError::WrongAudience => "the token is not meant for this relay (aud)",
            TokenError::WrongIssuer => "the token is not from the expected issuer (iss)",
        })
    }
}

impl std::error::Error for TokenError {}
