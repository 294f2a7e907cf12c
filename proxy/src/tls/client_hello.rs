//! Reading a TLS ClientHello before rustls does: its server name, peeked without
//! consuming it, for TLS passthrough routing ([`peek_hello`]); and whether it offers a
//! session to resume, which picks a terminating listener's config ([`offers_session`]).
//! The hello may arrive in several TCP segments; the peek waits for the whole handshake
//! message (bounded by a deadline and 16 KiB).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// What a peek found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello with this server name (lowercase).
    Sni(String),
    /// A ClientHello without a server name.
    NoSni,
    /// Not TLS, or no complete hello in time.
    NotTls,
}

/// Peeks at `s` until a complete ClientHello is buffered (or `timeout`).
pub async fn peek_hello(s: &TcpStream, timeout: Duration) -> Hello {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let mut pause = Duration::from_millis(1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Hello::NotTls,
        };
        match parse_client_hello(&buf[..n]) {
            Ok(Some(h)) => return h,
            Ok(None) if n < buf.len() && Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => return Hello::NotTls,
        }
    }
}

/// The bytes are not a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotClientHello;

/// Parses a ClientHello at the start of `b`: `Ok(None)` = incomplete.
pub fn parse_client_hello(b: &[u8]) -> Result<Option<Hello>, NotClientHello> {
    match hello_message(b)? {
        Some(m) => Ok(Some(server_name(&m).ok_or(NotClientHello)?)),
        None => Ok(None),
    }
}

/// The TLS 1.3 `pre_shared_key` extension: the client holds a ticket and offers it.
const PRE_SHARED_KEY: u16 = 41;

/// True when `b` starts with a whole ClientHello that offers a session to resume (a
/// `pre_shared_key` extension); false for anything else, a hello cut short included.
/// Allocates nothing when the hello is in one record, as clients send it.
pub fn offers_session(b: &[u8]) -> bool {
    match hello_message(b) {
        Ok(Some(m)) => extensions(&m).is_some_and(|mut e| e.any(|x| matches!(x, Ok((PRE_SHARED_KEY, _))))),
        _ => false,
    }
}

/// The ClientHello's body (after its 4-byte handshake header) at the start of `b`,
/// borrowed when one record holds it and reassembled from several otherwise.
/// `Ok(None)` = incomplete.
fn hello_message(b: &[u8]) -> Result<Option<Cow<'_, [u8]>>, NotClientHello> {
    if b.is_empty() {
        return Ok(None);
    }
    if b[0] != 22 {
        return Err(NotClientHello);
    }
    if b.len() < 5 {
        return Ok(None);
    }
    let first = &b[5..(5 + usize::from(u16::from_be_bytes([b[3], b[4]]))).min(b.len())];
    if let Some(whole) = first.get(1..4).and_then(|len| first.get(4..4 + be24(len))) {
        if first[0] != 1 {
            return Err(NotClientHello);
        }
        return Ok(Some(Cow::Borrowed(whole)));
    }
    // Reassemble handshake bytes across records.
    let mut hs = Vec::new();
    let mut pos = 0;
    while pos + 5 <= b.len() {
        if b[pos] != 22 {
            return Err(NotClientHello);
        }
        let len = u16::from_be_bytes([b[pos + 3], b[pos + 4]]) as usize;
        if pos + 5 + len > b.len() {
            hs.extend_from_slice(&b[pos + 5..]);
            break;
        }
        hs.extend_from_slice(&b[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if hs.len() >= 4 && hs.len() >= 4 + be24(&hs[1..4]) {
            break;
        }
    }
    if hs.len() < 4 {
        return Ok(None);
    }
    if hs[0] != 1 {
        return Err(NotClientHello);
    }
    let msg_len = be24(&hs[1..4]);
    if hs.len() < 4 + msg_len {
        return Ok(None);
    }
    hs.truncate(4 + msg_len);
    hs.drain(..4);
    Ok(Some(Cow::Owned(hs)))
}

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// The extensions of a ClientHello body as (type, data), in order; `None` when the
/// fields before them do not fit in `m`. An empty iterator when there are none; an
/// extension that runs past the end is an error, and the last item.
fn extensions(m: &[u8]) -> Option<impl Iterator<Item = Result<(u16, &[u8]), NotClientHello>>> {
    let mut p = 2 + 32; // version, random
    let sid = *m.get(p)? as usize;
    p += 1 + sid;
    let cs = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]) as usize;
    p += 2 + cs;
    let comp = *m.get(p)? as usize;
    p += 1 + comp;
    let mut rest = if p == m.len() {
        &[][..]
    } else {
        let ext_len = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]) as usize;
        &m[p + 2..(p + 2 + ext_len).min(m.len())]
    };
    Some(std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let Some(data) = rest.get(4..4 + len) else {
            rest = &[];
            return Some(Err(NotClientHello));
        };
        rest = &rest[4 + len..];
        Some(Ok((ty, data)))
    }))
}

