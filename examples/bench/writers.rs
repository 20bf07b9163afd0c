//! Writers.

use super::*;

pub(crate) type Names = Arc<Vec<String>>;

/// Numbers the runs, so every run's payload keys are its own.
pub(crate) static RUNS: AtomicU32 = AtomicU32::new(1);

/// Small, fast, seedable: picks recipients without a dependency.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Three distinct numbers below `population`.
    pub(crate) fn recipients(&mut self, population: u32) -> [u32; RECIPIENTS] {
        loop {
            let mut pick = || (self.next() % u64::from(population)) as u32;
            let chosen = [pick(), pick(), pick()];
            if chosen[0] != chosen[1] && chosen[1] != chosen[2] && chosen[0] != chosen[2] {
                return chosen;
            }
        }
    }
}

/// A run's schedule: `count` messages at `rate` per second, `rows` per transaction, each
/// addressed to three of the first `population` names.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) run: u32,
    pub(crate) rate: f64,
    pub(crate) rows: usize,
    pub(crate) count: usize,
    pub(crate) recipients: Arc<Vec<[u32; RECIPIENTS]>>,
}

impl Plan {
    pub(crate) fn new(rate: f64, duration: Duration, rows: usize, population: u32) -> Plan {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let count = ((rate * duration.as_secs_f64()).round() as usize / rows).max(1) * rows;
        let mut random = SplitMix(0x5EED_0000 + u64::from(run));
        let recipients = (0..count).map(|_| random.recipients(population)).collect();
        Plan {
            run,
            rate,
            rows,
            count,
            recipients: Arc::new(recipients),
        }
    }

    pub(crate) fn key(&self, seq: usize) -> i64 {
        i64::from(self.run) * KEY_BASE + seq as i64
    }

    pub(crate) fn sequence_number(&self, key: i64) -> Option<usize> {
        (key / KEY_BASE == i64::from(self.run)).then_some((key % KEY_BASE) as usize)
    }

    pub(crate) fn transactions(&self) -> usize {
        self.count / self.rows
    }

    /// When transaction `tx` is due, counted from the start.
    pub(crate) fn due(&self, tx: usize) -> Duration {
        Duration::from_secs_f64((tx * self.rows) as f64 / self.rate)
    }

    pub(crate) fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.count as f64 / self.rate)
    }
}

pub(crate) const INSERT_ONE: &str =
    "INSERT INTO pgrelay.messages (participants, payload) VALUES ($1, $2)";
pub(crate) const INSERT_MANY: &str = "INSERT INTO pgrelay.messages (participants, payload) \
     SELECT ARRAY[a, b, c], p FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
     AS t(a, b, c, p)";

/// One writer connection: plain INSERTs, one transaction each (autocommit).
pub(crate) struct Writer {
    pub(crate) client: Client,
    pub(crate) one: Statement,
    pub(crate) many: Statement,
    /// Its backend's process id, for its CPU time.
    pub(crate) pid: i32,
}

impl Writer {
    pub(crate) async fn connect(url: &str) -> Res<Writer> {
        let client = connect(url, "pgrelay-bench-writer").await?;
        let one = client.prepare(INSERT_ONE).await?;
        let many = client.prepare(INSERT_MANY).await?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(Writer {
            client,
            one,
            many,
            pid,
        })
    }

    /// CPU seconds of these writers' backends so far.
    pub(crate) fn backends_cpu(writers: &[Writer]) -> f64 {
        writers
            .iter()
            .filter_map(|writer| backend_cpu_seconds(writer.pid))
            .sum()
    }

    pub(crate) async fn connect_all(url: &str, count: usize) -> Res<Vec<Writer>> {
        let mut writers = Vec::with_capacity(count);
        for _ in 0..count {
            writers.push(Writer::connect(url).await?);
        }
        Ok(writers)
    }

