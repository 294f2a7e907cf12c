//! L4 (TCP) proxying: pick a cluster (by the TLS ClientHello's server name for
//! passthrough, or the listener's default), optionally terminate TLS, pick an endpoint
//! with the cluster's balancer and health (another endpoint is tried when a connect is
//! refused), optionally send a PROXY header and originate TLS, then copy both ways with
//! half-close, an idle timeout and a maximum connection age.
//!
//! [`splice`] copies the bytes.

pub(crate) mod splice;

use splice::{splice, splice_filtered};

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{HashOn, HostPattern};
use crate::runtime::{Cluster, Runtime};
use crate::send_batch::BatchedStream;
use crate::stats::ListenerStats;
use crate::tls::client_hello::{peek_hello, Hello};
use crate::upstream::Origin;
use crate::worker::Worker;

/// Serves one L4 connection until either side is done.
pub(crate) async fn serve(
    worker: &Rc<Worker>,
    idx: usize,
    stream: TcpStream,
    origin: Origin,
    rt: &Arc<Runtime>,
    stats: &Arc<ListenerStats>,
) {
    let lcfg = &worker.listeners[idx];
    let hot = &rt.config.listeners[idx];
    stats.tcp_connections.fetch_add(1, Relaxed);
    let mut name = hot.cluster.as_deref();
    if !hot.sni_routes.is_empty() {
        if let Hello::Sni(sni) = peek_hello(&stream, lcfg.header_read_timeout).await {
            if let Some((_, c)) = hot
                .sni_routes
                .iter()
                .find(|(pats, _)| pats.iter().any(|p| sni_matches(p, &sni)))
            {
                name = Some(c);
            }
        }
    }
    let Some(cluster) = name.and_then(|n| rt.cluster_named(n)) else {
        worker.shared.stats.process.no_route.fetch_add(1, Relaxed);
        return;
    };
    let filters = match rt.listener_filters.get(idx).filter(|f| !f.is_empty()) {
        Some(plugins) => {
            let id = worker.shared.conn_ids.fetch_add(1, Relaxed);
            let facts = crate::wasm::l4::facts(&origin, &Arc::from(hot.name.as_str()), id);
            match crate::wasm::l4::NetChain::start(worker, &worker.wasm, plugins, facts) {
                Some(c) => Some(c),
                None => return,
            }
        }
        None => None,
    };
    let idle = lcfg.idle_timeout;
    let max_age = hot.max_connection_age;
    let buffer = hot.tcp_buffer_bytes;
    // Both sides write with the worker's send batch (see `send_batch`).
    let stream = BatchedStream::new(stream);
    match &rt.listener_tls[idx] {
        Some(tls) => match tokio::time::timeout(lcfg.header_read_timeout, crate::tls::accept(stream, tls)).await {
            Ok(Ok(tls)) => {
                stats.tls_handshakes.fetch_add(1, Relaxed);
                forward(worker, rt, cluster, tls, origin, buffer, idle, max_age, stats, filters).await
            }
            _ => {
                stats.tls_handshake_failures.fetch_add(1, Relaxed);
            }
        },
        None => {
            forward(
                worker, rt, cluster, stream, origin, buffer, idle, max_age, stats, filters,
            )
            .await
        }
    }
}

fn sni_matches(p: &HostPattern, name: &str) -> bool {
    match p {
        HostPattern::Any => true,
        HostPattern::Exact(h) => h == name,
        HostPattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<D>(
    worker: &Rc<Worker>,
    rt: &Runtime,
    cluster: &Cluster,
    downstream: D,
    origin: Origin,
    buffer: usize,
    idle: Duration,
    max_age: Option<Duration>,
    stats: &ListenerStats,
    filters: Option<crate::wasm::l4::NetChain>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let hash = match cluster.hash_on {
        Some(HashOn::SourceIp) => Some(crate::balancer::hash_key(origin.client.ip().to_string().as_bytes())),
        _ => None,
    };
    let mut tried = 0u64;
    let (upstream, ep_idx) = loop {
        let ep_idx = match worker.pick_endpoint(rt, cluster, hash, tried) {
            Ok(i) => i,
            Err(_) => return,
        };
        if tried & (1 << ep_idx.min(63)) != 0 {
            return; // every endpoint has been tried
        }
        tried |= 1 << ep_idx.min(63);
        let ep = &cluster.endpoints[ep_idx];
        match crate::upstream::dial(ep.address, cluster, &ep.stats, origin).await {
            Ok(s) => break (BatchedStream::new(s), ep_idx),
            Err(f) => {
                let status = f.kind.status().as_u16();
                ep.stats.responses.record(status);
                crate::runtime::passive::observe_passive(cluster, ep_idx, status, true, worker.shared.pair.as_deref());
            }
        }
    };
    let ep = &cluster.endpoints[ep_idx];
    ep.stats.active.fetch_add(1, Relaxed);
    cluster.stats.active.fetch_add(1, Relaxed);
    if let Some(f) = &filters {
        f.set_upstream(&cluster.name, ep.address);
    }
    let (up, down) = match (&cluster.tls, filters) {
        (Some((t, cfg)), filters) => {
            match crate::upstream::tls_connect(ep.address, t, cfg, upstream, cluster.connect_timeout).await {
                Ok(tls) => match filters {
                    Some(f) => splice_filtered(downstream, tls, f, idle, max_age).await,
                    None => splice(downstream, tls, buffer, idle, max_age).await,
                },
                Err(f) => {
                    tracing::debug!(endpoint = %ep.address, error = %f, "upstream TLS failed");
                    crate::runtime::passive::observe_passive(
                        cluster,
                        ep_idx,
                        f.kind.status().as_u16(),
                        true,
                        worker.shared.pair.as_deref(),
                    );
                    (0, 0)
                }
            }
        }
        (None, Some(f)) => splice_filtered(downstream, upstream, f, idle, max_age).await,
        (None, None) => splice(downstream, upstream, buffer, idle, max_age).await,
    };
    stats.tcp_bytes_in.fetch_add(up, Relaxed);
    stats.tcp_bytes_out.fetch_add(down, Relaxed);
    ep.stats.responses.record(200);
    ep.stats.active.fetch_sub(1, Relaxed);
    cluster.stats.active.fetch_sub(1, Relaxed);
}
