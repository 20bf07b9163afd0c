//! The run.

use super::*;

pub(crate) async fn run(options: &Options, report: &mut Report) -> Res<()> {
    let profile = &options.profile;
    report.mode = if profile.latency_only {
        "latency"
    } else if profile.publish_only {
        "publish"
    } else if profile.fleet_only {
        "fleet"
    } else if profile.streams_only {
        "streams"
    } else if profile.attacks_only {
        "attacks"
    } else if profile.catch_up_only {
        "catch-up"
    } else if profile.quick {
        "quick"
    } else {
        "full"
    };
    let relay_bin = relay_binary(options.build)?;
    report.load_start = load_average();
    let started = Instant::now();
    let files = raise_open_file_limit()?;
    let logs = LogDir::create()?;
    progress(format!(
        "relay {}, open-file limit {files}, logs in {}",
        relay_bin.display(),
        logs.path.display()
    ));

    progress("starting a throwaway PostgreSQL…");
    let cluster = TempCluster::start_with(&[
        ("max_connections", "500"),
        ("shared_buffers", "512MB"),
        ("max_wal_size", "8GB"),
    ])
    .await?;
    let result = phases(&cluster, &relay_bin, profile, &logs, report).await;
    report.load_end = load_average();
    report.elapsed = started.elapsed();
    let stopped = cluster.shutdown().await;
    result?;
    stopped?;
    logs.remove();
    Ok(())
}

/// What the phases that set up their own databases and relays share.
#[derive(Clone, Copy)]
pub(crate) struct Bench<'a> {
    pub(crate) cluster: &'a TempCluster,
    pub(crate) admin: &'a Client,
    pub(crate) relay_bin: &'a Path,
    pub(crate) profile: &'a Profile,
    pub(crate) logs: &'a LogDir,
    pub(crate) names: &'a Names,
    pub(crate) keys: &'a Keys,
}

pub(crate) async fn phases(
    cluster: &TempCluster,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    report: &mut Report,
) -> Res<()> {
    let admin = connect(&cluster.url("postgres"), "pgrelay-bench").await?;
    report.machine = Machine::describe(&admin).await?;
    let names = participant_names();
    let keys = Keys::from_secret_list(SECRET)?;

    let bench = Bench {
        cluster,
        admin: &admin,
        relay_bin,
        profile,
        logs,
        names: &names,
        keys: &keys,
    };
    if profile.latency_only {
        return latency_only(&bench, report).await;
    }
    if profile.fleet_only {
        report.fleet = fleet_phase(&bench).await?;
        return Ok(());
    }
    if profile.streams_only {
        return many_streams(&bench, report).await;
    }
    if profile.publish_only {
        return publish_phases(&bench, report).await;
    }
    if profile.attacks_only {
        report.attacks = Some(attacks_phase(&bench).await?);
        return Ok(());
    }
    if profile.catch_up_only {
        return catch_up(&bench, report).await;
    }
    let main = create_database(cluster, &admin, "bench_main").await?;
    if profile.throughput_only {
        let ceiling_db = create_database(cluster, &admin, "bench_ceiling").await?;
        return relay_phases(
            &main,
            &ceiling_db,
            relay_bin,
            profile,
            logs,
            &names,
            &keys,
            report,
        )
        .await;
    }
    // Cold start first, against a fresh, small database, with nothing else running.
    progress(format!("cold start: {} starts…", profile.cold_starts));
    report.cold_starts = cold_starts(relay_bin, &main, logs, profile.cold_starts).await?;

    let floor_db = create_database(cluster, &admin, "bench_floor").await?;
    progress("floor: raw LISTEN at 1,000 messages/s…");
    report.floor = Some(floor_phase(&floor_db, profile, &names).await?);

    let ceiling_db = create_database(cluster, &admin, "bench_ceiling").await?;
    for (writers, rows, listeners) in [
        (WRITERS, 1, 1),
        (WRITERS, 100, 1),
        (WRITERS, 1, 10),
        (1, 1, 1),
    ] {
        progress(format!(
            "ceiling: {writers} writer(s) flat out, {rows} row(s) per transaction, {listeners} listener(s)…"
        ));
        let ceiling = ceiling_phase(&ceiling_db, writers, rows, listeners, profile, &names).await?;
        progress(format!(
            "  {:.0} rows/s, {:.0} commits/s; DB CPU {:.0} µs per commit in the writers' backends, \
             {:.1} µs per notification per listener; machine {}",
            ceiling.rows_per_second(),
            ceiling.commits_per_second(),
            ceiling.commit_us(),
            ceiling.listener_us(),
            ceiling.cpu.machine()
        ));
        report.ceilings.push(ceiling);
    }

    relay_phases(
        &main,
        &ceiling_db,
        relay_bin,
        profile,
        logs,
        &names,
        &keys,
        report,
    )
    .await?;

    publish_phases(&bench, report).await?;

    catch_up(&bench, report).await?;
    report.fleet = fleet_phase(&bench).await?;
    many_streams(&bench, report).await
}

