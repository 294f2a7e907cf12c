//! A request's filter chain: one stream context per filter of its route, driven stage by
//! stage from the request path — request headers (forward order), request body and
//! trailers (a body wrapper), response headers (reverse order), response body and
//! trailers (a body wrapper), then `on_log`/`on_delete` when the chain is dropped.
//! A paused stream waits for `proxy_continue_stream` (or a local response) from a later
//! callback; a failed guest applies its filter's policy.

use std::cell::RefCell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};

use super::abi::Action;
use super::instance::{Fault, Instance};
use super::plugin::Plugin;
use super::state::{ConnFacts, Facts, LocalReply, ReqHead, RespHead};
use crate::config::FailurePolicy;
use crate::error::ProxyError;

/// Boxed error of filtered bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Entry {
    plugin: Arc<Plugin>,
    inst: Rc<RefCell<Instance>>,
    ctx: u32,
    /// The filter failed open: it is skipped for the rest of this request.
    skip: bool,
}

/// The filter chain of one request (shared by the handler and the body wrappers).
pub struct Chain {
    /// Inline for the usual one or two filters (no allocation per request).
    entries: smallvec::SmallVec<[Entry; 2]>,
    /// `:scheme` of the request (the downstream connection's).
    scheme: &'static str,
}

/// Shared handle.
pub type ChainRef = Rc<RefCell<Chain>>;

/// What a phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Answer with this instead.
    Local(LocalReply),
}

/// Where a filter asked the request to go.
#[derive(Debug, Default)]
pub struct Upstream {
    /// Cluster name.
    pub cluster: Option<String>,
    /// Endpoint address.
    pub endpoint: Option<std::net::SocketAddr>,
}

impl Drop for Chain {
    fn drop(&mut self) {
        for e in &self.entries {
            if let Ok(mut i) = e.inst.try_borrow_mut() {
                i.finish_stream(e.ctx);
            }
        }
    }
}

fn fail(plugin: &Plugin, fault: &Fault) -> Result<(), ProxyError> {
    match plugin.failure_policy {
        FailurePolicy::FailOpen => {
            plugin.stats.failed_open.fetch_add(1, Relaxed);
            tracing::debug!(filter = %plugin.name, error = %fault, "filter skipped (fail_open)");
            Ok(())
        }
        FailurePolicy::FailClosed => {
            plugin.stats.failed_closed.fetch_add(1, Relaxed);
            Err(ProxyError::FilterFailed)
        }
    }
}

/// Filter `idx` of the chain (instance and context id), unless it was skipped after
/// failing open. (Its plugin is looked up only when it fails: no reference count is
/// taken per callback.)
fn live_entry(chain: &ChainRef, idx: usize) -> Option<(Rc<RefCell<Instance>>, u32)> {
    let c = chain.borrow();
    let e = &c.entries[idx];
    (!e.skip).then(|| (e.inst.clone(), e.ctx))
}

/// Applies filter `idx`'s failure policy to `fault`; `Ok` when it failed open (and is
/// skipped for the rest of the request).
fn fail_entry(chain: &ChainRef, idx: usize, fault: &Fault) -> Result<(), ProxyError> {
    let plugin = chain.borrow().entries[idx].plugin.clone();
    fail(&plugin, fault)?;
    chain.borrow_mut().entries[idx].skip = true;
    Ok(())
}

