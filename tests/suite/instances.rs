//! Real `pgrelay serve` processes: subscribers hopping between instances, an instance killed
//! mid-stream, graceful shutdown on SIGTERM, a stalled reader's memory and fairness, and logs
//! that never carry a token or the secret.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures::StreamExt;
use pgrelay::auth::Keys;
use pgrelay::sse::{SseEvent, SseItem, SseParser};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The rooms each subscriber of these tests belongs to, through its token.
fn rooms_of(participant: &str) -> &'static [&'static str] {
    match participant {
        "alice" | "carol" => &["#ops"],
        _ => &[],
    }
}

/// What `participant`'s streams listen on: itself, its rooms and everyone.
fn addresses_of(participant: &str) -> Vec<String> {
    let mut addresses = vec![participant.to_owned()];
    addresses.extend(rooms_of(participant).iter().map(|room| room.to_string()));
    addresses.push("*".to_owned());
    addresses
}

/// A token for `sub` with its rooms, signed with the test secret, valid for `ttl`.
fn token_for(sub: &str, ttl: Duration, scopes: &[&str]) -> String {
    Keys::from_secret_list(SECRET)
        .unwrap()
        .mint_with_rooms(sub, ttl, scopes, rooms_of(sub))
}

/// A subscription token valid for an hour.
fn token(sub: &str) -> String {
    token_for(sub, Duration::from_secs(3600), &[])
}

/// Who message `n` of a writer schedule is for: people, the room `#ops` (alice and carol),
/// everyone, and `dave`, who is nobody's subscriber, so that message must reach no one.
fn mix(n: usize) -> &'static [&'static str] {
    match n % 11 {
        0 => &["alice"],
        1 => &["bob"],
        2 => &["carol"],
        3 => &["alice", "bob"],
        4 => &["bob", "carol"],
        5 => &["alice", "carol"],
        6 => &["alice", "bob", "carol"],
        7 => &["#ops"],
        8 => &["*"],
        9 => &["bob", "#ops"],
        _ => &["dave"],
    }
}

/// How many of the first `total` scheduled messages are for `participant`'s addresses.
fn expected_count(participant: &str, total: usize) -> usize {
    let addresses = addresses_of(participant);
    (0..total)
        .filter(|&n| mix(n).iter().any(|to| addresses.iter().any(|a| a == to)))
        .count()
}

