//! Header handling on the proxy path: hop-by-hop stripping (RFC 9110 §7.6.1),
//! forwarding headers, request ids and the operator's add/set/remove rules.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ForwardedHeaders, HeaderRules, RequestIdMode};

/// `X-Forwarded-For`.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Subject of the client certificate verified by a TLS listener (mTLS); set by Tandem
/// only, removed when a client sends it.
pub(crate) static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including any named in `Connection`. One pass over the
/// names first: most messages carry none, and then nothing is hashed or removed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<HeaderName> = list
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for n in named {
                headers.remove(n);
            }
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

/// Appends the client to `X-Forwarded-For`, sets `-Proto` and `-Host`.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: std::net::IpAddr,
    host: Option<&HeaderValue>,
    proto: &'static str,
    which: ForwardedHeaders,
) {
    if which.xff {
        let mut buf = [0u8; 64];
        let ip = format_ip(client_ip, &mut buf);
        let xff = match headers.get(&X_FORWARDED_FOR) {
            Some(prev) if !prev.is_empty() => HeaderValue::from_bytes(&[prev.as_bytes(), b", ", ip].concat()),
            _ => HeaderValue::from_bytes(ip),
        };
        if let Ok(v) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    if which.proto {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let (true, Some(h)) = (which.host, host) {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
    }
}

/// The request's id under `mode` (see [`RequestIdMode`]), set in `headers` when generated.
pub(crate) fn request_id(mode: RequestIdMode, headers: &mut HeaderMap) -> Option<HeaderValue> {
    match mode {
        RequestIdMode::Generate => Some(ensure_request_id(headers)),
        RequestIdMode::Keep => headers.get(&X_REQUEST_ID).cloned(),
        RequestIdMode::Off => None,
    }
}

/// Writes an IP address into `buf` without going through `fmt` for IPv4 (the common
/// case on every request).
fn format_ip(ip: std::net::IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let o = *octet;
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            &buf[..n]
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cur, "{v6}");
            let n = cur.position() as usize;
            &buf[..n]
        }
    }
}

/// Returns the request id, generating and inserting one if the client sent none.
///
/// The value is marked sensitive: over HTTP/2 it is sent as a never-indexed literal.
/// A value unique to each message gains nothing from HPACK's dynamic table, and
/// indexing it costs: every new id is inserted, evicts a useful entry, and makes the
/// encoder walk and compare all ids still in the table for the next one.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get_mut(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            v.set_sensitive(true);
            return v.clone();
        }
    }
    let v = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

/// A random 128-bit id in UUID v4 text form.
pub(crate) fn new_request_id() -> HeaderValue {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut buf = [0u8; 36];
    let hex = b"0123456789abcdef";
    let bytes: [u8; 16] = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[j] = b'-';
            j += 1;
        }
        buf[j] = hex[(b >> 4) as usize];
        buf[j + 1] = hex[(b & 15) as usize];
        j += 2;
    }
    let mut v = HeaderValue::from_bytes(&buf).expect("hex is a valid header value");
    v.set_sensitive(true);
    v
}

/// Applies add/set/remove rules (remove first, then set, then add).
pub(crate) fn apply_rules(headers: &mut HeaderMap, rules: &HeaderRules) {
    for n in &rules.remove {
        headers.remove(n);
    }
    for (n, v) in &rules.set {
        headers.insert(n.clone(), v.clone());
    }
    for (n, v) in &rules.add {
        headers.append(n.clone(), v.clone());
    }
}

/// The headers of a request going upstream (stage 6, and upgrades): hop-by-hop headers go, forwarding
/// headers are set, the route's request rules apply.
pub(crate) fn forward_headers(
    h: &mut http::HeaderMap,
    route: &crate::runtime::Route,
    conn: &crate::http::conn::ConnState,
    authority: Option<&HeaderValue>,
) {
    strip_hop_by_hop(h);
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    add_forwarded(h, conn.client.ip(), authority, proto, route.forwarded);
    if !route.request_headers.is_empty() {
        apply_rules(h, &route.request_headers);
    }
}

/// The request's authority: its `Host`, or the authority of its target.
pub(crate) fn authority_value<B>(req: &http::Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(id.to_str().unwrap().as_bytes()[14], b'4');
        let again = ensure_request_id(&mut h);
        assert_eq!(id, again);
    }

    #[test]
    fn ips_format_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "fe80::1:2",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(format_ip(parsed, &mut buf), ip.as_bytes());
        }
    }

    #[test]
    fn xff_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR.clone(), "10.1.1.1".parse().unwrap());
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            None,
            "http",
            ForwardedHeaders::default(),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1, 127.0.0.1");
    }
}
