//! Floor and ceiling: PostgreSQL alone.

use super::*;

/// A raw `LISTEN pgrelay` connection that counts notifications and, if asked, reports the
/// moment each wake-up was read. Wake-ups are empty (heartbeats are not), one per notifying
/// commit, and arrive in commit order, which is id order.
pub(crate) struct RawListener {
    pub(crate) _client: Client,
    pub(crate) driver: tokio::task::JoinHandle<()>,
    pub(crate) heard: Arc<AtomicU64>,
    pub(crate) pid: i32,
}

impl RawListener {
    pub(crate) async fn start(
        url: &str,
        arrivals: Option<mpsc::UnboundedSender<Instant>>,
    ) -> Res<RawListener> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name("pgrelay-bench-listen");
        let (client, mut connection) = config.connect(NoTls).await?;
        let heard = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&heard);
        // Spawning the connection as a plain future would drop notifications: poll_message.
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(notification) = message {
                    let at = Instant::now();
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(arrivals) = &arrivals {
                        if notification.payload().is_empty() {
                            let _ = arrivals.send(at);
                        }
                    }
                }
            }
        });
        client.batch_execute("LISTEN pgrelay").await?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(RawListener {
            _client: client,
            driver,
            heard,
            pid,
        })
    }
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The integer after `key` and a colon in a JSON text (spaces allowed, as PostgreSQL's
/// `json_build_object` writes them).
pub(crate) fn json_int_after(text: &str, key: &str) -> Option<i64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A latency run without the relay.
pub(crate) struct Floor {
    pub(crate) latencies: Percentiles,
    pub(crate) lag: Percentiles,
}

/// Commit return to notification receipt on a raw LISTEN connection, at the latency phases'
/// rate and with the same writers.
pub(crate) async fn floor_phase(url: &str, profile: &Profile, names: &Names) -> Res<Floor> {
    let (arrivals, mut heard) = mpsc::unbounded_channel();
    let listener = RawListener::start(url, Some(arrivals)).await?;
    let client = connect(url, "pgrelay-bench").await?;
    let before: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM pgrelay.messages", &[])
        .await?
        .get(0);
    let plan = Plan::new(LATENCY_RATE, profile.floor, 1, MANY);
    let deadline = Instant::now() + plan.duration() + Duration::from_secs(20);
    let collecting = async {
        let mut got: Vec<Instant> = Vec::with_capacity(plan.count);
        while got.len() < plan.count {
            let wait = (Instant::now() + SILENCE).min(deadline);
            match tokio::time::timeout_at(wait.into(), heard.recv()).await {
                Ok(Some(arrival)) => got.push(arrival),
                _ => break,
            }
        }
        let watch = Instant::now() + DUPLICATE_WATCH;
        while let Ok(Some(arrival)) = tokio::time::timeout_at(watch.into(), heard.recv()).await {
            got.push(arrival);
        }
        got
    };
    let (written, got) = tokio::join!(write_on_schedule(url, &plan, names), collecting);
    drop(listener);
    let written = written?;

    // Wake-ups name nothing, but the k-th one is the k-th commit: number the rows (no relay
    // ran) and map them through the table. Numbering orders one-row transactions by their
    // insert, which differs from commit order only where two writers' inserts and commits
    // interleave within microseconds.
    client
        .batch_execute("SELECT pgrelay.sequence(1000000)")
        .await?;
    let rows = client
        .query(
            "SELECT (payload->>'s')::int8 FROM pgrelay.messages WHERE id > $1 ORDER BY id",
            &[&before],
        )
        .await?;
    if got.len() != rows.len() {
        return Err(format!(
            "floor: {} wake-ups for {} commits (another writer on the channel?)",
            got.len(),
            rows.len()
        )
        .into());
    }
    let mut seen = vec![false; plan.count];
    let mut latencies = Vec::with_capacity(plan.count);
    for (row, at) in rows.iter().zip(got) {
        let key: Option<i64> = row.get(0);
        let seq = key
            .and_then(|key| plan.sequence_number(key))
            .ok_or("floor: a commit that is not a message of this run")?;
        if std::mem::replace(&mut seen[seq], true) {
            return Err(format!("floor: message {seq} was committed twice").into());
        }
        latencies.push(micros_between(written.commits[seq], at));
    }
    if latencies.len() != plan.count {
        return Err(format!(
            "floor: {} of {} notifications arrived",
            latencies.len(),
            plan.count
        )
        .into());
    }
    let floor = Floor {
        latencies: Percentiles::of(&latencies),
        lag: Percentiles::of(&written.lags_us),
    };
    progress(format!(
        "  p50/p90/p99/max {}; writers at most {} behind schedule",
        floor.latencies.describe(),
        ms(floor.lag.max)
    ));
    Ok(floor)
}

/// Gives committed rows their ids as a relay's dispatcher would (`pgrelay.sequence()` after
/// every batch of wake-ups), so that a ceiling includes numbering; stops when dropped.
pub(crate) struct Numberer {
    task: tokio::task::JoinHandle<Res<()>>,
    /// Rows numbered so far.
    pub(crate) numbered: Arc<AtomicU64>,
}

impl Numberer {
    pub(crate) async fn start(url: &str) -> Res<Numberer> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name("pgrelay-bench-numberer");
        let (client, mut connection) = config.connect(NoTls).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = Arc::clone(&wake);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(_) = message {
                    woken.notify_one();
                }
            }
        });
        client.batch_execute("LISTEN pgrelay").await?;
        let numbered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&numbered);
        let task = tokio::spawn(async move {
            let _driver = AbortOnDrop(driver.abort_handle());
            loop {
                wake.notified().await;
                let row = client
                    .query_one("SELECT pgrelay.sequence(100000)", &[])
                    .await?;
                count.fetch_add(row.get::<_, i32>(0) as u64, Ordering::Relaxed);
            }
        });
        Ok(Numberer { task, numbered })
    }
}

