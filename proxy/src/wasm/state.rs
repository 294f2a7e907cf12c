//! What one instance's host functions act on: the plugin it runs, the stream contexts
//! it serves (their header maps, buffered bodies, filter state and wake-ups), deferred
//! actions, callout bookkeeping and the memory cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use wasmtime::{Memory, TypedFunc};

use crate::runtime::plugin::Plugin;

/// Request pseudo-headers and headers, as the guest sees them.
#[derive(Debug, Clone)]
pub struct ReqHead {
    /// `:method`.
    pub method: Method,
    /// `:path` (and authority when absolute).
    pub uri: Uri,
    /// Regular headers (`host` serves `:authority`).
    pub headers: HeaderMap,
    /// `:scheme`.
    pub scheme: &'static str,
}

/// Response `:status` and headers.
#[derive(Debug, Clone)]
pub struct RespHead {
    /// `:status`.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
}

/// Facts of a downstream connection for properties, computed once per connection and
/// shared by every stream of its requests.
#[derive(Debug)]
pub struct ConnFacts {
    /// Client address (after PROXY protocol).
    pub source: SocketAddr,
    /// Local address the client connected to.
    pub destination: SocketAddr,
    /// Downstream connection number.
    pub connection_id: u64,
    /// TLS version, SNI and verified client subject, when TLS.
    pub tls: Option<(&'static str, Option<String>, Option<String>)>,
}

/// Connection and request facts for properties; set by the host, read-only to guests.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The connection's.
    pub conn: Rc<ConnFacts>,
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// Request start (`request.time` is derived from it and the clock when asked).
    pub start: Instant,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Route name.
    pub route: Arc<str>,
    /// What the request's filters share.
    pub request: Rc<RequestState>,
    /// Chosen cluster.
    pub cluster: Option<Arc<str>>,
    /// Chosen endpoint.
    pub upstream: Option<SocketAddr>,
    /// Request body bytes received so far.
    pub request_size: u64,
    /// Response body bytes sent so far.
    pub response_size: u64,
}

/// What every filter of one request sees alike: filter state set by any of them (Envoy
/// keeps one filter state per stream) and the route's metadata.
#[derive(Debug, Default)]
pub struct RequestState {
    /// Filter state by key (`proxy_set_property`, `set_envoy_filter_state`).
    pub filter_state: std::cell::RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    /// `[[route]] metadata` as JSON (namespaces of `filter_metadata`).
    pub metadata: Option<Arc<serde_json::Value>>,
}

/// A local response asked for by the guest.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// gRPC status for a trailers-only gRPC answer.
    pub grpc_status: Option<u32>,
    /// `status_code_details`.
    pub details: String,
}

/// State of one HTTP (or L4) stream context.
#[derive(Debug)]
pub struct StreamData {
    /// Request head while the request phase may change it (a copy afterwards).
    pub req: Option<ReqHead>,
    /// Response head.
    pub resp: Option<RespHead>,
    /// Request trailers.
    pub req_trailers: Option<HeaderMap>,
    /// Response trailers.
    pub resp_trailers: Option<HeaderMap>,
    /// Request body buffered for this filter (the current chunk, or all while paused).
    pub req_body: Bytes,
    /// Response body buffered for this filter.
    pub resp_body: Bytes,
    /// Properties.
    pub facts: Facts,
    /// Filter state set by `proxy_set_property`.
    pub props: HashMap<Vec<u8>, Vec<u8>>,
    /// Wakes the request task waiting on this paused stream.
    pub waiter: Option<tokio::sync::oneshot::Sender<()>>,
    /// `proxy_continue_stream` was called since the last check.
    pub resumed: bool,
    /// A local response to send instead of the upstream's.
    pub local: Option<LocalReply>,
    /// `proxy_close_stream` was called.
    pub closed: bool,
}

impl StreamData {
    /// A fresh stream with these facts.
    pub fn new(facts: Facts) -> Self {
        StreamData {
            req: None,
            resp: None,
            req_trailers: None,
            resp_trailers: None,
            req_body: Bytes::new(),
            resp_body: Bytes::new(),
            facts,
            props: HashMap::new(),
            waiter: None,
            resumed: false,
            local: None,
            closed: false,
        }
    }

    /// Empties a finished stream for reuse (its facts are replaced when reused).
    /// Every field is named, so a field added later cannot be forgotten here.
    pub fn clear(&mut self) {
        let StreamData {
            req,
            resp,
            req_trailers,
            resp_trailers,
            req_body,
            resp_body,
            facts: _,
            props,
            waiter,
            resumed,
            local,
            closed,
        } = self;
        *req = None;
        *resp = None;
        *req_trailers = None;
        *resp_trailers = None;
        *req_body = Bytes::new();
        *resp_body = Bytes::new();
        props.clear();
        *waiter = None;
        *resumed = false;
        *local = None;
        *closed = false;
    }

    /// Wakes the task waiting on this stream, if any.
    pub fn wake(&mut self) {
        if let Some(w) = self.waiter.take() {
            let _ = w.send(());
        }
    }
}

/// Appends a chunk to a body buffer without copying when the buffer is empty (the
/// usual case: a filter that does not pause sees each chunk alone).
pub fn append(buf: &mut Bytes, data: Bytes) {
    if buf.is_empty() {
        *buf = data;
    } else if !data.is_empty() {
        let mut m = BytesMut::with_capacity(buf.len() + data.len());
        m.extend_from_slice(buf);
        m.extend_from_slice(&data);
        *buf = m.freeze();
    }
}

