//! The report.

use super::*;

#[derive(Default)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) postgres: String,
}

impl Machine {
    pub(crate) async fn describe(admin: &Client) -> Res<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "?".into());
        Ok(Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            postgres: admin
                .query_one("SHOW server_version", &[])
                .await?
                .get::<_, String>(0),
        })
    }
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    pub(crate) machine: Machine,
    pub(crate) load_start: String,
    pub(crate) load_end: String,
    pub(crate) elapsed: Duration,
    pub(crate) cold_starts: Vec<f64>,
    pub(crate) floor: Option<Floor>,
    pub(crate) ceilings: Vec<Ceiling>,
    pub(crate) memory: Option<Memory>,
    pub(crate) latency_many: Option<Step>,
    pub(crate) latency_few: Option<Step>,
    pub(crate) presence: Option<PresenceCosts>,
    pub(crate) skip: Option<SkipCost>,
    pub(crate) fetch: Vec<(usize, f64)>,
    pub(crate) ladders: Vec<(usize, Vec<Step>)>,
    pub(crate) socket_floors: Vec<SocketFloor>,
    /// The socket floor at the latency load over 10,000 connections.
    pub(crate) event_floor: Option<SocketFloor>,
    pub(crate) catch_up: Option<CatchUp>,
    pub(crate) broadcast: Option<Broadcast>,
    pub(crate) publishing: Vec<Publishing>,
    pub(crate) poisoning: Vec<Poisoning>,
    pub(crate) fleet: Vec<FleetRun>,
    pub(crate) many_streams: Option<ManyStreams>,
    pub(crate) attacks: Option<Attacks>,
    pub(crate) signals: u64,
    pub(crate) problems: Vec<String>,
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Report {
    /// The higher reading of the 8-writer ceiling with `rows` per transaction and `listeners`
    /// listeners.
    pub(crate) fn ceiling(&self, rows: usize, listeners: usize) -> Option<&Ceiling> {
        self.ceilings
            .iter()
            .filter(|c| c.writers == WRITERS && c.rows_per_tx == rows && c.listeners == listeners)
            .max_by(|a, b| a.rows_per_second().total_cmp(&b.rows_per_second()))
    }

    pub(crate) fn check_step(&mut self, what: &str, step: &Step) {
        if !step.complete() {
            self.problems
                .push(format!("{what}: {}", step.delivery_problem()));
        }
    }

    /// The highest passing rate of a ladder.
    pub(crate) fn sustained(&self, rows: usize) -> Option<f64> {
        let (_, steps) = self.ladders.iter().find(|(r, _)| *r == rows)?;
        Some(
            steps
                .iter()
                .filter(|s| s.passes())
                .map(|s| s.rate)
                .fold(0.0, f64::max),
        )
    }

    pub(crate) fn print(&self) {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut row = |figure: &str, measured: String, target: &str, result: &str| {
            rows.push([
                figure.to_owned(),
                measured,
                target.to_owned(),
                result.to_owned(),
            ]);
        };
        let floor = self.floor.as_ref().map(|f| f.latencies);
        if let Some(floor) = &floor {
            row(
                "Floor: raw LISTEN, commit → notification, p50 / p90 / p99 / max",
                floor.describe(),
                "(reference)",
                "",
            );
        }
        for ceiling in &self.ceilings {
            row(
                &format!(
                    "Ceiling: NOTIFY through the trigger, {} writer(s), {} row(s)/tx, {} listener(s){}",
                    ceiling.writers,
                    ceiling.rows_per_tx,
                    ceiling.listeners,
                    if ceiling.repeat {
                        ", again before the ladder"
                    } else {
                        ""
                    }
                ),
                format!(
                    "{:.0} rows/s ({:.0} commits/s){}",
                    ceiling.rows_per_second(),
                    ceiling.commits_per_second(),
                    if ceiling.all_heard {
                        ""
                    } else {
                        "; listeners fell behind"
                    }
                ),
                "(reference)",
                "",
            );
        }
        for (label, step) in [("1,000", &self.latency_few), ("10,000", &self.latency_many)] {
            let Some(step) = step else { continue };
            row(
                &format!(
                    "Commit → SSE, 1,000 msg/s × 3 recipients, {label} subscribers, p50 / p90 / p99 / max"
                ),
                step.latencies.describe(),
                "",
                "",
            );
            if let Some(floor) = &floor {
                let p50 = step.latencies.p50 - floor.p50;
                let p99 = step.latencies.p99 - floor.p99;
                let targeted = label == "10,000";
                row(
                    &format!("Relay over floor, {label} subscribers: p50 / p99"),
                    format!("+{} / +{}", ms(p50), ms(p99)),
                    "≤ 1 ms / ≤ 5 ms",
                    if targeted {
                        verdict(p50 <= 1000.0 && p99 <= 5000.0)
                    } else {
                        ""
                    },
                );
            }
        }
        for (rows_per_tx, name) in [(1, "1 row/tx"), (100, "100 rows/tx")] {
            let (Some(sustained), Some(ceiling)) =
                (self.sustained(rows_per_tx), self.ceiling(rows_per_tx, 1))
            else {
                continue;
            };
            let share = sustained / ceiling.rows_per_second();
            let next = self
                .ladders
                .iter()
                .find(|(r, _)| *r == rows_per_tx)
                .and_then(|(_, steps)| steps.iter().find(|s| s.rate > sustained && !s.passes()))
                .map(|s| format!(" (at {:.0}: {})", s.rate, s.why()))
                .unwrap_or_default();
            row(
                &format!("Sustained throughput, {name}, 3 recipients, 1,000 subscribers"),
                format!(
                    "{sustained:.0} msg/s = {:.0}% of the ceiling{next}",
                    share * 100.0
                ),
                "≥ 95% of ceiling (the higher reading)",
                verdict(share >= 0.95),
            );
        }
        for floor in self.socket_floors.iter().chain(&self.event_floor) {
            row(
                &format!(
                    "Socket floor: {:.0} msg/s × 3 events ({} row(s)/tx schedule) over {} loopback TCP connections, no relay",
                    floor.rate, floor.rows, floor.connections
                ),
                format!(
                    "{:.1} µs CPU per event ({:.1} µs of it the writing thread) = {:.0}% of a core (machine {})",
                    floor.us_per_event(),
                    floor.writer_us_per_event(),
                    floor.cpu.bench_cores * 100.0,
                    floor.cpu.machine()
                ),
                "(reference)",
                "",
            );
        }
        if let (Some(step), Some(floor)) = (&self.latency_many, &self.event_floor) {
            let relay_seconds = step.cpu.relay_cores * step.cpu.seconds;
            let per_event = relay_seconds * 1e6 / step.received.max(1) as f64;
            let ratio = per_event / floor.us_per_event();
            row(
                "Relay CPU per delivered event, 1,000 msg/s × 3 recipients over 10,000 streams, against the socket floor at that load",
                format!(
                    "{per_event:.1} µs vs {:.1} µs ({ratio:.2}×; {:.1}× the writing side alone); relay {relay_seconds:.2} CPU s for {} events",
                    floor.us_per_event(),
                    per_event / floor.writer_us_per_event(),
                    step.received
                ),
                "≤ 1.5× floor",
                verdict(ratio <= 1.5),
            );
        }
        if let Some(memory) = &self.memory {
            let per = memory.kib_per_stream();
            row(
                "RSS per idle stream (10,000 streams)",
                format!(
                    "{per:.1} KiB ({} → {} KiB)",
                    memory.rss_before, memory.rss_after
                ),
                "≤ 8 KiB",
                verdict(per <= 8.0),
            );
        }
        if let Some(many) = &self.many_streams {
            let per = many.kib_per_stream_one();
            let (before, after) = many.one_rss;
            row(
                &format!("RSS per idle stream ({ONE_INSTANCE_STREAMS} streams, one instance)"),
                format!(
                    "{per:.1} KiB ({before} → {after} KiB; opened in {:.1} s)",
                    many.one_opened_seconds
                ),
                "≤ 8 KiB",
                verdict(per <= 8.0),
            );
            let rss: Vec<String> = many
                .rss
                .iter()
                .map(|(_, after)| format!("{:.0}", *after as f64 / 1024.0))
                .collect();
            row(
                &format!(
                    "{FLEET_STREAMS} streams over {FLEET_INSTANCES} instances on one database: connect time; RSS per instance; {} messages × 3 to random participants; /readyz",
                    many.plan.count
                ),
                format!(
                    "{:.1} s; {} MiB ({:.1} KiB per stream); {}/{} delivered, {} duplicates, {} misrouted, commit → holder p50 / p99 {} / {}; {} of {} checks failed",
                    many.connect_seconds,
                    rss.join(" / "),
                    many.kib_per_stream_fleet(),
                    many.collected.received,
                    many.plan.count * RECIPIENTS,
                    many.collected.duplicates,
                    many.collected.misrouted,
                    ms(many.latencies.p50),
                    ms(many.latencies.p99),
                    many.readyz_failures,
                    many.readyz_checks
                ),
                "all connected, exact, healthy",
                verdict(many.complete() && many.readyz_failures == 0),
            );
        }
        if let Some(broadcast) = &self.broadcast {
            row(
                &format!(
                    "Broadcast to {} open streams: commit → last stream's receipt, p50 / p90 / p99 / max over {BROADCASTS}",
                    broadcast.streams
                ),
                broadcast.last.describe(),
                "",
                "",
            );
            row(
                "Broadcast: relay CPU per delivered event, beside the socket writes alone",
                format!(
                    "{:.2} µs vs {:.2} µs ({:.1}×); relay {:.2} CPU s for {} deliveries",
                    broadcast.relay_us_per_event(),
                    broadcast.floor_us,
                    broadcast.relay_us_per_event() / broadcast.floor_us,
                    broadcast.relay_cpu_seconds(),
                    broadcast.deliveries
                ),
                "(reference)",
                "",
            );
        }
        let ceiling = self.ceiling(1, 1).map(Ceiling::rows_per_second);
        let one_by_one = self
            .publishing
            .iter()
            .find(|p| p.batch == 1)
            .map(Publishing::per_second);
        for publishing in &self.publishing {
            let versus = match ceiling {
                Some(ceiling) => format!(
                    ", {:.0}% of the 1-row ceiling",
                    publishing.per_second() / ceiling * 100.0
                ),
                None => String::new(),
            };
            let grouped = publishing.batch > 1;
            let gain = one_by_one
                .filter(|_| grouped)
                .map(|one| publishing.per_second() / one);
            row(
                &format!(
                    "POST /v1/messages, {PUBLISHERS} publishers, --publish-batch {}: messages/s; request → 201 p50 / p99",
                    publishing.batch
                ),
                format!(
                    "{:.0}/s in {} transactions{versus}{}; {} / {}",
                    publishing.per_second(),
                    publishing.transactions,
                    gain.map_or(String::new(), |gain| format!(" = {gain:.1}× one per transaction")),
                    ms(publishing.latency.p50),
                    ms(publishing.latency.p99)
                ),
                if grouped { "≥ 3× one per transaction" } else { "(reference)" },
                match gain {
                    Some(gain) => verdict(gain >= 3.0),
                    None => "",
                },
            );
        }
        let alone = self
            .poisoning
            .iter()
            .find(|run| run.poison == Poison::None)
            .map(Poisoning::per_second);
        for run in &self.poisoning {
            let share = alone.map(|alone| run.per_second() / alone);
            let targeted = run.poison == Poison::Jsonb;
            let poisoner = match run.poison {
                Poison::None => String::new(),
                _ => format!(
                    "; the poisoner's {} posts answered 422 ({} otherwise)",
                    run.refused, run.other_answers
                ),
            };
            row(
                &format!(
                    "Poisoning: {HONEST} honest publishers {}: honest messages/s; request → 201 p50 / p99",
                    run.poison.describe()
                ),
                format!(
                    "{:.0}/s{}; {} / {}{poisoner}",
                    run.per_second(),
                    match share {
                        Some(share) if run.poison != Poison::None => {
                            format!(" = {:.0}% of alone", share * 100.0)
                        }
                        _ => String::new(),
                    },
                    ms(run.latency.p50),
                    ms(run.latency.p99)
                ),
                if targeted { "≥ 80% of alone" } else { "(reference)" },
                match share {
                    Some(share) if targeted => verdict(share >= 0.8),
                    _ => "",
                },
            );
        }
        for run in &self.fleet {
            row(
                &format!(
                    "Fleet of {}: 1,000 msg/s × 3 recipients, 1,000 subscribers; p50 / p99; per instance and message: LISTEN-backend CPU, database transactions; relay CPU per message (one instance)",
                    run.instances
                ),
                format!(
                    "{} / {}; {:.0} µs, {:.2}; {:.0} µs",
                    ms(run.step.latencies.p50),
                    ms(run.step.latencies.p99),
                    run.listen_us_per_instance(),
                    run.transactions_per_instance(),
                    run.step.per_message_us(run.step.cpu.relay_cores * run.step.cpu.seconds)
                ),
                "(reference)",
                "",
            );
        }
        if let Some(catch_up) = &self.catch_up {
            let stream = median(&mut catch_up.stream_ms.clone());
            let page = median(&mut catch_up.page_ms.clone());
            let of = if catch_up.rows == 1_000_000 {
                "1,000,000".to_owned()
            } else {
                catch_up.rows.to_string()
            };
            row(
                &format!("Catch-up: 1,000 of {of} rows, stream with since_id, median"),
                format!("{stream:.2} ms"),
                "≤ 20 ms",
                verdict(stream <= 20.0),
            );
            row(
                &format!("Catch-up: 1,000 of {of} rows, GET /v1/messages?limit=1000, median"),
                format!("{page:.2} ms"),
                "≤ 20 ms",
                verdict(page <= 20.0),
            );
            let rooms_stream = median(&mut catch_up.rooms_stream_ms.clone());
            let rooms_page = median(&mut catch_up.rooms_page_ms.clone());
            row(
                &format!(
                    "Catch-up, member of {ROOMS} rooms: {} of {of} rows, stream / GET, median",
                    catch_up.rooms_missed
                ),
                format!("{rooms_stream:.2} ms / {rooms_page:.2} ms"),
                "",
                "",
            );
        }
        if let Some(attacks) = &self.attacks {
            for (what, before, held) in &attacks.hold_waits {
                row(
                    &format!("Writer holding its transaction open {HOLD_SECONDS} s: {what}, without / during the hold"),
                    format!(
                        "{:.1} ms / {:.1} ms",
                        before.as_secs_f64() * 1e3,
                        held.as_secs_f64() * 1e3
                    ),
                    "≤ 1 s",
                    verdict(held.as_secs_f64() <= 1.0),
                );
            }
            row(
                "/readyz during the hold",
                if attacks.ready_during_hold {
                    "200 throughout"
                } else {
                    "not ready at times"
                }
                .into(),
                "200",
                verdict(attacks.ready_during_hold),
            );
            row(
                "Fresh messages deleted at the next relay start after a row backdated to 2000",
                format!("{} of 500", attacks.backdated_deleted),
                "0",
                verdict(attacks.backdated_deleted == 0),
            );
            row(
                "--retention 20s: messages of a transaction open 22 s deleted within 12 s of its commit",
                format!("{} of 100", attacks.long_transaction_deleted),
                "0",
                verdict(attacks.long_transaction_deleted == 0),
            );
            row(
                "A stream that stopped reading, behind when its 600 messages were pruned: delivered; resets; next message",
                format!(
                    "{} of 600; {} reset; {}",
                    attacks.behind_delivered,
                    attacks.behind_resets,
                    if attacks.behind_continued { "delivered" } else { "lost" }
                ),
                "a reset wherever it was behind",
                verdict(
                    (attacks.behind_delivered == 600 || attacks.behind_resets == 1)
                        && attacks.behind_continued
                ),
            );
        }
        if !self.cold_starts.is_empty() {
            let cold = median(&mut self.cold_starts.clone());
            row(
                &format!(
                    "Cold start: spawn → /readyz 200, median of {}",
                    self.cold_starts.len()
                ),
                format!("{cold:.1} ms"),
                "≤ 100 ms",
                verdict(cold <= 100.0),
            );
        }

        let m = &self.machine;
        println!();
        println!("## pgrelay benchmark ({} run)", self.mode);
        println!();
        println!(
            "{} cores ({}), Linux {}, PostgreSQL {}; load average {} at the start, {} at the end; {:.0} s",
            m.cores,
            m.cpu,
            m.kernel,
            m.postgres,
            self.load_start,
            self.load_end,
            self.elapsed.as_secs_f64()
        );
        println!();
        println!("| Figure | Measured | Target | Result |");
        println!("|---|---|---|---|");
        for [figure, measured, target, result] in &rows {
            println!("| {figure} | {measured} | {target} | {result} |");
        }
        self.print_details();
        if !self.problems.is_empty() {
            println!();
            println!("### Problems");
            println!();
            for problem in &self.problems {
                println!("- {problem}");
            }
        }
    }

    pub(crate) fn print_details(&self) {
        println!();
        println!("### Details");
        println!();
        if let Some(floor) = &self.floor {
            println!(
                "- Floor writers: lag behind schedule p99 {}, max {}.",
                ms(floor.lag.p99),
                ms(floor.lag.max)
            );
        }
        for ceiling in &self.ceilings {
            println!(
                "- Ceiling, {} writer(s), {} row(s)/tx, {} listener(s){}: {} rows in {:.2} s; machine {}, this process {:.0}% of a core; \
                 database CPU {:.0} µs per commit in the writers' backends, {:.1} µs per notification in each listener's backend.",
                ceiling.writers,
                ceiling.rows_per_tx,
                ceiling.listeners,
                if ceiling.repeat { " (again)" } else { "" },
                ceiling.rows,
                ceiling.seconds,
                ceiling.cpu.machine(),
                ceiling.cpu.bench_cores * 100.0,
                ceiling.commit_us(),
                ceiling.listener_us()
            );
        }
        for (label, step) in [("1,000", &self.latency_few), ("10,000", &self.latency_many)] {
            if let Some(step) = step {
                println!(
                    "- Latency, {label} subscribers: {} messages, {} deliveries; writers lag p99 {} max {}; \
                     relay {:.1}% of a core ({:.0}% of it in the kernel), this process {:.0}%, machine {}. \
                     CPU per message: relay {:.0} µs; database: writer {:.0} µs, relay pool {:.0} µs, relay LISTEN backend (notifications and fetches) {:.0} µs. \
                     Relay system calls per message: {:.1} writes; context switches {:.1}.",
                    step.messages,
                    step.received,
                    ms(step.lag.p99),
                    ms(step.lag.max),
                    step.cpu.relay_cores * 100.0,
                    100.0 * step.cpu.relay_system_cores / step.cpu.relay_cores.max(1e-9),
                    step.cpu.bench_cores * 100.0,
                    step.cpu.machine(),
                    step.per_message_us(step.cpu.relay_cores * step.cpu.seconds),
                    step.per_message_us(step.db_writers),
                    step.per_message_us(step.db_pool),
                    step.per_message_us(step.db_listen),
                    step.cpu.relay_writes as f64 / step.messages as f64,
                    step.cpu.relay_context_switches as f64 / step.messages as f64,
                );
                println!(
                    "  - Commit → relay dispatch (the relay's `pgrelay_commit_to_send_seconds`): {}. \
                     Commit → SSE receipt: {}.",
                    describe_shares(&step.dispatched_shares),
                    describe_shares(&step.delivered_shares)
                );
            }
        }
        if let Some(memory) = &self.memory {
            println!(
                "- Opening {} streams took {:.2} s ({:.0} streams/s); presence rows for all of them {:.1} s after the last; \
                 idle with {} streams the relay used {:.1}% of a core.",
                memory.streams,
                memory.opening.as_secs_f64(),
                f64::from(memory.streams) / memory.opening.as_secs_f64(),
                memory.presence_settled.as_secs_f64(),
                memory.streams,
                memory.idle.relay_cores * 100.0
            );
        }
        if let Some(presence) = &self.presence {
            println!(
                "- Presence, {} rows of one instance: refresh UPDATE {:.2} ms, presence_expire {:.2} ms (each every 10 s per instance by default).",
                presence.rows, presence.refresh_ms, presence.expire_ms
            );
        }
        if let Some(skip) = &self.skip {
            println!(
                "- A notification with no local recipient ({} at {:.0}/s): relay {:.1} µs CPU ({:.0}% in the kernel, {:.2} context switches), \
                 its LISTEN backend {:.1} µs CPU.",
                skip.notifications,
                skip.rate,
                skip.relay_us,
                skip.system_share * 100.0,
                skip.context_switches,
                skip.backend_us
            );
        }
        if !self.fetch.is_empty() {
            let fetch: Vec<String> = self
                .fetch
                .iter()
                .map(|(size, us)| format!("{size} id(s) {us:.0} µs"))
                .collect();
            println!(
                "- Dispatch fetch query (`store::news`) round trip: {}.",
                fetch.join(", ")
            );
        }
        for (rows, steps) in &self.ladders {
            println!();
            println!("Throughput ladder, {rows} row(s) per transaction, 3 recipients, 1,000 subscribers:");
            println!();
            println!("| Offered msg/s | Sent msg/s | Delivered | p50 / p90 / p99 / max | Writer lag max | Relay CPU (sys) | DB CPU/msg: writer, relay pool, relay LISTEN + fetch | Machine busy (stolen) | Pass |");
            println!("|---|---|---|---|---|---|---|---|---|");
            for step in steps {
                println!(
                    "| {:.0} | {:.0} | {}/{} | {} | {} | {:.0}% ({:.0}%) | {:.0}, {:.0}, {:.0} µs | {:.0}% ({:.0}%) | {} |",
                    step.rate,
                    step.achieved,
                    step.received,
                    step.expected,
                    step.latencies.describe(),
                    ms(step.lag.max),
                    step.cpu.relay_cores * 100.0,
                    step.cpu.relay_system_cores * 100.0,
                    step.per_message_us(step.db_writers),
                    step.per_message_us(step.db_pool),
                    step.per_message_us(step.db_listen),
                    step.cpu.machine_busy * 100.0,
                    step.cpu.machine_steal * 100.0,
                    if step.passes() { "yes".to_owned() } else { format!("no: {}", step.why()) }
                );
            }
        }
        if let Some(broadcast) = &self.broadcast {
            println!();
            println!(
                "Broadcast: {BROADCASTS} messages to `*`, one at a time, each to {} streams: commit → first stream p50 / p90 / p99 / max {}, → last stream {}. Relay {:.1}% of a core ({:.0}% of it in the kernel) over {:.1} s, machine {}; the socket writes alone (one thread, {}-byte frames over {FEW} loopback connections): {:.2} µs of CPU each.",
                broadcast.streams,
                broadcast.first.describe(),
                broadcast.last.describe(),
                broadcast.cpu.relay_cores * 100.0,
                broadcast.cpu.relay_system_cores / broadcast.cpu.relay_cores.max(1e-9) * 100.0,
                broadcast.cpu.seconds,
                broadcast.cpu.machine(),
                SOCKET_FLOOR_FRAME,
                broadcast.floor_us
            );
        }
        if let Some(catch_up) = &self.catch_up {
            println!();
            println!(
                "Catch-up: {} rows filled in {:.1} s, VACUUM ANALYZE {:.1} s. Stream runs {} ms (first event after {} ms); \
                 GET runs {} ms.",
                catch_up.rows,
                catch_up.fill.as_secs_f64(),
                catch_up.analyze.as_secs_f64(),
                list_ms(&catch_up.stream_ms),
                list_ms(&catch_up.first_event_ms),
                list_ms(&catch_up.page_ms)
            );
            for (summary, plan) in &catch_up.plans {
                println!();
                println!("Catch-up query, {summary}:");
                println!();
                println!("```text");
                println!("{plan}");
                println!("```");
            }
        }
        if !self.cold_starts.is_empty() {
            println!();
            println!("Cold starts: {} ms.", list_ms(&self.cold_starts));
        }
        if self.signals > 0 {
            println!();
            println!(
                "Subscribers also received {} presence signals (not counted as deliveries).",
                self.signals
            );
        }
    }
}
