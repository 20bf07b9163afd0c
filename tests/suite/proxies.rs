//! The relay behind what production puts around it: PgBouncer in transaction mode for
//! queries, and nginx in front of the streams.

use std::time::Duration;

use crate::common::external::{nginx, nginx_http2, pgbouncer, require_binary, ScratchDir};
use crate::common::*;
use serde_json::json;

/// With DATABASE_URL through PgBouncer (transaction mode) and LISTEN_DATABASE_URL direct,
/// streaming, catch-up, listing and publishing all work.
#[ignore = "needs PgBouncer: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_through_pgbouncer_transaction_mode() {
    let direct = fresh_database().await;
    let bouncer = pgbouncer(port_of(&direct)).await;
    let pooled = via_port(&direct, bouncer.port);
    let relay = RelayProcess::start(&pooled, &["--listen-database-url", &direct], None).await;
    let writer = connect(&direct).await;
    for n in 0..3 {
        insert(&writer, &["alice", "bob"], json!({"n": n})).await;
    }

    // Catch-up (pool queries through PgBouncer), then live delivery.
    let mut bob = relay.subscribe("bob", "since_id=0", None).await;
    bob.opening_position().await;
    for n in 0..3 {
        assert_eq!(bob.next_message().await.2["payload"]["n"], n);
    }
    let http = reqwest::Client::new();
    for round in 0..20 {
        let response = http
            .post(format!("{}/v1/messages", relay.base))
            .bearer_auth(relay.token("alice", &["publish"]))
            .json(&json!({"participants": ["bob"], "payload": {"round": round}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let (_, _, data) = bob.next_message().await;
        assert_eq!(data["payload"]["round"], round);
    }
    let bob = relay.token("bob", &[]);
    let page = history_page(&relay.base, &bob, "since_id=0&limit=1000").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 23);
    let ready = reqwest::get(format!("{}/readyz", relay.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// LISTEN through a transaction-mode pooler "succeeds" and never hears anything: the heartbeat
/// catches it, so the relay never reports ready.
#[ignore = "needs PgBouncer: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_through_pgbouncer_is_never_ready() {
    let direct = fresh_database().await;
    let bouncer = pgbouncer(port_of(&direct)).await;
    let pooled = via_port(&direct, bouncer.port);
    let log =
        std::env::temp_dir().join(format!("pgrelay-bouncer-listen-{}.log", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--heartbeat",
            "300ms",
        ])
        .env("DATABASE_URL", &pooled)
        .env("PGRELAY_SECRET", SECRET)
        .env_remove("LISTEN_DATABASE_URL")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            answers.push(response.status().as_u16());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!answers.is_empty(), "the relay never answered");
    assert!(answers.iter().all(|&status| status == 503), "{answers:?}");
    assert!(logged.contains("transaction-mode pooler"), "{logged}");
}

/// Streams pass through nginx configured with deploy/nginx-location.conf, unbuffered: each
/// event arrives while the connection stays open; `/metrics` is not served through it.
#[ignore = "needs nginx: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_nginx_unbuffered() {
    let db = fresh_database().await;
    let relay = RelayProcess::start(&db, &[], None).await;
    let proxy = nginx(relay.base.rsplit(':').next().unwrap().parse().unwrap()).await;
    let via_nginx = format!("http://127.0.0.1:{}", proxy.port);
    let token = relay.token("alice", &[]);
    let mut alice = Subscriber::open(&via_nginx, &token, "", None).await;
    alice.opening_position().await;
    let writer = connect(&db).await;
    for n in 0..5 {
        insert(&writer, &["alice"], json!({"n": n})).await;
        let (_, _, data) = tokio::time::timeout(Duration::from_secs(2), alice.next_message())
            .await
            .expect("nginx buffered the event");
        assert_eq!(data["payload"]["n"], n);
    }
    let health = reqwest::get(format!("{via_nginx}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let history = reqwest::get(format!("{via_nginx}/v1/messages?token={token}"))
        .await
        .unwrap();
    assert_eq!(history.status(), 200);
    // Traffic figures stay off the public proxy.
    let metrics = reqwest::get(format!("{via_nginx}/metrics")).await.unwrap();
    assert_json_error(metrics, 404, "not_found", "/metrics through nginx").await;
    drop(alice);
    // Tokens travel in query strings (EventSource cannot send headers): nginx's default
    // access log would record them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for log in ["access.log", "error.log"] {
        let text = proxy.file(log);
        assert!(
            !text.contains("token="),
            "nginx's {log} holds a token: {text}"
        );
        assert!(
            !text.contains(&token),
            "nginx's {log} holds a token: {text}"
        );
    }
}

/// Through nginx with TLS and HTTP/2 (deploy/nginx-http2-server.conf), more streams than a
/// browser's six HTTP/1.1 connections per origin share one connection, and each receives its
/// events as they happen, unbuffered.
#[ignore = "needs nginx, openssl and curl: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_one_http2_connection_through_nginx() {
    /// More than HTTP/1.1's six connections per origin.
    const STREAMS: u64 = 8;
    let db = fresh_database().await;
    let relay = RelayProcess::start(&db, &[], None).await;
    let proxy = nginx_http2(relay.base.rsplit(':').next().unwrap().parse().unwrap()).await;
    let url = format!(
        "https://127.0.0.1:{}/v1/stream?token={}",
        proxy.port,
        relay.token("alice", &[])
    );
    let dir = ScratchDir::new("http2-streams");
    let mut curl = std::process::Command::new(require_binary("curl", "curl"));
    // One curl, as one browser: its parallel transfers multiplex over one connection when the
    // server speaks HTTP/2. Each transfer ends at --max-time and then writes its HTTP version
    // and how many connections it opened.
    curl.args([
        "--http2",
        "--insecure",
        "--silent",
        "--no-buffer",
        "--parallel",
    ])
    .args(["--parallel-max", "16", "--max-time", "8"])
    .args(["--write-out", "%{http_version} %{num_connects}\\n"]);
    for n in 0..STREAMS {
        curl.arg("-o")
            .arg(dir.0.join(format!("stream-{n}")))
            .arg(&url);
    }
    let curl = curl
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&relay.base, "pgrelay_subscribers").await < STREAMS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the streams never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert(
        &connect(&db).await,
        &["alice"],
        json!({"text": "through-http2"}),
    )
    .await;
    // Buffered, the event would reach curl only when the transfers end: it must arrive while
    // they are still open.
    let received = |n: u64| {
        std::fs::read_to_string(dir.0.join(format!("stream-{n}")))
            .unwrap_or_default()
            .contains("through-http2")
    };
    let relay_base = relay.base.clone();
    while !(0..STREAMS).all(received) {
        assert_eq!(
            metric(&relay_base, "pgrelay_subscribers").await,
            STREAMS,
            "the streams ended before every one received the event: nginx buffered it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let output = curl.wait_with_output().unwrap();
    let transfers = String::from_utf8(output.stdout).unwrap();
    let transfers: Vec<(&str, u64)> = transfers
        .lines()
        .map(|line| {
            let (version, connects) = line.split_once(' ').unwrap();
            (version, connects.parse().unwrap())
        })
        .collect();
    assert_eq!(transfers.len() as u64, STREAMS, "{transfers:?}");
    assert!(
        transfers.iter().all(|(version, _)| *version == "2"),
        "not every stream spoke HTTP/2: {transfers:?}"
    );
    assert_eq!(
        transfers.iter().map(|(_, connects)| connects).sum::<u64>(),
        1,
        "{STREAMS} streams took more than one connection: {transfers:?}"
    );
}