/// Facts of a new request for its filters.
pub fn facts(
    conn: &crate::downstream::ConnState,
    request_id: Option<HeaderValue>,
    version: http::Version,
    route: &crate::runtime::Route,
    start: Instant,
) -> Facts {
    let conn_facts = conn.filter_facts.get_or_init(|| {
        Rc::new(ConnFacts {
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
    Facts {
        conn: conn_facts.clone(),
        request_id,
        start,
        protocol: match version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        route: route.name.clone(),
        request: Rc::new(super::state::RequestState {
            filter_state: Default::default(),
            metadata: route.metadata.clone(),
        }),
        cluster: None,
        upstream: None,
        request_size: 0,
        response_size: 0,
    }
}

impl Chain {
    /// Creates a stream context in each filter's instance of this worker.
    pub fn start(
        worker: &Rc<crate::worker::Worker>,
        plugins: &[Arc<Plugin>],
        facts: Facts,
    ) -> Result<ChainRef, ProxyError> {
        let mut entries = smallvec::SmallVec::with_capacity(plugins.len());
        let scheme = if facts.conn.tls.is_some() { "https" } else { "http" };
        let mut facts = Some(facts);
        for (n, p) in plugins.iter().enumerate() {
            let created = worker.wasm.borrow_mut().get(p, Rc::downgrade(worker)).and_then(|inst| {
                // The last stream takes the facts, the others copies.
                let f = if n + 1 == plugins.len() {
                    facts.take().expect("taken once")
                } else {
                    facts.clone().expect("taken by the last")
                };
                let ctx = inst.borrow_mut().create_stream(f)?;
                Ok((inst, ctx))
            });
            match created {
                Ok((inst, ctx)) => entries.push(Entry {
                    plugin: p.clone(),
                    inst,
                    ctx,
                    skip: false,
                }),
                Err(f) => fail(p, &f)?,
            }
        }
        Ok(Rc::new(RefCell::new(Chain { entries, scheme })))
    }

    /// Gives the request head back to the streams that let it go upstream without
    /// keeping a copy (see [`request_headers_now`]), once it is no longer needed there: the
    /// response callbacks and `on_log` read it (and `request.*` properties) as Envoy's
    /// do. The last such stream takes the head; the others get copies.
    pub fn request_head_back(&self, method: Method, uri: Uri, headers: HeaderMap) {
        let head = ReqHead {
            method,
            uri,
            headers,
            scheme: self.scheme,
        };
        let mut pending = None;
        for idx in 0..self.entries.len() {
            if self.wants_request_head(idx) {
                if let Some(p) = pending.replace(idx) {
                    self.give_request_head(p, head.clone());
                }
            }
        }
        if let Some(p) = pending {
            self.give_request_head(p, head);
        }
    }

    /// [`Chain::request_head_back`] with the head of `req` (left empty).
    pub fn request_head_back_from<B>(&self, req: &mut http::Request<B>) {
        let (uri, headers) = (std::mem::take(req.uri_mut()), std::mem::take(req.headers_mut()));
        self.request_head_back(req.method().clone(), uri, headers);
    }

    /// Gives each stream without a request head a copy of it, for a head about to be
    /// consumed upstream (HTTP/2 and upgrades do not hand it back).
    pub fn request_head_copy(&self, parts: &http::request::Parts) {
        for idx in 0..self.entries.len() {
            if self.wants_request_head(idx) {
                let head = ReqHead {
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    headers: parts.headers.clone(),
                    scheme: self.scheme,
                };
                self.give_request_head(idx, head);
            }
        }
    }

    fn wants_request_head(&self, idx: usize) -> bool {
        let e = &self.entries[idx];
        e.inst
            .try_borrow_mut()
            .is_ok_and(|mut i| i.stream(e.ctx).is_some_and(|s| s.req.is_none()))
    }

    fn give_request_head(&self, idx: usize, head: ReqHead) {
        let e = &self.entries[idx];
        if let Ok(mut i) = e.inst.try_borrow_mut() {
            if let Some(s) = i.stream(e.ctx) {
                s.req = Some(head);
            }
        }
    }

    /// Records the chosen cluster and endpoint (for `upstream.*` and `cluster_name`).
    pub fn set_upstream(&self, cluster: &Arc<str>, endpoint: std::net::SocketAddr) {
        for e in &self.entries {
            if let Ok(mut i) = e.inst.try_borrow_mut() {
                if let Some(s) = i.stream(e.ctx) {
                    s.facts.cluster = Some(cluster.clone());
                    s.facts.upstream = Some(endpoint);
                }
            }
        }
    }

    /// The upstream the filters asked for (the last one that set it wins).
    pub fn upstream(&self) -> Upstream {
        let mut u = Upstream::default();
        for e in self.entries.iter().filter(|e| !e.skip) {
            let Ok(mut i) = e.inst.try_borrow_mut() else { continue };
            let Some(s) = i.stream(e.ctx).filter(|s| !s.props.is_empty()) else {
                continue;
            };
            if let Some(c) = s.props.get(super::properties::UPSTREAM_CLUSTER.as_bytes()) {
                u.cluster = Some(String::from_utf8_lossy(c).into_owned());
            }
            if let Some(a) = s.props.get(super::properties::UPSTREAM_ENDPOINT.as_bytes()) {
                u.endpoint = std::str::from_utf8(a).ok().and_then(|a| a.parse().ok());
            }
        }
        u
    }

    /// A local reply a body callback asked for after the headers went upstream.
    pub fn take_local(&self) -> Option<LocalReply> {
        for e in &self.entries {
            let Ok(mut i) = e.inst.try_borrow_mut() else { continue };
            if let Some(r) = i.stream(e.ctx).and_then(|s| s.local.take()) {
                return Some(r);
            }
        }
        None
    }
}

/// Waits for a paused stream to be resumed; `Err` when its instance failed meanwhile.
async fn wait_resume(inst: &Rc<RefCell<Instance>>, ctx: u32, limit: Duration) -> Result<(), Fault> {
    let rx = {
        let mut i = inst.borrow_mut();
        if let Some(p) = &i.poisoned {
            return Err(p.clone());
        }
        let Some(s) = i.stream(ctx) else {
            return Err(Fault::Unavailable("stream gone".into()));
        };
        if s.resumed || s.local.is_some() || s.closed {
            s.resumed = false;
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.waiter = Some(tx);
        rx
    };
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(())) => {
            let mut i = inst.borrow_mut();
            if let Some(s) = i.stream(ctx) {
                s.resumed = false;
            }
            Ok(())
        }
        Ok(Err(_)) => Err(inst
            .borrow()
            .poisoned
            .clone()
            .unwrap_or(Fault::Unavailable("stream dropped".into()))),
        Err(_) => Err(Fault::Unavailable("paused past the route timeout".into())),
    }
}

/// Where a headers phase stands after the filters that did not pause.
#[derive(Debug)]
pub enum Step {
    /// Every filter ran (or one ended the phase).
    Done(Flow),
    /// Filter `.0` paused: the phase goes on once it resumes (`*_headers_after`).
    Paused(usize),
}

/// Request headers through filters `from..` in order, as far as they go without
/// waiting (the common case runs no future at all). The head of `req` is moved into each
/// filter's stream for the call (a paused filter's callouts can still change it) and
/// back. A stream keeps a copy of the head only when a callback may read it while the
/// request is upstream (a request body follows, or a callout of the stream is
/// pending); otherwise the head comes back after the exchange
/// ([`Chain::request_head_back`]), or at once when the request ends here.
pub fn request_headers_now<B>(
    chain: &ChainRef,
    req: &mut http::Request<B>,
    eos: bool,
    from: usize,
) -> Result<Step, ProxyError> {
    let (n, scheme) = {
        let c = chain.borrow();
        (c.entries.len(), c.scheme)
    };
    for idx in from..n {
        let Some((inst, ctx)) = live_entry(chain, idx) else {
            continue;
        };
        let head = ReqHead {
            method: req.method().clone(),
            uri: std::mem::take(req.uri_mut()),
            headers: std::mem::take(req.headers_mut()),
            scheme,
        };
        let count = head.headers.len() + 4;
        let called = {
            let mut i = inst.borrow_mut();
            match i.stream(ctx) {
                Some(s) => {
                    s.req = Some(head);
                    i.on_request_headers(ctx, count, eos)
                }
                None => {
                    put_req(req, head);
                    Err(Fault::Unavailable("stream gone".into()))
                }
            }
        };
        let outcome = match called {
            Ok(Action::Pause) => return Ok(Step::Paused(idx)),
            Ok(Action::Continue) => Ok(()),
            Err(f) => Err(f),
        };
        if let Some(flow) = request_filter_done(chain, idx, &inst, ctx, req, eos, outcome)? {
            return Ok(Step::Done(flow));
        }
    }
    Ok(Step::Done(Flow::Continue))
}

/// The request headers phase after filter `idx` paused: waits for it to resume (or
/// fail, or time out), then runs the filters after it.
pub async fn request_headers_after<B>(
    chain: &ChainRef,
    req: &mut http::Request<B>,
    eos: bool,
    mut idx: usize,
    limit: Duration,
) -> Result<Flow, ProxyError> {
    loop {
        let (inst, ctx) = live_entry(chain, idx).expect("a paused filter is live");
        let outcome = wait_resume(&inst, ctx, limit).await;
        if let Some(flow) = request_filter_done(chain, idx, &inst, ctx, req, eos, outcome)? {
            return Ok(flow);
        }
        match request_headers_now(chain, req, eos, idx + 1)? {
            Step::Done(flow) => return Ok(flow),
            Step::Paused(next) => idx = next,
        }
    }
}

/// Filter `idx`'s request-headers callback is over: takes the (possibly changed) head
/// back and decides whether the phase goes on (`None`).
#[allow(clippy::too_many_arguments)]
fn request_filter_done<B>(
    chain: &ChainRef,
    idx: usize,
    inst: &Rc<RefCell<Instance>>,
    ctx: u32,
    req: &mut http::Request<B>,
    eos: bool,
    outcome: Result<(), Fault>,
) -> Result<Option<Flow>, ProxyError> {
    let mut i = inst.borrow_mut();
    let callout_pending = i.state().callouts.values().any(|&owner| owner == ctx);
    let (local, closed) = match i.stream(ctx) {
        Some(s) => {
            if let Some(h) = s.req.take() {
                if !eos || callout_pending {
                    s.req = Some(h.clone());
                }
                put_req(req, h);
            }
            (s.local.take(), s.closed)
        }
        None => (None, false),
    };
    drop(i);
    let end = phase_end(chain, idx, local, closed, outcome);
    if !matches!(end, Ok(None)) {
        // The request goes no further: its head is the streams' again.
        chain.borrow().request_head_back_from(req);
    }
    end
}

/// How a headers phase ends for one filter: its local reply answers the request, a
/// closed stream fails it, a failed guest applies the filter's policy (fail_open skips
/// the filter for the rest of the request). `None`: go on with the next filter.
fn phase_end(
    chain: &ChainRef,
    idx: usize,
    local: Option<LocalReply>,
    closed: bool,
    outcome: Result<(), Fault>,
) -> Result<Option<Flow>, ProxyError> {
    if let Some(r) = local {
        return Ok(Some(Flow::Local(r)));
    }
    if closed {
        return Err(ProxyError::FilterFailed);
    }
    if let Err(f) = outcome {
        fail_entry(chain, idx, &f)?;
    }
    Ok(None)
}

fn put_req<B>(req: &mut http::Request<B>, h: ReqHead) {
    *req.method_mut() = h.method;
    *req.uri_mut() = h.uri;
    *req.headers_mut() = h.headers;
}

/// Response headers through filters `from..` in reverse order (`from` counts from the
/// last filter), as far as they go without waiting.
pub fn response_headers_now<B>(
    chain: &ChainRef,
    resp: &mut http::Response<B>,
    eos: bool,
    from: usize,
) -> Result<Step, ProxyError> {
    let n = chain.borrow().entries.len();
    for pos in from..n {
        let idx = n - 1 - pos;
        let Some((inst, ctx)) = live_entry(chain, idx) else {
            continue;
        };
        let head = RespHead {
            status: resp.status(),
            headers: std::mem::take(resp.headers_mut()),
        };
        let count = head.headers.len() + 1;
        let called = {
            let mut i = inst.borrow_mut();
            match i.stream(ctx) {
                Some(s) => {
                    s.resp = Some(head);
                    i.on_response_headers(ctx, count, eos)
                }
                None => {
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    Err(Fault::Unavailable("stream gone".into()))
                }
            }
        };
        let outcome = match called {
            Ok(Action::Pause) => return Ok(Step::Paused(pos)),
            Ok(Action::Continue) => Ok(()),
            Err(f) => Err(f),
        };
        if let Some(flow) = response_filter_done(chain, idx, &inst, ctx, resp, outcome)? {
            return Ok(Step::Done(flow));
        }
    }
    Ok(Step::Done(Flow::Continue))
}

/// The response headers phase after the filter at position `pos` paused.
pub async fn response_headers_after<B>(
    chain: &ChainRef,
    resp: &mut http::Response<B>,
    eos: bool,
    mut pos: usize,
    limit: Duration,
) -> Result<Flow, ProxyError> {
    loop {
        let idx = chain.borrow().entries.len() - 1 - pos;
        let (inst, ctx) = live_entry(chain, idx).expect("a paused filter is live");
        let outcome = wait_resume(&inst, ctx, limit).await;
        if let Some(flow) = response_filter_done(chain, idx, &inst, ctx, resp, outcome)? {
            return Ok(flow);
        }
        match response_headers_now(chain, resp, eos, pos + 1)? {
            Step::Done(flow) => return Ok(flow),
            Step::Paused(next) => pos = next,
        }
    }
}

/// Filter `idx`'s response-headers callback is over: takes the head back (the stream
/// keeps the status for `response.code`).
fn response_filter_done<B>(
    chain: &ChainRef,
    idx: usize,
    inst: &Rc<RefCell<Instance>>,
    ctx: u32,
    resp: &mut http::Response<B>,
    outcome: Result<(), Fault>,
) -> Result<Option<Flow>, ProxyError> {
    let mut i = inst.borrow_mut();
    let (local, closed) = match i.stream(ctx) {
        Some(s) => {
            if let Some(h) = s.resp.as_mut() {
                *resp.status_mut() = h.status;
                *resp.headers_mut() = std::mem::take(&mut h.headers);
            }
            (s.local.take(), s.closed)
        }
        None => (None, false),
    };
    drop(i);
    phase_end(chain, idx, local, closed, outcome)
}

/// The response for a filter's local reply (gRPC trailers-only when it carries a gRPC
/// status).
pub fn local_response(r: LocalReply) -> http::Response<Bytes> {
    let mut resp = http::Response::new(Bytes::new());
    let h = resp.headers_mut();
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            h.append(k, v);
        }
    }
    if let Some(g) = r.grpc_status {
        *resp.status_mut() = http::StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(g));
        if let Ok(m) = HeaderValue::from_bytes(&r.body) {
            if !r.body.is_empty() {
                h.insert("grpc-message", m);
            }
        }
        return resp;
    }
    *resp.status_mut() = http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if !r.body.is_empty() && !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    *resp.body_mut() = Bytes::from(r.body);
    resp
}

