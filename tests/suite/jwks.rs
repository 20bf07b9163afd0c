//! Tokens from an identity provider (`--jwks-url`): RS256, ES256 and EdDSA tokens shaped like
//! Supabase Auth's, Auth0's and Keycloak's, verified with a key set a test serves on
//! 127.0.0.1; keys bound to their type (algorithm confusion refused); rotation; outages at
//! start and later; bad answers that keep the last good keys; and a flood of unknown `kid`s
//! that costs the provider at most two fetches.

use std::time::Duration;

use futures::future::join_all;
use pgrelay::auth::{Jwks, JwksTiming, Keys, TokenPolicy};
use serde_json::{json, Value};

use crate::common::idp::*;
use crate::common::*;

/// Fast timing for tests that are not about the intervals themselves.
const QUICK: JwksTiming = JwksTiming {
    refresh: Duration::from_secs(300),
    min_refetch: Duration::from_millis(50),
    retry: Duration::from_millis(50),
};

/// A relay verifying with the test secret and the key set at `url`, with `policy`.
async fn relay_with_key_set(db: &str, url: &str, timing: JwksTiming, policy: TokenPolicy) -> Relay {
    Relay::launch(options(db, url, timing, policy)).await
}

fn options(db: &str, url: &str, timing: JwksTiming, policy: TokenPolicy) -> RelayOptions {
    let keys = Keys::from_secret_list(SECRET)
        .unwrap()
        .with_jwks(Jwks::new(url, timing).unwrap())
        .with_policy(policy);
    RelayOptions {
        keys: Some(keys),
        ..RelayOptions::new(db)
    }
}

/// The claims every test token carries unless a test says otherwise.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": unix_time(0), "exp": unix_time(600)})
}

/// The status and JSON body of `GET /v1/messages` as `token`.
async fn list(base: &str, token: &str) -> (u16, Value) {
    status_and_json(history(base, token, "").await).await
}

