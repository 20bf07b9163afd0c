//! Bearer tokens: JSON Web Tokens (RFC 7519) signed with HS256 and the configured secrets,
//! or, with an identity provider's key set (`--jwks-url`, [`Jwks`]), with RS256, ES256 or
//! EdDSA.
//!
//! The HS256 side is written by hand; the asymmetric signatures are checked by `ring`
//! (`jwk`). A general JWT library would bring key formats, algorithms and options we
//! would then have to switch off again; the classic JWT vulnerabilities (`alg: none`,
//! algorithm confusion, lenient parsing) live exactly in that flexibility. So this module
//! accepts one shape of token and refuses everything else:
//!
//! * the header's `alg` is `HS256` (checked with the secrets only, never with a key of the
//!   set), or `RS256`, `ES256` or `EdDSA` with a `kid` naming a key of the set of that very
//!   type (checked with that key only); `typ`, if present, is `"JWT"`,
//! * the token must be exactly three unpadded base64url segments,
//! * the signature is checked (HS256 in constant time) before the claims are even
//!   decoded, so unauthenticated input never reaches the claims parser,
//! * `sub` and `exp` are required; `nbf`, `iat`, `scope` and `rooms` are optional but
//!   must have the right type when present,
//! * a claim (or header field) given twice is refused, rather than read as
//!   whichever copy a parser happens to keep,
//! * `sub` follows the participant-name rule ([`crate::message::valid_name`]), is not a
//!   room (`#…`) and not everyone (`*`),
//! * a [`TokenPolicy`] can refuse tokens that live too long, or lack the
//!   expected `aud` or `iss`.
//!
//! The claim rules are the same whatever signed the token. Several secrets can be configured
//! so they can be rotated without downtime: the first one signs, every one of them verifies.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::message::{valid_room, valid_subject};

mod error;
mod jwk;
mod jwks;

pub use error::TokenError;
use jwk::Algorithm;
pub use jwks::{FetchOutcome, Jwks, JwksTiming, MAX_SET_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted. Real tokens are a few hundred bytes; the cap is
/// checked before any decoding so oversized input costs nothing to refuse.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The only header `mint` produces.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The keys tokens are verified with: HS256 secrets (the first signs, every one verifies)
/// and an identity provider's key set, either or both.
#[derive(Clone)]
pub struct Keys {
    /// One keyed HMAC state per secret, cloned for every use so the key
    /// schedule is computed once. Empty only for keys made by [`Keys::from_jwks`], which
    /// then refuse HS256 tokens and cannot mint.
    macs: Vec<HmacSha256>,
    /// The identity provider's key set, for RS256, ES256 and EdDSA tokens.
    jwks: Option<Jwks>,
    /// What a verified token must also satisfy.
    policy: TokenPolicy,
}

/// Checks beyond the signature and the times, configured by the operator.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    /// Refuse tokens whose `exp` is further than this from now: a leaked
    /// token must not be valid for years.
    pub max_lifetime: Option<Duration>,
    /// If set, `aud` must be this string or an array containing it.
    pub audience: Option<String>,
    /// If set, `iss` must be this string.
    pub issuer: Option<String>,
}

