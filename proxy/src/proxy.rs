//! The L7 request path, one function per stage:
//!
//! 1. [`handle`]: bookkeeping (request id, connection counters) and the stage sequence;
//! 2. [`route_request`]: listener router → route;
//! 3. [`Route::pick_cluster`](crate::runtime::Route::pick_cluster): weighted split;
//! 4. [`pick_endpoint`]: the cluster's balancer;
//! 5. [`prepare_upstream_request`]: hop-by-hop strip, forwarding headers, rules, URI form;
//! 6. [`exchange`]: pooled connection, send, stale-connection retry, route timeout;
//! 7. [`prepare_downstream_response`]: hop-by-hop strip, rules, connection close;
//! 8. [`observe`]: latency EWMA, counters; the access log line is written when the body ends.
//!
//! Decisions use only local state: the runtime snapshot, per-worker balancer state and
//! shared atomics. Nothing here waits on disk, consensus or another thread.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::balancer;
use crate::body::{Completion, ProxyBody};
use crate::config::UpstreamProtocol;
use crate::downstream::ConnState;
use crate::error::ProxyError;
use crate::headers;
use crate::runtime::{router, Cluster, RequestFacts, Route, Runtime};
use crate::upstream::{self, Conn};
use crate::worker::Worker;

/// Serves one request.
pub async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnState>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let n = conn.requests.get() + 1;
    conn.requests.set(n);
    conn.in_flight.set(conn.in_flight.get() + 1);
    conn.last_active.set(start);
    if n == 1 {
        conn.wake.notify_one();
    }
    worker.shared.listeners[conn.listener].1.requests.fetch_add(1, Relaxed);

    let downstream_version = req.version();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let rt = worker.shared.runtime.load_full();
    let mut rec = worker.shared.access_log.enabled().then(|| AccessRecord {
        time: SystemTime::now(),
        request_id: request_id.clone(),
        client: conn.client,
        method: req.method().clone(),
        authority: authority_value(&req),
        uri: req.uri().clone(),
        version: req.version(),
        status: 0,
        bytes: 0,
        upstream_time: None,
        duration: Default::default(),
        route: None,
        cluster: None,
        endpoint: None,
        attempts: 0,
        reason: "ok",
    });

    let mut resp = match proxy_request(&worker, &conn, &rt, req, &mut rec, start).await {
        Ok(resp) => resp,
        Err(e) => local_error(&worker, &rt, e, &mut rec, start),
    };

    let max = worker.listeners[conn.listener].max_requests_per_connection;
    let draining = worker.shared.draining.load(Relaxed);
    if (max > 0 && n >= max) || draining {
        close_after(&conn, &mut resp, downstream_version);
    }
    resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), request_id);
    conn.in_flight.set(conn.in_flight.get() - 1);
    conn.last_active.set(start);
    Ok(resp)
}

/// Stages 2–8 for a request that is to be proxied.
async fn proxy_request(
    worker: &Rc<Worker>,
    conn: &ConnState,
    rt: &Arc<Runtime>,
    mut req: Request<Incoming>,
    rec: &mut Option<AccessRecord>,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = route_request(rt, conn.listener, &req)?;
    if let Some(r) = rec.as_mut() {
        r.route = Some(route.name.clone());
    }
    let cluster = &rt.clusters[route.pick_cluster()];
    if let Some(r) = rec.as_mut() {
        r.cluster = Some(cluster.name.clone());
    }
    let ep_idx = pick_endpoint(worker, rt, cluster, &req, conn)?;
    let endpoint = &cluster.endpoints[ep_idx];
    if let Some(r) = rec.as_mut() {
        r.endpoint = Some(endpoint.address);
    }
    prepare_upstream_request(&mut req, route, cluster, conn)?;

    endpoint.stats.active.fetch_add(1, Relaxed);
    cluster.stats.active.fetch_add(1, Relaxed);
    let mut done = Box::new(Completion {
        conn: None,
        endpoint: Some(endpoint.stats.clone()),
        cluster: Some(cluster.stats.clone()),
        record: None,
        start,
        bytes: 0,
    });
    let outcome = tokio::time::timeout(route.timeout, exchange(worker, cluster, ep_idx, req, rec, start)).await;
    let (resp, upstream_conn) = match outcome {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            observe_failure(route, cluster, ep_idx, e);
            return Err(e);
        }
        Err(_) => {
            endpoint.stats.timeouts.fetch_add(1, Relaxed);
            observe_failure(route, cluster, ep_idx, ProxyError::Timeout);
            return Err(ProxyError::Timeout);
        }
    };
    let upstream_time = start.elapsed();
    observe(route, cluster, ep_idx, resp.status().as_u16(), upstream_time, start);

    let resp = prepare_downstream_response(resp, route);
    done.conn = Some((upstream_conn, worker.pool.clone(), cluster.pool));
    if let Some(mut r) = rec.take() {
        r.status = resp.status().as_u16();
        r.upstream_time = Some(upstream_time);
        done.record = Some((r, worker.shared.access_log.clone()));
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::upstream(body, Some(done))))
}

/// Stage 2: finds the route for the request on its listener.
fn route_request<'rt>(rt: &'rt Runtime, listener: usize, req: &Request<Incoming>) -> Result<&'rt Route, ProxyError> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let facts = RequestFacts {
        host: router::host_without_port(host),
        path: req.uri().path(),
        method: req.method(),
        headers: req.headers(),
    };
    rt.routers[listener]
        .find(&facts)
        .map(|i| &rt.routes[i])
        .ok_or(ProxyError::NoRoute)
}