/// Waits until `/metrics` counts `n` fetches with `outcome`.
async fn wait_for_fetches(base: &str, outcome: &str, n: u64) {
    let name = format!("pgrelay_jwks_fetches_total{{outcome=\"{outcome}\"}}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while try_metric(base, &name).await.unwrap_or(0.0) < n as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {n} {outcome} fetches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One provider's shape: its key set, the policy that fits it, a token as it would issue one
/// (with a `rooms` claim added the provider's way), and the room that token grants.
struct Provider {
    name: &'static str,
    key_set: Value,
    policy: TokenPolicy,
    token: String,
}

fn policy(audience: &str, issuer: &str) -> TokenPolicy {
    TokenPolicy {
        max_lifetime: Some(Duration::from_secs(24 * 3600)),
        audience: Some(audience.into()),
        issuer: Some(issuer.into()),
    }
}

/// Supabase Auth: ES256 (its recommended asymmetric key), `aud: authenticated`, issuer
/// `https://<ref>.supabase.co/auth/v1`, the user's UUID as `sub`; rooms from a custom access
/// token hook. Its set marks keys `key_ops: ["verify"]` and `ext: true`.
fn supabase() -> Provider {
    let key = SigningKey::p256();
    let mut jwk = key.jwk("5c1f1d0e-3b3c-4a55-9f5e-2d6f0b7f2a11");
    jwk["key_ops"] = json!(["verify"]);
    jwk["ext"] = json!(true);
    let issuer = "https://abcdefghijklmnop.supabase.co/auth/v1";
    let token = key.token(
        "5c1f1d0e-3b3c-4a55-9f5e-2d6f0b7f2a11",
        &json!({
            "iss": issuer, "sub": "7b0c4f4e-86c2-4cbb-9c55-4f0e3d2f6a01", "aud": "authenticated",
            "exp": unix_time(3600), "iat": unix_time(0), "email": "ana@example.com", "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {},
            "role": "authenticated", "aal": "aal1", "amr": [{"method": "password", "timestamp": unix_time(0)}],
            "session_id": "0d7a2c55-9a55-4f2e-8d9f-1c7b2f9e4b20", "is_anonymous": false,
            "rooms": ["#team-1"]
        }),
    );
    Provider {
        name: "Supabase",
        key_set: json!({"keys": [jwk]}),
        policy: policy("authenticated", issuer),
        token,
    }
}

/// Auth0: RS256, issuer `https://<tenant>/` (trailing slash), `aud` the API identifier (an
/// array with the userinfo URL when `openid` was asked), `sub` like `auth0|…`; rooms from an
/// Action that sets a custom claim. Its set carries `x5c` and `x5t` too.
fn auth0() -> Provider {
    let key = SigningKey::rsa("rsa-a.pk8");
    let mut jwk = key.jwk("Qk1XQ0JGRjVDRTY2MTc2MjVCRTk0RkE0");
    jwk["x5t"] = json!("Qk1XQ0JGRjVDRTY2MTc2MjVCRTk0RkE0");
    jwk["x5c"] = json!(["MIIDDTCCAfWgAwIBAgIJ"]);
    let issuer = "https://example-tenant.eu.auth0.com/";
    let token = key.token(
        "Qk1XQ0JGRjVDRTY2MTc2MjVCRTk0RkE0",
        &json!({
            "iss": issuer, "sub": "auth0|64f1c2d3e4b5a6978899aabb",
            "aud": ["https://relay.example.com", "https://example-tenant.eu.auth0.com/userinfo"],
            "iat": unix_time(0), "exp": unix_time(3600), "azp": "k3yCl13nt1d",
            "scope": "openid profile email", "rooms": ["#team-1"]
        }),
    );
    Provider {
        name: "Auth0",
        key_set: json!({"keys": [jwk]}),
        policy: policy("https://relay.example.com", issuer),
        token,
    }
}

/// Keycloak: RS256 with an encryption key (`use: enc`, `RSA-OAEP`) in the same set, issuer
/// `https://<host>/realms/<realm>`, `aud` from an audience mapper, the user's UUID as `sub`;
/// rooms from a user-attribute mapper.
fn keycloak() -> Provider {
    let key = SigningKey::rsa("rsa-a.pk8");
    let mut encryption = SigningKey::rsa("rsa-b.pk8").jwk("enc-kid");
    encryption["use"] = json!("enc");
    encryption["alg"] = json!("RSA-OAEP");
    let issuer = "https://sso.example.com/realms/acme";
    let token = key.token(
        "g3lbVH0Fhm3P7nWy1h5b5vYQ0vC2qk9m2J6ZkB4c1dE",
        &json!({
            "exp": unix_time(300), "iat": unix_time(0), "jti": "onrtac:5d1c",
            "iss": issuer, "aud": ["pgrelay", "account"],
            "sub": "f2d7a6c1-0b8e-4b5a-9c3d-7e6f5a4b3c21", "typ": "Bearer", "azp": "web",
            "sid": "3c2b1a09", "scope": "openid email profile", "preferred_username": "ana",
            "realm_access": {"roles": ["default-roles-acme"]}, "rooms": ["#team-1"]
        }),
    );
    Provider {
        name: "Keycloak",
        key_set: json!({"keys": [encryption, key.jwk("g3lbVH0Fhm3P7nWy1h5b5vYQ0vC2qk9m2J6ZkB4c1dE")]}),
        policy: policy("pgrelay", issuer),
        token,
    }
}

/// An Ed25519 key (Keycloak and others offer EdDSA): `alg: EdDSA`, `kty: OKP`.
fn eddsa() -> Provider {
    let key = SigningKey::ed25519();
    let issuer = "https://sso.example.com/realms/acme";
    let mut claims = claims("ana");
    claims["iss"] = json!(issuer);
    claims["aud"] = json!("pgrelay");
    claims["rooms"] = json!(["#team-1"]);
    Provider {
        name: "EdDSA",
        key_set: json!({"keys": [key.jwk("ed-1")]}),
        policy: policy("pgrelay", issuer),
        token: key.token("ed-1", &claims),
    }
}

/// Each provider's token is accepted (its `sub` and `rooms` reach the relay) and the same
/// token fails the same claim rules as an HS256 one; HS256 tokens keep working beside them.
#[tokio::test]
async fn tokens_of_each_provider_are_accepted() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    for provider in [supabase(), auth0(), keycloak(), eddsa()] {
        let name = provider.name;
        let server = KeySetServer::start(Answer::Set(provider.key_set)).await;
        let relay = relay_with_key_set(&db, &server.url, QUICK, provider.policy.clone()).await;
        insert(&client, &["#team-1"], json!({"for": name})).await;
        // Numbered now, so the page below has it however busy the relay's listener is.
        number_pending(&client).await;
        let (status, page) = list(&relay.base, &provider.token).await;
        assert_eq!(status, 200, "{name}: {page}");
        let payloads: Vec<&Value> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["payload"])
            .collect();
        assert!(
            payloads.contains(&&json!({"for": name})),
            "{name}: the rooms claim was not used: {page}"
        );

        // HS256 with the secret works beside the key set (the relay's policy applies to it too).
        let hs256 = hs256_token(
            SECRET.as_bytes(),
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"sub": "backend", "exp": unix_time(60), "aud": provider.policy.audience, "iss": provider.policy.issuer}),
        );
        assert_eq!(list(&relay.base, &hs256).await.0, 200, "{name}: HS256");

        // The relay's claim rules apply to every algorithm.
        let other_audience = TokenPolicy {
            audience: Some("someone-else".into()),
            ..provider.policy.clone()
        };
        drop(relay);
        let strict = relay_with_key_set(&db, &server.url, QUICK, other_audience).await;
        assert_json_error(
            history(&strict.base, &provider.token, "").await,
            401,
            "wrong_audience",
            name,
        )
        .await;
    }
}

