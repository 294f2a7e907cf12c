//! Stage 1, and the order of the rest: a request's bookkeeping (request id, connection
//! counters, the access log record, the end of the request however it ends), its one
//! authority, and the sequence of stages it goes through.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::error::ProxyError;
use crate::http::admission::admit;
use crate::http::admission::rate_limit;
use crate::http::admission::InFlight;
use crate::http::body::ProxyBody;
use crate::http::conn::{Action, ConnState};
use crate::http::context::{RequestCtx, RoutedCtx};
use crate::http::filters::filter_reply;
use crate::http::filters::finish_request_filters;
use crate::http::filters::run_request_filters;
use crate::http::filters::run_response_filters;
use crate::http::filters::FilterStage;
use crate::http::filters::Targets;
use crate::http::headers;
use crate::http::respond::local_error;
use crate::http::respond::prepare_downstream_response;
use crate::http::respond::upstream_response;
use crate::http::retry::attempts;
use crate::http::route::route_request;
use crate::upstream::request_body::OpenBody;
use crate::worker::Worker;

/// Serves one request.
pub(crate) async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnState>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // One clock read gives both forms of the start.
    let start_ns = crate::clock::now_ns();
    let start = crate::clock::instant_at(start_ns);
    let n = conn.requests.get() + 1;
    conn.requests.set(n);
    conn.in_flight.set(conn.in_flight.get() + 1);
    conn.head.busy.store(true, Relaxed);
    conn.head.pending.store(false, Relaxed);
    conn.last_active.set_ns(start_ns);
    if n == 1 {
        // The idle deadline may be closer than the first head's.
        crate::http::watch::look_now(&conn);
    }
    worker.shared.listeners[conn.listener as usize]
        .1
        .requests
        .fetch_add(1, Relaxed);

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
    let rec = worker.shared.access_log.enabled().then(|| {
        Box::new(AccessRecord {
            time: SystemTime::now(),
            request_id: request_id.clone(),
            client: conn.client,
            method: req.method().clone(),
            authority: headers::authority_value(&req),
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
        })
    });

    let mut end = RequestEnd {
        worker: &worker,
        conn: &conn,
        start_ns,
        rec,
        answered: false,
    };
    let cx = RequestCtx {
        worker: &worker,
        conn: &conn,
        rt: &rt,
        start,
        start_ns,
        request_id: request_id.as_ref(),
    };
    let outcome = match authority {
        Ok(()) => std::pin::pin!(proxy_request(&cx, req, &mut end.rec)).await,
        Err(e) => Err(e),
    };
    let (mut resp, refused) = match outcome {
        Ok(resp) => (resp, false),
        Err(e) => {
            count_downstream_fault(&worker, conn.listener as usize, e);
            (local_error(&cx, e, &mut end.rec), e.is_downstream())
        }
    };

    let max = worker.listeners[conn.listener as usize].max_requests_per_connection;
    let draining = worker.shared.phase.asks_clients_to_close();
    if (max > 0 && n >= max) || draining || refused {
        close_after(&conn, &mut resp, downstream_version);
    }
    if let Some(id) = request_id {
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), id);
    }
    end.answered = true;
    resp.body_mut().hold_open(OpenBody::new(conn.clone()));
    Ok(resp)
}

/// The end of a request's bookkeeping, however its future ends: with an answer, or
/// dropped before one because the client went away (hyper drops the future of a
/// request whose connection or stream is gone). A request that got no answer is logged
/// with nginx's 499 (`client-abort`) and counted, and never counts against an endpoint.
pub(super) struct RequestEnd<'a> {
    worker: &'a Worker,
    conn: &'a ConnState,
    start_ns: u64,
    /// The access log record while nobody else has logged it.
    rec: Option<Box<AccessRecord>>,
    answered: bool,
}

impl Drop for RequestEnd<'_> {
    fn drop(&mut self) {
        let conn = self.conn;
        let in_flight = conn.in_flight.get() - 1;
        conn.in_flight.set(in_flight);
        conn.head.busy.store(in_flight > 0, Relaxed);
        conn.head.pending.store(false, Relaxed);
        conn.last_active.set_ns(self.start_ns);
        if self.answered {
            return;
        }
        count_downstream_fault(self.worker, conn.listener as usize, ProxyError::ClientAbort);
        if let Some(mut r) = self.rec.take() {
            r.status = ProxyError::ClientAbort.status().as_u16();
            r.reason = ProxyError::ClientAbort.reason();
            r.duration = crate::clock::since(self.start_ns);
            self.worker.shared.access_log.log(r);
        }
    }
}

/// Counts a request the client's fault ended, on its listener.
pub(super) fn count_downstream_fault(worker: &Worker, listener: usize, e: ProxyError) {
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
pub(super) fn decide_authority(req: &mut Request<Incoming>) -> Result<(), ProxyError> {
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
pub(super) fn valid_authority(b: &[u8]) -> bool {
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

/// Stages 2–7 for a request that is to be proxied.
pub(super) async fn proxy_request(
    cx: &RequestCtx<'_>,
    mut req: Request<Incoming>,
    rec: &mut Option<Box<AccessRecord>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let RequestCtx {
        worker,
        conn,
        rt,
        start,
        ..
    } = *cx;
    let route = route_request(rt, conn.listener as usize, &req)?;
    if let Some(r) = rec.as_mut() {
        r.route = Some(route.name.clone());
    }
    rate_limit(route, &req, conn)?;
    let mut cluster_idx = route.pick_cluster();
    let mut forced = None;
    let chain = if route.filters.is_empty() {
        None
    } else {
        let (chain, routed, local) = match run_request_filters(cx, route, &mut req)? {
            FilterStage::Done(filtered) => filtered,
            // Boxed: a paused filter's wait does not widen every request's future.
            FilterStage::Paused(p) => {
                crate::inplace::box_in_place(|| finish_request_filters(p, &mut req, rt, route)).await?
            }
        };
        if let Some(reply) = local {
            return Ok(filter_reply(cx, reply, rec, Some(chain)));
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
    let routed = RoutedCtx {
        cx: *cx,
        route,
        cluster,
    };
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
        let resp = Box::pin(crate::http::upgrade::proxy_upgrade(&routed, req)).await?;
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
        let tries = std::pin::pin!(attempts(&routed, req, rec, targets));
        tries.await
    };
    let (resp, ep_idx, upstream_time) = match tried {
        Ok(r) => r,
        Err(e) => {
            // A request-body filter that answered locally ended the upstream request.
            if let Some(reply) = chain.as_ref().and_then(|c| c.borrow().take_local()) {
                return Ok(filter_reply(cx, reply, rec, chain));
            }
            return Err(e);
        }
    };
    cluster_in_flight.hand_over();
    let endpoint = &cluster.endpoints[ep_idx];
    let mut resp = prepare_downstream_response(resp, route);
    if let Some(c) = &chain {
        c.borrow().set_upstream(&cluster.name, endpoint.address);
        if let Some(reply) = run_response_filters(c, &mut resp, route).await? {
            return Ok(filter_reply(cx, reply, rec, chain));
        }
    }
    Ok(upstream_response(&routed, resp, ep_idx, chain, rec, upstream_time))
}

/// Asks the connection to close after this response (HTTP/1: `Connection: close`;
/// HTTP/2: the connection loop sends GOAWAY).
pub(super) fn close_after(conn: &ConnState, resp: &mut Response<ProxyBody>, version: Version) {
    if version != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !conn.close.replace(true) {
        conn.request(Action::Graceful);
    }
}
