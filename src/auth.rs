//! Bearer tokens: HS256 JSON Web Tokens (RFC 7519), implemented by hand.
//!
//! pgrelay only ever needs one kind of token, a JWT signed with a secret shared
//! between the relay and whatever backend hands tokens to browsers. A general
//! JWT library would bring key formats, algorithms and options we would then
//! have to switch off again; the classic JWT vulnerabilities (`alg: none`,
//! algorithm confusion, lenient parsing) live exactly in that flexibility. So
//! this module accepts one shape of token and refuses everything else:
//!
//! * the header must say `"alg": "HS256"` (and, if present, `"typ": "JWT"`),
//! * the token must be exactly three unpadded base64url segments,
//! * the signature is checked, in constant time, before the claims are even
//!   decoded, so unauthenticated input never reaches the claims parser,
//! * `sub` and `exp` are required; `nbf`, `iat` and `scope` are optional but
//!   must have the right type when present,
//! * a claim (or header field) given twice is refused, rather than read as
//!   whichever copy a parser happens to keep,
//! * `sub` follows the participant-name rule ([`crate::valid_name`]), is not a
//!   room (`#…`) and not everyone (`*`),
//! * a [`TokenPolicy`] can refuse tokens that live too long, or lack the
//!   expected `aud` or `iss`.
//!
//! Several secrets can be configured so they can be rotated without
//! downtime: the first one signs, every one of them verifies.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted. Real tokens are a few hundred bytes; the cap is
/// checked before any decoding so oversized input costs nothing to refuse.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The only header `mint` produces.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The HS256 keys: the first signs, every one verifies.
#[derive(Clone)]
pub struct Keys {
    /// One keyed HMAC state per secret, cloned for every use so the key
    /// schedule is computed once. Never empty: `from_secret_list` is the only
    /// constructor and refuses empty lists.
    macs: Vec<HmacSha256>,
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
            policy: TokenPolicy::default(),
        })
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
    pub fn mint(&self, sub: &str, ttl: Duration, scope: &[&str]) -> String {
        #[derive(Serialize)]
        struct MintedClaims<'a> {
            sub: &'a str,
            iat: u64,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            scope: Option<String>,
        }

        let iat = now_unix();
        let claims = MintedClaims {
            sub,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            scope: (!scope.is_empty()).then(|| scope.join(" ")),
        };
        // Serializing strings and integers into a Vec cannot fail.
        let claims = serde_json::to_vec(&claims).expect("claims serialize to JSON");

        let mut token = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.macs[0]
            .clone()
            .chain_update(token.as_bytes())
            .finalize()
            .into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Verifies signature, algorithm and times against `now` (seconds since the Unix epoch).
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
        check_header(&decode_object(header)?)?;

        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        // The signing input is the header and claims segments as transmitted,
        // joined by their dot: exactly the token up to the second dot.
        let signing_input = &token.as_bytes()[..header.len() + 1 + claims.len()];
        let signed_by_a_key = self.macs.iter().any(|mac| {
            mac.clone()
                .chain_update(signing_input)
                .verify_slice(&signature)
                .is_ok()
        });
        if !signed_by_a_key {
            return Err(TokenError::BadSignature);
        }

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
        // `iat` is informational, but a wrongly typed one means the issuer is
        // not producing the tokens we think it is.
        claims.get("iat").map(numeric_date).transpose()?;
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(scope)) => scope
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(TokenError::Malformed),
        };

        if exp <= now {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now) {
            return Err(TokenError::NotYetValid);
        }
        self.policy.check(&claims, exp, now)?;
        Ok(Claims { sub, exp, scopes })
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

/// A subject is a participant name that is neither a room (`#…`) nor everyone (`*`).
fn valid_subject(sub: &str) -> bool {
    crate::valid_name(sub) && !sub.starts_with('#') && sub != "*"
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the count: secrets must never reach logs.
        write!(f, "Keys({} keys)", self.macs.len())
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

/// Accepts only the header `mint` would write, give or take `typ`.
fn check_header(header: &Map<String, Value>) -> Result<(), TokenError> {
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(_)) => return Err(TokenError::UnsupportedAlgorithm),
        _ => return Err(TokenError::Malformed),
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" => {}
        Some(_) => return Err(TokenError::Malformed),
    }
    // RFC 7515 §4.1.11: a token listing critical extensions must be refused
    // by anyone who does not implement them, and we implement none.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed);
    }
    Ok(())
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
    /// The space-separated entries of `scope`, empty when it is absent.
    pub scopes: Vec<String>,
}