/// Every rule of an HS256 token holds for an asymmetric one: exp required, lifetime capped,
/// `sub` by the name rule, no repeated claim or header field, `crit` refused.
#[tokio::test]
async fn claim_rules_are_the_same_for_every_algorithm() {
    let db = fresh_database().await;
    let key = SigningKey::p256();
    let server = KeySetServer::start(Answer::Set(json!({"keys": [key.jwk("k")]}))).await;
    let relay = relay_with_key_set(&db, &server.url, QUICK, policy_with_lifetime()).await;
    let cases: Vec<(&str, String)> = vec![
        ("missing_expiry", key.token("k", &json!({"sub": "ana"}))),
        (
            "token_expired",
            key.token("k", &json!({"sub": "ana", "exp": unix_time(-1)})),
        ),
        (
            "token_lifetime_too_long",
            key.token("k", &json!({"sub": "ana", "exp": unix_time(48 * 3600)})),
        ),
        (
            "invalid_subject",
            key.token("k", &json!({"sub": "#room", "exp": unix_time(60)})),
        ),
        (
            "invalid_subject",
            key.token("k", &json!({"sub": "*", "exp": unix_time(60)})),
        ),
        (
            "token_not_yet_valid",
            key.token(
                "k",
                &json!({"sub": "ana", "exp": unix_time(60), "nbf": unix_time(30)}),
            ),
        ),
        (
            "invalid_token",
            key.token_with_header(
                &json!({"alg": "ES256", "kid": "k", "crit": ["exp"]}),
                &claims("ana"),
            ),
        ),
    ];
    for (code, token) in cases {
        assert_json_error(history(&relay.base, &token, "").await, 401, code, code).await;
    }
    // A repeated claim: JSON text that a `Value` cannot hold, signed as is.
    let header = b64(br#"{"alg":"ES256","kid":"k"}"#);
    let body = b64(format!(r#"{{"sub":"bob","sub":"ana","exp":{}}}"#, unix_time(60)).as_bytes());
    let input = format!("{header}.{body}");
    let SigningKey::P256(pair) = &key else {
        unreachable!()
    };
    let signature = pair
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    let repeated = format!("{input}.{}", b64(signature.as_ref()));
    assert_json_error(
        history(&relay.base, &repeated, "").await,
        401,
        "invalid_token",
        "repeated sub",
    )
    .await;
    assert_eq!(
        list(&relay.base, &key.token("k", &claims("ana"))).await.0,
        200
    );
}

fn policy_with_lifetime() -> TokenPolicy {
    TokenPolicy {
        max_lifetime: Some(Duration::from_secs(24 * 3600)),
        ..TokenPolicy::default()
    }
}

/// Algorithm confusion: an HS256 token made with the provider's public key (PEM, DER, the
/// JWK's text or its modulus) as the HMAC secret, an RS256 token whose `kid` names an EC
/// key, an ES256 token naming an RSA key, `alg: none`: all 401, with or without a secret.
#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let db = fresh_database().await;
    let rsa = SigningKey::rsa("rsa-a.pk8");
    let ec = SigningKey::p256();
    let rsa_jwk = rsa.jwk("rsa");
    let set = json!({"keys": [rsa_jwk, ec.jwk("ec")]});
    let server = KeySetServer::start(Answer::Set(set)).await;
    let modulus = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        rsa_jwk["n"].as_str().unwrap(),
    )
    .unwrap();
    let public_secrets: Vec<(&str, Vec<u8>)> = vec![
        ("RSA PEM", fixture("rsa-a.pub.pem")),
        ("RSA DER", fixture("rsa-a.pub.der")),
        ("EC PEM", fixture("p256.pub.pem")),
        ("the JWK's text", rsa_jwk.to_string().into_bytes()),
        ("the modulus", modulus),
    ];
    let mut forged: Vec<(String, String)> = Vec::new();
    for (what, secret) in &public_secrets {
        for kid in ["rsa", "ec"] {
            let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
            forged.push((
                format!("HS256 keyed with {what}, kid {kid}"),
                hs256_token(secret, &header, &claims("mallory")),
            ));
        }
    }
    forged.push((
        "RS256 naming the EC key".into(),
        rsa.token("ec", &claims("mallory")),
    ));
    forged.push((
        "ES256 naming the RSA key".into(),
        ec.token("rsa", &claims("mallory")),
    ));
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"rsa"}"#),
        b64(claims("mallory").to_string().as_bytes())
    );
    forged.push(("alg none".into(), unsigned));

    // A relay with a secret beside the key set, and one with the key set alone.
    let with_secret = relay_with_key_set(&db, &server.url, QUICK, TokenPolicy::default()).await;
    let alone = Relay::launch(RelayOptions {
        keys: Some(Keys::from_jwks(Jwks::new(&server.url, QUICK).unwrap())),
        ..RelayOptions::new(&db)
    })
    .await;
    for relay in [&with_secret, &alone] {
        for (what, token) in &forged {
            let (status, body) = list(&relay.base, token).await;
            assert_eq!(status, 401, "{what}: {body}");
        }
        assert_eq!(
            list(&relay.base, &rsa.token("rsa", &claims("ana"))).await.0,
            200
        );
        assert_eq!(
            list(&relay.base, &ec.token("ec", &claims("ana"))).await.0,
            200
        );
    }
    let hs256 = hs256_token(SECRET.as_bytes(), &json!({"alg": "HS256"}), &claims("ana"));
    assert_eq!(list(&with_secret.base, &hs256).await.0, 200);
    assert_json_error(
        history(&alone.base, &hs256, "").await,
        401,
        "unsupported_algorithm",
        "no secret",
    )
    .await;
}