impl Drop for Numberer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// NOTIFY through the outbox trigger, and numbering as one relay does it, with nothing else in
/// the way.
pub(crate) struct Ceiling {
    /// Measured again before a throughput ladder.
    pub(crate) repeat: bool,
    pub(crate) writers: usize,
    pub(crate) rows_per_tx: usize,
    pub(crate) listeners: usize,
    pub(crate) rows: u64,
    pub(crate) commits: u64,
    pub(crate) seconds: f64,
    /// Every listener heard every notification, and every row was numbered.
    pub(crate) all_heard: bool,
    pub(crate) cpu: CpuUse,
    /// CPU seconds of the writers' backends and of all the listeners' backends.
    pub(crate) writers_db_seconds: f64,
    pub(crate) listeners_db_seconds: f64,
}

impl Ceiling {
    /// Database CPU per commit in the writers' backends, in µs.
    pub(crate) fn commit_us(&self) -> f64 {
        self.writers_db_seconds * 1e6 / self.commits as f64
    }

    /// Database CPU per notification per listening backend, in µs.
    pub(crate) fn listener_us(&self) -> f64 {
        self.listeners_db_seconds * 1e6 / (self.rows as f64 * self.listeners as f64)
    }

    pub(crate) fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    pub(crate) fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

/// `writer_count` writers insert as fast as they can for `profile.ceiling`, `rows` per
/// transaction, while `listeners` raw LISTEN connections drain the notification queue and a
/// [`Numberer`] numbers the rows.
pub(crate) async fn ceiling_phase(
    url: &str,
    writer_count: usize,
    rows: usize,
    listeners: usize,
    profile: &Profile,
    names: &Names,
) -> Res<Ceiling> {
    let mut raw = Vec::with_capacity(listeners);
    for _ in 0..listeners {
        raw.push(RawListener::start(url, None).await?);
    }
    let numberer = Numberer::start(url).await?;
    let numbered_before = numberer.numbered.load(Ordering::Relaxed);
    let heard_before: Vec<u64> = raw
        .iter()
        .map(|l| l.heard.load(Ordering::Relaxed))
        .collect();
    let listeners_cpu = || -> f64 {
        raw.iter()
            .filter_map(|listener| backend_cpu_seconds(listener.pid))
            .sum()
    };
    let listeners_before = listeners_cpu();
    let duration = profile.ceiling;
    let before = CpuSnapshot::take(None);
    let (url_owned, names_owned) = (url.to_owned(), Arc::clone(names));
    let (committed_rows, commits, seconds, writers_db_seconds) =
        on_writer_thread(move || async move {
            let writers = Writer::connect_all(&url_owned, writer_count).await?;
            let cpu_before = Writer::backends_cpu(&writers);
            let start = Instant::now();
            let deadline = start + duration;
            let runs = writers.iter().enumerate().map(|(w, writer)| {
                let names = &names_owned;
                async move {
                    let mut random = SplitMix(w as u64 + 1);
                    let (mut rows_done, mut commits, mut last) = (0u64, 0u64, start);
                    while Instant::now() < deadline {
                        let keys = vec![0i64; rows];
                        let to: Vec<[u32; RECIPIENTS]> =
                            (0..rows).map(|_| random.recipients(MANY)).collect();
                        writer.insert(names, &keys, &to).await?;
                        last = Instant::now();
                        rows_done += rows as u64;
                        commits += 1;
                    }
                    Ok::<_, BoxError>((rows_done, commits, last))
                }
            });
            let (mut total_rows, mut total_commits, mut last) = (0, 0, start);
            for result in futures::future::join_all(runs).await {
                let (rows_done, commits, finished) = result?;
                total_rows += rows_done;
                total_commits += commits;
                last = last.max(finished);
            }
            Ok((
                total_rows,
                total_commits,
                last.duration_since(start).as_secs_f64(),
                Writer::backends_cpu(&writers) - cpu_before,
            ))
        })
        .await?;
    let cpu = before.until(&CpuSnapshot::take(None));
    // Let the listeners drain what is queued.
    let drained = Instant::now() + Duration::from_secs(10);
    let all_heard = loop {
        let numbered = numberer.numbered.load(Ordering::Relaxed) - numbered_before;
        let done = numbered >= committed_rows
            && raw
                .iter()
                .zip(&heard_before)
                .all(|(l, before)| l.heard.load(Ordering::Relaxed) - before >= committed_rows);
        if done || Instant::now() > drained {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listeners_db_seconds = listeners_cpu() - listeners_before;
    Ok(Ceiling {
        repeat: false,
        writers: writer_count,
        rows_per_tx: rows,
        listeners,
        rows: committed_rows,
        commits,
        seconds,
        all_heard,
        cpu,
        writers_db_seconds,
        listeners_db_seconds,
    })
}
