//! The HTTP/1.1 wire format towards upstreams (RFC 9112): response heads parsed into
//! status, headers and framing; request heads written with the framing their body
//! needs; body framing (length, chunked, until close) decoded. Pure functions over
//! buffers, so the rules are tested and fuzzed apart from sockets.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;

use super::H1Error;
use crate::upstream::UpstreamBody;

/// Longest response head (status line and header fields) accepted from an upstream.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one upstream response head (or trailer section).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

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
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    /// The connection may carry another request after this response.
    pub(super) keep_alive: bool,
}

/// The field names of the response heads an upstream connection sent last, by
/// position. An upstream sends the same names, spelled the same way and mostly in the
/// same order, on every response: a name found here is a copy (a comparison of its
/// bytes), not a parse (about 120 instructions per field).
#[derive(Debug, Default)]
pub(crate) struct FieldNames {
    /// The name's bytes as they came, and the name they parse to.
    seen: Vec<(Box<[u8]>, HeaderName)>,
}

impl FieldNames {
    /// Names kept (the first fields of a head).
    const KEPT: usize = 16;
    /// Longer names are not kept (a connection keeps at most 16 × 64 bytes of them,
    /// whatever an upstream sends).
    const NAME_BYTES: usize = 64;

    /// The name of field `pos` of a head, spelled `raw`; `None` when it is not a valid
    /// field name.
    fn name(&mut self, pos: usize, raw: &[u8]) -> Option<HeaderName> {
        if let Some((r, n)) = self.seen.get(pos) {
            if **r == *raw {
                return Some(n.clone());
            }
        }
        // A field left out or added shifts the rest: look at every kept name.
        if let Some((_, n)) = self.seen.iter().find(|(r, _)| **r == *raw) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(raw).ok()?;
        if pos < Self::KEPT && raw.len() <= Self::NAME_BYTES {
            let entry = (Box::from(raw), n.clone());
            match pos.cmp(&self.seen.len()) {
                std::cmp::Ordering::Less => self.seen[pos] = entry,
                std::cmp::Ordering::Equal => self.seen.push(entry),
                std::cmp::Ordering::Greater => {}
            }
        }
        Some(n)
    }
}

/// Parses a response head from the front of `buf` and consumes it; `None` if more
/// bytes are needed. `names`: the connection's names of earlier heads.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    names: &mut FieldNames,
) -> Result<Option<Head>, H1Error> {
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
    for (pos, &(no, nl, vo, vl)) in spans.iter().enumerate() {
        let name = names
            .name(pos, &head[no..no + nl])
            .ok_or(H1Error::Malformed("invalid header name"))?;
        // SAFETY: httparse (default config: no obs-fold) accepted every byte of the value
        // as a tab, 0x20..=0x7e or obs-text 0x80..=0xff, which is exactly what a
        // `HeaderValue` may hold; checking again byte by byte cost ~650 instructions per
        // response. Debug builds (and the fuzzers) still check and would panic.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(vo..vo + vl)) };
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

/// [`parse_head`] for the fuzzers: the framing the head chose. The head is parsed
/// twice, the second time with the names the first one left, and both parses must
/// agree field for field (the names a connection keeps never change a head).
pub(crate) fn parse_head_for_fuzzing(buf: &mut BytesMut, head_request: bool) -> Result<Option<Framing>, H1Error> {
    let mut names = FieldNames::default();
    let mut again = buf.clone();
    let first = parse_head(buf, head_request, &mut names);
    let second = parse_head(&mut again, head_request, &mut names);
    match (&first, &second) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.headers, b.headers, "kept names changed a head");
            assert_eq!((a.status, a.framing, a.keep_alive), (b.status, b.framing, b.keep_alive));
        }
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        _ => panic!("kept names changed whether a head parses"),
    }
    Ok(first?.map(|h| h.framing))
}

/// Writes the request line and header fields of `req` into `out`, with the framing
/// header the body needs; returns that framing.
pub(super) fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, body: &UpstreamBody) -> Framing {
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

#[cfg(test)]
mod field_names_tests {
    use super::*;

    #[test]
    fn kept_names_are_bounded_and_found_again() {
        let mut names = FieldNames::default();
        assert_eq!(names.name(0, b"Content-Type").unwrap(), "content-type");
        assert_eq!(names.name(1, b"x-a").unwrap(), "x-a");
        let long = vec![b'x'; FieldNames::NAME_BYTES + 1];
        assert_eq!(names.name(2, &long).unwrap().as_str().len(), long.len());
        assert_eq!(names.seen.len(), 2, "a long name is not kept");
        for pos in 2..40 {
            names.name(pos, format!("x-{pos}").as_bytes()).unwrap();
        }
        assert_eq!(names.seen.len(), FieldNames::KEPT);
        // Found at another position; another spelling is parsed, not taken for it.
        assert_eq!(names.name(7, b"x-a").unwrap(), "x-a");
        assert_eq!(names.name(0, b"content-type").unwrap(), "content-type");
        assert!(names.name(0, b"Content Type").is_none());
    }
}
