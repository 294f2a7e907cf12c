//! Share-nothing workers: one OS thread per core, each with its own current-thread
//! tokio runtime, its own `SO_REUSEPORT` listener sockets, its own upstream pool and
//! its own balancer state. Workers only share read-mostly snapshots and atomics.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::balancer::WorkerState;
use crate::config::ListenerConfig;
use crate::error::ProxyError;
use crate::runtime::{Cluster, Runtime};
use crate::shared::Shared;
use crate::upstream::Pool;

/// Per-worker state handed to every connection of that worker.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Worker number.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Listener settings (restart-only), in listener order.
    pub listeners: Arc<[ListenerConfig]>,
    /// Upstream connections of this worker.
    pub pool: Rc<Pool>,
    balancers: RefCell<(u64, Vec<WorkerState>)>,
    /// Reused buffer for the candidate endpoints of a pick (no allocation per request).
    pub scratch: RefCell<Vec<usize>>,
    /// This worker's proxy-wasm filter instances.
    pub wasm: RefCell<crate::wasm::instance::WorkerInstances>,
}

impl Worker {
    /// Worker `id`'s state, before its first connection.
    pub(crate) fn new(id: usize, shared: Arc<Shared>, listeners: Arc<[ListenerConfig]>) -> Worker {
        let wasm = RefCell::new(crate::wasm::instance::WorkerInstances::new(shared.wasm.clone()));
        Worker {
            id,
            shared,
            listeners,
            pool: Rc::new(Pool::default()),
            balancers: RefCell::new((0, Vec::new())),
            scratch: RefCell::new(Vec::with_capacity(64)),
            wasm,
        }
    }

    /// Runs `f` with this worker's balancer state for cluster `idx` of `rt`. State is
    /// reset when a new runtime generation appears.
    pub(crate) fn with_balancer<R>(&self, rt: &Runtime, idx: usize, f: impl FnOnce(&mut WorkerState) -> R) -> R {
        let mut b = self.balancers.borrow_mut();
        if b.0 != rt.generation {
            if rt.generation < b.0 {
                // A request still on an older runtime: use throwaway state.
                return f(&mut WorkerState::default());
            }
            *b = (rt.generation, vec![WorkerState::default(); rt.clusters.len()]);
        }
        f(&mut b.1[idx])
    }

    /// The cluster's balancer picks among the endpoints that may take a request (not
    /// tried yet, by the bits of `tried`; healthy, or any when the cluster panics).
    pub(crate) fn pick_endpoint(
        &self,
        rt: &Runtime,
        cluster: &Cluster,
        hash: Option<u64>,
        tried: u64,
    ) -> Result<usize, ProxyError> {
        let now = crate::clock::now_ns();
        let mut idx = self.scratch.borrow_mut();
        crate::balancer::candidates(&cluster.endpoints, now, cluster.panic_threshold, tried, &mut idx);
        if idx.is_empty() {
            cluster.stats.no_endpoint.fetch_add(1, Relaxed);
            return Err(ProxyError::NoHealthyUpstream);
        }
        let choice = crate::balancer::Choice {
            eps: &cluster.endpoints,
            idx: &idx,
            now_ns: now,
        };
        Ok(self.with_balancer(rt, cluster.index, |state| {
            crate::balancer::pick(cluster.balancer, &cluster.table, state, &choice, hash)
        }))
    }
}