/// An `http_call` answer, readable during `on_http_call_response`.
#[derive(Debug, Default)]
pub struct CalloutResponse {
    /// Headers with `:status`.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Something a guest asked for that takes effect once its callback returns.
#[derive(Debug)]
pub enum Deferred {
    /// Resume the stream.
    Continue,
    /// Answer locally.
    Local(LocalReply),
    /// Reset / close the stream.
    Close,
}

/// The store data of one instance.
pub struct HostState {
    /// The plugin this instance runs.
    pub plugin: Arc<Plugin>,
    /// The worker it serves (none for the validation trial run).
    pub worker: Weak<dyn super::link::WorkerLink>,
    /// What the node's filters share (shared data, queues, defined metrics).
    pub host: Arc<super::HostShared>,
    /// The instance itself (for callouts and ticks that come back later).
    pub inbox: Weak<std::cell::RefCell<dyn Inbox>>,
    /// The guest's `memory` export.
    pub memory: Option<Memory>,
    /// The guest's allocator.
    pub malloc: Option<TypedFunc<i32, i32>>,
    /// Root context id.
    pub root: u32,
    /// Context the running callback acts on.
    pub effective: u32,
    /// Stream contexts, boxed: a stream's state is about a kilobyte, which would
    /// otherwise be copied into the table on create and out of it on delete, and
    /// would spread the table's keys a kilobyte apart.
    pub streams: HashMap<u32, Box<StreamData>, IdHash>,
    /// Boxes of finished streams, cleared, for the next streams to reuse.
    pub spare: Vec<Box<StreamData>>,
    /// Actions to apply when the current callback returns.
    pub actions: Vec<(u32, Deferred)>,
    /// Buffer 8 (foreign-function arguments).
    pub call_data: Vec<u8>,
    /// The callout answer being delivered.
    pub callout: Option<CalloutResponse>,
    /// Callout token → owning context.
    pub callouts: HashMap<u32, u32, IdHash>,
    /// Next callout token (even, never 0).
    pub next_token: u32,
    /// Open gRPC calls and streams by token.
    pub grpc: HashMap<u32, OpenCall, IdHash>,
    /// Last gRPC token handed out (odd).
    pub next_grpc_token: u32,
    /// What the running gRPC callback reads (message, metadata).
    pub grpc_now: Option<Delivery>,
    /// Tick period asked for (ms, 0 = off) and whether it changed.
    pub tick: (u32, bool),
    /// Root `proxy_done` was called.
    pub done_called: bool,
    /// The memory cap.
    pub limits: MemoryCap,
    /// Queues registered whose `on_queue_ready` watcher is not started yet.
    pub new_queues: Vec<(u32, std::sync::Arc<tokio::sync::Notify>)>,
    /// Status and message of the last callout (`proxy_get_status`).
    pub last_status: (u32, Vec<u8>),
    /// stdout/stderr lines being assembled.
    pub output: super::output::GuestOutput,
    /// Header names and values this instance writes.
    pub header_cache: super::header_cache::HeaderCache,
}

/// Context ids, callout tokens and plugin uids are unique integers Tandem hands out
/// (never client input): hash them as they are.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// The identity hasher for context ids.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Caps an instance's linear memory and remembers a refusal (to tell a memory fault
/// from other traps).
#[derive(Debug)]
pub struct MemoryCap {
    /// Bytes.
    pub limit: usize,
    /// Growth was refused.
    pub refused: bool,
    /// The plugin's counters: every size a memory is allowed to reach (its first
    /// allocation included) raises `memory_bytes`, so the gauge needs no sampling.
    pub stats: std::sync::Arc<crate::stats::PluginStats>,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.stats
            .memory_bytes
            .fetch_max(desired as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// An open call or stream of an instance.
#[derive(Debug)]
pub struct OpenCall {
    /// The context that opened it (its answers are dropped once it is gone).
    pub owner: u32,
    /// Where `proxy_grpc_send` queues messages (streams; `None` once half-closed).
    pub sender: Option<tokio::sync::mpsc::Sender<Bytes>>,
    /// The task running it (aborted on cancel).
    pub task: tokio::task::AbortHandle,
    /// A unary call (it ends with its response message).
    pub unary: bool,
}

/// What the running gRPC callback may read: the received message (buffer 5) and the
/// metadata (maps 4 and 5).
#[derive(Debug, Default)]
pub struct Delivery {
    /// The message of `proxy_on_grpc_receive`.
    pub message: Bytes,
    /// Initial metadata (response headers).
    pub initial: Pairs,
    /// Trailing metadata.
    pub trailing: Pairs,
}

/// What the call's task reports to the instance.
#[derive(Debug)]
pub enum Event {
    /// Response headers of a stream.
    InitialMetadata(Pairs),
    /// One message.
    Message(Bytes),
    /// Trailers of a stream.
    TrailingMetadata(Pairs),
    /// The end, with the gRPC status and message.
    Close(u32, String),
}

/// Header or metadata pairs as the ABI passes them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An instance as the calls it started see it when their answer comes back (a
/// callout's response, a gRPC call's messages): held weakly, so a retired instance is
/// not kept alive by calls still out.
pub trait Inbox {
    /// Runs `on_http_call_response` for callout `token` (`None`: it failed).
    fn deliver_callout(&mut self, token: u32, resp: Option<CalloutResponse>);
    /// Runs the gRPC callback for `ev` of call `token`; false when nobody listens any more.
    fn deliver_grpc(&mut self, token: u32, ev: Event) -> bool;
}
