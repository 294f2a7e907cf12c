//! Stage 4: the route's proxy-wasm filters on the request headers (they may answer,
//! change the request, or choose the cluster or endpoint) and on the response headers.

use std::rc::Rc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::error::ProxyError;
use crate::http::body::{Completion, ProxyBody};
use crate::http::context::RequestCtx;
use crate::runtime::{Route, Runtime};
use crate::upstream::ResponseBody;

/// Where a filter sent the request: (cluster index, endpoint).
pub(super) type Routed = (Option<usize>, Option<std::net::SocketAddr>);

/// What the request filters decided: their chain, where they sent the request, and a
/// filter's local answer (if one answered instead of the upstream).
pub(super) type Filtered = (
    crate::wasm::http::ChainRef,
    Routed,
    Option<crate::wasm::state::LocalReply>,
);

/// The request filter stage: decided without waiting (the usual case), or waiting on
/// a paused filter.
pub(super) enum FilterStage {
    Done(Filtered),
    Paused(Box<PausedFilters>),
}

/// A request whose filter `idx` paused in its headers callback.
pub(super) struct PausedFilters {
    chain: crate::wasm::http::ChainRef,
    eos: bool,
    idx: usize,
}

/// Stage 2c: the route's filters see the request headers; they may answer locally,
/// change the request (in place), or choose the cluster or endpoint. Runs no future
/// unless a filter pauses.
pub(super) fn run_request_filters(
    cx: &RequestCtx<'_>,
    route: &Route,
    req: &mut Request<Incoming>,
) -> Result<FilterStage, ProxyError> {
    let facts = filter_facts(cx, req.version(), route);
    let chain = crate::wasm::http::Chain::start(cx.worker, &cx.worker.wasm, &route.filters, facts)?;
    let eos = http_body::Body::is_end_stream(req.body());
    let flow = match crate::wasm::http::request_headers_now(&chain, req, eos, 0)? {
        crate::wasm::http::Step::Done(flow) => flow,
        crate::wasm::http::Step::Paused(idx) => {
            return Ok(FilterStage::Paused(Box::new(PausedFilters { chain, eos, idx })))
        }
    };
    filters_decided(chain, cx.rt, route, flow).map(FilterStage::Done)
}

/// The rest of stage 2c once the paused filter resumes.
pub(super) async fn finish_request_filters(
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
pub(super) fn filter_facts(cx: &RequestCtx<'_>, version: http::Version, route: &Route) -> crate::wasm::state::Facts {
    let conn = cx.conn;
    let conn_facts = conn.extras().filter_facts.get_or_init(|| {
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
        request_id: cx.request_id.cloned(),
        start: cx.start,
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
pub(super) fn filters_decided(
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
pub(super) fn filter_reply(
    cx: &RequestCtx<'_>,
    reply: crate::wasm::state::LocalReply,
    rec: &mut Option<Box<AccessRecord>>,
    chain: Option<crate::wasm::http::ChainRef>,
) -> Response<ProxyBody> {
    let (worker, start) = (cx.worker, cx.start);
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
pub(super) struct Targets<'a> {
    /// Endpoint a filter chose (first attempt).
    pub(super) forced: Option<std::net::SocketAddr>,
    /// The chain whose body callbacks see the request body.
    pub(super) chain: Option<&'a crate::wasm::http::ChainRef>,
}

/// Hands the request head back to the filter chain once it no longer goes upstream
/// (see `wasm::http::request_headers_now`).
pub(super) fn head_back(chain: Option<&crate::wasm::http::ChainRef>, parts: &mut http::request::Parts) {
    if let Some(c) = chain {
        let (uri, headers) = (std::mem::take(&mut parts.uri), std::mem::take(&mut parts.headers));
        c.borrow().request_head_back(parts.method.clone(), uri, headers);
    }
}

/// Stage 4 on the way back: the filters see the response headers; a filter may answer
/// instead (`Some`). Runs no future unless a filter pauses.
pub(super) async fn run_response_filters(
    chain: &crate::wasm::http::ChainRef,
    resp: &mut Response<ResponseBody>,
    route: &Route,
) -> Result<Option<crate::wasm::state::LocalReply>, ProxyError> {
    let eos = http_body::Body::is_end_stream(resp.body());
    let flow = match crate::wasm::http::response_headers_now(chain, resp, eos, 0)? {
        crate::wasm::http::Step::Done(flow) => flow,
        // Boxed: a paused filter's wait does not widen every request's future.
        crate::wasm::http::Step::Paused(pos) => {
            crate::inplace::box_in_place(|| {
                crate::wasm::http::response_headers_after(chain, resp, eos, pos, route.timeout)
            })
            .await?
        }
    };
    Ok(match flow {
        crate::wasm::http::Flow::Local(reply) => Some(reply),
        crate::wasm::http::Flow::Continue => None,
    })
}
