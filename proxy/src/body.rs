//! The response body Tandem sends downstream: either the upstream's body streamed
//! through, or a short local body. It carries a [`Completion`] that runs once when the
//! body ends or is dropped: it releases load counters and writes the access log line.
//! (An HTTP/1.1 upstream connection goes back to its pool from the upstream body itself,
//! once that has been read to the end.)

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, AccessRecord};
use crate::stats::{ClusterStats, EndpointStats};
use crate::upstream::ResponseBody;

/// Work to do when the response is finished.
pub struct Completion {
    /// Endpoint whose active count to release.
    pub endpoint: Option<Arc<EndpointStats>>,
    /// Cluster whose active count to release.
    pub cluster: Option<Arc<ClusterStats>>,
    /// Route whose gRPC status counters to bump.
    pub route: Option<Arc<crate::stats::RouteStats>>,
    /// Access log record to complete and send.
    pub record: Option<(AccessRecord, AccessLog)>,
    /// Request start.
    pub start: Instant,
    /// Body bytes sent so far.
    pub bytes: u64,
    /// gRPC status from the response headers or trailers.
    pub grpc_status: Option<u16>,
    /// The request's filter chain, kept until the response ends (`on_log` follows).
    pub filters: Option<crate::wasm::http::ChainRef>,
}

impl Completion {
    fn finish(&mut self, complete: bool) {
        if let Some(e) = self.endpoint.take() {
            e.active.fetch_sub(1, Relaxed);
        }
        if let Some(c) = self.cluster.take() {
            c.active.fetch_sub(1, Relaxed);
        }
        if let (Some(r), Some(g)) = (self.route.take(), self.grpc_status) {
            r.grpc_status(g);
        }
        if let Some((mut rec, log)) = self.record.take() {
            rec.bytes = self.bytes;
            rec.grpc_status = self.grpc_status;
            rec.duration = self.start.elapsed();
            if !complete && rec.reason == "ok" {
                rec.reason = "downstream-abort";
            }
            log.log(rec);
        }
        self.filters = None;
    }
}

enum Kind {
    Upstream(ResponseBody),
    Filtered(Box<FilteredBody<ResponseBody>>),
    Local(Option<Bytes>),
}

/// Error type of the bodies Tandem sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

use crate::wasm::http::FilteredBody;

/// Body of every response Tandem sends.
pub struct ProxyBody {
    kind: Kind,
    done: Option<Box<Completion>>,
}

impl ProxyBody {
    /// Streams an upstream body.
    pub fn upstream(body: ResponseBody, done: Option<Box<Completion>>) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            done,
        }
    }

    /// Streams an upstream body through the request's filters.
    pub fn filtered(body: FilteredBody<ResponseBody>, done: Option<Box<Completion>>) -> Self {
        ProxyBody {
            kind: Kind::Filtered(Box::new(body)),
            done,
        }
    }

    /// A local body (errors, admin pages, demo answers).
    pub fn local(bytes: impl Into<Bytes>, done: Option<Box<Completion>>) -> Self {
        let b: Bytes = bytes.into();
        ProxyBody {
            kind: Kind::Local((!b.is_empty()).then_some(b)),
            done,
        }
    }

    fn complete(&mut self) {
        if let Some(mut d) = self.done.take() {
            d.finish(true);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.kind {
            Kind::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Filtered(f) => Pin::new(&mut **f).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = this.done.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        d.bytes += data.len() as u64;
                    } else if let Some(t) = frame.trailers_ref() {
                        if let Some(g) = t
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                        {
                            d.grpc_status = Some(g);
                        }
                    }
                }
                if this.is_end_stream() {
                    this.complete();
                }
            }
            Poll::Ready(None) => this.complete(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut d) = this.done.take() {
                    // The head's status was counted when it arrived; the break is counted
                    // on its own so a 2xx that never finished is not read as a success.
                    if let Some(e) = &d.endpoint {
                        e.body_resets.fetch_add(1, Relaxed);
                    }
                    if let Some((rec, _)) = d.record.as_mut() {
                        rec.reason = "upstream-reset-body";
                    }
                    d.finish(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_none(),
            Kind::Upstream(inc) => inc.is_end_stream(),
            Kind::Filtered(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inc) => inc.size_hint(),
            Kind::Filtered(f) => f.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(mut d) = self.done.take() {
            let complete = self.is_end_stream();
            d.finish(complete);
        }
    }
}

/// Whose fault a failed request body is: the client's, always (an upstream that stops
/// reading is caught by the exchange's timers, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Invalid framing (a bad chunk, a body longer than announced): 400.
    Framing,
    /// The client closed the connection or reset the stream mid-body: 499.
    Abort,
}