impl Keys {
    /// Parses a comma-separated secret list, trimming blanks; errors if empty or any entry is empty.
    ///
    /// A secret therefore cannot contain a comma or begin or end with
    /// whitespace. Error messages name entries by position, never by content.
    pub fn from_secret_list(list: &str) -> Result<Self, String> {
        if list.trim().is_empty() {
            return Err("the secret list is empty".to_owned());
        }
        let macs = list
            .split(',')
            .enumerate()
            .map(|(index, secret)| {
                let secret = secret.trim();
                if secret.is_empty() {
                    return Err(format!("entry {} of the secret list is empty", index + 1));
                }
                Ok(HmacSha256::new_from_slice(secret.as_bytes())
                    .expect("HMAC accepts keys of any length"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            macs,
            jwks: None,
            policy: TokenPolicy::default(),
        })
    }

    /// Keys that verify with an identity provider's key set only: HS256 tokens are refused,
    /// and [`Keys::mint`] cannot be used.
    pub fn from_jwks(jwks: Jwks) -> Keys {
        Keys {
            macs: Vec::new(),
            jwks: Some(jwks),
            policy: TokenPolicy::default(),
        }
    }

    /// These keys, also verifying RS256, ES256 and EdDSA tokens with `jwks`.
    pub fn with_jwks(self, jwks: Jwks) -> Keys {
        Keys {
            jwks: Some(jwks),
            ..self
        }
    }

    /// The identity provider's key set, if there is one: the relay keeps it fresh and
    /// reports on it.
    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    /// These keys, verifying with `policy` as well.
    pub fn with_policy(self, policy: TokenPolicy) -> Keys {
        Keys { policy, ..self }
    }

    /// Signs a token for `sub` valid for `ttl` from now, with `iat` and, if non-empty, `scope`.
    ///
    /// ```
    /// use pgrelay::auth::{now_unix, Keys};
    /// use std::time::Duration;
    ///
    /// let keys = Keys::from_secret_list("new-secret, old-secret").unwrap();
    /// let token = keys.mint("alice", Duration::from_secs(60), &["publish"]);
    /// let claims = keys.verify(&token, now_unix()).unwrap();
    /// assert_eq!(claims.sub, "alice");
    /// assert!(claims.has_scope("publish"));
    /// ```
    ///
    /// `ttl` is rounded down to whole seconds, as JWT times are. Minting does
    /// not validate `sub`: an empty or over-long one yields a token that
    /// `verify` refuses.
    ///
    /// # Panics
    ///
    /// With keys made by [`Keys::from_jwks`]: without a secret there is nothing to sign
    /// with (the provider mints those tokens).
    pub fn mint(&self, sub: &str, ttl: Duration, scope: &[&str]) -> String {
        self.mint_with_rooms(sub, ttl, scope, &[])
    }

    /// Like [`Keys::mint`], with a `rooms` claim (when `rooms` is not empty): rooms such as
    /// `#general` whose messages the token's streams receive.
    pub fn mint_with_rooms(
        &self,
        sub: &str,
        ttl: Duration,
        scope: &[&str],
        rooms: &[&str],
    ) -> String {
        #[derive(Serialize)]
        struct MintedClaims<'a> {
            sub: &'a str,
            iat: u64,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            scope: Option<String>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            rooms: &'a [&'a str],
        }

        let iat = now_unix();
        let claims = MintedClaims {
            sub,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            scope: (!scope.is_empty()).then(|| scope.join(" ")),
            rooms,
        };
        // Serializing strings and integers into a Vec cannot fail.
        let claims = serde_json::to_vec(&claims).expect("claims serialize to JSON");

        let mut token = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self
            .macs
            .first()
            .expect("minting needs a secret; keys from a key set alone only verify")
            .clone()
            .chain_update(token.as_bytes())
            .finalize()
            .into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Like [`Keys::verify`], but a token whose `kid` the identity provider's set lacks (or
    /// that arrives before a set has loaded) first has the set fetched again, at most once
    /// per interval however many such tokens arrive (see [`Jwks`]), so a key the provider
    /// has just rotated in works at once.
    pub async fn verify_fetching_keys(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        match (self.verify(token, now), &self.jwks) {
            (Err(TokenError::UnknownKey | TokenError::KeysUnavailable), Some(jwks)) => {
                jwks.refetch_for_unknown_kid().await;
                self.verify(token, now)
            }
            (verified, _) => verified,
        }
    }

    /// Verifies signature, algorithm and times against `now` (seconds since the Unix epoch),
    /// with the keys at hand (see [`Keys::verify_fetching_keys`]).
    ///
    /// There is no leeway: a token is expired from its `exp` second on and
    /// valid from its `nbf` second on. Fractional times are rounded down.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(TokenError::Malformed);
        };

        // The header decides how the signature is checked, so it has to be
        // read first; it is the only unauthenticated input that gets parsed.
        let header_fields = decode_object(header)?;
        let (algorithm, kid) = check_header(&header_fields)?;

        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        // The signing input is the header and claims segments as transmitted,
        // joined by their dot: exactly the token up to the second dot.
        let signing_input = &token.as_bytes()[..header.len() + 1 + claims.len()];
        self.check_signature(algorithm, kid, signing_input, &signature)?;

        let mut claims = decode_object(claims)?;
        let sub = match claims.remove("sub") {
            None => return Err(TokenError::MissingSubject),
            Some(Value::String(sub)) if sub.is_empty() => return Err(TokenError::MissingSubject),
            Some(Value::String(sub)) if valid_subject(&sub) => sub,
            Some(_) => return Err(TokenError::InvalidSubject),
        };
        let exp = match claims.get("exp") {
            None => return Err(TokenError::MissingExpiry),
            Some(exp) => numeric_date(exp)?,
        };
        let nbf = claims.get("nbf").map(numeric_date).transpose()?;
        // A wrongly typed `iat` means the issuer is not producing the tokens we think it is.
        let iat = claims.get("iat").map(numeric_date).transpose()?;
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(scope)) => scope
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(TokenError::Malformed),
        };
        let rooms = match claims.get("rooms") {
            None => Vec::new(),
            Some(Value::Array(rooms)) => rooms
                .iter()
                .map(|room| match room {
                    Value::String(room) if valid_room(room) => Ok(room.clone()),
                    _ => Err(TokenError::Malformed),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TokenError::Malformed),
        };

        if exp <= now {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now) {
            return Err(TokenError::NotYetValid);
        }
        self.policy.check(&claims, exp, now)?;
        Ok(Claims {
            sub,
            exp,
            iat,
            scopes,
            rooms,
        })
    }

    /// Checks the signature with the keys of `algorithm`'s kind only: HS256 with the secrets,
    /// the others with the set's keys of that type named `kid`.
    fn check_signature(
        &self,
        algorithm: Algorithm,
        kid: Option<&str>,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        if algorithm == Algorithm::Hs256 {
            if self.macs.is_empty() {
                return Err(TokenError::UnsupportedAlgorithm);
            }
            let signed_by_a_key = self.macs.iter().any(|mac| {
                mac.clone()
                    .chain_update(signing_input)
                    .verify_slice(signature)
                    .is_ok()
            });
            return if signed_by_a_key {
                Ok(())
            } else {
                Err(TokenError::BadSignature)
            };
        }
        let jwks = self.jwks.as_ref().ok_or(TokenError::UnsupportedAlgorithm)?;
        // Keys are chosen by `kid`: a token that names none cannot be matched to a key.
        let kid = kid.ok_or(TokenError::UnknownKey)?;
        jwks.verify(algorithm, kid, signing_input, signature)
    }
}

