//! Attach skips: rows of attached tables that were committed but not published, told to the
//! operator.
//!
//! The trigger `pgrelay.attach()` generates never fails the application's insert (sql/0008):
//! a row it cannot publish (no valid address left, a NULL payload, a kind or sender the rules
//! refuse, an expression that raised) is recorded in `pgrelay.attach_skips` instead. Every
//! instance looks there once per heartbeat interval. Each new row is claimed by exactly one
//! instance (`FOR UPDATE SKIP LOCKED`, then marked `reported`), which logs it, grouped by
//! table and reason, and counts it in `pgrelay_attach_skips_total`: a fleet's total is the
//! sum over its instances, and the table itself keeps the details of the newest 1000.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::DbPool;

/// Claims up to 1000 unreported skips, oldest first, and counts them per table and reason.
/// Rows another instance is claiming at the same moment are left to it.
const CLAIM: &str = "\
    WITH claimed AS ( \
        SELECT id FROM pgrelay.attach_skips WHERE NOT reported ORDER BY id LIMIT 1000 \
           FOR UPDATE SKIP LOCKED), \
    marked AS ( \
        UPDATE pgrelay.attach_skips s SET reported = true FROM claimed WHERE s.id = claimed.id \
        RETURNING s.source, s.reason) \
    SELECT source::text, reason, count(*) FROM marked GROUP BY 1, 2 ORDER BY 1, 2";

/// How many rows of one attached table were skipped for one reason.
struct Skipped {
    table: String,
    reason: String,
    rows: i64,
}

/// Reports new skips every `interval` until shutdown.
pub async fn run(
    pool: DbPool,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // A missing grant (or a database not yet migrated) would fail every round: say it once.
    let mut failing = false;
    loop {
        match claim(&pool).await {
            Ok(skipped) => {
                failing = false;
                for Skipped {
                    table,
                    reason,
                    rows,
                } in skipped
                {
                    metrics.attach_skips.add(rows.unsigned_abs());
                    warn!(
                        table,
                        reason,
                        rows,
                        "rows of an attached table were committed but not published; \
                         pgrelay.attach_skips has the details"
                    );
                }
            }
            Err(error) if !failing => {
                failing = true;
                warn!(%error, "cannot read pgrelay.attach_skips; skipped rows go unreported until it can");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn claim(pool: &DbPool) -> Result<Vec<Skipped>, Error> {
    let client = pool.get().await?;
    let rows = client.query_typed(CLAIM, &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(Skipped {
                table: row.try_get(0)?,
                reason: row.try_get(1)?,
                rows: row.try_get(2)?,
            })
        })
        .collect()
}
