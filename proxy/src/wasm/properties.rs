//! Properties (`proxy_get_property`), in Envoy's attribute encoding so filters written
//! for Envoy read them unchanged: strings raw, integers and timestamps as 8-byte
//! little-endian, booleans as one byte, header maps serialized. Paths arrive as
//! segments joined by NUL. Also Tandem's routing properties (`tandem.upstream.*`),
//! which a filter sets to choose the cluster or endpoint of its request.

use std::time::{SystemTime, UNIX_EPOCH};

use super::abi::status;
use super::state::{HostState, StreamData};

/// Property a filter sets to send its request to another cluster (by name).
pub const UPSTREAM_CLUSTER: &str = "tandem.upstream.cluster";
/// Property a filter sets to send its request to one endpoint (`ip:port`) of the cluster.
pub const UPSTREAM_ENDPOINT: &str = "tandem.upstream.endpoint";

fn i64le(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn join(path: &[u8]) -> String {
    path.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s))
        .collect::<Vec<_>>()
        .join(".")
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
        "tandem.worker_id" => return st.worker.upgrade().map(|w| i64le(w.id as i64)),
        "tandem.node_id" => return crate::pair::get().map(|n| i64le(n.id as i64)),
        _ => {}
    }
    let s = st.streams.get(&st.effective)?;
    if let Some(v) = s.props.get(name.as_bytes()) {
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

/// Writes property `path` (filter state of the effective stream, readable back).
pub fn set(st: &mut HostState, path: Vec<u8>, value: Vec<u8>) -> i32 {
    let eff = st.effective;
    let Some(s) = st.streams.get_mut(&eff) else {
        return status::OK;
    };
    let name = join(&path);
    s.props.insert(name.into_bytes(), value);
    status::OK
}
