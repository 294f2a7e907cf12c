//! `proxy_grpc_call` and `proxy_grpc_stream`: gRPC from a filter to a configured cluster
//! that speaks HTTP/2 (`protocol = "h2c"`, over the cluster's TLS when it has one), sent
//! by the worker's upstream pool with the cluster's balancer and breakers, as Envoy's
//! wasm host does for filters that authorise or enrich requests through a gRPC service.
//!
//! Answers come back on the root context, as in Envoy: a unary call ends with
//! `proxy_on_grpc_receive` (the response message in the gRPC receive buffer) or with
//! `proxy_on_grpc_close(status)` (`proxy_get_status` gives the status and message); a
//! stream delivers `proxy_on_grpc_receive_initial_metadata`, one `proxy_on_grpc_receive`
//! per message, `proxy_on_grpc_receive_trailing_metadata` and `proxy_on_grpc_close`.
//! A cancelled call delivers nothing more. Calls and streams per instance are bounded
//! ([`MAX_OPEN`]); a call beyond it fails at once with INTERNAL_FAILURE (the SDK's
//! `Err`), counted as `grpc_refused`.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;

use super::abi::status;
use super::link::WorkerLink;
use super::state::{Event, HostState, OpenCall, Pairs};
use crate::config::UpstreamProtocol;
use crate::upstream::UpstreamBody;

/// gRPC status codes the host produces itself.
pub mod code {
    /// Success.
    pub const OK: u32 = 0;
    /// Unknown error (a response without a status).
    pub const UNKNOWN: u32 = 2;
    /// The call's timeout ran out.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// A message over the size limit.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// Malformed framing.
    pub const INTERNAL: u32 = 13;
    /// No connection, reset, or an HTTP error status.
    pub const UNAVAILABLE: u32 = 14;
}

/// Calls and streams one instance may have open at once.
pub const MAX_OPEN: usize = 256;

/// Messages a stream may have queued for sending.
const SEND_QUEUE: usize = 1024;

/// Largest message received.
const MAX_MESSAGE: usize = 4 << 20;

/// Frames one message (uncompressed).
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    b.freeze()
}

/// Splits complete messages off the front of `buf`; an error for a compressed message
/// (none was asked for) or one over [`MAX_MESSAGE`].
pub fn unframe(buf: &mut BytesMut) -> Result<Vec<Bytes>, (u32, &'static str)> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        if buf[0] != 0 {
            return Err((code::INTERNAL, "compressed message (no compression was offered)"));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err((code::RESOURCE_EXHAUSTED, "message over 4 MiB"));
        }
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    Ok(out)
}

