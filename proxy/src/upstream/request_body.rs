//! The request body Tandem sends upstream: the client's body streamed through (its
//! errors say whose fault they are), a filtered or buffered copy, or a filter's stream.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Error type of the bodies Tandem sends.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body streamed through the route's filters; boxed, because the filters'
/// sandbox sits above the upstream side.
pub(crate) type FilteredRequestBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;

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
    /// Kept until the body ends or is dropped: the downstream connection counts its
    /// bodies still moving, and cannot release its buffers mid-message.
    hold: Option<OpenBody>,
}

/// What counts a connection's bodies still moving (the downstream connection).
pub trait BodyCount {
    /// Adds `delta` (one body more or one less).
    fn add_open(&self, delta: i32);
}

/// Holds a body open in its [`BodyCount`] until dropped.
pub struct OpenBody(Rc<dyn BodyCount>);

impl OpenBody {
    /// Counts one more open body on `count`.
    pub fn new(count: Rc<dyn BodyCount>) -> Self {
        count.add_open(1);
        OpenBody(count)
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.add_open(-1);
    }
}

impl ClientBody {
    /// Wraps a request body; `progress` is what the timers read, `hold` what the body
    /// keeps until it ends.
    pub fn new(inc: Incoming, progress: Rc<BodyProgress>, hold: Option<OpenBody>) -> Self {
        ClientBody { inc, progress, hold }
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
                        if this.inc.is_end_stream() {
                            this.hold = None;
                            if p.done.get().is_none() {
                                p.done.set(Some(now));
                            }
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Err(e)) => {
                        this.hold = None;
                        let e = DownstreamBodyError::new(e);
                        p.fault.set(Some(e.fault));
                        Poll::Ready(Some(Err(e)))
                    }
                    None => {
                        this.hold = None;
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
    Filtered(FilteredRequestBody),
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
            UpstreamBody::Filtered(f) => f.as_mut().poll_frame(cx),
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
