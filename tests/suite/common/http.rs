//! HTTP helpers the tests share: reading `/metrics`, history pages, JSON error answers.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// A counter or gauge from the relay's `/metrics`, or `None` when the relay does not answer
/// or does not export it.
pub async fn try_metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A counter or gauge from the relay's `/metrics`, which must export it.
pub async fn metric(base: &str, name: &str) -> u64 {
    try_metric(base, name)
        .await
        .unwrap_or_else(|| panic!("{name} is not exported")) as u64
}

/// Waits until the relay's counter or gauge `name` satisfies `reached`, checking every 20 ms;
/// fails the test, saying `what` did not happen, after `super::PATIENCE`.
pub async fn wait_for_metric(base: &str, name: &str, reached: impl Fn(u64) -> bool, what: &str) {
    let deadline = Instant::now() + super::PATIENCE;
    while !reached(metric(base, name).await) {
        assert!(
            Instant::now() < deadline,
            "{what} within {:?}",
            super::PATIENCE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/messages?{query}` as `token`.
pub async fn history(base: &str, token: &str, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/messages?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The JSON page of a `GET /v1/messages?{query}` that must succeed.
pub async fn history_page(base: &str, token: &str, query: &str) -> Value {
    history(base, token, query)
        .await
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The ids of the messages on the history page `GET /v1/messages?{query}` answers `token`.
pub async fn history_ids(base: &str, token: &str, query: &str) -> Vec<i64> {
    history_page(base, token, query).await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["id"].as_i64().unwrap())
        .collect()
}

/// `POST {route}` (`/v1/messages`, `/v1/signals`) as `token` with a JSON `body`.
pub async fn post(base: &str, route: &str, token: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{route}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `POST {route}` as `token` with a JSON text `body` sent as is (for JSON a `Value` cannot
/// hold: lone surrogates, numbers past `f64`, depths past serde_json's limit).
pub async fn post_text(base: &str, route: &str, token: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{route}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// An answer's status and JSON body.
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Checks the answer has `status` and a JSON body `{"error": code, "message": <text>}`, and
/// returns the body; `context` names the case in a failure.
pub async fn assert_json_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
    context: &str,
) -> Value {
    assert_eq!(response.status().as_u16(), status, "{context}");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{context}"
    );
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{context}: body is not JSON ({error}): {text:?}"));
    assert_eq!(body["error"], code, "{context}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{context}: {body}"
    );
    body
}

/// `host:port` of a base URL.
pub fn address(base: &str) -> &str {
    base.strip_prefix("http://").unwrap()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status `/readyz` answers (0 when the request itself fails).
pub async fn readyz(http: &reqwest::Client, base: &str) -> u16 {
    match http.get(format!("{base}/readyz")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/readyz` every 5 ms until it answers `status`; when it did, within `within`.
pub async fn wait_readyz(base: &str, status: u16, within: Duration) -> Option<Instant> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if readyz(&http, base).await == status {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}
