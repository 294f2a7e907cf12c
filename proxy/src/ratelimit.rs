//! Rate limiting per route, keyed by source IP, a header, or (later) a filter-set key.
//! Two algorithms: a token bucket (rate with a burst) and a sliding window (the weighted
//! sum of the current and previous fixed windows, as Cloudflare and Envoy use). State is
//! process-wide, in sharded maps with short critical sections, so every worker of the
//! node counts against the same limit. The sliding window keeps per-window counts, the
//! shape the Raft group will replicate (per-node increments, summed) for cluster scope.
//!
//! Cluster scope while this node is out of touch with the group (no quorum, or a
//! restart not caught up yet): the peers' counts it holds are stale, so it admits against
//! its share of the limit (the limit divided by the pair's proxies) and its own counts
//! only. Both sides of a cut doing so keep the pair at or under the limit; a survivor
//! whose peer really died still has the group (the witness) and counts normally.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::now_ns;
use crate::config::{Algorithm, LimitConfig, LimitKey, Scope};

const SHARDS: usize = 64;

/// `Limiter::solo_limit` while the node is in touch with the group.
const IN_TOUCH: u64 = u64::MAX;

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
    Window(Window),
}

/// One key's sliding-window counts: this node's and (cluster scope) the peers', for the
/// current and previous fixed windows, and what of this node's was published.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Window {
    start_ns: u64,
    current: u64,
    previous: u64,
    /// Peers' counts for the current and previous windows (cluster scope).
    peer_current: u64,
    peer_previous: u64,
    /// This node's count of the current window as last published.
    published: u64,
    /// The previous window's final count, when it grew after its last publication:
    /// the peers weigh the previous window too, so its last requests must reach them.
    unsent_previous: Option<u64>,
}

impl Window {
    fn new(start_ns: u64) -> Window {
        Window {
            start_ns,
            ..Window::default()
        }
    }

    /// Moves the counts along when time has passed into a later window.
    fn roll(&mut self, window: u64, per_ns: u64) {
        if window <= self.start_ns {
            return;
        }
        let adjacent = window == self.start_ns + per_ns;
        self.unsent_previous = (adjacent && self.current > self.published).then_some(self.current);
        self.previous = if adjacent { self.current } else { 0 };
        self.peer_previous = if adjacent { self.peer_current } else { 0 };
        self.current = 0;
        self.peer_current = 0;
        self.published = 0;
        self.start_ns = window;
    }
}

/// A route's limiter.
#[derive(Debug)]
pub struct Limiter {
    /// Its settings.
    pub config: LimitConfig,
    /// Distinguishes this route's keys from other routes' in the pair's ledger.
    pub route_hash: u64,
    shards: Vec<Mutex<HashMap<u64, State>>>,
    /// Cluster scope out of touch with the group: the requests per period this node
    /// admits alone (its share; 0 admits none); [`IN_TOUCH`] while in touch.
    solo_limit: AtomicU64,
    /// Wall-clock time (ns) of the last pass that published every grown count.
    published_at: AtomicU64,
}

