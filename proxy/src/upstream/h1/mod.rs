//! HTTP/1.1 to upstreams, driven by the request's own task.
//!
//! hyper's client runs each connection as a task of its own and hands every request,
//! response head and body chunk across channels, waking two tasks per exchange. Here
//! the request task writes the request and reads the response head itself, and the
//! response body reads straight from the upstream socket while the downstream
//! connection polls it. A response that arrives whole with its head (the common small
//! answer) gives its connection back to the pool before it is even sent downstream.
//!
//! Framing follows RFC 9112: requests are sent with `content-length` when the length
//! is known and `transfer-encoding: chunked` otherwise; responses are read by
//! status/method (no body for HEAD, 1xx, 204, 304), then chunked, then content-length,
//! else until the upstream closes. Interim 1xx answers are skipped. A response that
//! arrives while the request body is still being sent ends the send, and that
//! connection is not reused.

//!
//! `codec.rs` holds the wire format (response heads, request heads, body framing: pure
//! functions, fuzzed); `body.rs` the response body that reads from the socket; this
//! file the connection and one exchange on it.

mod body;
mod codec;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use body::Body;
pub(crate) use codec::{decode_body, parse_head_for_fuzzing, Framing, Step};
use codec::{encode_head, parse_head, FieldNames, Head, MAX_HEAD};

use super::{OpenGuard, Pool};
use crate::runtime::PoolSettings;
use crate::send_batch::BatchedStream;
use crate::upstream::{BoxError, UpstreamBody};

/// Request body chunks up to this size are copied behind the head so that both go out
/// in one write; larger ones are written from their own buffer.
const COALESCE: usize = 16 * 1024;
/// Free space made in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;

/// Why an HTTP/1.1 exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Reading or writing the socket failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before any byte of a response.
    #[error("upstream closed the connection before responding")]
    ClosedBeforeResponse,
    /// The upstream closed the connection inside a response.
    #[error("upstream closed the connection inside the response")]
    Truncated,
    /// The response broke HTTP/1.1 framing or syntax.
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
    /// The response head did not fit in [`MAX_HEAD`] bytes.
    #[error("upstream response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The client's request body failed while it was being forwarded.
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
}

