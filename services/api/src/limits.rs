//! Rate limits: a token bucket per key (client IP, DID), as GCRA.
//!
//! Each key stores one number, its "theoretical arrival time": a request is allowed while
//! that time is at most `burst - 1` emission intervals ahead of now, and pushes it one
//! interval further. A key whose time has passed is the same as an unknown key, so such
//! entries are dropped whenever a shard fills up; the memory is bounded by `max_keys`.
//! Limits are per API instance.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

const SHARDS: usize = 16;

/// A rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second (0 disables the limit).
    pub per_second: f64,
    /// Requests allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// Whether this limit limits anything.
    pub fn is_enabled(&self) -> bool {
        self.per_second > 0.0
    }
}

/// A GCRA limiter over keys of type `K`.
pub(crate) struct RateLimiter<K> {
    shards: Vec<Mutex<HashMap<K, u64>>>,
    hasher: RandomState,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now the arrival time may run (`(burst - 1) * interval`).
    tolerance: u64,
    max_keys_per_shard: usize,
    epoch: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter, or `None` if `limit` is disabled.
    pub(crate) fn new(limit: RateLimit, max_keys: usize) -> Option<Self> {
        if !limit.is_enabled() {
            return None;
        }
        let interval = (1e9 / limit.per_second).clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        Some(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            interval,
            tolerance: interval.saturating_mul(u64::from(limit.burst.max(1) - 1)),
            max_keys_per_shard: (max_keys / SHARDS).max(1),
            epoch: Instant::now(),
        })
    }

    /// Count one request of `key`: `Err(wait)` if it is over its limit.
    pub(crate) fn check<Q>(&self, key: &Q) -> Result<(), Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.check_at(key, self.epoch.elapsed().as_nanos() as u64)
    }

    fn check_at<Q>(&self, key: &Q, now: u64) -> Result<(), Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let Ok(mut arrivals) = shard.lock() else {
            return Ok(());
        };
        let arrival = arrivals.get(key).copied().unwrap_or(now).max(now);
        if arrival - now > self.tolerance {
            let wait = arrival - now - self.tolerance;
            return Err(Duration::from_nanos(wait));
        }
        let next = arrival.saturating_add(self.interval);
        match arrivals.get_mut(key) {
            Some(slot) => *slot = next,
            None => {
                if arrivals.len() >= self.max_keys_per_shard {
                    // Keys whose time has come are back at a full bucket: forget them.
                    arrivals.retain(|_, at| *at > now);
                }
                if arrivals.len() >= self.max_keys_per_shard {
                    // Still full of active keys (a flood from very many addresses): let this
                    // one through untracked rather than grow, or refuse everyone.
                    metrics::counter!("cas_rate_limiter_full_total").increment(1);
                    return Ok(());
                }
                arrivals.insert(key.to_owned(), next);
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limiter(per_second: f64, burst: u32, max_keys: usize) -> RateLimiter<String> {
        RateLimiter::new(RateLimit { per_second, burst }, max_keys).unwrap()
    }

    #[test]
    fn allows_a_burst_then_the_sustained_rate() {
        let l = limiter(10.0, 5, 1000);
        let t0 = 100 * SECOND;
        for i in 0..5 {
            assert!(l.check_at("a", t0).is_ok(), "request {i} of the burst");
        }
        let wait = l.check_at("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Other keys are independent.
        assert!(l.check_at("b", t0).is_ok());
        // After one interval, one more.
        assert!(l.check_at("a", t0 + SECOND / 10).is_ok());
        assert!(l.check_at("a", t0 + SECOND / 10).is_err());
        // After a quiet second, the whole burst again.
        for _ in 0..5 {
            assert!(l.check_at("a", t0 + 2 * SECOND).is_ok());
        }
    }

    #[test]
    fn disabled_limits_build_no_limiter() {
        assert!(
            RateLimiter::<String>::new(
                RateLimit {
                    per_second: 0.0,
                    burst: 10
                },
                10
            )
            .is_none()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let l = limiter(1.0, 1, SHARDS * 4);
        for i in 0..10_000 {
            let _ = l.check_at(&format!("k{i}"), SECOND);
        }
        assert!(l.len() <= SHARDS * 4, "{} keys", l.len());
        // Once their time has passed, old keys make room for new ones.
        assert!(l.check_at("fresh", 10 * SECOND).is_ok());
        assert!(l.check_at("fresh", 10 * SECOND).is_err(), "tracked");
    }
}
