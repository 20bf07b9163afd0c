//! Browser end-to-end tests: the demo page and `/v1/client.js` in headless Chromium.
//!
//! Each browser half lives in `tests/browser/*.mjs` (Node + `playwright-core`, driving the
//! system Chromium). `tabs.mjs` opens many tabs of one participant and checks that they share
//! one stream, through a closing and a hanging holder, with nothing lost or repeated. For
//! `e2e.mjs` this half provides what a browser cannot: a real `pgrelay demo`
//! process that it stops and restarts on the same port mid-test, SQL inserts while it is down,
//! and a second origin serving the same page bytes so the cross-origin path (CORS on the stream,
//! preflighted POSTs, a cross-origin module import) is exercised for real.
//!
//! The two halves talk over the node process's stdio: e2e.mjs prints `RESTART_RELAY <json>` and
//! waits for `RELAY_RESTARTED` on stdin.
//!
//! Both need `node` (18 or newer, Debian 12's) and Chromium (`apt-get install -y chromium nodejs npm`); they run
//! `npm ci` in `tests/browser` when its `node_modules` is missing. They are `#[ignore]`d, so plain
//! `cargo test` reports them as not run; `.ci/run` installs what they need and runs them.
//! `PGRELAY_CHROMIUM` names a browser binary elsewhere than `/usr/bin/chromium`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{connect, free_port, fresh_database, SECRET};
use pgrelay::auth::Keys;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::{timeout, Instant};

/// The whole browser session, restart included; the e2e script's own watchdog is 70 s.
const NODE_BUDGET: Duration = Duration::from_secs(75);

/// The whole tabs session; the tabs script's own watchdog is 100 s.
const TABS_BUDGET: Duration = Duration::from_secs(120);

/// How long the relay may take to become ready after a (re)start.
const READY_BUDGET: Duration = Duration::from_secs(15);

/// How long a SIGTERM'd relay may take to exit before it is killed.
const STOP_BUDGET: Duration = Duration::from_secs(10);

/// The relay's `--presence-debounce`: short, so the e2e script sees bob go offline quickly.
const PRESENCE_DEBOUNCE: &str = "500ms";

/// The relay's `--presence-ttl`. A stopped relay leaves its presence rows to age out (so a
/// rolling restart flips nobody offline); until they do, bob counts as online whatever the
/// restarted relay sees, so the default 30 s would outlast the script's offline checks.
const PRESENCE_TTL: &str = "4s";

/// First `npm ci` (only when `node_modules` is missing).
const NPM_BUDGET: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str = "install them with `apt-get install -y chromium nodejs npm` and \
     `npm ci --prefix tests/browser` (.ci/run does)";

