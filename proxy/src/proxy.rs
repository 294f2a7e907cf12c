//! The L7 request path, one function per stage:
//!
//! 1. [`handle`]: bookkeeping (request id, connection counters) and the stage sequence;
//!    [`decide_authority`] settles the request's one authority (routed, forwarded, logged);
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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::balancer;
use crate::http::body::{Completion, ProxyBody};
use crate::upstream::request_body::{BodyFault, BodyProgress, BoxError, ClientBody, DownstreamBodyError, UpstreamBody};
use crate::config::{RetryPolicy, UpstreamProtocol};
use crate::downstream::ConnState;
use crate::error::Limit;
use crate::error::{Failure, ProxyError};
use crate::http::headers;
use crate::runtime::{router, Cluster, RequestFacts, Route, Runtime};
use crate::upstream::{self, ResponseBody};
use crate::worker::Worker;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;

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
    conn.head.busy.store(true, Relaxed);
    conn.head.pending.store(false, Relaxed);
    conn.last_active.set(start);
    if n == 1 {
        conn.wake.notify_one();
    }
    worker.shared.listeners[conn.listener].1.requests.fetch_add(1, Relaxed);

    let downstream_version = req.version();
    let authority = decide_authority(&mut req);
    let rt = worker.shared.runtime.load_full();
    let id_mode = rt.config.server.request_id;
    let request_id = headers::request_id(id_mode, req.headers_mut());
    // The verified client certificate is stated by Tandem only, never by the client.
    if conn.tls.as_ref().is_some_and(|t| t.client_subject.is_some())
        || req.headers().contains_key(&headers::X_CLIENT_CERT_SUBJECT)
    {
        let h = req.headers_mut();
        h.remove(&headers::X_CLIENT_CERT_SUBJECT);
        if let Some(s) = conn.tls.as_ref().and_then(|t| t.client_subject.clone()) {
            h.insert(headers::X_CLIENT_CERT_SUBJECT.clone(), s);
        }
    }
    let rec = worker.shared.access_log.enabled().then(|| AccessRecord {
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
        grpc_status: None,
        error: None,
    });

    let mut end = RequestEnd {
        worker: &worker,
        conn: &conn,
        start,
        rec,
        answered: false,
    };
    let outcome = match authority {
        Ok(()) => {
            let id = request_id.as_ref();
            std::pin::pin!(proxy_request(&worker, &conn, &rt, req, id, &mut end.rec, start)).await
        }
        Err(e) => Err(e),
    };
    let (mut resp, refused) = match outcome {
        Ok(resp) => (resp, false),
        Err(e) => {
            count_downstream_fault(&worker, conn.listener, e);
            (local_error(&worker, &rt, e, &mut end.rec, start), e.is_downstream())
        }
    };

    let max = worker.listeners[conn.listener].max_requests_per_connection;
    let draining = worker.shared.phase.asks_clients_to_close();
    if (max > 0 && n >= max) || draining || refused {
        close_after(&conn, &mut resp, downstream_version);
    }
    if let Some(id) = request_id {
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), id);
    }
    end.answered = true;
    Ok(resp)
}

/// The end of a request's bookkeeping, however its future ends: with an answer, or
/// dropped before one because the client went away (hyper drops the future of a
/// request whose connection or stream is gone). A request that got no answer is logged
/// with nginx's 499 (`client-abort`) and counted, and never counts against an endpoint.
struct RequestEnd<'a> {
    worker: &'a Worker,
    conn: &'a ConnState,
    start: Instant,
    /// The access log record while nobody else has logged it.
    rec: Option<AccessRecord>,
    answered: bool,
}

impl Drop for RequestEnd<'_> {
    fn drop(&mut self) {
        let conn = self.conn;
        let in_flight = conn.in_flight.get() - 1;
        conn.in_flight.set(in_flight);
        conn.head.busy.store(in_flight > 0, Relaxed);
        conn.head.pending.store(false, Relaxed);
        conn.last_active.set(self.start);
        if self.answered {
            return;
        }
        count_downstream_fault(self.worker, conn.listener, ProxyError::ClientAbort);
        if let Some(mut r) = self.rec.take() {
            r.status = ProxyError::ClientAbort.status().as_u16();
            r.reason = ProxyError::ClientAbort.reason();
            r.duration = self.start.elapsed();
            self.worker.shared.access_log.log(r);
        }
    }
}

/// Counts a request the client's fault ended, on its listener.
fn count_downstream_fault(worker: &Worker, listener: usize, e: ProxyError) {
    let s = &worker.shared.listeners[listener].1;
    match e {
        ProxyError::BadRequest(_) | ProxyError::DownstreamBody => s.malformed.fetch_add(1, Relaxed),
        ProxyError::ClientAbort => s.client_aborts.fetch_add(1, Relaxed),
        ProxyError::RequestBodyTimeout => s.body_timeouts.fetch_add(1, Relaxed),
        _ => 0,
    };
}

