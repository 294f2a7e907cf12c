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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{OpenGuard, Pool};
use crate::body::{BoxError, UpstreamBody};
use crate::runtime::PoolSettings;
use crate::send_batch::BatchedStream;

/// Longest response head (status line and header fields) accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one upstream response head (or trailer section).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
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
pub enum Io {
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
pub struct H1Conn {
    io: Io,
    /// Bytes read and not yet consumed (empty between exchanges on a healthy connection).
    buf: BytesMut,
    /// The request head (and small body chunks) waiting to be written; reused.
    out: Vec<u8>,
    /// Endpoint, for the pool key.
    pub(super) addr: SocketAddr,
    /// Pool profile of the cluster that made it.
    pub(super) profile: u64,
    /// When it was opened (max age).
    pub(super) born: Instant,
    /// Start of the request that used it last; idle time counts from here.
    pub(super) used: Instant,
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
            addr,
            profile,
            born,
            used: born,
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
                match parse_head(&mut self.buf, head_request)? {
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
pub struct Home {
    /// The worker's pool.
    pub pool: Rc<Pool>,
    /// The cluster's pool settings.
    pub settings: PoolSettings,
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `content-length`: bytes still to come.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data: bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// A parsed final response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request after this response.
    keep_alive: bool,
}

/// Parses a response head from the front of `buf` and consumes it; `None` if more
/// bytes are needed.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, H1Error> {
    // Uninitialised storage: zeroing 128 fields (4 KiB) per response cost more than
    // parsing a typical head.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut raw) {
        // The limit holds for a head that arrived whole in one read, too.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Malformed("too many header fields")),
        Err(_) => return Err(H1Error::Malformed("invalid response head")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Malformed("invalid status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Offsets into the head, so the values can share its bytes without copies.
    let base = buf.as_ptr() as usize;
    // (name offset, name length, value offset, value length), uninitialised past `n`.
    let mut spans = [const { std::mem::MaybeUninit::<(usize, usize, usize, usize)>::uninit() }; MAX_HEADERS];
    let n = resp.headers.len();
    for (s, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let v = h.value.as_ptr() as usize - base;
        s.write((h.name.as_ptr() as usize - base, h.name.len(), v, h.value.len()));
    }
    // SAFETY: the loop above wrote the first `n` entries (`n <= MAX_HEADERS`).
    let spans = unsafe { std::slice::from_raw_parts(spans.as_ptr().cast::<(usize, usize, usize, usize)>(), n) };
    let head = buf.split_to(len).freeze();
    // Room for what the proxy adds on the way down (`x-request-id`, a sticky cookie,
    // filters' headers) without growing and rehashing the map.
    let mut headers = HeaderMap::with_capacity(n + 4);
    let mut framing = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = version == Version::HTTP_10;
    for &(no, nl, vo, vl) in spans {
        let name = HeaderName::from_bytes(&head[no..no + nl]).map_err(|_| H1Error::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vo..vo + vl))
            .map_err(|_| H1Error::Malformed("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let v: u64 = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(H1Error::Malformed("invalid content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(H1Error::Malformed("conflicting content-length values"));
            }
            length = Some(v);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding decides; a message not ending in chunked runs to close.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                framing = Some(Framing::Eof);
            }
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for t in value.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if version == Version::HTTP_10 {
                        close = false;
                    }
                } else if !t.is_empty() {
                    names_others = true;
                }
            }
            // Kept only when it names other fields, for the hop-by-hop strip to remove.
            if !names_others {
                continue;
            }
        }
        // Hop-by-hop fields that never go downstream are not stored at all: the
        // response stage's strip then has nothing to do for the common answer.
        if name == header::TRANSFER_ENCODING
            || name == header::TE
            || name == header::TRAILER
            || name == "keep-alive"
            || name == "proxy-connection"
        {
            continue;
        }
        headers.append(name, value);
    }
    // Both framings at once is how responses are split and requests smuggled (RFC 9112
    // §6.3): refused (502) and the connection closed, as HAProxy does.
    if coded && length.is_some() {
        return Err(H1Error::Malformed("both content-length and transfer-encoding"));
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(f) = framing {
        f
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        keep_alive: !close && framing != Framing::Eof && status != StatusCode::SWITCHING_PROTOCOLS,
        framing,
    }))
}

