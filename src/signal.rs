//! Signals: live-only events (typing indicators, presence) that are never served from history.
//!
//! `pgrelay.signal()` (or `POST /v1/signals`) writes a row of the UNLOGGED table
//! `pgrelay.signals`, which only the schema owner may read, and wakes the relays with an empty
//! notification. The listener reads the new rows and the registry hands each [`Signal`] to its
//! participants' open streams, which send it without an `id:` line so it never moves a
//! client's resume position. A stream that is catching up from the database drops signals:
//! they are forgettable by design, and replaying stale "typing…" would be wrong anyway.

use serde_json::value::RawValue;

/// One signal, with its SSE `data` rendered once for every recipient.
#[derive(Debug)]
pub struct Signal {
    /// The SSE `event:` name.
    pub kind: String,
    /// Who receives it.
    pub participants: Vec<String>,
    /// `{"kind":…,"sender":…,"participants":[…],"payload":…}`; for the relay's own
    /// `presence` signals, just the payload `{"participant":…,"online":…,"at":…}`.
    pub data: Box<RawValue>,
}
