//! Reconnect storm (`bench --storm`): what a crash of one instance costs the survivor and the
//! database.
//!
//! 12,000 streams on instance A, messages flowing (200 a second, each to one random
//! participant); A is frozen (SIGSTOP), one message is written to every participant (A never
//! delivers it, so every stream has at least one message to catch up), and A is killed
//! (SIGKILL). Every stream then resumes on instance B with its `Last-Event-ID` at once. The run
//! reports the time from the kill until each stream has its message, whether anything was lost,
//! repeated or reordered, what the database ran (catch-up statements counted by
//! `pg_stat_statements`, tuples by `pg_stat_database`), B's peak memory (`VmHWM`), and the
//! latency of the messages written during the storm.
//!
//! One process may hold at most 20,000 open files here, so the streams live in a child process
//! of this benchmark (`bench --storm-streams A B COUNT`), which reports each delivery on stdout.
//! `PGRELAY_BENCH_RELAY=/path/to/pgrelay` runs another build of the relay (say, an older
//! commit's) against the same client.

use super::*;

use tokio::io::{AsyncBufReadExt, BufReader};

/// The argument that runs the storm.
pub(crate) const STORM: &str = "--storm";

/// The argument that makes this executable the storm's stream holder.
pub(crate) const STORM_STREAMS: &str = "--storm-streams";

/// Streams on instance A.
const STREAMS: u32 = 12_000;

/// Messages per second flowing throughout.
const RATE: u32 = 200;

/// Flow before the crash, and at least this long after it.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(10);

/// The target: every stream caught up within this of the kill.
const CATCH_UP_TARGET: Duration = Duration::from_secs(10);

/// Payload keys of the one message per participant written while A is frozen.
const MARKER_BASE: i64 = 1_000_000_000;

