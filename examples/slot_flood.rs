//! Slot flood and trickled heads against a relay: how many genuine streams open while
//! sockets that send one byte hold on, and how long a trickling head keeps its slot.
//!
//! ```sh
//! cargo build --release --bin pgrelay --example slot_flood
//! target/release/examples/slot_flood                       # the relay next to it
//! target/release/examples/slot_flood --relay /path/to/pgrelay --flooders 320 --genuine 24
//! ```
//!
//! It starts `RELAY demo` (with its own throwaway PostgreSQL) on a free loopback port with
//! `--max-connections 300` and the default `--header-timeout 10s`, then:
//!
//! 1. **Flood**: 320 sockets each send one byte and wait; each is opened again as soon as the
//!    relay closes it. From the third second on, 24 genuine streams open one a second (a whole
//!    `GET /v1/stream` head in one write, from a thread of their own) and stay open; each
//!    counts as let in when answered 200 within 10 s.
//! 2. **Trickled heads**, one at a time after the flood: a small head trickled a byte every
//!    500 ms, and a large one whose first 16,000 bytes arrive at once and 1,000 more at 9 s
//!    (past where an earlier relay handed heads over to hyper and its second timer), then a
//!    byte every 500 ms. Each reports how long the relay kept the connection.
//!
//! Everything goes to 127.0.0.1, and the run stops by itself within about a minute and a half.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgrelay::auth::Keys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "slot-flood-secret-0123456789-abcdef";
const MAX_CONNECTIONS: &str = "300";
/// The relay's default `--header-timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a trickle goes on before the tool stops waiting for the relay to close it.
const TRICKLE_LIMIT: Duration = Duration::from_secs(30);

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the command line asks for.
struct Options {
    relay: String,
    flooders: usize,
    genuine: usize,
}

fn options() -> Res<Options> {
    let mut options = Options {
        relay: concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/pgrelay").to_owned(),
        flooders: 320,
        genuine: 24,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--relay" => options.relay = value,
            "--flooders" => options.flooders = value.parse()?,
            "--genuine" => options.genuine = value.parse()?,
            _ => return Err(format!("unknown argument {arg}").into()),
        }
    }
    Ok(options)
}

/// `RELAY demo` on a loopback port; interrupted (so it removes its cluster) when dropped.
struct Relay {
    child: Child,
    addr: String,
}

impl Relay {
    async fn start(binary: &str) -> Res<Relay> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["demo", "--bind", &addr, "--secret", SECRET])
            .args(["--max-connections", MAX_CONNECTIONS])
            .env("PGRELAY_LOG", "error")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let relay = Relay { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(response) = reqwest::get(format!("http://{}/readyz", relay.addr)).await {
                if response.status() == 200 {
                    return Ok(relay);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the relay did not become ready in 60 s".into())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = pgrelay_cluster::signal(self.child.id(), libc::SIGINT);
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One flooding socket, opened again each time the relay closes it, until `stop`.
async fn flood(addr: String, opened: Arc<AtomicU64>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut socket) = TcpStream::connect(&addr).await else {
            // Out of ephemeral ports or files for a moment: breathe.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let _ = socket.write_all(b"G").await;
        let mut buffer = [0u8; 512];
        tokio::select! {
            _ = socket.read(&mut buffer) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Opens a genuine stream; its socket when answered 200, else what happened.
async fn open_stream(addr: &str, token: &str) -> Result<TcpStream, String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head =
        format!("GET /v1/stream HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\r\n");
    socket
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer)).await;
    match read {
        Ok(Ok(read)) if buffer[..read].starts_with(b"HTTP/1.1 200") => Ok(socket),
        Ok(Ok(0)) | Ok(Err(_)) => Err("closed".into()),
        Ok(Ok(read)) => Err(String::from_utf8_lossy(&buffer[..read.min(12)]).into_owned()),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// Opens `count` genuine streams, one a second from the third second on, each kept open until
/// all are done; how many were answered 200, and what the others got. They run on a thread
/// and runtime of their own, as clients on other machines would: on the flood's runtime a
/// head could wait behind hundreds of flooding tasks after its connection opened.
fn genuine_opens(addr: &str, keys: &Keys, count: usize) -> Res<(usize, Vec<String>)> {
    let tokens: Vec<String> = (0..count)
        .map(|n| keys.mint(&format!("genuine{n}"), Duration::from_secs(3600), &[]))
        .collect();
    let addr = addr.to_owned();
    let opener = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let started = Instant::now();
            let mut streams = Vec::new();
            let mut refused = Vec::new();
            for (n, token) in tokens.iter().enumerate() {
                tokio::time::sleep_until(started + Duration::from_secs(3 + n as u64)).await;
                match open_stream(&addr, token).await {
                    Ok(socket) => streams.push(socket),
                    Err(what) => refused.push(what),
                }
            }
            Ok((streams.len(), refused))
        })
    });
    opener
        .join()
        .map_err(|_| "the genuine clients' thread panicked")?
}