/// Rotation: a key the provider adds works at once (its unknown `kid` fetches the set
/// again), the old one keeps working while the set still has it, and stops once a fetch
/// shows it removed.
#[tokio::test]
async fn rotated_keys_work_at_once_and_removed_ones_stop() {
    let db = fresh_database().await;
    let old = SigningKey::rsa("rsa-a.pk8");
    let new = SigningKey::rsa("rsa-b.pk8");
    let server = KeySetServer::start(Answer::Set(json!({"keys": [old.jwk("old")]}))).await;
    let relay = relay_with_key_set(&db, &server.url, QUICK, TokenPolicy::default()).await;
    let old_token = old.token("old", &claims("ana"));
    let new_token = new.token("new", &claims("ana"));
    assert_eq!(list(&relay.base, &old_token).await.0, 200);

    server.answer(Answer::Set(
        json!({"keys": [old.jwk("old"), new.jwk("new")]}),
    ));
    tokio::time::sleep(QUICK.min_refetch).await;
    assert_eq!(list(&relay.base, &new_token).await.0, 200, "the new key");
    assert_eq!(
        list(&relay.base, &old_token).await.0,
        200,
        "the old key, still published"
    );

    server.answer(Answer::Set(json!({"keys": [new.jwk("new")]})));
    // Known keys cause no fetch: the old key works until something fetches the set.
    let fetches = server.requests();
    assert_eq!(list(&relay.base, &old_token).await.0, 200);
    assert_eq!(server.requests(), fetches);
    tokio::time::sleep(QUICK.min_refetch).await;
    let unknown = new.token("unknown", &claims("ana"));
    assert_json_error(
        history(&relay.base, &unknown, "").await,
        401,
        "unknown_key",
        "unknown kid",
    )
    .await;
    assert_json_error(
        history(&relay.base, &old_token, "").await,
        401,
        "unknown_key",
        "removed key",
    )
    .await;
    assert_eq!(list(&relay.base, &new_token).await.0, 200);
}