/// Stage 1b: the request's one authority, decided once, so that what is routed on is
/// exactly what is forwarded and logged (RFC 9112 §3.2, RFC 9113 §8.3.1).
///
/// HTTP/1.x: an absolute-form (or CONNECT authority-form) target replaces `Host`; more
/// than one `Host`, an invalid one, or none on HTTP/1.1 is refused. HTTP/2: `:authority`
/// and a `host` field must name the same authority (a request that could reach one
/// virtual host's route and be forwarded to another's is refused, not repaired).
fn decide_authority(req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    use crate::error::BadRequest as B;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(B::DuplicateHost));
    }
    let version = req.version();
    match (req.uri().authority(), host) {
        (Some(a), _) if a.as_str().contains('@') => Err(ProxyError::BadRequest(B::InvalidHost)),
        (Some(a), Some(h)) if version == Version::HTTP_2 => {
            if a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
                Ok(())
            } else {
                Err(ProxyError::BadRequest(B::AuthorityMismatch))
            }
        }
        (Some(a), Some(h)) => {
            if a.as_str().as_bytes() != h.as_bytes() {
                let v = HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest(B::InvalidHost))?;
                req.headers_mut().insert(header::HOST, v);
            }
            Ok(())
        }
        // RFC 9112 §3.2: every HTTP/1.1 request carries Host, absolute-form included.
        (Some(_), None) if version == Version::HTTP_11 => Err(ProxyError::BadRequest(B::MissingHost)),
        (Some(_), None) => Ok(()),
        (None, Some(h)) if valid_authority(h.as_bytes()) => Ok(()),
        (None, Some(_)) => Err(ProxyError::BadRequest(B::InvalidHost)),
        (None, None) if version == Version::HTTP_11 || version == Version::HTTP_2 => {
            Err(ProxyError::BadRequest(B::MissingHost))
        }
        (None, None) => Ok(()),
    }
}