/// Error ending a filtered body.
#[derive(Debug, thiserror::Error)]
pub enum FilterBodyError {
    /// A filter failed closed or closed the stream.
    #[error("filter stopped the stream")]
    Stopped,
    /// A filter answered locally after the headers went upstream.
    #[error("filter answered locally")]
    Local,
}

/// A body passed through the chain's body callbacks (request: forward order;
/// response: reverse order), with per-filter buffering while a filter pauses.
pub struct FilteredBody<B> {
    inner: B,
    chain: ChainRef,
    response: bool,
    /// Data ready to go on (at most one chunk per feed) and trailers after it.
    ready: Option<Bytes>,
    ready_trailers: Option<HeaderMap>,
    /// Waiting for filter `.0` (position in processing order) to resume, after eos.
    waiting: Option<(usize, tokio::sync::oneshot::Receiver<()>)>,
    inner_done: bool,
    eos_sent: bool,
    /// The inner body's size, passed on while a `content-length` header fixes it anyway.
    hint: Option<SizeHint>,
}

impl<B> FilteredBody<B> {
    /// Wraps `inner`. `fixed_length`: the message keeps a `content-length` header, so
    /// filters cannot change the length and the inner size hint stays true.
    pub fn new(inner: B, chain: ChainRef, response: bool, fixed_length: bool) -> Self
    where
        B: Body,
    {
        let hint = fixed_length.then(|| inner.size_hint());
        FilteredBody {
            hint,
            inner,
            chain,
            response,
            ready: None,
            ready_trailers: None,
            waiting: None,
            inner_done: false,
            eos_sent: false,
        }
    }

