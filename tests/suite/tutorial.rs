//! docs/tutorial.md, run as written, so that it stays true.
//!
//! The tutorial's code blocks that carry the word `tutorial` in their info string
//! (```` ```sql tutorial ````) are run in document order, in a scratch folder, against a fresh
//! database without pgrelay's schema: `sql` blocks with `psql -v ON_ERROR_STOP=1 -f` (each
//! statement commits on its own, as when pasted into psql), `sh` blocks with `bash -eu` and the
//! real `pgrelay` binary first on `PATH`. Words after `tutorial` say more:
//!
//! - `background=NAME`: a command a reader leaves running in a terminal of its own (the relay,
//!   a `tail`); started, waited for until it serves, and stopped at the end;
//! - `file=NAME`: a file the reader saves (written to the folder, not run);
//! - `name=NAME`: keep the block's output for a check below;
//! - `expect=NAME`: what the background command NAME prints first, `"…"` matching anything;
//! - `needs=node` or `needs=python`: run only by the ignored tests below, since a machine with
//!   only Rust and PostgreSQL may lack them.
//!
//! The reader's terminal setup (`DATABASE_URL`, `PGRELAY_SECRET`) is the test's own: a fresh
//! database and the test secret. The relay's address `127.0.0.1:8080` becomes a free port.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::common::external::ScratchDir;
use crate::common::{empty_database, free_port, metric, wait_readyz, PATIENCE, SECRET};

/// The relay's address as the tutorial writes it.
const TUTORIAL_RELAY: &str = "127.0.0.1:8080";

/// Plain `cargo test` runs every step that needs only Rust and PostgreSQL: the app's schema,
/// `migrate`, `attach`, membership from the app's table, the relay and two `tail`s. A row the
/// app inserts reaches the room's members and no one else, and membership rows inserted and
/// deleted move rooms on open streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_steps_work() {
    let run = Tutorial::run(&[]).await;
    run.check_streams().await;
}

/// The backend's steps too: the Node and Python token snippets mint tokens the relay accepts,
/// and the Node stand-in backend serves the page and tokens.
#[ignore = "needs node (18+), python3 (3.8+) and curl: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_backend_steps_work() {
    for (program, package) in [("node", "nodejs"), ("python3", "python3"), ("curl", "curl")] {
        crate::common::external::require_binary(program, package);
    }
    let run = Tutorial::run(&["node", "python"]).await;
    run.check_streams().await;
    run.check_backends().await;
}

/// The tutorial's browser page, served by its stand-in backend, in headless Chromium: it
/// lists carol's rooms' history, says `live`, shows a row the app inserts next, and logs no
/// console error (tests/browser/tutorial.mjs).
#[ignore = "needs Chromium, Node.js (18+) and curl: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_page_in_a_real_browser() {
    let chromium = crate::browser::browser_tools().await;
    crate::common::external::require_binary("curl", "curl");
    let run = Tutorial::run(&["node"]).await;
    let history = [
        "#general alice: Hello, general!",
        "#random alice: Anyone in random?",
        "#general alice: Welcome to general, carol!",
        "#random alice: Welcome to random, bob!",
    ];
    let live = "#random bob: Back in random!";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/tutorial.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .env(
            "PAGE_URL",
            format!("http://127.0.0.1:{}/?user=carol", run.app_port),
        )
        .env("CHROMIUM_PATH", &chromium)
        .env("TEXTS", serde_json::to_string(&history).unwrap())
        .env("LIVE_TEXT", live)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = node.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line == "LIVE" {
                crate::common::connect(run.var("DATABASE_URL"))
                    .await
                    .batch_execute(
                        "INSERT INTO app.messages (room_id, author_id, body) \
                         VALUES ('random', 'bob', 'Back in random!')",
                    )
                    .await
                    .unwrap();
                stdin.write_all(b"INSERTED\n").await.unwrap();
            }
            printed.push(line);
        }
        node.wait().await.unwrap()
    })
    .await;
    let mut stderr = String::new();
    if let Some(mut pipe) = node.stderr.take() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), pipe.read_to_string(&mut stderr)).await;
    }
    let printed = printed.join("\n");
    match finished {
        Ok(status) => assert!(status.success(), "{status}:\n{printed}\n{stderr}"),
        Err(_) => panic!("the browser script took over a minute:\n{printed}\n{stderr}"),
    }
}