/// Sends `first` at once, then a byte every 500 ms, except that the first tick at or after
/// `later`'s time (if any) sends its bytes instead; how long the relay kept the connection
/// open (capped at [`TRICKLE_LIMIT`]).
async fn trickle(addr: &str, first: Vec<u8>, later: Option<(Duration, Vec<u8>)>) -> Res<Duration> {
    let socket = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        let mut later = later;
        if write.write_all(&first).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let bytes = match later.take() {
                Some((at, bytes)) if started.elapsed() >= at => bytes,
                not_yet => {
                    later = not_yet;
                    b"c".to_vec()
                }
            };
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = [0u8; 1024];
    let kept = loop {
        match tokio::time::timeout_at(started + TRICKLE_LIMIT, read.read(&mut buffer)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    };
    writer.abort();
    Ok(kept)
}

#[tokio::main]
async fn main() -> Res<()> {
    let options = options()?;
    eprintln!("slot_flood: starting {} demo…", options.relay);
    let relay = Relay::start(&options.relay).await?;
    let keys = Keys::from_secret_list(SECRET)?;

    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicU64::new(0));
    let mut flooders = JoinSet::new();
    for _ in 0..options.flooders {
        flooders.spawn(flood(relay.addr.clone(), Arc::clone(&opened), stop.clone()));
    }
    let flood_started = Instant::now();
    let (let_in, refused) = genuine_opens(&relay.addr, &keys, options.genuine)?;
    stop.cancel();
    while flooders.join_next().await.is_some() {}
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    println!(
        "flood: {} sockets sending one byte, {} connections opened in {flood_seconds:.1} s \
         ({:.0}/s), --max-connections {MAX_CONNECTIONS}",
        options.flooders,
        opened.load(Ordering::Relaxed),
        opened.load(Ordering::Relaxed) as f64 / flood_seconds
    );
    println!(
        "genuine stream opens during the flood: {let_in} of {} answered 200; the others: {refused:?}",
        options.genuine
    );

    // Let the flood's last connections close before the trickles take their measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let small = trickle(&relay.addr, b"GET /healthz HTTP/1.1\r\n".to_vec(), None).await?;
    println!(
        "trickled small head: the relay kept it {:.1} s (--header-timeout {} s)",
        small.as_secs_f64(),
        HEADER_TIMEOUT.as_secs()
    );
    let mut large = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nCookie: c=".to_vec();
    large.resize(16_000, b'c');
    let later = Some((Duration::from_secs(9), vec![b'c'; 1000]));
    let large = trickle(&relay.addr, large, later).await?;
    println!(
        "trickled large head (16,000 bytes, 1,000 more at 9 s): the relay kept it {:.1} s",
        large.as_secs_f64()
    );
    drop(relay);
    Ok(())
}
