//! Applying `sql/` to a database: `pgrelay migrate`, the demo and the tests.
//!
//! The SQL files are compiled into the binary, so a deployed relay always carries the
//! schema it expects. Concurrent runs (many instances starting at once) are serialised by a
//! session advisory lock; each file runs in its own transaction and records its version, so a
//! run that dies halfway leaves the database at a clean version boundary.

use tokio_postgres::Client;
use tracing::info;

use crate::error::Error;
use crate::tls;

/// The migrations, in order: (version, file name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_outbox.sql", include_str!("../sql/0001_outbox.sql")),
    (2, "0002_attach.sql", include_str!("../sql/0002_attach.sql")),
    (
        3,
        "0003_signals.sql",
        include_str!("../sql/0003_signals.sql"),
    ),
    (
        4,
        "0004_presence.sql",
        include_str!("../sql/0004_presence.sql"),
    ),
    (5, "0005_trust.sql", include_str!("../sql/0005_trust.sql")),
    (6, "0006_rooms.sql", include_str!("../sql/0006_rooms.sql")),
    (
        7,
        "0007_publish_many.sql",
        include_str!("../sql/0007_publish_many.sql"),
    ),
    (
        8,
        "0008_attach_names_kinds.sql",
        include_str!("../sql/0008_attach_names_kinds.sql"),
    ),
    (
        9,
        "0009_sequencer.sql",
        include_str!("../sql/0009_sequencer.sql"),
    ),
    (
        10,
        "0010_live_access.sql",
        include_str!("../sql/0010_live_access.sql"),
    ),
    (
        11,
        "0011_idempotency.sql",
        include_str!("../sql/0011_idempotency.sql"),
    ),
    (
        12,
        "0012_pending_by_index.sql",
        include_str!("../sql/0012_pending_by_index.sql"),
    ),
    (
        13,
        "0013_revoked_publishers.sql",
        include_str!("../sql/0013_revoked_publishers.sql"),
    ),
    (
        14,
        "0014_participants_index_without_pending_list.sql",
        include_str!("../sql/0014_participants_index_without_pending_list.sql"),
    ),
    (
        15,
        "0015_pg_temp_last.sql",
        include_str!("../sql/0015_pg_temp_last.sql"),
    ),
    (
        16,
        "0016_commit_order.sql",
        include_str!("../sql/0016_commit_order.sql"),
    ),
    (
        17,
        "0017_signal_participants.sql",
        include_str!("../sql/0017_signal_participants.sql"),
    ),
    (
        18,
        "0018_presence_bounded_audience.sql",
        include_str!("../sql/0018_presence_bounded_audience.sql"),
    ),
    (
        19,
        "0019_numbering_large_transactions.sql",
        include_str!("../sql/0019_numbering_large_transactions.sql"),
    ),
    (
        20,
        "0020_presence_reaches_everyone_online.sql",
        include_str!("../sql/0020_presence_reaches_everyone_online.sql"),
    ),
    (
        21,
        "0021_presence_rooms_bounded.sql",
        include_str!("../sql/0021_presence_rooms_bounded.sql"),
    ),
    (
        22,
        "0022_savepoints_numbered_with_their_transaction.sql",
        include_str!("../sql/0022_savepoints_numbered_with_their_transaction.sql"),
    ),
    (
        23,
        "0023_commit_time_per_transaction.sql",
        include_str!("../sql/0023_commit_time_per_transaction.sql"),
    ),
    (
        24,
        "0024_write_and_pass_without_reparsing.sql",
        include_str!("../sql/0024_write_and_pass_without_reparsing.sql"),
    ),
    (
        25,
        "0025_numbering_says_how_far.sql",
        include_str!("../sql/0025_numbering_says_how_far.sql"),
    ),
    (
        26,
        "0026_kind_rule_by_its_own_operators.sql",
        include_str!("../sql/0026_kind_rule_by_its_own_operators.sql"),
    ),
    (
        27,
        "0027_no_needless_calls_per_row.sql",
        include_str!("../sql/0027_no_needless_calls_per_row.sql"),
    ),
    (
        28,
        "0028_numbering_pages_bounded_by_names.sql",
        include_str!("../sql/0028_numbering_pages_bounded_by_names.sql"),
    ),
    (
        29,
        "0029_membership_deadlocks_end_the_early_recorder.sql",
        include_str!("../sql/0029_membership_deadlocks_end_the_early_recorder.sql"),
    ),
    (
        30,
        "0030_order_locks_out_of_writers_reach.sql",
        include_str!("../sql/0030_order_locks_out_of_writers_reach.sql"),
    ),
    (
        31,
        "0031_passes_skip_open_transactions.sql",
        include_str!("../sql/0031_passes_skip_open_transactions.sql"),
    ),
    (
        32,
        "0032_strays_copied_in_are_numbered.sql",
        include_str!("../sql/0032_strays_copied_in_are_numbered.sql"),
    ),
    (
        33,
        "0033_publish_numbers_one_page_at_a_time.sql",
        include_str!("../sql/0033_publish_numbers_one_page_at_a_time.sql"),
    ),
];