impl Claims {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|granted| granted == scope)
    }
}

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
    /// The header names an algorithm other than HS256.
    UnsupportedAlgorithm,
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
    /// The `sub` claim is not a valid participant name (see [`crate::valid_name`]),
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
            TokenError::UnsupportedAlgorithm => "the token is not signed with HS256",
            TokenError::BadSignature => "the token signature does not match any configured key",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::MissingExpiry => "the token has no expiry time",
            TokenError::MissingSubject => "the token has no subject",
            TokenError::InvalidSubject => {
                "the token subject is not a name of 1 to 256 bytes without control or format \
                 characters, or names a room or everyone"
            }
            TokenError::LivesTooLong => "the token expires further ahead than this relay accepts",
            TokenError::WrongAudience => "the token is not meant for this relay (aud)",
            TokenError::WrongIssuer => "the token is not from the expected issuer (iss)",
        })
    }
}

impl std::error::Error for TokenError {}

/// Seconds since the Unix epoch, for `verify`.
pub fn now_unix() -> u64 {
    // A clock before 1970 is broken. Reading it as the far future makes
    // every token expired, which fails closed instead of open.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |since_epoch| since_epoch.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";
    const NOW: u64 = 1_700_000_000;

    fn keys(list: &str) -> Keys {
        Keys::from_secret_list(list).unwrap()
    }

    /// Builds a token from raw header and claims JSON, signed with HS256
    /// whatever the header says, to forge exactly the token a test needs.
    fn sign_raw(secret: &str, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = HmacSha256::new_from_slice(secret.as_bytes())
            .unwrap()
            .chain_update(input.as_bytes())
            .finalize()
            .into_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Signs `claims` with the standard header and verifies it at `NOW`.
    fn verify_claims(claims: &str) -> Result<Claims, TokenError> {
        keys(SECRET).verify(&sign_raw(SECRET, HEADER_JSON, claims), NOW)
    }

    #[test]
    fn minted_token_round_trips() {
        let keys = keys(SECRET);
        let before = now_unix();
        let token = keys.mint("alice", Duration::from_secs(60), &["publish", "read"]);
        let claims = keys.verify(&token, now_unix()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!((before + 60..=now_unix() + 60).contains(&claims.exp));
        assert_eq!(claims.scopes, ["publish", "read"]);
        assert!(claims.has_scope("publish"));
        assert!(!claims.has_scope("admin"));

        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap());
        assert_eq!(header.unwrap(), HEADER_JSON.as_bytes());
    }

    #[test]
    fn minted_token_without_scope_has_no_scope_claim() {
        let keys = keys(SECRET);
        let token = keys.mint("bob", Duration::from_secs(60), &[]);
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let payload: Map<String, Value> = serde_json::from_slice(&payload).unwrap();
        assert!(!payload.contains_key("scope"));
        assert!(payload["iat"].is_u64());

        let claims = keys.verify(&token, now_unix()).unwrap();
        assert!(claims.scopes.is_empty());
        assert!(!claims.has_scope("publish"));
    }

    #[test]
    fn secret_lists_are_parsed_strictly() {
        assert_eq!(format!("{:?}", keys(" new , old ")), "Keys(2 keys)");
        assert_eq!(format!("{:?}", keys("only")), "Keys(1 keys)");
        for bad in ["", "  ", ",", "s3cr3t,", ",s3cr3t", "s3cr3t, ,other"] {
            let error = Keys::from_secret_list(bad).unwrap_err();
            assert!(!error.contains("s3cr3t"), "{error}");
        }
        assert_eq!(
            Keys::from_secret_list("s3cr3t, ,other").unwrap_err(),
            "entry 2 of the secret list is empty"
        );
        // Blanks around a secret are not part of it.
        let token = keys(" padded ").mint("alice", Duration::from_secs(60), &[]);
        assert!(keys("padded").verify(&token, now_unix()).is_ok());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let debug = format!("{:?}", keys("hunter2,correct-horse"));
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("correct-horse"));
    }

    #[test]
    fn any_configured_key_verifies_and_the_first_signs() {
        let rotated = keys("new-secret,old-secret");
        let old_token = keys("old-secret").mint("alice", Duration::from_secs(60), &[]);
        assert_eq!(rotated.verify(&old_token, now_unix()).unwrap().sub, "alice");

        let unknown = keys("other-secret").mint("alice", Duration::from_secs(60), &[]);
        assert_eq!(
            rotated.verify(&unknown, now_unix()),
            Err(TokenError::BadSignature)
        );

        let new_token = rotated.mint("alice", Duration::from_secs(60), &[]);
        assert!(keys("new-secret").verify(&new_token, now_unix()).is_ok());
        assert_eq!(
            keys("old-secret").verify(&new_token, now_unix()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_are_refused_even_with_a_valid_signature() {
        let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
        for alg in [
            "none", "None", "HS384", "HS512", "RS256", "ES256", "hs256", "",
        ] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let token = sign_raw(SECRET, &header, &claims);
            assert_eq!(
                keys(SECRET).verify(&token, NOW),
                Err(TokenError::UnsupportedAlgorithm),
                "alg {alg:?}"
            );
        }

        // The classic unsigned token: `alg: none` and an empty signature.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        assert_eq!(
            keys(SECRET).verify(&unsigned, NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn headers_other_than_ours_are_refused() {
        let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
        let verify = |header: &str| keys(SECRET).verify(&sign_raw(SECRET, header, &claims), NOW);

        assert!(verify(r#"{"alg":"HS256"}"#).is_ok());
        assert!(verify(r#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#).is_ok());
        for header in [
            "{}",
            r#"{"alg":null}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","typ":"JOSE"}"#,
            r#"{"alg":"HS256","typ":"jwt"}"#,
            r#"{"alg":"HS256","typ":null}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"["HS256"]"#,
            r#""HS256""#,
        ] {
            assert_eq!(verify(header), Err(TokenError::Malformed), "{header}");
        }
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let token = sign_raw(
            SECRET,
            HEADER_JSON,
            &format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60),
        );
        let [header, _, signature]: [&str; 3] =
            token.split('.').collect::<Vec<_>>().try_into().unwrap();

        let forged_claims =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"mallory","exp":{}}}"#, NOW + 60));
        let forged = format!("{header}.{forged_claims}.{signature}");
        assert_eq!(
            keys(SECRET).verify(&forged, NOW),
            Err(TokenError::BadSignature)
        );

        let mut bad_signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bad_signature[0] ^= 1;
        let forged = format!(
            "{header}.{}.{}",
            token.split('.').nth(1).unwrap(),
            URL_SAFE_NO_PAD.encode(bad_signature)
        );
        assert_eq!(
            keys(SECRET).verify(&forged, NOW),
            Err(TokenError::BadSignature)
        );

        // A truncated signature is compared over its full expected length.
        let truncated = &token[..token.len() - 4];
        assert!(keys(SECRET).verify(truncated, NOW).is_err());
    }

    #[test]
    fn expiry_is_exact() {
        let at = |exp: &str| verify_claims(&format!(r#"{{"sub":"alice","exp":{exp}}}"#));
        assert_eq!(at(&(NOW - 1).to_string()), Err(TokenError::Expired));
        assert_eq!(at(&NOW.to_string()), Err(TokenError::Expired));
        assert_eq!(at(&format!("{NOW}.9")), Err(TokenError::Expired));
        assert_eq!(at("-5"), Err(TokenError::Expired));
        assert_eq!(at("0"), Err(TokenError::Expired));
        assert_eq!(at(&(NOW + 1).to_string()).unwrap().exp, NOW + 1);
        assert_eq!(at(&format!("{}.5", NOW + 1)).unwrap().exp, NOW + 1);
        assert_eq!(at(&format!("{}e0", NOW + 2)).unwrap().exp, NOW + 2);
        assert_eq!(at("1e300").unwrap().exp, u64::MAX);
    }

    #[test]
    fn not_before_is_exact() {
        let at = |nbf: &str| {
            verify_claims(&format!(
                r#"{{"sub":"alice","exp":{},"nbf":{nbf}}}"#,
                NOW + 60
            ))
        };
        assert_eq!(at(&(NOW + 1).to_string()), Err(TokenError::NotYetValid));
        assert!(at(&NOW.to_string()).is_ok());
        assert!(at(&format!("{NOW}.5")).is_ok());
        assert!(at("-1").is_ok());
    }

    #[test]
    fn subject_is_required_non_empty_and_short() {
        let with_sub = |sub: &str| verify_claims(&format!(r#"{{{sub}"exp":{}}}"#, NOW + 60));
        assert_eq!(with_sub(""), Err(TokenError::MissingSubject));
        assert_eq!(with_sub(r#""sub":"","#), Err(TokenError::MissingSubject));
        for sub in ["123", "null", "true", r#"["alice"]"#, r#"{"name":"alice"}"#] {
            assert_eq!(
                with_sub(&format!(r#""sub":{sub},"#)),
                Err(TokenError::InvalidSubject),
                "{sub}"
            );
        }
        let longest = "s".repeat(crate::MAX_NAME_LEN);
        assert_eq!(
            with_sub(&format!(r#""sub":"{longest}","#)).unwrap().sub,
            longest
        );
        assert_eq!(
            with_sub(&format!(r#""sub":"{longest}s","#)),
            Err(TokenError::InvalidSubject)
        );
    }

    #[test]
    fn time_claims_must_be_numbers() {
        let exp = NOW + 60;
        assert_eq!(
            verify_claims(r#"{"sub":"alice"}"#),
            Err(TokenError::MissingExpiry)
        );
        for claims in [
            format!(r#"{{"sub":"alice","exp":"{exp}"}}"#),
            r#"{"sub":"alice","exp":null}"#.to_owned(),
            r#"{"sub":"alice","exp":true}"#.to_owned(),
            format!(r#"{{"sub":"alice","exp":[{exp}]}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"nbf":"{NOW}"}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"iat":"{NOW}"}}"#),
            format!(r#"{{"sub":"alice","exp":{exp},"iat":null}}"#),
        ] {
            assert_eq!(
                verify_claims(&claims),
                Err(TokenError::Malformed),
                "{claims}"
            );
        }
        let claims = format!(r#"{{"sub":"alice","exp":{exp},"iat":{NOW}.25}}"#);
        assert!(verify_claims(&claims).is_ok());
    }

    #[test]
    fn scope_is_split_on_spaces() {
        let with_scope = |scope: &str| {
            verify_claims(&format!(
                r#"{{"sub":"alice","exp":{},"scope":{scope}}}"#,
                NOW + 60
            ))
        };
        let claims = with_scope(r#"" publish  read ""#).unwrap();
        assert_eq!(claims.scopes, ["publish", "read"]);
        assert!(claims.has_scope("publish"));
        assert!(!claims.has_scope("pub"));
        assert!(!claims.has_scope(""));
        assert!(with_scope(r#""""#).unwrap().scopes.is_empty());
        assert_eq!(with_scope(r#"["publish"]"#), Err(TokenError::Malformed));
        assert_eq!(with_scope("null"), Err(TokenError::Malformed));
    }

    #[test]
    fn wrong_segment_counts_are_malformed() {
        let token = keys(SECRET).mint("alice", Duration::from_secs(60), &[]);
        let [header, claims, signature]: [&str; 3] =
            token.split('.').collect::<Vec<_>>().try_into().unwrap();
        for bad in [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            header.to_owned(),
            format!("{header}.{claims}"),
            format!("{header}.{claims}.{signature}."),
            format!(".{header}.{claims}.{signature}"),
            format!("{header}.{claims}.{signature}.{signature}"),
        ] {
            assert_eq!(
                keys(SECRET).verify(&bad, now_unix()),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
        let token = sign_raw(SECRET, HEADER_JSON, &claims);
        let [header, payload, signature]: [&str; 3] =
            token.split('.').collect::<Vec<_>>().try_into().unwrap();
        let standard_alphabet = base64::engine::general_purpose::STANDARD_NO_PAD;

        for bad in [
            "not a token".to_owned(),
            "a.b.c".to_owned(),
            "\u{0}.\u{0}.\u{0}".to_owned(),
            "é.é.é".to_owned(),
            format!(" {token}"),
            format!("{token} "),
            format!("Bearer {token}"),
            // Padding is not allowed in JWT segments.
            format!("{header}=.{payload}.{signature}"),
            format!("{header}.{payload}.{signature}="),
            // Neither is the standard alphabet.
            format!(
                "{header}.{payload}.{}",
                standard_alphabet.encode([0xfb; 32])
            ),
            // Claims that are not a JSON object, even correctly signed.
            sign_raw(SECRET, HEADER_JSON, "[]"),
            sign_raw(SECRET, HEADER_JSON, "null"),
            sign_raw(SECRET, HEADER_JSON, "\"alice\""),
            sign_raw(SECRET, HEADER_JSON, "{"),
            sign_raw(SECRET, HEADER_JSON, &format!("{claims} {{}}")),
            sign_raw(SECRET, HEADER_JSON, ""),
            sign_raw(SECRET, "not json", &claims),
        ] {
            assert_eq!(
                keys(SECRET).verify(&bad, NOW),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn huge_tokens_are_refused_before_decoding() {
        let at_limit = "a".repeat(MAX_TOKEN_LEN);
        assert_eq!(
            keys(SECRET).verify(&at_limit, NOW),
            Err(TokenError::Malformed)
        );
        let over_limit = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            keys(SECRET).verify(&over_limit, NOW),
            Err(TokenError::TooLong)
        );

        // A well-formed, correctly signed token is refused on length alone.
        let scopes = vec!["scope"; MAX_TOKEN_LEN / 4];
        let token = keys(SECRET).mint("alice", Duration::from_secs(60), &scopes);
        assert!(token.len() > MAX_TOKEN_LEN);
        assert_eq!(
            keys(SECRET).verify(&token, now_unix()),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn errors_have_distinct_codes_and_messages() {
        let all = [
            TokenError::Malformed,
            TokenError::TooLong,
            TokenError::UnsupportedAlgorithm,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::MissingExpiry,
            TokenError::MissingSubject,
            TokenError::InvalidSubject,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code());
                assert_ne!(a.to_string(), b.to_string());
            }
        }
    }

    /// A tiny deterministic PRNG (xorshift64), so the fuzz loop below is
    /// reproducible without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    #[test]
    fn mutated_tokens_never_verify_and_never_panic() {
        // Bytes that keep mutants close to valid tokens (base64url letters,
        // separators, padding, JSON punctuation) plus some that are not ASCII.
        const REPLACEMENTS: &[u8] = b"AQgw09az-_.=+/ {}\":,\\\x00\x7f\xc3\xa9\xff";

        let keys = keys("fuzz-secret,second-secret");
        let original = keys.mint("alice", Duration::from_secs(3600), &["publish"]);
        let now = now_unix();
        assert!(keys.verify(&original, now).is_ok());

        let mut refusals = std::collections::BTreeSet::new();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..10_000 {
            let mut bytes = original.clone().into_bytes();
            for _ in 0..=rng.below(3) {
                let replacement = REPLACEMENTS[rng.below(REPLACEMENTS.len())];
                match rng.below(5) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = replacement;
                    }
                    1 => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, replacement);
                    }
                    2 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes.remove(at);
                    }
                    3 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    _ => bytes.truncate(rng.below(bytes.len() + 1)),
                }
            }
            let mutant = String::from_utf8_lossy(&bytes);
            let result = keys.verify(&mutant, now);
            if mutant == original {
                assert!(result.is_ok(), "round {round}");
            } else {
                let error = result.expect_err("a mutant verified");
                refusals.insert(error.code());
            }
        }
        // The mutants must get past the parser too, or the signature check
        // and the claims checks behind it would go unexercised.
        assert!(refusals.contains("invalid_token"), "{refusals:?}");
        assert!(refusals.contains("bad_signature"), "{refusals:?}");
    }
}
