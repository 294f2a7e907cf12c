//! Network (TCP) filter contexts for L4 listeners: `on_new_connection`, data each way
//! (`on_downstream_data` in filter order, `on_upstream_data` in reverse order, as
//! Envoy's read and write filters), close events, then `on_log`/`on_delete`. A paused
//! filter keeps its direction's bytes buffered until it continues (from a later data
//! event or an async callback) or the stream ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use super::abi::Action;
use super::instance::{Fault, Instance, WorkerInstances};
use super::link::WorkerLink;
use super::state::Facts;
use crate::config::FailurePolicy;
use crate::runtime::plugin::Plugin;

struct Entry {
    plugin: Arc<Plugin>,
    inst: Rc<RefCell<Instance>>,
    ctx: u32,
    skip: bool,
}

/// The network filters of one connection.
pub struct NetChain {
    entries: Vec<Entry>,
    /// (upstream direction?, position in processing order, wake-up) while a filter
    /// holds data waiting for an async continue.
    waiting: Option<(bool, usize, tokio::sync::oneshot::Receiver<()>)>,
}

/// What the filters decided about some data.
#[derive(Debug)]
pub enum Data {
    /// Send these bytes on.
    Forward(Bytes),
    /// A filter keeps them for now.
    Hold,
    /// Close the connection.
    Close,
}

impl Drop for NetChain {
    fn drop(&mut self) {
        for e in &self.entries {
            if let Ok(mut i) = e.inst.try_borrow_mut() {
                i.finish_stream(e.ctx);
            }
        }
    }
}

/// Applies the filter's policy; `true` means skip it and go on.
fn open(plugin: &Plugin, fault: &Fault) -> bool {
    tracing::debug!(filter = %plugin.name, error = %fault, "network filter failed");
    match plugin.failure_policy {
        FailurePolicy::FailOpen => {
            plugin.stats.failed_open.fetch_add(1, Relaxed);
            true
        }
        FailurePolicy::FailClosed => {
            plugin.stats.failed_closed.fetch_add(1, Relaxed);
            false
        }
    }
}

