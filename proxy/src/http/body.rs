//! The response body Tandem sends downstream: either the upstream's body streamed
//! through, or a short local body. It carries a [`Completion`] that runs once when the
//! body ends or is dropped: it releases load counters and writes the access log line.
//! (An HTTP/1.1 upstream connection goes back to its pool from the upstream body itself,
//! once that has been read to the end.)

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, AccessRecord};
use crate::stats::{ClusterStats, EndpointStats};
use crate::upstream::ResponseBody;

/// Work to do when the response is finished.
pub(crate) struct Completion {
    /// Endpoint whose active count to release.
    pub endpoint: Option<Arc<EndpointStats>>,
    /// Cluster whose active count to release.
    pub cluster: Option<Arc<ClusterStats>>,
    /// Route whose gRPC status counters to bump.
    pub route: Option<Arc<crate::stats::RouteStats>>,
    /// Access log record to complete and send.
    pub record: Option<(Box<AccessRecord>, AccessLog)>,
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

use crate::upstream::request_body::BoxError;
use crate::wasm::http::FilteredBody;

/// Body of every response Tandem sends.
pub(crate) struct ProxyBody {
    kind: Kind,
    done: Option<Box<Completion>>,
    /// Keeps the downstream connection from releasing its buffers until hyper has
    /// sent this body and dropped it.
    open: Option<crate::upstream::request_body::OpenBody>,
}

impl ProxyBody {
    /// Streams an upstream body.
    pub(crate) fn upstream(body: ResponseBody, done: Option<Box<Completion>>) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            done,
            open: None,
        }
    }

    /// Streams an upstream body through the request's filters.
    pub(crate) fn filtered(body: FilteredBody<ResponseBody>, done: Option<Box<Completion>>) -> Self {
        ProxyBody {
            kind: Kind::Filtered(Box::new(body)),
            done,
            open: None,
        }
    }

    /// A local body (errors, admin pages, demo answers).
    pub(crate) fn local(bytes: impl Into<Bytes>, done: Option<Box<Completion>>) -> Self {
        let b: Bytes = bytes.into();
        ProxyBody {
            kind: Kind::Local((!b.is_empty()).then_some(b)),
            done,
            open: None,
        }
    }

    /// Counts this body as open on its downstream connection until it is dropped.
    pub(crate) fn hold_open(&mut self, open: crate::upstream::request_body::OpenBody) {
        self.open = Some(open);
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