/// Failed fetches keep the last good keys: a provider that is down, answers 500, sends a
/// body that is not a key set, one with no usable key, or one over 256 KiB (declared, or
/// streamed without a length). Each is counted by outcome on `/metrics`; the relay stays
/// ready.
#[tokio::test]
async fn failed_fetches_keep_the_last_good_keys() {
    let db = fresh_database().await;
    let key = SigningKey::p256();
    let server = KeySetServer::start(Answer::Set(json!({"keys": [key.jwk("k")]}))).await;
    let timing = JwksTiming {
        refresh: Duration::from_millis(100),
        ..QUICK
    };
    let relay = relay_with_key_set(&db, &server.url, timing, TokenPolicy::default()).await;
    let token = key.token("k", &claims("ana"));
    assert_eq!(list(&relay.base, &token).await.0, 200);

    let huge = json!({"keys": [key.jwk("k")], "padding": "x".repeat(300 * 1024)})
        .to_string()
        .into_bytes();
    let bad_answers = [
        ("status", Answer::Status(500)),
        (
            "malformed",
            Answer::Bytes(b"<html>maintenance</html>".to_vec()),
        ),
        (
            "malformed",
            Answer::Set(json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]})),
        ),
        ("too_large", Answer::Bytes(huge.clone())),
        ("too_large", Answer::Unsized(huge)),
    ];
    for (outcome, answer) in bad_answers {
        let name = format!("pgrelay_jwks_fetches_total{{outcome=\"{outcome}\"}}");
        let before = metric(&relay.base, &name).await;
        server.answer(answer);
        // Fetches never overlap, so the second one from now has seen the new answer.
        wait_for_fetches(&relay.base, outcome, before + 2).await;
        assert_eq!(
            list(&relay.base, &token).await.0,
            200,
            "after a {outcome} fetch"
        );
        assert_eq!(metric(&relay.base, "pgrelay_jwks_keys").await, 1);
    }
    let addr = server.addr;
    drop(server);
    wait_for_fetches(&relay.base, "unreachable", 1).await;
    assert_eq!(
        list(&relay.base, &token).await.0,
        200,
        "with the provider down"
    );
    assert_eq!(readyz(&reqwest::Client::new(), &relay.base).await, 200);

    // Back up with a new key: the set is replaced.
    let other = SigningKey::ed25519();
    let _server =
        KeySetServer::start_at(addr, Answer::Set(json!({"keys": [other.jwk("k2")]}))).await;
    tokio::time::sleep(QUICK.min_refetch).await;
    assert_eq!(
        list(&relay.base, &other.token("k2", &claims("ana")))
            .await
            .0,
        200
    );
}

/// A relay started while its provider is down serves, answers asymmetric tokens 503 (not a
/// 401 a client would give up on) and `/readyz` 503 saying why, keeps trying, and is ready
/// once a set loads. HS256 tokens work meanwhile.
#[tokio::test]
async fn a_relay_started_during_an_outage_is_ready_once_the_set_loads() {
    let db = fresh_database().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let relay = Relay::spawn(options(&db, &url, QUICK, TokenPolicy::default())).await;
    assert!(wait_readyz(&relay.base, 503, PATIENCE).await.is_some());
    wait_for_fetches(&relay.base, "unreachable", 2).await;
    let response = reqwest::get(format!("{}/readyz", relay.base))
        .await
        .unwrap();
    let body = assert_json_error(response, 503, "not_ready", "readyz").await;
    assert!(
        body["message"].as_str().unwrap().contains("--jwks-url"),
        "{body}"
    );

    let key = SigningKey::p256();
    let token = key.token("k", &claims("ana"));
    assert_json_error(
        history(&relay.base, &token, "").await,
        503,
        "not_ready",
        "no keys yet",
    )
    .await;
    assert_eq!(
        list(&relay.base, &relay.token("ana", &[])).await.0,
        200,
        "HS256"
    );

    let _server = KeySetServer::start_at(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Answer::Set(json!({"keys": [key.jwk("k")]})),
    )
    .await;
    assert!(
        wait_readyz(&relay.base, 200, PATIENCE).await.is_some(),
        "never ready"
    );
    assert_eq!(list(&relay.base, &token).await.0, 200);
}

/// 200 tokens with made-up `kid`s at once, once the 10 s refetch interval has passed, cost
/// the provider at most two fetches (they share one), and every one of them is answered.
#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_twice() {
    let db = fresh_database().await;
    let key = SigningKey::p256();
    let server = KeySetServer::start(Answer::Set(json!({"keys": [key.jwk("k")]}))).await;
    let timing = JwksTiming::default();
    let relay = relay_with_key_set(&db, &server.url, timing, TokenPolicy::default()).await;
    tokio::time::sleep(timing.min_refetch).await;
    let before = server.requests();
    let http = reqwest::Client::new();
    let answers = join_all((0..200).map(|i| {
        let request = http
            .get(format!("{}/v1/messages", relay.base))
            .bearer_auth(key.token(&format!("made-up-{i}"), &claims("ana")))
            .send();
        async move { tokio::time::timeout(PATIENCE, request).await }
    }))
    .await;
    let fetches = server.requests() - before;
    for answer in answers {
        let response = answer.expect("a token waited too long").unwrap();
        assert_eq!(response.status(), 401);
    }
    println!("key-set fetches during a burst of 200 unknown-kid tokens: {fetches}");
    assert!((1..=2).contains(&fetches), "{fetches} fetches");
}

