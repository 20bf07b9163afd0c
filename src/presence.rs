//! Presence: who is online, across every instance, with the database as the only broker.
//!
//! Every quarter second this task compares the participants with open streams here against
//! those it has announced, and sends the differences to `pgrelay.presence_update` in one call:
//! the SQL decides whether a change flips the participant's state across all instances and, if
//! so, signals it to their audience. Flapping is absorbed twice: a reconnect inside one tick is
//! never seen, and a participant whose last stream closed counts as gone only after the
//! debounce period. Rows are refreshed every third of the TTL; a crashed instance's rows just
//! age out, and `pgrelay.presence_expire` (one instance at a time) announces those departures.
//!
//! On shutdown the rows are left to age out rather than deleted: clients reconnect to another
//! instance within seconds, so a rolling restart flips nobody offline and costs no audience
//! queries at all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::Error;
use crate::registry::Registry;
use crate::store::DbPool;

/// What the presence task needs from the rest of the relay.
pub struct Presence {
    /// Query connections.
    pub pool: DbPool,
    /// The open streams, whose participants are online here.
    pub registry: Arc<Registry>,
    /// This process's name in `pgrelay.presence`, unique per start.
    pub instance: String,
    /// How long a row lives without a refresh.
    pub ttl: Duration,
    /// How long a participant's last stream must stay closed before they count as offline.
    pub debounce: Duration,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// How often the open streams are compared with what was announced.
const TICK: Duration = Duration::from_millis(250);

/// Most participants sent per `presence_update` call, so a mass reconnect is spread over
/// several ticks instead of one huge statement.
const MAX_CHANGES_PER_TICK: usize = 500;

/// Tracks and announces this instance's participants until shutdown.
pub async fn run(presence: Presence) {
    let presence = &presence;
    let mut tracker = Tracker::default();
    let refresh_every = presence.ttl / 3;
    let mut last_refresh = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    // The registry generation the last comparison saw; `None` forces one.
    let mut compared: Option<u64> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = presence.shutdown.cancelled() => return,
        }
        let now = Instant::now();
        let generation = presence.registry.generation();
        // Nothing opened or closed and nobody is waiting out the debounce: nothing to compare.
        let idle = compared == Some(generation) && tracker.absent_since.is_empty();
        compared = Some(generation);
        let changes = if idle {
            Changes::default()
        } else {
            let debounce = presence.debounce;
            let changes = tracker.changes(presence.registry.participants(), now, debounce);
            if changes.joined.len() == MAX_CHANGES_PER_TICK
                || changes.left.len() == MAX_CHANGES_PER_TICK
            {
                // The batch was capped: compare again next tick for the rest.
                compared = None;
            }
            changes
        };
        if !changes.is_empty() {
            match update(presence, &changes.joined, &changes.left).await {
                Ok(()) => tracker.confirm(changes),
                Err(error) if changes.joined.len() + changes.left.len() > 1 => {
                    // One participant's bad data must not hold back everyone else's changes:
                    // send them one by one.
                    warn!(error = ?error, "presence update failed; trying each change alone");
                    let failed = update_one_by_one(presence, &mut tracker, changes).await;
                    if !failed.is_empty() {
                        tracker.retry(failed, now);
                        compared = None;
                    }
                }
                Err(error) => {
                    if error.is_refused_data() {
                        warn!(error = ?error, "presence change refused by the database; dropped");
                        tracker.confirm(changes);
                    } else {
                        warn!(error = ?error, "presence update failed; retrying");
                        tracker.retry(changes, now);
                        compared = None;
                    }
                }
            }
        }
        if last_refresh.elapsed() >= refresh_every {
            last_refresh = Instant::now();
            if let Err(error) = refresh(presence, &tracker.announced).await {
                warn!(error = ?error, "presence refresh failed; retrying");
            }
        }
    }
}

/// This instance's view: what it announced, and who is debouncing towards offline.
#[derive(Default)]
struct Tracker {
    /// Participants with a row for this instance.
    announced: HashSet<String>,
    /// Announced participants with no stream here any more, since when.
    absent_since: HashMap<String, Instant>,
}

/// One batch for `pgrelay.presence_update`.
#[derive(Default)]
struct Changes {
    joined: Vec<String>,
    left: Vec<String>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

impl Tracker {
    /// The joins and (debounced) departures since the last confirmed batch.
    fn changes(&mut self, current: HashSet<String>, now: Instant, debounce: Duration) -> Changes {
        for participant in &self.announced {
            if !current.contains(participant) {
                self.absent_since.entry(participant.clone()).or_insert(now);
            }
        }
        self.absent_since
            .retain(|participant, _| !current.contains(participant));
        let joined: Vec<String> = current
            .into_iter()
            .filter(|participant| !self.announced.contains(participant))
            .take(MAX_CHANGES_PER_TICK)
            .collect();
        let left: Vec<String> = self
            .absent_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= debounce)
            .map(|(participant, _)| participant.clone())
            .take(MAX_CHANGES_PER_TICK)
            .collect();
        for participant in &left {
            self.absent_since.remove(participant);
        }
        Changes { joined, left }
    }