/// Two writers on their own connections insert messages `0..total` of the schedule between
/// them (one row per transaction, with short pauses), counting their progress in `inserted`.
fn spawn_writers(db: &str, total: usize, inserted: Arc<AtomicUsize>) -> Vec<JoinHandle<()>> {
    (0..2)
        .map(|writer| {
            let db = db.to_owned();
            let inserted = Arc::clone(&inserted);
            tokio::spawn(async move {
                let client = connect(&db).await;
                for n in (writer..total).step_by(2) {
                    insert(&client, mix(n), json!({"n": n, "writer": writer})).await;
                    inserted.fetch_add(1, Ordering::Relaxed);
                    if n % 20 < 2 {
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                }
            })
        })
        .collect()
}

/// The next stored message as (id, data); skips the opening and id-less events (signals,
/// presence).
async fn next_stored(stream: &mut Subscriber) -> (i64, Value) {
    loop {
        let event = stream.next().await;
        if event.is_message() {
            let (id, data) = (event.id.unwrap(), event.data.unwrap());
            return (id.parse().unwrap(), serde_json::from_str(&data).unwrap());
        }
    }
}

/// Checks a received message against the stream's cursor and its recipient.
fn check_message(participant: &str, last: i64, id: i64, data: &Value) {
    assert!(
        id > last,
        "{participant}: id {id} after {last} is not increasing"
    );
    assert_eq!(data["id"], id, "{participant}: data.id differs from id:");
    let participants = data["participants"].as_array().unwrap();
    let addresses = addresses_of(participant);
    assert!(
        participants
            .iter()
            .any(|p| addresses.iter().any(|a| p == a)),
        "{participant} received message {id} addressed to {participants:?}"
    );
}

/// Asserts that resuming after `last` on `base` yields no further stored message.
async fn assert_nothing_after(base: &str, participant: &str, last: i64) {
    let mut stream = Subscriber::open(base, &token(participant), "", Some(last)).await;
    assert_eq!(stream.opening_position().await, last);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Some(event) = stream
        .next_within(deadline - tokio::time::Instant::now())
        .await
    {
        assert!(
            !event.is_message(),
            "{participant}: unexpected message after {last}: {event:?}"
        );
    }
}

/// Reads `participant`'s messages from `first` (already past its opening block, at `start`),
/// dropping the connection after a varying number of messages (zero included, so the opening
/// `id:` alone carries the position) and resuming on the next instance round-robin with
/// `Last-Event-ID`; returns the ids received and how many connections it used.
async fn hop_between(
    bases: Vec<String>,
    participant: &'static str,
    mut stream: Subscriber,
    start: i64,
    expected: usize,
) -> (Vec<i64>, usize) {
    let token = token(participant);
    let seed = participant.len() * 11;
    let mut received = Vec::with_capacity(expected);
    let mut last = start;
    let mut hop = 0usize;
    loop {
        // Every fourth connection reads nothing: only its opening `id:` carries the position.
        let quota = if hop % 4 == 3 {
            0
        } else {
            (hop * 37 + seed) % 53
        };
        for _ in 0..quota {
            if received.len() == expected {
                break;
            }
            let (id, data) = next_stored(&mut stream).await;
            check_message(participant, last, id, &data);
            received.push(id);
            last = id;
        }
        if received.len() == expected {
            return (received, hop + 1);
        }
        drop(stream);
        hop += 1;
        stream = Subscriber::open(&bases[hop % bases.len()], &token, "", Some(last)).await;
        assert_eq!(
            stream.opening_position().await,
            last,
            "{participant}: the opening id is the resume point"
        );
    }
}

/// Three instances on one database: subscribers that keep hopping between them with
/// `Last-Event-ID` get exactly their messages, once each, in increasing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hopping_between_three_instances_get_exactly_their_messages() {
    const TOTAL: usize = 1500;
    let db = fresh_database().await;
    let relays = [
        RelayProcess::start(&db, &[], None).await,
        RelayProcess::start(&db, &[], None).await,
        RelayProcess::start(&db, &[], None).await,
    ];
    let bases: Vec<String> = relays.iter().map(|r| r.base.clone()).collect();

    let mut readers = Vec::new();
    for (i, participant) in ["alice", "bob", "carol"].into_iter().enumerate() {
        // Each starts live on a different instance, before anything is written.
        let mut stream = Subscriber::open(&relays[i].base, &token(participant), "", None).await;
        let start = stream.opening_position().await;
        let bases: Vec<String> = bases[i..].iter().chain(&bases[..i]).cloned().collect();
        let expected = expected_count(participant, TOTAL);
        readers.push((
            participant,
            tokio::spawn(hop_between(bases, participant, stream, start, expected)),
        ));
    }
    let inserted = Arc::new(AtomicUsize::new(0));
    for writer in spawn_writers(&db, TOTAL, Arc::clone(&inserted)) {
        writer.await.unwrap();
    }

    let client = connect(&db).await;
    for (participant, reader) in readers {
        let (received, connections) = reader.await.unwrap();
        println!(
            "{participant}: {} messages over {connections} connections",
            received.len()
        );
        assert_eq!(
            received,
            ids_for_addresses(&client, &addresses_of(participant)).await,
            "{participant}"
        );
        assert_nothing_after(&bases[0], participant, *received.last().unwrap()).await;
    }
}