/// Every count that grew is published at least this often (see [`Limiter::take_dirty`]).
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Cluster-scope windows are aligned to wall-clock time so every node agrees on them.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Limiter {
    /// A limiter with no history for route `route`.
    pub fn new(route: &str, config: LimitConfig) -> Limiter {
        Limiter {
            config,
            route_hash: crate::balancer::hash_key(route.as_bytes()),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            solo_limit: AtomicU64::new(IN_TOUCH),
            published_at: AtomicU64::new(0),
        }
    }

    /// Cluster scope: whether this node is in touch with the group, and if not, which
    /// fraction of the limit is its own (1 / the number of proxies; 0 while a restarted
    /// node has not yet heard what the group admitted meanwhile).
    pub fn set_in_touch(&self, in_touch: bool, share: f64) {
        let solo = if in_touch {
            IN_TOUCH
        } else {
            (self.config.requests as f64 * share).floor() as u64
        };
        self.solo_limit.store(solo, Relaxed);
    }

    /// The bucket key of a request.
    pub fn key_of(&self, headers: &http::HeaderMap, client: SocketAddr) -> u64 {
        let k = match &self.config.key {
            LimitKey::SourceIp => match client.ip() {
                std::net::IpAddr::V4(a) => crate::balancer::hash_key(&a.octets()),
                std::net::IpAddr::V6(a) => crate::balancer::hash_key(&a.octets()),
            },
            LimitKey::Header(h) => headers.get(h).map_or(0, |v| crate::balancer::hash_key(v.as_bytes())),
            LimitKey::Route => 0,
        };
        crate::balancer::mix64(k ^ self.route_hash)
    }

    /// Counts one request for `key` and decides.
    pub fn admit(&self, key: u64) -> Decision {
        let now = match self.config.scope {
            Scope::Local => now_ns(),
            Scope::Cluster => wall_ns(),
        };
        self.admit_at(key, now)
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, State>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .expect("rate limit shard poisoned")
    }

    /// `admit` at a given time (for tests).
    pub fn admit_at(&self, key: u64, now: u64) -> Decision {
        let c = &self.config;
        let per_ns = c.per.as_nanos().max(1) as u64;
        let mut shard = self.shard(key);
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
                let st = shard.entry(key).or_insert(State::Window(Window::new(window)));
                let State::Window(w) = st else { unreachable!() };
                w.roll(window, per_ns);
                let elapsed = (now - window) as f64 / per_ns as f64;
                // Out of touch: this node's share, against its own counts only.
                let (limit, prev, cur) = match self.solo_limit.load(Relaxed) {
                    IN_TOUCH => (c.requests, w.previous + w.peer_previous, w.current + w.peer_current),
                    solo => (solo, w.previous, w.current),
                };
                let limit = limit as f64;
                let prev = prev as f64;
                let estimate = prev * (1.0 - elapsed) + cur as f64;
                if estimate + 1.0 <= limit {
                    w.current += 1;
                    Decision::Allow {
                        remaining: (limit - estimate - 1.0).max(0.0) as u64,
                    }
                } else {
                    // When will the previous window's weight have decayed enough?
                    let need = estimate + 1.0 - limit;
                    let wait = if prev > 0.0 {
                        (need / prev * per_ns as f64) as u64
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

    /// Cluster scope: this node's counts worth publishing now, as (key, window start in
    /// ms, count) — what the pair replicates. A count is published once it grew by 1 %
    /// of the limit since it was last published, and any growth at least every
    /// [`PUBLISH_EVERY`]: a key far from its limit does not cost a Raft entry per tick,
    /// and what the peers do not know yet stays under 1 % of the limit per node. A
    /// window's final count is always published after it ended.
    pub fn take_dirty(&self) -> Vec<(u64, u64, u64)> {
        let now = wall_ns();
        let every = PUBLISH_EVERY.as_nanos() as u64;
        let force = now.saturating_sub(self.published_at.load(Relaxed)) >= every;
        if force {
            self.published_at.store(now, Relaxed);
        }
        let step = (self.config.requests / 100).max(1);
        let per_ns = self.config.per.as_nanos().max(1) as u64;
        let mut out = Vec::new();
        for s in &self.shards {
            for (k, st) in s.lock().expect("rate limit shard poisoned").iter_mut() {
                let State::Window(w) = st else { continue };
                if let Some(count) = w.unsent_previous.take() {
                    out.push((*k, (w.start_ns - per_ns) / 1_000_000, count));
                }
                if w.current > w.published && (force || w.current - w.published >= step) {
                    w.published = w.current;
                    out.push((*k, w.start_ns / 1_000_000, w.current));
                }
            }
        }
        out
    }

    /// Cluster scope: the replicated ledger's counts for `key` (if this node has seen
    /// it) in the window starting at `window_ms`: the peers' total, and this node's own
    /// as the group has it (after a restart, what it admitted before is still counted).
    pub fn set_counts(&self, key: u64, window_ms: u64, own: u64, peers: u64) {
        let per_ns = self.config.per.as_nanos().max(1) as u64;
        let w = window_ms * 1_000_000;
        let now = wall_ns();
        let window = now / per_ns * per_ns;
        let mut shard = self.shard(key);
        // Only keys this node has seen: the ledger holds every route's keys.
        let Some(State::Window(st)) = shard.get_mut(&key) else {
            return;
        };
        st.roll(window, per_ns);
        if w == st.start_ns {
            st.peer_current = st.peer_current.max(peers);
            st.current = st.current.max(own);
            st.published = st.published.max(own);
        } else if w + per_ns == st.start_ns {
            st.peer_previous = st.peer_previous.max(peers);
            st.previous = st.previous.max(own);
        }
    }

    /// Drops keys idle for two periods (bounded memory).
    pub fn sweep(&self) {
        let per_ns = self.config.per.as_nanos().max(1) as u64;
        for s in &self.shards {
            s.lock().expect("rate limit shard poisoned").retain(|_, st| match st {
                State::Bucket { stamp_ns, .. } => now_ns().saturating_sub(*stamp_ns) < 2 * per_ns.max(1_000_000_000),
                State::Window(w) => {
                    let now = match self.config.scope {
                        Scope::Local => now_ns(),
                        Scope::Cluster => wall_ns(),
                    };
                    now.saturating_sub(w.start_ns) < 2 * per_ns
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(alg: Algorithm, requests: u64, burst: u64) -> Limiter {
        Limiter::new(
            "r",
            LimitConfig {
                scope: Scope::Local,
                requests,
                per: Duration::from_secs(1),
                burst,
                key: LimitKey::Route,
                algorithm: alg,
            },
        )
    }

    #[test]
    fn peers_counts_share_the_window() {
        let l = limiter(Algorithm::SlidingWindow, 100, 0);
        let t0 = 10_000_000_000u64;
        // A peer already admitted 60 in this window: 40 remain for us.
        l.admit_at(3, t0);
        {
            let mut s = l.shard(3);
            if let Some(State::Window(w)) = s.get_mut(&3) {
                w.peer_current = 60;
            }
        }
        let allowed = (0..100)
            .filter(|_| matches!(l.admit_at(3, t0 + 1), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 39);
        assert_eq!(l.take_dirty(), vec![(3, t0 / 1_000_000, 40)]);
        assert!(l.take_dirty().is_empty());
    }

    #[test]
    fn counts_are_published_by_steps_of_a_hundredth_and_a_window_s_final_count_always() {
        let l = limiter(Algorithm::SlidingWindow, 10_000, 0);
        let t0 = 30_000_000_000u64;
        let admit =
            |n: usize, at: u64| (0..n).for_each(|_| assert!(matches!(l.admit_at(4, at), Decision::Allow { .. })));
        admit(50, t0);
        // The first pass publishes everything that grew.
        assert_eq!(l.take_dirty(), vec![(4, t0 / 1_000_000, 50)]);
        // 50 more is under a step of 100 (1 % of the limit): not yet.
        admit(50, t0 + 1);
        assert!(l.take_dirty().is_empty());
        admit(60, t0 + 2);
        assert_eq!(l.take_dirty(), vec![(4, t0 / 1_000_000, 160)]);
        // The window ends with 5 unpublished; its final count goes out, the new
        // window's single request waits for a step or the next full pass.
        admit(5, t0 + 3);
        admit(1, t0 + 1_000_000_000);
        assert_eq!(l.take_dirty(), vec![(4, t0 / 1_000_000, 165)]);
        assert!(l.take_dirty().is_empty());
        l.published_at.store(0, Relaxed);
        assert_eq!(l.take_dirty(), vec![(4, (t0 + 1_000_000_000) / 1_000_000, 1)]);
    }

    #[test]
    fn out_of_touch_a_node_admits_its_share_against_its_own_counts() {
        let l = limiter(Algorithm::SlidingWindow, 100, 0);
        let t0 = 20_000_000_000u64;
        l.admit_at(5, t0);
        {
            let mut s = l.shard(5);
            if let Some(State::Window(w)) = s.get_mut(&5) {
                w.peer_current = 90;
            }
        }
        // Cut off in a pair with a witness: half the limit, the stale 90 ignored.
        l.set_in_touch(false, 0.5);
        let allowed = (0..100)
            .filter(|_| matches!(l.admit_at(5, t0 + 1), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 49);
        // Back in touch: the peers' 90 count again, nothing more fits.
        l.set_in_touch(true, 0.5);
        assert!(matches!(l.admit_at(5, t0 + 2), Decision::Deny { .. }));
    }

    #[test]
    fn after_a_restart_the_ledger_gives_back_this_nodes_own_counts() {
        let l = limiter(Algorithm::SlidingWindow, 100, 0);
        let now = wall_ns();
        let window_ms = now / 1_000_000_000 * 1_000;
        // A fresh limiter (the process restarted) that sees the key again.
        l.admit_at(9, now);
        // The group still has what this node admitted before: 70, and 20 from the peer.
        l.set_counts(9, window_ms, 70, 20);
        let allowed = (0..100)
            .filter(|_| matches!(l.admit_at(9, now + 1), Decision::Allow { .. }))
            .count();
        assert!(allowed <= 10, "{allowed}");
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
