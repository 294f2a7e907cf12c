//! Stage 2: the listener's router picks the route.

use http::header::{self};
use http::Request;
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::runtime::{router, RequestFacts, Route, Runtime};

/// Stage 2: finds the route for the request on its listener.
pub(super) fn route_request<'rt>(
    rt: &'rt Runtime,
    listener: usize,
    req: &Request<Incoming>,
) -> Result<&'rt Route, ProxyError> {
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
