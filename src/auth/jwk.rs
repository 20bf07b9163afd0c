//! A JSON Web Key Set (RFC 7517) as verification keys: each key bound to the one algorithm
//! its type allows, found by `kid` and algorithm together, its signatures checked by `ring`.
//!
//! Algorithm confusion is the classic way past JWT verification: a token says `HS256` and is
//! "verified" with an RSA public key's bytes as the HMAC secret, or names the `kid` of an EC
//! key in an `RS256` token. So a key here is never a bag of bytes: it is an RSA modulus and
//! exponent, a P-256 point or an Ed25519 point, and it verifies its own algorithm only
//! (RS256, ES256, EdDSA). Lookups are by `(algorithm, kid)`, never by `kid` alone, so a
//! token's `alg` can never pick another key type's verification. Symmetric (`oct`) keys,
//! encryption keys (`use: enc`) and keys whose `alg` says anything else are left out.
//!
//! No arithmetic is written here: `ring` (already the relay's TLS provider) does it, with
//! ES256 signatures as JWS sends them (raw `r || s`, 64 bytes) and RSA moduli of 2048 to 8192
//! bits.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{TokenError, UniqueKeys};

/// The signature algorithms a token may name (its header's `alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256, keyed by the configured secrets; never by a key of the set.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Algorithm {
    /// The algorithm a header's `alg` names; `None` for any other (`none`, `HS512`, `PS256` …).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "HS256" => Some(Algorithm::Hs256),
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

/// A public key, of one type, verifying one algorithm.
#[derive(Clone)]
enum PublicKey {
    /// RS256: big-endian modulus and exponent, as `n` and `e` carry them.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// ES256: the uncompressed point `0x04 || x || y`.
    P256(Vec<u8>),
    /// EdDSA: the 32-byte point `x`.
    Ed25519(Vec<u8>),
}

impl PublicKey {
    /// The only algorithm this key verifies.
    fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa { .. } => Algorithm::Rs256,
            PublicKey::P256(_) => Algorithm::Es256,
            PublicKey::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// Whether `signature` is this key's over `message` (ring checks the point is on the
    /// curve and the modulus's size).
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            PublicKey::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Ed25519(point) => UnparsedPublicKey::new(&signature::ED25519, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// The usable keys of one fetched key set, by algorithm and then `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Algorithm → kid → keys. Several keys may share a `kid` and algorithm (a provider's
    /// mistake, or a set caught mid-rotation); a signature by any of them verifies, as each
    /// is the provider's.
    by_algorithm: HashMap<Algorithm, HashMap<String, Vec<PublicKey>>>,
    /// How many keys were usable.
    usable: usize,
    /// How many were left out (other types, curves, uses or algorithms, or malformed).
    skipped: usize,
}

/// The document's shape: an object whose `keys` member, given once, is an array of objects
/// without repeated members. Other members are ignored, as RFC 7517 asks.
#[derive(Deserialize)]
struct Document {
    keys: Vec<UniqueKeys>,
}

/// Longest `kid` taken; real ones are short ids or thumbprints.
const MAX_KID_LEN: usize = 256;

impl KeySet {
    /// The usable keys of a JWK Set document; an error (saying why, never quoting the
    /// document) when it is not a key set or holds no usable key, so the caller keeps the
    /// keys it has.
    pub fn parse(document: &[u8]) -> Result<KeySet, String> {
        let Document { keys } = serde_json::from_slice(document).map_err(|_| {
            "the body is not a JWK Set (a JSON object with a `keys` array of objects, \
             none with a repeated member)"
                .to_owned()
        })?;
        let mut set = KeySet::default();
        for UniqueKeys(jwk) in keys {
            match usable_key(&jwk) {
                Some((kid, key)) => {
                    set.by_algorithm
                        .entry(key.algorithm())
                        .or_default()
                        .entry(kid)
                        .or_default()
                        .push(key);
                    set.usable += 1;
                }
                None => set.skipped += 1,
            }
        }
        if set.usable == 0 {
            return Err(format!(
                "the set has no usable signing key (RS256, ES256 on P-256 or EdDSA on Ed25519, \
                 with a kid); {} left out",
                set.skipped
            ));
        }
        Ok(set)
    }

    /// How many usable keys the set holds.
    pub fn usable(&self) -> usize {
        self.usable
    }

    /// How many keys of the document were left out.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Checks `signature` over `message` with the keys named `kid` that verify `algorithm`:
    /// [`TokenError::UnknownKey`] when there are none (even if `kid` names a key of another
    /// type), [`TokenError::BadSignature`] when none of them made it.
    pub fn verify(
        &self,
        algorithm: Algorithm,
        kid: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let keys = self
            .by_algorithm
            .get(&algorithm)
            .and_then(|by_kid| by_kid.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        if keys.iter().any(|key| key.verifies(message, signature)) {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({} keys, {} left out)", self.usable, self.skipped)
    }
}

/// The `kid` and key of a JWK usable for verifying tokens, or `None`: no `kid`, a use or
/// key operation other than verifying signatures, an `alg` other than the one its type
/// allows, a type or curve we do not verify, or malformed members.
fn usable_key(jwk: &Map<String, Value>) -> Option<(String, PublicKey)> {
    let kid = match jwk.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => kid.clone(),
        _ => return None,
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(_) => return None,
    }
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|op| op.as_str() == Some("verify")) => {}
        Some(_) => return None,
    }
    let key = match (text(jwk, "kty")?, jwk.get("crv").and_then(Value::as_str)) {
        ("RSA", _) => {
            let n = strip_leading_zeros(bytes(jwk, "n")?);
            let e = strip_leading_zeros(bytes(jwk, "e")?);
            // ring takes 2048 to 8192 bits; anything else could never verify.
            if !(256..=1024).contains(&n.len()) || e.is_empty() || e.len() > 8 {
                return None;
            }
            PublicKey::Rsa { n, e }
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (bytes(jwk, "x")?, bytes(jwk, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::P256(point)
        }
        ("OKP", Some("Ed25519")) => {
            let x = bytes(jwk, "x")?;
            if x.len() != 32 {
                return None;
            }
            PublicKey::Ed25519(x)
        }
        _ => return None,
    };
    match jwk.get("alg") {
        None => {}
        Some(Value::String(alg)) if Algorithm::from_name(alg) == Some(key.algorithm()) => {}
        Some(_) => return None,
    }
    Some((kid, key))
}

/// The string member `name`.
fn text<'a>(jwk: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    jwk.get(name).and_then(Value::as_str)
}

/// The base64url (unpadded) member `name`, decoded.
fn bytes(jwk: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text(jwk, name)?).ok()
}

/// A big-endian integer without its leading zero bytes (some encoders keep a sign byte).
fn strip_leading_zeros(mut integer: Vec<u8>) -> Vec<u8> {
    let zeros = integer.iter().take_while(|&&byte| byte == 0).count();
    integer.drain(..zeros);
    integer
}

#[cfg(test)]
mod tests;
