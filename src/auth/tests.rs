//! Unit tests of token minting and verification.

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
    let longest = "s".repeat(crate::message::MAX_NAME_LEN);
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

#[test]
fn rooms_claim_is_an_array_of_rooms() {
    let keys = keys(SECRET);
    let token = keys.mint_with_rooms("alice", Duration::from_secs(60), &[], &["#general"]);
    assert_eq!(keys.verify(&token, now_unix()).unwrap().rooms, ["#general"]);
    assert!(
        verify_claims(&format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60))
            .unwrap()
            .rooms
            .is_empty()
    );
    for rooms in [
        r##""#general""##,
        r#"["general"]"#,
        r#"[1]"#,
        r##"["#"]"##,
        r#"{}"#,
    ] {
        let claims = format!(r#"{{"sub":"alice","exp":{},"rooms":{rooms}}}"#, NOW + 60);
        assert_eq!(
            verify_claims(&claims),
            Err(TokenError::Malformed),
            "{rooms}"
        );
    }
}