impl NetChain {
    /// Creates the contexts and runs `on_new_connection`; `None` closes the connection.
    pub fn start<W: WorkerLink + 'static>(
        worker: &Rc<W>,
        instances: &RefCell<WorkerInstances>,
        plugins: &[Arc<Plugin>],
        facts: Facts,
    ) -> Option<NetChain> {
        let mut chain = NetChain {
            entries: Vec::with_capacity(plugins.len()),
            waiting: None,
        };
        for p in plugins {
            let created = instances
                .borrow_mut()
                .get(p, Rc::downgrade(worker) as std::rc::Weak<dyn WorkerLink>)
                .and_then(|inst| {
                    let ctx = inst.borrow_mut().create_stream(facts.clone())?;
                    Ok((inst, ctx))
                });
            match created {
                Ok((inst, ctx)) => chain.entries.push(Entry {
                    plugin: p.clone(),
                    inst,
                    ctx,
                    skip: false,
                }),
                Err(f) if open(p, &f) => {}
                Err(_) => return None,
            }
        }
        for e in chain.entries.iter_mut() {
            let mut i = e.inst.borrow_mut();
            let r = i.on_new_connection(e.ctx);
            let closed = i.stream(e.ctx).is_none_or(|s| s.closed);
            drop(i);
            match r {
                _ if closed => return None,
                Ok(_) => {}
                Err(f) if open(&e.plugin, &f) => e.skip = true,
                Err(_) => return None,
            }
        }
        Some(chain)
    }

    fn order(&self, upstream: bool) -> Vec<usize> {
        let n = self.entries.len();
        if upstream {
            (0..n).rev().collect()
        } else {
            (0..n).collect()
        }
    }

    /// Runs data from one side through the filters (from position `from`).
    pub fn on_data(&mut self, upstream: bool, data: &[u8], eos: bool) -> Data {
        self.feed(upstream, 0, Bytes::copy_from_slice(data), eos)
    }

    fn feed(&mut self, upstream: bool, from: usize, mut data: Bytes, eos: bool) -> Data {
        for (pos, idx) in self.order(upstream).into_iter().enumerate().skip(from) {
            let e = &mut self.entries[idx];
            if e.skip {
                continue;
            }
            let mut i = e.inst.borrow_mut();
            let Some(s) = i.stream(e.ctx) else { continue };
            let buf = if upstream { &mut s.resp_body } else { &mut s.req_body };
            super::state::append(buf, data.clone());
            let size = buf.len();
            let r = i.on_data(upstream, e.ctx, size, eos);
            let Some(s) = i.stream(e.ctx) else { return Data::Close };
            if s.closed {
                return Data::Close;
            }
            let buf = if upstream { &mut s.resp_body } else { &mut s.req_body };
            match r {
                Ok(Action::Continue) => data = std::mem::take(buf),
                Ok(Action::Pause) if s.resumed => {
                    s.resumed = false;
                    data = std::mem::take(buf);
                }
                Ok(Action::Pause) => {
                    if self.waiting.is_none() {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        s.waiter = Some(tx);
                        self.waiting = Some((upstream, pos, rx));
                    }
                    return Data::Hold;
                }
                Err(f) => {
                    let kept = std::mem::take(buf);
                    drop(i);
                    if !open(&e.plugin, &f) {
                        return Data::Close;
                    }
                    e.skip = true;
                    data = kept;
                }
            }
        }
        Data::Forward(data)
    }

    /// Whether a filter holds data until an async continue.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Waits for the holding filter to continue, then releases its bytes through the
    /// rest of the chain. Returns the direction (true = upstream→client) and outcome.
    pub async fn resumed(&mut self) -> (bool, Data) {
        let Some((upstream, pos, rx)) = self.waiting.as_mut() else {
            return std::future::pending().await;
        };
        let (upstream, pos) = (*upstream, *pos);
        let ok = rx.await.is_ok();
        self.waiting = None;
        if !ok {
            return (upstream, Data::Close);
        }
        let idx = self.order(upstream)[pos];
        let e = &self.entries[idx];
        let data = {
            let mut i = e.inst.borrow_mut();
            let Some(s) = i.stream(e.ctx) else {
                return (upstream, Data::Close);
            };
            if s.closed {
                return (upstream, Data::Close);
            }
            s.resumed = false;
            let buf = if upstream { &mut s.resp_body } else { &mut s.req_body };
            std::mem::take(buf)
        };
        (upstream, self.feed(upstream, pos + 1, data, false))
    }

    /// Tells every filter that one side closed (`peer`: 1 local, 2 remote).
    pub fn on_close(&mut self, upstream: bool, peer: i32) {
        for e in self.entries.iter().filter(|e| !e.skip) {
            let mut i = e.inst.borrow_mut();
            let _ = i.on_close(upstream, e.ctx, peer);
        }
    }

    /// Records the chosen endpoint for `upstream.*` properties.
    pub fn set_upstream(&self, cluster: &Arc<str>, endpoint: std::net::SocketAddr) {
        for e in &self.entries {
            if let Some(s) = e.inst.borrow_mut().stream(e.ctx) {
                s.facts.cluster = Some(cluster.clone());
                s.facts.upstream = Some(endpoint);
            }
        }
    }
}

/// Facts of a new L4 connection.
pub fn facts(origin: &crate::upstream::Origin, listener: &Arc<str>, id: u64) -> Facts {
    Facts {
        conn: std::rc::Rc::new(super::state::ConnFacts {
            source: origin.client,
            destination: origin.local,
            connection_id: id,
            tls: None,
        }),
        request_id: None,
        start: std::time::Instant::now(),
        protocol: "TCP",
        route: listener.clone(),
        request: Default::default(),
        cluster: None,
        upstream: None,
        request_size: 0,
        response_size: 0,
    }
}
