//! The replicated tables and how a committed batch changes them. Applying is
//! deterministic, so every member that applied the same log holds the same tables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::types::{Batch, NodeId};

/// One observation or decision a node publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// An endpoint health verdict.
    Verdict {
        /// Cluster name.
        cluster: String,
        /// Endpoint address.
        endpoint: String,
        /// Healthy or not.
        healthy: bool,
        /// When the reporter observed it (ms since the Unix epoch).
        observed_at_ms: u64,
    },
    /// A sticky binding (key → endpoint) that expires unless refreshed.
    Sticky {
        /// Binding key (hash of cluster and session key).
        key: u64,
        /// Endpoint address.
        endpoint: String,
        /// Expiry (ms since the Unix epoch).
        expires_at_ms: u64,
    },
    /// A node's request count for a rate-limit key in one window. Each node reports only
    /// its own count, so counts from different nodes are summed, never overwritten.
    RateCount {
        /// Limit key (hash of route and client key).
        key: u64,
        /// Window start (ms since the Unix epoch).
        window_ms: u64,
        /// The node's count so far in that window.
        count: u64,
    },
    /// A cluster-scoped shared-data value (proxy-wasm keys under the configured prefix).
    Shared {
        /// Key.
        key: String,
        /// Value (None deletes).
        value: Option<Vec<u8>>,
    },
    /// A request for (or renewal of) a VIP's lease by the batch's origin.
    VipLease {
        /// VRID of the VIP.
        vrid: u8,
        /// The requester's VRRP priority.
        priority: u8,
        /// Whether the requester may preempt a lower-priority holder.
        preempt: bool,
        /// Request time (proposer's clock, ms since the Unix epoch).
        at_ms: u64,
        /// Lease lifetime from `at_ms`.
        ttl_ms: u64,
    },
    /// The batch's origin gives a VIP's lease up.
    VipRelease {
        /// VRID of the VIP.
        vrid: u8,
    },
    /// A sticky binding with one truth: the first binding committed for a key wins
    /// while it lives; a later one for another endpoint takes effect only when it names
    /// the binding it `replaces` (its proposer saw that endpoint unfit), and the same
    /// endpoint extends the expiry. (Appended after the older variants, so logs written
    /// before it still decode.)
    StickyBind {
        /// Binding key (hash of cluster and session key).
        key: u64,
        /// Endpoint address.
        endpoint: String,
        /// When the proposer bound it (ms since the Unix epoch).
        at_ms: u64,
        /// Expiry (ms since the Unix epoch).
        expires_at_ms: u64,
        /// The endpoint of the binding this one replaces, if it replaces one.
        replaces: Option<String>,
    },
    /// A passive outlier ejection, shared so the other members eject a gray endpoint too.
    Ejection {
        /// Cluster name.
        cluster: String,
        /// Endpoint address.
        endpoint: String,
        /// When the ejection ends (ms since the Unix epoch).
        until_ms: u64,
        /// When the reporter ejected it.
        observed_at_ms: u64,
    },
}

impl Change {
    /// About how many bytes the change takes on the wire (for batch sizing).
    pub fn wire_size(&self) -> usize {
        16 + match self {
            Change::Verdict { cluster, endpoint, .. } => 16 + cluster.len() + endpoint.len(),
            Change::Sticky { endpoint, .. } => 24 + endpoint.len(),
            Change::RateCount { .. } => 24,
            Change::Shared { key, value } => 8 + key.len() + value.as_ref().map_or(0, Vec::len),
            Change::VipLease { .. } => 24,
            Change::VipRelease { .. } => 2,
            Change::StickyBind { endpoint, replaces, .. } => {
                40 + endpoint.len() + replaces.as_ref().map_or(0, String::len)
            }
            Change::Ejection { cluster, endpoint, .. } => 16 + cluster.len() + endpoint.len(),
        }
    }
}

/// An ejection as stored: until when, who ejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EjectionEntry {
    /// When it ends (ms since the Unix epoch).
    pub until_ms: u64,
    /// Reporting node.
    pub reporter: NodeId,
    /// When the reporter ejected it.
    pub observed_at_ms: u64,
}