/// Whether `b` is a valid `Host` value: `uri-host [ ":" port ]` (reg-name, IPv4 or an
/// IP literal in brackets); no userinfo, path, query, whitespace or controls.
fn valid_authority(b: &[u8]) -> bool {
    b.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// Stages 2–8 for a request that is to be proxied.
async fn proxy_request(
    worker: &Rc<Worker>,
    conn: &ConnState,
    rt: &Arc<Runtime>,
    mut req: Request<Incoming>,
    request_id: Option<&HeaderValue>,
    rec: &mut Option<AccessRecord>,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = route_request(rt, conn.listener, &req)?;
    if let Some(r) = rec.as_mut() {
        r.route = Some(route.name.clone());
    }
    rate_limit(route, &req, conn)?;
    let mut cluster_idx = route.pick_cluster();
    let mut forced = None;
    let chain = if route.filters.is_empty() {
        None
    } else {
        let (chain, routed, local) = match run_request_filters(worker, conn, route, rt, &mut req, request_id, start)? {
            FilterStage::Done(filtered) => filtered,
            // Boxed: a paused filter's wait does not widen every request's future.
            FilterStage::Paused(p) => {
                crate::inplace::box_in_place(|| finish_request_filters(p, &mut req, rt, route)).await?
            }
        };
        if let Some(reply) = local {
            return Ok(filter_reply(worker, reply, rec, start, Some(chain)));
        }
        if let Some(i) = routed.0 {
            cluster_idx = i;
        }
        forced = routed.1;
        Some(chain)
    };
    let cluster = &rt.clusters[cluster_idx];
    if let Some(r) = rec.as_mut() {
        r.cluster = Some(cluster.name.clone());
    }
    admit(cluster)?;
    if crate::http::upgrade::is_upgrade(&req) {
        if let Some(c) = &chain {
            // The upgrade consumes the request; the filters' `on_log` still reads it.
            let (parts, body) = req.into_parts();
            c.borrow().request_head_copy(&parts);
            req = Request::from_parts(parts, body);
        }
        // Boxed (as every cold stage below): hyper moves the request future into its slot
        // on every request, so what only some requests need must not widen it.
        let resp = Box::pin(crate::http::upgrade::proxy_upgrade(worker, conn, rt, route, cluster, req)).await?;
        if let Some(mut r) = rec.take() {
            r.status = resp.status().as_u16();
            r.reason = if resp.status().as_u16() == 101 || r.method == http::Method::CONNECT {
                "upgraded"
            } else {
                "ok"
            };
            r.duration = start.elapsed();
            worker.shared.access_log.log(r);
        }
        return Ok(resp);
    }
    let cluster_in_flight = InFlight::new(&cluster.stats.active);
    // The route timeout bounds every try (and the backoff between them) inside.
    let targets = Targets {
        forced,
        chain: chain.as_ref(),
    };
    let tried = {
        // Pinned where it is built: awaiting it by value would copy its state again.
        let tries = std::pin::pin!(attempts(worker, conn, rt, route, cluster, req, rec, start, targets));
        tries.await
    };
    let (resp, ep_idx, upstream_time) = match tried {
        Ok(r) => r,
        Err(e) => {
            // A request-body filter that answered locally ended the upstream request.
            if let Some(reply) = chain.as_ref().and_then(|c| c.borrow().take_local()) {
                return Ok(filter_reply(worker, reply, rec, start, chain));
            }
            return Err(e);
        }
    };
    cluster_in_flight.hand_over();
    let endpoint = &cluster.endpoints[ep_idx];
    let mut resp = prepare_downstream_response(resp, route);
    if let Some(c) = &chain {
        c.borrow().set_upstream(&cluster.name, endpoint.address);
        let eos = http_body::Body::is_end_stream(resp.body());
        let flow = match crate::wasm::http::response_headers_now(c, &mut resp, eos, 0)? {
            crate::wasm::http::Step::Done(flow) => flow,
            // Boxed: a paused filter's wait does not widen every request's future.
            crate::wasm::http::Step::Paused(pos) => {
                crate::inplace::box_in_place(|| {
                    crate::wasm::http::response_headers_after(c, &mut resp, eos, pos, route.timeout)
                })
                .await?
            }
        };
        match flow {
            crate::wasm::http::Flow::Local(reply) => return Ok(filter_reply(worker, reply, rec, start, chain)),
            crate::wasm::http::Flow::Continue => {}
        }
    }
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
            let fixed = parts.headers.contains_key(header::CONTENT_LENGTH);
            ProxyBody::filtered(crate::wasm::http::FilteredBody::new(body, c, true, fixed), Some(done))
        }
        c => {
            done.filters = c;
            ProxyBody::upstream(body, Some(done))
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// Where a filter sent the request: (cluster index, endpoint).
type Routed = (Option<usize>, Option<std::net::SocketAddr>);

/// What the request filters decided: their chain, where they sent the request, and a
/// filter's local answer (if one answered instead of the upstream).
type Filtered = (
    crate::wasm::http::ChainRef,
    Routed,
    Option<crate::wasm::state::LocalReply>,
);

/// The request filter stage: decided without waiting (the usual case), or waiting on
/// a paused filter.
enum FilterStage {
    Done(Filtered),
    Paused(Box<PausedFilters>),
}

/// A request whose filter `idx` paused in its headers callback.
struct PausedFilters {
    chain: crate::wasm::http::ChainRef,
    eos: bool,
    idx: usize,
}

/// Stage 2c: the route's filters see the request headers; they may answer locally,
/// change the request (in place), or choose the cluster or endpoint. Runs no future
/// unless a filter pauses.
fn run_request_filters(
    worker: &Rc<Worker>,
    conn: &ConnState,
    route: &Route,
    rt: &Runtime,
    req: &mut Request<Incoming>,
    request_id: Option<&HeaderValue>,
    start: Instant,
) -> Result<FilterStage, ProxyError> {
    let facts = filter_facts(conn, request_id.cloned(), req.version(), route, start);
    let chain = crate::wasm::http::Chain::start(worker, &route.filters, facts)?;
    let eos = http_body::Body::is_end_stream(req.body());
    let flow = match crate::wasm::http::request_headers_now(&chain, req, eos, 0)? {
        crate::wasm::http::Step::Done(flow) => flow,
        crate::wasm::http::Step::Paused(idx) => {
            return Ok(FilterStage::Paused(Box::new(PausedFilters { chain, eos, idx })))
        }
    };
    filters_decided(chain, rt, route, flow).map(FilterStage::Done)
}

/// The rest of stage 2c once the paused filter resumes.
async fn finish_request_filters(
    p: Box<PausedFilters>,
    req: &mut Request<Incoming>,
    rt: &Runtime,
    route: &Route,
) -> Result<Filtered, ProxyError> {
    let PausedFilters { chain, eos, idx } = *p;
    let flow = crate::wasm::http::request_headers_after(&chain, req, eos, idx, route.timeout).await?;
    filters_decided(chain, rt, route, flow)
}

/// Facts of a new request for its filters.
fn filter_facts(
    conn: &ConnState,
    request_id: Option<HeaderValue>,
    version: http::Version,
    route: &Route,
    start: Instant,
) -> crate::wasm::state::Facts {
    let conn_facts = conn.filter_facts.get_or_init(|| {
        Rc::new(crate::wasm::state::ConnFacts {
            source: conn.client,
            destination: conn.local,
            connection_id: conn.id,
            tls: conn.tls.as_ref().map(|t| {
                (
                    t.version,
                    t.sni.clone(),
                    t.client_subject
                        .as_ref()
                        .and_then(|s| s.to_str().ok())
                        .map(str::to_string),
                )
            }),
        })
    });
    crate::wasm::state::Facts {
        conn: conn_facts.clone(),
        request_id,
        start,
        protocol: match version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        route: route.name.clone(),
        request: Rc::new(crate::wasm::state::RequestState {
            filter_state: Default::default(),
            metadata: route.metadata.clone(),
        }),
        cluster: None,
        upstream: None,
        request_size: 0,
        response_size: 0,
    }
}

/// The local answer or upstream the filters decided on.
fn filters_decided(
    chain: crate::wasm::http::ChainRef,
    rt: &Runtime,
    route: &Route,
    flow: crate::wasm::http::Flow,
) -> Result<Filtered, ProxyError> {
    if let crate::wasm::http::Flow::Local(reply) = flow {
        return Ok((chain, (None, None), Some(reply)));
    }
    let up = chain.borrow().upstream();
    let cluster = match up.cluster {
        Some(name) => match rt.clusters.iter().position(|c| *c.name == *name) {
            Some(i) => Some(i),
            None => {
                tracing::warn!(route = %route.name, cluster = %name, "a filter chose a cluster that does not exist");
                return Err(ProxyError::FilterFailed);
            }
        },
        None => None,
    };
    Ok((chain, (cluster, up.endpoint), None))
}

/// The response for a filter's local reply, logged as the request's outcome.
fn filter_reply(
    worker: &Worker,
    reply: crate::wasm::state::LocalReply,
    rec: &mut Option<AccessRecord>,
    start: Instant,
    chain: Option<crate::wasm::http::ChainRef>,
) -> Response<ProxyBody> {
    let resp = crate::wasm::http::local_response(reply);
    let record = rec.take().map(|mut r| {
        r.status = resp.status().as_u16();
        r.reason = "filter-local-response";
        (r, worker.shared.access_log.clone())
    });
    let done = Box::new(Completion {
        endpoint: None,
        cluster: None,
        route: None,
        record,
        start,
        bytes: 0,
        grpc_status: None,
        filters: chain,
    });
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::local(body, Some(done)))
}

/// What the filters decided about the upstream of a request.
#[derive(Clone, Copy)]
struct Targets<'a> {
    /// Endpoint a filter chose (first attempt).
    forced: Option<std::net::SocketAddr>,
    /// The chain whose body callbacks see the request body.
    chain: Option<&'a crate::wasm::http::ChainRef>,
}

