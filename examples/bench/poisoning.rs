//! One sender's bad payloads against everyone else's publishing: 50 honest senders publish
//! flat out through group commit, alone, then beside one sender that posts payloads the
//! database would refuse, 200 a second (issue 20, item 3).

use super::*;

/// Honest senders, each with its own keep-alive connection, each sending its next message as
/// soon as the previous one is answered.
pub(crate) const HONEST: usize = 50;

/// How fast the poisoner posts: ten times the default `--publish-rate`, so it stays within a
/// sender's limit raised that far. The relay's limit itself is lifted in this phase, as in the
/// publishing phase: an honest sender flat out reaches 90 to 280 a second here, depending on
/// the machine's load, and must never meet it.
pub(crate) const POISON_RATE: u32 = 200;

/// What the poisoner posts, if anything.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Poison {
    /// No poisoner: the reference.
    None,
    /// Payloads `jsonb` refuses (`\u0000`, a lone surrogate, `1e999999`, nesting 20,000
    /// deep), which the relay answers before they join a batch.
    Jsonb,
    /// Rows a CHECK constraint added to the outbox refuses: the relay cannot foresee them, so
    /// each fails the batch it joined, which is then split.
    Constraint,
}

impl Poison {
    pub(crate) fn describe(self) -> String {
        let what = match self {
            Poison::None => return "alone".to_owned(),
            Poison::Jsonb => "payloads jsonb refuses",
            Poison::Constraint => "rows a CHECK constraint refuses",
        };
        format!("beside one sender posting {what}, {POISON_RATE}/s")
    }

    /// The body of the poisoner's `n`th post.
    fn body(self, n: usize) -> String {
        let payload = match (self, n % 4) {
            (Poison::None | Poison::Constraint, _) => r#"{"poison": true}"#.to_owned(),
            (Poison::Jsonb, 0) => r#""\u0000""#.to_owned(),
            (Poison::Jsonb, 1) => r#""\ud800""#.to_owned(),
            (Poison::Jsonb, 2) => "1e999999".to_owned(),
            // Past PostgreSQL's stack at its default `max_stack_depth`, not only past the
            // relay's own limit, so a relay without the check gets the same refusals from the
            // database.
            (Poison::Jsonb, _) => format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)),
        };
        format!(r#"{{"participants": ["inbox"], "payload": {payload}}}"#)
    }
}

pub(crate) struct Poisoning {
    pub(crate) poison: Poison,
    /// Messages the honest senders published.
    pub(crate) published: u64,
    pub(crate) seconds: f64,
    /// An honest request → its `201` (µs).
    pub(crate) latency: Percentiles,
    /// The poisoner's posts answered 422, as they should be.
    pub(crate) refused: u64,
    /// The poisoner's posts answered otherwise: refused data that was stored, or a failure.
    pub(crate) other_answers: u64,
}

impl Poisoning {
    pub(crate) fn per_second(&self) -> f64 {
        self.published as f64 / self.seconds
    }
}

/// Slices of each kind in a phase: alone, beside the jsonb poisoner and beside the constraint
/// poisoner take turns, so that a change in the machine's load (other processes share it)
/// falls on all three alike.
const ROUNDS: u32 = 3;

