//! Sticky sessions. Two modes:
//! - **cookie**: Tandem inserts a cookie naming the endpoint, signed with HMAC-SHA256 so
//!   clients cannot pick endpoints; stateless, so any node with the same secret honours it.
//! - **learned**: the binding key (an application cookie such as JSESSIONID, a header, or
//!   the source IP) is mapped to the endpoint that served it, in a table with idle expiry.
//!   An application cookie is learned from the response's `Set-Cookie` too.
//!
//! A binding to an endpoint that is no longer eligible (unhealthy, ejected, draining,
//! removed) is ignored; the balancer picks anew and the new binding replaces it. The
//! learned table is the one the Raft group will replicate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use crate::clock::now_ns;
use crate::config::{HashOn, StickyConfig};
use crate::pair::Pair;
use crate::runtime::{cookie_value, Cluster};

const SHARDS: usize = 64;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A learned binding: (endpoint, last use, last published to the pair), times in ns.
type Binding = (SocketAddr, u64, u64);

/// The learned bindings of this node: key → (endpoint, last use). Sharded locks with
/// short critical sections; never held across an await.
#[derive(Debug)]
pub struct StickyTable {
    shards: Vec<Mutex<HashMap<u64, Binding>>>,
    /// The node's member of the pair's group, when it is one: bindings are published
    /// to it, and the committed ones read from it win over this node's.
    pair: Option<Arc<Pair>>,
}

impl Default for StickyTable {
    fn default() -> Self {
        StickyTable::new(None)
    }
}

impl StickyTable {
    /// An empty table of a node whose member of the pair's group is `pair`.
    pub fn new(pair: Option<Arc<Pair>>) -> StickyTable {
        StickyTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pair,
        }
    }

    /// The binding the group committed for `key`, if it has not expired.
    fn replicated(&self, key: u64) -> Option<SocketAddr> {
        self.pair.as_ref()?.replicated_sticky(key)
    }

    fn publish(&self, key: u64, endpoint: SocketAddr, idle: std::time::Duration, replaces: Option<SocketAddr>) {
        if let Some(p) = &self.pair {
            p.publish_sticky(key, endpoint, idle, replaces);
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Binding>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .expect("sticky shard poisoned")
    }

    /// The endpoint bound to `key`, refreshing its use time, unless expired. The flag
    /// says the binding was last published more than half its idle time ago, so the
    /// pair's copy should be refreshed.
    pub fn get(&self, key: u64, idle: Duration) -> Option<(SocketAddr, bool)> {
        let now = now_ns();
        let mut s = self.shard(key);
        let e = s.get_mut(&key)?;
        let idle_ns = idle.as_nanos() as u64;
        if now.saturating_sub(e.1) > idle_ns {
            s.remove(&key);
            return None;
        }
        e.1 = now;
        let republish = now.saturating_sub(e.2) > idle_ns / 2;
        if republish {
            e.2 = now;
        }
        Some((e.0, republish))
    }

    /// Binds `key` to `addr` (counted as published now).
    pub fn bind(&self, key: u64, addr: SocketAddr) {
        let now = now_ns();
        self.shard(key).insert(key, (addr, now, now));
    }

    /// Takes the pair's committed binding for `key` as this node's: refreshes the local
    /// entry when it agrees, replaces it when it does not. Returns whether the binding
    /// is due for a refresh in the pair (as [`StickyTable::get`]).
    pub fn adopt(&self, key: u64, addr: SocketAddr, idle: Duration) -> bool {
        let now = now_ns();
        let mut s = self.shard(key);
        match s.get_mut(&key) {
            Some(e) if e.0 == addr => {
                e.1 = now;
                let republish = now.saturating_sub(e.2) > idle.as_nanos() as u64 / 2;
                if republish {
                    e.2 = now;
                }
                republish
            }
            _ => {
                s.insert(key, (addr, now, now));
                false
            }
        }
    }

    /// Drops bindings idle longer than `idle`.
    pub fn sweep(&self, idle: Duration) {
        let now = now_ns();
        for s in &self.shards {
            s.lock()
                .expect("sticky shard poisoned")
                .retain(|_, e| now.saturating_sub(e.1) <= idle.as_nanos() as u64);
        }
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("sticky shard poisoned").len())
            .sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the request said about stickiness, decided before the balancer runs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Plan {
    /// The endpoint the request is bound to, if it may take it.
    pub target: Option<usize>,
    /// Learned mode: the request's binding key.
    key: Option<u64>,
    /// Learned mode: the binding found, fit or not (a new binding replaces it by name).
    bound: Option<SocketAddr>,
}

fn cluster_key(cluster: &Cluster, key_hash: u64) -> u64 {
    crate::balancer::mix64(crate::balancer::hash_key(cluster.name.as_bytes()) ^ key_hash)
}

/// Looks the request's binding up.
pub(crate) fn plan(cluster: &Cluster, table: &StickyTable, headers: &HeaderMap, client: SocketAddr) -> Plan {
    let Some(cfg) = &cluster.sticky else {
        return Plan::default();
    };
    let now = now_ns();
    let eligible = |addr: SocketAddr| {
        cluster
            .endpoint_index(addr)
            .filter(|&i| crate::balancer::Candidate::eligible(&cluster.endpoints[i], now))
    };
    match cfg {
        StickyConfig::Cookie { name, secret, .. } => Plan {
            target: cookie_value(headers, name)
                .and_then(|v| verify(&cluster.name, secret, v))
                .and_then(eligible),
            key: None,
            bound: None,
        },
        StickyConfig::Learned { on, idle } => {
            let key = match on {
                HashOn::Cookie(c) => cookie_value(headers, c).map(|v| crate::balancer::hash_key(v.as_bytes())),
                HashOn::Header(h) => headers.get(h).map(|v| crate::balancer::hash_key(v.as_bytes())),
                HashOn::SourceIp => Some(crate::balancer::hash_key(client.ip().to_string().as_bytes())),
            }
            .map(|k| cluster_key(cluster, k));
            // One truth: in a pair, the committed binding wins over this node's (which
            // then only holds bindings made here and not committed yet: the first
            // requests of a session, or a node still catching up after a restart, whose
            // binding gives way to the committed one on first sight).
            let bound = key.and_then(|k| match table.replicated(k) {
                Some(a) => {
                    if table.adopt(k, a, *idle) {
                        table.publish(k, a, *idle, None);
                    }
                    Some(a)
                }
                None => {
                    let (a, republish) = table.get(k, *idle)?;
                    if republish {
                        table.publish(k, a, *idle, None);
                    }
                    Some(a)
                }
            });
            Plan {
                target: bound.and_then(eligible),
                key,
                bound,
            }
        }
    }
}

/// After the response from endpoint `ep`: refresh or create the binding (learned), or
/// set the cookie when the request did not already carry one for `ep`.
pub(crate) fn finish(cluster: &Cluster, table: &StickyTable, plan: Plan, ep: usize, resp: &mut HeaderMap) {
    let Some(cfg) = &cluster.sticky else { return };
    let addr = cluster.endpoints[ep].address;
    match cfg {
        StickyConfig::Cookie {
            name,
            secret,
            max_age,
            secure,
        } => {
            if plan.target == Some(ep) {
                return;
            }
            let mut c = format!(
                "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                sign(&cluster.name, secret, addr)
            );
            if let Some(m) = max_age {
                c.push_str(&format!("; Max-Age={}", m.as_secs()));
            }
            if *secure {
                c.push_str("; Secure");
            }
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.append(SET_COOKIE, v);
            }
        }
        StickyConfig::Learned { on, .. } => {
            let key = plan.key.or_else(|| match on {
                // The application just issued its session cookie: learn it.
                HashOn::Cookie(c) => resp
                    .get_all(SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| {
                        let (k, rest) = v.split_once('=')?;
                        (k.trim() == c).then(|| rest.split(';').next().unwrap_or("").to_string())
                    })
                    .map(|v| cluster_key(cluster, crate::balancer::hash_key(v.as_bytes()))),
                _ => None,
            });
            if let Some(k) = key {
                if plan.bound != Some(addr) {
                    table.bind(k, addr);
                    if let StickyConfig::Learned { idle, .. } = cfg {
                        table.publish(k, addr, *idle, plan.bound);
                    }
                }
            }
        }
    }
}

