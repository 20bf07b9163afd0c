//! `/metrics` is enough for traffic analysis, so a deployment can keep it off the public
//! address (`--metrics-bind`) or behind a bearer credential (`--metrics-token`), and the
//! credential never reaches a log.

use crate::common::*;

/// Checks a scrape got the Prometheus text.
async fn assert_scraped(response: reqwest::Response) {
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("pgrelay_subscribers "), "{text}");
}

/// With `--metrics-bind`, `/metrics` answers there and is a 404 JSON on the public address;
/// the metrics address serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_metrics_bind_keeps_metrics_off_the_public_address() {
    let db = fresh_database().await;
    let metrics_base = format!("http://127.0.0.1:{}", free_port());
    let metrics_bind = address(&metrics_base).to_owned();
    let relay = RelayProcess::start(&db, &["--metrics-bind", &metrics_bind], None).await;

    let public = reqwest::get(format!("{}/metrics", relay.base))
        .await
        .unwrap();
    assert_json_error(public, 404, "not_found", "public /metrics").await;
    let scraped = reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap();
    assert_scraped(scraped).await;
    for path in ["/v1/stream", "/healthz", "/"] {
        let other = reqwest::get(format!("{metrics_base}{path}")).await.unwrap();
        assert_json_error(other, 404, "not_found", path).await;
    }
    let healthy = reqwest::get(format!("{}/healthz", relay.base))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
}

/// With `PGRELAY_METRICS_TOKEN`, `/metrics` wants `Authorization: Bearer <token>` (401 JSON
/// without it or with another), and neither the token nor a wrong one is logged, even at
/// `trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_is_required_and_never_logged() {
    let db = fresh_database().await;
    let token = "scrape-credential-Qx81vLz";
    let wrong = "wrong-credential-Mn27cRt";
    let log = std::env::temp_dir().join(format!("pgrelay-metrics-{}.log", std::process::id()));
    let setting = format!("PGRELAY_METRICS_TOKEN={token}");
    let wrapper = ["env", "PGRELAY_LOG=trace", setting.as_str()];
    let relay = RelayProcess::start_under(&wrapper, &db, &[], Some(&log)).await;
    let url = format!("{}/metrics", relay.base);
    let http = reqwest::Client::new();

    let bare = http.get(&url).send().await.unwrap();
    assert_json_error(bare, 401, "missing_token", "no credential").await;
    let refused = http.get(&url).bearer_auth(wrong).send().await.unwrap();
    assert_json_error(refused, 401, "invalid_token", "a wrong credential").await;
    let in_query = http
        .get(format!("{url}?token={token}"))
        .send()
        .await
        .unwrap();
    assert_json_error(
        in_query,
        401,
        "missing_token",
        "the credential in the query",
    )
    .await;
    let scraped = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_scraped(scraped).await;

    relay.signal(libc::SIGTERM);
    drop(relay);
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!logged.trim().is_empty(), "nothing was logged at trace");
    for needle in [token, wrong] {
        assert!(!logged.contains(needle), "the log holds {needle:?}");
    }
}

/// The alert rules docs/operations.md offers name only metrics the relay exports (a renamed
/// metric would leave an alert that never fires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_alerts_name_exported_metrics() {
    let operations =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .unwrap();
    let alerts = operations
        .split("## Alerts")
        .nth(1)
        .and_then(|section| section.split("```yaml").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("docs/operations.md has an Alerts section with a yaml block");
    let named: std::collections::BTreeSet<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("pgrelay_"))
        .collect();
    assert!(named.len() >= 5, "{named:?}");

    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let exported = reqwest::get(format!("{}/metrics", relay.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in named {
        assert!(
            exported.contains(&format!("\n{name} ")) || exported.contains(&format!("\n{name}{{")),
            "the alert rules name {name}, which /metrics does not export"
        );
    }
}
