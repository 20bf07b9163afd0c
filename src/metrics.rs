//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! A handful of atomic counters and one fixed-bucket histogram cover what operators ask of a
//! relay; a metrics framework would add more code than it saves here.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::Jwks;
use crate::budget::ByteBudget;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records the time from `unix_micros` (a wall-clock time from the database) to now.
    /// Clock skew can make it negative; that counts as zero.
    pub fn observe_since_unix_micros(&self, unix_micros: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let micros = (now - unix_micros).max(0) as u64;
        let seconds = micros as f64 / 1e6;
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match LATENCY_BUCKETS.get(index) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The listener's state at the moment `/metrics` is read.
pub struct ListenerGauges {
    /// Whether the LISTEN connection is up.
    pub up: bool,
    /// Seconds committed rows may have waited for their ids.
    pub numbering_lag: f64,
    /// Seconds the oldest commit heard of has waited to be delivered.
    pub listener_lag: f64,
}

/// Every metric the relay exports.
#[derive(Default)]
pub struct Metrics {
    /// Notifications read from the LISTEN connection.
    pub notifications_received: Counter,
    /// The listener's passes: round trips that number and read what is new.
    pub listener_passes: Counter,
    /// Message events written to streams.
    pub events_delivered: Counter,
    /// Catch-up queries run for streams (resume, overflow, listener reconnect): a stream's
    /// own page query or a shared read, each one query.
    pub catch_up_queries: Counter,
    /// Shared catch-up reads (`catch_up`), each serving many streams.
    pub shared_reads: Counter,
    /// Rows the shared catch-up reads took from the log.
    pub shared_rows: Counter,
    /// Stream catch-ups a shared read served (each would otherwise have been a query).
    pub shared_streams: Counter,
    /// Times the LISTEN connection was lost.
    pub listener_reconnects: Counter,
    /// Pending messages and signals this instance gave ids to.
    pub rows_numbered: Counter,
    /// Passes whose numbering failed (the order lock stayed taken, a missing grant, …).
    pub numbering_failures: Counter,
    /// Rows of attached tables committed without being published, as this instance reported
    /// them from `pgrelay.attach_skips` (each is reported by one instance).
    pub attach_skips: Counter,
    /// Pruning rounds this instance finished, including those that found another instance
    /// pruning and left the round to it.
    pub pruning_rounds: Counter,
    /// Pruning rounds that failed (the database unreachable, a missing grant).
    pub pruning_failures: Counter,
    /// Messages this instance deleted for being older than the retention period.
    pub messages_pruned: Counter,
    /// From the moment a message got its id (at or after its writer's commit) to handing it to
    /// its streams.
    pub commit_to_send: Histogram,
    /// `pg_notification_queue_usage()` as f64 bits, read at every heartbeat: a queue filling
    /// up means some listener in the cluster stopped reading, and commits will soon fail.
    notify_queue_usage: AtomicU64,
}

impl Metrics {
    /// Records the fraction of the cluster's notification queue in use.
    pub fn set_notify_queue_usage(&self, fraction: f64) {
        self.notify_queue_usage
            .store(fraction.to_bits(), Ordering::Relaxed);
    }

    /// The Prometheus text exposition of all metrics; `streams` is the open-stream gauge,
    /// `listener` what the listener reports of itself, and `budgets` the instance's byte budgets
    /// by name (`catch_up`, `fetch`).
    pub fn render(
        &self,
        streams: usize,
        listener: ListenerGauges,
        budgets: &[(&str, &ByteBudget)],
    ) -> String {
        let mut out = String::new();
        let gauges = [
            (
                "pgrelay_subscribers",
                "Open SSE streams on this instance.",
                streams as u64,
            ),
            (
                "pgrelay_listener_up",
                "1 while the LISTEN connection is up.",
                u64::from(listener.up),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = [
            (
                "pgrelay_notifications_received_total",
                "Notifications read from the LISTEN connection.",
                &self.notifications_received,
            ),
            (
                "pgrelay_listener_passes_total",
                "The listener's passes, each a round trip that numbers and reads what is new.",
                &self.listener_passes,
            ),
            (
                "pgrelay_events_delivered_total",
                "Message events written to SSE streams.",
                &self.events_delivered,
            ),
            (
                "pgrelay_catch_up_queries_total",
                "Catch-up queries run for streams: a stream's own page query or a shared read, one each.",
                &self.catch_up_queries,
            ),
            (
                "pgrelay_shared_catch_up_reads_total",
                "Shared catch-up reads: one range of the log read for many resuming streams at once.",
                &self.shared_reads,
            ),
            (
                "pgrelay_shared_catch_up_rows_total",
                "Rows the shared catch-up reads took from the log.",
                &self.shared_rows,
            ),
            (
                "pgrelay_shared_catch_up_streams_total",
                "Stream catch-ups served by a shared read instead of a query of their own.",
                &self.shared_streams,
            ),
            (
                "pgrelay_listener_reconnects_total",
                "Times the LISTEN connection was lost.",
                &self.listener_reconnects,
            ),
            (
                "pgrelay_rows_numbered_total",
                "Committed messages and signals this instance gave their ids to.",
                &self.rows_numbered,
            ),
            (
                "pgrelay_numbering_failures_total",
                "Passes that could not number committed rows (order lock taken too long, missing grant).",
                &self.numbering_failures,
            ),
            (
                "pgrelay_attach_skips_total",
                "Rows of attached tables committed but not published (see pgrelay.attach_skips), reported by this instance.",
                &self.attach_skips,
            ),
            (
                "pgrelay_pruning_rounds_total",
                "Pruning rounds this instance finished (one instance prunes at a time; the others finish at once).",
                &self.pruning_rounds,
            ),
            (
                "pgrelay_pruning_failures_total",
                "Pruning rounds that failed (database unreachable, missing grant).",
                &self.pruning_failures,
            ),
            (
                "pgrelay_messages_pruned_total",
                "Messages this instance deleted for being older than the retention period.",
                &self.messages_pruned,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        let usage = f64::from_bits(self.notify_queue_usage.load(Ordering::Relaxed));
        let measured = [
            (
                "pgrelay_notification_queue_usage_ratio",
                "Fraction of PostgreSQL's notification queue in use (pg_notification_queue_usage).",
                usage,
            ),
            (
                "pgrelay_numbering_lag_seconds",
                "How long committed messages may have waited for their ids on this instance (0 while numbering keeps up).",
                listener.numbering_lag,
            ),
            (
                "pgrelay_listener_lag_seconds",
                "How long the oldest commit this instance heard of has waited to be delivered, including while it cannot listen (0 when caught up).",
                listener.listener_lag,
            ),
        ];
        for (name, help, value) in measured {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        for (name, budget) in budgets {
            render_budget(&mut out, name, budget);
        }
        self.commit_to_send.render(
            &mut out,
            "pgrelay_commit_to_send_seconds",
            "From a message getting its id, at or after its writer's commit (database clock), to the relay handing it to its streams.",
        );
        out
    }
}

/// A byte budget's gauges and counters: its size, what is reserved now, the most ever reserved
/// at once, how many reservations could not be had at once, and how many reads were done again
/// because they held more than they had reserved.
fn render_budget(out: &mut String, name: &str, budget: &ByteBudget) {
    let figures = [
        (
            "budget_bytes",
            "gauge",
            "Size of the budget.",
            budget.total(),
        ),
        (
            "reserved_bytes",
            "gauge",
            "Bytes reserved now.",
            budget.in_use(),
        ),
        (
            "reserved_bytes_peak",
            "gauge",
            "Most bytes ever reserved at once.",
            budget.peak(),
        ),
        (
            "budget_short_total",
            "counter",
            "Reservations that waited, or were refused, because the budget was taken.",
            budget.short(),
        ),
        (
            "budget_rereads_total",
            "counter",
            "Reads that held more than their reservation (a page's last row is read whatever \
             its size) and were done again under a larger one.",
            budget.rereads(),
        ),
    ];
    for (suffix, kind, help, value) in figures {
        let _ = writeln!(
            out,
            "# HELP pgrelay_{name}_{suffix} {help}\n# TYPE pgrelay_{name}_{suffix} {kind}\n\
             pgrelay_{name}_{suffix} {value}"
        );
    }
}

/// The identity provider's key set (`--jwks-url`): fetches by outcome, and the usable keys
/// held now.
pub fn render_jwks(out: &mut String, jwks: &Jwks) {
    let _ = writeln!(
        out,
        "# HELP pgrelay_jwks_fetches_total Fetches of the --jwks-url key set, by outcome \
         (loaded, unreachable, status, too_large, malformed); only `loaded` replaces the keys.\n\
         # TYPE pgrelay_jwks_fetches_total counter"
    );
    for (outcome, count) in jwks.fetch_counts() {
        let _ = writeln!(
            out,
            "pgrelay_jwks_fetches_total{{outcome=\"{}\"}} {count}",
            outcome.label()
        );
    }
    let _ = writeln!(
        out,
        "# HELP pgrelay_jwks_keys Usable keys of the last key set that loaded (0 before one \
         has).\n# TYPE pgrelay_jwks_keys gauge\npgrelay_jwks_keys {}",
        jwks.key_count()
    );
}
