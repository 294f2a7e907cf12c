//! A response body read from the upstream socket as the downstream side asks for it;
//! the connection goes back to the pool the moment the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::codec::{decode_body, Framing, Step};
use super::{finish, H1Conn, H1Error, Home};

/// A response body read from the upstream socket as the downstream side asks for it.
pub struct Body {
    pub(super) conn: Option<H1Conn>,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
    pub(super) home: Home,
}

impl Body {
    fn done(&mut self) {
        self.framing = Framing::Empty;
        if let Some(c) = self.conn.take() {
            finish(c, self.reusable, &self.home);
        }
    }

    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        match self.conn.as_mut() {
            Some(c) => c.poll_fill(cx).map_err(H1Error::Io),
            None => Poll::Ready(Ok(0)),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode_body(&mut this.framing, &mut conn.buf) {
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Empty;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Step::Data(data)) => {
                    if this.framing == Framing::Empty {
                        this.done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(t)) => {
                    this.done();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Step::End) => {
                    this.done();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
            }
            // More bytes are needed.
            match std::task::ready!(this.fill(cx)) {
                Ok(0) if this.framing == Framing::Eof => {
                    // The upstream ends this body by closing: nothing to give back.
                    this.reusable = false;
                    this.done();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    this.framing = Framing::Empty;
                    return Poll::Ready(Some(Err(H1Error::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Empty;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
