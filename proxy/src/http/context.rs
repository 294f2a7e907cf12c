//! The context of one request, handed from stage to stage.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::http::conn::ConnState;
use crate::runtime::{Cluster, Route, Runtime};
use crate::worker::Worker;

/// What every stage of one request reads: the worker it runs on, its connection, the
/// runtime it started on (a reload in between does not change it), when it started and
/// its id. Built once when the request starts (`request.rs`); once the route and the
/// cluster are chosen it becomes a [`RoutedCtx`].
#[derive(Clone, Copy)]
pub(crate) struct RequestCtx<'a> {
    /// The worker (its pool, balancer state and filter instances).
    pub(crate) worker: &'a Rc<Worker>,
    /// The downstream connection.
    pub(crate) conn: &'a Rc<ConnState>,
    /// The runtime snapshot of this request.
    pub(crate) rt: &'a Arc<Runtime>,
    /// When the request started.
    pub(crate) start: Instant,
    /// The same time on the process clock ([`crate::clock::now_ns`]).
    pub(crate) start_ns: u64,
    /// `X-Request-Id`, when requests carry one.
    pub(crate) request_id: Option<&'a HeaderValue>,
}

/// A request whose route (stage 2) and cluster (the route's pick, or its filters') are
/// chosen: what the stages from admission on read. Derefs to the [`RequestCtx`] it
/// grew from.
#[derive(Clone, Copy)]
pub(crate) struct RoutedCtx<'a> {
    /// The request's context.
    pub(crate) cx: RequestCtx<'a>,
    /// Its route.
    pub(crate) route: &'a Route,
    /// The cluster it goes to.
    pub(crate) cluster: &'a Cluster,
}

impl<'a> std::ops::Deref for RoutedCtx<'a> {
    type Target = RequestCtx<'a>;

    fn deref(&self) -> &RequestCtx<'a> {
        &self.cx
    }
}
