//! The listener's proof that its connection still receives notifications: a heartbeat
//! NOTIFY sent from a pool session at every interval, which must come back on the LISTEN
//! connection by the next one.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio_postgres::types::{ToSql, Type};
use tracing::debug;

use super::Listener;
use crate::error::Error;

/// The listener's proof that its connection still receives notifications.
pub(super) struct Heartbeat {
    /// `{"heartbeat":"<instance>:` — identifies this session's own heartbeats; other
    /// instances' heartbeats on the shared channel are dropped unread.
    prefix: String,
    /// Number of the last heartbeat sent.
    sent: AtomicU64,
    /// Number of the last heartbeat received back, written by the connection driver.
    received: AtomicU64,
    /// Woken by the driver whenever one of ours comes back.
    arrived: Notify,
}

impl Heartbeat {
    pub(super) fn new() -> Heartbeat {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Heartbeat {
            prefix: format!(r#"{{"heartbeat":"{}-{nanos}:"#, std::process::id()),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            arrived: Notify::new(),
        }
    }

    /// Whether `payload` is a heartbeat (anyone's); records our own as received.
    pub(super) fn is_heartbeat(&self, payload: &str) -> bool {
        if let Some(rest) = payload.strip_prefix(&self.prefix) {
            if let Some(number) = rest.strip_suffix(r#""}"#).and_then(|n| n.parse().ok()) {
                self.received.fetch_max(number, Ordering::SeqCst);
                self.arrived.notify_waiters();
            }
            return true;
        }
        payload.starts_with(r#"{"heartbeat":"#)
    }

    /// Sends a heartbeat and waits (up to one interval) until it comes back.
    pub(super) async fn round_trip(
        &self,
        listener: &Listener,
        client: &tokio_postgres::Client,
    ) -> Result<(), Error> {
        let number = self.send(listener, client).await?;
        let back = async {
            loop {
                // Created before the check, so a wake-up in between is not lost.
                let arrived = self.arrived.notified();
                if self.received.load(Ordering::SeqCst) >= number {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(listener.heartbeat, back)
            .await
            .map_err(|_| self.lost(number, listener))
    }

    /// Fails if the previous heartbeat has not come back; otherwise sends the next one.
    pub(super) async fn beat(
        &self,
        listener: &Listener,
        client: &tokio_postgres::Client,
    ) -> Result<(), Error> {
        let sent = self.sent.load(Ordering::SeqCst);
        if self.received.load(Ordering::SeqCst) < sent {
            return Err(self.lost(sent, listener));
        }
        self.send(listener, client).await.map(|_| ())
    }

    fn lost(&self, number: u64, listener: &Listener) -> Error {
        Error::connection(format!(
            "heartbeat {number} did not come back within {:?}: the connection does not receive \
             notifications (a dead connection, or LISTEN through a transaction-mode pooler?)",
            listener.heartbeat
        ))
    }

    /// Sends the next heartbeat and reads the notification queue's fill level for `/metrics`;
    /// returns the heartbeat's number.
    async fn send(
        &self,
        listener: &Listener,
        client: &tokio_postgres::Client,
    ) -> Result<u64, Error> {
        let next = self.sent.load(Ordering::SeqCst) + 1;
        self.sent.store(next, Ordering::SeqCst);
        let payload = format!(r#"{}{next}"}}"#, self.prefix);
        // Sent from a pool session, like an application's NOTIFY: a LISTEN session parked in
        // a transaction-mode pooler hears its own notifications but never anyone else's. Only
        // when the pool fails does the LISTEN connection notify itself, which at least proves
        // that it still answers.
        let pooled = match listener.pool.get().await {
            Ok(pooled) => notify(listener, &pooled, &payload).await,
            Err(error) => Err(error.into()),
        };
        let usage = match pooled {
            Ok(usage) => usage,
            Err(error) => {
                debug!(%error, "heartbeat through the pool failed; sending it on the LISTEN connection");
                notify(listener, client, &payload).await?
            }
        };
        listener.metrics.set_notify_queue_usage(usage);
        Ok(next)
    }
}

/// Sends `payload` on the channel; returns `pg_notification_queue_usage()`.
async fn notify(
    listener: &Listener,
    client: &tokio_postgres::Client,
    payload: &str,
) -> Result<f64, Error> {
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&listener.channel, Type::TEXT), (&payload, Type::TEXT)];
    let query = client.query_typed_one(
        "SELECT pg_notify($1, $2)::text, pg_notification_queue_usage()",
        &params,
    );
    let row = tokio::time::timeout(listener.heartbeat, query)
        .await
        .map_err(|_| {
            Error::connection("the heartbeat query timed out: the connection is not answering")
        })??;
    Ok(row.try_get(1)?)
}
