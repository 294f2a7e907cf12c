//! The one place where endpoint health changes. Active probes, passive outlier
//! detection, the success-rate sweep and operator drains all report here, so every
//! transition is logged, counted and (in the pair) published the same way.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use super::{EndpointHealth, HEALTHY, UNHEALTHY};
use crate::clock::now_ns;
use crate::config::OutlierConfig;

/// Why outlier detection ejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EjectReason {
    /// Consecutive 5xx responses.
    Consecutive5xx,
    /// Consecutive connect failures, resets, timeouts, 502/503/504.
    ConsecutiveGateway,
    /// Success rate far below the cluster's.
    SuccessRate,
}

impl EjectReason {
    /// Label for logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGateway => "consecutive_gateway_errors",
            EjectReason::SuccessRate => "success_rate",
        }
    }
}

/// A judgement about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// The active check reached `rise` passes.
    Healthy,
    /// The active check reached `fall` failures.
    Unhealthy,
    /// Outlier detection wants it out of rotation.
    Eject(EjectReason),
    /// A peer of the pair ejected it; out of rotation for what is left of that ejection.
    PeerEject(std::time::Duration),
    /// An ejection ends early (a passing active check, when configured).
    Uneject,
    /// The operator (or a reload) drains it.
    Drain,
    /// The operator returns it to rotation.
    Undrain,
}

/// Where a verdict came from (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Active prober.
    ActiveCheck,
    /// Real traffic.
    Passive,
    /// The success-rate sweep.
    Sweep,
    /// Admin API or reload.
    Operator,
    /// A peer's verdict, adopted from the pair's replicated table.
    Peer,
    /// A proxy-wasm filter's verdict (`tandem.report_health`).
    Filter,
}

/// Which endpoint, for logging; and the node's member of the pair's group, when it is
/// one, to publish to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Endpoint address.
    pub address: SocketAddr,
    /// Where verdicts and ejections are published.
    pub pair: Option<&'a crate::pair::Pair>,
}

/// Applies `verdict` to `h`. For ejections, `ejected_now`/`total` are the cluster's
/// counts so `max_ejection_percent` can be honoured. Returns whether state changed.
pub(crate) fn apply(
    h: &EndpointHealth,
    verdict: Verdict,
    source: Source,
    target: Target<'_>,
    outlier: Option<&OutlierConfig>,
    ejected_now: usize,
    total: usize,
) -> bool {
    let now = now_ns();
    match verdict {
        Verdict::Healthy => {
            let was = h.active.swap(HEALTHY, Relaxed);
            if was != HEALTHY {
                h.active_from.store(source as u8, Relaxed);
                if matches!(source, Source::ActiveCheck | Source::Filter) {
                    if let Some(p) = target.pair {
                        p.publish_verdict(target.cluster, target.address, true);
                    }
                }
                if was == UNHEALTHY {
                    h.ready_since_ns.store(now, Relaxed);
                }
                tracing::info!(cluster = target.cluster, endpoint = %target.address, ?source, "endpoint healthy");
                return true;
            }
            false
        }
        Verdict::Uneject => {
            if h.is_ejected(now) {
                h.ejected_until_ns.store(now, Relaxed);
                tracing::info!(cluster = target.cluster, endpoint = %target.address, ?source, "ejection ended early");
                return true;
            }
            false
        }
        Verdict::Unhealthy => {
            if h.active.swap(UNHEALTHY, Relaxed) != UNHEALTHY {
                h.active_from.store(source as u8, Relaxed);
                if matches!(source, Source::ActiveCheck | Source::Filter) {
                    if let Some(p) = target.pair {
                        p.publish_verdict(target.cluster, target.address, false);
                    }
                }
                tracing::warn!(cluster = target.cluster, endpoint = %target.address, ?source, "endpoint unhealthy");
                return true;
            }
            false
        }
        Verdict::Eject(reason) => {
            let Some(o) = outlier else { return false };
            if h.is_ejected(now) {
                return false;
            }
            let max = (total * o.max_ejection_percent as usize) / 100;
            if ejected_now + 1 > max.max(if o.max_ejection_percent > 0 { 1 } else { 0 }) || total <= 1 {
                h.ejections_refused.fetch_add(1, Relaxed);
                return false;
            }
            let times = h.times_ejected.fetch_add(1, Relaxed) + 1;
            let dur = o.base_ejection_time.saturating_mul(times).min(o.max_ejection_time);
            h.ejected_until_ns.store(now + dur.as_nanos() as u64, Relaxed);
            h.ejected_by_peer.store(source == Source::Peer, Relaxed);
            if let Some(p) = target.pair.filter(|_| source != Source::Peer) {
                // The pair ejects a gray endpoint together.
                p.publish_ejection(
                    target.cluster,
                    target.address,
                    crate::pair::now_ms() + dur.as_millis() as u64,
                );
            }
            h.consecutive_5xx.store(0, Relaxed);
            h.consecutive_gateway.store(0, Relaxed);
            match reason {
                EjectReason::Consecutive5xx => &h.ejections_5xx,
                EjectReason::ConsecutiveGateway => &h.ejections_gateway,
                EjectReason::SuccessRate => &h.ejections_success_rate,
            }
            .fetch_add(1, Relaxed);
            tracing::warn!(
                cluster = target.cluster,
                endpoint = %target.address,
                reason = reason.as_str(),
                ejection_ms = dur.as_millis() as u64,
                times,
                "endpoint ejected"
            );
            true
        }
        Verdict::PeerEject(left) => {
            if h.is_ejected(now) {
                return false;
            }
            let Some(o) = outlier else { return false };
            let max = (total * o.max_ejection_percent as usize) / 100;
            if ejected_now + 1 > max.max(if o.max_ejection_percent > 0 { 1 } else { 0 }) || total <= 1 {
                h.ejections_refused.fetch_add(1, Relaxed);
                return false;
            }
            h.ejected_until_ns.store(now + left.as_nanos() as u64, Relaxed);
            h.ejected_by_peer.store(true, Relaxed);
            h.ejections_peer.fetch_add(1, Relaxed);
            tracing::warn!(
                cluster = target.cluster,
                endpoint = %target.address,
                ejection_ms = left.as_millis() as u64,
                "endpoint ejected (by a peer's outlier detection)"
            );
            true
        }
        Verdict::Drain => {
            if !h.draining.swap(true, Relaxed) {
                h.drain_started_ns.store(now, Relaxed);
                h.drained_ns.store(0, Relaxed);
                tracing::info!(cluster = target.cluster, endpoint = %target.address, ?source, "endpoint draining");
                return true;
            }
            false
        }
        Verdict::Undrain => {
            if h.draining.swap(false, Relaxed) {
                h.ready_since_ns.store(now, Relaxed);
                tracing::info!(cluster = target.cluster, endpoint = %target.address, ?source, "endpoint back in rotation");
                return true;
            }
            false
        }
    }
}
