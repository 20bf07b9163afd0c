//! The fleet: 1, 3 and 10 instances on one database under the same load, and what each
//! instance adds to the database per message.

use super::*;

/// Instance counts measured.
pub(crate) const FLEET_SIZES: [usize; 3] = [1, 3, 10];

pub(crate) struct FleetRun {
    pub(crate) instances: usize,
    /// The load: 1,000 msg/s × 3 recipients over 1,000 subscribers spread over the instances.
    /// Its relay CPU is the first instance's; its LISTEN-backend CPU is all instances'.
    pub(crate) step: Step,
    /// Database transactions per message beyond the writers' own (every fetch, heartbeat,
    /// presence and pool query of every instance).
    pub(crate) relay_transactions_per_message: f64,
}

impl FleetRun {
    /// Database CPU of the LISTEN sessions (wake-ups and fetches) per message, per instance (µs).
    pub(crate) fn listen_us_per_instance(&self) -> f64 {
        self.step.per_message_us(self.step.db_listen) / self.instances as f64
    }

    /// Database transactions per message, per instance.
    pub(crate) fn transactions_per_instance(&self) -> f64 {
        self.relay_transactions_per_message / self.instances as f64
    }
}

/// For each size in [`FLEET_SIZES`]: that many `pgrelay serve` processes on a fresh database,
/// `FEW` subscribers spread over them round-robin by block, and the latency load.
pub(crate) async fn fleet_phase(bench: &Bench<'_>) -> Res<Vec<FleetRun>> {
    let Bench {
        cluster,
        admin,
        relay_bin,
        profile,
        logs,
        names,
        keys,
    } = *bench;
    let mut runs = Vec::new();
    for instances in FLEET_SIZES {
        progress(format!("fleet: {instances} instance(s) on one database…"));
        let url = create_database(cluster, admin, &format!("bench_fleet_{instances}")).await?;
        let mut relays = Vec::new();
        for n in 0..instances {
            let log = logs.file(&format!("relay-fleet-{instances}-{n}.log"));
            let mut relay = RelayChild::spawn(relay_bin, &url, log)?;
            relay.wait_ready(Duration::from_secs(20)).await?;
            relays.push(relay);
        }
        let db = connect(&url, "pgrelay-bench").await?;
        let (hub, mut heard) = Hub::start();
        let mut subscribers = Subscribers::default();
        let share = FEW / instances as u32;
        for (n, relay) in relays.iter().enumerate() {
            let start = n as u32 * share;
            let end = if n + 1 == instances {
                FEW
            } else {
                start + share
            };
            subscribers
                .open(relay.addr, keys, names, start..end, &hub)
                .await?;
        }
        presence_settled(&db, i64::from(FEW), Duration::from_secs(60)).await?;
        let before = transactions(&db).await?;
        let ctx = RelayCtx {
            url: &url,
            relay: &relays[0],
            names,
            db: &db,
        };
        let plan = Plan::new(LATENCY_RATE, profile.latency, 1, FEW);
        let step = relay_step(&ctx, &mut heard, plan).await?;
        // Backends report their counters about once a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = transactions(&db).await?;
        let messages = step.messages as f64;
        let run = FleetRun {
            instances,
            relay_transactions_per_message: ((after - before) as f64 - messages) / messages,
            step,
        };
        progress(format!(
            "  {}; per instance and message: LISTEN backend {:.0} µs, {:.2} transactions",
            run.step.one_line(),
            run.listen_us_per_instance(),
            run.transactions_per_instance()
        ));
        if !run.step.complete() {
            return Err(format!("fleet of {instances}: {}", run.step.delivery_problem()).into());
        }
        drop(subscribers);
        for relay in &mut relays {
            relay.stop();
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Committed transactions of the current database so far.
async fn transactions(db: &Client) -> Res<i64> {
    Ok(db
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}