/// One fenced code block of the tutorial that the test runs.
struct Block {
    /// The block's language (`sql`, `sh`, `js` …).
    lang: String,
    /// The `key=value` words after `tutorial`.
    options: HashMap<String, String>,
    code: String,
    /// Where the block starts in docs/tutorial.md, for failure messages.
    line: usize,
}

impl Block {
    fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }
}

/// The blocks of `markdown` marked `tutorial`, in order.
fn tutorial_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut code = String::new();
        for (_, line) in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            code.push_str(line);
            code.push('\n');
        }
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or_default().to_owned();
        if words.next() != Some("tutorial") {
            continue;
        }
        let options = words
            .map(|word| {
                let (key, value) = word.split_once('=').unwrap_or_else(|| {
                    panic!("docs/tutorial.md:{}: {word:?} is not key=value", at + 1)
                });
                (key.to_owned(), value.to_owned())
            })
            .collect();
        blocks.push(Block {
            lang,
            options,
            code,
            line: at + 1,
        });
    }
    blocks
}

/// Lines a background command printed, collected as they come.
type Lines = Arc<Mutex<Vec<String>>>;

/// A command the reader leaves running; its process group is stopped when dropped.
struct Background {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Drop for Background {
    fn drop(&mut self) {
        // The child leads its own process group (process_group(0)).
        let _ = pgrelay_cluster::signal_group(self.child.id(), libc::SIGTERM);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tutorial as run so far: its folder, environment, background commands and outputs.
struct Tutorial {
    dir: ScratchDir,
    env: Vec<(&'static str, String)>,
    relay: String,
    app_port: u16,
    background: HashMap<String, Background>,
    outputs: HashMap<String, String>,
    /// How many `tail`s were started: the relay's subscriber count to wait for.
    tails: u64,
}

impl Tutorial {
    /// Runs every `tutorial` block, but those that need a program other than what `needs`
    /// names.
    async fn run(needs: &[&str]) -> Tutorial {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let markdown = std::fs::read_to_string(root.join("docs/tutorial.md")).unwrap();
        let blocks = tutorial_blocks(&markdown);
        assert!(blocks.len() > 5, "docs/tutorial.md has no tutorial blocks");

        let relay_port = free_port();
        let app_port = free_port();
        let mut tutorial = Tutorial {
            dir: ScratchDir::new("tutorial"),
            env: vec![
                ("DATABASE_URL", empty_database().await),
                ("PGRELAY_SECRET", SECRET.to_owned()),
                ("APP_PORT", app_port.to_string()),
                ("PATH", search_path()),
            ],
            relay: format!("127.0.0.1:{relay_port}"),
            app_port,
            background: HashMap::new(),
            outputs: HashMap::new(),
            tails: 0,
        };
        for block in &blocks {
            if block
                .option("needs")
                .is_some_and(|need| !needs.contains(&need))
            {
                continue;
            }
            tutorial.step(block).await;
        }
        tutorial
    }

    /// Runs one block as the reader would.
    async fn step(&mut self, block: &Block) {
        let code = block.code.replace(TUTORIAL_RELAY, &self.relay);
        let place = format!("docs/tutorial.md:{}", block.line);
        if let Some(file) = block.option("file") {
            std::fs::write(self.dir.0.join(file), code).unwrap();
            return;
        }
        if let Some(name) = block.option("expect") {
            let expected: Value =
                serde_json::from_str(&code).unwrap_or_else(|e| panic!("{place}: not JSON: {e}"));
            let printed = self.lines(name, |lines| !lines.is_empty()).await;
            assert!(
                printed
                    .first()
                    .is_some_and(|first| matches(&expected, first)),
                "{place}: {name} printed {printed:?}, the tutorial shows {expected}"
            );
            return;
        }
        match (block.lang.as_str(), block.option("background")) {
            ("sql", None) => {
                let file = self.dir.0.join(format!("step-{}.sql", block.line));
                std::fs::write(&file, code).unwrap();
                let database_url = self.var("DATABASE_URL").to_owned();
                let mut psql = self.command("psql");
                psql.args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &database_url,
                    "-f",
                ])
                .arg(&file);
                self.finish(psql, &place, block.option("name"));
            }
            ("sh", None) => {
                let mut bash = self.command("bash");
                bash.args(["-eu", "-o", "pipefail", "-c", &code]);
                self.finish(bash, &place, block.option("name"));
            }
            ("sh", Some(name)) => self.start(name, &code, &place).await,
            (lang, _) => panic!("{place}: the test does not know how to run a {lang} block"),
        }
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(key, _)| *key == name).unwrap().1
    }