fn server_name(m: &[u8]) -> Option<Hello> {
    for x in extensions(m)? {
        let (ty, e) = x.ok()?;
        if ty != 0 {
            continue;
        }
        let mut q = 2;
        while q + 3 <= e.len() {
            let kind = e[q];
            let n = u16::from_be_bytes([e[q + 1], e[q + 2]]) as usize;
            q += 3;
            let name = e.get(q..q + n)?;
            if kind == 0 {
                // RFC 6066: a DNS host name, ASCII, no trailing dot; anything else
                // (empty, controls, spaces) makes the hello malformed.
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
                if !valid {
                    return None;
                }
                return Some(Hello::Sni(String::from_utf8_lossy(name).to_ascii_lowercase()));
            }
            q += n;
        }
        return Some(Hello::NoSni);
    }
    Some(Hello::NoSni)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello produced by rustls for `db.example.com`.
    fn hello() -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), "DB.example.com".try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_name_and_waits_for_split_hellos() {
        let h = hello();
        assert_eq!(parse_client_hello(&h), Ok(Some(Hello::Sni("db.example.com".into()))));
        for cut in [1, 4, 5, 20, h.len() - 1] {
            assert_eq!(parse_client_hello(&h[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_client_hello(b"GET / HTTP/1.1\r\n").is_err());
    }

    /// `h` (one record) with an extension of type `ty` added at the end.
    fn with_extension(h: &[u8], ty: u16, data: &[u8]) -> Vec<u8> {
        let add = 4 + data.len();
        let mut out = h.to_vec();
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        let bump = |b: &mut [u8]| {
            let v = u16::from_be_bytes([b[0], b[1]]) + add as u16;
            b.copy_from_slice(&v.to_be_bytes());
        };
        bump(&mut out[3..5]);
        out[7..9].copy_from_slice(&((be24(&h[6..9]) + add) as u16).to_be_bytes());
        let m = &h[9..];
        let mut p = 34;
        p += 1 + m[p] as usize;
        p += 2 + u16::from_be_bytes([m[p], m[p + 1]]) as usize;
        p += 1 + m[p] as usize;
        bump(&mut out[9 + p..9 + p + 2]);
        out
    }

    /// `h` (one record) as two records, the handshake message cut at `at`.
    fn in_two_records(h: &[u8], at: usize) -> Vec<u8> {
        let body = &h[5..];
        let mut out = Vec::new();
        for part in [&body[..at], &body[at..]] {
            out.extend_from_slice(&h[..3]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn sees_a_session_offered_in_one_record_or_two_and_nothing_else() {
        let fresh = hello();
        assert!(!offers_session(&fresh));
        let psk = with_extension(&fresh, PRE_SHARED_KEY, &[0; 40]);
        assert_eq!(parse_client_hello(&psk), Ok(Some(Hello::Sni("db.example.com".into()))));
        assert!(offers_session(&psk));
        let split = in_two_records(&psk, 100);
        assert!(offers_session(&split));
        assert_eq!(
            parse_client_hello(&split),
            Ok(Some(Hello::Sni("db.example.com".into())))
        );
        // Cut short, it offers nothing yet; another extension is not a session.
        assert!(!offers_session(&psk[..psk.len() - 1]));
        assert!(!offers_session(&split[..split.len() - 10]));
        assert!(!offers_session(&with_extension(&fresh, 42, &[])));
        // An extension that runs past the hello is malformed.
        let mut long = with_extension(&fresh, PRE_SHARED_KEY, &[0; 8]);
        let n = long.len();
        long[n - 9] = 9;
        assert!(!offers_session(&long));
        assert!(!offers_session(b"GET / HTTP/1.1\r\n"));
        // OpenSSL's hello (the benchmark's clients), offering a saved session.
        let openssl = include_bytes!("../../../fuzz/corpus/client_hello/resumption");
        assert!(offers_session(openssl));
        assert_eq!(parse_client_hello(openssl), Ok(Some(Hello::Sni("a.test".into()))));
    }
}