/// A verdict as stored: who saw what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEntry {
    /// Healthy or not.
    pub healthy: bool,
    /// Reporting node.
    pub reporter: NodeId,
    /// Observation time (ms since the Unix epoch).
    pub observed_at_ms: u64,
}

/// Everything the group replicates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    /// (cluster, endpoint) → latest verdict.
    pub verdicts: BTreeMap<(String, String), VerdictEntry>,
    /// key → (endpoint, expiry ms).
    pub sticky: BTreeMap<u64, (String, u64)>,
    /// (key, window start ms) → per-node counts.
    pub rate: BTreeMap<(u64, u64), BTreeMap<NodeId, u64>>,
    /// Shared data.
    pub shared: BTreeMap<String, Vec<u8>>,
    /// VRID → lease (see [`crate::lease`]).
    pub leases: BTreeMap<u8, Lease>,
    /// Batch time of the last prune (pruning is O(table), so it runs once a second).
    pub last_prune_ms: u64,
    /// (cluster, endpoint) → latest passive ejection (kept while it lasts).
    pub ejections: BTreeMap<(String, String), EjectionEntry>,
}

/// [`Tables`] as snapshots before ejections were shared stored them (read-only: a
/// snapshot written by an earlier version still opens).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TablesV1 {
    verdicts: BTreeMap<(String, String), VerdictEntry>,
    sticky: BTreeMap<u64, (String, u64)>,
    rate: BTreeMap<(u64, u64), BTreeMap<NodeId, u64>>,
    shared: BTreeMap<String, Vec<u8>>,
    leases: BTreeMap<u8, Lease>,
    last_prune_ms: u64,
}

impl From<TablesV1> for Tables {
    fn from(t: TablesV1) -> Tables {
        Tables {
            verdicts: t.verdicts,
            sticky: t.sticky,
            rate: t.rate,
            shared: t.shared,
            leases: t.leases,
            last_prune_ms: t.last_prune_ms,
            ejections: BTreeMap::new(),
        }
    }
}

impl Tables {
    /// Applies one committed batch; returns the lease its last lease change left.
    pub fn apply(&mut self, batch: &Batch) -> Option<Lease> {
        let mut lease = None;
        for c in &batch.changes {
            match c {
                Change::Verdict {
                    cluster,
                    endpoint,
                    healthy,
                    observed_at_ms,
                } => {
                    let k = (cluster.clone(), endpoint.clone());
                    let newer = self
                        .verdicts
                        .get(&k)
                        .is_none_or(|v| v.observed_at_ms <= *observed_at_ms);
                    if newer {
                        self.verdicts.insert(
                            k,
                            VerdictEntry {
                                healthy: *healthy,
                                reporter: batch.origin,
                                observed_at_ms: *observed_at_ms,
                            },
                        );
                    }
                }
                Change::Sticky {
                    key,
                    endpoint,
                    expires_at_ms,
                } => {
                    self.sticky.insert(*key, (endpoint.clone(), *expires_at_ms));
                }
                Change::RateCount { key, window_ms, count } => {
                    let per_node = self.rate.entry((*key, *window_ms)).or_default();
                    let e = per_node.entry(batch.origin).or_default();
                    *e = (*e).max(*count);
                }
                Change::Shared { key, value } => match value {
                    Some(v) => {
                        self.shared.insert(key.clone(), v.clone());
                    }
                    None => {
                        self.shared.remove(key);
                    }
                },
                Change::VipLease {
                    vrid,
                    priority,
                    preempt,
                    at_ms,
                    ttl_ms,
                } => {
                    lease = Some(self.apply_lease(batch.origin, *vrid, *priority, *preempt, *at_ms, *ttl_ms));
                }
                Change::VipRelease { vrid } => lease = self.release_lease(batch.origin, *vrid),
                Change::StickyBind {
                    key,
                    endpoint,
                    at_ms,
                    expires_at_ms,
                    replaces,
                } => self.bind_sticky(*key, endpoint, *at_ms, *expires_at_ms, replaces.as_deref()),
                Change::Ejection {
                    cluster,
                    endpoint,
                    until_ms,
                    observed_at_ms,
                } => {
                    let k = (cluster.clone(), endpoint.clone());
                    if self
                        .ejections
                        .get(&k)
                        .is_none_or(|e| e.observed_at_ms <= *observed_at_ms)
                    {
                        self.ejections.insert(
                            k,
                            EjectionEntry {
                                until_ms: *until_ms,
                                reporter: batch.origin,
                                observed_at_ms: *observed_at_ms,
                            },
                        );
                    }
                }
            }
        }
        lease
    }