    /// One transaction: message `keys[i]` to `recipients[i]`.
    pub(crate) async fn insert(
        &self,
        names: &[String],
        keys: &[i64],
        recipients: &[[u32; RECIPIENTS]],
    ) -> Res<()> {
        let name = |index: u32| names[index as usize].as_str();
        if let ([key], [to]) = (keys, recipients) {
            let participants: Vec<&str> = to.iter().map(|&index| name(index)).collect();
            let payload = json!({ "s": key, "x": TEXT });
            self.client
                .execute(&self.one, &[&participants, &payload])
                .await?;
        } else {
            let column =
                |j: usize| -> Vec<&str> { recipients.iter().map(|to| name(to[j])).collect() };
            let payloads: Vec<Value> = keys
                .iter()
                .map(|key| json!({ "s": key, "x": TEXT }))
                .collect();
            self.client
                .execute(&self.many, &[&column(0), &column(1), &column(2), &payloads])
                .await?;
        }
        Ok(())
    }
}

/// What the writers did: when each message's transaction returned, and how late each
/// transaction was sent.
pub(crate) struct Written {
    pub(crate) commits: Vec<Instant>,
    pub(crate) lags_us: Vec<f64>,
    pub(crate) start: Instant,
    /// When the last transaction was sent (its due time plus its lag).
    pub(crate) last_send: Instant,
    /// CPU seconds the writers' backends used (inserts, trigger, NOTIFY, commit).
    pub(crate) db_seconds: f64,
}

/// Runs `make()` on a thread of its own with a single-threaded runtime, so the writers' clocks
/// are read the moment their replies arrive, whatever the subscribers keep busy.
pub(crate) fn on_writer_thread<T, F>(
    make: impl FnOnce() -> F + Send + 'static,
) -> impl Future<Output = Res<T>>
where
    T: Send + 'static,
    F: Future<Output = Res<T>> + 'static,
{
    let (done, result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("bench-writers".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(BoxError::from)
                .and_then(|runtime| runtime.block_on(make()));
            let _ = done.send(outcome);
        });
    async move {
        spawned?;
        result
            .await
            .map_err(|_| BoxError::from("the writer thread panicked"))?
    }
}

/// Sends `plan` from `WRITERS` connections: transaction `tx` goes out on connection
/// `tx % WRITERS` at `start + plan.due(tx)`, however late earlier ones were.
pub(crate) fn write_on_schedule(
    url: &str,
    plan: &Plan,
    names: &Names,
) -> impl Future<Output = Res<Written>> {
    let (url, plan, names) = (url.to_owned(), plan.clone(), Arc::clone(names));
    on_writer_thread(move || async move {
        let writers = Writer::connect_all(&url, WRITERS).await?;
        let cpu_before = Writer::backends_cpu(&writers);
        let transactions = plan.transactions();
        let start = Instant::now() + Duration::from_millis(100);
        let runs = writers.iter().enumerate().map(|(w, writer)| {
            let (plan, names) = (&plan, &names);
            async move {
                let mut done = Vec::with_capacity(transactions / WRITERS + 1);
                for tx in (w..transactions).step_by(WRITERS) {
                    let due = start + plan.due(tx);
                    tokio::time::sleep_until(due.into()).await;
                    let lag = Instant::now().saturating_duration_since(due);
                    let first = tx * plan.rows;
                    let keys: Vec<i64> = (first..first + plan.rows).map(|s| plan.key(s)).collect();
                    writer
                        .insert(names, &keys, &plan.recipients[first..first + plan.rows])
                        .await?;
                    done.push((tx, Instant::now(), lag));
                }
                Ok::<_, BoxError>(done)
            }
        });
        let mut written = Written {
            commits: vec![start; plan.count],
            lags_us: Vec::with_capacity(transactions),
            start,
            last_send: start,
            db_seconds: 0.0,
        };
        for result in futures::future::join_all(runs).await {
            for (tx, commit, lag) in result? {
                for seq in tx * plan.rows..(tx + 1) * plan.rows {
                    written.commits[seq] = commit;
                }
                written.lags_us.push(lag.as_secs_f64() * 1e6);
                written.last_send = written.last_send.max(start + plan.due(tx) + lag);
            }
        }
        written.db_seconds = Writer::backends_cpu(&writers) - cpu_before;
        Ok(written)
    })
}
