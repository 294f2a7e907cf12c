//! Reading the server name from a TLS ClientHello without consuming it, for TLS
//! passthrough routing. The hello may arrive in several TCP segments; the peek waits
//! for the whole handshake message (bounded by a deadline and 16 KiB).

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
    if b.is_empty() {
        return Ok(None);
    }
    if b[0] != 22 {
        return Err(NotClientHello);
    }
    if b.len() < 5 {
        return Ok(None);
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
    Ok(Some(server_name(&hs[4..4 + msg_len]).ok_or(NotClientHello)?))
}

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

fn server_name(m: &[u8]) -> Option<Hello> {
    let mut p = 2 + 32; // version, random
    let sid = *m.get(p)? as usize;
    p += 1 + sid;
    let cs = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]) as usize;
    p += 2 + cs;
    let comp = *m.get(p)? as usize;
    p += 1 + comp;
    if p == m.len() {
        return Some(Hello::NoSni);
    }
    let ext_len = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]) as usize;
    p += 2;
    let end = (p + ext_len).min(m.len());
    while p + 4 <= end {
        let ty = u16::from_be_bytes([m[p], m[p + 1]]);
        let len = u16::from_be_bytes([m[p + 2], m[p + 3]]) as usize;
        p += 4;
        if ty == 0 {
            let e = m.get(p..p + len)?;
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
        p += len;
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
}
