//! Bodies through the chain: request body in filter order, response body in reverse,
//! buffered per filter while one pauses.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::wasm::abi::Action;

use super::chain::*;
use super::*;

/// Error ending a filtered body.
#[derive(Debug, thiserror::Error)]
pub enum FilterBodyError {
    /// A filter failed closed or closed the stream.
    #[error("filter stopped the stream")]
    Stopped,
    /// A filter answered locally after the headers went upstream.
    #[error("filter answered locally")]
    Local,
}

/// A body passed through the chain's body callbacks (request: forward order;
/// response: reverse order), with per-filter buffering while a filter pauses.
pub struct FilteredBody<B> {
    inner: B,
    chain: ChainRef,
    response: bool,
    /// Data ready to go on (at most one chunk per feed) and trailers after it.
    ready: Option<Bytes>,
    ready_trailers: Option<HeaderMap>,
    /// Waiting for filter `.0` (position in processing order) to resume, after eos.
    waiting: Option<(usize, tokio::sync::oneshot::Receiver<()>)>,
    inner_done: bool,
    eos_sent: bool,
    /// The inner body's size, passed on while a `content-length` header fixes it anyway.
    hint: Option<SizeHint>,
}

impl<B> FilteredBody<B> {
    /// Wraps `inner`. `fixed_length`: the message keeps a `content-length` header, so
    /// filters cannot change the length and the inner size hint stays true.
    pub fn new(inner: B, chain: ChainRef, response: bool, fixed_length: bool) -> Self
    where
        B: Body,
    {
        let hint = fixed_length.then(|| inner.size_hint());
        FilteredBody {
            hint,
            inner,
            chain,
            response,
            ready: None,
            ready_trailers: None,
            waiting: None,
            inner_done: false,
            eos_sent: false,
        }
    }

    /// Number of filters.
    fn len(&self) -> usize {
        self.chain.borrow().entries.len()
    }

    /// The filter at position `pos` of the processing order.
    fn at(&self, pos: usize, n: usize) -> usize {
        if self.response {
            n - 1 - pos
        } else {
            pos
        }
    }

    /// Feeds `data` to the filters from position `from` on. Returns an error to end
    /// the body; otherwise frames ready go to `self.ready`.
    fn feed(&mut self, from: usize, mut data: Bytes, eos: bool) -> Result<(), FilterBodyError> {
        let n = self.len();
        for pos in from..n {
            let idx = self.at(pos, n);
            let Some((inst, ctx)) = live_entry(&self.chain, idx) else {
                continue;
            };
            let mut i = inst.borrow_mut();
            let Some(s) = i.stream(ctx) else { continue };
            let buf = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            // Moved in, taken back below: the chunk goes on from the buffer.
            crate::wasm::state::append(buf, std::mem::take(&mut data));
            let size = buf.len();
            let r = i.on_body(self.response, ctx, size, eos);
            let Some(s) = i.stream(ctx) else {
                return Err(FilterBodyError::Stopped);
            };
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            if s.closed {
                return Err(FilterBodyError::Stopped);
            }
            let buf = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            match r {
                Ok(Action::Continue) => data = std::mem::take(buf),
                Ok(Action::Pause) if s.resumed => {
                    s.resumed = false;
                    data = std::mem::take(buf);
                }
                Ok(Action::Pause) => {
                    if eos {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        s.waiter = Some(tx);
                        self.waiting = Some((pos, rx));
                    }
                    return Ok(());
                }
                Err(f) => {
                    let kept = std::mem::take(buf);
                    drop(i);
                    fail_entry(&self.chain, idx, &f).map_err(|_| FilterBodyError::Stopped)?;
                    data = kept;
                }
            }
        }
        if !data.is_empty() {
            self.ready = Some(data);
        }
        if eos {
            self.eos_sent = true;
        }
        Ok(())
    }

    /// Releases what filter at position `pos` buffered, after it resumed at eos.
    fn release(&mut self, pos: usize) -> Result<(), FilterBodyError> {
        let idx = self.at(pos, self.len());
        let data = {
            let c = self.chain.borrow();
            let e = &c.entries[idx];
            let mut i = e.inst.borrow_mut();
            let Some(s) = i.stream(e.ctx) else {
                return Err(FilterBodyError::Stopped);
            };
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            if s.closed {
                return Err(FilterBodyError::Stopped);
            }
            s.resumed = false;
            let buf: &mut Bytes = if self.response {
                &mut s.resp_body
            } else {
                &mut s.req_body
            };
            std::mem::take(buf)
        };
        self.feed_after(pos, data)
    }

    fn feed_after(&mut self, pos: usize, data: Bytes) -> Result<(), FilterBodyError> {
        self.feed(pos + 1, data, true)
    }

    fn trailers(&mut self, mut t: HeaderMap) -> Result<HeaderMap, FilterBodyError> {
        let n = self.len();
        for pos in 0..n {
            let idx = self.at(pos, n);
            let Some((inst, ctx)) = live_entry(&self.chain, idx) else {
                continue;
            };
            let mut i = inst.borrow_mut();
            let Some(s) = i.stream(ctx) else { continue };
            let n = t.len();
            if self.response {
                s.resp_trailers = Some(t);
            } else {
                s.req_trailers = Some(t);
            }
            let r = i.on_trailers(self.response, ctx, n);
            let s = i.stream(ctx).ok_or(FilterBodyError::Stopped)?;
            t = if self.response {
                s.resp_trailers.clone()
            } else {
                s.req_trailers.clone()
            }
            .unwrap_or_default();
            if s.local.is_some() {
                return Err(FilterBodyError::Local);
            }
            drop(i);
            if let Err(f) = r {
                fail_entry(&self.chain, idx, &f).map_err(|_| FilterBodyError::Stopped)?;
            }
        }
        Ok(t)
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(d) = this.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if let Some(t) = this.ready_trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if let Some((pos, rx)) = this.waiting.as_mut() {
                let pos = *pos;
                let r = std::task::ready!(Pin::new(rx).poll(cx));
                this.waiting = None;
                if r.is_err() {
                    return Poll::Ready(Some(Err(Box::new(FilterBodyError::Stopped))));
                }
                if let Err(e) = this.release(pos) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                continue;
            }
            if this.inner_done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        if eos {
                            this.inner_done = true;
                        }
                        if let Err(e) = this.feed(0, data, eos) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.inner_done = true;
                            this.eos_sent = true;
                            match this.trailers(t) {
                                Ok(t) => this.ready_trailers = Some(t),
                                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                            }
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.inner_done = true;
                    if !this.eos_sent {
                        if let Err(e) = this.feed(0, Bytes::new(), true) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done && self.ready.is_none() && self.ready_trailers.is_none() && self.waiting.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint.unwrap_or_default()
    }
}
