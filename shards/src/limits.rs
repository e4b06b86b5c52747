//! Rate limits, one set per shard (no shared store, as the design asks): a client's requests
//! land on one shard per connection, and an account's failures are counted on its own shard.
//!
//! Each limit is a governor GCRA bucket of `n` per period. Limits that count *failures* (bad
//! passwords) cannot know the outcome before doing the work, so a key whose bucket ran dry is
//! remembered as blocked until the bucket refills; blocked keys are refused before any work.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::error::Fail;

/// What the X-RateLimit-* headers report after a request passed.
#[derive(Debug, Clone, Copy)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
}

pub struct Limiter<K: Hash + Eq + Clone> {
    inner: RateLimiter<K, HashMapStateStore<K>, DefaultClock, StateInformationMiddleware>,
    limit: u32,
    period: Duration,
    blocked: RefCell<HashMap<K, Instant>>,
}

/// Keys remembered as blocked at most; past this the oldest entries are dropped, so an
/// attacker rotating keys cannot grow memory without bound.
const BLOCKED_KEYS_MAX: usize = 100_000;

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(n: u32, period: Duration) -> Limiter<K> {
        let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        let replenish = period / n.get();
        let quota = Quota::with_period(replenish.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(n))
            .allow_burst(n);
        Limiter {
            inner: RateLimiter::hashmap(quota).with_middleware::<StateInformationMiddleware>(),
            limit: n.get(),
            period,
            blocked: RefCell::new(HashMap::new()),
        }
    }

    /// Counts one event for `key`; refused when the bucket is empty.
    pub fn hit(&self, key: &K) -> Result<RateState, Fail> {
        match self.inner.check_key(key) {
            Ok(state) => Ok(RateState {
                limit: self.limit,
                remaining: state.remaining_burst_capacity(),
                reset_s: self.reset_s(state.remaining_burst_capacity()),
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.inner.clock().now());
                Err(Fail::RateLimited {
                    retry_after_s: ceil_s(wait),
                    limit: self.limit,
                })
            }
        }
    }

    /// Refused if `key` is blocked after too many failures.
    pub fn check_blocked(&self, key: &K) -> Result<(), Fail> {
        let mut blocked = self.blocked.borrow_mut();
        if let Some(until) = blocked.get(key) {
            let now = Instant::now();
            if *until > now {
                return Err(Fail::RateLimited {
                    retry_after_s: ceil_s(*until - now),
                    limit: self.limit,
                });
            }
            blocked.remove(key);
        }
        Ok(())
    }

    /// Counts a failure; when the bucket runs dry the key is blocked until it refills enough
    /// for one more attempt. Returns the refusal when that happened.
    pub fn fail(&self, key: &K) -> Result<(), Fail> {
        match self.hit(key) {
            Ok(_) => Ok(()),
            Err(refusal) => {
                if let Fail::RateLimited { retry_after_s, .. } = refusal {
                    let mut blocked = self.blocked.borrow_mut();
                    if blocked.len() >= BLOCKED_KEYS_MAX {
                        let now = Instant::now();
                        blocked.retain(|_, until| *until > now);
                        if blocked.len() >= BLOCKED_KEYS_MAX {
                            blocked.clear();
                        }
                    }
                    blocked.insert(
                        key.clone(),
                        Instant::now() + Duration::from_secs(retry_after_s),
                    );
                }
                Err(refusal)
            }
        }
    }

    /// Forgets keys whose buckets are full again (run periodically).
    pub fn tidy(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
        let now = Instant::now();
        self.blocked.borrow_mut().retain(|_, until| *until > now);
    }

    fn reset_s(&self, remaining: u32) -> u64 {
        // Seconds until the bucket is full again: each missing cell takes period/limit.
        let missing = u64::from(self.limit.saturating_sub(remaining));
        (self.period.as_secs() * missing).div_ceil(u64::from(self.limit))
    }
}

fn ceil_s(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Every limit a shard keeps.
pub struct Limits {
    pub login_failures_ip: Limiter<std::net::IpAddr>,
    pub login_failures_account: Limiter<u64>,
    pub registrations_ip: Limiter<std::net::IpAddr>,
    pub password_resets_ip: Limiter<std::net::IpAddr>,
}

impl Limits {
    pub fn new(cfg: &crate::config::Config) -> Limits {
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        Limits {
            login_failures_ip: Limiter::new(cfg.login_failures_per_ip_per_minute, minute),
            login_failures_account: Limiter::new(cfg.login_failures_per_account_per_minute, minute),
            registrations_ip: Limiter::new(cfg.registrations_per_ip_per_hour, hour),
            password_resets_ip: Limiter::new(cfg.password_resets_per_ip_per_hour, hour),
        }
    }

    pub fn tidy(&self) {
        self.login_failures_ip.tidy();
        self.login_failures_account.tidy();
        self.registrations_ip.tidy();
        self.password_resets_ip.tidy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_dry_and_block() {
        let l: Limiter<u64> = Limiter::new(3, Duration::from_secs(60));
        assert_eq!(l.hit(&1).unwrap().remaining, 2);
        assert!(l.fail(&1).is_ok());
        assert!(l.fail(&1).is_ok());
        match l.fail(&1) {
            Err(Fail::RateLimited {
                retry_after_s,
                limit: 3,
            }) => assert!((1..=20).contains(&retry_after_s)),
            other => panic!("{other:?}"),
        }
        assert!(l.check_blocked(&1).is_err());
        assert!(l.check_blocked(&2).is_ok());
    }
}
