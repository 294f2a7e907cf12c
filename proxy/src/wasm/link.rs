//! What a filter instance asks of the worker it runs on: the worker's number, the
//! runtime of the moment, its instance table, and requests to a cluster (`http_call`,
//! gRPC). The data plane's `Worker` implements it; the sandbox names nothing above it.

use std::future::Future;
use std::pin::Pin;
use std::rc::Weak;
use std::sync::Arc;

use http::{Request, Response};

use crate::error::ProxyError;
use crate::runtime::Runtime;
use crate::upstream::{ResponseBody, UpstreamBody};

/// A cluster's answer to a request a filter made, as the data plane returns it.
pub type ClusterCall<'a> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, ProxyError>> + 'a>>;

/// The worker side of a filter instance (see the module doc).
pub trait WorkerLink {
    /// The worker's number (`plugin_root_id`-independent `worker_id` property).
    fn worker_id(&self) -> usize;
    /// This node's member of the pair's group, when it is one: the `node_id` property,
    /// filters' cluster-scoped shared data and their health reports go through it.
    fn pair(&self) -> Option<Arc<crate::pair::Pair>>;
    /// The runtime new requests use.
    fn runtime(&self) -> Arc<Runtime>;
    /// One request to cluster `cluster` of `rt` outside any route: its balancer (or the
    /// `pinned` endpoint), pool and breakers, no retries.
    fn call_cluster<'a>(
        &'a self,
        rt: &'a Runtime,
        cluster: usize,
        pinned: Option<usize>,
        req: Request<UpstreamBody>,
    ) -> ClusterCall<'a>;
}

/// The link of an instance started outside any worker (the trial start of a new
/// configuration): it never upgrades, so an instance without a worker makes no calls.
pub fn detached() -> Weak<dyn WorkerLink> {
    Weak::<Detached>::new()
}

/// The type behind [`detached`]; a `Weak` of it is always empty.
struct Detached;

impl WorkerLink for Detached {
    fn worker_id(&self) -> usize {
        unreachable!("a detached link never upgrades")
    }
    fn pair(&self) -> Option<Arc<crate::pair::Pair>> {
        unreachable!("a detached link never upgrades")
    }
    fn runtime(&self) -> Arc<Runtime> {
        unreachable!("a detached link never upgrades")
    }
    fn call_cluster<'a>(
        &'a self,
        _: &'a Runtime,
        _: usize,
        _: Option<usize>,
        _: Request<UpstreamBody>,
    ) -> ClusterCall<'a> {
        unreachable!("a detached link never upgrades")
    }
}
