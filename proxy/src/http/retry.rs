//! Stage 5: the attempts — pick an endpoint, forward, and retry within the route's
//! retry policy, retry budget, per-try timeout and overall timeout; the request body is
//! streamed, or buffered when a retry may need it again.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::header::{self};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::config::{RetryPolicy, UpstreamProtocol};
use crate::error::Limit;
use crate::error::ProxyError;
use crate::http::admission::InFlight;
use crate::http::conn::ConnState;
use crate::http::context::{RequestCtx, RoutedCtx};
use crate::http::filters::head_back;
use crate::http::filters::Targets;
use crate::http::forward::exchange;
use crate::http::forward::prepare_upstream_request;
use crate::http::forward::{Attempt, Exchanged};
use crate::http::respond::observe;
use crate::http::respond::observe_failure;
use crate::runtime::Cluster;
use crate::upstream::request_body::{BodyFault, BodyProgress, ClientBody, DownstreamBodyError, OpenBody, UpstreamBody};
use crate::upstream::{self, ResponseBody};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;

/// Stages 4–6 and 8, repeated per the route's retry policy: pick an endpoint (never
/// one that already failed this request while another is available), send with the
/// per-try timeout, observe, and decide whether to retry (idempotent requests only
/// unless the route opts in, within the cluster's retry budget and breaker).
/// Returns the answer, its endpoint and the time from the request's start to its head.
pub(super) async fn attempts(
    routed: &RoutedCtx<'_>,
    mut req: Request<Incoming>,
    rec: &mut Option<Box<AccessRecord>>,
    targets: Targets<'_>,
) -> Result<(Response<ResponseBody>, usize, Duration), ProxyError> {
    let RoutedCtx {
        cx:
            RequestCtx {
                worker,
                conn,
                rt,
                start,
                start_ns,
                ..
            },
        route,
        cluster,
    } = *routed;
    let hash = if cluster.balancer.is_hashing() {
        cluster.hash_of(req.headers(), conn.client)
    } else {
        None
    };
    // gRPC deadlines shorten the route's (never lengthen them).
    let total = grpc_timeout(req.headers()).map_or(route.timeout, |g| g.min(route.timeout));
    let body_timeout = worker.listeners[conn.listener as usize].request_body_timeout;
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
            let (body, p) = client_body(body, conn);
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
                let (body, p) = client_body(body, conn);
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
            let (body, p) = client_body(body, conn);
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
            _ => match worker.pick_endpoint(rt, cluster, hash, tried) {
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
            let call = std::pin::pin!(exchange(
                worker,
                cluster,
                ep_idx,
                &mut upstream_req.req,
                start_ns,
                origin
            ));
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
        let upstream_time = crate::clock::since(start_ns);
        match &outcome {
            Ok(_) => observe(routed, ep_idx, status, upstream_time),
            // The client's faults say nothing about the endpoint.
            Err(e) if e.is_downstream() => {}
            Err(e) => observe_failure(routed, ep_idx, *e),
        }
        let retry = policy.is_some_and(|p| attempt < max_attempts && should_retry(p, &outcome));
        if !retry || !reserve_retry(cluster) {
            // The head is the filters' again: a replayable request keeps it; an HTTP/1.1
            // one comes back from the exchange now.
            if let Some((parts, _)) = replay.as_mut() {
                head_back(targets.chain, parts);
            }
            upstream_req.give_back();
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
pub(super) struct TryTimers {
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
pub(super) async fn timed(exchange: impl std::future::Future<Output = Exchanged>, t: &TryTimers) -> Exchanged {
    let deadline = t.deadline(t.request_end);
    // The try started a moment ago: a deadline already past then is past now.
    if deadline <= t.try_start {
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
pub(super) async fn timed_with_body(
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

/// Wraps a client's request body with the progress its timers read; while it moves,
/// the body counts as open on its connection.
pub(super) fn client_body(body: Incoming, conn: &Rc<ConnState>) -> (ClientBody, Rc<BodyProgress>) {
    let p = ClientBody::progress_of(&body, Instant::now());
    let hold = (!http_body::Body::is_end_stream(&body)).then(|| OpenBody::new(conn.clone()));
    (ClientBody::new(body, p.clone(), hold), p)
}

/// A request lent to an upstream exchange. Dropped, it hands its head back to the
/// filters that let it go without a copy: after the exchange, and also when the
/// attempt is abandoned (the client left) — their `on_log` still reads the request.
pub(super) struct Lent<'a> {
    req: Request<UpstreamBody>,
    chain: Option<&'a crate::wasm::http::ChainRef>,
}

impl Lent<'_> {
    /// Hands the head back now (once): in place, where `drop(lent)` would first move
    /// the whole request out of the attempt's state.
    fn give_back(&mut self) {
        let Some(c) = self.chain.take() else { return };
        let Ok(c) = c.try_borrow() else { return };
        c.request_head_back_from(&mut self.req);
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// `from + d`, saturating: a configured timeout of centuries must not overflow `Instant`.
pub(super) fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// `grpc-timeout`: a name parsed once (looking a field up by a `&str` parses the
/// name on every request, about 250 instructions).
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
/// `idempotency-key`.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The `grpc-timeout` request header (`100m`, `5S`, …) as a duration.
pub(super) fn grpc_timeout(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(&GRPC_TIMEOUT)?.to_str().ok()?;
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

/// Admits a retry if the budget (retries in flight ≤ max(floor, ratio × active
/// requests)) and the max_retries breaker allow it; counts it in flight.
pub(super) fn reserve_retry(cluster: &Cluster) -> bool {
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
pub(super) async fn backoff(p: &RetryPolicy, attempt: u32) {
    let cap = p.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(p.backoff_max);
    if cap.is_zero() {
        return;
    }
    let d = Duration::from_nanos(fastrand::u64(0..=cap.as_nanos() as u64));
    tokio::time::sleep(d).await;
}

/// Idempotent methods may be retried; others only when the route opts in or the
/// client marks the request with an `Idempotency-Key`.
pub(super) fn retry_allowed(p: &RetryPolicy, req: &Request<Incoming>) -> bool {
    use http::Method as M;
    p.non_idempotent
        || matches!(
            *req.method(),
            M::GET | M::HEAD | M::OPTIONS | M::TRACE | M::PUT | M::DELETE
        )
        || req.headers().contains_key(&IDEMPOTENCY_KEY)
}

/// Whether this outcome is one the policy retries.
pub(super) fn should_retry(p: &RetryPolicy, outcome: &Attempt) -> bool {
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
pub(super) async fn buffer_body(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Result<Bytes, Incoming>, ProxyError> {
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

pub(super) fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<UpstreamBody> {
    let mut r = Request::new(UpstreamBody::Full(Some(body)));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r
}
