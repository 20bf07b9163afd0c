//! `pgrelay tail`: a participant's stream as JSON lines, for shells and psql-driven testing.
//! `--room` adds rooms to the token it mints, as `pgrelay token --room` does.
//!
//! Each message event's `data` object goes to stdout on its own line (so `| jq .payload`
//! works); control events and connection trouble go to stderr. A message too large for the
//! stream (its `oversized` stand-in) is read whole with `GET /v1/messages/{id}` and printed in
//! its place, like any other. Like the browser client, tail reconnects with `Last-Event-ID`
//! and mints a fresh token when the old one expires, so it never misses or repeats a message.
//! A token the relay refuses otherwise (a wrong secret, a wrong audience …) or revokes
//! (`event: revoked`, 401 `token_revoked`) cannot be cured by minting another with the same
//! secret (a revocation refuses tokens issued before it, and its end is the operator's call):
//! tail prints the relay's reason and exits non-zero instead of retrying forever.

use std::time::Duration;

use futures::StreamExt;

use pgrelay::sse::{SseItem, SseParser};
use pgrelay::Error;
use serde_json::Value;

use super::args::{self, TailArgs};

/// How long each minted token lives; tail mints a new one when the relay ends the stream.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why one connection ended.
enum Ended {
    /// The token expired: mint a new one and resume at once.
    TokenExpired,
    /// The connection dropped, the relay went away or was busy: resume after a pause.
    Disconnected(String),
}

/// The relay's refusal of a stream: its status and JSON error, for a person to read.
struct Refusal {
    status: reqwest::StatusCode,
    /// The relay's error code (`bad_signature`, `token_revoked` …), if the answer was its JSON.
    code: Option<String>,
    /// The relay's message, or the body as it came.
    message: String,
}

impl Refusal {
    async fn read(response: reqwest::Response) -> Refusal {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let answer: Option<Value> = serde_json::from_str(&body).ok();
        let field = |name: &str| Some(answer.as_ref()?[name].as_str()?.to_owned());
        Refusal {
            status,
            code: field("error"),
            message: field("message").unwrap_or(body),
        }
    }

    /// Whether trying again later may work: the relay is busy or failing, or the freshly
    /// minted token counts as expired (the relay's clock is ahead).
    fn is_passing(&self) -> bool {
        self.status.is_server_error()
            || self.status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || self.code.as_deref() == Some("token_expired")
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code.as_deref().unwrap_or("no code");
        write!(f, "{} ({code}): {}", self.status, self.message)
    }
}

/// Runs until interrupted, resuming from the last id after every disconnect.
pub async fn tail(args: TailArgs) -> Result<(), Error> {
    let keys = args::keys(&args.secret)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| Error::setup(format!("cannot make an HTTP client: {error}")))?;
    let relay = Relay {
        client,
        base: args.url.trim_end_matches('/').to_owned(),
    };
    if let Some(room) = args.room.iter().find(|room| !pgrelay::valid_room(room)) {
        return Err(Error::setup(format!(
            "--room {room:?} is not a room: a room is `#` and a name, such as '#general'"
        )));
    }
    let rooms: Vec<&str> = args.room.iter().map(String::as_str).collect();
    let mut last_id = args.since_id;
    loop {
        let token = keys.mint_with_rooms(&args.sub, TOKEN_TTL, &[], &rooms);
        match relay.follow(&token, &mut last_id).await? {
            Ended::TokenExpired => {}
            Ended::Disconnected(reason) => {
                eprintln!("pgrelay tail: {reason}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The relay tail reads from.
struct Relay {
    client: reqwest::Client,
    /// The base URL, without a trailing slash.
    base: String,
}

/// How often tail asks again for a whole message the relay is too busy to read right now.
const BUSY_RETRIES: u32 = 10;

impl Relay {
    /// Follows one connection. A refused or revoked token ends tail with the relay's reason;
    /// an expired one (a clock far ahead of the relay's, say) is `TokenExpired`; transport
    /// trouble and a busy relay (429, 5xx) are `Disconnected`.
    async fn follow(&self, token: &str, last_id: &mut Option<i64>) -> Result<Ended, Error> {
        let mut request = self
            .client
            .get(format!("{}/v1/stream", self.base))
            .bearer_auth(token);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Ok(Ended::Disconnected(error.to_string())),
        };
        if !response.status().is_success() {
            let refusal = Refusal::read(response).await;
            if refusal.is_passing() {
                return Ok(Ended::Disconnected(format!("the relay answered {refusal}")));
            }
            return Err(Error::setup(format!(
                "the relay refused the token: {refusal}"
            )));
        }
        let mut parser = SseParser::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => return Ok(Ended::Disconnected(error.to_string())),
            };
            for item in parser.feed(&chunk) {
                let SseItem::Event(event) = item else {
                    continue;
                };
                let id = event.id.as_deref().and_then(|id| id.parse().ok());
                let opening = event.is_opening();
                let Some(data) = event.data.filter(|_| !opening) else {
                    *last_id = id.or(*last_id);
                    continue;
                };
                match event.event.as_deref() {
                    Some("token_expired") => return Ok(Ended::TokenExpired),
                    Some("revoked") => {
                        return Err(Error::setup(format!(
                            "the relay revoked the token ({data}); mint one after the \
                             revocation, or ask whoever revoked it"
                        )))
                    }
                    Some("reset") => eprintln!("pgrelay tail: reset {data}"),
                    // Changes of the stream's access are not messages: stdout stays messages.
                    Some("rooms") => eprintln!("pgrelay tail: rooms {data}"),
                    Some("oversized") => match id {
                        Some(id) => println!("{}", self.whole(token, id, data).await),
                        None => println!("{data}"),
                    },
                    _ => println!("{data}"),
                }
                // Only once the event is printed: a restart resumes with what was not.
                *last_id = id.or(*last_id);
            }
        }
        Ok(Ended::Disconnected("the stream ended".into()))
    }

    /// Message `id` whole (`GET /v1/messages/{id}`), asking again while the relay is too busy;
    /// the stand-in itself, with a warning on stderr, when it cannot be read.
    async fn whole(&self, token: &str, id: i64, stand_in: String) -> String {
        let url = format!("{}/v1/messages/{id}", self.base);
        let mut attempt = 0;
        let failure = loop {
            let response = match self.client.get(&url).bearer_auth(token).send().await {
                Ok(response) => response,
                Err(error) => break error.to_string(),
            };
            let status = response.status();
            if status.is_success() {
                match response.text().await {
                    Ok(message) => return message,
                    Err(error) => break error.to_string(),
                }
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
            let body = response.text().await.unwrap_or_default();
            match wait {
                Some(seconds) if attempt < BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 30))).await;
                }
                _ => break format!("the relay answered {status}: {body}"),
            }
        };
        eprintln!("pgrelay tail: message {id} is too large for the stream and could not be read whole ({failure}); printing its stand-in");
        stand_in
    }
}