/// Runs [`HONEST`] flat-out senders against one relay for `duration` in all, in [`ROUNDS`]
/// rounds of three slices: alone, and beside a poisoner posting each [`Poison`] at
/// [`POISON_RATE`]. The outbox refuses rows with a key `poison`, as an application's own
/// constraint might; honest rows never have one. Each poisoning slice has a poisoner of its
/// own, so each starts with a sender the relay has not seen refused.
pub(crate) async fn poisoning_phase(bench: &Bench<'_>, duration: Duration) -> Res<Vec<Poisoning>> {
    progress(format!(
        "poisoning: {HONEST} honest publishers alone and beside a poisoner, {ROUNDS} rounds…"
    ));
    let db = create_database(bench.cluster, bench.admin, "bench_poisoning").await?;
    connect(&db, "pgrelay-bench")
        .await?
        .batch_execute(
            "ALTER TABLE pgrelay.messages \
             ADD CONSTRAINT bench_refuses_poison CHECK (NOT payload ? 'poison')",
        )
        .await?;
    let mut relay = RelayChild::spawn_with(
        bench.relay_bin,
        &db,
        bench.logs.file("relay-poisoning.log"),
        &["--publish-rate", "1000000", "--publish-burst", "1000000"],
    )?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let base = format!("http://{}", relay.addr);
    let slice = duration / (3 * ROUNDS);
    let mut runs: Vec<Poisoning> = [Poison::None, Poison::Jsonb, Poison::Constraint]
        .into_iter()
        .map(|poison| Poisoning {
            poison,
            published: 0,
            seconds: 0.0,
            latency: Percentiles::default(),
            refused: 0,
            other_answers: 0,
        })
        .collect();
    let mut latencies = vec![Vec::new(); runs.len()];
    for round in 0..ROUNDS {
        for (run, latencies) in runs.iter_mut().zip(&mut latencies) {
            let poisoner = format!("poisoner-{round}-{}", run.poison as u8);
            let taken = poisoning_slice(bench.keys, &base, run.poison, &poisoner, slice).await?;
            run.published += taken.latencies.len() as u64;
            run.seconds += taken.seconds;
            run.refused += taken.refused;
            run.other_answers += taken.other_answers;
            latencies.extend(taken.latencies);
        }
    }
    relay.stop();
    for (run, latencies) in runs.iter_mut().zip(&latencies) {
        run.latency = Percentiles::of(latencies);
        progress(format!(
            "  {}: honest {:.0} messages/s, request → 201 p50/p90/p99/max {}; poisoner {} answered 422, {} otherwise",
            run.poison.describe(),
            run.per_second(),
            run.latency.describe(),
            run.refused,
            run.other_answers
        ));
    }
    Ok(runs)
}

/// What one slice measured.
struct Slice {
    /// Each honest request → its `201` (µs).
    latencies: Vec<f64>,
    seconds: f64,
    refused: u64,
    other_answers: u64,
}

/// [`HONEST`] senders flat out for `length` against the relay at `base`, beside `poisoner`
/// posting `poison` (nobody for [`Poison::None`]).
async fn poisoning_slice(
    keys: &Keys,
    base: &str,
    poison: Poison,
    poisoner: &str,
    length: Duration,
) -> Res<Slice> {
    let token = |sub: &str| keys.mint(sub, Duration::from_secs(3600), &["publish"]);
    let started = Instant::now();
    let deadline = started + length;
    let poisoner = (poison != Poison::None).then(|| {
        tokio::spawn(post_poison(
            base.to_owned(),
            token(poisoner),
            poison,
            deadline,
        ))
    });
    let honest = (0..HONEST).map(|n| {
        tokio::spawn(publish_flat_out(
            base.to_owned(),
            token(&format!("honest{n}")),
            deadline,
        ))
    });
    let mut latencies = Vec::new();
    for sender in futures::future::join_all(honest).await {
        latencies.extend(sender??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (refused, other_answers) = match poisoner {
        Some(poisoner) => poisoner.await?,
        None => (0, 0),
    };
    Ok(Slice {
        latencies,
        seconds,
        refused,
        other_answers,
    })
}

/// The poisoner: posts `poison` on a fixed schedule of [`POISON_RATE`] a second until
/// `deadline`, without waiting for answers (so a slow answer cannot slow it down); returns how
/// many posts were answered 422 and how many otherwise.
async fn post_poison(base: String, token: String, poison: Poison, deadline: Instant) -> (u64, u64) {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/messages");
    let started = Instant::now();
    let mut posts = Vec::new();
    for n in 0.. {
        let due = started + Duration::from_secs_f64(n as f64 / f64::from(POISON_RATE));
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let post = client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(poison.body(n))
            .send();
        posts.push(tokio::spawn(post));
    }
    let (mut refused, mut otherwise) = (0, 0);
    for answer in futures::future::join_all(posts).await {
        match answer {
            Ok(Ok(response)) if response.status() == 422 => refused += 1,
            _ => otherwise += 1,
        }
    }
    (refused, otherwise)
}
