//! `proxy_http_call`: an HTTP request from a filter to a configured cluster, sent by the
//! worker's own upstream pool with the cluster's balancer, answered later through
//! `on_http_call_response` on the root context (headers count 0 = failed or timed out).
//! The upstream `cluster@ip:port` sends to that endpoint of the cluster whatever its
//! health (how a health filter probes each endpoint).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;

use super::abi::status;
use super::link::WorkerLink;
use super::state::{CalloutResponse, HostState};
use crate::config::UpstreamProtocol;
use crate::upstream::UpstreamBody;

/// Largest callout answer body kept.
const MAX_BODY: usize = 4 << 20;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Validates and starts a callout; returns its token.
pub fn dispatch(
    st: &mut HostState,
    cluster: &str,
    headers: Pairs,
    body: Vec<u8>,
    _trailers: Pairs,
    timeout_ms: u32,
) -> Result<u32, i32> {
    let worker = st.worker.upgrade().ok_or(status::INTERNAL_FAILURE)?;
    let rt = worker.runtime();
    // `cluster@ip:port` pins one endpoint (health probes), whatever its state.
    let (cluster, pinned) = match tandem_abi::split_upstream(cluster) {
        (c, Some(a)) => (
            c,
            Some(a.parse::<std::net::SocketAddr>().map_err(|_| status::BAD_ARGUMENT)?),
        ),
        (c, None) => (c, None),
    };
    let idx = rt
        .clusters
        .iter()
        .position(|c| &*c.name == cluster)
        .ok_or(status::BAD_ARGUMENT)?;
    let pin = match pinned {
        Some(a) => Some(
            rt.clusters[idx]
                .endpoints
                .iter()
                .position(|e| e.address == a)
                .ok_or(status::BAD_ARGUMENT)?,
        ),
        None => None,
    };
    let find = |k: &[u8]| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(method), Some(path), Some(authority)) = (find(b":method"), find(b":path"), find(b":authority")) else {
        return Err(status::BAD_ARGUMENT);
    };
    let method = Method::from_bytes(&method).map_err(|_| status::BAD_ARGUMENT)?;
    let authority = String::from_utf8(authority).map_err(|_| status::BAD_ARGUMENT)?;
    let path = String::from_utf8(path).map_err(|_| status::BAD_ARGUMENT)?;
    let uri = match rt.clusters[idx].protocol {
        UpstreamProtocol::Http1 => path.parse::<http::Uri>(),
        UpstreamProtocol::H2c => format!("http://{authority}{path}").parse(),
    }
    .map_err(|_| status::BAD_ARGUMENT)?;
    let mut req = Request::new(UpstreamBody::Full(Some(Bytes::from(body))));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    if rt.clusters[idx].protocol == UpstreamProtocol::H2c {
        *req.version_mut() = http::Version::HTTP_2;
    }
    let h = req.headers_mut();
    for (k, v) in &headers {
        if k.starts_with(b":") {
            continue;
        }
        let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) else {
            return Err(status::BAD_ARGUMENT);
        };
        h.append(k, v);
    }
    if rt.clusters[idx].protocol == UpstreamProtocol::Http1 {
        h.insert(
            http::header::HOST,
            HeaderValue::from_str(&authority).map_err(|_| status::BAD_ARGUMENT)?,
        );
    }
    st.next_token = st.next_token.wrapping_add(2).max(2);
    let token = st.next_token;
    st.callouts.insert(token, st.effective);
    st.plugin
        .stats
        .callouts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = st.inbox.clone();
    tokio::task::spawn_local(async move {
        let exchange = run(&worker, &rt, idx, pin, req);
        let resp = if timeout_ms == 0 {
            exchange.await
        } else {
            tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), exchange)
                .await
                .ok()
                .flatten()
        };
        if let Some(inst) = me.upgrade() {
            // A callback of this instance cannot be running (single-threaded worker).
            if let Ok(mut i) = inst.try_borrow_mut() {
                i.deliver_callout(token, resp);
            }
        }
    });
    Ok(token)
}

async fn run(
    worker: &Rc<dyn WorkerLink>,
    rt: &crate::runtime::Runtime,
    idx: usize,
    pin: Option<usize>,
    req: Request<UpstreamBody>,
) -> Option<CalloutResponse> {
    let resp = worker.call_cluster(rt, idx, pin, req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_BODY).collect().await.ok()?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes().to_vec();
    let mut headers = vec![(b":status".to_vec(), parts.status.as_str().as_bytes().to_vec())];
    headers.extend(
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    let trailers = trailers
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    Some(CalloutResponse {
        headers,
        body,
        trailers,
    })
}
