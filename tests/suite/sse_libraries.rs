//! Every common SSE client library reads the relay exactly: each message once, in order,
//! resuming after a drop before the first message and after one in the middle, and no event
//! handed to the application that is not what the relay sent.
//!
//! The libraries run as an application would use them (tests/sse-libraries/client.mjs and
//! client.py) and print what they hand over; this test drives the relay around them. Needs
//! Node.js with npm, and a Python with httpx-sse, sseclient-py and requests-sse at
//! `PGRELAY_SSE_PYTHON` (`.ci/run` makes one); plain `cargo test` reports it as ignored.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The libraries, and which client script runs each.
const LIBRARIES: [(&str, Script); 6] = [
    ("eventsource@5", Script::Node),
    ("eventsource@4", Script::Node),
    ("@microsoft/fetch-event-source", Script::Node),
    ("httpx-sse", Script::Python),
    ("sseclient-py", Script::Python),
    ("requests-sse", Script::Python),
];

#[derive(Clone, Copy)]
enum Script {
    Node,
    Python,
}

/// How long a library may take to reconnect and catch up (some back off for seconds).
const RECONNECT_PATIENCE: Duration = Duration::from_secs(40);

/// What one library did.
struct Outcome {
    library: &'static str,
    /// The message ids it handed over, in order.
    ids: Vec<i64>,
    /// The ids the database holds for the reader.
    expected: Vec<i64>,
    /// Events handed over that carry no message: empty ones (no name or no data), and named
    /// control events (the opening `position`), counted apart.
    empty: usize,
    control: usize,
    /// Whether the five messages written while the relay was down before the first message
    /// arrived.
    resumed_before_first: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js, npm and a Python with the SSE libraries: run .ci/run"]
async fn every_common_sse_library_is_exact() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sse-libraries");
    install_node_libraries(&folder).await;
    let python = PathBuf::from(
        std::env::var("PGRELAY_SSE_PYTHON")
            .expect("PGRELAY_SSE_PYTHON names a Python with the SSE libraries; .ci/run sets it"),
    );
    let mut outcomes = Vec::new();
    for (library, script) in LIBRARIES {
        outcomes.push(run(library, script, &folder, &python).await);
    }
    eprintln!("| library | exact | empty events | control events | resume after an early drop |");
    eprintln!("|---|---|---|---|---|");
    for outcome in &outcomes {
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            outcome.library,
            tick(outcome.ids == outcome.expected),
            outcome.empty,
            outcome.control,
            tick(outcome.resumed_before_first)
        );
    }
    for outcome in &outcomes {
        assert_eq!(
            outcome.ids, outcome.expected,
            "{}: not every message once, in order",
            outcome.library
        );
        assert_eq!(outcome.empty, 0, "{}: empty events", outcome.library);
        assert!(outcome.resumed_before_first, "{}", outcome.library);
    }
}

fn tick(ok: bool) -> &'static str {
    if ok {
        "✔"
    } else {
        "✘"
    }
}

/// `npm ci` in the client folder (pinned by its package-lock.json) when node_modules is missing.
async fn install_node_libraries(folder: &Path) {
    if folder.join("node_modules").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(folder)
        .status()
        .await
        .expect("npm is needed; .ci/run installs it");
    assert!(status.success(), "npm ci failed in {}", folder.display());
}

/// One library through the whole scenario.
async fn run(library: &'static str, script: Script, folder: &Path, python: &Path) -> Outcome {
    let db = fresh_database().await;
    let app = connect(&db).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A short keepalive, so that keepalives flow while the libraries read.
    let flags = ["--keepalive", "1s"];
    let mut relay = Some(RelayProcess::start_on(port, &db, &flags).await);
    let token = relay.as_ref().unwrap().token("reader", &[]);
    let (mut client, mut lines) = start_client(library, script, folder, python, port, &token);

    let mut seen = Seen::default();
    seen.wait(&mut lines, library, |seen| seen.opens >= 1).await;
    // A drop before the first message: the library must resume from the opening position.
    stop(relay.take().unwrap());
    insert_n(&app, 5).await;
    relay = Some(RelayProcess::start_on(port, &db, &flags).await);
    seen.wait(&mut lines, library, |seen| seen.ids.len() >= 5)
        .await;
    let resumed_before_first = seen.ids.len() == 5;
    insert_n(&app, 45).await;
    seen.wait(&mut lines, library, |seen| seen.ids.len() >= 50)
        .await;
    // A drop in the middle.
    stop(relay.take().unwrap());
    insert_n(&app, 5).await;
    let _relay = RelayProcess::start_on(port, &db, &flags).await;
    insert_n(&app, 45).await;
    seen.wait(&mut lines, library, |seen| seen.ids.len() >= 100)
        .await;
    // Room for a duplicate or a stray event to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.drain(&mut lines);
    let _ = client.kill().await;
    Outcome {
        library,
        ids: seen.ids,
        expected: ids_for(&app, "reader").await,
        empty: seen.empty,
        control: seen.control,
        resumed_before_first,
    }
}

fn start_client(
    library: &str,
    script: Script,
    folder: &Path,
    python: &Path,
    port: u16,
    token: &str,
) -> (Child, mpsc::UnboundedReceiver<Value>) {
    let mut command = match script {
        Script::Node => {
            let mut command = Command::new("node");
            command.arg("client.mjs");
            command
        }
        Script::Python => {
            let mut command = Command::new(python);
            command.arg("client.py");
            command
        }
    };
    let mut child = command
        .arg(library)
        .current_dir(folder)
        .env("RELAY_URL", format!("http://127.0.0.1:{port}"))
        .env("TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start the {library} client: {error}"));
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = sender.send(value);
            }
        }
    });
    (child, receiver)
}

/// What a library handed over so far.
#[derive(Default)]
struct Seen {
    opens: usize,
    ids: Vec<i64>,
    empty: usize,
    control: usize,
}

impl Seen {
    fn take(&mut self, line: Value) {
        if line["open"] == true {
            self.opens += 1;
            return;
        }
        let name = line["event"].as_str().unwrap_or("");
        let data = line["data"].as_str().unwrap_or("");
        let message = serde_json::from_str::<Value>(data).ok().and_then(|data| {
            data["id"]
                .as_i64()
                .filter(|_| data.get("payload").is_some())
        });
        match message {
            Some(id) => self.ids.push(id),
            None if name.is_empty() || data.is_empty() => self.empty += 1,
            None => self.control += 1,
        }
    }

    /// Takes lines until `done` holds; panics after [`RECONNECT_PATIENCE`].
    async fn wait(
        &mut self,
        lines: &mut mpsc::UnboundedReceiver<Value>,
        library: &str,
        done: impl Fn(&Seen) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + RECONNECT_PATIENCE;
        while !done(self) {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) => self.take(line),
                Ok(None) => panic!("{library}: the client exited"),
                Err(_) => panic!(
                    "{library}: stuck after {} message(s) and {} connection(s)",
                    self.ids.len(),
                    self.opens
                ),
            }
        }
    }

    fn drain(&mut self, lines: &mut mpsc::UnboundedReceiver<Value>) {
        while let Ok(line) = lines.try_recv() {
            self.take(line);
        }
    }
}

/// Stops a relay as a deploy would (SIGTERM), so its streams end.
fn stop(mut relay: RelayProcess) {
    relay.signal(libc::SIGTERM);
    let _ = relay.child.wait();
}

/// Writes `count` messages for the reader.
async fn insert_n(app: &tokio_postgres::Client, count: usize) {
    for n in 0..count {
        insert(app, &["reader"], json!({"n": n})).await;
    }
}
