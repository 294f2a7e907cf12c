//! The header phases: request headers in filter order, response headers in reverse,
//! each as far as it goes without waiting, then after a paused filter resumes.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use crate::error::ProxyError;
use crate::wasm::abi::Action;
use crate::wasm::instance::{Fault, Instance};
use crate::wasm::state::{LocalReply, ReqHead, RespHead};

use super::chain::*;

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
pub(super) fn request_filter_done<B>(
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
pub(super) fn phase_end(
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

pub(super) fn put_req<B>(req: &mut http::Request<B>, h: ReqHead) {
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
pub(super) fn response_filter_done<B>(
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