    /// `program` in the tutorial's folder, with the reader's environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.dir.0)
            .env_remove("PORT")
            .env_remove("PGRELAY_BIND")
            .env_remove("LISTEN_DATABASE_URL")
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// Runs a command to its end; it must succeed. Keeps its stdout under `name`.
    fn finish(&mut self, mut command: Command, place: &str, name: Option<&str>) {
        let output = command.output().unwrap_or_else(|e| panic!("{place}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{place} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(name) = name {
            self.outputs.insert(name.to_owned(), stdout);
        }
    }

    /// Starts a command the reader leaves running and waits until it serves.
    async fn start(&mut self, name: &str, code: &str, place: &str) {
        let mut bash = self.command("bash");
        bash.args(["-eu", "-c", code])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = bash.spawn().unwrap_or_else(|e| panic!("{place}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        self.background.insert(
            name.to_owned(),
            Background {
                child,
                stdout,
                stderr,
            },
        );
        let base = format!("http://{}", self.relay);
        if code.contains("pgrelay serve") {
            if wait_readyz(&base, 200, PATIENCE).await.is_none() {
                self.died(name, place, "never became ready");
            }
        } else if code.contains("pgrelay tail") {
            // A tail streams live from when it connects: wait for its stream before the
            // next step inserts anything.
            self.tails += 1;
            let deadline = Instant::now() + PATIENCE;
            while metric(&base, "pgrelay_subscribers").await < self.tails {
                if Instant::now() > deadline {
                    self.died(name, place, "never opened a stream");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            let deadline = Instant::now() + PATIENCE;
            while tokio::net::TcpStream::connect(("127.0.0.1", self.app_port))
                .await
                .is_err()
            {
                if Instant::now() > deadline {
                    self.died(name, place, "never listened on APP_PORT");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Fails the test with what a background command printed.
    fn died(&self, name: &str, place: &str, what: &str) -> ! {
        let background = &self.background[name];
        // Read before panicking: a lock held while panicking would poison it for the reader.
        let stdout = background.stdout.lock().unwrap().join("\n");
        let stderr = background.stderr.lock().unwrap().join("\n");
        panic!("{place}: {name} {what}:\n{stdout}\n{stderr}")
    }

    /// The JSON lines the background command `name` printed, once `enough` says they are
    /// (or `PATIENCE` has passed: the caller's check then says what is missing).
    async fn lines(&self, name: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines: Vec<Value> = self.background[name]
                .stdout
                .lock()
                .unwrap()
                .iter()
                .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
                .collect();
            if enough(&lines) || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The app's message bodies the `tail` called `name` printed, once it printed `count`.
    async fn bodies(&self, name: &str, count: usize) -> Vec<String> {
        let body = |data: &Value| Some(data["payload"]["body"].as_str()?.to_owned());
        let lines = self
            .lines(name, |lines| lines.iter().filter_map(body).count() >= count)
            .await;
        lines.iter().filter_map(body).collect()
    }

    /// What the tails of bob and carol received: each room's messages while they are
    /// members, nothing else. Ids follow commit order, and each stream's last expected
    /// message was inserted after every message it must not receive, so a message delivered
    /// to a non-member would stand before that last one.
    async fn check_streams(&self) {
        assert_eq!(
            self.bodies("bob", 2).await,
            ["Hello, general!", "Welcome to random, bob!"],
            "bob's tail (a member of general, then of random)"
        );
        assert_eq!(
            self.bodies("carol", 3).await,
            [
                "Anyone in random?",
                "Welcome to general, carol!",
                "Welcome to random, bob!"
            ],
            "carol's tail (a member of random, then of general too)"
        );
        let stderr = |name: &str| self.background[name].stderr.lock().unwrap().join("\n");
        assert!(
            stderr("carol").contains(r##"rooms {"added":["#general"],"removed":[]}"##),
            "carol's tail did not report joining #general: {}",
            stderr("carol")
        );
        let bob = stderr("bob");
        let left = bob.find(r##"rooms {"added":[],"removed":["#general"]}"##);
        let joined = bob.find(r##"rooms {"added":["#random"],"removed":[]}"##);
        assert!(
            matches!((left, joined), (Some(left), Some(joined)) if left < joined),
            "bob's tail did not report leaving #general, then joining #random: {bob}"
        );
    }

    /// The Node and Python tokens read alice's history; the stand-in backend serves the page
    /// and a token the relay accepts.
    async fn check_backends(&self) {
        let all = [
            "Hello, general!",
            "Anyone in random?",
            "Welcome to general, carol!",
            "Welcome to random, bob!",
        ];
        for name in ["node-history", "python-history"] {
            let output = &self.outputs[name];
            let page: Value = serde_json::from_str(output)
                .unwrap_or_else(|e| panic!("{name} printed {output:?}: {e}"));
            let bodies: Vec<&str> = page["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} printed {page}"))
                .iter()
                .filter_map(|message| message["payload"]["body"].as_str())
                .collect();
            assert_eq!(bodies, all, "{name}: alice's history");
        }

        let app = format!("http://127.0.0.1:{}", self.app_port);
        let page = reqwest::get(format!("{app}/")).await.unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        assert!(
            page.contains(&format!("http://{}/v1/client.js", self.relay)),
            "the page does not import the relay's client: {page}"
        );
        let token = reqwest::get(format!("{app}/relay-token?user=carol"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let history = reqwest::Client::new()
            .get(format!("http://{}/v1/messages?since_id=0", self.relay))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(history.status(), 200, "the relay refused the app's token");
    }
}

/// Collects a pipe's lines as they come, on a thread of their own.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Lines {
    let lines = Lines::default();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// `PATH` with the `pgrelay` under test first, then the PostgreSQL binaries (psql).
fn search_path() -> String {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_pgrelay"));
    let mut dirs = vec![binary.parent().unwrap().to_path_buf()];
    dirs.extend(pgrelay_cluster::find_server_bin_dir().ok());
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

/// Whether `actual` is what the tutorial shows: equal, where the string `"…"` stands for
/// any value.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(any), _) if any == "…" => true,
        (Value::Object(expected), Value::Object(actual)) => {
            expected.len() == actual.len()
                && expected
                    .iter()
                    .all(|(key, value)| actual.get(key).is_some_and(|got| matches(value, got)))
        }
        (Value::Array(expected), Value::Array(actual)) => {
            expected.len() == actual.len()
                && expected.iter().zip(actual).all(|(e, a)| matches(e, a))
        }
        _ => expected == actual,
    }
}