fn mac(cluster: &str, secret: &[u8], addr: &str) -> ring::hmac::Tag {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(cluster.as_bytes());
    ctx.update(b"\0");
    ctx.update(addr.as_bytes());
    ctx.sign()
}

/// The cookie value naming `addr`: `base64(addr).base64(hmac[..16])`.
pub(crate) fn sign(cluster: &str, secret: &[u8], addr: SocketAddr) -> String {
    let a = addr.to_string();
    let tag = mac(cluster, secret, &a);
    format!("{}.{}", B64.encode(a.as_bytes()), B64.encode(&tag.as_ref()[..16]))
}

/// The endpoint a cookie names, if its signature holds.
pub(crate) fn verify(cluster: &str, secret: &[u8], value: &str) -> Option<SocketAddr> {
    let (a, t) = value.split_once('.')?;
    let addr_bytes = B64.decode(a).ok()?;
    let addr = std::str::from_utf8(&addr_bytes).ok()?;
    let tag = B64.decode(t).ok()?;
    let want = mac(cluster, secret, addr);
    // Constant-time comparison of the truncated tag.
    let same = tag.len() == 16
        && want.as_ref()[..16]
            .iter()
            .zip(&tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then(|| addr.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_signed_and_bound_to_the_cluster() {
        let a: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let v = sign("api", b"k1", a);
        assert_eq!(verify("api", b"k1", &v), Some(a));
        assert_eq!(verify("api", b"k2", &v), None, "other secret");
        assert_eq!(verify("web", b"k1", &v), None, "other cluster");
        let forged = format!("{}.{}", B64.encode("10.0.0.8:8080"), v.split_once('.').unwrap().1);
        assert_eq!(verify("api", b"k1", &forged), None);
        assert_eq!(verify("api", b"k1", "garbage"), None);
    }

    #[test]
    fn learned_bindings_expire_when_idle() {
        let t = StickyTable::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        t.bind(5, a);
        assert_eq!(t.get(5, Duration::from_secs(60)), Some((a, false)));
        assert_eq!(t.get(5, Duration::ZERO), None);
        assert!(t.is_empty());
    }
}
