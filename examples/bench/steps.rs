//! Runs through the relay.

use super::*;

/// What a relay run needs.
pub(crate) struct RelayCtx<'a> {
    pub(crate) url: &'a str,
    pub(crate) relay: &'a RelayChild,
    pub(crate) names: &'a Names,
    pub(crate) db: &'a Client,
}

/// Deliveries of one run, by sequence number and recipient slot.
pub(crate) struct Collected {
    pub(crate) arrivals: Vec<[Option<Instant>; RECIPIENTS]>,
    pub(crate) received: usize,
    pub(crate) duplicates: usize,
    pub(crate) misrouted: usize,
}

/// Takes arrivals until every delivery of `plan` is in, the subscribers fall silent, or
/// `deadline`; then watches a little longer for duplicates.
pub(crate) async fn collect(
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    plan: &Plan,
    deadline: Instant,
) -> Collected {
    let expected = plan.count * RECIPIENTS;
    let mut collected = Collected {
        arrivals: vec![[None; RECIPIENTS]; plan.count],
        received: 0,
        duplicates: 0,
        misrouted: 0,
    };
    let record = |arrival: Arrival, collected: &mut Collected| {
        // Arrivals of an earlier run (late deliveries of a failed step) are ignored.
        let Some(seq) = plan.sequence_number(arrival.key) else {
            return;
        };
        let slot = plan
            .recipients
            .get(seq)
            .and_then(|to| to.iter().position(|&r| r == arrival.participant));
        match slot {
            None => collected.misrouted += 1,
            Some(slot) if collected.arrivals[seq][slot].is_some() => collected.duplicates += 1,
            Some(slot) => {
                collected.arrivals[seq][slot] = Some(arrival.at);
                collected.received += 1;
            }
        }
    };
    while collected.received < expected {
        let wait = (Instant::now() + SILENCE).min(deadline);
        match tokio::time::timeout_at(wait.into(), heard.recv()).await {
            Ok(Some(arrival)) => record(arrival, &mut collected),
            _ => break,
        }
    }
    let watch = Instant::now() + DUPLICATE_WATCH;
    while let Ok(Some(arrival)) = tokio::time::timeout_at(watch.into(), heard.recv()).await {
        record(arrival, &mut collected);
    }
    collected
}

/// One run through the relay: a latency phase or a throughput step.
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) rows: usize,
    pub(crate) messages: usize,
    pub(crate) expected: usize,
    pub(crate) received: usize,
    pub(crate) duplicates: usize,
    pub(crate) misrouted: usize,
    pub(crate) latencies: Percentiles,
    pub(crate) lag: Percentiles,
    /// Messages sent per second: the writers' pace, from the first due time to the last send.
    pub(crate) achieved: f64,
    pub(crate) cpu: CpuUse,
    /// Database CPU seconds: the writers' backends, the relay's pool backends (catch-ups,
    /// presence) and its LISTEN backend (notifications and the dispatcher's fetches).
    pub(crate) db_writers: f64,
    pub(crate) db_pool: f64,
    pub(crate) db_listen: f64,
    /// Share of messages within `SHARE_BOUNDS` from commit to the relay's dispatch (its own
    /// histogram), and of deliveries end to end.
    pub(crate) dispatched_shares: Vec<f64>,
    pub(crate) delivered_shares: Vec<f64>,
}

impl Step {
    pub(crate) fn complete(&self) -> bool {
        self.received == self.expected && self.duplicates == 0 && self.misrouted == 0
    }

    pub(crate) fn passes(&self) -> bool {
        self.complete()
            && self.latencies.p99 <= P99_LIMIT_MS * 1000.0
            && self.achieved >= KEPT_SCHEDULE * self.rate
    }

    /// Why a step failed.
    pub(crate) fn why(&self) -> String {
        let mut reasons = Vec::new();
        if !self.complete() {
            reasons.push("deliveries missing".to_owned());
        }
        if self.latencies.p99 > P99_LIMIT_MS * 1000.0 {
            reasons.push(format!("p99 over {P99_LIMIT_MS} ms"));
        }
        if self.achieved < KEPT_SCHEDULE * self.rate {
            reasons.push("writers fell behind".to_owned());
        }
        reasons.join(", ")
    }

    pub(crate) fn delivery_problem(&self) -> String {
        format!(
            "{} of {} deliveries arrived, {} duplicates, {} to the wrong participant",
            self.received, self.expected, self.duplicates, self.misrouted
        )
    }

