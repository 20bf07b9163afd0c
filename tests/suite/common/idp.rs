//! A pretend identity provider: fixture keys (tests/fixtures/jwks), the tokens it signs with
//! them, and a key-set server on 127.0.0.1 whose answer a test changes at will and whose
//! requests it counts (this machine is offline; real providers are not reachable).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks");

/// Reads a fixture file.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// One of the provider's private keys.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    /// `rsa-a.pk8` or `rsa-b.pk8`.
    pub fn rsa(name: &str) -> SigningKey {
        SigningKey::Rsa(RsaKeyPair::from_pkcs8(&fixture(name)).unwrap())
    }

    pub fn p256() -> SigningKey {
        let der = fixture("p256.pk8");
        let rng = SystemRandom::new();
        SigningKey::P256(
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                .unwrap(),
        )
    }

    pub fn ed25519() -> SigningKey {
        SigningKey::Ed25519(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&fixture("ed25519.pk8")).unwrap(),
        )
    }

    /// The JWS name of the algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "RS256",
            SigningKey::P256(_) => "ES256",
            SigningKey::Ed25519(_) => "EdDSA",
        }
    }

    /// The public key as a JWK named `kid`, with the members every provider sends (`use`,
    /// `alg`); tests add the rest.
    pub fn jwk(&self, kid: &str) -> Value {
        let mut jwk = match self {
            SigningKey::Rsa(key) => {
                let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)})
            }
            SigningKey::P256(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            SigningKey::Ed25519(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref())})
            }
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(self.alg());
        jwk
    }

    /// A token with this key's `alg`, `kid` and `claims`.
    pub fn token(&self, kid: &str, claims: &Value) -> String {
        self.token_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": kid}),
            claims,
        )
    }

    /// A token with exactly `header` and `claims`, signed with this key.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            SigningKey::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut signature,
                )
                .unwrap();
                signature
            }
            SigningKey::P256(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            SigningKey::Ed25519(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }
}

/// A token with exactly `header` and `claims`, signed with HS256 and `secret` whatever the
/// header says: the algorithm-confusion attacker's tool.
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = Hmac::<sha2::Sha256>::new_from_slice(secret)
        .unwrap()
        .chain_update(input.as_bytes())
        .finalize()
        .into_bytes();
    format!("{input}.{}", b64(&signature))
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch, plus `ahead`.
pub fn unix_time(ahead: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + ahead
}

/// What the key-set server answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this JSON document.
    Set(Value),
    /// 200 with these bytes and their `Content-Length`.
    Bytes(Vec<u8>),
    /// 200 with these bytes and no length: the body ends when the connection closes.
    Unsized(Vec<u8>),
    /// This status, with a short JSON body.
    Status(u16),
}

/// A key-set server on 127.0.0.1: answers every request with its current [`Answer`] and
/// counts them. Stops when dropped.
pub struct KeySetServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

struct ServerState {
    answer: Mutex<Answer>,
    requests: AtomicUsize,
}

impl KeySetServer {
    /// A server on a free port.
    pub async fn start(answer: Answer) -> KeySetServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        KeySetServer::serve(listener, answer)
    }

    /// A server on `addr` (a port a stopped server had, say).
    pub async fn start_at(addr: std::net::SocketAddr, answer: Answer) -> KeySetServer {
        KeySetServer::serve(TcpListener::bind(addr).await.unwrap(), answer)
    }

    fn serve(listener: TcpListener, answer: Answer) -> KeySetServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            answer: Mutex::new(answer),
            requests: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    state.requests.fetch_add(1, Ordering::SeqCst);
                    let answer = state.answer.lock().unwrap().clone();
                    let (status, body, sized) = match answer {
                        Answer::Set(set) => (200, set.to_string().into_bytes(), true),
                        Answer::Bytes(bytes) => (200, bytes, true),
                        Answer::Unsized(bytes) => (200, bytes, false),
                        Answer::Status(status) => (status, br#"{"error":"down"}"#.to_vec(), true),
                    };
                    let mut response =
                        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n");
                    if sized {
                        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
                    }
                    response.push_str("\r\n");
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        KeySetServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            addr,
            state,
            task,
        }
    }

    /// Answers `answer` from now on.
    pub fn answer(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
