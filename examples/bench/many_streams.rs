//! Many streams: 19,000 on one instance, and 100,000 over six instances on one database.
//!
//! One process may hold at most 20,000 open files here, so the client side runs in child
//! processes of this benchmark (`bench --hold-streams …`), each holding one instance's streams
//! from its own 127.0.0.x source address (one address runs out of ephemeral ports near
//! 28,000 connections), and reporting its deliveries on stdout.

use super::*;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

/// The argument that makes this executable a stream holder.
pub(crate) const HOLD_STREAMS: &str = "--hold-streams";

/// Streams on the single instance: as many as its 20,000 files leave room for.
pub(crate) const ONE_INSTANCE_STREAMS: u32 = 19_000;

/// Streams over the fleet, and its instances.
pub(crate) const FLEET_STREAMS: u32 = 100_000;
pub(crate) const FLEET_INSTANCES: u32 = 6;

/// How long holders may take to open their streams.
const OPEN_PATIENCE: Duration = Duration::from_secs(300);

/// The figures of the phase.
pub(crate) struct ManyStreams {
    /// The single instance's RSS (KiB) before and after its [`ONE_INSTANCE_STREAMS`] opened.
    pub(crate) one_rss: (u64, u64),
    /// Seconds the single instance's streams took to open.
    pub(crate) one_opened_seconds: f64,
    /// The fleet: RSS before and after (KiB) of each instance.
    pub(crate) rss: Vec<(u64, u64)>,
    /// Seconds from the first connect to the last stream's opening block.
    pub(crate) connect_seconds: f64,
    /// The 1,000 messages to random participants of the fleet.
    pub(crate) plan: Plan,
    pub(crate) collected: Collected,
    /// Commit → arrival at this process (through a holder's stdout).
    pub(crate) latencies: Percentiles,
    /// `/readyz` checks of the fleet's instances while it ran, and how many did not answer 200.
    pub(crate) readyz_checks: u64,
    pub(crate) readyz_failures: u64,
}

impl ManyStreams {
    /// RSS growth per stream of the single instance, KiB.
    pub(crate) fn kib_per_stream_one(&self) -> f64 {
        let (before, after) = self.one_rss;
        (after as f64 - before as f64) / f64::from(ONE_INSTANCE_STREAMS)
    }

    /// RSS growth per stream over the fleet, KiB.
    pub(crate) fn kib_per_stream_fleet(&self) -> f64 {
        let grown: f64 = self.rss.iter().map(|(b, a)| *a as f64 - *b as f64).sum();
        grown / f64::from(FLEET_STREAMS)
    }

    pub(crate) fn complete(&self) -> bool {
        let collected = &self.collected;
        collected.received == self.plan.count * RECIPIENTS
            && collected.duplicates == 0
            && collected.misrouted == 0
    }
}

