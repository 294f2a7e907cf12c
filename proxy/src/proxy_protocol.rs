//! PROXY protocol v1 (text) and v2 (binary): reading the header a trusted front sends
//! (so the true client address reaches routing, limits, logs and filters) and writing one
//! to upstreams. Reading peeks first and then consumes exactly the header's bytes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// No header (or no complete header) in time.
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// Bytes that are not a PROXY header.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The connection closed first.
    #[error("connection closed before the PROXY header ended")]
    Closed,
}

/// What a header said: the original source and destination (None for `UNKNOWN`/`LOCAL`).
pub type Addresses = Option<(SocketAddr, SocketAddr)>;

/// Reads a v1 or v2 header from `s` within `timeout`.
pub async fn read_header(s: &mut TcpStream, timeout: Duration) -> Result<Addresses, ProxyHeaderError> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 536];
    let mut pause = Duration::from_millis(1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.peek(&mut buf)).await {
            Err(_) => return Err(ProxyHeaderError::Timeout(timeout)),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(ProxyHeaderError::Closed),
            Ok(Ok(n)) => n,
        };
        match parse(&buf[..n])? {
            Some((len, addrs)) => {
                let mut sink = vec![0u8; len];
                s.read_exact(&mut sink).await.map_err(|_| ProxyHeaderError::Closed)?;
                return Ok(addrs);
            }
            None => {
                // Incomplete: the rest is still in flight.
                if Instant::now() >= deadline {
                    return Err(ProxyHeaderError::Timeout(timeout));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Parses a header at the start of `b`: `Ok(None)` = need more bytes; `Ok(Some((len,
/// addrs)))` = header of `len` bytes.
pub fn parse(b: &[u8]) -> Result<Option<(usize, Addresses)>, ProxyHeaderError> {
    if b.len() < 6 {
        return if V2_SIG.starts_with(b) || b"PROXY ".starts_with(b) {
            Ok(None)
        } else {
            Err(ProxyHeaderError::Malformed("no PROXY signature"))
        };
    }
    if b.starts_with(b"PROXY ") {
        return parse_v1(b);
    }
    if b.len() < 16 {
        return if V2_SIG.starts_with(&b[..b.len().min(12)]) {
            Ok(None)
        } else {
            Err(ProxyHeaderError::Malformed("no PROXY signature"))
        };
    }
    if &b[..12] != V2_SIG {
        return Err(ProxyHeaderError::Malformed("no PROXY signature"));
    }
    parse_v2(b)
}

fn parse_v1(b: &[u8]) -> Result<Option<(usize, Addresses)>, ProxyHeaderError> {
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= 107 {
            Err(ProxyHeaderError::Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&b[..end]).map_err(|_| ProxyHeaderError::Malformed("v1 header is not text"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let addrs = match parts.get(1) {
        Some(&"UNKNOWN") => None,
        Some(&"TCP4") | Some(&"TCP6") if parts.len() == 6 => {
            let ip = |s: &str| {
                s.parse::<IpAddr>()
                    .map_err(|_| ProxyHeaderError::Malformed("bad v1 address"))
            };
            let port = |s: &str| s.parse::<u16>().map_err(|_| ProxyHeaderError::Malformed("bad v1 port"));
            Some((
                SocketAddr::new(ip(parts[2])?, port(parts[4])?),
                SocketAddr::new(ip(parts[3])?, port(parts[5])?),
            ))
        }
        _ => return Err(ProxyHeaderError::Malformed("bad v1 protocol field")),
    };
    Ok(Some((end + 2, addrs)))
}

fn parse_v2(b: &[u8]) -> Result<Option<(usize, Addresses)>, ProxyHeaderError> {
    let ver_cmd = b[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version is not 2"));
    }
    let fam = b[13];
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    if b.len() < 16 + len {
        return Ok(None);
    }
    let body = &b[16..16 + len];
    let total = 16 + len;
    if ver_cmd & 0x0f == 0 {
        return Ok(Some((total, None))); // LOCAL (health checks of the front)
    }
    let addrs = match fam >> 4 {
        1 if body.len() >= 12 => {
            let src = IpAddr::from([body[0], body[1], body[2], body[3]]);
            let dst = IpAddr::from([body[4], body[5], body[6], body[7]]);
            Some((
                SocketAddr::new(src, u16::from_be_bytes([body[8], body[9]])),
                SocketAddr::new(dst, u16::from_be_bytes([body[10], body[11]])),
            ))
        }
        2 if body.len() >= 36 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[..16]);
            d.copy_from_slice(&body[16..32]);
            Some((
                SocketAddr::new(IpAddr::from(s), u16::from_be_bytes([body[32], body[33]])),
                SocketAddr::new(IpAddr::from(d), u16::from_be_bytes([body[34], body[35]])),
            ))
        }
        0 => None,
        _ => return Err(ProxyHeaderError::Malformed("unsupported v2 address family")),
    };
    Ok(Some((total, addrs)))
}

/// A v1 header for a connection from `src` to `dst`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 header (PROXY command, TCP) for a connection from `src` to `dst`.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = V2_SIG.to_vec();
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("same_family"),
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v1_and_v2() {
        let src: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        for h in [encode_v1(src, dst), encode_v2(src, dst)] {
            let mut with_payload = h.clone();
            with_payload.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&with_payload).unwrap(), Some((h.len(), Some((src, dst)))));
            // Any strict prefix asks for more bytes.
            for cut in 1..h.len() {
                assert_eq!(parse(&h[..cut]).unwrap(), None, "cut at {cut}");
            }
        }
        let s6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let d6: SocketAddr = "[2001:db8::2]:2".parse().unwrap();
        let h = encode_v2(s6, d6);
        assert_eq!(parse(&h).unwrap(), Some((h.len(), Some((s6, d6)))));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY TCP9 a b c d\r\n").is_err());
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((15, None)));
    }
}
