//! The proxy's side of the pair's shared state: starts this node's Raft member (on its
//! own thread), publishes local health verdicts and sticky bindings, and reads what the
//! peers published. The request path never waits on it: publishing queues, reading takes
//! a short read lock on the replicated tables only when the local view has no answer.

use std::sync::{Arc, OnceLock, RwLock};

use tandem_ha::{Change, HaNode, Publisher, Tables};

use crate::config::HaConfigSection;

/// What the rest of the proxy sees of the group.
pub struct Pair {
    /// This node's id.
    pub id: u64,
    /// Queues local changes.
    pub publisher: Publisher,
    /// The replicated tables.
    pub tables: Arc<RwLock<Tables>>,
    /// Raft metrics (leader, term, log positions, replication).
    pub metrics: tokio::sync::watch::Receiver<tandem_ha::RaftMetrics<u64, tandem_ha::openraft::BasicNode>>,
    /// Peer handshakes refused.
    pub refused: Arc<tandem_ha::network::PeerStats>,
    /// Commits VIP leases (the fence of the floating VIPs).
    pub leases: tandem_ha::LeaseClient,
    /// Settings.
    pub config: HaConfigSection,
}

static PAIR: OnceLock<Pair> = OnceLock::new();

/// The group, when this node is a member.
pub fn get() -> Option<&'static Pair> {
    PAIR.get()
}

/// Starts this node's member on a dedicated thread and returns once it runs.
pub fn start(cfg: &HaConfigSection) -> Result<&'static Pair, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let group = cfg.group.clone();
    std::thread::Builder::new()
        .name("ha".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match HaNode::start(group).await {
                    Ok(node) => {
                        let parts = (
                            node.id,
                            node.publisher(),
                            node.tables.clone(),
                            node.raft.metrics(),
                            node.peer_stats.clone(),
                            node.lease_client(),
                        );
                        let _ = tx.send(Ok(parts));
                        // Keep the member (and its runtime) alive for the life of the process.
                        std::future::pending::<()>().await;
                        drop(node);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let (id, publisher, tables, metrics, refused, leases) = rx.recv().map_err(|e| e.to_string())??;
    let _ = PAIR.set(Pair {
        id,
        publisher,
        tables,
        metrics,
        refused,
        leases,
        config: cfg.clone(),
    });
    PAIR.get().ok_or_else(|| "pair already started".to_string())
}

/// Milliseconds since the Unix epoch (verdict and binding timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Publishes an active-check verdict (called from the verdict module only).
pub fn publish_verdict(cluster: &str, endpoint: std::net::SocketAddr, healthy: bool) {
    if let Some(p) = get() {
        p.publisher.publish(Change::Verdict {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
            healthy,
            observed_at_ms: now_ms(),
        });
    }
}

/// Publishes a learned sticky binding.
pub fn publish_sticky(key: u64, endpoint: std::net::SocketAddr, idle: std::time::Duration) {
    if let Some(p) = get() {
        p.publisher.publish(Change::Sticky {
            key,
            endpoint: endpoint.to_string(),
            expires_at_ms: now_ms() + idle.as_millis() as u64,
        });
    }
}

/// A binding a peer learned, if it has not expired.
pub fn replicated_sticky(key: u64) -> Option<std::net::SocketAddr> {
    let p = get()?;
    let t = p.tables.read().ok()?;
    let (ep, exp) = t.sticky.get(&key)?;
    (*exp > now_ms()).then(|| ep.parse().ok()).flatten()
}

/// Publishes a cluster-scoped shared-data write of a filter (`None` removes the key).
pub fn publish_shared(key: &str, value: Option<Vec<u8>>) {
    if let Some(p) = get() {
        p.publisher.publish(Change::Shared {
            key: key.to_string(),
            value,
        });
    }
}

/// A cluster-scoped shared-data value as replicated in the group.
pub fn replicated_shared(key: &str) -> Option<Vec<u8>> {
    let p = get()?;
    let t = p.tables.read().ok()?;
    t.shared.get(key).cloned()
}

/// Cluster-scope rate limits: publishes this node's changed window counts and feeds the
/// peers' reported counts into the limiters. Called every health tick (50 ms).
pub fn sync_rate_limits(limiters: &[Arc<crate::ratelimit::Limiter>]) {
    let Some(p) = get() else { return };
    let cluster: Vec<_> = limiters
        .iter()
        .filter(|l| l.config.scope == crate::ratelimit::Scope::Cluster)
        .collect();
    if cluster.is_empty() {
        return;
    }
    for l in &cluster {
        for (key, window_ms, count) in l.take_dirty() {
            p.publisher.publish(Change::RateCount { key, window_ms, count });
        }
    }
    let Ok(t) = p.tables.read() else { return };
    let horizon = now_ms().saturating_sub(120_000);
    for ((key, window_ms), per_node) in t.rate.iter() {
        if *window_ms < horizon {
            continue;
        }
        let peers: u64 = per_node.iter().filter(|(n, _)| **n != p.id).map(|(_, c)| *c).sum();
        if peers > 0 {
            for l in &cluster {
                l.set_peer_count(*key, *window_ms, peers);
            }
        }
    }
}
