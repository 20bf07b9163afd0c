//! The `pgrelay` binary: token, migrate, tail and demo, run as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");

/// `pgrelay token` prints a token the relay's keys verify, with the requested scope.
#[test]
fn token_command_mints_verifiable_tokens() {
    let output = Command::new(PGRELAY)
        .args([
            "token", "--sub", "alice", "--ttl", "10m", "--scope", "publish",
        ])
        .env("PGRELAY_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let keys = pgrelay::auth::Keys::from_secret_list(SECRET).unwrap();
    let claims = keys
        .verify(token.trim(), pgrelay::auth::now_unix())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert!(claims.has_scope("publish"));
    assert!(claims.exp <= pgrelay::auth::now_unix() + 600);
}

/// `pgrelay migrate` applies the schema once and reports it; bad input is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_command() {
    let db = fresh_database().await;
    let output = Command::new(PGRELAY)
        .args(["migrate"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 migration(s) applied"),
        "{output:?}"
    );

    let output = Command::new(PGRELAY)
        .args(["migrate", "--channel", "no spaces allowed"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--channel"));
}

/// `pgrelay tail` prints each message's data as one JSON line as soon as psql inserts it, the
/// messages of the rooms named with `--room` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_inserted_rows_as_json_lines() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let mut tail = Command::new(PGRELAY)
        .args([
            "tail",
            "--sub",
            "alice",
            "--since-id",
            "0",
            "--room",
            "#general",
            "--url",
            &relay.base,
        ])
        .env("PGRELAY_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    let client = connect(&db).await;
    client
        .batch_execute(r#"INSERT INTO pgrelay.messages (participants, payload) VALUES ('{alice}', '{"text":"hi"}')"#)
        .await
        .unwrap();
    insert(&client, &["bob"], json!({"text": "not for alice"})).await;
    insert(&client, &["#general"], json!({"text": "to the room"})).await;
    insert(
        &client,
        &["#elsewhere"],
        json!({"text": "not alice's room"}),
    )
    .await;
    insert(&client, &["alice", "bob"], json!({"text": "second"})).await;
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .unwrap()
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(&line).unwrap();
        payloads.push(data["payload"]["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(payloads, ["hi", "to the room", "second"]);
    tail.kill().unwrap();
    tail.wait().unwrap();
}

/// `pgrelay tail` prints a message too large for the stream (its `oversized` stand-in) whole,
/// read with `GET /v1/messages/{id}`, in its place between its neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_oversized_messages_whole() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    insert(&client, &["alice"], json!({"n": 1})).await;
    crate::oversized::insert_blob(&client, &["alice"], 1_500_000).await;
    insert(&client, &["alice"], json!({"n": 3})).await;
    let ids = ids_for(&client, "alice").await;
    let mut tail = Command::new(PGRELAY)
        .args([
            "tail",
            "--sub",
            "alice",
            "--since-id",
            "0",
            "--url",
            &relay.base,
        ])
        .env("PGRELAY_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(3)
            .map(|line| serde_json::from_str::<serde_json::Value>(&line.unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(PATIENCE, lines)
        .await
        .unwrap()
        .unwrap();
    tail.kill().unwrap();
    tail.wait().unwrap();
    let printed: Vec<i64> = lines
        .iter()
        .map(|data| data["id"].as_i64().unwrap())
        .collect();
    assert_eq!(printed, ids);
    assert_eq!(lines[0]["payload"], json!({"n": 1}));
    let blob = lines[1]["payload"]["blob"].as_str().unwrap();
    assert_eq!(blob.len(), 1_500_000, "the whole message, not the stand-in");
    assert_eq!(lines[2]["payload"], json!({"n": 3}));
}

/// `pgrelay demo` starts its own PostgreSQL, serves, prints working commands, and on SIGTERM
/// stops the cluster and removes its folder.
#[test]
fn demo_runs_and_cleans_up() {
    let scratch = std::env::temp_dir().join(format!("pgrelay-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::set_permissions(
        &scratch,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut demo, printed, _) = start_demo(&runtime, |demo| {
        demo.env_remove("DATABASE_URL").env("TMPDIR", &scratch);
    });
    assert!(printed.contains("tail --sub bob"));
    assert!(printed.contains("INSERT INTO pgrelay.messages"));
    assert!(
        std::fs::read_dir(&scratch).unwrap().count() > 0,
        "the cluster lives in TMPDIR"
    );

    pgrelay_cluster::signal(demo.id(), libc::SIGTERM).unwrap();
    let status = demo.wait().unwrap();
    assert!(status.success(), "demo exited with {status}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the cluster folder is removed"
    );
    std::fs::remove_dir(&scratch).unwrap();
}

/// `pgrelay demo` starts alice and bob with a conversation, so each may see the other's
/// presence at once (the default audience needs them to have written to each other); started
/// again on the same database, it writes it no second time.
#[test]
fn demo_starts_alice_and_bob_with_a_conversation_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database_url = runtime.block_on(fresh_database());
    let keys = pgrelay::auth::Keys::from_secret_list(SECRET).unwrap();
    for run in 0..2 {
        let (mut demo, _, base) = start_demo(&runtime, |demo| {
            demo.env("DATABASE_URL", &database_url)
                .env("PGRELAY_SECRET", SECRET);
        });
        for (viewer, other) in [("alice", "bob"), ("bob", "alice")] {
            let token = keys.mint(viewer, Duration::from_secs(60), &[]);
            let status = runtime.block_on(async {
                reqwest::Client::new()
                    .get(format!("{base}/v1/presence?participants={other}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
            assert_eq!(
                status, 200,
                "run {run}: {viewer} may not see {other}'s presence"
            );
        }
        pgrelay_cluster::signal(demo.id(), libc::SIGTERM).unwrap();
        assert!(demo.wait().unwrap().success());
    }
    let shared: i64 = runtime.block_on(async {
        connect(&database_url)
            .await
            .query_one(
                "SELECT count(*) FROM pgrelay.messages WHERE participants @> '{alice,bob}'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(shared, 2, "the conversation is written once");
}

/// Starts `pgrelay demo` on a free port, set up by `configure`, and waits until it has printed
/// its instructions and serves; returns the process, what it printed and its address.
fn start_demo(
    runtime: &tokio::runtime::Runtime,
    configure: impl FnOnce(&mut Command),
) -> (std::process::Child, String, String) {
    let mut command = Command::new(PGRELAY);
    command
        .args(["demo", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    configure(&mut command);
    let mut demo = command.spawn().unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap());
    let mut printed = String::new();
    let started = Instant::now();
    while !printed.contains("Press Ctrl-C") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "demo did not start: {printed}"
        );
        if stdout.read_line(&mut printed).unwrap() == 0 {
            panic!("demo exited early: {printed}");
        }
    }
    let base = printed
        .split_whitespace()
        .find(|word| word.starts_with("http://127.0.0.1:"))
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let ready = runtime.block_on(async {
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
                if response.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    });
    assert!(ready, "demo relay never became ready");
    (demo, printed, base)
}

/// Without PostgreSQL server binaries the demo says what is missing instead of panicking.
#[test]
fn demo_without_postgres_binaries_explains() {
    let empty = std::env::temp_dir().join(format!("pgrelay-no-bin-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let output = Command::new(PGRELAY)
        .args(["demo", "--bind", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env("PGRELAY_PG_BINDIR", &empty)
        .output()
        .unwrap();
    std::fs::remove_dir(&empty).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("initdb"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `pgrelay tail --sub alice` against `url` with `secret`; returns its exit status and
/// stderr once it exits, failing the test if it is still running after [`PATIENCE`].
fn tail_until_it_exits(url: &str, secret: &str) -> (std::process::ExitStatus, String) {
    let mut tail = Command::new(PGRELAY)
        .args(["tail", "--sub", "alice", "--url", url])
        .env("PGRELAY_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tail.try_wait().unwrap().is_none() {
        if started.elapsed() > PATIENCE {
            tail.kill().unwrap();
            let output = tail.wait_with_output().unwrap();
            panic!(
                "tail kept running: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = tail.wait_with_output().unwrap();
    (output.status, String::from_utf8(output.stderr).unwrap())
}

/// A stub relay answering every request with `answer` (a whole HTTP response), for what a
/// relay cannot be made to say here; returns its base URL.
async fn stub_relay(answer: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    base
}

/// `pgrelay tail` with a secret the relay does not know prints the relay's reason and exits
/// non-zero, instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_a_refused_token_says_why_and_exits() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let base = relay.base.clone();
    let (status, stderr) =
        tokio::task::spawn_blocking(move || tail_until_it_exits(&base, "not-the-relay-secret"))
            .await
            .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("bad_signature"), "{stderr}");
}

/// `pgrelay tail` whose stream is revoked (`event: revoked`), or whose token is answered 401
/// `token_revoked`, prints the reason and exits non-zero: minting another token with the same
/// secret is no answer to a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_stops_on_a_revocation() {
    let revoked_stream = stub_relay(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
         event: position\nid: 3\ndata: {\"position\":3}\n\n\
         event: revoked\ndata: {\"reason\":\"token_revoked\"}\n\n",
    )
    .await;
    let revoked_answer = stub_relay(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 59\r\n\
         connection: close\r\n\r\n{\"error\":\"token_revoked\",\"message\":\"the token was revoked\"}",
    )
    .await;
    for base in [revoked_stream, revoked_answer] {
        let (status, stderr) =
            tokio::task::spawn_blocking(move || tail_until_it_exits(&base, SECRET))
                .await
                .unwrap();
        assert!(!status.success());
        assert!(stderr.contains("token_revoked"), "{stderr}");
    }
}

/// `pgrelay tail` keeps stdout for messages: a change of the stream's rooms goes to stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reports_room_changes_on_stderr() {
    let db = fresh_database().await;
    let relay = Relay::start(&db).await;
    let client = connect(&db).await;
    client
        .batch_execute(
            "CREATE TABLE members (member text, room text);
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE AS $$
                 SELECT coalesce(array_agg(room), '{}') FROM public.members
                  WHERE member = participant $$;",
        )
        .await
        .unwrap();
    let mut tail = Command::new(PGRELAY)
        .args(["tail", "--sub", "alice", "--url", &relay.base])
        .env("PGRELAY_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let stderr = tail.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Once a message comes through, the stream is open.
    let mut open = false;
    for _ in 0..100 {
        insert(&client, &["alice"], json!({"n": 0})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if lines.try_recv().is_ok() {
            open = true;
            break;
        }
    }
    assert!(open, "tail never printed a message");
    client
        .batch_execute(
            "INSERT INTO members VALUES ('alice', '#x'); SELECT pgrelay.rooms_changed('alice');
             INSERT INTO pgrelay.messages (participants, payload) VALUES ('{#x}', '{\"n\": 1}');",
        )
        .await
        .unwrap();
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .unwrap()
            .unwrap();
        let data: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(
            data.get("added").is_none(),
            "a rooms change on stdout: {line}"
        );
        if data["payload"]["n"] == 1 {
            break;
        }
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
    let errors = std::io::read_to_string(stderr).unwrap();
    assert!(
        errors.contains(r##"pgrelay tail: rooms {"added":["#x"],"removed":[]}"##),
        "{errors}"
    );
}

/// `serve` and `migrate` name what is wrong with the database and what to check: where and as
/// whom they tried, and the cause (nothing listening, an unknown login, no such database, no
/// schema yet), instead of a bare "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_name_their_cause() {
    let template = server_url_template();
    let closed = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    };
    let cases = [
        (closed.clone(), "127.0.0.1", "is PostgreSQL running there"),
        (
            {
                let url = template.replace("{db}", "postgres");
                let joint = if url.contains('?') { '&' } else { '?' };
                format!("{url}{joint}user=nobody_here")
            },
            "as nobody_here",
            "check the user and password",
        ),
        (
            template.replace("{db}", "no_such_database"),
            "no_such_database",
            "create that database",
        ),
    ];
    for (url, names, hint) in cases {
        for command in ["migrate", "serve"] {
            let output = tokio::task::spawn_blocking({
                let url = url.clone();
                move || {
                    Command::new(PGRELAY)
                        .args([command, "--database-url", &url])
                        .env("PGRELAY_SECRET", SECRET)
                        .env("PGRELAY_BIND", "127.0.0.1:0")
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} {url}");
            assert!(
                stderr.contains("cannot use PostgreSQL at"),
                "{command}: {stderr}"
            );
            assert!(stderr.contains(names), "{command}: {stderr}");
            assert!(stderr.contains(hint), "{command}: {stderr}");
        }
    }
    // A database without the schema: serve says how to make it.
    let output = Command::new(PGRELAY)
        .args(["serve", "--bind", "127.0.0.1:0", "--database-url"])
        .arg(template.replace("{db}", "postgres"))
        .env("PGRELAY_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `pgrelay migrate`"), "{stderr}");
}

/// `serve` refuses an HS256 secret too short to be safe (each of a rotation list), and says how
/// to make one, without printing it.
#[test]
fn serve_refuses_a_short_secret() {
    for secrets in ["short-secret", &format!("{SECRET},short-secret")] {
        let output = Command::new(PGRELAY)
            .args(["serve", "--database-url", "postgres://127.0.0.1:1/x"])
            .env("PGRELAY_SECRET", secrets)
            .env("PGRELAY_BIND", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("too short"), "{stderr}");
        assert!(stderr.contains("openssl rand"), "{stderr}");
        assert!(!stderr.contains("short-secret"), "{stderr}");
    }
}

/// `--worker-threads` sets how many threads run the relay's tasks (tokio names them
/// `tokio-rt-worker`), and 0 is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_runtime_size() {
    let database_url = fresh_database().await;
    for threads in [1, 3] {
        let relay = RelayProcess::start(
            &database_url,
            &["--worker-threads", &threads.to_string()],
            None,
        )
        .await;
        let workers = std::fs::read_dir(format!("/proc/{}/task", relay.child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.trim_end() == "tokio-rt-worker")
            .count();
        assert_eq!(workers, threads, "--worker-threads {threads}");
    }
    let output = Command::new(PGRELAY)
        .args(["serve", "--worker-threads", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}
