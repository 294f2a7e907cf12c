//! Reloading the configuration: read and validate it again, compile a new runtime and
//! swap it in; endpoints the new runtime no longer has drain; settings that only a
//! restart can change are reported, not applied. An operator drains endpoints here too.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::health::verdict::{self, Source, Target, Verdict};
use crate::runtime::Runtime;
use crate::shared::{Loaded, RemovedEndpoint, Shared};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// New generation.
    pub generation: u64,
    /// Restart-only settings that changed and were not applied.
    pub ignored: Vec<String>,
}

/// Reads the configuration again and swaps in a new runtime. A configuration that
/// does not validate is refused and the current one keeps serving.
pub fn reload(shared: &Shared) -> Result<ReloadOutcome, ConfigError> {
    let _guard = shared.reload_lock.lock().expect("reload lock poisoned");
    let Loaded {
        config: next,
        artifacts,
    } = match shared.source.load() {
        Ok(c) => c,
        Err(e) => {
            shared.stats.process.reloads_failed.fetch_add(1, Relaxed);
            tracing::error!(
                "reload refused, keeping generation {}:\n{e}",
                shared.runtime.load().generation
            );
            return Err(e);
        }
    };
    let current = shared.runtime.load_full();
    let ignored = restart_only_changes(&shared.started_with, &next);
    for what in &ignored {
        tracing::warn!("reload: {what} changed; it takes effect only after a restart");
    }
    for w in &next.warnings {
        tracing::warn!("{}:{}:{}: {}: {}", next.source, w.line, w.col, w.key, w.message);
    }
    let generation = current.generation + 1;
    let rt = Runtime::compile(Arc::new(next), artifacts, generation, &shared.stats);
    drain_removed(shared, &current, &rt);
    shared.runtime.store(Arc::new(rt));
    shared.reloaded.send_replace(generation);
    shared.stats.process.reloads_ok.fetch_add(1, Relaxed);
    tracing::info!(generation, "configuration reloaded");
    Ok(ReloadOutcome { generation, ignored })
}

/// Drains endpoints the new runtime no longer has; returns re-added ones to rotation.
fn drain_removed(shared: &Shared, old: &Runtime, new: &Runtime) {
    let in_new = |cluster: &str, addr| {
        new.clusters
            .iter()
            .any(|c| &*c.name == cluster && c.endpoints.iter().any(|e| e.address == addr))
    };
    let mut removed = shared.removed_endpoints();
    removed.retain(|r| {
        if in_new(&r.cluster, r.address) {
            let target = Target {
                cluster: &r.cluster,
                address: r.address,
                pair: shared.pair.as_deref(),
            };
            verdict::apply(&r.stats.health, Verdict::Undrain, Source::Operator, target, None, 0, 0);
            return false;
        }
        true
    });
    for c in &old.clusters {
        for e in &c.endpoints {
            if in_new(&c.name, e.address) || removed.iter().any(|r| r.cluster == c.name && r.address == e.address) {
                continue;
            }
            let target = Target {
                cluster: &c.name,
                address: e.address,
                pair: shared.pair.as_deref(),
            };
            verdict::apply(&e.stats.health, Verdict::Drain, Source::Operator, target, None, 0, 0);
            removed.push(RemovedEndpoint {
                cluster: c.name.clone(),
                address: e.address,
                stats: e.stats.clone(),
            });
        }
    }
    // Keep the list bounded: forget the oldest drained entries.
    while removed.len() > 256 {
        match removed.iter().position(|r| r.stats.health.drained_ns.load(Relaxed) > 0) {
            Some(i) => {
                removed.remove(i);
            }
            None => break,
        }
    }
}

/// Drains (or returns to rotation) endpoint `addr` of `cluster` by operator request.
pub fn set_endpoint_drain(
    shared: &Shared,
    cluster: &str,
    addr: std::net::SocketAddr,
    drain: bool,
) -> Result<(), String> {
    let rt = shared.runtime.load();
    let c = rt
        .clusters
        .iter()
        .find(|c| &*c.name == cluster)
        .ok_or_else(|| format!("no cluster named `{cluster}`"))?;
    let e = c
        .endpoints
        .iter()
        .find(|e| e.address == addr)
        .ok_or_else(|| format!("cluster `{cluster}` has no endpoint {addr}"))?;
    let v = if drain { Verdict::Drain } else { Verdict::Undrain };
    verdict::apply(
        &e.stats.health,
        v,
        Source::Operator,
        Target {
            cluster: &c.name,
            address: e.address,
            pair: shared.pair.as_deref(),
        },
        None,
        0,
        0,
    );
    shared.health_wake.notify_one();
    Ok(())
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if old.listeners != new.listeners {
        v.push("listeners".to_string());
    }
    if old.admin != new.admin {
        v.push("admin".to_string());
    }
    if old.server != new.server {
        v.push("server".to_string());
    }
    if old.log != new.log {
        v.push("log".to_string());
    }
    if old.vips != new.vips {
        v.push("vips".to_string());
    }
    if old.bgp != new.bgp || old.anycast != new.anycast {
        v.push("bgp/anycast".to_string());
    }
    v
}