/// Serialises migration runs across every process connected to the database.
const MIGRATE_LOCK_KEY: i64 = 7395514830127704946;

/// Applies every migration not yet recorded, and points the outbox trigger at `channel`.
/// Returns the versions applied by this run.
pub async fn migrate(database_url: &str, channel: &str) -> Result<Vec<i32>, Error> {
    let (client, connection) = tls::open(database_url).await?;
    let driver = tokio::spawn(connection);
    let result = migrate_with(&client, channel).await;
    drop(client);
    let _ = driver.await;
    result
}

async fn migrate_with(client: &Client, channel: &str) -> Result<Vec<i32>, Error> {
    client
        .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATE_LOCK_KEY})"))
        .await?;
    let applied = apply_pending(client, channel).await?;
    // On error the lock goes with the session instead: a failed transaction would refuse this.
    client
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATE_LOCK_KEY})"))
        .await?;
    Ok(applied)
}

async fn apply_pending(client: &Client, channel: &str) -> Result<Vec<i32>, Error> {
    let exists: bool = client
        .query_typed_one(
            "SELECT to_regclass('pgrelay.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let applied: Vec<i32> = if exists {
        client
            .query_typed("SELECT version FROM pgrelay.schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let mut newly_applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        info!(migration = name, "applying");
        // client_min_messages: "does not exist, skipping" notices are expected on a first run.
        client
            .batch_execute(&format!(
                "BEGIN;\nSET LOCAL client_min_messages = warning;\n{sql}\n;COMMIT;"
            ))
            .await
            .map_err(|error| {
                Error::setup(match error.as_db_error() {
                    Some(db) => format!("{name}: {}: {}", db.severity(), db.message()),
                    None => format!("{name}: {error}"),
                })
            })?;
        newly_applied.push(version);
    }
    set_channel(client, channel).await?;
    Ok(newly_applied)
}

/// Makes `pgrelay.channel()` return `channel`, if it does not already.
async fn set_channel(client: &Client, channel: &str) -> Result<(), Error> {
    let current: String = client
        .query_typed_one("SELECT pgrelay.channel()", &[])
        .await?
        .get(0);
    if current != channel {
        let literal = channel.replace('\'', "''");
        client
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION pgrelay.channel() RETURNS text \
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '{literal}'::text $$"
            ))
            .await?;
        info!(channel, "outbox trigger now notifies on this channel");
    }
    Ok(())
}

/// The channel the outbox trigger notifies on, or `None` when the schema is missing.
pub async fn installed_channel(client: &Client) -> Result<Option<String>, Error> {
    let installed: bool = client
        .query_typed_one(
            "SELECT to_regprocedure('pgrelay.channel()') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !installed {
        return Ok(None);
    }
    let row = client
        .query_typed_one("SELECT pgrelay.channel()", &[])
        .await?;
    Ok(Some(row.get(0)))
}

/// Whether the schema numbers messages after commit (0009): a relay needs `pgrelay.sequence`.
pub async fn has_sequencer(client: &Client) -> Result<bool, Error> {
    let row = client
        .query_typed_one(
            "SELECT to_regprocedure('pgrelay.sequence(integer)') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}
