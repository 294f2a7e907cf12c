//! HTTP/1.1 Upgrade (WebSocket) and CONNECT: the request goes to the chosen endpoint on
//! a dedicated connection; when the upstream agrees (101, or 2xx for CONNECT) both
//! sides are switched to raw byte streams and copied both ways with the route's
//! `upgrade_idle_timeout`.

use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::http::conn::DownstreamTunnel;
use crate::http::context::RoutedCtx;
use crate::http::headers;
use crate::upstream::Origin;
use crate::upstream::UpstreamBody;

/// Bytes read at once in each direction of an upgraded connection (WebSocket messages
/// are mostly small).
const UPGRADE_BUFFER: usize = 8 * 1024;

/// Whether `req` asks for a protocol switch or a tunnel.
pub(crate) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
        || (req.headers().contains_key(header::UPGRADE)
            && req
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Proxies an Upgrade or CONNECT request; on success the tunnel runs in its own task.
pub(crate) async fn proxy_upgrade(
    routed: &RoutedCtx<'_>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (worker, conn, rt, route, cluster) = (routed.worker, routed.conn, &**routed.rt, routed.route, routed.cluster);
    let ep_idx = worker.pick_endpoint(rt, cluster, None, 0)?;
    let ep = &cluster.endpoints[ep_idx];
    // HTTP/2 (extended) CONNECT streams come from hyper's upgrade; an HTTP/1.1 byte
    // stream from the connection task once it has sent the answer (`serve_http1`).
    let h2_stream = (req.version() == http::Version::HTTP_2).then(|| hyper::upgrade::on(&mut req));
    let connect = req.method() == Method::CONNECT;

    // Forward the switch request: hop-by-hop headers go, except the upgrade itself.
    let upgrade_to = req.headers().get(header::UPGRADE).cloned();
    let authority = req.headers().get(header::HOST).cloned();
    let (mut parts, _) = req.into_parts();
    crate::http::headers::forward_headers(&mut parts.headers, route, conn, authority.as_ref());
    if let Some(u) = upgrade_to {
        parts.headers.insert(header::UPGRADE, u);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    parts.version = http::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, UpstreamBody::Full(None));

    let origin = Origin {
        client: conn.client,
        local: conn.local,
    };
    let stream = crate::upstream::dial(ep.address, cluster, &ep.stats, origin)
        .await
        .map_err(|f| f.kind)?;
    let mut resp = match &cluster.tls {
        Some((t, cfg)) => {
            let tls = crate::upstream::tls_connect(ep.address, t, cfg, stream, cluster.connect_timeout)
                .await
                .map_err(|f| f.kind)?;
            send_upgradeable(TokioIo::new(tls), upstream_req).await?
        }
        None => send_upgradeable(TokioIo::new(stream), upstream_req).await?,
    };
    ep.stats.responses.record(resp.status().as_u16());
    let switched = if connect {
        resp.status().is_success()
    } else {
        resp.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    if !switched {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(crate::upstream::ResponseBody::Hyper(body, None), None),
        ));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let (tx, rx) = tokio::sync::oneshot::channel();
    if h2_stream.is_none() {
        conn.extras().upgrade.set(Some(tx));
    }
    let downstream = async move {
        match h2_stream {
            Some(on) => on.await.ok().map(|u| Box::new(TokioIo::new(u)) as DownstreamTunnel),
            None => rx.await.ok(),
        }
    };
    let idle = route.upgrade_idle_timeout;
    let stats = ep.stats.clone();
    let cstats = cluster.stats.clone();
    stats.active.fetch_add(1, Relaxed);
    cstats.active.fetch_add(1, Relaxed);
    tokio::task::spawn_local(async move {
        if let (Some(down), Ok(up)) = (downstream.await, upstream.await) {
            crate::l4::splice::splice(down, TokioIo::new(up), UPGRADE_BUFFER, idle, None).await;
        }
        stats.active.fetch_sub(1, Relaxed);
        cstats.active.fetch_sub(1, Relaxed);
    });
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::local(bytes::Bytes::new(), None)))
}

async fn send_upgradeable<IO>(io: IO, req: Request<UpstreamBody>) -> Result<Response<Incoming>, ProxyError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| ProxyError::UpstreamReset)?;
    tokio::task::spawn_local(conn.with_upgrades());
    tx.send_request(req).await.map_err(|_| ProxyError::UpstreamReset)
}