/// Subscribers on an instance that is SIGKILLed mid-stream resume on another instance with
/// `Last-Event-ID` and lose and double nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    const TOTAL: usize = 1200;
    let db = fresh_database().await;
    let mut a = RelayProcess::start(&db, &[], None).await;
    let b = RelayProcess::start(&db, &[], None).await;

    let delivered = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for participant in ["alice", "bob", "carol"] {
        let mut stream = Subscriber::open(&a.base, &token(participant), "", None).await;
        let start = stream.opening_position().await;
        let expected = expected_count(participant, TOTAL);
        let fallback = b.base.clone();
        let delivered = Arc::clone(&delivered);
        readers.push((
            participant,
            tokio::spawn(async move {
                let mut received = Vec::with_capacity(expected);
                let mut last = start;
                // On A until its stream breaks.
                while let Some(event) = stream.next_within(PATIENCE).await {
                    if let (Some(id), Some(data)) = (event.id, event.data) {
                        let id: i64 = id.parse().unwrap();
                        check_message(participant, last, id, &serde_json::from_str(&data).unwrap());
                        received.push(id);
                        last = id;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let on_a = received.len();
                // Then on B from the last id seen.
                let mut stream =
                    Subscriber::open(&fallback, &token(participant), "", Some(last)).await;
                assert_eq!(stream.opening_position().await, last);
                while received.len() < expected {
                    let (id, data) = next_stored(&mut stream).await;
                    check_message(participant, last, id, &data);
                    received.push(id);
                    last = id;
                }
                (received, on_a)
            }),
        ));
    }

    let inserted = Arc::new(AtomicUsize::new(0));
    let writers = spawn_writers(&db, TOTAL, Arc::clone(&inserted));
    let deadline = Instant::now() + PATIENCE;
    while inserted.load(Ordering::Relaxed) < TOTAL / 3 || delivered.load(Ordering::Relaxed) < 100 {
        assert!(
            Instant::now() < deadline,
            "writers or readers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal(libc::SIGKILL);
    let status = exit_within(&mut a.child, Duration::from_secs(5))
        .await
        .expect("A survived SIGKILL");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let killed_at = inserted.load(Ordering::Relaxed);
    println!("A killed after {killed_at} of {TOTAL} inserts");
    assert!(
        killed_at < TOTAL,
        "the kill should land while writers insert"
    );

    for writer in writers {
        writer.await.unwrap();
    }
    let client = connect(&db).await;
    for (participant, reader) in readers {
        let (received, on_a) = reader.await.unwrap();
        println!(
            "{participant}: {on_a} messages from A, {} from B",
            received.len() - on_a
        );
        assert_eq!(
            received,
            ids_for_addresses(&client, &addresses_of(participant)).await,
            "{participant}"
        );
        assert_nothing_after(&b.base, participant, *received.last().unwrap()).await;
    }
}

/// Polls until the child exits, up to `limit`, without blocking the runtime; the exit status,
/// or `None` if it is still running.
async fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How a raw stream ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The body finished (chunked terminator).
    Clean,
    /// The connection broke mid-body.
    Broken(String),
    /// Nothing within the wait.
    Hung,
}

/// Opens `/v1/stream` with reqwest and reads up to the opening block; returns the body.
async fn open_raw_stream(
    base: &str,
    participant: &str,
) -> futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>> {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/stream?token={}", token(participant)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream().boxed();
    let mut parser = SseParser::new();
    loop {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("no opening block")
            .expect("stream ended before its opening block")
            .unwrap();
        if parser
            .feed(&chunk)
            .iter()
            .any(|item| matches!(item, SseItem::Event(e) if e.retry.is_some()))
        {
            return body;
        }
    }
}

/// Reads a body to its end, within `wait`.
async fn read_to_end(
    mut body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    wait: Duration,
) -> Ending {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return Ending::Hung,
            Ok(None) => return Ending::Clean,
            Ok(Some(Err(error))) => return Ending::Broken(format!("{error:?}")),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// SIGTERM with 20 open streams: every stream ends cleanly, the process exits 0 well within
/// the grace period, and the port refuses connections afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_promptly() {
    let db = fresh_database().await;
    let mut relay = RelayProcess::start(&db, &[], None).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(open_raw_stream(&relay.base, &format!("user{}", i % 7)).await);
    }

    let started = Instant::now();
    relay.signal(libc::SIGTERM);
    let endings: Vec<JoinHandle<(Ending, Duration)>> = streams
        .into_iter()
        .map(|body| {
            tokio::spawn(async move {
                let ending = read_to_end(body, Duration::from_secs(6)).await;
                (ending, started.elapsed())
            })
        })
        .collect();
    let status = exit_within(&mut relay.child, Duration::from_secs(8)).await;
    let shutdown = started.elapsed();
    println!("SIGTERM with 20 open streams: exited in {shutdown:?} (grace 5 s)");
    let status = status.expect("pgrelay did not exit within 8 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        shutdown < Duration::from_secs(4),
        "shutdown took {shutdown:?}: it waited out the grace period"
    );
    let mut slowest = Duration::ZERO;
    for ending in endings {
        let (ending, at) = ending.await.unwrap();
        assert_eq!(ending, Ending::Clean, "a stream did not end cleanly");
        slowest = slowest.max(at);
    }
    println!("last stream ended {slowest:?} after SIGTERM");
    match TcpStream::connect(address(&relay.base)).await {
        Ok(_) => panic!("the port still accepts connections after shutdown"),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused),
    }
}