/// `pgrelay serve` needs a secret, a key set or both, and refuses a key set fetched over
/// plain http from another machine, before it touches the database.
#[test]
fn serve_needs_a_secret_or_a_key_set_over_https() {
    let serve = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
            .arg("serve")
            .args(extra)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("PGRELAY_SECRET")
            .env_remove("PGRELAY_JWKS_URL")
            .output()
            .unwrap()
    };
    let neither = serve(&[]);
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(!neither.status.success());
    assert!(
        stderr.contains("--secret") && stderr.contains("--jwks-url"),
        "{stderr}"
    );

    let plain = serve(&["--jwks-url", "http://idp.example.com/.well-known/jwks.json"]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success());
    assert!(
        stderr.contains("--jwks-url") && stderr.contains("https"),
        "{stderr}"
    );
}

/// `pgrelay serve --jwks-url …` without a secret serves the provider's tokens and refuses
/// HS256 ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_key_set_alone() {
    let db = fresh_database().await;
    let key = SigningKey::ed25519();
    let server = KeySetServer::start(Answer::Set(json!({"keys": [key.jwk("k")]}))).await;
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db)
        .env("PGRELAY_JWKS_URL", &server.url)
        .env_remove("PGRELAY_SECRET")
        .env_remove("LISTEN_DATABASE_URL")
        .env_remove("PORT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_readyz(&base, 200, PATIENCE).await.is_some(),
        "never ready"
    );
    assert_eq!(list(&base, &key.token("k", &claims("ana"))).await.0, 200);
    let hs256 = hs256_token(SECRET.as_bytes(), &json!({"alg": "HS256"}), &claims("ana"));
    assert_json_error(
        history(&base, &hs256, "").await,
        401,
        "unsupported_algorithm",
        "HS256",
    )
    .await;
}

/// A measurement, not a check: what verifying (and opening a stream with) an ES256, EdDSA or
/// RS256 token costs next to an HS256 one. Run with
/// `cargo test --release --test suite jwks::verify_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it with --release and --nocapture"]
async fn verify_cost() {
    let db = fresh_database().await;
    let (es, ed, rsa) = (
        SigningKey::p256(),
        SigningKey::ed25519(),
        SigningKey::rsa("rsa-a.pk8"),
    );
    let set = json!({"keys": [es.jwk("es"), ed.jwk("ed"), rsa.jwk("rsa")]});
    let server = KeySetServer::start(Answer::Set(set)).await;
    let relay = relay_with_key_set(
        &db,
        &server.url,
        JwksTiming::default(),
        TokenPolicy::default(),
    )
    .await;
    let tokens = [
        ("HS256", relay.token("ana", &[])),
        ("ES256", es.token("es", &claims("ana"))),
        ("EdDSA", ed.token("ed", &claims("ana"))),
        ("RS256", rsa.token("rsa", &claims("ana"))),
    ];
    let now = pgrelay::auth::now_unix();
    const VERIFIES: u32 = 2000;
    const OPENS: u32 = 300;
    let http = reqwest::Client::new();
    // Stream opens are noisy (connections, the pool, the scheduler): each algorithm's best
    // of three rounds, after a warm-up.
    let mut best_open = [Duration::MAX; 4];
    for round in 0..4 {
        for (index, (_, token)) in tokens.iter().enumerate() {
            let started = std::time::Instant::now();
            for _ in 0..OPENS {
                let response = http
                    .get(format!("{}/v1/stream", relay.base))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
            if round > 0 {
                best_open[index] = best_open[index].min(started.elapsed() / OPENS);
            }
        }
    }
    for ((alg, token), open) in tokens.iter().zip(best_open) {
        relay.keys.verify(token, now).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..VERIFIES {
            relay.keys.verify(token, now).unwrap();
        }
        let verify = started.elapsed() / VERIFIES;
        println!(
            "{alg}: {:.1} µs per verify, {:.0} µs per stream open (to the response head)",
            verify.as_secs_f64() * 1e6,
            open.as_secs_f64() * 1e6
        );
    }
}
