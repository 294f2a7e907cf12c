//! Stage 7: the answer — the upstream response made downstream, what it teaches the
//! balancer and outlier detection, and the local answer when a request fails.

use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderValue};
use http::{Response, Version};

use crate::access_log::AccessRecord;
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::http::body::{Completion, ProxyBody};
use crate::http::context::{RequestCtx, RoutedCtx};
use crate::http::headers;
use crate::runtime::Route;
use crate::upstream::ResponseBody;
use std::time::Duration;

/// Stage 7: turns the upstream response into the downstream one.
pub(super) fn prepare_downstream_response(mut resp: Response<ResponseBody>, route: &Route) -> Response<ResponseBody> {
    let h = resp.headers_mut();
    headers::strip_hop_by_hop(h);
    if !route.response_headers.is_empty() {
        headers::apply_rules(h, &route.response_headers);
    }
    *resp.version_mut() = Version::HTTP_11;
    resp
}

/// Stage 8: feeds latency and status to the balancer signals, outlier detection and
/// counters (an ejection is published to the node's pair member).
pub(super) fn observe(routed: &RoutedCtx<'_>, ep_idx: usize, status: u16, upstream_time: Duration) {
    let (route, cluster) = (routed.route, routed.cluster);
    let pair = routed.worker.shared.pair.as_deref();
    let ep = &cluster.endpoints[ep_idx];
    let ns = upstream_time.as_nanos() as u64;
    ep.stats.ewma.observe_at(ns as f64, routed.start_ns + ns);
    ep.stats.latency.observe_ns(ns);
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
    route.stats.latency.observe_ns(ns);
    crate::runtime::passive::observe_passive(cluster, ep_idx, status, false, pair);
}

/// Stage 8 for an attempt that got no response.
pub(super) fn observe_failure(routed: &RoutedCtx<'_>, ep_idx: usize, e: ProxyError) {
    let (route, cluster) = (routed.route, routed.cluster);
    let pair = routed.worker.shared.pair.as_deref();
    let ep = &cluster.endpoints[ep_idx];
    let status = e.status().as_u16();
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
    if !matches!(e, ProxyError::Overflow(_)) {
        // A failure is as bad as a slow answer for load-aware balancers.
        ep.stats.ewma.observe(1e9);
        crate::runtime::passive::observe_passive(cluster, ep_idx, status, true, pair);
    }
}

/// A local error response with its short plain body; logged as the request's outcome.
pub(super) fn local_error(
    cx: &RequestCtx<'_>,
    e: ProxyError,
    rec: &mut Option<Box<AccessRecord>>,
) -> Response<ProxyBody> {
    let (worker, start) = (cx.worker, cx.start);
    if e == ProxyError::NoRoute {
        worker.shared.stats.process.no_route.fetch_add(1, Relaxed);
    }
    let record = rec.take().map(|mut r| {
        r.status = e.status().as_u16();
        r.reason = e.reason();
        (r, worker.shared.access_log.clone())
    });
    let done = record.map(|record| {
        Box::new(Completion {
            endpoint: None,
            cluster: None,
            route: None,
            record: Some(record),
            start,
            bytes: 0,
            grpc_status: None,
            filters: None,
        })
    });
    let mut resp = Response::new(ProxyBody::local(e.body(), done));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::HeaderName::from_static("x-tandem-error"),
        HeaderValue::from_static(e.reason()),
    );
    if let ProxyError::RateLimited { retry_after_ms, limit } = e {
        let secs = retry_after_ms.div_ceil(1000).max(1);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        h.insert(
            http::HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(limit),
        );
        h.insert(
            http::HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(0u64),
        );
        h.insert(
            http::HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(secs),
        );
    }
    if let ProxyError::Overflow(limit) = e {
        h.insert(
            http::HeaderName::from_static("x-tandem-overflow"),
            HeaderValue::from_static(limit.as_str()),
        );
    }
    resp
}

/// The downstream response for an upstream one: its body streamed (through the
/// filters' body callbacks when they asked for them), and the request's completion
/// (counters, the access log line) run when that body ends.
#[allow(clippy::too_many_arguments)]
pub(super) fn upstream_response(
    routed: &RoutedCtx<'_>,
    resp: Response<ResponseBody>,
    ep_idx: usize,
    chain: Option<crate::wasm::http::ChainRef>,
    rec: &mut Option<Box<AccessRecord>>,
    upstream_time: Duration,
) -> Response<ProxyBody> {
    let (worker, start, route, cluster) = (routed.worker, routed.start, routed.route, routed.cluster);
    let endpoint = &cluster.endpoints[ep_idx];
    // A trailers-only gRPC answer carries grpc-status in its headers (gRPC needs h2c).
    let grpc_status = (cluster.protocol == UpstreamProtocol::H2c)
        .then(|| resp.headers().get("grpc-status"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut done = Box::new(Completion {
        endpoint: Some(endpoint.stats.clone()),
        cluster: Some(cluster.stats.clone()),
        route: Some(route.stats.clone()),
        record: None,
        start,
        bytes: 0,
        grpc_status,
        filters: None,
    });
    if let Some(mut r) = rec.take() {
        r.status = resp.status().as_u16();
        r.upstream_time = Some(upstream_time);
        done.record = Some((r, worker.shared.access_log.clone()));
    }
    let (parts, body) = resp.into_parts();
    let body = match chain {
        Some(c) if !http_body::Body::is_end_stream(&body) => {
            let fixed = parts.headers.contains_key(http::header::CONTENT_LENGTH);
            ProxyBody::filtered(crate::wasm::http::FilteredBody::new(body, c, true, fixed), Some(done))
        }
        c => {
            done.filters = c;
            ProxyBody::upstream(body, Some(done))
        }
    };
    Response::from_parts(parts, body)
}