    pub(crate) fn one_line(&self) -> String {
        format!(
            "{:.0} msg/s x {} rows/tx: p50/p90/p99/max {}; {}/{} delivered; writers {:.0} msg/s, \
             lag p99 {} max {}; relay {:.0}% ({:.0}% sys) bench {:.0}% machine {}; \
             per message: relay {:.0} µs, DB writers {:.0} µs, relay pool {:.0} µs, LISTEN (with fetches) {:.0} µs",
            self.rate,
            self.rows,
            self.latencies.describe(),
            self.received,
            self.expected,
            self.achieved,
            ms(self.lag.p99),
            ms(self.lag.max),
            self.cpu.relay_cores * 100.0,
            self.cpu.relay_system_cores * 100.0,
            self.cpu.bench_cores * 100.0,
            self.cpu.machine(),
            self.per_message_us(self.cpu.relay_cores * self.cpu.seconds),
            self.per_message_us(self.db_writers),
            self.per_message_us(self.db_pool),
            self.per_message_us(self.db_listen),
        )
    }

    /// CPU seconds spread over the step's messages, in µs each.
    pub(crate) fn per_message_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.messages as f64
    }
}

pub(crate) async fn relay_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    plan: Plan,
) -> Res<Step> {
    const RELAY_BACKENDS: [&str; 2] = ["pgrelay", "pgrelay-listen"];
    let db_before = DbCpu::take(ctx.db, &RELAY_BACKENDS).await?;
    let histogram_before = commit_to_send(ctx.relay.addr).await?;
    let before = CpuSnapshot::take(Some(ctx.relay));
    let deadline = Instant::now() + plan.duration() + Duration::from_secs(20);
    let (written, collected) = tokio::join!(
        write_on_schedule(ctx.url, &plan, ctx.names),
        collect(heard, &plan, deadline)
    );
    let cpu = before.until(&CpuSnapshot::take(Some(ctx.relay)));
    let histogram_after = commit_to_send(ctx.relay.addr).await?;
    let db_used = DbCpu::take(ctx.db, &RELAY_BACKENDS)
        .await?
        .since(&db_before);
    let written = written?;
    let mut latencies = Vec::with_capacity(collected.received);
    for (seq, slots) in collected.arrivals.iter().enumerate() {
        for at in slots.iter().flatten() {
            latencies.push(micros_between(written.commits[seq], *at));
        }
    }
    // On schedule, the last transaction goes out one transaction-interval before the end of
    // the schedule; a writer that fell behind sends it later.
    let span = written
        .last_send
        .duration_since(written.start)
        .as_secs_f64()
        + plan.rows as f64 / plan.rate;
    Ok(Step {
        rate: plan.rate,
        rows: plan.rows,
        messages: plan.count,
        expected: plan.count * RECIPIENTS,
        received: collected.received,
        duplicates: collected.duplicates,
        misrouted: collected.misrouted,
        latencies: Percentiles::of(&latencies),
        delivered_shares: latency_shares(&latencies),
        dispatched_shares: histogram_shares(&histogram_before, &histogram_after),
        lag: Percentiles::of(&written.lags_us),
        achieved: plan.count as f64 / span,
        cpu,
        db_writers: written.db_seconds,
        db_pool: db_used.get("pgrelay").copied().unwrap_or(0.0),
        db_listen: db_used.get("pgrelay-listen").copied().unwrap_or(0.0),
    })
}

/// Upper bounds (seconds) at which latency shares are compared.
pub(crate) const SHARE_BOUNDS: [f64; 4] = [0.001, 0.0025, 0.005, 0.01];

/// The relay's `pgrelay_commit_to_send_seconds` histogram (commit, as stamped by the trigger,
/// to the dispatcher handing the message to the streams' inboxes): cumulative counts by upper
/// bound in seconds.
pub(crate) async fn commit_to_send(addr: SocketAddr) -> Res<Vec<(f64, u64)>> {
    let (status, body) = http_get(addr, "/metrics", None).await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}").into());
    }
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("pgrelay_commit_to_send_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect())
}

