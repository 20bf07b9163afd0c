//! The live server against its OpenAPI document (docs/openapi.json), checked by schemathesis:
//! a well-known API fuzzer that nobody here wrote, with all of its checks.
//!
//! Needs `schemathesis` (PyPI): on PATH, or at `PGRELAY_SCHEMATHESIS`. `.ci/run` installs it in a
//! virtual environment and runs this test; plain `cargo test` reports it as ignored.
//! Every request carries a fresh two-second token (tests/openapi/hooks.py), so the streams the
//! fuzzer opens end by themselves and their events are checked too.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The document the relay serves is the one in the repository.
#[tokio::test]
async fn the_relay_serves_the_document_in_the_repository() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let served = reqwest::get(format!("{}/v1/openapi.json", relay.base))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served: serde_json::Value = served.json().await.unwrap();
    let in_repository: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(served, in_repository);
    assert_eq!(served["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis (PyPI): run .ci/run, or cargo test -- --include-ignored once installed"]
async fn schemathesis_finds_nothing() {
    let schemathesis =
        std::env::var("PGRELAY_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_owned());
    let db = fresh_database().await;
    // Rate limits off: the fuzzer sends hundreds of requests as one sender.
    let relay = RelayProcess::start(
        &db,
        &[
            "--publish-rate",
            "1000000",
            "--publish-burst",
            "1000000",
            "--signal-rate",
            "1000000",
            "--signal-burst",
            "1000000",
        ],
        None,
    )
    .await;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi");
    let refused_outside_bmp: Vec<String> = pgrelay::REFUSED_IN_NAMES
        .iter()
        .filter(|&&(first, _)| first > '\u{FFFF}')
        .map(|&(first, last)| format!("{:x}-{:x}", first as u32, last as u32))
        .collect();
    let run = tokio::task::spawn_blocking({
        let url = format!("{}/v1/openapi.json", relay.base);
        move || {
            Command::new(&schemathesis)
                .current_dir(&folder)
                .env("SCHEMATHESIS_HOOKS", "hooks")
                .env("PGRELAY_SECRET", SECRET)
                .env("PGRELAY_REFUSED_OUTSIDE_BMP", refused_outside_bmp.join(","))
                .args(["run", &url, "--checks", "all", "--max-examples", "50"])
                // One worker: hypothesis' source introspection is not thread-safe.
                .args(["--request-timeout", "5", "--workers", "1", "--no-color"])
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap_or_else(|error| panic!("cannot run schemathesis: {error}; .ci/run installs it"));
    let report = String::from_utf8_lossy(&run.stdout);
    let summary = report
        .lines()
        .rev()
        .find(|line| line.starts_with('='))
        .unwrap_or("");
    eprintln!("schemathesis: {summary}");
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every name pattern in the document refuses exactly the characters the relay refuses (in the
/// Basic Multilingual Plane, all a JSON Schema pattern can list portably), so a fuzzer or a
/// generated client that trusts the document never sends a name the relay answers 422.
#[test]
fn name_patterns_refuse_what_the_relay_refuses() {
    let refused: String = pgrelay::REFUSED_IN_NAMES
        .iter()
        .filter(|&&(first, _)| first <= '\u{FFFF}')
        .map(|&(first, last)| {
            if first == last {
                format!("\\u{:04x}", first as u32)
            } else {
                format!("\\u{:04x}-\\u{:04x}", first as u32, last as u32)
            }
        })
        .collect();
    let document = include_str!("../../docs/openapi.json");
    let classes: Vec<&str> = document
        .match_indices("[^")
        .map(|(at, _)| &document[at..at + document[at..].find(']').unwrap() + 1])
        .filter(|class| class.contains("\\\\u0000-"))
        .collect();
    assert!(classes.len() >= 4, "{classes:?}");
    let single = format!("[^{}]", refused.replace('\\', "\\\\"));
    let listed = format!("[^,{}]", refused.replace('\\', "\\\\"));
    for class in classes {
        assert!(
            class == single || class == listed,
            "{class}\nshould be\n{listed}"
        );
    }
}
