//! Numbers and wire formats of the proxy-wasm ABI (0.2.1, with 0.1.0 compatibility):
//! status codes, buffer, map and stream kinds, and the serialized header-map format.
//! Kept apart so the host functions read like the spec.

/// `proxy_status_t` values a Rust-SDK guest can represent. (The spec's 6
/// INVALID_MEMORY_ACCESS and 12 UNIMPLEMENTED are never returned: the SDK's `Status`
/// enum has no such variants, so a bad pointer traps the call instead.)
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// Key, context, queue, property or function not found.
    pub const NOT_FOUND: i32 = 1;
    /// An argument is wrong (unknown cluster, missing pseudo-header, …).
    pub const BAD_ARGUMENT: i32 = 2;
    /// A serialized map could not be read.
    pub const SERIALIZATION_FAILURE: i32 = 3;
    /// Unknown upstream for a gRPC call (what the SDK expects there).
    pub const PARSE_FAILURE: i32 = 4;
    /// A shared queue has nothing to dequeue.
    pub const EMPTY: i32 = 7;
    /// Shared data compare-and-swap lost.
    pub const CAS_MISMATCH: i32 = 8;
    /// Something the host cannot do (also: an unsupported feature).
    pub const INTERNAL_FAILURE: i32 = 10;
}

/// Buffer kinds of `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferKind {
    /// Request body (buffered part while paused).
    RequestBody,
    /// Response body.
    ResponseBody,
    /// L4 data from the client.
    DownstreamData,
    /// L4 data from the upstream.
    UpstreamData,
    /// Body of an `http_call` response.
    CallResponseBody,
    /// The message of the gRPC callback running (`proxy_on_grpc_receive`).
    GrpcReceive,
    /// `vm_config`.
    VmConfiguration,
    /// `config` of the plugin.
    PluginConfiguration,
    /// Arguments of a foreign function call into the guest.
    CallData,
}

impl BufferKind {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => BufferKind::RequestBody,
            1 => BufferKind::ResponseBody,
            2 => BufferKind::DownstreamData,
            3 => BufferKind::UpstreamData,
            4 => BufferKind::CallResponseBody,
            5 => BufferKind::GrpcReceive,
            6 => BufferKind::VmConfiguration,
            7 => BufferKind::PluginConfiguration,
            8 => BufferKind::CallData,
            _ => return None,
        })
    }
}

/// Header map kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// Request headers with `:method`, `:path`, `:authority`, `:scheme`.
    RequestHeaders,
    /// Request trailers.
    RequestTrailers,
    /// Response headers with `:status`.
    ResponseHeaders,
    /// Response trailers.
    ResponseTrailers,
    /// gRPC initial metadata (never present).
    GrpcInitial,
    /// gRPC trailing metadata (never present).
    GrpcTrailing,
    /// Headers of an `http_call` response.
    CallResponseHeaders,
    /// Trailers of an `http_call` response.
    CallResponseTrailers,
}

impl MapKind {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => MapKind::RequestHeaders,
            1 => MapKind::RequestTrailers,
            2 => MapKind::ResponseHeaders,
            3 => MapKind::ResponseTrailers,
            4 => MapKind::GrpcInitial,
            5 => MapKind::GrpcTrailing,
            6 => MapKind::CallResponseHeaders,
            7 => MapKind::CallResponseTrailers,
            _ => return None,
        })
    }
}

/// Stream kinds of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// HTTP request direction.
    Request,
    /// HTTP response direction.
    Response,
    /// L4 client side.
    Downstream,
    /// L4 upstream side.
    Upstream,
}

impl StreamKind {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => StreamKind::Request,
            1 => StreamKind::Response,
            2 => StreamKind::Downstream,
            3 => StreamKind::Upstream,
            _ => return None,
        })
    }
}

/// What a stream callback asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next filter / forward the data.
    Continue,
    /// Stop until `proxy_continue_stream` (or a local response).
    Pause,
}

impl Action {
    /// From the callback's return value (anything but 1 continues, as in cpp-host).
    pub fn from_i32(v: i32) -> Self {
        if v == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// Pairs larger than this are refused as a serialized map (cpp-host's bound).
pub const MAX_MAP_PAIRS: usize = 1024;

/// Serializes pairs: `count, (key_len, val_len)×count, key\0 val\0 …` (little-endian
/// u32). An empty map is four zero bytes; a lone 0x00 would trap Rust-SDK guests.
pub fn serialize_map<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(pairs: impl Fn() -> I) -> Vec<u8> {
    let (n, bytes) = pairs().fold((0usize, 0usize), |(n, b), (k, v)| (n + 1, b + k.len() + v.len() + 2));
    let mut out = Vec::with_capacity(4 + n * 8 + bytes);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs() {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized map; `None` when the bytes do not hold what they claim.
pub fn parse_map(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    let n = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    if n > MAX_MAP_PAIRS {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(data.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
    }
    let mut pos = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = data.get(pos..pos + k)?;
        pos += k + 1;
        let val = data.get(pos..pos + v)?;
        pos += v + 1;
        if pos > data.len() {
            return None;
        }
        out.push((key, val));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip_matches_the_spec_layout() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"bb", b"")];
        let bytes = serialize_map(|| pairs.iter().copied());
        assert_eq!(
            bytes,
            [2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', 0, b'1', 0, b'b', b'b', 0, 0]
        );
        assert_eq!(parse_map(&bytes).unwrap(), pairs);
    }

    #[test]
    fn empty_map_is_four_zero_bytes_and_truncated_maps_are_refused() {
        assert_eq!(serialize_map(std::iter::empty), [0, 0, 0, 0]);
        assert_eq!(parse_map(&[]).unwrap().len(), 0);
        assert!(parse_map(&[1, 0, 0, 0, 5, 0, 0, 0]).is_none());
        assert!(parse_map(&[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, b'a']).is_none());
        assert!(parse_map(&[0xff, 0xff, 0, 0]).is_none());
    }
}