/// The catch-up phase, on a database of its own.
async fn catch_up(bench: &Bench<'_>, report: &mut Report) -> Res<()> {
    let database = create_database(bench.cluster, bench.admin, "bench_catch_up").await?;
    let phase = catch_up_phase(
        &database,
        bench.relay_bin,
        bench.profile,
        bench.logs,
        bench.keys,
        bench.names,
    );
    report.catch_up = Some(phase.await?);
    Ok(())
}

/// The many-streams phase, its misses recorded as problems.
async fn many_streams(bench: &Bench<'_>, report: &mut Report) -> Res<()> {
    let many = many_streams_phase(bench).await?;
    if !many.complete() {
        report.problems.push(format!(
            "many streams: {} of {} deliveries arrived, {} duplicates, {} misrouted",
            many.collected.received,
            many.plan.count * RECIPIENTS,
            many.collected.duplicates,
            many.collected.misrouted
        ));
    }
    if many.readyz_failures > 0 {
        report.problems.push(format!(
            "many streams: {} of {} /readyz checks failed",
            many.readyz_failures, many.readyz_checks
        ));
    }
    report.many_streams = Some(many);
    Ok(())
}

/// The participants' names, `p00000` to `p99999`: the first 10,000 are the subscribers of
/// most phases, all of them the streams of the many-streams phase.
pub(crate) fn participant_names() -> Names {
    Arc::new((0..FLEET_STREAMS).map(|i| format!("p{i:05}")).collect())
}

