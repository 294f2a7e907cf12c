//! Header maps as guests see them: request heads carry `:method`, `:path`,
//! `:authority` and `:scheme` (no `host`, as in Envoy), response heads `:status`.
//! Writes to pseudo-headers change the request itself (method, target, host).

use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::abi::serialize_map;
use super::header_cache::HeaderCache;
use super::state::{ReqHead, RespHead};

/// One change to a map.
#[derive(Debug)]
pub enum Edit<'a> {
    /// Append a value.
    Add(&'a [u8], &'a [u8]),
    /// Set the value (add if absent).
    Replace(&'a [u8], &'a [u8]),
    /// Remove every value.
    Remove(&'a [u8]),
    /// Replace the whole map.
    ReplaceAll(&'a [(&'a [u8], &'a [u8])]),
}

fn authority(h: &ReqHead) -> Option<&[u8]> {
    h.headers
        .get(HOST)
        .map(|v| v.as_bytes())
        .or_else(|| h.uri.authority().map(|a| a.as_str().as_bytes()))
}

fn path(h: &ReqHead) -> &[u8] {
    h.uri.path_and_query().map_or(b"/", |p| p.as_str().as_bytes())
}

/// Serialized request map.
pub fn req_serialize(h: &ReqHead) -> Vec<u8> {
    let pseudo = [
        (&b":authority"[..], authority(h).unwrap_or(b"")),
        (b":path", path(h)),
        (b":method", h.method.as_str().as_bytes()),
        (b":scheme", h.scheme.as_bytes()),
    ];
    serialize_map(|| {
        let rest = h
            .headers
            .iter()
            .filter(|(k, _)| *k != HOST)
            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
        pseudo.iter().copied().chain(rest)
    })
}

/// Serialized response map.
pub fn resp_serialize(h: &RespHead) -> Vec<u8> {
    let status = h.status.as_str().as_bytes();
    serialize_map(|| {
        let rest = h.headers.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
        std::iter::once((&b":status"[..], status)).chain(rest)
    })
}

/// Serialized trailers.
pub fn plain_serialize(h: &HeaderMap) -> Vec<u8> {
    serialize_map(|| h.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
}

/// First value of `key` in a request map.
pub fn req_get(h: &ReqHead, key: &[u8]) -> Option<Vec<u8>> {
    match key {
        b":authority" | b"host" => authority(h).map(<[u8]>::to_vec),
        b":path" => Some(path(h).to_vec()),
        b":method" => Some(h.method.as_str().as_bytes().to_vec()),
        b":scheme" => Some(h.scheme.as_bytes().to_vec()),
        _ => plain_get(&h.headers, key),
    }
}

/// First value of `key` in a response map.
pub fn resp_get(h: &RespHead, key: &[u8]) -> Option<Vec<u8>> {
    match key {
        b":status" => Some(h.status.as_str().as_bytes().to_vec()),
        _ => plain_get(&h.headers, key),
    }
}

/// First value of `key` (looked up by `&str`: no name is allocated for a read).
pub fn plain_get(h: &HeaderMap, key: &[u8]) -> Option<Vec<u8>> {
    h.get(std::str::from_utf8(key).ok()?).map(|v| v.as_bytes().to_vec())
}

fn set_path(h: &mut ReqHead, v: &[u8]) -> bool {
    let Ok(pq) = http::uri::PathAndQuery::try_from(v) else {
        return false;
    };
    let mut parts = std::mem::take(&mut h.uri).into_parts();
    parts.path_and_query = Some(pq);
    match Uri::from_parts(parts) {
        Ok(u) => {
            h.uri = u;
            true
        }
        Err(_) => false,
    }
}

fn set_authority(h: &mut ReqHead, v: &[u8]) -> bool {
    let Ok(value) = HeaderValue::from_bytes(v) else {
        return false;
    };
    if h.uri.authority().is_some() {
        let Ok(a) = http::uri::Authority::try_from(v) else {
            return false;
        };
        let mut parts = std::mem::take(&mut h.uri).into_parts();
        parts.authority = Some(a);
        match Uri::from_parts(parts) {
            Ok(u) => h.uri = u,
            Err(_) => return false,
        }
    }
    h.headers.insert(HOST, value);
    true
}

/// Applies an edit to a request map; false when a name or value is not valid HTTP.
pub fn req_edit(h: &mut ReqHead, e: Edit<'_>, cache: &mut HeaderCache) -> bool {
    let pseudo = |h: &mut ReqHead, k: &[u8], v: &[u8]| -> Option<bool> {
        Some(match k {
            b":path" => set_path(h, v),
            b":authority" | b"host" => set_authority(h, v),
            b":method" => match Method::from_bytes(v) {
                Ok(m) => {
                    h.method = m;
                    true
                }
                Err(_) => false,
            },
            b":scheme" => true,
            _ => return None,
        })
    };
    match e {
        Edit::Add(k, v) | Edit::Replace(k, v) => {
            if let Some(ok) = pseudo(h, k, v) {
                return ok;
            }
            plain_edit(&mut h.headers, e, cache)
        }
        Edit::Remove(k) => {
            if k.starts_with(b":") {
                return true;
            }
            plain_edit(&mut h.headers, e, cache)
        }
        Edit::ReplaceAll(pairs) => {
            let host = h.headers.get(HOST).cloned();
            h.headers.clear();
            if let Some(v) = host {
                h.headers.insert(HOST, v);
            }
            let mut ok = true;
            for (k, v) in pairs {
                ok &= req_edit(h, Edit::Add(k, v), cache);
            }
            ok
        }
    }
}

/// Applies an edit to a response map.
pub fn resp_edit(h: &mut RespHead, e: Edit<'_>, cache: &mut HeaderCache) -> bool {
    match e {
        Edit::Add(b":status", v) | Edit::Replace(b":status", v) => match StatusCode::from_bytes(v) {
            Ok(s) => {
                h.status = s;
                true
            }
            Err(_) => false,
        },
        Edit::Remove(k) if k.starts_with(b":") => true,
        Edit::ReplaceAll(pairs) => {
            h.headers.clear();
            let mut ok = true;
            for (k, v) in pairs {
                ok &= resp_edit(h, Edit::Add(k, v), cache);
            }
            ok
        }
        e => plain_edit(&mut h.headers, e, cache),
    }
}

/// Applies an edit to a plain map (trailers, regular headers).
pub fn plain_edit(h: &mut HeaderMap, e: Edit<'_>, cache: &mut HeaderCache) -> bool {
    let mut parse = |k: &[u8], v: &[u8]| Some((cache.name(k)?, cache.value(v)?));
    match e {
        Edit::Add(k, v) => match parse(k, v) {
            Some((k, v)) => {
                h.append(k, v);
                true
            }
            None => false,
        },
        Edit::Replace(k, v) => match parse(k, v) {
            Some((k, v)) => {
                h.insert(k, v);
                true
            }
            None => false,
        },
        Edit::Remove(k) => {
            if let Ok(n) = std::str::from_utf8(k) {
                h.remove(n);
            }
            true
        }
        Edit::ReplaceAll(pairs) => {
            h.clear();
            let mut ok = true;
            for (k, v) in pairs {
                if k.starts_with(b":") {
                    continue;
                }
                ok &= plain_edit(h, Edit::Add(k, v), cache);
            }
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ReqHead {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("a.example"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        ReqHead {
            method: Method::GET,
            uri: Uri::from_static("/p?q=1"),
            headers,
            scheme: "http",
        }
    }

    #[test]
    fn request_map_has_pseudo_headers_and_no_host() {
        let h = head();
        let bytes = req_serialize(&h);
        let pairs = super::super::abi::parse_map(&bytes).unwrap();
        let keys: Vec<_> = pairs.iter().map(|(k, _)| std::str::from_utf8(k).unwrap()).collect();
        assert_eq!(keys, [":authority", ":path", ":method", ":scheme", "x-a"]);
        assert_eq!(req_get(&h, b":path").unwrap(), b"/p?q=1");
        assert_eq!(req_get(&h, b":authority").unwrap(), b"a.example");
        assert!(req_get(&h, b"missing").is_none());
    }

    #[test]
    fn pseudo_header_writes_change_the_request() {
        let mut h = head();
        let n = &mut HeaderCache::default();
        assert!(req_edit(&mut h, Edit::Replace(b":path", b"/new?x"), n));
        assert!(req_edit(&mut h, Edit::Replace(b":authority", b"b.example"), n));
        assert!(req_edit(&mut h, Edit::Replace(b":method", b"POST"), n));
        assert_eq!(h.uri, "/new?x");
        assert_eq!(h.headers[HOST], "b.example");
        assert_eq!(h.method, Method::POST);
        assert!(!req_edit(&mut h, Edit::Add(b"bad name", b"v"), n));
        assert!(req_edit(&mut h, Edit::Remove(b"x-a"), n));
        assert!(!h.headers.contains_key("x-a"));
    }
}
