//! Rate limiting per route, keyed by source IP, a header, or (later) a filter-set key.
//! Two algorithms: a token bucket (rate with a burst) and a sliding window (the weighted
//! sum of the current and previous fixed windows, as Cloudflare and Envoy use). State is
//! process-wide, in sharded maps with short critical sections, so every worker of the
//! node counts against the same limit. The sliding window keeps per-window counts, the
//! shape the Raft group will replicate (per-node increments, summed) for cluster scope.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::balancer::p2c_ewma::now_ns;

const SHARDS: usize = 64;

/// Where the limit key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address.
    SourceIp,
    /// A request header (requests without it share one bucket).
    Header(http::HeaderName),
    /// One bucket for the whole route.
    Route,
}

/// The counting algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Refill `requests` per `per`, up to `burst`.
    TokenBucket,
    /// At most `requests` in any window of length `per` (approximated by two windows).
    SlidingWindow,
}

/// A validated limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// Requests allowed …
    pub requests: u64,
    /// … per this period.
    pub per: Duration,
    /// Token bucket capacity.
    pub burst: u64,
    /// Key source.
    pub key: LimitKey,
    /// Algorithm.
    pub algorithm: Algorithm,
}

/// What admission decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Go ahead; `remaining` more fit now.
    Allow {
        /// Requests left in the current allowance.
        remaining: u64,
    },
    /// Over the limit; retry after this long.
    Deny {
        /// Time until a request would be admitted.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Bucket { tokens: f64, stamp_ns: u64 },
    Window { start_ns: u64, current: u64, previous: u64 },
}

/// A route's limiter.
#[derive(Debug)]
pub struct Limiter {
    /// Its settings.
    pub config: LimitConfig,
    shards: Vec<Mutex<HashMap<u64, State>>>,
}

impl Limiter {
    /// A limiter with no history.
    pub fn new(config: LimitConfig) -> Limiter {
        Limiter {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The bucket key of a request.
    pub fn key_of(&self, headers: &http::HeaderMap, client: SocketAddr) -> u64 {
        match &self.config.key {
            LimitKey::SourceIp => match client.ip() {
                std::net::IpAddr::V4(a) => crate::balancer::hash_key(&a.octets()),
                std::net::IpAddr::V6(a) => crate::balancer::hash_key(&a.octets()),
            },
            LimitKey::Header(h) => headers.get(h).map_or(0, |v| crate::balancer::hash_key(v.as_bytes())),
            LimitKey::Route => 0,
        }
    }

    /// Counts one request for `key` and decides.
    pub fn admit(&self, key: u64) -> Decision {
        self.admit_at(key, now_ns())
    }

    /// `admit` at a given time (for tests).
    pub fn admit_at(&self, key: u64, now: u64) -> Decision {
        let c = &self.config;
        let per_ns = c.per.as_nanos().max(1) as u64;
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .expect("rate limit shard poisoned");
        match c.algorithm {
            Algorithm::TokenBucket => {
                let rate = c.requests as f64 / per_ns as f64; // tokens per ns
                let st = shard.entry(key).or_insert(State::Bucket {
                    tokens: c.burst as f64,
                    stamp_ns: now,
                });
                let State::Bucket { tokens, stamp_ns } = st else {
                    unreachable!()
                };
                *tokens = (*tokens + now.saturating_sub(*stamp_ns) as f64 * rate).min(c.burst as f64);
                *stamp_ns = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    Decision::Allow {
                        remaining: *tokens as u64,
                    }
                } else {
                    let wait = ((1.0 - *tokens) / rate) as u64;
                    Decision::Deny {
                        retry_after: Duration::from_nanos(wait),
                    }
                }
            }
            Algorithm::SlidingWindow => {
                let window = now / per_ns * per_ns;
                let st = shard.entry(key).or_insert(State::Window {
                    start_ns: window,
                    current: 0,
                    previous: 0,
                });
                let State::Window {
                    start_ns,
                    current,
                    previous,
                } = st
                else {
                    unreachable!()
                };
                if window != *start_ns {
                    *previous = if window == *start_ns + per_ns { *current } else { 0 };
                    *current = 0;
                    *start_ns = window;
                }
                let elapsed = (now - window) as f64 / per_ns as f64;
                let estimate = *previous as f64 * (1.0 - elapsed) + *current as f64;
                if estimate + 1.0 <= c.requests as f64 {
                    *current += 1;
                    Decision::Allow {
                        remaining: (c.requests as f64 - estimate - 1.0).max(0.0) as u64,
                    }
                } else {
                    // When will the previous window's weight have decayed enough?
                    let need = estimate + 1.0 - c.requests as f64;
                    let wait = if *previous > 0 {
                        (need / *previous as f64 * per_ns as f64) as u64
                    } else {
                        per_ns - (now - window)
                    };
                    Decision::Deny {
                        retry_after: Duration::from_nanos(wait.min(per_ns)),
                    }
                }
            }
        }
    }

    /// Drops keys idle for two periods (bounded memory).
    pub fn sweep(&self) {
        let now = now_ns();
        let per_ns = self.config.per.as_nanos().max(1) as u64;
        for s in &self.shards {
            s.lock().expect("rate limit shard poisoned").retain(|_, st| match st {
                State::Bucket { stamp_ns, .. } => now.saturating_sub(*stamp_ns) < 2 * per_ns.max(1_000_000_000),
                State::Window { start_ns, .. } => now.saturating_sub(*start_ns) < 2 * per_ns,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(alg: Algorithm, requests: u64, burst: u64) -> Limiter {
        Limiter::new(LimitConfig {
            requests,
            per: Duration::from_secs(1),
            burst,
            key: LimitKey::Route,
            algorithm: alg,
        })
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let l = limiter(Algorithm::TokenBucket, 10, 5);
        let t0 = 1_000_000_000;
        let allowed = (0..20)
            .filter(|_| matches!(l.admit_at(7, t0), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
        // 0.5 s later: 5 more tokens.
        let allowed = (0..20)
            .filter(|_| matches!(l.admit_at(7, t0 + 500_000_000), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
        match l.admit_at(7, t0 + 500_000_000) {
            Decision::Deny { retry_after } => assert!(retry_after <= Duration::from_millis(100)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn sliding_window_holds_the_rate_over_time() {
        let l = limiter(Algorithm::SlidingWindow, 100, 0);
        // 1000 requests/s offered for 10 s in 1 ms steps: about 100/s admitted.
        let mut admitted = 0;
        for ms in 0..10_000u64 {
            if matches!(l.admit_at(1, 5_000_000_000 + ms * 1_000_000), Decision::Allow { .. }) {
                admitted += 1;
            }
        }
        assert!((990..=1010).contains(&admitted), "{admitted}");
    }
}