/// Stage 2b: the route's rate limit, decided from this node's counts (never waits).
fn rate_limit(route: &Route, req: &Request<Incoming>, conn: &ConnState) -> Result<(), ProxyError> {
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
fn admit(cluster: &Cluster) -> Result<(), ProxyError> {
    if cluster.stats.active.load(Relaxed) >= cluster.breakers.max_requests {
        return Err(overflow(cluster, Limit::Requests));
    }
    Ok(())
}

fn overflow(cluster: &Cluster, limit: Limit) -> ProxyError {
    cluster.stats.breaker_overflows[limit as usize].fetch_add(1, Relaxed);
    ProxyError::Overflow(limit)
}

/// What one upstream attempt produced.
type Attempt = Result<Response<ResponseBody>, ProxyError>;

/// One exchange with an upstream: the response head, or the failure with its cause.
type Exchanged = Result<Response<ResponseBody>, Failure>;

/// Stages 4–6 and 8, repeated per the route's retry policy: pick an endpoint (never
/// one that already failed this request while another is available), send with the
/// per-try timeout, observe, and decide whether to retry (idempotent requests only
/// unless the route opts in, within the cluster's retry budget and breaker).
/// Returns the answer, its endpoint and the time from the request's start to its head.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    worker: &Rc<Worker>,
    conn: &ConnState,
    rt: &Runtime,
    route: &Route,
    cluster: &Cluster,
    mut req: Request<Incoming>,
    rec: &mut Option<AccessRecord>,
    start: Instant,
    targets: Targets<'_>,
) -> Result<(Response<ResponseBody>, usize, Duration), ProxyError> {
    let hash = if cluster.balancer.is_hashing() {
        cluster.hash_of(req.headers(), conn.client)
    } else {
        None
    };
    // gRPC deadlines shorten the route's (never lengthen them).
    let total = grpc_timeout(req.headers()).map_or(route.timeout, |g| g.min(route.timeout));
    let body_timeout = worker.listeners[conn.listener].request_body_timeout;
    if let Err(e) = prepare_upstream_request(&mut req, route, cluster, conn) {
        if let Some(c) = targets.chain {
            c.borrow().request_head_back_from(&mut req);
        }
        return Err(e);
    }
    let policy = route
        .retry
        .as_ref()
        .filter(|p| p.max_retries > 0 && retry_allowed(p, &req));
    let sticky_table = &worker.shared.sticky;
    let sticky = crate::sticky::plan(cluster, sticky_table, req.headers(), conn.client);
    // A retryable request keeps its (small) body for replay; otherwise it streams.
    let mut replay: Option<(http::request::Parts, Bytes)> = None;
    let mut streamed = None;
    // Where a streamed body is: the route timeout starts once the client has sent it all.
    let mut progress = None;
    // When the whole request was here (a streamed body's end is noted in `progress`).
    let mut request_end = start;
    let (mut parts, body) = req.into_parts();
    let keeps_head = policy.is_some() && http_body::Body::is_end_stream(&body);
    if let Some(c) = targets
        .chain
        .filter(|_| cluster.protocol == UpstreamProtocol::H2c && !keeps_head)
    {
        // HTTP/2 consumes the head it sends: the filters keep a copy.
        c.borrow().request_head_copy(&parts);
    }
    match policy {
        // A body that filters see is streamed once through them (not replayed).
        _ if targets.chain.is_some() && !http_body::Body::is_end_stream(&body) => {
            let chain = targets.chain.expect("checked").clone();
            let fixed = parts.headers.contains_key(header::CONTENT_LENGTH);
            let (body, p) = client_body(body);
            progress = Some(p);
            let filtered = crate::wasm::http::FilteredBody::new(body, chain, false, fixed);
            streamed = Some(Request::from_parts(parts, UpstreamBody::Filtered(Box::pin(filtered))));
        }
        Some(_) if http_body::Body::is_end_stream(&body) => replay = Some((parts, Bytes::new())),
        Some(p) => match Box::pin(buffer_body(body, p.buffer_bytes, body_timeout)).await {
            Ok(Ok(bytes)) => {
                request_end = Instant::now();
                replay = Some((parts, bytes));
            }
            Ok(Err(body)) => {
                let (body, p) = client_body(body);
                progress = Some(p);
                streamed = Some(Request::from_parts(parts, UpstreamBody::Stream(body)));
            }
            Err(e) => {
                head_back(targets.chain, &mut parts);
                return Err(e);
            }
        },
        None if http_body::Body::is_end_stream(&body) => {
            streamed = Some(Request::from_parts(parts, UpstreamBody::Full(None)));
        }
        None => {
            let (body, p) = client_body(body);
            progress = Some(p);
            streamed = Some(Request::from_parts(parts, UpstreamBody::Stream(body)));
        }
    }
    let policy = if replay.is_some() { policy } else { None };
    let max_attempts = 1 + policy.map_or(0, |p| p.max_retries);

    let origin = upstream::Origin {
        client: conn.client,
        local: conn.local,
    };
    let mut tried: u64 = 0;
    let mut attempt = 0u32;
    let mut retrying: Option<InFlight<'_>> = None;
    loop {
        attempt += 1;
        let forced = targets
            .forced
            .filter(|_| attempt == 1)
            .and_then(|a| cluster.endpoints.iter().position(|e| e.address == a));
        let ep_idx = match (forced, sticky.target) {
            (Some(f), _) => f,
            (None, Some(t)) if attempt == 1 => t,
            _ => match pick_endpoint(worker, rt, cluster, hash, tried) {
                Ok(i) => i,
                Err(e) => {
                    if let Some((r, c)) = streamed.as_mut().zip(targets.chain) {
                        c.borrow().request_head_back_from(r);
                    } else if let Some((parts, _)) = replay.as_mut() {
                        head_back(targets.chain, parts);
                    }
                    return Err(e);
                }
            },
        };
        if ep_idx < 64 {
            tried |= 1 << ep_idx;
        }
        let endpoint = &cluster.endpoints[ep_idx];
        if let Some(r) = rec.as_mut() {
            r.endpoint = Some(endpoint.address);
            r.attempts = attempt;
        }
        let mut upstream_req = Lent {
            req: match (&replay, streamed.take()) {
                (Some((parts, bytes)), _) => rebuild(parts, bytes.clone()),
                (None, Some(r)) => r,
                (None, None) => unreachable!("a streamed request is sent once"),
            },
            // HTTP/1.1 lends the head to the exchange and has it back after.
            chain: targets.chain.filter(|_| cluster.protocol == UpstreamProtocol::Http1),
        };
        // Counted in flight until the response body ends (the completion takes the
        // count over) or this attempt is abandoned, whichever comes first.
        let in_flight = InFlight::new(&endpoint.stats.active);
        let timers = TryTimers {
            try_start: Instant::now(),
            request_end,
            per_try: route.per_try_timeout,
            total,
            body_timeout,
        };
        let exchanged: Exchanged = {
            // Pinned here and lent to the timer: the exchange's state (the largest
            // future of the path) is not copied into the timer's.
            let call = std::pin::pin!(exchange(worker, cluster, ep_idx, &mut upstream_req.req, start, origin));
            match progress.as_deref() {
                None => timed(call, &timers).await,
                // Boxed: only requests with a streamed body watch it.
                Some(p) => Box::pin(timed_with_body(call, &timers, p)).await,
            }
        };
        // The last attempt's cause goes to the access log; the rest of the path works
        // with the kind.
        let mut outcome: Attempt = exchanged.map_err(|f| {
            if let Some(r) = rec.as_mut() {
                r.error = f.cause.as_ref().map(|c| c.to_string().into_boxed_str());
            }
            f.kind
        });
        if let (Ok(_), Some(r)) = (&outcome, rec.as_mut()) {
            r.error = None;
        }
        // A request whose client body failed failed because of the client, whatever the
        // upstream side saw of it.
        if let (Err(e), Some(fault)) = (&mut outcome, progress.as_ref().and_then(|p| p.fault.get())) {
            *e = match fault {
                BodyFault::Framing => ProxyError::DownstreamBody,
                BodyFault::Abort => ProxyError::ClientAbort,
            };
        }
        if matches!(outcome, Err(ProxyError::Timeout)) {
            endpoint.stats.timeouts.fetch_add(1, Relaxed);
        }
        drop(retrying.take());
        let status = match &outcome {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        let upstream_time = start.elapsed();
        match &outcome {
            Ok(_) => observe(route, cluster, ep_idx, status, upstream_time, start),
            // The client's faults say nothing about the endpoint.
            Err(e) if e.is_downstream() => {}
            Err(e) => observe_failure(route, cluster, ep_idx, *e),
        }
        let retry = policy.is_some_and(|p| attempt < max_attempts && should_retry(p, &outcome));
        if !retry || !reserve_retry(cluster) {
            // The head is the filters' again: a replayable request keeps it; an HTTP/1.1
            // one comes back from the exchange now.
            if let Some((parts, _)) = replay.as_mut() {
                head_back(targets.chain, parts);
            }
            drop(upstream_req);
            return match outcome {
                Ok(mut resp) => {
                    in_flight.hand_over();
                    crate::sticky::finish(cluster, sticky_table, sticky, ep_idx, resp.headers_mut());
                    Ok((resp, ep_idx, upstream_time))
                }
                Err(e) => Err(e),
            };
        }
        // This attempt's answer is discarded (its in-flight count goes with it).
        drop(outcome);
        drop(in_flight);
        retrying = Some(InFlight::adopt(&cluster.stats.retries_active));
        if let Some(p) = policy {
            let left = total.saturating_sub(request_end.elapsed());
            if tokio::time::timeout(left, Box::pin(backoff(p, attempt))).await.is_err() {
                if let Some((parts, _)) = replay.as_mut() {
                    head_back(targets.chain, parts);
                }
                return Err(ProxyError::Timeout);
            }
        }
    }
}

/// The timers of one try: the per-try timeout and what is left of the route's, both
/// counted from the end of the request (a long upload is not cut by them), and the
/// listener's bound on waiting for the client between parts of its body.
struct TryTimers {
    try_start: Instant,
    /// When the whole request was here (for a streamed body, see its progress).
    request_end: Instant,
    per_try: Duration,
    total: Duration,
    body_timeout: Duration,
}

impl TryTimers {
    /// The try's deadline once the request ended at `end`.
    fn deadline(&self, end: Instant) -> Instant {
        later(self.try_start.max(end), self.per_try).min(later(end, self.total))
    }
}

/// Runs an exchange whose request is complete under its try's deadline.
async fn timed(exchange: impl std::future::Future<Output = Exchanged>, t: &TryTimers) -> Exchanged {
    let deadline = t.deadline(t.request_end);
    if deadline <= Instant::now() {
        return Err(ProxyError::Timeout.into());
    }
    tokio::time::timeout_at(deadline.into(), exchange)
        .await
        .unwrap_or(Err(ProxyError::Timeout.into()))
}

/// Runs an exchange while the client's body streams: waiting on the client longer than
/// `request_body_timeout` is the client's fault (408); an upstream that stops taking
/// the body for a per-try period, or answers late after it, times out (504). Looks again
/// at the earliest deadline any state of the body could have, so progress moves the
/// deadlines without waking anyone.
async fn timed_with_body(
    exchange: impl std::future::Future<Output = Exchanged>,
    t: &TryTimers,
    p: &BodyProgress,
) -> Exchanged {
    tokio::pin!(exchange);
    loop {
        let now = Instant::now();
        // The deadline of the body's current state, and the earliest any state could
        // have (the state may change before the next look: wake by then).
        let (deadline, fault, wake) = match p.done.get() {
            Some(end) => {
                let d = t.deadline(end);
                (d, ProxyError::Timeout, d)
            }
            None => {
                let client = later(p.last.get(), t.body_timeout);
                let upstream = later(p.last.get().max(t.try_start), t.per_try);
                // Once the body ends (at the earliest now), its deadline is at least this.
                let ended = later(now, t.per_try.min(t.total));
                let wake = client.min(upstream).min(ended);
                if p.waiting.get() {
                    (client, ProxyError::RequestBodyTimeout, wake)
                } else {
                    (upstream, ProxyError::Timeout, wake)
                }
            }
        };
        if deadline <= now {
            return Err(fault.into());
        }
        tokio::select! {
            biased;
            r = &mut exchange => return r,
            _ = tokio::time::sleep_until(wake.max(now).into()) => {}
        }
    }
}

/// Wraps a client's request body with the progress its timers read.
fn client_body(body: Incoming) -> (ClientBody, Rc<BodyProgress>) {
    let p = ClientBody::progress_of(&body, Instant::now());
    (ClientBody::new(body, p.clone()), p)
}

/// A request lent to an upstream exchange. Dropped, it hands its head back to the
/// filters that let it go without a copy: after the exchange, and also when the
/// attempt is abandoned (the client left) — their `on_log` still reads the request.
struct Lent<'a> {
    req: Request<UpstreamBody>,
    chain: Option<&'a crate::wasm::http::ChainRef>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(c) = self.chain else { return };
        let Ok(c) = c.try_borrow() else { return };
        c.request_head_back_from(&mut self.req);
    }
}