    /// One truth per sticky key: a live binding to another endpoint stays unless this
    /// one names it as replaced; the same endpoint extends it; a missing or expired one
    /// is replaced.
    fn bind_sticky(&mut self, key: u64, endpoint: &str, at_ms: u64, expires_at_ms: u64, replaces: Option<&str>) {
        match self.sticky.get_mut(&key) {
            Some((ep, exp)) if *exp > at_ms => {
                if ep == endpoint {
                    *exp = (*exp).max(expires_at_ms);
                } else if replaces == Some(ep.as_str()) {
                    *ep = endpoint.to_string();
                    *exp = expires_at_ms;
                }
            }
            _ => {
                self.sticky.insert(key, (endpoint.to_string(), expires_at_ms));
            }
        }
    }

    /// Drops expired sticky bindings and rate windows older than `keep_ms` before `now_ms`.
    /// Called by the state machine with the batch's time so every member prunes alike.
    pub fn prune(&mut self, now_ms: u64, keep_ms: u64) {
        if now_ms < self.last_prune_ms + 1_000 {
            return;
        }
        self.last_prune_ms = now_ms;
        self.sticky.retain(|_, (_, exp)| *exp > now_ms);
        self.ejections.retain(|_, e| e.until_ms > now_ms);
        self.rate.retain(|(_, w), _| *w + keep_ms > now_ms);
    }

    /// The pair's total for a rate key in a window.
    pub fn rate_total(&self, key: u64, window_ms: u64) -> u64 {
        self.rate.get(&(key, window_ms)).map_or(0, |m| m.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_from_nodes_are_summed_not_overwritten() {
        let mut t = Tables::default();
        for (node, count) in [(1, 10), (2, 7), (1, 12), (2, 5)] {
            t.apply(&Batch {
                origin: node,
                changes: vec![Change::RateCount {
                    key: 9,
                    window_ms: 1000,
                    count,
                }],
            });
        }
        // Node 1's latest is 12, node 2's highest is 7 (a stale 5 does not lower it).
        assert_eq!(t.rate_total(9, 1000), 19);
    }

    #[test]
    fn the_first_committed_sticky_binding_wins_until_replaced_by_name() {
        let mut t = Tables::default();
        let bind = |t: &mut Tables, node, ep: &str, at, replaces: Option<&str>| {
            t.apply(&Batch {
                origin: node,
                changes: vec![Change::StickyBind {
                    key: 1,
                    endpoint: ep.into(),
                    at_ms: at,
                    expires_at_ms: at + 1000,
                    replaces: replaces.map(Into::into),
                }],
            });
        };
        // Two nodes bind the same new session concurrently: the first commit wins.
        bind(&mut t, 1, "a", 100, None);
        bind(&mut t, 2, "b", 101, None);
        assert_eq!(t.sticky[&1], ("a".to_string(), 1100));
        // The winner's refresh extends it.
        bind(&mut t, 1, "a", 500, None);
        assert_eq!(t.sticky[&1], ("a".to_string(), 1500));
        // A node that found "a" unfit rebinds by naming it; a stale rebind (naming an
        // endpoint that is no longer bound) loses.
        bind(&mut t, 2, "b", 600, Some("a"));
        assert_eq!(t.sticky[&1].0, "b");
        bind(&mut t, 1, "c", 601, Some("a"));
        assert_eq!(t.sticky[&1].0, "b");
        // Once expired, any binding takes its place.
        bind(&mut t, 1, "c", 5000, None);
        assert_eq!(t.sticky[&1].0, "c");
    }

    #[test]
    fn older_verdicts_do_not_replace_newer_ones() {
        let mut t = Tables::default();
        let v = |healthy, at| Batch {
            origin: 1,
            changes: vec![Change::Verdict {
                cluster: "c".into(),
                endpoint: "e".into(),
                healthy,
                observed_at_ms: at,
            }],
        };
        t.apply(&v(false, 200));
        t.apply(&v(true, 100));
        assert!(!t.verdicts[&("c".into(), "e".into())].healthy);
    }
}