/// With `--grace 1s`, a request that never finishes (a POST whose body stops halfway) does
/// not keep the process alive past the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_request_exits_after_the_grace_period() {
    let db = fresh_database().await;
    let mut relay = RelayProcess::start(&db, &["--grace", "1s"], None).await;
    let publisher = relay.token("alice", &["publish"]);
    let mut stuck = TcpStream::connect(address(&relay.base)).await.unwrap();
    stuck
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {publisher}\r\n\
                 Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"participants\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A stream too, which must end on its own at once.
    let stream = open_raw_stream(&relay.base, "bob").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    relay.signal(libc::SIGTERM);
    let stream_end = tokio::spawn(async move {
        let ending = read_to_end(stream, Duration::from_secs(4)).await;
        (ending, started.elapsed())
    });
    let status = exit_within(&mut relay.child, Duration::from_secs(6)).await;
    let shutdown = started.elapsed();
    println!("SIGTERM with a stuck request and --grace 1s: exited in {shutdown:?}");
    let status = status.expect("pgrelay did not exit within 6 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        shutdown < Duration::from_millis(2500),
        "shutdown took {shutdown:?} with --grace 1s"
    );
    let (ending, at) = stream_end.await.unwrap();
    assert_eq!(ending, Ending::Clean, "the stream did not end cleanly");
    assert!(
        at < Duration::from_millis(900),
        "the stream took {at:?} to end: it should not wait for the grace period"
    );
    // The stuck client sees its connection closed, not an answer it never asked for in full.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stuck.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the stuck connection was left open");
}

/// An SSE stream read straight off a TCP socket with a small receive buffer, so a reader
/// that stops reading makes the relay's writes block (HTTP/1.1 chunked framing decoded here).
struct RawStream {
    socket: TcpStream,
    raw: Vec<u8>,
    head: Option<String>,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    ended: bool,
    buffer: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl RawStream {
    async fn open(base: &str, participant: &str) -> RawStream {
        let mut socket = slow_reader(address(base).parse().unwrap()).await;
        let request = format!(
            "GET /v1/stream?token={} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n\r\n",
            token(participant)
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        RawStream {
            socket,
            raw: Vec::new(),
            head: None,
            parser: SseParser::new(),
            events: VecDeque::new(),
            ended: false,
            buffer: vec![0; 64 * 1024],
        }
    }

    /// The next event block, or `None` at the end or after `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let read = tokio::time::timeout_at(deadline, self.socket.read(&mut self.buffer))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                return None;
            }
            self.raw.extend_from_slice(&self.buffer[..read]);
            self.decode();
        }
    }

    /// Moves complete chunks from `raw` through the SSE parser.
    fn decode(&mut self) {
        if self.head.is_none() {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8(self.raw[..end].to_vec()).unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "stream refused: {head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "{head}"
            );
            self.raw.drain(..end + 4);
            self.head = Some(head);
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_line = std::str::from_utf8(&self.raw[..line_end]).unwrap();
            let size =
                usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
            let total = line_end + 2 + size + 2;
            if self.raw.len() < total {
                return;
            }
            let data: Vec<u8> = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..total);
            if size == 0 {
                self.ended = true;
                return;
            }
            for item in self.parser.feed(&data) {
                if let SseItem::Event(event) = item {
                    self.events.push_back(event);
                }
            }
        }
    }
}

