//! Stage 6: one attempt on the wire — the upstream request is prepared (hop-by-hop
//! headers, forwarding headers, rules, URI form) and sent on a pooled or new connection
//! within the cluster's connection and pending breakers. Filters' own calls to a cluster
//! take the same way.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::config::UpstreamProtocol;
use crate::error::Limit;
use crate::error::{Failure, ProxyError};
use crate::http::admission::overflow;
use crate::http::conn::ConnState;
use crate::http::headers::{authority_value, forward_headers};
use crate::runtime::{Cluster, Route, Runtime};
use crate::upstream::request_body::{BoxError, UpstreamBody};
use crate::upstream::{self, ResponseBody};
use crate::worker::Worker;

/// The authority sent upstream for a request that names none (HTTP/1.0 may omit
/// `Host`): an HTTP/1.1 request must carry one (RFC 9112 §3.2) and strict servers such
/// as nginx answer 400 without it, and HTTP/2 needs `:authority`. It is the cluster's
/// name, as nginx sends the name of its `proxy_pass` upstream, or `localhost` where
/// the name is not a valid host.
fn fallback_authority(cluster: &Cluster) -> HeaderValue {
    http::uri::Authority::try_from(&*cluster.name)
        .ok()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("localhost"))
}

/// Stage 5: turns the downstream request into the upstream one.
pub(super) fn prepare_upstream_request(
    req: &mut Request<Incoming>,
    route: &Route,
    cluster: &Cluster,
    conn: &ConnState,
) -> Result<(), ProxyError> {
    let authority = authority_value(req);
    let h = req.headers_mut();
    forward_headers(h, route, conn, authority.as_ref());
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            // Origin-form target and a Host header (HTTP/2 clients send :authority
            // only; HTTP/1.0 clients may send neither).
            if !h.contains_key(header::HOST) {
                let a = authority.unwrap_or_else(|| fallback_authority(cluster));
                h.insert(header::HOST, a);
            }
            if req.uri().scheme().is_some() {
                let pq = req.uri().path_and_query().cloned();
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::UpstreamReset)?;
            }
            *req.version_mut() = Version::HTTP_11;
        }
        UpstreamProtocol::H2c => {
            // HTTP/2 needs :scheme and :authority; Host moves into the URI.
            let host = authority.unwrap_or_else(|| fallback_authority(cluster));
            h.remove(header::HOST);
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority =
                http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(host.as_bytes())).ok();
            parts.path_and_query = req
                .uri()
                .path_and_query()
                .cloned()
                .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::UpstreamReset)?;
            *req.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}

/// What one upstream attempt produced.
pub(super) type Attempt = Result<Response<ResponseBody>, ProxyError>;

/// One exchange with an upstream: the response head, or the failure with its cause.
pub(super) type Exchanged = Result<Response<ResponseBody>, Failure>;

/// Stage 6: sends on a pooled or new connection (within the cluster's connection and
/// pending breakers). A pooled connection that turns out to be closed before the
/// request was written is replaced by a fresh one.
pub(super) async fn exchange(
    worker: &Worker,
    cluster: &Cluster,
    ep_idx: usize,
    req: &mut Request<UpstreamBody>,
    start_ns: u64,
    origin: upstream::Origin,
) -> Exchanged {
    let ep = &cluster.endpoints[ep_idx];
    let mut stale = 0;
    loop {
        let conn = match worker
            .pool
            .checkout(ep.address, cluster.protocol, &cluster.pool, start_ns)
        {
            Some(c) => {
                ep.stats.connections_reused.fetch_add(1, Relaxed);
                c
            }
            None => {
                let s = &cluster.stats;
                if s.upstream_connections.load(Relaxed) >= cluster.breakers.max_connections {
                    return Err(overflow(cluster, Limit::Connections).into());
                }
                if s.pending.fetch_add(1, Relaxed) >= cluster.breakers.max_pending {
                    s.pending.fetch_sub(1, Relaxed);
                    return Err(overflow(cluster, Limit::Pending).into());
                }
                // A new connection (TCP, TLS, h2 handshake) is the cold path: boxed.
                let c = Box::pin(worker.pool.connect(ep.address, cluster, &ep.stats, origin)).await;
                s.pending.fetch_sub(1, Relaxed);
                c?
            }
        };
        // The request is lent, not moved: the futures of this stage stay small, and a
        // request that never left can go out again.
        let outcome = match conn.sender {
            upstream::Sender::H1(c) => {
                let home = upstream::h1::Home {
                    pool: worker.pool.clone(),
                    settings: cluster.pool,
                };
                upstream::h1::send(c, req, home)
                    .await
                    .map_err(|(e, again)| (BoxError::from(e), again))
            }
            upstream::Sender::H2(tx) => upstream::send_h2(tx, req).await.map_err(|(e, again)| (e.into(), again)),
        };
        match outcome {
            Ok(resp) => return Ok(resp),
            Err((e, true)) if conn.reused && stale < 2 => {
                tracing::debug!(error = %e, endpoint = %ep.address, "pooled connection was closed; retrying on a new one");
                stale += 1;
            }
            Err((e, _)) => {
                tracing::debug!(error = %e, endpoint = %ep.address, "upstream exchange failed");
                return Err(Failure::new(ProxyError::UpstreamReset, e));
            }
        }
    }
}

/// One request to a cluster outside any route (filter callouts): the cluster's
/// balancer, pool and breakers, no retries.
pub(super) async fn call_cluster(
    worker: &Worker,
    rt: &Runtime,
    cluster_idx: usize,
    pinned: Option<usize>,
    req: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let cluster = &rt.clusters[cluster_idx];
    let ep_idx = match pinned {
        Some(i) => i,
        None => worker.pick_endpoint(rt, cluster, None, 0)?,
    };
    let origin = upstream::Origin {
        client: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        local: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut req = req;
    exchange(worker, cluster, ep_idx, &mut req, crate::clock::now_ns(), origin)
        .await
        .map_err(|f| f.kind)
}

impl crate::wasm::link::WorkerLink for Worker {
    fn worker_id(&self) -> usize {
        self.id
    }

    fn pair(&self) -> Option<Arc<crate::pair::Pair>> {
        self.shared.pair.clone()
    }

    fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    fn call_cluster<'a>(
        &'a self,
        rt: &'a Runtime,
        cluster: usize,
        pinned: Option<usize>,
        req: Request<UpstreamBody>,
    ) -> crate::wasm::link::ClusterCall<'a> {
        Box::pin(call_cluster(self, rt, cluster, pinned, req))
    }
}