/// Stage 4: the cluster's balancer picks an endpoint.
fn pick_endpoint(
    worker: &Worker,
    rt: &Runtime,
    cluster: &Cluster,
    req: &Request<Incoming>,
    conn: &ConnState,
) -> Result<usize, ProxyError> {
    if cluster.endpoints.is_empty() {
        cluster.stats.no_endpoint.fetch_add(1, Relaxed);
        return Err(ProxyError::NoHealthyUpstream);
    }
    let hash = if cluster.balancer.is_hashing() {
        cluster.hash_of(req.headers(), conn.client)
    } else {
        None
    };
    Ok(worker.with_balancer(rt, cluster.index, |state| {
        balancer::pick(cluster.balancer, &cluster.table, state, &cluster.endpoints, hash)
    }))
}

/// Stage 5: turns the downstream request into the upstream one.
fn prepare_upstream_request(
    req: &mut Request<Incoming>,
    route: &Route,
    cluster: &Cluster,
    conn: &ConnState,
) -> Result<(), ProxyError> {
    let authority = authority_value(req);
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h);
    headers::add_forwarded(h, conn.client.ip(), authority.as_ref(), "http");
    if !route.request_headers.is_empty() {
        headers::apply_rules(h, &route.request_headers);
    }
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            // Origin-form target and a Host header (HTTP/2 clients send :authority only).
            if let Some(a) = &authority {
                if !h.contains_key(header::HOST) {
                    h.insert(header::HOST, a.clone());
                }
            }
            if req.uri().scheme().is_some() {
                let pq = req.uri().path_and_query().cloned();
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::UpstreamReset)?;
            }
            *req.version_mut() = Version::HTTP_11;
        }
        UpstreamProtocol::H2c => {
            // HTTP/2 needs :scheme and :authority; Host moves into the URI.
            let host = authority.unwrap_or_else(|| HeaderValue::from_static("localhost"));
            h.remove(header::HOST);
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = http::uri::Authority::from_maybe_shared(host.as_bytes().to_vec()).ok();
            parts.path_and_query = req
                .uri()
                .path_and_query()
                .cloned()
                .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::UpstreamReset)?;
            *req.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}

/// Stage 6: sends on a pooled or new connection. A pooled connection that turns out to
/// be closed before the request was written is replaced by a fresh one once.
async fn exchange(
    worker: &Rc<Worker>,
    cluster: &Cluster,
    ep_idx: usize,
    req: Request<Incoming>,
    rec: &mut Option<AccessRecord>,
    start: Instant,
) -> Result<(Response<Incoming>, Conn), ProxyError> {
    let ep = &cluster.endpoints[ep_idx];
    let mut req = req;
    let mut attempts = 0;
    loop {
        attempts += 1;
        if let Some(r) = rec.as_mut() {
            r.attempts = attempts;
        }
        let mut conn = match worker.pool.checkout(ep.address, cluster.protocol, &cluster.pool, start) {
            Some(c) => {
                ep.stats.connections_reused.fetch_add(1, Relaxed);
                c
            }
            None => {
                worker
                    .pool
                    .connect(ep.address, cluster.protocol, cluster.connect_timeout, &ep.stats)
                    .await?
            }
        };
        match upstream::send(&mut conn, req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err((e, Some(back))) if conn.reused && attempts < 3 => {
                tracing::debug!(error = %e, endpoint = %ep.address, "pooled connection was closed; retrying on a new one");
                req = back;
            }
            Err((e, _)) => {
                tracing::debug!(error = %e, endpoint = %ep.address, "upstream exchange failed");
                return Err(ProxyError::UpstreamReset);
            }
        }
    }
}

/// Stage 7: turns the upstream response into the downstream one.
fn prepare_downstream_response(mut resp: Response<Incoming>, route: &Route) -> Response<Incoming> {
    let h = resp.headers_mut();
    headers::strip_hop_by_hop(h);
    if !route.response_headers.is_empty() {
        headers::apply_rules(h, &route.response_headers);
    }
    *resp.version_mut() = Version::HTTP_11;
    resp
}

/// Stage 8: feeds latency and status to the balancer signals and counters.
fn observe(
    route: &Route,
    cluster: &Cluster,
    ep_idx: usize,
    status: u16,
    upstream_time: std::time::Duration,
    start: Instant,
) {
    let ep = &cluster.endpoints[ep_idx];
    let ns = upstream_time.as_nanos() as u64;
    ep.stats.ewma.observe_at(ns as f64, start + upstream_time);
    ep.stats.latency.observe_ns(ns);
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
    route.stats.latency.observe_ns(ns);
}

fn observe_failure(route: &Route, cluster: &Cluster, ep_idx: usize, e: ProxyError) {
    let ep = &cluster.endpoints[ep_idx];
    // A failure is as bad as a slow answer for load-aware balancers.
    ep.stats.ewma.observe(1e9);
    ep.stats.active.fetch_sub(1, Relaxed);
    cluster.stats.active.fetch_sub(1, Relaxed);
    let status = e.status().as_u16();
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
}

/// A local error response with its short plain body; logged as the request's outcome.
fn local_error(
    worker: &Worker,
    _rt: &Runtime,
    e: ProxyError,
    rec: &mut Option<AccessRecord>,
    start: Instant,
) -> Response<ProxyBody> {
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
            conn: None,
            endpoint: None,
            cluster: None,
            record: Some(record),
            start,
            bytes: 0,
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
    resp
}

/// Asks the connection to close after this response (HTTP/1: `Connection: close`;
/// HTTP/2: the connection loop sends GOAWAY).
fn close_after(conn: &ConnState, resp: &mut Response<ProxyBody>, version: Version) {
    if version != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !conn.close.replace(true) {
        conn.wake.notify_one();
    }
}

fn authority_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}