    /// Number of filters.
    fn len(&self) -> usize {
        self.chain.borrow().entries.len()
    }

    /// The filter at position `pos` of the processing order.
    fn at(&self, pos: usize, n: usize) -> usize {
        if self.response {
            n - 1 - pos
        } else {
            pos
        }
    }

    /// Feeds `data` to the filters from position `from` on. Returns an error to end
    /// the body; otherwise frames ready go to `self.ready`.
    fn feed(&mut self, from: usize, mut data: Bytes, eos: bool) -> Result<(), FilterBodyError> {
        let n = self.len();
        for pos in from..n {
            let idx = self.at(pos, n);
            let Some((inst, ctx)) = live_entry(&self.chain, idx) else {
                continue;
            };
            let mut i = inst.borrow_mut();
            let Some(s) = i.stream(ctx) else { continue };
            let buf = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            // Moved in, taken back below: the chunk goes on from the buffer.
            super::state::append(buf, std::mem::take(&mut data));
            let size = buf.len();
            let r = i.on_body(self.response, ctx, size, eos);
            let Some(s) = i.stream(ctx) else {
                return Err(FilterBodyError::Stopped);
            };
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            if s.closed {
                return Err(FilterBodyError::Stopped);
            }
            let buf = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            match r {
                Ok(Action::Continue) => data = std::mem::take(buf),
                Ok(Action::Pause) if s.resumed => {
                    s.resumed = false;
                    data = std::mem::take(buf);
                }
                Ok(Action::Pause) => {
                    if eos {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        s.waiter = Some(tx);
                        self.waiting = Some((pos, rx));
                    }
                    return Ok(());
                }
                Err(f) => {
                    let kept = std::mem::take(buf);
                    drop(i);
                    fail_entry(&self.chain, idx, &f).map_err(|_| FilterBodyError::Stopped)?;
                    data = kept;
                }
            }
        }
        if !data.is_empty() {
            self.ready = Some(data);
        }
        if eos {
            self.eos_sent = true;
        }
        Ok(())
    }

