//! Properties (`proxy_get_property`), in Envoy's attribute encoding so filters written
//! for Envoy read them unchanged: strings raw, integers and timestamps as 8-byte
//! little-endian, booleans as one byte, header maps serialized. Paths arrive as
//! segments joined by NUL and are kept as segments, so a segment with dots in it
//! (`metadata.filter_metadata.envoy.filters.http.lua.key` is four segments after
//! `metadata`) is not confused with nested ones.
//!
//! Route metadata (`[[route]] metadata`) is read at `route_metadata.filter_metadata.NS.KEY…`
//! (also `xds.route_metadata…`, `metadata…` and `filter_metadata.NS…`): a string leaf
//! raw, an integer as 8-byte little-endian, a float as an 8-byte little-endian double, a
//! boolean as one byte; a table or list as JSON text (Envoy returns protobuf there).
//! Filter state (`proxy_set_property`, the `set_envoy_filter_state` foreign function)
//! is shared by the request's filters and read back at its path (or `filter_state.KEY`).
//! Also Tandem's routing properties (`tandem.upstream.*`), which a filter sets to choose
//! the cluster or endpoint of its request.

use std::time::{SystemTime, UNIX_EPOCH};

use super::abi::status;
use super::state::{HostState, StreamData};

use tandem_abi::property::{NODE_ID, WORKER_ID};
pub use tandem_abi::property::{UPSTREAM_CLUSTER, UPSTREAM_ENDPOINT};

fn i64le(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn join(path: &[u8]) -> String {
    path.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// A metadata value in Envoy's attribute encoding (see the module doc).
fn encode_json(v: &serde_json::Value) -> Option<Vec<u8>> {
    Some(match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Bool(b) => vec![u8::from(*b)],
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i64le(i),
            None => n.as_f64()?.to_le_bytes().to_vec(),
        },
        serde_json::Value::Null => return None,
        other => other.to_string().into_bytes(),
    })
}

