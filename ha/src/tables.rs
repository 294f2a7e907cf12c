//! The replicated tables and how a committed batch changes them. Applying is
//! deterministic, so every member that applied the same log holds the same tables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Batch, Change, Lease, NodeId};

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

impl Tables {
    /// Applies a lease request (or renewal) from `origin`; returns the lease afterwards.
    pub(crate) fn apply_lease(
        &mut self,
        origin: NodeId,
        vrid: u8,
        priority: u8,
        preempt: bool,
        at_ms: u64,
        ttl_ms: u64,
    ) -> Lease {
        let lease = self.leases.entry(vrid).or_insert(Lease {
            vrid,
            holder: origin,
            priority,
            until_ms: 0,
            clock_ms: 0,
            wanted_by: None,
        });
        if at_ms + ttl_ms < lease.clock_ms {
            return *lease;
        }
        lease.clock_ms = lease.clock_ms.max(at_ms);
        let free = lease.holder == origin || lease.until_ms <= at_ms;
        if free {
            if lease.holder != origin || lease.wanted_by == Some(origin) {
                lease.wanted_by = None;
            }
            lease.holder = origin;
            lease.priority = priority;
            lease.until_ms = at_ms + ttl_ms;
        } else if preempt && priority > lease.priority {
            lease.wanted_by = Some(origin);
        }
        *lease
    }

    /// Applies a release from `origin`: the lease expires at once if `origin` holds it.
    pub(crate) fn release_lease(&mut self, origin: NodeId, vrid: u8) -> Option<Lease> {
        let lease = self.leases.get_mut(&vrid)?;
        if lease.holder == origin {
            lease.until_ms = 0;
        }
        Some(*lease)
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