    /// Releases what filter at position `pos` buffered, after it resumed at eos.
    fn release(&mut self, pos: usize) -> Result<(), FilterBodyError> {
        let idx = self.at(pos, self.len());
        let data = {
            let c = self.chain.borrow();
            let e = &c.entries[idx];
            let mut i = e.inst.borrow_mut();
            let Some(s) = i.stream(e.ctx) else {
                return Err(FilterBodyError::Stopped);
            };
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            if s.closed {
                return Err(FilterBodyError::Stopped);
            }
            s.resumed = false;
            let buf: &mut Bytes = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            std::mem::take(buf)
        };
        self.feed_after(pos, data)
    }

    fn feed_after(&mut self, pos: usize, data: Bytes) -> Result<(), FilterBodyError> {
        self.feed(pos + 1, data, true)
    }

    fn trailers(&mut self, mut t: HeaderMap) -> Result<HeaderMap, FilterBodyError> {
        let n = self.len();
        for pos in 0..n {
            let idx = self.at(pos, n);
            let Some((inst, ctx)) = live_entry(&self.chain, idx) else {
                continue;
            };
            let mut i = inst.borrow_mut();
            let Some(s) = i.stream(ctx) else { continue };
            let n = t.len();
            if self.response {
                s.resp_trailers = Some(t);
            } else {
                s.req_trailers = Some(t);
            }
            let r = i.on_trailers(self.response, ctx, n);
            let s = i.stream(ctx).ok_or(FilterBodyError::Stopped)?;
            t = if self.response {
                s.resp_trailers.clone()
            } else {
                s.req_trailers.clone()
            }
            .unwrap_or_default();
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            drop(i);
            if let Err(f) = r {
                fail_entry(&self.chain, idx, &f).map_err(|_| FilterBodyError::Stopped)?;
            }
        }
        Ok(t)
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(d) = this.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if let Some(t) = this.ready_trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if let Some((pos, rx)) = this.waiting.as_mut() {
                let pos = *pos;
                let r = std::task::ready!(Pin::new(rx).poll(cx));
                this.waiting = None;
                if r.is_err() {
                    return Poll::Ready(Some(Err(Box::new(FilterBodyError::Stopped))));
                }
                if let Err(e) = this.release(pos) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                continue;
            }
            if this.inner_done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        if eos {
                            this.inner_done = true;
                        }
                        if let Err(e) = this.feed(0, data, eos) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.inner_done = true;
                            this.eos_sent = true;
                            match this.trailers(t) {
                                Ok(t) => this.ready_trailers = Some(t),
                                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                            }
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.inner_done = true;
                    if !this.eos_sent {
                        if let Err(e) = this.feed(0, Bytes::new(), true) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done && self.ready.is_none() && self.ready_trailers.is_none() && self.waiting.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint.unwrap_or_default()
    }
}
