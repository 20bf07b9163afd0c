//! Measuring: clocks, CPU, percentiles.

use super::*;

/// Nearest-rank percentiles of latencies in microseconds.
#[derive(Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Microseconds as milliseconds with three decimals.
pub(crate) fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// Signed microseconds from `from` to `to`.
pub(crate) fn micros_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(after) => after.as_secs_f64() * 1e6,
        None => -(from.duration_since(to).as_secs_f64() * 1e6),
    }
}

/// User and system CPU time of a process (all threads, living and exited), from
/// /proc/<pid>/stat.
#[allow(unsafe_code)] // sysconf: std cannot read the clock tick
pub(crate) fn process_cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime / ticks, stime / ticks))
}

/// CPU time of one single-threaded process (a PostgreSQL backend), in nanosecond resolution.
pub(crate) fn backend_cpu_seconds(pid: i32) -> Option<f64> {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos: f64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(nanos / 1e9)
}

/// CPU time (user and system) of the calling thread so far.
#[allow(unsafe_code)] // clock_gettime: std has no per-thread CPU clock
pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct passed to it.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// write-family system calls and context switches (all threads) of a process so far, from
/// /proc/<pid>/io and /proc/<pid>/task/*/status.
pub(crate) fn process_switches(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let writes = io
        .lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        switches += status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|value| value.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    (writes, switches)
}

/// Busy, stolen and total jiffies of the whole machine, from /proc/stat. Steal is time the
/// hypervisor gave this virtual machine's cores to other guests; it counts as busy.
pub(crate) fn machine_jiffies() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let steal = values.get(7).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = values.iter().take(8).sum();
    Some((total - idle, steal, total))
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

/// CPU counters at one moment.
pub(crate) struct CpuSnapshot {
    pub(crate) at: Instant,
    pub(crate) relay: (f64, f64),
    pub(crate) relay_switches: (u64, u64),
    pub(crate) bench: (f64, f64),
    pub(crate) machine: (u64, u64, u64),
}

/// What was busy between two snapshots, in cores (1.0 = one core all the time).
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuUse {
    pub(crate) seconds: f64,
    pub(crate) relay_cores: f64,
    /// The part of `relay_cores` spent in the kernel (system calls).
    pub(crate) relay_system_cores: f64,
    pub(crate) bench_cores: f64,
    pub(crate) machine_busy: f64,
    /// The part of `machine_busy` stolen by the hypervisor for other guests.
    pub(crate) machine_steal: f64,
    /// The relay's write system calls and context switches (threads that exited during the
    /// interval are not counted).
    pub(crate) relay_writes: u64,
    pub(crate) relay_context_switches: u64,
}

impl CpuUse {
    /// "61% busy, 2% stolen": how busy the machine was, and how much of that other guests of
    /// the host took.
    pub(crate) fn machine(&self) -> String {
        format!(
            "{:.0}% busy, {:.0}% stolen",
            self.machine_busy * 100.0,
            self.machine_steal * 100.0
        )
    }
}

impl CpuSnapshot {
    pub(crate) fn take(relay: Option<&RelayChild>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            relay: relay
                .and_then(|relay| process_cpu_seconds(&relay.pid().to_string()))
                .unwrap_or((0.0, 0.0)),
            relay_switches: relay.map_or((0, 0), |relay| process_switches(relay.pid())),
            bench: process_cpu_seconds("self").unwrap_or((0.0, 0.0)),
            machine: machine_jiffies().unwrap_or((0, 0, 0)),
        }
    }

    pub(crate) fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let busy = later.machine.0.saturating_sub(self.machine.0) as f64;
        let steal = later.machine.1.saturating_sub(self.machine.1) as f64;
        let total = later.machine.2.saturating_sub(self.machine.2) as f64;
        CpuUse {
            seconds,
            relay_cores: (later.relay.0 + later.relay.1 - self.relay.0 - self.relay.1) / seconds,
            relay_system_cores: (later.relay.1 - self.relay.1) / seconds,
            bench_cores: (later.bench.0 + later.bench.1 - self.bench.0 - self.bench.1) / seconds,
            machine_busy: if total > 0.0 { busy / total } else { 0.0 },
            machine_steal: if total > 0.0 { steal / total } else { 0.0 },
            relay_writes: later.relay_switches.0.saturating_sub(self.relay_switches.0),
            relay_context_switches: later.relay_switches.1.saturating_sub(self.relay_switches.1),
        }
    }
}

/// CPU seconds of the database backends of some `application_name`s, by pid.
pub(crate) struct DbCpu(pub(crate) HashMap<i32, (String, f64)>);

impl DbCpu {
    pub(crate) async fn take(db: &Client, applications: &[&str]) -> Res<DbCpu> {
        let rows = db
            .query(
                "SELECT pid, application_name FROM pg_stat_activity WHERE application_name = ANY($1)",
                &[&applications],
            )
            .await?;
        Ok(DbCpu(
            rows.iter()
                .filter_map(|row| {
                    let pid: i32 = row.get(0);
                    Some((pid, (row.get(1), backend_cpu_seconds(pid)?)))
                })
                .collect(),
        ))
    }

    /// CPU seconds per application since `earlier` (backends started since count in full).
    pub(crate) fn since(&self, earlier: &DbCpu) -> HashMap<String, f64> {
        let mut used = HashMap::new();
        for (pid, (application, seconds)) in &self.0 {
            let before = earlier.0.get(pid).map_or(0.0, |(_, seconds)| *seconds);
            *used.entry(application.clone()).or_insert(0.0) += seconds - before;
        }
        used
    }
}