impl TokenPolicy {
    fn check(&self, claims: &Map<String, Value>, exp: u64, now: u64) -> Result<(), TokenError> {
        if let Some(max) = self.max_lifetime.filter(|max| !max.is_zero()) {
            if exp - now > max.as_secs() {
                return Err(TokenError::LivesTooLong);
            }
        }
        if let Some(audience) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
                _ => false,
            };
            if !matches {
                return Err(TokenError::WrongAudience);
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(TokenError::WrongIssuer);
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the count: secrets must never reach logs.
        match &self.jwks {
            None => write!(f, "Keys({} keys)", self.macs.len()),
            Some(jwks) => write!(f, "Keys({} keys, {jwks:?})", self.macs.len()),
        }
    }
}

/// Decodes one base64url segment holding a JSON object.
fn decode_object(segment: &str) -> Result<Map<String, Value>, TokenError> {
    // `URL_SAFE_NO_PAD` refuses padding, the standard alphabet's `+` and `/`,
    // and non-zero trailing bits, so every byte string has one encoding only.
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    // Deserializing into a map refuses arrays, strings, numbers and `null`.
    let UniqueKeys(object) = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    Ok(object)
}

/// A JSON object whose keys are all different. serde_json keeps the last of two equal keys,
/// another parser the first: a token saying `"sub":"bob"` and then `"sub":"alice"` must mean
/// nothing at all rather than whichever one this parser keeps.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object without repeated keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut object = Map::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom("a key is repeated"));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueKeys(object))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The algorithm of a header we accept, and its `kid` if it names one: `mint`'s header, or
/// an identity provider's (`RS256`, `ES256` or `EdDSA`, with a `kid`); `typ` may be left out.
fn check_header(header: &Map<String, Value>) -> Result<(Algorithm, Option<&str>), TokenError> {
    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) => {
            Algorithm::from_name(alg).ok_or(TokenError::UnsupportedAlgorithm)?
        }
        _ => return Err(TokenError::Malformed),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" => {}
        Some(_) => return Err(TokenError::Malformed),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(TokenError::Malformed),
    };
    // RFC 7515 §4.1.11: a token listing critical extensions must be refused
    // by anyone who does not implement them, and we implement none.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed);
    }
    Ok((algorithm, kid))
}

/// Reads a JWT `NumericDate`: any JSON number, rounded down to whole seconds.
fn numeric_date(value: &Value) -> Result<u64, TokenError> {
    let Value::Number(number) = value else {
        return Err(TokenError::Malformed);
    };
    // Integers are taken exactly. Everything else goes through `f64`, whose
    // cast to `u64` truncates and saturates: fractions round down, and dates
    // before the epoch become 0, which compares the same way against `now`.
    number
        .as_u64()
        .or_else(|| number.as_f64().map(|date| date as u64))
        .ok_or(TokenError::Malformed)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// Who the token was issued to (`sub`).
    pub sub: String,
    /// When the token expires, in seconds since the Unix epoch (`exp`).
    pub exp: u64,
    /// When the token was issued, in seconds since the Unix epoch (`iat`), if it says: a
    /// revocation refuses the tokens issued before it, and those that do not say.
    pub iat: Option<u64>,
    /// The space-separated entries of `scope`, empty when it is absent.
    pub scopes: Vec<String>,
    /// The rooms of the `rooms` claim (each `#…`), empty when it is absent.
    pub rooms: Vec<String>,
}

impl Claims {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|granted| granted == scope)
    }

    /// Whether this is a backend's token (scope `service`): it implies `publish`, may set
    /// `sender`, may address any person or room, and publishes under
    /// `--service-publish-rate`.
    pub fn is_service(&self) -> bool {
        self.has_scope("service")
    }
}

/// Seconds since the Unix epoch, for `verify`.
pub fn now_unix() -> u64 {
    // A clock before 1970 is broken. Reading it as the far future makes
    // every token expired, which fails closed instead of open.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |since_epoch| since_epoch.as_secs())
}

#[cfg(test)]
mod tests;
