//! Unit tests of key-set parsing and of keys bound to their algorithm.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

use super::*;

const MESSAGE: &[u8] = b"header.claims";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn p256() -> EcdsaKeyPair {
    let der = include_bytes!("../../../tests/fixtures/jwks/p256.pk8");
    let rng = SystemRandom::new();
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).unwrap()
}

fn ed25519() -> Ed25519KeyPair {
    let der = include_bytes!("../../../tests/fixtures/jwks/ed25519.pk8");
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).unwrap()
}

fn rsa() -> RsaKeyPair {
    RsaKeyPair::from_pkcs8(include_bytes!("../../../tests/fixtures/jwks/rsa-a.pk8")).unwrap()
}

/// The public JWK of the P-256 fixture key.
fn p256_jwk(kid: &str) -> Value {
    let point = p256().public_key().as_ref().to_vec();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
}

fn ed25519_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(ed25519().public_key().as_ref())})
}

fn rsa_jwk(kid: &str) -> Value {
    let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa().public());
    json!({"kty": "RSA", "kid": kid, "n": b64(&public.n), "e": b64(&public.e)})
}

fn set(keys: &[Value]) -> Result<KeySet, String> {
    KeySet::parse(json!({ "keys": keys }).to_string().as_bytes())
}

/// `jwk` with `member` set to `value`.
fn with(mut jwk: Value, member: &str, value: Value) -> Value {
    jwk[member] = value;
    jwk
}

fn es256_signature() -> Vec<u8> {
    p256()
        .sign(&SystemRandom::new(), MESSAGE)
        .unwrap()
        .as_ref()
        .to_vec()
}

fn rs256_signature() -> Vec<u8> {
    let key = rsa();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        MESSAGE,
        &mut signature,
    )
    .unwrap();
    signature
}

#[test]
fn each_key_type_verifies_its_own_algorithm() {
    let keys = set(&[rsa_jwk("r"), p256_jwk("e"), ed25519_jwk("o")]).unwrap();
    assert_eq!((keys.usable(), keys.skipped()), (3, 0));
    let eddsa = ed25519().sign(MESSAGE).as_ref().to_vec();
    assert_eq!(
        keys.verify(Algorithm::Rs256, "r", MESSAGE, &rs256_signature()),
        Ok(())
    );
    assert_eq!(
        keys.verify(Algorithm::Es256, "e", MESSAGE, &es256_signature()),
        Ok(())
    );
    assert_eq!(keys.verify(Algorithm::EdDsa, "o", MESSAGE, &eddsa), Ok(()));
    assert_eq!(
        keys.verify(Algorithm::EdDsa, "o", b"another message", &eddsa),
        Err(TokenError::BadSignature)
    );
}

/// An RS256 (or HS256) token whose `kid` names an EC key finds no key at all: keys are
/// looked up by algorithm and `kid` together.
#[test]
fn a_kid_of_another_key_type_is_unknown() {
    let keys = set(&[p256_jwk("shared"), ed25519_jwk("shared")]).unwrap();
    let signature = es256_signature();
    assert_eq!(
        keys.verify(Algorithm::Es256, "shared", MESSAGE, &signature),
        Ok(())
    );
    for algorithm in [Algorithm::Rs256, Algorithm::Hs256] {
        assert_eq!(
            keys.verify(algorithm, "shared", MESSAGE, &signature),
            Err(TokenError::UnknownKey)
        );
    }
    // The Ed25519 key of the same kid does not verify the ES256 signature.
    assert_eq!(
        keys.verify(Algorithm::EdDsa, "shared", MESSAGE, &signature),
        Err(TokenError::BadSignature)
    );
}

/// JWS sends ES256 signatures as raw `r || s`; the DER form other libraries produce is refused.
#[test]
fn es256_signatures_are_raw_not_der() {
    let keys = set(&[p256_jwk("e")]).unwrap();
    let der_signer = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        include_bytes!("../../../tests/fixtures/jwks/p256.pk8"),
        &SystemRandom::new(),
    )
    .unwrap();
    let der = der_signer.sign(&SystemRandom::new(), MESSAGE).unwrap();
    assert_eq!(
        keys.verify(Algorithm::Es256, "e", MESSAGE, der.as_ref()),
        Err(TokenError::BadSignature)
    );
}

/// Keys are used only for what their members allow; the rest are left out, not refused.
#[test]
fn keys_for_other_uses_algorithms_or_types_are_left_out() {
    let left_out = [
        with(rsa_jwk("a"), "use", json!("enc")),
        with(rsa_jwk("b"), "alg", json!("PS256")),
        with(rsa_jwk("c"), "alg", json!("RSA-OAEP")),
        with(p256_jwk("d"), "alg", json!("RS256")),
        with(p256_jwk("e"), "crv", json!("P-384")),
        with(ed25519_jwk("f"), "crv", json!("X25519")),
        with(rsa_jwk("g"), "key_ops", json!(["encrypt"])),
        with(p256_jwk("h"), "x", json!("not base64!")),
        with(rsa_jwk("i"), "n", json!(b64(&[0xff; 128]))),
        json!({"kty": "oct", "kid": "j", "k": b64(b"a shared secret"), "alg": "HS256"}),
        with(rsa_jwk("k"), "kid", json!(7)),
        with(rsa_jwk("l"), "kid", json!("")),
    ];
    let mut no_kid = rsa_jwk("m");
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut keys = left_out.to_vec();
    keys.push(no_kid);
    keys.push(with(
        with(rsa_jwk("usable"), "use", json!("sig")),
        "alg",
        json!("RS256"),
    ));
    keys.push(with(p256_jwk("ops"), "key_ops", json!(["verify"])));
    let parsed = set(&keys).unwrap();
    assert_eq!((parsed.usable(), parsed.skipped()), (2, left_out.len() + 1));
    assert_eq!(
        parsed.verify(Algorithm::Rs256, "usable", MESSAGE, &rs256_signature()),
        Ok(())
    );
    assert_eq!(
        parsed.verify(Algorithm::Rs256, "b", MESSAGE, &rs256_signature()),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn documents_that_are_not_key_sets_are_refused() {
    let key = p256_jwk("e").to_string();
    let x = b64(ed25519().public_key().as_ref());
    for document in [
        "".to_owned(),
        "not json".to_owned(),
        "[]".to_owned(),
        r#"{"keys": {}}"#.to_owned(),
        r#"{"keys": [1]}"#.to_owned(),
        format!(r#"{{"keys": [{key}], "keys": [{key}]}}"#),
        // A member given twice inside a key: which `x` is the key?
        format!(
            r#"{{"keys": [{{"kty": "OKP", "crv": "Ed25519", "kid": "o", "x": "{x}", "x": "{x}"}}]}}"#
        ),
    ] {
        assert!(
            KeySet::parse(document.as_bytes()).is_err(),
            "{document} was taken"
        );
    }
    let once =
        format!(r#"{{"keys": [{{"kty": "OKP", "crv": "Ed25519", "kid": "o", "x": "{x}"}}]}}"#);
    assert_eq!(KeySet::parse(once.as_bytes()).unwrap().usable(), 1);
    assert!(set(&[]).is_err(), "a set with no usable key was taken");
    assert!(set(&[with(rsa_jwk("a"), "use", json!("enc"))]).is_err());
}