/// The route metadata at `rest` (segments after `route_metadata`): `filter_metadata`
/// and then namespace and keys.
fn route_metadata<'a>(s: &StreamData, mut rest: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let md = s.facts.request.metadata.as_deref()?;
    let Some(first) = rest.next() else {
        return encode_json(&serde_json::json!({ "filter_metadata": md }));
    };
    if first != b"filter_metadata" {
        return None;
    }
    let mut v = md;
    for seg in rest {
        let key = std::str::from_utf8(seg).ok()?;
        v = match v {
            serde_json::Value::Object(m) => m.get(key)?,
            serde_json::Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    encode_json(v)
}

/// Reads property `path` for the effective context.
pub fn get(st: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let p = &st.plugin;
    let name = join(path);
    match name.as_str() {
        "plugin_name" => return Some(p.name.as_bytes().to_vec()),
        "plugin_root_id" => return Some(p.root_id.as_bytes().to_vec()),
        "plugin_vm_id" => return Some(p.vm_id.as_bytes().to_vec()),
        "plugin_configuration" => return Some(p.config.clone()),
        "vm_configuration" => return Some(p.vm_config.clone()),
        WORKER_ID => return st.worker.upgrade().map(|w| i64le(w.worker_id() as i64)),
        NODE_ID => return st.worker.upgrade().and_then(|w| w.pair()).map(|p| i64le(p.id as i64)),
        _ => {}
    }
    let s = st.streams.get(&st.effective)?;
    if let Some(v) = s.props.get(name.as_bytes()) {
        return Some(v.clone());
    }
    let mut segments = path.split(|&b| b == 0);
    match (segments.next(), path.split(|&b| b == 0).nth(1)) {
        (Some(b"route_metadata" | b"metadata"), _) => return route_metadata(s, segments),
        (Some(b"xds"), Some(b"route_metadata")) => return route_metadata(s, segments.skip(1)),
        (Some(b"filter_metadata"), _) => return route_metadata(s, path.split(|&b| b == 0)),
        (Some(b"filter_state"), Some(key)) if segments.nth(1).is_none() => {
            return s.facts.request.filter_state.borrow().get(key).cloned();
        }
        _ => {}
    }
    if let Some(v) = s.facts.request.filter_state.borrow().get(path) {
        return Some(v.clone());
    }
    stream_property(s, &name)
}

fn stream_property(s: &StreamData, name: &str) -> Option<Vec<u8>> {
    let f = &s.facts;
    let tls = f.conn.tls.as_ref();
    let req = s.req.as_ref();
    let string = |v: &str| Some(v.as_bytes().to_vec());
    match name {
        "request.path" => req.map(|r| r.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().to_vec()),
        "request.url_path" => req.map(|r| r.uri.path().as_bytes().to_vec()),
        "request.query" => req.map(|r| r.uri.query().unwrap_or("").as_bytes().to_vec()),
        "request.host" => req.and_then(|r| super::maps::req_get(r, b":authority")),
        "request.scheme" => req.map(|r| r.scheme.as_bytes().to_vec()),
        "request.method" => req.map(|r| r.method.as_str().as_bytes().to_vec()),
        "request.headers" => req.map(super::maps::req_serialize),
        "request.referer" => req.and_then(|r| super::maps::plain_get(&r.headers, b"referer")),
        "request.useragent" => req.and_then(|r| super::maps::plain_get(&r.headers, b"user-agent")),
        "request.id" => f.request_id.as_ref().map(|v| v.as_bytes().to_vec()),
        "request.protocol" => string(f.protocol),
        "request.time" => Some(i64le(
            (SystemTime::now() - f.start.elapsed())
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        )),
        "request.duration" => Some(i64le(f.start.elapsed().as_nanos() as i64)),
        "request.size" => Some(i64le(f.request_size as i64)),
        "request.total_size" => {
            let head = req.map_or(0, |r| super::maps::req_serialize(r).len());
            Some(i64le((head as u64 + f.request_size) as i64))
        }
        "response.code" => s.resp.as_ref().map(|r| i64le(i64::from(r.status.as_u16()))),
        "response.headers" => s.resp.as_ref().map(super::maps::resp_serialize),
        "response.trailers" => s.resp_trailers.as_ref().map(super::maps::plain_serialize),
        "response.size" => Some(i64le(f.response_size as i64)),
        "source.address" => string(&f.conn.source.to_string()),
        "source.port" => Some(i64le(i64::from(f.conn.source.port()))),
        "destination.address" => string(&f.conn.destination.to_string()),
        "destination.port" => Some(i64le(i64::from(f.conn.destination.port()))),
        "connection.id" => Some(i64le(f.conn.connection_id as i64)),
        "connection.mtls" => Some(vec![tls.is_some_and(|t| t.2.is_some()) as u8]),
        "connection.tls_version" => tls.map(|t| t.0.as_bytes().to_vec()),
        "connection.requested_server_name" => tls.and_then(|t| t.1.as_ref()).map(|s| s.as_bytes().to_vec()),
        "connection.subject_peer_certificate" => tls.and_then(|t| t.2.as_ref()).map(|s| s.as_bytes().to_vec()),
        "upstream.address" => f.upstream.map(|a| a.to_string().into_bytes()),
        "upstream.port" => f.upstream.map(|a| i64le(i64::from(a.port()))),
        "route_name" | "xds.route_name" => string(&f.route),
        "cluster_name" | "xds.cluster_name" | UPSTREAM_CLUSTER => f.cluster.as_ref().map(|c| c.as_bytes().to_vec()),
        _ => None,
    }
}

/// Writes property `path`: Tandem's routing properties (by their dotted name, however
/// the path is split) for this filter's stream, anything else as filter state shared
/// by the request's filters, under the path as given.
pub fn set(st: &mut HostState, path: Vec<u8>, value: Vec<u8>) -> i32 {
    let eff = st.effective;
    let Some(s) = st.streams.get_mut(&eff) else {
        return status::OK;
    };
    let name = join(&path);
    if name == UPSTREAM_CLUSTER || name == UPSTREAM_ENDPOINT {
        s.props.insert(name.into_bytes(), value);
    } else {
        s.facts.request.filter_state.borrow_mut().insert(path, value);
    }
    status::OK
}

/// Sets filter state `key` (a single path segment) for the effective context's request:
/// the `set_envoy_filter_state` foreign function.
pub fn set_filter_state(st: &mut HostState, key: &[u8], value: Vec<u8>) -> i32 {
    let eff = st.effective;
    let Some(s) = st.streams.get(&eff) else {
        return status::NOT_FOUND;
    };
    s.facts.request.filter_state.borrow_mut().insert(key.to_vec(), value);
    status::OK
}