/// The share of observations at or below each of `SHARE_BOUNDS`, from two histogram readings.
pub(crate) fn histogram_shares(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<f64> {
    let count = |reading: &[(f64, u64)], bound: f64| {
        reading
            .iter()
            .find(|(b, _)| *b == bound || (*b - bound).abs() < 1e-12)
            .map_or(0, |(_, c)| *c)
    };
    let total = count(after, f64::INFINITY).saturating_sub(count(before, f64::INFINITY));
    SHARE_BOUNDS
        .iter()
        .map(|&bound| {
            let within = count(after, bound).saturating_sub(count(before, bound));
            within as f64 / total.max(1) as f64
        })
        .collect()
}

/// The share of latencies (µs) at or below each of `SHARE_BOUNDS`.
pub(crate) fn latency_shares(latencies_us: &[f64]) -> Vec<f64> {
    SHARE_BOUNDS
        .iter()
        .map(|&bound| {
            let within = latencies_us.iter().filter(|&&us| us <= bound * 1e6).count();
            within as f64 / latencies_us.len().max(1) as f64
        })
        .collect()
}

/// Shares as "≤1 ms 95.1%, ≤2.5 ms …".
pub(crate) fn describe_shares(shares: &[f64]) -> String {
    SHARE_BOUNDS
        .iter()
        .zip(shares)
        .map(|(bound, share)| format!("≤{} ms {:.1}%", bound * 1000.0, share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until `pgrelay.presence` holds `expected` rows (the relay announced its
/// participants); returns how long that took.
pub(crate) async fn presence_settled(
    db: &Client,
    expected: i64,
    patience: Duration,
) -> Res<Duration> {
    let started = Instant::now();
    loop {
        let count: i64 = db
            .query_one("SELECT count(*) FROM pgrelay.presence", &[])
            .await?
            .get(0);
        if count == expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() > patience {
            return Err(format!("presence: {count} rows, expected {expected}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relay CPU while nothing is sent.
pub(crate) async fn measure_idle(relay: &RelayChild, duration: Duration) -> Res<CpuUse> {
    let before = CpuSnapshot::take(Some(relay));
    tokio::time::sleep(duration).await;
    Ok(before.until(&CpuSnapshot::take(Some(relay))))
}

/// Idle streams and their cost.
pub(crate) struct Memory {
    pub(crate) streams: u32,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
    pub(crate) opening: Duration,
    pub(crate) presence_settled: Duration,
    pub(crate) idle: CpuUse,
}

impl Memory {
    pub(crate) fn kib_per_stream(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / f64::from(self.streams)
    }
}

/// What presence costs the database per instance with 10,000 participants.
pub(crate) struct PresenceCosts {
    pub(crate) rows: i64,
    pub(crate) refresh_ms: f64,
    pub(crate) expire_ms: f64,
}

/// Times the statements the presence task runs every `presence_ttl / 3` (30 s / 3 by
/// default): the instance's refresh UPDATE and `presence_expire`. Median of 5.
pub(crate) async fn presence_costs(db: &Client) -> Res<PresenceCosts> {
    let row = db
        .query_one(
            "SELECT instance, count(*) FROM pgrelay.presence GROUP BY instance ORDER BY 2 DESC LIMIT 1",
            &[],
        )
        .await?;
    let (instance, rows): (String, i64) = (row.get(0), row.get(1));
    let refresh = db
        .prepare("UPDATE pgrelay.presence SET heartbeat_at = now() WHERE instance = $1 RETURNING 1")
        .await?;
    let expire = db
        .prepare("SELECT pgrelay.presence_expire(make_interval(secs => 30))")
        .await?;
    let (mut refresh_ms, mut expire_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        db.query(&refresh, &[&instance]).await?;
        refresh_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        db.query(&expire, &[]).await?;
        expire_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let costs = PresenceCosts {
        rows,
        refresh_ms: median(&mut refresh_ms),
        expire_ms: median(&mut expire_ms),
    };
    progress(format!(
        "  {} rows: refresh UPDATE {:.2} ms, presence_expire {:.2} ms",
        costs.rows, costs.refresh_ms, costs.expire_ms
    ));
    Ok(costs)
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The cost of a notification an instance has no local recipient for: what every instance
/// pays for every message in the cluster.
pub(crate) struct SkipCost {
    pub(crate) context_switches: f64,
    pub(crate) system_share: f64,
    pub(crate) notifications: usize,
    pub(crate) rate: f64,
    pub(crate) relay_us: f64,
    pub(crate) backend_us: f64,
    pub(crate) baseline_cores: f64,
}

/// Sends messages addressed to participants nobody subscribes to and measures the relay's
/// CPU (minus its idle baseline) and its LISTEN backend's CPU per notification.
pub(crate) async fn skip_cost(ctx: &RelayCtx<'_>, db: &Client, profile: &Profile) -> Res<SkipCost> {
    let backend: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'pgrelay-listen' AND datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    let baseline = measure_idle(ctx.relay, profile.fanout).await?;
    let nobody: Names = Arc::new((0..MANY).map(|i| format!("nobody{i:05}")).collect());
    let rate = 2_000.0;
    let plan = Plan::new(rate, profile.fanout, 1, MANY);
    let before = CpuSnapshot::take(Some(ctx.relay));
    let backend_before = backend_cpu_seconds(backend).unwrap_or(0.0);
    write_on_schedule(ctx.url, &plan, &nobody).await?;
    // The last notifications are still being read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = before.until(&CpuSnapshot::take(Some(ctx.relay)));
    let backend_seconds = backend_cpu_seconds(backend).unwrap_or(0.0) - backend_before;
    let relay_seconds = (cpu.relay_cores - baseline.relay_cores).max(0.0) * cpu.seconds;
    let cost = SkipCost {
        context_switches: cpu.relay_context_switches as f64 / plan.count as f64,
        system_share: cpu.relay_system_cores / cpu.relay_cores.max(1e-9),
        notifications: plan.count,
        rate,
        relay_us: relay_seconds * 1e6 / plan.count as f64,
        backend_us: backend_seconds * 1e6 / plan.count as f64,
        baseline_cores: baseline.relay_cores,
    };
    progress(format!(
        "  {} notifications at {rate:.0}/s: relay {:.1} µs each (over an idle {:.1}% of a core), LISTEN backend {:.1} µs each",
        cost.notifications,
        cost.relay_us,
        cost.baseline_cores * 100.0,
        cost.backend_us
    ));
    Ok(cost)
}

/// Bytes of one delivered event as the relay writes it (chunk header, `id:`, `event:` and
/// `data:` lines of a message with 3 recipients and a 100-byte payload, chunk trailer).
pub(crate) const SOCKET_FLOOR_FRAME: usize = 300;

/// The socket floor: what the kernel and the subscribers alone cost to carry events over
/// loopback TCP, with no relay, HTTP or database. One thread writes frames of
/// [`SOCKET_FLOOR_FRAME`] bytes to `connections` connections, `3 × rows` of them (to random
/// connections) for each transaction of the same schedule as a throughput step at `rate`
/// messages/s; tokio tasks on this process's runtime read them, as the subscribers do.
pub(crate) struct SocketFloor {
    pub(crate) rate: f64,
    pub(crate) rows: usize,
    pub(crate) connections: u32,
    pub(crate) events: u64,
    pub(crate) cpu: CpuUse,
    /// CPU seconds of the writing thread alone (its `write` calls, kernel side included).
    pub(crate) writer_seconds: f64,
}

impl SocketFloor {
    /// CPU (this process: writer and readers, user and kernel) per event, in microseconds.
    pub(crate) fn us_per_event(&self) -> f64 {
        self.cpu.bench_cores * self.cpu.seconds * 1e6 / self.events as f64
    }

    /// The writing thread's part of [`Self::us_per_event`]: the sending side alone.
    pub(crate) fn writer_us_per_event(&self) -> f64 {
        self.writer_seconds * 1e6 / self.events as f64
    }
}

pub(crate) async fn socket_floor(
    rate: f64,
    rows: usize,
    connections: u32,
    duration: Duration,
) -> Res<SocketFloor> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..connections {
        let reader = TcpStream::connect(addr).await?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        writers.push(writer);
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            let mut reader = reader;
            let mut buffer = vec![0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer).await {
                received.fetch_add(read as u64, Ordering::Relaxed);
            }
        }));
    }
    let transactions = (rate * duration.as_secs_f64() / rows as f64).round() as u64;
    let events = transactions * rows as u64 * 3;
    let before = CpuSnapshot::take(None);
    let writer = std::thread::spawn(move || -> std::io::Result<f64> {
        use std::io::Write;
        let cpu_at_start = thread_cpu_seconds();
        let frame = [b'x'; SOCKET_FLOOR_FRAME];
        let interval = Duration::from_secs_f64(rows as f64 / rate);
        let started = Instant::now();
        let mut next = 0u64;
        for transaction in 0..transactions {
            if let Some(wait) =
                (started + interval * transaction as u32).checked_duration_since(Instant::now())
            {
                std::thread::sleep(wait);
            }
            for _ in 0..rows * 3 {
                // A cheap, evenly spread choice of connection (an LCG step).
                next = next
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let index = (next >> 33) as usize % writers.len();
                writers[index].write_all(&frame)?;
            }
        }
        Ok(thread_cpu_seconds() - cpu_at_start)
    });
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the socket floor writer panicked")?;
    let writer_seconds = written?;
    let expected = events * SOCKET_FLOOR_FRAME as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu = before.until(&CpuSnapshot::take(None));
    for reader in readers {
        reader.abort();
    }
    if received.load(Ordering::Relaxed) < expected {
        return Err("the socket floor's readers did not receive every frame".into());
    }
    Ok(SocketFloor {
        rate,
        rows,
        connections,
        events,
        cpu,
        writer_seconds,
    })
}

/// Round trip of the dispatcher's pass (`internals::news`, the relay's own code, prepared once as on
/// the relay's LISTEN connection: numbering, which finds nothing pending here, and the read, in
/// one transaction), by how many new rows it reads, in microseconds.
pub(crate) async fn fetch_cost(url: &str, calls: usize) -> Res<Vec<(usize, f64)>> {
    let client = connect(url, "pgrelay-bench").await?;
    let fetch = pgrelay::internals::prepare_news(&client, false).await?;
    let newest = pgrelay::internals::news_position(&client).await?;
    let mut costs = Vec::new();
    for size in [1usize, 10, 100] {
        let position = pgrelay::internals::NewsPosition {
            message: newest.message - size as i64,
            ..newest
        };
        let limits = pgrelay::internals::PassLimits {
            rows: 500,
            bytes: 4 << 20,
            numbered: 10_000,
            lock_wait: Duration::from_secs(1),
            max_event_bytes: 1 << 20,
        };
        let read = || pgrelay::internals::news(&client, &fetch, position, limits, |_, _| true);
        for _ in 0..20 {
            read().await?;
        }
        let started = Instant::now();
        for _ in 0..calls {
            if read().await?.messages.len() != size {
                return Err("the fetch query lost rows".into());
            }
        }
        let each = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        progress(format!("  {size} row(s): {each:.0} µs per fetch"));
        costs.push((size, each));
    }
    Ok(costs)
}

/// The rates a throughput ladder tries, in messages per second: a fixed ladder below 95% of
/// the ceiling, then 95% and 100% of it.
pub(crate) fn ladder_rates(rows: usize, ceiling: f64, quick: bool) -> Vec<f64> {
    let round = |rate: f64| (rate / 100.0).round() * 100.0;
    // Up, so that passing this step means reaching 95%.
    let top = [(0.95 * ceiling / 100.0).ceil() * 100.0, round(ceiling)];
    let mut rates: Vec<f64> = if quick {
        [if rows == 1 { 1_000.0 } else { 5_000.0 }].to_vec()
    } else if rows == 1 {
        [
            1_000.0, 2_000.0, 3_000.0, 4_000.0, 6_000.0, 8_000.0, 10_000.0, 12_000.0, 15_000.0,
            20_000.0, 25_000.0, 30_000.0, 40_000.0,
        ]
        .to_vec()
    } else {
        [
            5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 60_000.0, 80_000.0, 100_000.0,
            150_000.0, 200_000.0,
        ]
        .to_vec()
    };
    rates.retain(|&rate| rate < top[0]);
    rates.extend(top);
    if quick {
        rates.pop(); // 100% of the ceiling: the full run only
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    rates
}

/// Steps the rate up until a step fails, then (full run) bisects between the best pass and
/// the first failure.
pub(crate) async fn ladder(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    rows: usize,
    ceiling: f64,
    profile: &Profile,
) -> Res<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for rate in ladder_rates(rows, ceiling, profile.quick) {
        let step = ladder_step(ctx, heard, rate, rows, profile).await?;
        let passed = step.passes();
        steps.push(step);
        if !passed {
            break;
        }
    }
    for _ in 0..profile.bisections {
        let best = steps
            .iter()
            .filter(|s| s.passes())
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let Some(fail) = steps
            .iter()
            .filter(|s| !s.passes())
            .map(|s| s.rate)
            .min_by(f64::total_cmp)
        else {
            break;
        };
        let middle = ((best + fail) / 2.0 / 100.0).round() * 100.0;
        if best == 0.0 || fail / best < 1.1 || middle <= best || middle >= fail {
            break;
        }
        steps.push(ladder_step(ctx, heard, middle, rows, profile).await?);
    }
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Ok(steps)
}

/// One step of a ladder at `rate` messages/s, reported as it ends, followed by a pause that
/// lets a backlog drain before the next step.
pub(crate) async fn ladder_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    rate: f64,
    rows: usize,
    profile: &Profile,
) -> Res<Step> {
    let step = relay_step(ctx, heard, Plan::new(rate, profile.step, rows, FEW)).await?;
    let passed = step.passes();
    progress(format!(
        "  {} {} {}",
        if passed { "pass" } else { "FAIL" },
        step.one_line(),
        step.why()
    ));
    tokio::time::sleep(Duration::from_secs(if passed { 1 } else { 3 })).await;
    Ok(step)
}
