//! Passive outlier detection on real traffic: the request path reports each answer's
//! status here, and an endpoint that keeps failing is ejected through the same verdict
//! module as the active checks.

use std::sync::atomic::Ordering::Relaxed;

use crate::health::verdict;

/// Passive outlier detection: counts consecutive 5xx and gateway errors of real
/// traffic to endpoint `idx` and ejects through [`verdict::apply`] when a threshold is
/// reached. `status` is the status the client saw (a local 502/503/504 for failures);
/// `gateway_failure` marks connect failures, resets and timeouts. An ejection is
/// published to `pair` (the node's member of the pair's group, when it is one).
pub(crate) fn observe_passive(
    cluster: &super::Cluster,
    idx: usize,
    status: u16,
    gateway_failure: bool,
    pair: Option<&crate::pair::Pair>,
) {
    let Some(o) = &cluster.outlier else { return };
    let ep = &cluster.endpoints[idx];
    let h = &ep.stats.health;
    let is_5xx = status >= 500;
    let is_gateway = gateway_failure || matches!(status, 502..=504);
    let n5 = if is_5xx {
        h.consecutive_5xx.fetch_add(1, Relaxed) + 1
    } else {
        h.consecutive_5xx.store(0, Relaxed);
        0
    };
    let ng = if is_gateway {
        h.consecutive_gateway.fetch_add(1, Relaxed) + 1
    } else {
        h.consecutive_gateway.store(0, Relaxed);
        0
    };
    let reason = if o.consecutive_gateway_errors > 0 && ng >= o.consecutive_gateway_errors {
        verdict::EjectReason::ConsecutiveGateway
    } else if o.consecutive_5xx > 0 && n5 >= o.consecutive_5xx {
        verdict::EjectReason::Consecutive5xx
    } else {
        return;
    };
    let now = crate::clock::now_ns();
    let ejected = cluster
        .endpoints
        .iter()
        .filter(|e| e.stats.health.is_ejected(now))
        .count();
    verdict::apply(
        h,
        verdict::Verdict::Eject(reason),
        verdict::Source::Passive,
        verdict::Target {
            cluster: &cluster.name,
            address: ep.address,
            pair,
        },
        Some(o),
        ejected,
        cluster.endpoints.len(),
    );
}
