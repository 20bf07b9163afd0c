//! Retention: old messages are pruned so the outbox does not grow forever.
//!
//! Every instance runs the pruner, but each round first locks the one row of
//! `pgrelay.retention` with `FOR UPDATE SKIP LOCKED`, so at most one instance prunes at a time
//! and the others skip the round. (Not an advisory lock: any login may take one of those and
//! hold it, and pruning would stop for good.)
//!
//! A message's age counts from `committed_at`, the moment its id was assigned (at or after its
//! writer's commit), which only pgrelay's own SQL sets. `created_at` is the writer's to set
//! (and a long transaction's rows carry its start time), so a backdated row or a transaction
//! left open must not make fresh messages look old. Pruning deletes the oldest messages in id
//! order and stops at the first one younger than the retention period: what is gone is always
//! a prefix of the ids, up to `pgrelay.retention.pruned_through`, and a stream whose position
//! is below it is told with a `reset` event that history was truncated.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::DbPool;

/// Rows deleted per transaction, so pruning never holds locks or bloats WAL for long.
const PRUNE_BATCH: i64 = 5000;

/// Prunes once right away and then at a fraction of the retention period (at most hourly,
/// at least every ten seconds), until shutdown; counts each round in `metrics`.
pub async fn run(
    pool: DbPool,
    retention: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let interval = (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600));
    loop {
        match prune(&pool, retention).await {
            Ok(deleted) => {
                metrics.messages_pruned.add(deleted);
                metrics.pruning_rounds.inc();
                match deleted {
                    0 => debug!("nothing to prune"),
                    _ => info!(deleted, "pruned messages older than the retention period"),
                }
            }
            Err(error) => {
                metrics.pruning_failures.inc();
                warn!(%error, "pruning failed; will retry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Deletes messages older than `retention`, in batches; returns how many were deleted.
/// Does nothing when another instance is pruning.
pub async fn prune(pool: &DbPool, retention: Duration) -> Result<u64, Error> {
    let mut client = pool.get().await?;
    let retention_seconds = retention.as_secs_f64();
    let mut deleted = 0;
    loop {
        let transaction = client.transaction().await?;
        let locked = transaction
            .query_typed(
                "SELECT 1 FROM pgrelay.retention FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?;
        if locked.is_empty() {
            return Ok(deleted);
        }
        // The next `PRUNE_BATCH` ids after what is already gone, up to (not including) the
        // first one that is not old enough: "everything at or below pruned_through is gone"
        // holds exactly, and each batch reads only the rows it deletes and one more. Rows
        // numbered before committed_at existed (0005) fall back to created_at.
        let row = transaction
            .query_typed_one(
                "WITH next AS ( \
                     SELECT m.id, coalesce(m.committed_at, m.created_at) \
                                  < now() - make_interval(secs => $1) AS old \
                       FROM pgrelay.messages m, pgrelay.retention r \
                      WHERE m.id > greatest(r.pruned_through, 0) ORDER BY m.id LIMIT $2), \
                 doomed AS ( \
                     SELECT id FROM next \
                      WHERE id < coalesce((SELECT min(id) FROM next WHERE NOT old), 9223372036854775807)), \
                 gone AS (DELETE FROM pgrelay.messages WHERE id IN (SELECT id FROM doomed) RETURNING id) \
                 SELECT count(*)::int8, coalesce(max(id), 0)::int8 FROM gone",
                &[(&retention_seconds, Type::FLOAT8), (&PRUNE_BATCH, Type::INT8)],
            )
            .await?;
        let (count, highest): (i64, i64) = (row.get(0), row.get(1));
        if count > 0 {
            transaction
                .query_typed(
                    "UPDATE pgrelay.retention SET pruned_through = greatest(pruned_through, $1)",
                    &[(&highest, Type::INT8)],
                )
                .await?;
        }
        transaction.commit().await?;
        deleted += count as u64;
        if count < PRUNE_BATCH {
            return Ok(deleted);
        }
    }
}
