//! The filter chain of one request: a stream context per filter of its route, failure
//! policy, and what the filters decided about the request.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use crate::config::FailurePolicy;
use crate::error::ProxyError;
use crate::runtime::plugin::Plugin;
use crate::wasm::instance::{Fault, Instance, WorkerInstances};
use crate::wasm::link::WorkerLink;
use crate::wasm::state::{Facts, LocalReply, ReqHead};

pub(super) struct Entry {
    pub(super) plugin: Arc<Plugin>,
    pub(super) inst: Rc<RefCell<Instance>>,
    pub(super) ctx: u32,
    /// The filter failed open: it is skipped for the rest of this request.
    pub(super) skip: bool,
}

/// The filter chain of one request (shared by the handler and the body wrappers).
pub struct Chain {
    /// Inline for the usual one or two filters (no allocation per request).
    pub(super) entries: smallvec::SmallVec<[Entry; 2]>,
    /// `:scheme` of the request (the downstream connection's).
    pub(super) scheme: &'static str,
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

pub(super) fn fail(plugin: &Plugin, fault: &Fault) -> Result<(), ProxyError> {
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
pub(super) fn live_entry(chain: &ChainRef, idx: usize) -> Option<(Rc<RefCell<Instance>>, u32)> {
    let c = chain.borrow();
    let e = &c.entries[idx];
    (!e.skip).then(|| (e.inst.clone(), e.ctx))
}

/// Applies filter `idx`'s failure policy to `fault`; `Ok` when it failed open (and is
/// skipped for the rest of the request).
pub(super) fn fail_entry(chain: &ChainRef, idx: usize, fault: &Fault) -> Result<(), ProxyError> {
    let plugin = chain.borrow().entries[idx].plugin.clone();
    fail(&plugin, fault)?;
    chain.borrow_mut().entries[idx].skip = true;
    Ok(())
}

impl Chain {
    /// Creates a stream context in each filter's instance of this worker.
    pub fn start<W: WorkerLink + 'static>(
        worker: &Rc<W>,
        instances: &RefCell<WorkerInstances>,
        plugins: &[Arc<Plugin>],
        facts: Facts,
    ) -> Result<ChainRef, ProxyError> {
        let mut entries = smallvec::SmallVec::with_capacity(plugins.len());
        let scheme = if facts.conn.tls.is_some() { "https" } else { "http" };
        let mut facts = Some(facts);
        for (n, p) in plugins.iter().enumerate() {
            let created = instances
                .borrow_mut()
                .get(p, Rc::downgrade(worker) as std::rc::Weak<dyn WorkerLink>)
                .and_then(|inst| {
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
            if let Some(c) = s.props.get(crate::wasm::properties::UPSTREAM_CLUSTER.as_bytes()) {
                u.cluster = Some(String::from_utf8_lossy(c).into_owned());
            }
            if let Some(a) = s.props.get(crate::wasm::properties::UPSTREAM_ENDPOINT.as_bytes()) {
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
pub(super) async fn wait_resume(inst: &Rc<RefCell<Instance>>, ctx: u32, limit: Duration) -> Result<(), Fault> {
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
