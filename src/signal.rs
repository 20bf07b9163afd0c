//! Signals: live-only events (typing indicators, presence) that travel as a NOTIFY and are
//! never stored.
//!
//! `pgrelay.signal()` (or `POST /v1/signals`) sends `{"signal":{…}}` on the relay's channel;
//! the listener turns it into a [`Signal`] and the registry hands it to the participants'
//! open streams, which send it without an `id:` line so it never moves a client's resume
//! position. A stream that is catching up from the database drops signals: they are
//! forgettable by design, and replaying stale "typing…" would be wrong anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One signal, with its SSE `data` kept exactly as the database rendered it.
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

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    signal: &'a RawValue,
}

#[derive(Deserialize)]
struct Head<'a> {
    kind: String,
    participants: Vec<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

impl Signal {
    /// Parses a notification payload; `None` when it is not a well-formed signal.
    pub fn from_notification(payload: &str) -> Option<Signal> {
        let wire: Wire = serde_json::from_str(payload).ok()?;
        let head: Head = serde_json::from_str(wire.signal.get()).ok()?;
        // Kinds become the SSE event name; a hand-made NOTIFY must not break framing.
        if !(crate::valid_kind(&head.kind) || head.kind == "presence") {
            return None;
        }
        let data = match (head.kind.as_str(), head.payload) {
            ("presence", Some(payload)) => payload.to_owned(),
            ("presence", None) => return None,
            _ => wire.signal.to_owned(),
        };
        Some(Signal {
            kind: head.kind,
            participants: head.participants,
            data,
        })
    }
}

/// A token bucket per sender: `rate` signals per second, bursts of up to `burst`.
///
/// Per instance: a sender spread over N instances gets N times the rate, which is fine for
/// what it guards against (a runaway client flooding one audience).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// A std mutex: one map lookup per signal, never held across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets kept before idle (full) ones are forgotten, bounding the map's memory.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// A limiter allowing `rate` per second with bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `sender`; false when the sender is over its rate.
    pub fn allow(&self, sender: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(sender) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, bucket| bucket.refilled(now, rate, burst) < burst);
        }
        let bucket = buckets.entry(sender.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = bucket.refilled(now, self.rate, self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_per_sender() {
        let limiter = RateLimiter::new(5.0, 10.0);
        let allowed = (0..20).filter(|_| limiter.allow("alice")).count();
        assert_eq!(
            allowed, 10,
            "a burst of 10, then nothing until tokens refill"
        );
        assert!(limiter.allow("bob"), "senders are limited separately");
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(
            limiter.allow("alice"),
            "5/s refills one token within 200 ms"
        );
    }

    #[test]
    fn parses_only_well_formed_signals() {
        let good =
            r#"{"signal":{"kind":"typing","sender":"a","participants":["b"],"payload":{"x":1}}}"#;
        let signal = Signal::from_notification(good).unwrap();
        assert_eq!(signal.kind, "typing");
        assert_eq!(signal.participants, ["b"]);
        assert!(signal.data.get().starts_with(r#"{"kind":"typing""#));
        for bad in [
            r#"{"id":5}"#,
            r#"{"signal":{"kind":"bad kind","participants":["b"]}}"#,
            r#"{"signal":{"kind":"x\ny","participants":["b"]}}"#,
            r#"{"signal":{"kind":"typing"}}"#,
            "not json",
        ] {
            assert!(Signal::from_notification(bad).is_none(), "{bad}");
        }
    }
}
