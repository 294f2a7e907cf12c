//! Stage 3: admission — the route's rate limit and the cluster's breakers (requests in
//! flight), decided from this node's counts; nothing here waits.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::Request;
use hyper::body::Incoming;

use crate::error::Limit;
use crate::error::ProxyError;
use crate::http::conn::ConnState;
use crate::runtime::{Cluster, Route};

/// Stage 2b: the route's rate limit, decided from this node's counts (never waits).
pub(super) fn rate_limit(route: &Route, req: &Request<Incoming>, conn: &ConnState) -> Result<(), ProxyError> {
    let Some(l) = &route.limiter else { return Ok(()) };
    match l.admit(l.key_of(req.headers(), conn.client)) {
        crate::ratelimit::Decision::Allow { .. } => Ok(()),
        crate::ratelimit::Decision::Deny { retry_after } => {
            route.stats.rate_limited.fetch_add(1, Relaxed);
            Err(ProxyError::RateLimited {
                retry_after_ms: retry_after.as_millis() as u64,
                limit: l.config.requests,
            })
        }
    }
}

/// Circuit breaker on requests in flight: refuse at once rather than queue.
pub(super) fn admit(cluster: &Cluster) -> Result<(), ProxyError> {
    if cluster.stats.active.load(Relaxed) >= cluster.breakers.max_requests {
        return Err(overflow(cluster, Limit::Requests));
    }
    Ok(())
}

pub(super) fn overflow(cluster: &Cluster, limit: Limit) -> ProxyError {
    cluster.stats.breaker_overflows[limit as usize].fetch_add(1, Relaxed);
    ProxyError::Overflow(limit)
}

/// Holds one unit of an in-flight gauge and gives it back when dropped, so a request
/// abandoned at any await point (client gone, timeout) never leaks a count.
pub(super) struct InFlight<'a>(Option<&'a AtomicU64>);

impl<'a> InFlight<'a> {
    pub(super) fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(Some(gauge))
    }

    /// Takes over a unit that was already added.
    pub(super) fn adopt(gauge: &'a AtomicU64) -> Self {
        InFlight(Some(gauge))
    }

    /// Keeps the unit: someone else (the response completion) gives it back.
    pub(super) fn hand_over(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.fetch_sub(1, Relaxed);
        }
    }
}