/// The byte stream under an upstream connection: plain TCP or TLS (origination).
#[derive(Debug)]
pub(crate) enum Io {
    /// Plain TCP.
    Plain(BatchedStream),
    /// TLS to the upstream.
    Tls(Box<tokio_rustls::client::TlsStream<BatchedStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 upstream connection with its buffers. It lives in the pool while idle,
/// in the request task while a request is sent, and in the response body while the
/// response streams.
#[derive(Debug)]
pub(crate) struct H1Conn {
    io: Io,
    /// Bytes read and not yet consumed (empty between exchanges on a healthy connection).
    buf: BytesMut,
    /// The request head (and small body chunks) waiting to be written; reused.
    out: Vec<u8>,
    /// The field names of the responses it carried.
    names: FieldNames,
    /// Endpoint, for the pool key.
    pub(super) addr: SocketAddr,
    /// Pool profile of the cluster that made it.
    pub(super) profile: u64,
    /// When it was opened (max age).
    pub(super) born: Instant,
    /// Start of the request that used it last; idle time counts from here.
    pub(super) used_ns: u64,
    /// Bound to one client (it carried that client's PROXY header): never pooled.
    pub(super) private: bool,
    /// Counts the connection open for its cluster while it exists.
    _open: OpenGuard,
}

impl H1Conn {
    /// Wraps a connected stream.
    pub(super) fn new(io: Io, addr: SocketAddr, profile: u64, born: Instant, private: bool, open: OpenGuard) -> Self {
        H1Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::with_capacity(1024),
            names: FieldNames::default(),
            addr,
            profile,
            born,
            used_ns: crate::clock::ns_at(born),
            private,
            _open: open,
        }
    }

    /// Whether an idle connection can carry another request: nothing unread and not
    /// closed by the upstream. Never blocks (a pending read means "still open").
    pub(super) fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut rb).is_pending()
    }

    /// Reads more bytes into `buf`; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE / 2 {
            self.buf.reserve(READ_RESERVE);
        }
        let spare = self.buf.spare_capacity_mut();
        let mut rb = ReadBuf::uninit(spare);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n))
    }

    /// Reads until a final (non-1xx) response head is parsed.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_request, &mut self.names)? {
                    Some(head) if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS => {
                        continue
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.buf.len() > MAX_HEAD => return Poll::Ready(Err(H1Error::HeadTooLarge)),
                    None => {}
                }
            }
            let empty = self.buf.is_empty();
            if std::task::ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if empty {
                    H1Error::ClosedBeforeResponse
                } else {
                    H1Error::Truncated
                }));
            }
        }
    }

    /// Writes `out[*pos..]`, then `extra`.
    fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        pos: &mut usize,
        extra: &mut Option<Bytes>,
    ) -> Poll<io::Result<()>> {
        while *pos < self.out.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        while let Some(b) = extra.as_mut() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, b))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            b.advance(n);
            if b.is_empty() {
                *extra = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where a finished connection goes back to.
pub(crate) struct Home {
    /// The worker's pool.
    pub pool: Rc<Pool>,
    /// The cluster's pool settings.
    pub settings: PoolSettings,
}

/// The request body side of one exchange.
struct Sender<'a> {
    body: &'a mut UpstreamBody,
    framing: Framing,
    /// Written part of the connection's `out`.
    pos: usize,
    /// A large data chunk to write after `out`.
    extra: Option<Bytes>,
    /// Every byte of the request is queued (`out`/`extra` may still hold some).
    done: bool,
    /// A frame was taken from a streamed body: the request cannot be sent again.
    consumed: bool,
}

