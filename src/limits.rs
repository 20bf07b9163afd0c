//! Per-client limits: how often a sender may publish, and how many reads one participant may
//! have in flight. A single token holder must not be able to exhaust the relay's database
//! connections or memory for everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket per sender: `rate` requests per second, bursts of up to `burst`.
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
            rate: rate.max(f64::MIN_POSITIVE),
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `sender`, or says how long until one is available.
    pub fn try_take(&self, sender: &str) -> Result<(), Duration> {
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
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// At most `max` requests in flight per participant (`GET /v1/messages`): each holds database
/// work and a response buffer, so one token must not be able to pile them up.
pub struct ConcurrencyLimit {
    max: usize,
    /// A std mutex: one map update per request, never held across an await.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request's place under a [`ConcurrencyLimit`]; dropping it frees the place.
pub struct InFlight {
    key: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl ConcurrencyLimit {
    /// A limit of `max` concurrent requests per participant.
    pub fn new(max: usize) -> ConcurrencyLimit {
        ConcurrencyLimit {
            max: max.max(1),
            in_flight: Arc::default(),
        }
    }

    /// A place for `key`'s request, or `None` when it has `max` in flight already.
    pub fn enter(&self, key: &str) -> Option<InFlight> {
        let mut in_flight = self.in_flight.lock().unwrap();
        let count = in_flight.entry(key.to_owned()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InFlight {
            key: key.to_owned(),
            in_flight: Arc::clone(&self.in_flight),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap();
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_per_sender() {
        let limiter = RateLimiter::new(5.0, 10.0);
        let allowed = (0..20)
            .filter(|_| limiter.try_take("alice").is_ok())
            .count();
        assert_eq!(
            allowed, 10,
            "a burst of 10, then nothing until tokens refill"
        );
        assert!(
            limiter.try_take("bob").is_ok(),
            "senders are limited separately"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(
            limiter.try_take("alice").is_ok(),
            "5/s refills one token within 200 ms"
        );
    }

    #[test]
    fn says_when_the_next_token_comes() {
        let limiter = RateLimiter::new(2.0, 1.0);
        assert!(limiter.try_take("a").is_ok());
        let wait = limiter.try_take("a").unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn concurrency_is_limited_per_key_and_freed_on_drop() {
        let limit = ConcurrencyLimit::new(2);
        let first = limit.enter("a").unwrap();
        let _second = limit.enter("a").unwrap();
        assert!(limit.enter("a").is_none());
        assert!(limit.enter("b").is_some());
        drop(first);
        assert!(limit.enter("a").is_some());
    }
}