/// [`parse_head`] for the fuzzers: the framing the head chose.
pub(crate) fn parse_head_for_fuzzing(buf: &mut BytesMut, head_request: bool) -> Result<Option<Framing>, H1Error> {
    Ok(parse_head(buf, head_request)?.map(|h| h.framing))
}

/// Writes the request line and header fields of `req` into `out`, with the framing
/// header the body needs; returns that framing.
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, body: &UpstreamBody) -> Framing {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length = None;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => {
            if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Empty
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked(Chunk::Size)
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
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
pub async fn send(
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

/// A response body read from the upstream socket as the downstream side asks for it.
pub struct Body {
    conn: Option<H1Conn>,
    framing: Framing,
    reusable: bool,
    home: Home,
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

/// What the body decoder made of the bytes buffered so far.
#[derive(Debug)]
pub(crate) enum Step {
    /// A piece of body data.
    Data(Bytes),
    /// The trailer section of a chunked body (the body ended with it).
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

/// Decodes what `buf` holds of a body framed by `framing` (RFC 9112 §7): consumes what
/// it uses, advances `framing`, and sets it to `Empty` when the body ends. Pure (no I/O),
/// so the framing rules are testable and fuzzable apart from sockets.
pub(crate) fn decode_body(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, H1Error> {
    loop {
        match *framing {
            Framing::Empty => return Ok(Step::End),
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                let n = left.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                *framing = match *framing {
                    Framing::Length(l) if l == n => Framing::Empty,
                    Framing::Length(l) => Framing::Length(l - n),
                    _ if left == n => Framing::Chunked(Chunk::DataEnd),
                    _ => Framing::Chunked(Chunk::Data(left - n)),
                };
                return Ok(Step::Data(data));
            }
            Framing::Eof if !buf.is_empty() => return Ok(Step::Data(buf.split().freeze())),
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(H1Error::Malformed("chunk size line too long"));
                    }
                    return Ok(Step::More);
                };
                let line = &buf[..end];
                let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or(H1Error::Malformed("invalid chunk size"))?;
                buf.advance(end + 2);
                *framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
            }
            Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) if !buf.is_empty() => {
                let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(buf, &mut raw) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(n, v);
                            }
                        }
                        buf.advance(len);
                        *framing = Framing::Empty;
                        Ok(if trailers.is_empty() {
                            Step::End
                        } else {
                            Step::Trailers(trailers)
                        })
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(H1Error::HeadTooLarge),
                    Ok(httparse::Status::Partial) => Ok(Step::More),
                    Err(_) => Err(H1Error::Malformed("invalid trailer section")),
                };
            }
            _ => return Ok(Step::More),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let h = parse_head(&mut buf, head_request).unwrap().expect("complete");
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
        crate::headers::strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["content-length"]);
    }

    #[test]
    fn bad_heads_are_refused() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut b, false), Err(H1Error::Malformed(_))));
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut b, false), Err(H1Error::Malformed(_))));
        let mut b = BytesMut::from(&b"NOT HTTP\r\n\r\n"[..]);
        assert!(parse_head(&mut b, false).is_err());
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut b, false).unwrap().is_none());
        // Both framings: a smuggling vector, refused whatever their order.
        for h in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
        ] {
            let mut b = BytesMut::from(h);
            assert!(matches!(parse_head(&mut b, false), Err(H1Error::Malformed(_))));
        }
        // A complete head over the limit is refused even when it arrived in one piece.
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(format!("x-filler: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let mut b = BytesMut::from(&big[..]);
        assert!(matches!(parse_head(&mut b, false), Err(H1Error::HeadTooLarge)));
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