pub(crate) async fn many_streams_phase(bench: &Bench<'_>) -> Res<ManyStreams> {
    let Bench {
        cluster,
        admin,
        relay_bin,
        logs,
        names,
        ..
    } = *bench;
    let url = create_database(cluster, admin, "bench_one_instance").await?;
    let db = connect(&url, "pgrelay-bench").await?;

    progress(format!(
        "many streams: {ONE_INSTANCE_STREAMS} on one instance…"
    ));
    let mut relay = RelayChild::spawn(relay_bin, &url, logs.file("relay-19k.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.rss_kib()?;
    let (hub, _heard) = Hub::start();
    let mut holder = Holder::spawn(relay.addr, 0, 0..ONE_INSTANCE_STREAMS, logs)?;
    let opened = holder.opened().await?;
    presence_settled(&db, i64::from(ONE_INSTANCE_STREAMS), OPEN_PATIENCE).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = relay.rss_kib()?;
    progress(format!(
        "  opened in {opened:.1} s; RSS {rss_before} -> {rss_after} KiB ({:.2} KiB per stream)",
        (rss_after as f64 - rss_before as f64) / f64::from(ONE_INSTANCE_STREAMS)
    ));
    holder.stop(&hub).await;
    relay.stop();
    let one_rss = (rss_before, rss_after);

    // A database of its own: the killed instance's presence rows linger until they expire.
    let url = create_database(cluster, admin, "bench_fleet_streams").await?;
    let db = connect(&url, "pgrelay-bench").await?;

    progress(format!(
        "many streams: {FLEET_STREAMS} over {FLEET_INSTANCES} instances…"
    ));
    let mut relays = Vec::new();
    for n in 0..FLEET_INSTANCES {
        let log = logs.file(&format!("relay-100k-{n}.log"));
        let mut relay = RelayChild::spawn(relay_bin, &url, log)?;
        relay.wait_ready(Duration::from_secs(20)).await?;
        relays.push(relay);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = relays.iter().map(RelayChild::rss_kib).collect::<Res<_>>()?;
    let addrs: Vec<SocketAddr> = relays.iter().map(|relay| relay.addr).collect();
    let readyz = ReadyzWatch::start(addrs);

    let (hub, mut heard) = Hub::start();
    let share = FLEET_STREAMS / FLEET_INSTANCES;
    let started = Instant::now();
    let mut holders = Vec::new();
    for (n, relay) in relays.iter().enumerate() {
        let n = n as u32;
        let end = if n + 1 == FLEET_INSTANCES {
            FLEET_STREAMS
        } else {
            (n + 1) * share
        };
        holders.push(Holder::spawn(relay.addr, n + 1, n * share..end, logs)?);
    }
    for holder in &mut holders {
        holder.opened().await?;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let settled = presence_settled(&db, i64::from(FLEET_STREAMS), OPEN_PATIENCE).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after: Vec<u64> = relays.iter().map(RelayChild::rss_kib).collect::<Res<_>>()?;
    progress(format!(
        "  all open in {connect_seconds:.1} s (presence {:.1} s later); RSS per instance {:?} KiB",
        settled.as_secs_f64(),
        rss_after
    ));
    let forwarders: Vec<_> = holders
        .iter_mut()
        .map(|holder| holder.forward(Arc::clone(&hub)))
        .collect();

    progress("  1,000 messages to random participants of the fleet…");
    let plan = Plan::new(LATENCY_RATE, Duration::from_secs(1), 1, FLEET_STREAMS);
    let deadline = Instant::now() + plan.duration() + Duration::from_secs(30);
    let (written, collected) = tokio::join!(
        write_on_schedule(&url, &plan, names),
        collect(&mut heard, &plan, deadline)
    );
    let written = written?;
    let mut latencies = Vec::new();
    for (seq, slots) in collected.arrivals.iter().enumerate() {
        for at in slots.iter().flatten() {
            latencies.push(micros_between(written.commits[seq], *at));
        }
    }
    let (readyz_checks, readyz_failures) = readyz.stop().await;
    for holder in &mut holders {
        holder.stop(&hub).await;
    }
    for forwarder in forwarders {
        let _ = forwarder.await;
    }
    for relay in &mut relays {
        relay.stop();
    }
    let phase = ManyStreams {
        one_rss,
        one_opened_seconds: opened,
        rss: rss_before.into_iter().zip(rss_after).collect(),
        connect_seconds,
        plan,
        collected,
        latencies: Percentiles::of(&latencies),
        readyz_checks,
        readyz_failures,
    };
    progress(format!(
        "  {}/{} delivered, {} duplicates, {} misrouted; /readyz {} of {} checks failed",
        phase.collected.received,
        phase.plan.count * RECIPIENTS,
        phase.collected.duplicates,
        phase.collected.misrouted,
        readyz_failures,
        readyz_checks
    ));
    let closed = hub.closed.load(Ordering::Relaxed);
    if closed > 0 {
        return Err(format!(
            "many streams: {closed} streams ended while they should have been open"
        )
        .into());
    }
    if let Some(problem) = hub.take_problems().into_iter().next() {
        return Err(format!("many streams: {problem}").into());
    }
    Ok(phase)
}

/// Polls every instance's `/readyz` four times a second until stopped.
struct ReadyzWatch {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl ReadyzWatch {
    fn start(addrs: Vec<SocketAddr>) -> ReadyzWatch {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let (mut checks, mut failures) = (0, 0);
            loop {
                for addr in &addrs {
                    let check = tokio::time::timeout(
                        Duration::from_secs(5),
                        http_get(*addr, "/readyz", None),
                    );
                    checks += 1;
                    if !matches!(check.await, Ok(Ok((200, _)))) {
                        failures += 1;
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return (checks, failures),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        ReadyzWatch { stop, task }
    }

    /// Checks made, and checks that did not answer 200 within 5 s.
    async fn stop(self) -> (u64, u64) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or((0, 1))
    }
}

/// A child process of this benchmark holding streams to one instance.
struct Holder {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    lines: Option<Lines<BufReader<ChildStdout>>>,
}

impl Holder {
    /// Starts a holder for the participants `range` of `relay`, from source 127.0.0.(2 + n).
    fn spawn(relay: SocketAddr, n: u32, range: Range<u32>, logs: &LogDir) -> Res<Holder> {
        let source = Ipv4Addr::new(127, 0, 0, 2 + n as u8);
        let log = std::fs::File::create(logs.file(&format!("holder-{}-{n}.log", relay.port())))?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(HOLD_STREAMS)
            .args([
                relay.to_string(),
                source.to_string(),
                range.start.to_string(),
                range.len().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the holder has no stdout")?;
        Ok(Holder {
            stdin: child.stdin.take(),
            lines: Some(BufReader::new(stdout).lines()),
            child,
        })
    }

    /// Waits until every stream is open; returns the seconds the holder took.
    async fn opened(&mut self) -> Res<f64> {
        let lines = self.lines.as_mut().ok_or("the holder's output is taken")?;
        loop {
            let line = tokio::time::timeout(OPEN_PATIENCE, lines.next_line())
                .await
                .map_err(|_| "a holder did not open its streams in time")??
                .ok_or("a holder exited before its streams were open")?;
            if let Some(seconds) = line.strip_prefix("opened ") {
                return Ok(seconds.parse()?);
            }
            if let Some(error) = line.strip_prefix("failed ") {
                return Err(format!("a holder failed: {error}").into());
            }
        }
    }

    /// Passes the holder's deliveries and problems to `hub` until it exits.
    fn forward(&mut self, hub: Arc<Hub>) -> tokio::task::JoinHandle<()> {
        let lines = self.lines.take();
        tokio::spawn(async move {
            let Some(mut lines) = lines else { return };
            while let Ok(Some(line)) = lines.next_line().await {
                report_line(&line, &hub);
            }
        })
    }

    /// Closes the holder's streams (it reports what it has left) and waits for it to exit.
    async fn stop(&mut self, hub: &Hub) {
        self.stdin = None;
        if let Some(lines) = self.lines.as_mut() {
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
            {
                report_line(&line, hub);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// One line of a holder's report: `got PARTICIPANT KEY`, `problem TEXT` or `closed N`.
fn report_line(line: &str, hub: &Hub) {
    let at = Instant::now();
    if let Some(rest) = line.strip_prefix("got ") {
        let mut fields = rest.split(' ').map(str::parse::<i64>);
        if let (Some(Ok(participant)), Some(Ok(key))) = (fields.next(), fields.next()) {
            let _ = hub.arrivals.send(Arrival {
                key,
                participant: participant as u32,
                at,
            });
        }
    } else if let Some(problem) = line.strip_prefix("problem ") {
        hub.problem(problem.to_owned());
    } else if let Some(closed) = line.strip_prefix("closed ") {
        hub.closed
            .fetch_add(closed.parse().unwrap_or(1), Ordering::Relaxed);
    }
}

/// Runs a child process's work on a multi-threaded runtime; a failure is printed as
/// `failed …` on stdout, where the parent reads the child's reports.
pub(crate) fn run_child(work: impl std::future::Future<Output = Res<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            println!("failed cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            println!("failed {error}");
            ExitCode::FAILURE
        }
    }
}

/// The holder's side: `bench --hold-streams RELAY SOURCE FIRST COUNT` opens `COUNT` streams of
/// participants `FIRST…` to `RELAY` from `SOURCE`, prints `opened COUNT SECONDS`, then a line
/// per delivery until its stdin closes.
pub(crate) fn hold_streams_main(args: &[String]) -> ExitCode {
    run_child(hold_streams(args))
}

async fn hold_streams(args: &[String]) -> Res<()> {
    let [relay, source, first, count] = args else {
        return Err(format!("usage: bench {HOLD_STREAMS} RELAY SOURCE FIRST COUNT").into());
    };
    let (relay, source): (SocketAddr, IpAddr) = (relay.parse()?, source.parse()?);
    let (first, count): (u32, u32) = (first.parse()?, count.parse()?);
    raise_open_file_limit()?;
    let keys = Keys::from_secret_list(SECRET)?;
    let names = participant_names();
    let (hub, mut heard) = Hub::start();
    let mut subscribers = Subscribers::default();
    let took = subscribers
        .open_from(
            Some(source),
            relay,
            &keys,
            &names,
            first..first + count,
            &hub,
        )
        .await?;
    println!("opened {}", took.as_secs_f64());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            arrival = heard.recv() => match arrival {
                Some(arrival) => println!("got {} {}", arrival.participant, arrival.key),
                None => break,
            },
            line = stdin.next_line() => match line {
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    for problem in hub.take_problems() {
        println!("problem {problem}");
    }
    println!("closed {}", hub.closed.load(Ordering::Relaxed));
    Ok(())
}