pub(crate) fn storm_main() -> ExitCode {
    let Some(runtime) = bench_runtime() else {
        return ExitCode::FAILURE;
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = storm() => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            _ = tokio::time::sleep(Duration::from_secs(600)) => Err("gave up after 10 minutes".into()),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: FAILED: messages were lost, repeated or reordered");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("bench: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What the holder reported.
#[derive(Default)]
struct Heard {
    /// (participant, key) → arrival times.
    arrivals: HashMap<(u32, i64), Vec<Instant>>,
    /// Participant → when its stream reopened on B.
    resumed: HashMap<u32, Instant>,
    problems: Vec<String>,
}

/// Runs the storm; `Ok(false)` when anything was lost, repeated or reordered.
async fn storm() -> Res<bool> {
    let relay_bin = match std::env::var_os("PGRELAY_BENCH_RELAY") {
        Some(path) => PathBuf::from(path),
        None => relay_binary(!std::env::args().any(|arg| arg == "--no-build"))?,
    };
    let files = raise_open_file_limit()?;
    let logs = LogDir::create()?;
    progress(format!(
        "storm: relay {}, open-file limit {files}, logs in {}",
        relay_bin.display(),
        logs.path.display()
    ));
    let cluster = TempCluster::start_with(&[
        ("max_connections", "500"),
        ("shared_buffers", "512MB"),
        ("shared_preload_libraries", "pg_stat_statements"),
    ])
    .await?;
    let admin = connect(&cluster.url("postgres"), "pgrelay-bench").await?;
    let url = create_database(&cluster, &admin, "bench_storm").await?;
    let db = connect(&url, "pgrelay-bench").await?;
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await?;

    let mut a = RelayChild::spawn(&relay_bin, &url, logs.file("relay-a.log"))?;
    let mut b = RelayChild::spawn(&relay_bin, &url, logs.file("relay-b.log"))?;
    a.wait_ready(Duration::from_secs(20)).await?;
    b.wait_ready(Duration::from_secs(20)).await?;

    progress(format!("storm: {STREAMS} streams on instance A…"));
    let mut holder = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            STORM_STREAMS,
            &a.addr.to_string(),
            &b.addr.to_string(),
            &STREAMS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.file("holder.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(holder.stdout.take().ok_or("no stdout")?).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
            .await
            .map_err(|_| "the holder did not open its streams in time")??
            .ok_or("the holder exited before its streams were open")?;
        if let Some(seconds) = line.strip_prefix("opened ") {
            progress(format!("  opened in {seconds} s"));
            break;
        }
        if let Some(error) = line.strip_prefix("failed ") {
            return Err(format!("the holder failed: {error}").into());
        }
    }
    let heard = Arc::new(Mutex::new(Heard::default()));
    let reader = {
        let heard = Arc::clone(&heard);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                let mut heard = heard.lock().unwrap();
                let mut fields = line.split(' ');
                match fields.next() {
                    Some("got") => {
                        let participant = fields.next().and_then(|f| f.parse().ok());
                        let key = fields.next().and_then(|f| f.parse().ok());
                        if let (Some(participant), Some(key)) = (participant, key) {
                            heard
                                .arrivals
                                .entry((participant, key))
                                .or_default()
                                .push(at);
                        }
                    }
                    Some("resumed") => {
                        if let Some(participant) = fields.next().and_then(|f| f.parse().ok()) {
                            heard.resumed.insert(participant, at);
                        }
                    }
                    _ => heard.problems.push(line),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = b.rss_kib()?;

    // The flow: one message a tick to a random participant, each committed alone.
    let writer = connect(&url, "pgrelay-bench").await?;
    let insert = writer
        .prepare("INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, $2)")
        .await?;
    let stop_flow = Arc::new(AtomicU32::new(0));
    let flow = {
        let stop_flow = Arc::clone(&stop_flow);
        tokio::spawn(async move {
            let mut written: Vec<(u32, i64, Instant)> = Vec::new();
            let mut pick = SplitMix(7);
            let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
            let mut key = 0i64;
            while stop_flow.load(Ordering::Relaxed) == 0 {
                tick.tick().await;
                key += 1;
                let participant = (pick.next() % u64::from(STREAMS)) as u32;
                let to = vec![format!("p{participant:05}")];
                let payload = json!({"s": key, "text": TEXT});
                if writer.execute(&insert, &[&to, &payload]).await.is_ok() {
                    written.push((participant, key, Instant::now()));
                }
            }
            written
        })
    };
    tokio::time::sleep(BEFORE).await;

    progress("storm: A frozen, a message to every participant, A killed…");
    pgrelay_cluster::signal(a.pid(), libc::SIGSTOP)?;
    db.batch_execute(&format!(
        "INSERT INTO pgrelay.messages (participants, payload) \
         SELECT ARRAY['p' || lpad(i::text, 5, '0')], jsonb_build_object('s', {MARKER_BASE} + i) \
           FROM generate_series(0, {}) AS i",
        STREAMS - 1
    ))
    .await?;
    // Let A's listener be woken for them (it cannot run): B delivers nothing to A's streams.
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let database_before = database_counters(&db).await?;
    let metrics_before = storm_metrics(b.addr).await;
    let killed = Instant::now();
    a.stop();

    // The flow goes on for AFTER, and until every stream has its missed message (or a minute).
    let deadline = killed + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let caught_up = {
            let heard = heard.lock().unwrap();
            (0..STREAMS)
                .filter(|p| {
                    heard
                        .arrivals
                        .contains_key(&(*p, MARKER_BASE + i64::from(*p)))
                })
                .count()
        };
        if (caught_up == STREAMS as usize && killed.elapsed() >= AFTER) || Instant::now() > deadline
        {
            break;
        }
    }
    stop_flow.store(1, Ordering::Relaxed);
    let written = flow.await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let database_after = database_counters(&db).await?;
    let metrics_after = storm_metrics(b.addr).await;
    let statements = statement_counts(&db).await?;
    let peak_kib = peak_rss_kib(b.pid())?;
    let busiest = db
        .query(
            "SELECT calls, round(mean_exec_time::numeric, 3)::text, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) \
               FROM pg_stat_statements ORDER BY calls DESC LIMIT 6",
            &[],
        )
        .await?;
    drop(holder.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), holder.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    b.stop();

    // Exactness: every message once to its participant, nothing else.
    let heard = std::mem::take(&mut *heard.lock().unwrap());
    let mut expected: Vec<(u32, i64)> = written.iter().map(|(p, k, _)| (*p, *k)).collect();
    expected.extend((0..STREAMS).map(|p| (p, MARKER_BASE + i64::from(p))));
    let lost = expected
        .iter()
        .filter(|wanted| !heard.arrivals.contains_key(wanted))
        .count();
    let repeated: usize = heard.arrivals.values().map(|times| times.len() - 1).sum();
    let expected_set: std::collections::HashSet<&(u32, i64)> = expected.iter().collect();
    let misrouted = heard
        .arrivals
        .keys()
        .filter(|got| !expected_set.contains(got))
        .count();
    let caught_up: Vec<f64> = (0..STREAMS)
        .filter_map(|p| heard.arrivals.get(&(p, MARKER_BASE + i64::from(p))))
        .map(|times| times[0].saturating_duration_since(killed).as_secs_f64())
        .collect();
    let within = caught_up
        .iter()
        .filter(|s| **s <= CATCH_UP_TARGET.as_secs_f64())
        .count();
    let resumed: Vec<f64> = heard
        .resumed
        .values()
        .map(|at| at.saturating_duration_since(killed).as_secs_f64())
        .collect();
    let during: Vec<f64> = written
        .iter()
        .filter(|(_, _, committed)| *committed > killed)
        .filter_map(|(p, k, committed)| {
            let at = heard.arrivals.get(&(*p, *k))?.first()?;
            Some(micros_between(*committed, *at))
        })
        .collect();
    let seconds = |values: &[f64]| {
        let p = Percentiles::of(&values.iter().map(|s| s * 1e6).collect::<Vec<_>>());
        format!("median {}, p99 {}, max {}", ms(p.p50), ms(p.p99), ms(p.max))
    };
    let counter = |name: &str| {
        metrics_after.get(name).copied().unwrap_or(0.0)
            - metrics_before.get(name).copied().unwrap_or(0.0)
    };
    let streams = f64::from(STREAMS);
    println!(
        "## Reconnect storm ({STREAMS} streams, {RATE} messages/s, relay {})",
        relay_bin.display()
    );
    println!();
    println!(
        "- kill → resumed on B: {} (of {} streams)",
        seconds(&resumed),
        resumed.len()
    );
    println!(
        "- kill → caught up (its missed message received): {}; {within} of {STREAMS} within {} s",
        seconds(&caught_up),
        CATCH_UP_TARGET.as_secs()
    );
    println!("- lost {lost}, repeated {repeated}, misrouted {misrouted}, out of order {} (of {} deliveries expected)", heard.problems.len(), expected.len());
    println!(
        "- messages written during the storm ({}): commit → SSE {}",
        during.len(),
        Percentiles::of(&during).describe()
    );
    println!(
        "- catch-up statements (pg_stat_statements, reading `pgrelay.retention r`): {} = {:.3} per resuming stream, {} rows returned",
        statements.catch_up_calls, statements.catch_up_calls as f64 / streams, statements.catch_up_rows
    );
    println!(
        "- of which streams' own page queries {} (mean {:.3} ms), shared range reads {} (mean {:.3} ms)",
        statements.single.0, statements.single.1, statements.shared.0, statements.shared.1
    );
    println!(
        "- position checks {} ({:.3} per stream), access reads {} ({:.3} per stream); all statements {} ({:.2} per stream)",
        statements.bounds_calls, statements.bounds_calls as f64 / streams,
        statements.access_calls, statements.access_calls as f64 / streams,
        statements.all_calls, statements.all_calls as f64 / streams
    );
    println!(
        "- database tuples read (pg_stat_database tup_returned + tup_fetched): {:.1} M; messages table: {} sequential scans reading {:.1} M tuples",
        (database_after.tuples - database_before.tuples) as f64 / 1e6,
        database_after.seq_scans - database_before.seq_scans,
        (database_after.seq_tuples - database_before.seq_tuples) as f64 / 1e6
    );
    println!(
        "- B's /metrics: catch-up queries {}, shared reads {}, rows read by them {}, stream catch-ups they served {}",
        counter("pgrelay_catch_up_queries_total"),
        counter("pgrelay_shared_catch_up_reads_total"),
        counter("pgrelay_shared_catch_up_rows_total"),
        counter("pgrelay_shared_catch_up_streams_total"),
    );
    println!(
        "- B's memory: {} MiB before, peak {} MiB",
        rss_before / 1024,
        peak_kib / 1024
    );
    println!("- load average at the end: {}", load_average());
    println!("- the statements run most often:");
    for row in busiest {
        let (calls, mean, query): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        println!("  - {calls} × {mean} ms: `{query}`");
    }
    for problem in heard.problems.iter().take(10) {
        println!("- problem: {problem}");
    }
    drop(cluster);
    let exact = lost == 0 && repeated == 0 && misrouted == 0 && heard.problems.is_empty();
    if exact {
        logs.remove();
    }
    Ok(lost == 0 && repeated == 0 && misrouted == 0 && heard.problems.is_empty())
}

/// Whole-database tuple counters, and the messages table's sequential scans.
struct DatabaseCounters {
    tuples: i64,
    seq_scans: i64,
    seq_tuples: i64,
}

async fn database_counters(db: &Client) -> Res<DatabaseCounters> {
    // Statistics reach the views when each backend reports; a fresh snapshot each time.
    db.batch_execute("SELECT pg_stat_clear_snapshot()").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let row = db
        .query_one(
            "SELECT (SELECT tup_returned + tup_fetched FROM pg_stat_database \
                      WHERE datname = current_database()), \
                    (SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables \
                      WHERE schemaname = 'pgrelay' AND relname = 'messages'), \
                    (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
                      WHERE schemaname = 'pgrelay' AND relname = 'messages')",
            &[],
        )
        .await?;
    Ok(DatabaseCounters {
        tuples: row.get(0),
        seq_scans: row.get(1),
        seq_tuples: row.get(2),
    })
}

/// Statements since the reset, by what they read.
struct Statements {
    catch_up_calls: i64,
    catch_up_rows: i64,
    bounds_calls: i64,
    access_calls: i64,
    all_calls: i64,
    /// Calls and mean execution time (ms) of the streams' own page queries and of the shared
    /// range reads.
    single: (i64, f64),
    shared: (i64, f64),
}

async fn statement_counts(db: &Client) -> Res<Statements> {
    let row = db
        .query_one(
            "SELECT coalesce(sum(calls) FILTER (WHERE query LIKE '%pgrelay.retention r%'), 0)::int8, \
                    coalesce(sum(rows) FILTER (WHERE query LIKE '%pgrelay.retention r%'), 0)::int8, \
                    coalesce(sum(calls) FILTER (WHERE query LIKE '%message_id_seq%'), 0)::int8, \
                    coalesce(sum(calls) FILTER (WHERE query LIKE '%member_rooms%'), 0)::int8, \
                    coalesce(sum(calls), 0)::int8, \
                    coalesce(sum(calls) FILTER (WHERE query LIKE '%pgrelay.retention r%' \
                                                  AND (query LIKE '%participants @>%' OR query LIKE '%participants &&%')), 0)::int8, \
                    coalesce(sum(total_exec_time) FILTER (WHERE query LIKE '%pgrelay.retention r%' \
                                                  AND (query LIKE '%participants @>%' OR query LIKE '%participants &&%')), 0)::float8, \
                    coalesce(sum(calls) FILTER (WHERE query LIKE '%min(id)%page.*%'), 0)::int8, \
                    coalesce(sum(total_exec_time) FILTER (WHERE query LIKE '%min(id)%page.*%'), 0)::float8 \
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database \
                                                      WHERE datname = current_database())",
            &[],
        )
        .await?;
    Ok(Statements {
        catch_up_calls: row.get(0),
        catch_up_rows: row.get(1),
        bounds_calls: row.get(2),
        access_calls: row.get(3),
        all_calls: row.get(4),
        single: (
            row.get(5),
            row.get::<_, f64>(6) / (row.get::<_, i64>(5).max(1) as f64),
        ),
        shared: (
            row.get(7),
            row.get::<_, f64>(8) / (row.get::<_, i64>(7).max(1) as f64),
        ),
    })
}

/// The relay's counters (absent ones, say of an older build, are missing).
async fn storm_metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let Ok((_, body)) = http_get(addr, "/metrics", None).await else {
        return HashMap::new();
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The process's peak resident set size (`VmHWM`), KiB.
fn peak_rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/<pid>/status".into())
}

/// The holder's side: `bench --storm-streams A B COUNT` opens `COUNT` streams of participants
/// `p00000…` on A, prints `opened SECONDS`, and reports `got PARTICIPANT KEY` per message and
/// `resumed PARTICIPANT` when a stream reopened on B (with `Last-Event-ID`) after A went away;
/// anything else it prints is a problem. It ends when its stdin closes.
pub(crate) fn storm_streams_main(args: &[String]) -> ExitCode {
    run_child(storm_streams(args))
}

async fn storm_streams(args: &[String]) -> Res<()> {
    let [a, b, count] = args else {
        return Err(format!("usage: bench {STORM_STREAMS} A B COUNT").into());
    };
    let (a, b): (SocketAddr, SocketAddr) = (a.parse()?, b.parse()?);
    let count: u32 = count.parse()?;
    raise_open_file_limit()?;
    let keys = Keys::from_secret_list(SECRET)?;
    let names = participant_names();
    let started = Instant::now();
    let opened: Vec<(u32, String, OpenStream)> = futures::stream::iter(0..count)
        .map(|p| {
            let token = keys.mint(&names[p as usize], Duration::from_secs(7200), &[]);
            async move {
                let stream = open_stream(a, &token, None)
                    .await
                    .map_err(|error| format!("stream {p}: {error}"))?;
                Ok::<_, String>((p, token, stream))
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await?;
    println!("opened {:.1}", started.elapsed().as_secs_f64());
    let tasks: Vec<AbortHandle> = opened
        .into_iter()
        .map(|(p, token, stream)| tokio::spawn(follow(p, token, stream, b)).abort_handle())
        .collect();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// Reads participant `p`'s stream; when it ends, resumes on `b` with `Last-Event-ID`.
async fn follow(p: u32, token: String, stream: OpenStream, b: SocketAddr) {
    let mut last_id = stream.position;
    let mut resumed = false;
    let mut stream = stream;
    loop {
        read_until_end(p, &mut stream, &mut last_id).await;
        if resumed {
            println!("problem {p}: the stream on B ended");
            return;
        }
        // The socket to A is closed before the one to B opens: the open-files limit holds
        // one socket per stream, not two.
        drop(stream);
        // A is gone: resume on B at once, as a browser's EventSource does.
        let request = format!(
            "GET /v1/stream?token={token} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {last_id}\r\n\r\n"
        );
        stream = loop {
            let opened = match TcpStream::connect(b).await {
                Ok(socket) => send_stream_request(socket, &request).await,
                Err(error) => Err(error.into()),
            };
            match opened {
                Ok(reopened) => break reopened,
                Err(error) => {
                    eprintln!("stream {p}: resuming on B failed, retrying: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        };
        resumed = true;
        println!("resumed {p}");
    }
}

/// Reports every message of `stream` (checking ids increase past `last_id`) until it ends.
async fn read_until_end(p: u32, stream: &mut OpenStream, last_id: &mut i64) {
    let mut buffer = vec![0u8; 4096];
    let mut items = std::mem::take(&mut stream.items);
    loop {
        for item in items.drain(..) {
            let SseItem::Event(event) = item else {
                continue;
            };
            let Some(data) = event.data.as_deref().filter(|_| !event.is_opening()) else {
                continue;
            };
            let Some(id) = event_id(&event) else { continue }; // presence
            if id <= *last_id {
                println!("problem {p}: id {id} after {last_id}");
            }
            *last_id = id;
            match payload_key(data) {
                Some(key) if event.event.as_deref() == Some("message") => println!("got {p} {key}"),
                _ => println!("problem {p}: unexpected {event:?}"),
            }
        }
        match stream.socket.read(&mut buffer).await {
            Ok(read) if read > 0 => {
                if let Err(error) = stream.decoder.feed(&buffer[..read], &mut items) {
                    println!("problem {p}: {error}");
                    return;
                }
            }
            _ => return,
        }
    }
}