/// A subscriber that stops reading while 10,000 messages are addressed to it keeps the
/// relay's memory bounded, holds back no other subscriber, and still gets every message once,
/// in order, when it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_bounded_and_exact_and_holds_no_one_back() {
    const COUNT: i32 = 10_000;
    const BATCH: i32 = 500;
    let db = fresh_database().await;
    let relay = Arc::new(RelayProcess::start(&db, &[], None).await);

    // The slow reader: reads its opening block, then nothing.
    let mut slow = RawStream::open(&relay.base, "alice").await;
    let opening = slow.next_within(PATIENCE).await.expect("no opening block");
    let start: i64 = opening.id.clone().unwrap().parse().unwrap();
    assert!(opening.is_opening() && opening.retry.is_some());

    // The fast reader, same participant, same instance.
    let mut fast = relay.subscribe("alice", "", None).await;
    assert_eq!(fast.opening_position().await, start);
    let fast_reader = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(COUNT as usize);
        let mut last = start;
        while ids.len() < COUNT as usize {
            let (id, data) = next_stored(&mut fast).await;
            check_message("alice", last, id, &data);
            ids.push(id);
            last = id;
        }
        (ids, Instant::now())
    });

    let before = relay.rss_kib();
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (relay, peak, sampling) =
            (Arc::clone(&relay), Arc::clone(&peak), Arc::clone(&sampling));
        async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(relay.rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    let client = connect(&db).await;
    let inserting = Instant::now();
    for first in (1..=COUNT).step_by(BATCH as usize) {
        client
            .execute(
                "INSERT INTO pgrelay.messages (participants, payload) \
                 SELECT '{alice}', jsonb_build_object('n', n, 'pad', repeat('x', 180)) \
                 FROM generate_series($1::int, $2::int) AS n",
                &[&first, &(first + BATCH - 1)],
            )
            .await
            .unwrap();
    }
    let inserted = Instant::now();
    let (fast_ids, fast_done) = fast_reader.await.unwrap();
    let after = relay.rss_kib();
    peak.fetch_max(after, Ordering::Relaxed);
    let expected = ids_for(&client, "alice").await;
    assert_eq!(expected.len(), COUNT as usize);
    assert_eq!(fast_ids, expected, "the fast reader");
    println!(
        "10,000 inserted in {:?}; fast reader done {:?} after the last insert, the slow one stalled",
        inserted - inserting,
        fast_done.saturating_duration_since(inserted)
    );

    // The slow reader really was held back: its stream had not produced everything yet.
    // (The relay's kernel send buffer grows to tcp_wmem's 4 MiB and takes about 7,800 of
    // these events, which is why the payloads must not be much smaller.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = try_metric(&relay.base, "pgrelay_events_delivered_total")
        .await
        .unwrap() as i64;
    let slow_sent = delivered - i64::from(COUNT);
    println!("while stalled, the slow reader's stream had produced {slow_sent} of {COUNT} events");
    assert!(
        slow_sent < i64::from(COUNT),
        "the slow reader never pushed back: socket buffers took all {COUNT} events"
    );

    // Now the slow reader drains.
    let drain_started = Instant::now();
    let mut slow_ids = Vec::with_capacity(COUNT as usize);
    let mut last = start;
    let mut n = 0;
    while slow_ids.len() < COUNT as usize {
        let event = slow
            .next_within(PATIENCE)
            .await
            .expect("the slow reader's stream ended or stalled while draining");
        if let (Some(id), Some(data)) = (event.id, event.data) {
            let id: i64 = id.parse().unwrap();
            let data: Value = serde_json::from_str(&data).unwrap();
            check_message("alice", last, id, &data);
            n += 1;
            assert_eq!(data["payload"]["n"], n, "payloads in insertion order");
            slow_ids.push(id);
            last = id;
        }
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let drained = relay.rss_kib();
    let peak = peak.load(Ordering::Relaxed);
    assert_eq!(slow_ids, expected, "the slow reader");
    println!(
        "slow reader drained in {:?}; relay RSS before {before} KiB, peak {peak} KiB, \
         after inserts (slow reader stalled) {after} KiB, after draining {drained} KiB; \
         growth {} KiB; catch-up queries {:?}",
        drain_started.elapsed(),
        peak.saturating_sub(before),
        try_metric(&relay.base, "pgrelay_catch_up_queries_total").await
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    // Nothing more for either reader.
    let extra = slow.next_within(Duration::from_millis(300)).await;
    assert!(
        !matches!(extra, Some(SseEvent { data: Some(_), .. })),
        "the slow reader got more: {extra:?}"
    );
}

/// Kills a spawned child (and reaps it) when dropped, so a failing test leaves no process.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `text` without ANSI escape sequences (ESC `[` parameters, final byte).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `pgrelay serve` with `PGRELAY_LOG=trace` (and `--log-format json` if asked), makes
/// requests carrying tokens every way a client can, stops it, and checks the log.
async fn logs_carry_no_secrets(json_format: bool) {
    let db = fresh_database().await;
    let log_path = std::env::temp_dir().join(format!(
        "pgrelay-instances-{}-{}.log",
        std::process::id(),
        if json_format { "json" } else { "text" }
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgrelay"));
    if json_format {
        command.args(["--log-format", "json"]);
    }
    let child = command
        .arg("serve")
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db)
        .env("PGRELAY_SECRET", SECRET)
        .env("PGRELAY_LOG", "trace")
        .env_remove("PGRELAY_LOG_FORMAT")
        .env_remove("LISTEN_DATABASE_URL")
        .env_remove("PORT")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
            if response.status() == 200 {
                break;
            }
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("pgrelay serve exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "pgrelay serve never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let valid = token("alice");
    let publisher = token_for("alice", Duration::from_secs(3600), &["publish"]);
    let expired = token_for("alice", Duration::ZERO, &["publish"]);
    let garbage = "garbage-token-q7XkP2vZ9w".to_owned();
    let http = reqwest::Client::new();
    let get = |path: &str, bearer: Option<&str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // A stream with the token in the query, one with it in the header; both closed later.
    let mut stream = Subscriber::open(&base, &valid, "", None).await;
    stream.opening_position().await;
    let response = get("/v1/stream", Some(&valid)).await.unwrap();
    assert_eq!(response.status(), 200);
    let header_stream = response.bytes_stream();

    let cases: Vec<(String, Option<&str>, u16)> = vec![
        (format!("/v1/messages?token={valid}"), None, 200),
        ("/v1/messages".into(), Some(&valid), 200),
        ("/v1/messages".into(), Some(&expired), 401),
        (format!("/v1/messages?token={expired}"), None, 401),
        (format!("/v1/messages?token={garbage}"), None, 401),
        ("/v1/messages".into(), Some(&garbage), 401),
        (format!("/v1/stream?token={expired}&since_id=0"), None, 401),
        (format!("/v1/stream?token={garbage}"), None, 401),
        ("/v1/stream".into(), Some(&garbage), 401),
        (format!("/nowhere?token={valid}"), None, 404),
        (format!("/v1/messages?since_id=x&token={valid}"), None, 400),
    ];
    for (path, bearer, status) in &cases {
        let response = get(path, *bearer).await.unwrap();
        assert_eq!(response.status(), *status, "GET {path}");
    }
    let body = json!({"participants": ["bob"], "payload": {"text": "hi"}});
    let response = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&publisher)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = http
        .post(format!("{base}/v1/messages?token={publisher}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for (url, status) in [
        (format!("{base}/v1/messages?token={valid}"), 403),
        (format!("{base}/v1/messages?token={expired}"), 401),
        (format!("{base}/v1/messages?token={garbage}"), 401),
    ] {
        let response = http.post(url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), status);
    }
    // Both messages reach the open stream, then it closes.
    next_stored(&mut stream).await;
    next_stored(&mut stream).await;
    drop(stream);
    drop(header_stream);
    tokio::time::sleep(Duration::from_millis(100)).await;

    pgrelay_cluster::signal(child.0.id(), libc::SIGTERM).unwrap();
    let status = exit_within(&mut child.0, Duration::from_secs(8))
        .await
        .expect("no exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    // Colour codes would hide `token=` written as a highlighted field name.
    let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap());
    let _ = std::fs::remove_file(&log_path);
    println!(
        "{} log: {} bytes, {} lines",
        if json_format { "json" } else { "text" },
        log.len(),
        log.lines().count()
    );
    assert!(!log.trim().is_empty(), "the trace log is empty");
    let mut forbidden: Vec<(String, &str)> = vec![
        (SECRET.to_owned(), "the secret"),
        ("token=".to_owned(), "a query string with a token"),
        (garbage.clone(), "the garbage token"),
    ];
    for (name, token) in [
        ("valid", &valid),
        ("publish", &publisher),
        ("expired", &expired),
    ] {
        forbidden.push((token.clone(), name));
        // Any segment of it: a truncated token is still a leak.
        for segment in token.split('.') {
            forbidden.push((segment.to_owned(), name));
        }
    }
    for (needle, what) in forbidden {
        if let Some(at) = log.find(&needle) {
            let line = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!("the log contains {what} ({needle:?}):\n{}", &log[line..end]);
        }
    }
    if json_format {
        for line in log.lines().filter(|line| !line.trim().is_empty()) {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "not a JSON log line: {line}"
            );
        }
    }
}

/// At `PGRELAY_LOG=trace`, text logs never contain a token, the secret or `token=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_text_logs_carry_no_secrets() {
    logs_carry_no_secrets(false).await;
}

/// At `PGRELAY_LOG=trace`, JSON logs never contain a token, the secret or `token=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_json_logs_carry_no_secrets() {
    logs_carry_no_secrets(true).await;
}