/// Hands the request head back to the filter chain once it no longer goes upstream
/// (see `wasm::http::request_headers_now`).
fn head_back(chain: Option<&crate::wasm::http::ChainRef>, parts: &mut http::request::Parts) {
    if let Some(c) = chain {
        let (uri, headers) = (std::mem::take(&mut parts.uri), std::mem::take(&mut parts.headers));
        c.borrow().request_head_back(parts.method.clone(), uri, headers);
    }
}

/// `from + d`, saturating: a configured timeout of centuries must not overflow `Instant`.
fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The `grpc-timeout` request header (`100m`, `5S`, …) as a duration.
fn grpc_timeout(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Holds one unit of an in-flight gauge and gives it back when dropped, so a request
/// abandoned at any await point (client gone, timeout) never leaks a count.
struct InFlight<'a>(Option<&'a AtomicU64>);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(Some(gauge))
    }

    /// Takes over a unit that was already added.
    fn adopt(gauge: &'a AtomicU64) -> Self {
        InFlight(Some(gauge))
    }

    /// Keeps the unit: someone else (the response completion) gives it back.
    fn hand_over(mut self) {
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

/// Admits a retry if the budget (retries in flight ≤ max(floor, ratio × active
/// requests)) and the max_retries breaker allow it; counts it in flight.
fn reserve_retry(cluster: &Cluster) -> bool {
    let s = &cluster.stats;
    let active = s.active.load(Relaxed);
    let retrying = s.retries_active.load(Relaxed);
    let budget = ((active as f64 * cluster.retry_budget.ratio) as u64).max(cluster.retry_budget.min_concurrency);
    if retrying >= budget {
        s.retry_budget_exhausted.fetch_add(1, Relaxed);
        return false;
    }
    if retrying >= cluster.breakers.max_retries {
        s.breaker_overflows[Limit::Retries as usize].fetch_add(1, Relaxed);
        return false;
    }
    s.retries_active.fetch_add(1, Relaxed);
    s.retries.fetch_add(1, Relaxed);
    true
}

/// Full-jitter exponential backoff: uniform in [0, min(max, base × 2^(attempt−1))].
async fn backoff(p: &RetryPolicy, attempt: u32) {
    let cap = p.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(p.backoff_max);
    if cap.is_zero() {
        return;
    }
    let d = Duration::from_nanos(fastrand::u64(0..=cap.as_nanos() as u64));
    tokio::time::sleep(d).await;
}

/// Idempotent methods may be retried; others only when the route opts in or the
/// client marks the request with an `Idempotency-Key`.
fn retry_allowed(p: &RetryPolicy, req: &Request<Incoming>) -> bool {
    use http::Method as M;
    p.non_idempotent
        || matches!(
            *req.method(),
            M::GET | M::HEAD | M::OPTIONS | M::TRACE | M::PUT | M::DELETE
        )
        || req.headers().contains_key("idempotency-key")
}

/// Whether this outcome is one the policy retries.
fn should_retry(p: &RetryPolicy, outcome: &Attempt) -> bool {
    use crate::config::RetryOn as R;
    let on = p.on;
    match outcome {
        Err(e) => e.retried_on(on),
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s >= 500 && on.has(R::FIVE_XX))
                || (matches!(s, 502..=504) && on.has(R::GATEWAY_ERROR))
                || (on.has(R::RETRIABLE_STATUS) && p.statuses.contains(&s))
        }
    }
}

