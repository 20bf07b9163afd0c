//! Cold start.

use super::*;

/// Spawn to the first `/readyz` 200, `count` times; each relay is killed before the next.
pub(crate) async fn cold_starts(
    bin: &Path,
    url: &str,
    logs: &LogDir,
    count: usize,
) -> Res<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let mut relay = RelayChild::spawn(bin, url, logs.file(&format!("relay-cold-{i}.log")))?;
        let ready = relay.wait_ready(Duration::from_secs(20)).await?;
        times.push(ready.duration_since(relay.spawned).as_secs_f64() * 1000.0);
        drop(relay);
    }
    progress(format!("  {} ms", list_ms(&times)));
    Ok(times)
}
