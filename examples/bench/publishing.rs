//! Publishing over HTTP: sustained `POST /v1/messages` throughput and latency from 100
//! concurrent publishers, with group commit and with one message per transaction, beside the
//! one-row-per-transaction ceiling of the database itself.

use super::*;

/// Concurrent publishers, each with its own keep-alive connection, each sending its next
/// message as soon as the previous one is answered.
pub(crate) const PUBLISHERS: usize = 100;

pub(crate) struct Publishing {
    /// `--publish-batch` of the relay.
    pub(crate) batch: usize,
    pub(crate) published: u64,
    pub(crate) seconds: f64,
    /// Request → `201` answer (µs).
    pub(crate) latency: Percentiles,
    /// Transactions the messages took (distinct `xmin`).
    pub(crate) transactions: i64,
}

impl Publishing {
    pub(crate) fn per_second(&self) -> f64 {
        self.published as f64 / self.seconds
    }
}

/// Runs [`PUBLISHERS`] publishers against a relay started with `--publish-batch {batch}` on a
/// fresh database `url` for `duration`.
pub(crate) async fn publishing_phase(
    url: &str,
    relay_bin: &Path,
    logs: &LogDir,
    keys: &Keys,
    batch: usize,
    duration: Duration,
) -> Res<Publishing> {
    progress(format!(
        "publishing: {PUBLISHERS} concurrent publishers, --publish-batch {batch}…"
    ));
    let batch_flag = batch.to_string();
    let mut relay = RelayChild::spawn_with(
        relay_bin,
        url,
        logs.file(&format!("relay-publish-{batch}.log")),
        &[
            "--publish-batch",
            &batch_flag,
            // The per-sender limit guards against a runaway client, not this load.
            "--publish-rate",
            "1000000",
            "--publish-burst",
            "1000000",
        ],
    )?;
    relay.wait_ready(Duration::from_secs(20)).await?;
    let base = format!("http://{}", relay.addr);
    let started = Instant::now();
    let deadline = started + duration;
    let publishers = (0..PUBLISHERS).map(|n| {
        let token = keys.mint(
            &format!("publisher{n}"),
            Duration::from_secs(3600),
            &["publish"],
        );
        tokio::spawn(publish_flat_out(base.clone(), token, deadline))
    });
    let mut latencies = Vec::new();
    for publisher in futures::future::join_all(publishers).await {
        latencies.extend(publisher??);
    }
    let seconds = started.elapsed().as_secs_f64();
    relay.stop();
    let db = connect(url, "pgrelay-bench").await?;
    let transactions: i64 = db
        .query_one(
            "SELECT count(DISTINCT xmin::text)::int8 FROM pgrelay.messages",
            &[],
        )
        .await?
        .get(0);
    let publishing = Publishing {
        batch,
        published: latencies.len() as u64,
        seconds,
        latency: Percentiles::of(&latencies),
        transactions,
    };
    progress(format!(
        "  {:.0} messages/s in {} transactions; request → 201 p50/p90/p99/max {}",
        publishing.per_second(),
        publishing.transactions,
        publishing.latency.describe()
    ));
    Ok(publishing)
}

/// One publisher on its own keep-alive connection to the relay at `base`: sends its next
/// message as soon as the previous one is answered, until `deadline`; returns each request's
/// time to its `201` (µs). Any other answer ends it with an error.
pub(crate) async fn publish_flat_out(
    base: String,
    token: String,
    deadline: Instant,
) -> Result<Vec<f64>, String> {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/messages");
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        let response = client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"participants": ["inbox"], "payload": {"x": TEXT}}))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if response.status() != 201 {
            return Err(format!("POST answered {}", response.status()));
        }
        latencies.push(micros_between(sent, Instant::now()));
    }
    Ok(latencies)
}