/// `--latency`: the LISTEN floor, memory at 10,000 idle streams, commit-to-SSE latency with
/// 10,000 and 1,000 subscribers, broadcasts to the 10,000, and the relay's CPU per event
/// against the socket floor; nothing else. (This was examples/latency.rs, with one in-process
/// subscriber; the relay now runs as its own process, as in every other phase.)
pub(crate) async fn latency_only(bench: &Bench<'_>, report: &mut Report) -> Res<()> {
    let Bench {
        cluster,
        admin,
        relay_bin,
        profile,
        logs,
        names,
        keys,
    } = *bench;
    let floor_db = create_database(cluster, admin, "bench_floor").await?;
    progress("floor: raw LISTEN at 1,000 messages/s…");
    report.floor = Some(floor_phase(&floor_db, profile, names).await?);

    let url = create_database(cluster, admin, "bench_latency").await?;
    let db = connect(&url, "pgrelay-bench").await?;
    let mut relay = RelayChild::spawn(relay_bin, &url, logs.file("relay-latency.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.rss_kib()?;
    let (hub, mut heard) = Hub::start();
    let mut subscribers = Subscribers::default();
    let ctx = RelayCtx {
        url: &url,
        relay: &relay,
        names,
        db: &db,
    };
    report.memory =
        Some(idle_memory(&ctx, &mut subscribers, &hub, keys, profile, rss_before).await?);
    report.latency_many = Some(latency_step(&ctx, &mut heard, MANY, profile, report).await?);
    report.broadcast = Some(broadcast_phase(&ctx, &mut heard, MANY).await?);
    subscribers.close_from(FEW);
    report.event_floor = Some(event_floor(profile).await?);
    presence_settled(&db, i64::from(FEW), Duration::from_secs(60)).await?;
    report.latency_few = Some(latency_step(&ctx, &mut heard, FEW, profile, report).await?);
    report.problems.extend(hub.take_problems());
    drop(subscribers);
    relay.stop();
    Ok(())
}

/// `POST /v1/messages` from 100 publishers, one message per transaction and with group
/// commit, beside the database's own one-row-per-transaction ceiling (measured here too, so
/// `--publish` alone has it); then 50 publishers alone and beside a poisoner.
pub(crate) async fn publish_phases(bench: &Bench<'_>, report: &mut Report) -> Res<()> {
    let Bench {
        cluster,
        admin,
        relay_bin,
        profile,
        logs,
        names,
        keys,
    } = *bench;
    if report.ceiling(1, 1).is_none() {
        let ceiling_db = create_database(cluster, admin, "bench_publish_ceiling").await?;
        progress("ceiling: 8 writers flat out, 1 row per transaction, 1 listener…");
        let ceiling = ceiling_phase(&ceiling_db, WRITERS, 1, 1, profile, names).await?;
        progress(format!("  {:.0} rows/s", ceiling.rows_per_second()));
        report.ceilings.push(ceiling);
    }
    let duration = if profile.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    for batch in [1, 100] {
        let db = create_database(cluster, admin, &format!("bench_publish_{batch}")).await?;
        let publishing = publishing_phase(&db, relay_bin, logs, keys, batch, duration).await?;
        report.publishing.push(publishing);
    }
    for poisoning in poisoning_phase(bench, 3 * duration).await? {
        if poisoning.other_answers > 0 {
            report.problems.push(format!(
                "poisoning {}: {} of the poisoner's posts were not answered 422",
                poisoning.poison.describe(),
                poisoning.other_answers
            ));
        }
        report.poisoning.push(poisoning);
    }
    Ok(())
}

/// Everything that needs one long-lived relay with many subscribers: memory, latency with
/// 10,000 and 1,000 subscribers, the costs the scaling model uses, the throughput ladders.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay_phases(
    url: &str,
    ceiling_db: &str,
    relay_bin: &Path,
    profile: &Profile,
    logs: &LogDir,
    names: &Names,
    keys: &Keys,
    report: &mut Report,
) -> Res<()> {
    let db = connect(url, "pgrelay-bench").await?;
    let mut relay = RelayChild::spawn(relay_bin, url, logs.file("relay-main.log"))?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    // Let start-up work (first prune, first presence tick) finish before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.rss_kib()?;

    let (hub, mut heard) = Hub::start();
    let mut subscribers = Subscribers::default();

    let ctx = RelayCtx {
        url,
        relay: &relay,
        names,
        db: &db,
    };
    if profile.throughput_only {
        subscribers
            .open(relay.addr, keys, names, 0..FEW, &hub)
            .await?;
        presence_settled(&db, i64::from(FEW), Duration::from_secs(60)).await?;
    } else {
        latency_phases(
            &ctx,
            &mut subscribers,
            &hub,
            &mut heard,
            keys,
            profile,
            rss_before,
            report,
        )
        .await?;
    }

    for rows in [1, 100] {
        // The ceiling varies from run to run on a shared machine: measure it again (the relay
        // idles meanwhile; it does not hear another database's notifications) and step up to
        // the higher of the two readings.
        progress(format!(
            "ceiling again: 8 writers flat out, {rows} row(s) per transaction, 1 listener…"
        ));
        let mut again = ceiling_phase(ceiling_db, WRITERS, rows, 1, profile, names).await?;
        again.repeat = true;
        progress(format!("  {:.0} rows/s", again.rows_per_second()));
        report.ceilings.push(again);
        let Some(ceiling) = report.ceiling(rows, 1) else {
            continue;
        };
        let ceiling = ceiling.rows_per_second();
        let floor_rate = (0.95 * ceiling / 100.0).ceil() * 100.0;
        progress(format!(
            "socket floor: {floor_rate:.0} msg/s x 3 events, {rows} row(s) per transaction, no relay…"
        ));
        let floor = socket_floor(floor_rate, rows, FEW, profile.step).await?;
        progress(format!(
            "  {:.1} µs CPU per event, {:.0}% of a core",
            floor.us_per_event(),
            floor.cpu.bench_cores * 100.0
        ));
        report.socket_floors.push(floor);
        progress(format!(
            "throughput: {rows} row(s) per transaction, ceiling {ceiling:.0} rows/s…"
        ));
        let steps = ladder(&ctx, &mut heard, rows, ceiling, profile).await?;
        for step in &steps {
            if !step.complete() {
                report.problems.push(format!(
                    "throughput step {:.0} msg/s x {rows}: {}",
                    step.rate,
                    step.delivery_problem()
                ));
            }
        }
        report.ladders.push((rows, steps));
    }

    let problems = hub.take_problems();
    report.problems.extend(problems);
    let closed = hub.closed.load(Ordering::Relaxed);
    if closed > 0 {
        report.problems.push(format!(
            "{closed} streams ended while they should have been open"
        ));
    }
    report.signals = hub.signals.load(Ordering::Relaxed);
    drop(subscribers);
    relay.stop();
    Ok(())
}

/// Opens 10,000 idle streams and measures the relay's RSS growth and its idle CPU with them.
pub(crate) async fn idle_memory(
    ctx: &RelayCtx<'_>,
    subscribers: &mut Subscribers,
    hub: &Arc<Hub>,
    keys: &Keys,
    profile: &Profile,
    rss_before: u64,
) -> Res<Memory> {
    let (relay, names, db) = (ctx.relay, ctx.names, ctx.db);
    progress(format!("memory: opening {MANY} idle streams…"));
    let opening = subscribers
        .open(relay.addr, keys, names, 0..MANY, hub)
        .await?;
    progress(format!(
        "  opened in {:.2} s ({:.0} streams/s)",
        opening.as_secs_f64(),
        f64::from(MANY) / opening.as_secs_f64()
    ));
    let settled = presence_settled(db, i64::from(MANY), Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = relay.rss_kib()?;
    progress(format!(
        "  RSS {rss_before} KiB -> {rss_after} KiB ({:.2} KiB per stream); presence announced {:.1} s after the last open",
        (rss_after as f64 - rss_before as f64) / f64::from(MANY),
        settled.as_secs_f64()
    ));
    let idle = measure_idle(relay, profile.idle).await?;
    progress(format!(
        "  idle with {MANY} streams: relay {:.1}% of a core",
        idle.relay_cores * 100.0
    ));
    Ok(Memory {
        streams: MANY,
        rss_before,
        rss_after,
        opening,
        presence_settled: settled,
        idle,
    })
}

/// Connections of the socket floor held against the 10,000-stream latency phase: this process
/// holds both ends of each, and one process may hold 20,000 files here, so 9,000 (with the
/// 1,000 subscribers still open) is as close to 10,000 as fits.
pub(crate) const EVENT_FLOOR_CONNECTIONS: u32 = 9_000;

/// The socket floor at the latency phase's load (1,000 messages/s × 3 events over about
/// 10,000 connections): what the relay's CPU per delivered event is held against.
pub(crate) async fn event_floor(profile: &Profile) -> Res<SocketFloor> {
    progress(format!(
        "socket floor: 1,000 msg/s x 3 events over {EVENT_FLOOR_CONNECTIONS} connections, no relay…"
    ));
    let floor = socket_floor(LATENCY_RATE, 1, EVENT_FLOOR_CONNECTIONS, profile.latency).await?;
    progress(format!("  {:.1} µs CPU per event", floor.us_per_event()));
    Ok(floor)
}

/// The latency phase with `subscribers` connected: 1,000 messages/s × 3 recipients, checked
/// for lost, doubled or misrouted deliveries.
pub(crate) async fn latency_step(
    ctx: &RelayCtx<'_>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    subscribers: u32,
    profile: &Profile,
    report: &mut Report,
) -> Res<Step> {
    progress(format!(
        "latency: 1,000 messages/s x 3 recipients, {subscribers} subscribers…"
    ));
    let plan = Plan::new(LATENCY_RATE, profile.latency, 1, subscribers);
    let step = relay_step(ctx, heard, plan).await?;
    progress(format!("  {}", step.one_line()));
    report.check_step(&format!("latency with {subscribers} subscribers"), &step);
    Ok(step)
}

/// Memory at 10,000 idle streams, latency with 10,000 and then 1,000 subscribers, and the
/// costs the scaling model uses. Leaves 1,000 subscribers open.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn latency_phases(
    ctx: &RelayCtx<'_>,
    subscribers: &mut Subscribers,
    hub: &Arc<Hub>,
    heard: &mut mpsc::UnboundedReceiver<Arrival>,
    keys: &Keys,
    profile: &Profile,
    rss_before: u64,
    report: &mut Report,
) -> Res<()> {
    let (url, db) = (ctx.url, ctx.db);
    report.memory = Some(idle_memory(ctx, subscribers, hub, keys, profile, rss_before).await?);

    report.latency_many = Some(latency_step(ctx, heard, MANY, profile, report).await?);
    report.broadcast = Some(broadcast_phase(ctx, heard, MANY).await?);

    progress("presence costs with 10,000 participants on one instance…");
    report.presence = Some(presence_costs(db).await?);

    progress(format!("closing {} streams…", MANY - FEW));
    subscribers.close_from(FEW);
    report.event_floor = Some(event_floor(profile).await?);
    presence_settled(db, i64::from(FEW), Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    report.latency_few = Some(latency_step(ctx, heard, FEW, profile, report).await?);

    progress("fan-out: messages for participants with no stream on this instance…");
    report.skip = Some(skip_cost(ctx, db, profile).await?);
    progress("dispatch fetch query cost…");
    report.fetch = fetch_cost(url, profile.fetch_calls).await?;
    Ok(())
}
