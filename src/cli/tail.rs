//! `pgrelay tail`: a participant's stream as JSON lines, for shells and psql-driven testing.
//!
//! Each message event's `data` object goes to stdout on its own line (so `| jq .payload`
//! works); control events and connection trouble go to stderr. Like the browser client, tail
//! reconnects with `Last-Event-ID` and mints a fresh token when the old one expires, so it
//! never misses or repeats a message.

use std::time::Duration;

use futures::StreamExt;

use pgrelay::sse::{SseItem, SseParser};
use pgrelay::Error;

use super::args::{self, TailArgs};

/// How long each minted token lives; tail mints a new one when the relay ends the stream.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why one connection ended.
enum Ended {
    /// The token expired: mint a new one and resume at once.
    TokenExpired,
    /// The connection dropped or the relay went away: resume after a pause.
    Disconnected(String),
}

/// Runs until interrupted, resuming from the last id after every disconnect.
pub async fn tail(args: TailArgs) -> Result<(), Error> {
    let keys = args::keys(&args.secret)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| Error::setup(format!("cannot make an HTTP client: {error}")))?;
    let url = format!("{}/v1/stream", args.url.trim_end_matches('/'));
    let mut last_id = args.since_id;
    loop {
        let token = keys.mint(&args.sub, TOKEN_TTL, &[]);
        match follow(&client, &url, &token, &mut last_id).await? {
            Ended::TokenExpired => {}
            Ended::Disconnected(reason) => {
                eprintln!("pgrelay tail: {reason}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Follows one connection. Errors the relay answers with (a bad secret, say) end tail;
/// transport trouble is returned as `Disconnected`.
async fn follow(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    last_id: &mut Option<i64>,
) -> Result<Ended, Error> {
    let mut request = client.get(url).bearer_auth(token);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Ok(Ended::Disconnected(error.to_string())),
    };
    let status = response.status();
    if status.is_server_error() {
        return Ok(Ended::Disconnected(format!("the relay answered {status}")));
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(Error::setup(format!("the relay answered {status}: {body}")));
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
            if let Some(id) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                *last_id = Some(id);
            }
            if event.is_opening() {
                continue;
            }
            let Some(data) = event.data else { continue };
            match event.event.as_deref() {
                Some("token_expired") => return Ok(Ended::TokenExpired),
                Some("reset") => eprintln!("pgrelay tail: reset {data}"),
                _ => println!("{data}"),
            }
        }
    }
    Ok(Ended::Disconnected("the stream ended".into()))
}