    fn confirm(&mut self, changes: Changes) {
        self.announced.extend(changes.joined);
        for participant in &changes.left {
            self.announced.remove(participant);
        }
    }

    /// Puts the departures back so the next tick sends them again (joins recompute anyway).
    fn retry(&mut self, changes: Changes, now: Instant) {
        for participant in changes.left {
            self.absent_since.insert(participant, now);
        }
    }
}

/// Sends each change of a failed batch on its own. A change the database refuses as data
/// ([`Error::is_refused_data`]) is logged and dropped, as it would fail forever; the changes
/// that failed otherwise (the database is away) are returned for a retry.
async fn update_one_by_one(
    presence: &Presence,
    tracker: &mut Tracker,
    changes: Changes,
) -> Changes {
    let mut failed = Changes::default();
    let joins = changes.joined.into_iter().map(|p| Changes {
        joined: vec![p],
        left: Vec::new(),
    });
    let leaves = changes.left.into_iter().map(|p| Changes {
        joined: Vec::new(),
        left: vec![p],
    });
    for single in joins.chain(leaves) {
        match update(presence, &single.joined, &single.left).await {
            Ok(()) => tracker.confirm(single),
            Err(error) if error.is_refused_data() => {
                warn!(error = ?error, "presence change refused by the database; dropped");
                tracker.confirm(single);
            }
            Err(_) => {
                failed.joined.extend(single.joined);
                failed.left.extend(single.left);
            }
        }
    }
    failed
}

/// Sends one batch of joins and departures to `pgrelay.presence_update`.
async fn update(presence: &Presence, joined: &[String], left: &[String]) -> Result<(), Error> {
    let client = presence.pool.get().await?;
    let ttl = presence.ttl.as_secs_f64();
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&presence.instance, Type::TEXT),
        (&joined, Type::TEXT_ARRAY),
        (&left, Type::TEXT_ARRAY),
        (&ttl, Type::FLOAT8),
    ];
    client
        .query_typed(
            "SELECT pgrelay.presence_update($1, $2, $3, make_interval(secs => $4))::text",
            &params,
        )
        .await?;
    Ok(())
}

/// Keeps this instance's rows alive, re-creates them if they aged out (the instance was
/// paused longer than the TTL), and expires dead instances' rows.
async fn refresh(presence: &Presence, announced: &HashSet<String>) -> Result<(), Error> {
    let client = presence.pool.get().await?;
    let refreshed = client
        .query_typed(
            "UPDATE pgrelay.presence SET heartbeat_at = now() WHERE instance = $1 RETURNING 1",
            &[(&presence.instance, Type::TEXT)],
        )
        .await?
        .len();
    if refreshed < announced.len() {
        let all: Vec<String> = announced.iter().cloned().collect();
        drop(client);
        update(presence, &all, &[]).await?;
    }
    let ttl = presence.ttl.as_secs_f64();
    presence
        .pool
        .get()
        .await?
        .query_typed(
            "SELECT pgrelay.presence_expire(make_interval(secs => $1))",
            &[(&ttl, Type::FLOAT8)],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn departures_wait_for_the_debounce_and_returns_cancel_them() {
        let debounce = Duration::from_secs(3);
        let start = Instant::now();
        let mut tracker = Tracker::default();
        let changes = tracker.changes(set(&["alice", "bob"]), start, debounce);
        assert_eq!(changes.joined.len(), 2);
        tracker.confirm(changes);

        // alice closes her tab: nothing yet.
        let changes = tracker.changes(set(&["bob"]), start + Duration::from_secs(1), debounce);
        assert!(changes.is_empty());
        // …and reopens it within the debounce: still nothing, and nothing later either.
        let changes = tracker.changes(
            set(&["alice", "bob"]),
            start + Duration::from_secs(2),
            debounce,
        );
        assert!(changes.is_empty());
        let changes = tracker.changes(set(&["bob"]), start + Duration::from_secs(5), debounce);
        assert!(changes.is_empty(), "the absence clock restarted");
        let changes = tracker.changes(set(&["bob"]), start + Duration::from_secs(8), debounce);
        assert_eq!(changes.left, ["alice"]);
        tracker.confirm(changes);
        assert_eq!(tracker.announced, set(&["bob"]));
    }
}