#[ignore = "needs Chromium and Node.js: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_a_real_browser() {
    let chromium = browser_tools().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let target = root.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let database_url = fresh_database().await;
    let mut relay = RelayChild::new(
        &database_url,
        free_port(),
        target.join("browser-relay.log"),
        &[],
    );
    relay.start().await;

    // The second origin serves the bytes the relay serves at `/`, deployed as an operator
    // would: its allow-list names the relay it trusts.
    let page = reqwest::get(format!("{}/", relay.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed = r#"<meta name="pgrelay-relays" content="">"#;
    assert!(
        page.contains(listed),
        "the demo page has no relay allow-list"
    );
    let page = page.replace(
        listed,
        &format!(r#"<meta name="pgrelay-relays" content="{}">"#, relay.base()),
    );
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_base = format!("http://{}", other.local_addr().unwrap());
    let page_server = tokio::spawn(serve_page(other, Arc::new(page.into_bytes())));

    let keys = Keys::from_secret_list(SECRET).unwrap();
    // alice and bob are members of #general through their tokens.
    let token = |sub: &str| {
        keys.mint_with_rooms(sub, Duration::from_secs(600), &["publish"], &["#general"])
    };
    let screenshot = target.join("browser-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);

    let node = Command::new("node")
        .arg(root.join("tests/browser/e2e.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("RELAY_URL", relay.base())
        .env("OTHER_ORIGIN_URL", &other_base)
        .env("ALICE_TOKEN", token("alice"))
        .env("BOB_TOKEN", token("bob"))
        .env("CHROMIUM_PATH", &chromium)
        .env("SCREENSHOT_PATH", &screenshot)
        .env("TOKEN_SECRET", SECRET)
        .env(
            "PRESENCE_DEBOUNCE_MS",
            humantime::parse_duration(PRESENCE_DEBOUNCE)
                .unwrap()
                .as_millis()
                .to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start node");

    finish_script(
        node,
        "the browser test",
        NODE_BUDGET,
        &mut relay,
        &database_url,
    )
    .await;
    page_server.abort();
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// Seven tabs of one participant (more than HTTP/1.1's six connections per origin) hold one
/// stream on the relay; when the holding tab closes, and when the next one hangs, another takes
/// over, and every tab gets every published message once, in order; a tab of another
/// participant in the same browser has its own stream and none of these messages. Prints the
/// figures BENCHMARKS.md quotes (`FIGURE` lines; `--nocapture` shows them).
#[ignore = "needs Chromium and Node.js: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_share_one_stream_in_a_real_browser() {
    let chromium = browser_tools().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let database_url = fresh_database().await;
    // The script publishes every 20 ms, faster than a sender's default rate.
    let mut relay = RelayChild::new(
        &database_url,
        free_port(),
        target.join("browser-tabs-relay.log"),
        &["--publish-rate", "1000", "--publish-burst", "1000"],
    );
    relay.start().await;

    let node = Command::new("node")
        .arg(root.join("tests/browser/tabs.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("RELAY_URL", relay.base())
        .env("TOKEN_SECRET", SECRET)
        .env("CHROMIUM_PATH", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start node");
    finish_script(
        node,
        "the tabs test",
        TABS_BUDGET,
        &mut relay,
        &database_url,
    )
    .await;
}

/// Serves a browser script's requests (see [`drive`]) until it exits, within `budget`; panics
/// with its output and the relay's log unless it succeeded.
async fn finish_script(
    mut node: tokio::process::Child,
    name: &str,
    budget: Duration,
    relay: &mut RelayChild,
    database_url: &str,
) {
    let transcript = Mutex::new(Vec::<String>::new());
    let mut stderr = node.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let outcome = timeout(budget, drive(&mut node, relay, database_url, &transcript))
        .await
        .unwrap_or_else(|_| Err(format!("{name} took longer than {budget:?}")));
    if outcome.is_err() {
        stop_node(&mut node).await;
    }
    let stderr = timeout(Duration::from_secs(5), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let transcript = transcript.lock().unwrap().join("\n");
    if !matches!(outcome, Ok(status) if status.success()) {
        panic!(
            "{name} failed ({outcome:?})\n--- node stdout ---\n{transcript}\n\
             --- node stderr ---\n{stderr}\n--- end of {} ---\n{}",
            relay.log.display(),
            tail(&relay.log, 40)
        );
    }
}

/// The last `lines` lines of a file, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Messages the e2e script asks to have inserted with SQL, as psql would: while the relay is
/// down (`RESTART_RELAY`), or while it runs (`INSERT_ROWS`, a broadcast).
#[derive(Deserialize)]
struct InsertRequest {
    participants: Vec<String>,
    sender: Option<String>,
    texts: Vec<String>,
}

impl InsertRequest {
    /// Inserts the texts in separate statements, so separate transactions: the ids follow
    /// the texts' order.
    async fn insert(&self, database_url: &str) -> Result<(), String> {
        let client = connect(database_url).await;
        for text in &self.texts {
            client
                .execute(
                    "INSERT INTO pgrelay.messages (participants, sender, payload) \
                     VALUES ($1, $2, $3)",
                    &[
                        &self.participants,
                        &self.sender,
                        &serde_json::json!({ "text": text }),
                    ],
                )
                .await
                .map_err(|e| format!("insert failed: {e}"))?;
        }
        Ok(())
    }
}

/// Relays node's stdout to the transcript and serves its `RESTART_RELAY` request; returns
/// node's exit status.
async fn drive(
    node: &mut tokio::process::Child,
    relay: &mut RelayChild,
    database_url: &str,
    transcript: &Mutex<Vec<String>>,
) -> Result<ExitStatus, String> {
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        // Shown live with --nocapture, and in the panic message on failure.
        println!("{line}");
        transcript.lock().unwrap().push(line.clone());
        if let Some(request) = line.strip_prefix("INSERT_ROWS ") {
            let request: InsertRequest =
                serde_json::from_str(request).map_err(|e| format!("bad INSERT_ROWS: {e}"))?;
            request.insert(database_url).await?;
            stdin
                .write_all(b"INSERTED\n")
                .await
                .map_err(|e| format!("cannot answer node: {e}"))?;
            continue;
        }
        let Some(request) = line.strip_prefix("RESTART_RELAY ") else {
            continue;
        };
        let request: InsertRequest =
            serde_json::from_str(request).map_err(|e| format!("bad RESTART_RELAY: {e}"))?;
        relay.stop().await?;
        request.insert(database_url).await?;
        relay.start().await;
        let note = format!(
            "[rust] relay restarted on {} after inserting {} message(s)",
            relay.base(),
            request.texts.len()
        );
        println!("{note}");
        transcript.lock().unwrap().push(note);
        stdin
            .write_all(b"RELAY_RESTARTED\n")
            .await
            .map_err(|e| format!("cannot answer node: {e}"))?;
    }
    node.wait().await.map_err(|e| e.to_string())
}

/// Stops node with SIGTERM first, so Playwright closes Chromium, then SIGKILL if it lingers.
async fn stop_node(node: &mut tokio::process::Child) {
    if let Some(pid) = node.id() {
        let _ = pgrelay_cluster::signal(pid, libc::SIGTERM);
        if timeout(Duration::from_secs(3), node.wait()).await.is_ok() {
            return;
        }
    }
    let _ = node.kill().await;
}

/// A `pgrelay demo` child process (on the test's database) that can be stopped and started again on the same
/// port (unlike `crate::common::RelayProcess`, which picks a new port per process): the pages keep
/// their URLs across the restart, as they would behind a load balancer.
struct RelayChild {
    database_url: String,
    port: u16,
    log: PathBuf,
    /// Flags added to the command line, after the ones every browser test uses.
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl RelayChild {
    fn new(database_url: &str, port: u16, log: PathBuf, args: &[&str]) -> RelayChild {
        let _ = std::fs::remove_file(&log);
        RelayChild {
            database_url: database_url.to_owned(),
            port,
            log,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&self) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // `pgrelay demo`, as a new user runs it, on the test's database: it migrates, seeds
        // the conversation between alice and bob (once: a restart finds it there) and serves
        // the demo page.
        std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"))
            .arg("demo")
            .args(["--allow-origin", "*"])
            .args(["--presence-debounce", PRESENCE_DEBOUNCE])
            .args(["--presence-ttl", PRESENCE_TTL])
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .env("DATABASE_URL", &self.database_url)
            .env("PGRELAY_SECRET", SECRET)
            .env_remove("LISTEN_DATABASE_URL")
            .env_remove("PORT")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Starts the process and waits for `/readyz`; a process that exits early (say the port
    /// is not free again yet) is started again until the budget runs out.
    async fn start(&mut self) {
        let deadline = Instant::now() + READY_BUDGET;
        self.child = Some(self.spawn());
        loop {
            if let Ok(Ok(response)) = timeout(
                Duration::from_secs(2),
                reqwest::get(format!("{}/readyz", self.base())),
            )
            .await
            {
                if response.status() == 200 {
                    return;
                }
            }
            let child = self.child.as_mut().unwrap();
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("pgrelay demo exited during start-up ({status}); starting it again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.child = Some(self.spawn());
            }
            assert!(
                Instant::now() < deadline,
                "pgrelay demo never became ready on port {}; see {}",
                self.port,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, the way an orchestrator stops it; SIGKILL if it outstays `STOP_BUDGET`.
    async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = pgrelay_cluster::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_BUDGET;
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("pgrelay demo ignored SIGTERM for {STOP_BUDGET:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The second origin: answers `GET /` (any query) with the demo page, anything else with 404.
async fn serve_page(listener: TcpListener, page: Arc<Vec<u8>>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let page = Arc::clone(&page);
        tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(5), answer(socket, &page)).await;
        });
    }
}

/// One request, one answer, then close: enough for a browser loading a page.
async fn answer(mut socket: TcpStream, page: &[u8]) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = String::from_utf8_lossy(&head);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body): (&str, &str, &[u8]) = if method == "GET" && path == "/" {
        ("200 OK", "text/html; charset=utf-8", page)
    } else {
        ("404 Not Found", "text/plain", b"not found")
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(header.as_bytes()).await?;
    socket.write_all(body).await?;
    socket.shutdown().await
}

/// What a browser test needs: Chromium (its path is returned), Node.js, and `playwright-core`
/// in tests/browser (installed with `npm ci` when missing). Fails the test saying what is
/// missing and how to install it.
pub(crate) async fn browser_tools() -> PathBuf {
    let chromium = chromium_path().unwrap_or_else(|| {
        panic!("the browser test needs Chromium at /usr/bin/chromium (or PGRELAY_CHROMIUM): {INSTALL_HINT}")
    });
    if let Err(problem) = check_node().await {
        panic!("the browser test needs Node.js 18 or newer ({problem}): {INSTALL_HINT}");
    }
    install_playwright(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")).await;
    chromium
}

/// The Chromium binary: `PGRELAY_CHROMIUM`, else Debian's or Ubuntu's usual path.
fn chromium_path() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PGRELAY_CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|path| path.exists());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// Node.js is on PATH and at least version 18 (what the pinned `playwright-core` supports).
async fn check_node() -> Result<(), String> {
    let output = timeout(
        Duration::from_secs(10),
        Command::new("node").arg("--version").output(),
    )
    .await
    .map_err(|_| "`node --version` hung".to_owned())?
    .map_err(|error| format!("cannot run `node`: {error}"))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| format!("`node --version` printed {version:?}"))?;
    if major < 18 {
        return Err(format!("found node {version}"));
    }
    Ok(())
}

/// Runs `npm ci` once, so a fresh checkout works with plain `cargo test`.
async fn install_playwright(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    eprintln!("browser test: running `npm ci` in {}", dir.display());
    let output = timeout(
        NPM_BUDGET,
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`npm ci` in {} took over {NPM_BUDGET:?}", dir.display()))
    .unwrap_or_else(|error| panic!("cannot run `npm`: {error}; {INSTALL_HINT}"));
    assert!(
        output.status.success(),
        "`npm ci` in {} failed: {}\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