/// The gRPC status an HTTP status stands for (the gRPC HTTP/2 mapping).
fn from_http(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

fn pairs(h: &HeaderMap) -> Pairs {
    h.iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// `grpc-status` and `grpc-message` of a header or trailer block, if it has a status.
fn status_of(h: &HeaderMap) -> Option<(u32, String)> {
    let s = h
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .unwrap_or(code::UNKNOWN);
    let m = h
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((s, m))
}

/// `grpc-message` is percent-encoded.
fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks and starts a unary call (`stream == false`, `message` sent with end of
/// stream) or a stream; returns its token (odd, apart from `http_call`'s even ones).
#[allow(clippy::too_many_arguments)]
pub fn open(
    st: &mut HostState,
    cluster: &str,
    service: &str,
    method: &str,
    metadata: Pairs,
    message: Option<Vec<u8>>,
    timeout_ms: u32,
) -> Result<u32, i32> {
    let worker = st.worker.upgrade().ok_or(status::INTERNAL_FAILURE)?;
    let rt = worker.runtime();
    let idx = rt
        .clusters
        .iter()
        .position(|c| &*c.name == cluster)
        .ok_or(status::PARSE_FAILURE)?;
    if rt.clusters[idx].protocol != UpstreamProtocol::H2c {
        tracing::warn!(filter = %st.plugin.name, cluster, "gRPC call to a cluster that does not speak HTTP/2: set protocol = \"h2c\" on it");
        return Err(status::PARSE_FAILURE);
    }
    if service.is_empty() || method.is_empty() || service.contains('/') || method.contains('/') {
        return Err(status::PARSE_FAILURE);
    }
    // Finished calls leave the table when their task reports the end; one whose owner
    // is gone may linger until then.
    if st.grpc.len() >= MAX_OPEN {
        st.plugin.stats.grpc_refused.fetch_add(1, Relaxed);
        return Err(status::INTERNAL_FAILURE);
    }
    let authority = rt.clusters[idx].name.to_string();
    let uri: http::Uri = format!("http://{authority}/{service}/{method}")
        .parse()
        .map_err(|_| status::PARSE_FAILURE)?;
    let unary = message.is_some();
    let (sender, body) = match message {
        Some(m) => (None, UpstreamBody::Full(Some(frame(&m)))),
        None => {
            let (tx, rx) = tokio::sync::mpsc::channel(SEND_QUEUE);
            (Some(tx), UpstreamBody::Channel(rx))
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    for (k, v) in &metadata {
        if k.starts_with(b":") {
            continue;
        }
        let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) else {
            return Err(status::PARSE_FAILURE);
        };
        h.append(k, v);
    }
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if unary && timeout_ms > 0 {
        if let Ok(v) = HeaderValue::from_str(&format!("{timeout_ms}m")) {
            h.insert("grpc-timeout", v);
        }
    }
    st.next_grpc_token = st.next_grpc_token.wrapping_add(2) | 1;
    let token = st.next_grpc_token;
    st.plugin.stats.grpc_calls.fetch_add(1, Relaxed);
    let me = st.inbox.clone();
    let deliver = move |ev: Event| {
        if let Some(inst) = me.upgrade() {
            // A callback of this instance cannot be running (single-threaded worker).
            if let Ok(mut i) = inst.try_borrow_mut() {
                return i.deliver_grpc(token, ev);
            }
        }
        false
    };
    let task = tokio::task::spawn_local(async move {
        let exchange = run(&worker, &rt, idx, req, unary, &deliver);
        let end = if unary && timeout_ms > 0 {
            match tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), exchange).await {
                Ok(end) => end,
                Err(_) => Some((code::DEADLINE_EXCEEDED, "timeout".to_string())),
            }
        } else {
            exchange.await
        };
        if let Some((code, message)) = end {
            deliver(Event::Close(code, message));
        }
    });
    st.grpc.insert(
        token,
        OpenCall {
            owner: st.effective,
            sender,
            task: task.abort_handle(),
            unary,
        },
    );
    Ok(token)
}

/// Runs one call or stream, reporting through `deliver` (false: nobody listens any
/// more, stop). Returns the closing status, or `None` when delivery stopped.
async fn run(
    worker: &Rc<dyn WorkerLink>,
    rt: &crate::runtime::Runtime,
    idx: usize,
    req: Request<UpstreamBody>,
    unary: bool,
    deliver: &impl Fn(Event) -> bool,
) -> Option<(u32, String)> {
    let resp = match worker.call_cluster(rt, idx, None, req).await {
        Ok(r) => r,
        Err(e) => return Some((code::UNAVAILABLE, format!("upstream: {e}"))),
    };
    let (parts, mut body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        let s = parts.status.as_u16();
        return Some((from_http(s), format!("HTTP status {s}")));
    }
    // Trailers-only: the status is in the headers.
    if let Some(end) = status_of(&parts.headers) {
        if !unary && !deliver(Event::TrailingMetadata(pairs(&parts.headers))) {
            return None;
        }
        return Some(end);
    }
    if !unary && !deliver(Event::InitialMetadata(pairs(&parts.headers))) {
        return None;
    }
    let mut buf = BytesMut::new();
    let mut first: Option<Bytes> = None;
    loop {
        let frame = match body.frame().await {
            None => return Some((code::UNKNOWN, "the stream ended without a gRPC status".into())),
            Some(Err(e)) => return Some((code::UNAVAILABLE, format!("stream reset: {e}"))),
            Some(Ok(f)) => f,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                let messages = match unframe(&mut buf) {
                    Ok(m) => m,
                    Err((c, m)) => return Some((c, m.into())),
                };
                for m in messages {
                    if unary {
                        first.get_or_insert(m);
                    } else if !deliver(Event::Message(m)) {
                        return None;
                    }
                }
                continue;
            }
            Err(f) => f,
        };
        let Ok(trailers) = frame.into_trailers() else { continue };
        let end = status_of(&trailers).unwrap_or((code::UNKNOWN, "trailers without grpc-status".into()));
        if unary {
            return match (end.0, first) {
                (code::OK, Some(m)) => {
                    deliver(Event::Message(m));
                    None
                }
                (code::OK, None) => Some((code::INTERNAL, "no response message".into())),
                _ => Some(end),
            };
        }
        if !deliver(Event::TrailingMetadata(pairs(&trailers))) {
            return None;
        }
        return Some(end);
    }
}

/// `proxy_grpc_send`: queues `message` on stream `token`, then half-closes it when
/// `end` is set. After the half-close a message is dropped with OK (as Envoy answers;
/// the SDK would trap on an error status); a unary call's token, or a full queue, is
/// BAD_ARGUMENT.
pub fn send(st: &mut HostState, token: u32, message: &[u8], end: bool) -> i32 {
    let Some(call) = st.grpc.get_mut(&token) else {
        return status::NOT_FOUND;
    };
    if call.unary {
        return status::BAD_ARGUMENT;
    }
    let Some(tx) = &call.sender else {
        tracing::debug!(filter = %st.plugin.name, token, "gRPC message after the half-close dropped");
        return status::OK;
    };
    if tx.try_send(frame(message)).is_err() {
        return status::BAD_ARGUMENT;
    }
    if end {
        call.sender = None;
    }
    status::OK
}

/// `proxy_grpc_cancel`: ends the call or stream at once (the server sees a reset);
/// nothing more is delivered.
pub fn cancel(st: &mut HostState, token: u32) -> i32 {
    match st.grpc.remove(&token) {
        Some(call) => {
            call.task.abort();
            status::OK
        }
        None => status::NOT_FOUND,
    }
}

/// `proxy_grpc_close`: half-closes a stream (the server sees the end of the request
/// stream and may still answer); a unary call is cancelled.
pub fn close(st: &mut HostState, token: u32) -> i32 {
    match st.grpc.get_mut(&token) {
        Some(call) if call.sender.is_some() => {
            call.sender = None;
            status::OK
        }
        Some(_) => cancel(st, token),
        None => status::NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_split_across_chunks() {
        let mut buf = BytesMut::new();
        let a = frame(b"hello");
        let b = frame(b"");
        let both: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        buf.extend_from_slice(&both[..7]);
        assert_eq!(unframe(&mut buf).unwrap(), Vec::<Bytes>::new());
        buf.extend_from_slice(&both[7..]);
        assert_eq!(unframe(&mut buf).unwrap(), vec![Bytes::from("hello"), Bytes::new()]);
        assert!(buf.is_empty());
        let mut big = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(unframe(&mut big).unwrap_err().0, code::RESOURCE_EXHAUSTED);
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert_eq!(unframe(&mut compressed).unwrap_err().0, code::INTERNAL);
    }

    #[test]
    fn statuses_come_from_trailers_or_the_http_status() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert("grpc-message", HeaderValue::from_static("not%20allowed%3A x"));
        assert_eq!(status_of(&h), Some((7, "not allowed: x".into())));
        assert_eq!(status_of(&HeaderMap::new()), None);
        assert_eq!(from_http(503), code::UNAVAILABLE);
        assert_eq!(from_http(404), 12);
    }
}