impl Sender<'_> {
    /// Queues the next part of the body behind what is written; `Ready(Ok)` once the
    /// whole request is on the wire.
    fn poll_send(&mut self, conn: &mut H1Conn, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        loop {
            std::task::ready!(conn.poll_write_out(cx, &mut self.pos, &mut self.extra))?;
            if self.done {
                std::task::ready!(Pin::new(&mut conn.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            conn.out.clear();
            self.pos = 0;
            let frame = std::task::ready!(Pin::new(&mut *self.body).poll_frame(cx));
            self.consumed = true;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.queue_data(conn, data)?;
                        if self.body.is_end_stream() {
                            self.finish(conn, None)?;
                        }
                    }
                    Err(frame) => self.finish(conn, frame.into_trailers().ok().as_ref())?,
                },
                Some(Err(e)) => return Poll::Ready(Err(H1Error::RequestBody(e))),
                None => self.finish(conn, None)?,
            }
        }
    }

    fn queue_data(&mut self, conn: &mut H1Conn, data: Bytes) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(H1Error::RequestBody(
                        "request body is longer than its content-length".into(),
                    ));
                }
                *left -= n;
                if data.len() <= COALESCE {
                    conn.out.extend_from_slice(&data);
                } else {
                    self.extra = Some(data);
                }
            }
            Framing::Chunked(_) => {
                use std::io::Write;
                let _ = write!(conn.out, "{:x}\r\n", data.len());
                conn.out.extend_from_slice(&data);
                conn.out.extend_from_slice(b"\r\n");
            }
            Framing::Empty | Framing::Eof => {
                return Err(H1Error::RequestBody("request body where none was announced".into()));
            }
        }
        Ok(())
    }

    /// Ends the body: the last chunk (with trailers) or a length check.
    fn finish(&mut self, conn: &mut H1Conn, trailers: Option<&HeaderMap>) -> Result<(), H1Error> {
        self.done = true;
        match self.framing {
            Framing::Length(left) if left > 0 && self.extra.is_none() => Err(H1Error::RequestBody(
                "request body is shorter than its content-length".into(),
            )),
            Framing::Chunked(_) => {
                conn.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.into_iter().flatten() {
                    conn.out.extend_from_slice(name.as_str().as_bytes());
                    conn.out.extend_from_slice(b": ");
                    conn.out.extend_from_slice(value.as_bytes());
                    conn.out.extend_from_slice(b"\r\n");
                }
                conn.out.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Sends `req` on `conn` and reads the response head. The request stays with the
/// caller; on failure the flag says whether it may go out again on a fresh connection
/// (no response byte arrived and its body was not consumed).
pub(crate) async fn send(
    mut conn: H1Conn,
    req: &mut Request<UpstreamBody>,
    home: Home,
) -> Result<Response<super::ResponseBody>, (H1Error, bool)> {
    let head_request = req.method() == Method::HEAD;
    conn.out.clear();
    let framing = encode_head(&mut conn.out, req, req.body());
    let mut sender = Sender {
        body: req.body_mut(),
        framing,
        pos: 0,
        extra: None,
        done: framing == Framing::Empty,
        consumed: false,
    };
    // A buffered (replayable) body is sent from a cheap copy; the request keeps it.
    let full = match &*sender.body {
        UpstreamBody::Full(Some(b)) if !sender.done => Some(b.clone()),
        _ => None,
    };
    if let Some(b) = full {
        if !b.is_empty() {
            if let Err(e) = sender.queue_data(&mut conn, b) {
                return Err((e, false));
            }
        }
        if let Err(e) = sender.finish(&mut conn, None) {
            return Err((e, false));
        }
    }
    let mut sent = false;
    let outcome = std::future::poll_fn(|cx| {
        if !sent {
            match sender.poll_send(&mut conn, cx) {
                Poll::Ready(Ok(())) => sent = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // Also read while the body is still going out: an early answer ends the send.
        conn.poll_head(cx, head_request)
    })
    .await;
    let consumed = sender.consumed;
    let head = match outcome {
        Ok(head) => head,
        Err(e) => {
            let again = matches!(e, H1Error::Io(_) | H1Error::ClosedBeforeResponse) && !consumed;
            return Err((e, again));
        }
    };
    let reusable = head.keep_alive && sent;
    let mut resp = Response::new(super::ResponseBody::Empty);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    let body = match head.framing {
        Framing::Empty => {
            finish(conn, reusable, &home);
            super::ResponseBody::Empty
        }
        // The whole body came with the head: the connection goes back now.
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            let data = conn.buf.split_to(n as usize).freeze();
            finish(conn, reusable, &home);
            super::ResponseBody::Full(Some(data))
        }
        framing => super::ResponseBody::H1(Box::new(Body {
            conn: Some(conn),
            framing,
            reusable,
            home,
        })),
    };
    *resp.body_mut() = body;
    Ok(resp)
}

/// Returns a connection whose exchange is complete to the pool, or closes it.
fn finish(conn: H1Conn, reusable: bool, home: &Home) {
    if reusable && conn.buf.is_empty() {
        home.pool.checkin_h1(conn, &home.settings);
    }
}

#[cfg(test)]
mod tests {
    use super::codec::Chunk;
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let h = parse_head(&mut buf, head_request, &mut FieldNames::default())
            .unwrap()
            .expect("complete");
        (h, buf)
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let (h, rest) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"ok\n");
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Eof);
        assert!(!h.keep_alive);
        let (h, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.keep_alive);
        let (h, _) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn hop_by_hop_fields_are_not_stored() {
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
            false,
        );
        assert_eq!(h.headers.len(), 1);
        assert!(h.headers.contains_key("x-a"));
        // A Connection field naming another field stays, for the strip to act on.
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.headers.contains_key("connection") && h.headers.contains_key("x-hop"));
        let mut headers = h.headers;
        crate::http::headers::strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["content-length"]);
    }

    #[test]
    fn bad_heads_are_refused() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut b, false, &mut FieldNames::default()),
            Err(H1Error::Malformed(_))
        ));
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut b, false, &mut FieldNames::default()),
            Err(H1Error::Malformed(_))
        ));
        let mut b = BytesMut::from(&b"NOT HTTP\r\n\r\n"[..]);
        assert!(parse_head(&mut b, false, &mut FieldNames::default()).is_err());
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut b, false, &mut FieldNames::default()).unwrap().is_none());
        // Both framings: a smuggling vector, refused whatever their order.
        for h in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
        ] {
            let mut b = BytesMut::from(h);
            assert!(matches!(
                parse_head(&mut b, false, &mut FieldNames::default()),
                Err(H1Error::Malformed(_))
            ));
        }
        // Control characters and DEL in a value are refused (the values are taken as
        // httparse checked them); obs-text passes through byte for byte.
        for bad in [&b"\x01"[..], b"\x7f", b"a\rb", b"a\x00"] {
            let mut h = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
            h.extend_from_slice(bad);
            h.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            let mut b = BytesMut::from(&h[..]);
            assert!(
                parse_head(&mut b, false, &mut FieldNames::default()).is_err(),
                "{bad:?}"
            );
        }
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\tok\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(h.headers["x-a"].as_bytes(), b"caf\xc3\xa9\tok");
        // Every byte, in a value long enough for httparse's SIMD scan: the head parses
        // exactly when `HeaderValue` would take the value.
        for b in 0..=255u8 {
            let mut value = [b'a'; 41];
            value[20] = b;
            let mut h = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
            h.extend_from_slice(&value);
            h.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            let mut buf = BytesMut::from(&h[..]);
            let parsed = parse_head(&mut buf, false, &mut FieldNames::default());
            let valid = http::HeaderValue::from_bytes(&value).is_ok();
            assert_eq!(parsed.is_ok(), valid, "byte {b:#04x}");
            if let Ok(Some(p)) = parsed {
                assert_eq!(p.headers["x-a"].as_bytes(), &value[..], "byte {b:#04x}");
            }
        }
        // A complete head over the limit is refused even when it arrived in one piece.
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(format!("x-filler: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let mut b = BytesMut::from(&big[..]);
        assert!(matches!(
            parse_head(&mut b, false, &mut FieldNames::default()),
            Err(H1Error::HeadTooLarge)
        ));
    }

    #[test]
    fn a_connections_kept_names_never_change_a_head() {
        let mut names = FieldNames::default();
        let mut parse = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            parse_head(&mut buf, false, &mut names)
        };
        let keys = |h: &Head| h.headers.keys().map(|k| k.to_string()).collect::<Vec<_>>();
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-One: 1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(keys(&h), ["content-type", "x-one", "content-length"]);
        // Another spelling, another order, a field left out, a new one.
        let h = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Two: 2\r\nCONTENT-TYPE: b\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(2));
        assert_eq!(keys(&h), ["content-length", "x-two", "content-type"]);
        assert_eq!(h.headers["content-type"], "b");
        // A name that is not a valid one is refused where a valid one was kept.
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\n"),
            Err(H1Error::Malformed(_))
        ));
        // The first heads' names come back as they were.
        let again = b"HTTP/1.1 200 OK\r\nContent-Type: c\r\nX-One: 1\r\nContent-Length: 0\r\n\r\n";
        let h = parse(again).unwrap().unwrap();
        assert_eq!(keys(&h), ["content-type", "x-one", "content-length"]);
        assert_eq!(h.headers["content-type"], "c");
    }

    #[test]
    fn request_heads_carry_their_framing() {
        let req = Request::builder()
            .method("POST")
            .uri("/a?b=1")
            .header("host", "x")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        let f = encode_head(&mut out, &req, &UpstreamBody::Full(Some(Bytes::from_static(b"hello"))));
        assert_eq!(f, Framing::Length(5));
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n");
        let mut out = Vec::new();
        let f = encode_head(&mut out, &req, &UpstreamBody::Full(None));
        assert_eq!(f, Framing::Empty);
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
    }
}