/// Reads the body into memory if it is known to fit in `limit` (Content-Length or
/// end of stream); otherwise hands it back untouched for streaming. Waiting on the
/// client is bounded by `idle` between parts (408), not by the route timeout.
async fn buffer_body(mut body: Incoming, limit: usize, idle: Duration) -> Result<Result<Bytes, Incoming>, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Ok(Bytes::new()));
    }
    let n = match body.size_hint().upper() {
        Some(n) if n as usize <= limit => n as usize,
        _ => return Ok(Err(body)),
    };
    let mut buf = bytes::BytesMut::with_capacity(n);
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::RequestBodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(match DownstreamBodyError::new(e).fault {
                    BodyFault::Framing => ProxyError::DownstreamBody,
                    BodyFault::Abort => ProxyError::ClientAbort,
                })
            }
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if buf.len() + d.len() > limit {
                        return Err(ProxyError::DownstreamBody);
                    }
                    buf.extend_from_slice(d);
                }
            }
        }
    }
    Ok(Ok(buf.freeze()))
}

fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<UpstreamBody> {
    let mut r = Request::new(UpstreamBody::Full(Some(body)));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r
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

/// Stage 4: the cluster's balancer picks among endpoints that may take the request.
pub(crate) fn pick_endpoint(
    worker: &Worker,
    rt: &Runtime,
    cluster: &Cluster,
    hash: Option<u64>,
    tried: u64,
) -> Result<usize, ProxyError> {
    let now = crate::clock::now_ns();
    let mut idx = worker.scratch.borrow_mut();
    balancer::candidates(&cluster.endpoints, now, cluster.panic_threshold, tried, &mut idx);
    if idx.is_empty() {
        cluster.stats.no_endpoint.fetch_add(1, Relaxed);
        return Err(ProxyError::NoHealthyUpstream);
    }
    let choice = balancer::Choice {
        eps: &cluster.endpoints,
        idx: &idx,
        now_ns: now,
    };
    Ok(worker.with_balancer(rt, cluster.index, |state| {
        balancer::pick(cluster.balancer, &cluster.table, state, &choice, hash)
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
    forward_headers(h, route, conn, authority.as_ref());
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
            parts.authority =
                http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(host.as_bytes())).ok();
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

/// The header part of stage 5, shared with upgrades: hop-by-hop headers go, forwarding
/// headers are set, the route's request rules apply.
pub(crate) fn forward_headers(
    h: &mut http::HeaderMap,
    route: &Route,
    conn: &ConnState,
    authority: Option<&HeaderValue>,
) {
    headers::strip_hop_by_hop(h);
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    headers::add_forwarded(h, conn.client.ip(), authority, proto, route.forwarded);
    if !route.request_headers.is_empty() {
        headers::apply_rules(h, &route.request_headers);
    }
}

/// Stage 6: sends on a pooled or new connection (within the cluster's connection and
/// pending breakers). A pooled connection that turns out to be closed before the
/// request was written is replaced by a fresh one.
async fn exchange(
    worker: &Worker,
    cluster: &Cluster,
    ep_idx: usize,
    req: &mut Request<UpstreamBody>,
    start: Instant,
    origin: upstream::Origin,
) -> Exchanged {
    let ep = &cluster.endpoints[ep_idx];
    let mut stale = 0;
    loop {
        let conn = match worker.pool.checkout(ep.address, cluster.protocol, &cluster.pool, start) {
            Some(c) => {
                ep.stats.connections_reused.fetch_add(1, Relaxed);
                c
            }
            None => {
                let s = &cluster.stats;
                if s.upstream_connections.load(Relaxed) >= cluster.breakers.max_connections {
                    return Err(overflow(cluster, Limit::Connections).into());
                }
                if s.pending.fetch_add(1, Relaxed) >= cluster.breakers.max_pending {
                    s.pending.fetch_sub(1, Relaxed);
                    return Err(overflow(cluster, Limit::Pending).into());
                }
                // A new connection (TCP, TLS, h2 handshake) is the cold path: boxed.
                let c = Box::pin(worker.pool.connect(ep.address, cluster, &ep.stats, origin)).await;
                s.pending.fetch_sub(1, Relaxed);
                c?
            }
        };
        // The request is lent, not moved: the futures of this stage stay small, and a
        // request that never left can go out again.
        let outcome = match conn.sender {
            upstream::Sender::H1(c) => {
                let home = upstream::h1::Home {
                    pool: worker.pool.clone(),
                    settings: cluster.pool,
                };
                upstream::h1::send(c, req, home)
                    .await
                    .map_err(|(e, again)| (BoxError::from(e), again))
            }
            upstream::Sender::H2(tx) => upstream::send_h2(tx, req).await.map_err(|(e, again)| (e.into(), again)),
        };
        match outcome {
            Ok(resp) => return Ok(resp),
            Err((e, true)) if conn.reused && stale < 2 => {
                tracing::debug!(error = %e, endpoint = %ep.address, "pooled connection was closed; retrying on a new one");
                stale += 1;
            }
            Err((e, _)) => {
                tracing::debug!(error = %e, endpoint = %ep.address, "upstream exchange failed");
                return Err(Failure::new(ProxyError::UpstreamReset, e));
            }
        }
    }
}

/// One request to a cluster outside any route (filter callouts): the cluster's
/// balancer, pool and breakers, no retries.
pub(crate) async fn call_cluster(
    worker: &Worker,
    rt: &Runtime,
    cluster_idx: usize,
    pinned: Option<usize>,
    req: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let cluster = &rt.clusters[cluster_idx];
    let ep_idx = match pinned {
        Some(i) => i,
        None => pick_endpoint(worker, rt, cluster, None, 0)?,
    };
    let origin = upstream::Origin {
        client: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        local: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let start = Instant::now();
    let mut req = req;
    exchange(worker, cluster, ep_idx, &mut req, start, origin)
        .await
        .map_err(|f| f.kind)
}

impl crate::wasm::link::WorkerLink for Worker {
    fn worker_id(&self) -> usize {
        self.id
    }

    fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    fn instances(&self) -> &std::cell::RefCell<crate::wasm::instance::WorkerInstances> {
        &self.wasm
    }

    fn call_cluster<'a>(
        &'a self,
        rt: &'a Runtime,
        cluster: usize,
        pinned: Option<usize>,
        req: Request<UpstreamBody>,
    ) -> crate::wasm::link::ClusterCall<'a> {
        Box::pin(call_cluster(self, rt, cluster, pinned, req))
    }
}

/// Stage 7: turns the upstream response into the downstream one.
fn prepare_downstream_response(mut resp: Response<ResponseBody>, route: &Route) -> Response<ResponseBody> {
    let h = resp.headers_mut();
    headers::strip_hop_by_hop(h);
    if !route.response_headers.is_empty() {
        headers::apply_rules(h, &route.response_headers);
    }
    *resp.version_mut() = Version::HTTP_11;
    resp
}

/// Stage 8: feeds latency and status to the balancer signals, outlier detection and
/// counters.
fn observe(route: &Route, cluster: &Cluster, ep_idx: usize, status: u16, upstream_time: Duration, start: Instant) {
    let ep = &cluster.endpoints[ep_idx];
    let ns = upstream_time.as_nanos() as u64;
    ep.stats.ewma.observe_at(ns as f64, start + upstream_time);
    ep.stats.latency.observe_ns(ns);
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
    route.stats.latency.observe_ns(ns);
    crate::health::passive::observe_passive(cluster, ep_idx, status, false);
}

/// Stage 8 for an attempt that got no response.
fn observe_failure(route: &Route, cluster: &Cluster, ep_idx: usize, e: ProxyError) {
    let ep = &cluster.endpoints[ep_idx];
    let status = e.status().as_u16();
    ep.stats.responses.record(status);
    cluster.stats.responses.record(status);
    route.stats.responses.record(status);
    if !matches!(e, ProxyError::Overflow(_)) {
        // A failure is as bad as a slow answer for load-aware balancers.
        ep.stats.ewma.observe(1e9);
        crate::health::passive::observe_passive(cluster, ep_idx, status, true);
    }
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