/// A client's request body failed: the cause, and what kind of client fault it is.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {source}")]
pub struct DownstreamBodyError {
    /// Framing error or abort.
    pub fault: BodyFault,
    /// hyper's error.
    #[source]
    pub source: hyper::Error,
}

impl DownstreamBodyError {
    /// Classifies hyper's error for a request body.
    pub fn new(source: hyper::Error) -> Self {
        // hyper reports a bad chunk or a length overrun as an invalid-data/-input I/O
        // error; anything else (EOF, reset, a cancelled h2 stream) is the client leaving.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        let mut fault = if source.is_parse() {
            BodyFault::Framing
        } else {
            BodyFault::Abort
        };
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                ) {
                    fault = BodyFault::Framing;
                }
            }
            cur = e.source();
        }
        DownstreamBodyError { fault, source }
    }

    /// Finds a client body error in an error's source chain (the upstream side wraps it).
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a DownstreamBodyError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(e) = cur {
            if let Some(d) = e.downcast_ref::<DownstreamBodyError>() {
                return Some(d);
            }
            cur = e.source();
        }
        None
    }
}

/// How far a streamed request body has come, shared between the body (which writes as
/// frames arrive) and the exchange's timer (which reads): the route timeout starts when
/// the client has sent its whole request, and `request_body_timeout` bounds the time
/// Tandem waits on the client between frames.
#[derive(Debug)]
pub struct BodyProgress {
    /// When the last frame arrived (or the body was first polled).
    pub last: Cell<Instant>,
    /// The last poll found no frame ready: Tandem is waiting on the client (not on an
    /// upstream that stopped reading).
    pub waiting: Cell<bool>,
    /// When the client's body ended.
    pub done: Cell<Option<Instant>>,
    /// The client's body failed, and how: the exchange's failure is then the client's.
    pub fault: Cell<Option<BodyFault>>,
}

/// The client's request body on its way upstream: its errors say whose fault they are,
/// and its progress is noted for the exchange's timers.
pub struct ClientBody {
    inc: Incoming,
    progress: Rc<BodyProgress>,
}

impl ClientBody {
    /// Wraps a request body; `progress` is what the timers read.
    pub fn new(inc: Incoming, progress: Rc<BodyProgress>) -> Self {
        ClientBody { inc, progress }
    }

    /// A progress record for a body that starts now (already done if it is empty).
    pub fn progress_of(inc: &Incoming, now: Instant) -> Rc<BodyProgress> {
        Rc::new(BodyProgress {
            last: Cell::new(now),
            waiting: Cell::new(false),
            done: Cell::new(inc.is_end_stream().then_some(now)),
            fault: Cell::new(None),
        })
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = DownstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamBodyError>>> {
        let this = &mut *self;
        let p = &this.progress;
        match Pin::new(&mut this.inc).poll_frame(cx) {
            Poll::Pending => {
                p.waiting.set(true);
                Poll::Pending
            }
            Poll::Ready(r) => {
                let now = Instant::now();
                p.waiting.set(false);
                p.last.set(now);
                match r {
                    Some(Ok(f)) => {
                        if this.inc.is_end_stream() && p.done.get().is_none() {
                            p.done.set(Some(now));
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Err(e)) => {
                        let e = DownstreamBodyError::new(e);
                        p.fault.set(Some(e.fault));
                        Poll::Ready(Some(Err(e)))
                    }
                    None => {
                        if p.done.get().is_none() {
                            p.done.set(Some(now));
                        }
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inc.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inc.size_hint()
    }
}

/// The request body Tandem sends upstream: the client's body streamed through, or a
/// buffered copy that can be replayed on a retry. The default is an empty body.
pub enum UpstreamBody {
    /// Streamed from the client (not replayable).
    Stream(ClientBody),
    /// Streamed from the client through the route's filters.
    Filtered(Box<FilteredBody<ClientBody>>),
    /// Buffered (replayable); `None` once sent.
    Full(Option<Bytes>),
    /// Chunks a filter's gRPC stream sends as it goes; ends when the sender is dropped.
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Default for UpstreamBody {
    fn default() -> Self {
        UpstreamBody::Full(None)
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::Stream(_) => "Stream",
            UpstreamBody::Filtered(_) => "Filtered",
            UpstreamBody::Full(_) => "Full",
            UpstreamBody::Channel(_) => "Channel",
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            UpstreamBody::Stream(inc) => Pin::new(inc).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Filtered(f) => Pin::new(&mut **f).poll_frame(cx),
            UpstreamBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Channel(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(inc) => inc.is_end_stream(),
            UpstreamBody::Filtered(f) => f.is_end_stream(),
            UpstreamBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            UpstreamBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(inc) => inc.size_hint(),
            UpstreamBody::Filtered(f) => f.size_hint(),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Channel(_) => SizeHint::default(),
        }
    }
}
