//! Route matching for one listener. Host selects a route group (exact host first, then
//! the longest `*.suffix`, then `*`, as Envoy's virtual hosts do); within the group the
//! first route in file order whose path, method and header conditions hold wins. A host
//! group that matches but has no matching route does not fall back to a wider group.

use std::collections::HashMap;

use crate::config::{HeaderCondition, HostPattern, PathMatch, RouteConfig};

/// What a route match looks at; borrowed from the request, never copied.
pub struct RequestFacts<'a> {
    /// Host without port, any case.
    pub host: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Method.
    pub method: &'a http::Method,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug)]
struct Candidate {
    route: usize,
    path: PathMatch,
    methods: Vec<http::Method>,
    headers: Vec<(http::HeaderName, HeaderCondition)>,
}

/// The compiled route table of one listener.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<usize>>,
    /// Sorted by suffix length, longest first.
    suffix: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
    candidates: Vec<Candidate>,
}

impl Router {
    /// Builds the table of listener `listener` from all routes.
    pub fn new(listener: &str, routes: &[RouteConfig]) -> Router {
        let mut r = Router::default();
        for (idx, route) in routes.iter().enumerate() {
            if !route.listeners.is_empty() && !route.listeners.iter().any(|l| l == listener) {
                continue;
            }
            let ci = r.candidates.len();
            r.candidates.push(Candidate {
                route: idx,
                path: route.path.clone(),
                methods: route.methods.clone(),
                headers: route.headers.clone(),
            });
            for h in &route.hosts {
                match h {
                    HostPattern::Any => r.any.push(ci),
                    HostPattern::Exact(host) => r.exact.entry(host.clone()).or_default().push(ci),
                    HostPattern::Suffix(s) => match r.suffix.iter_mut().find(|(k, _)| k == s) {
                        Some((_, v)) => v.push(ci),
                        None => r.suffix.push((s.clone(), vec![ci])),
                    },
                }
            }
        }
        r.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        r
    }

    /// The index (in `Runtime::routes`) of the route for this request, if any.
    pub fn find(&self, req: &RequestFacts<'_>) -> Option<usize> {
        let group = self.host_group(req.host)?;
        group
            .iter()
            .map(|&ci| &self.candidates[ci])
            .find(|c| c.matches(req))
            .map(|c| c.route)
    }

    fn host_group(&self, host: &str) -> Option<&[usize]> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        for (suffix, v) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(v);
            }
        }
        (!self.any.is_empty()).then_some(self.any.as_slice())
    }
}

impl Candidate {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(req.path),
        };
        path_ok
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|(name, cond)| {
                let v = req.headers.get(name);
                match cond {
                    HeaderCondition::Present => v.is_some(),
                    HeaderCondition::Absent => v.is_none(),
                    HeaderCondition::Exact(s) => v.is_some_and(|v| v.as_bytes() == s.as_bytes()),
                    HeaderCondition::Regex(re) => v.and_then(|v| v.to_str().ok()).is_some_and(|v| re.is_match(v)),
                }
            })
    }
}

/// Strips the port from a Host / :authority value (`[::1]:80` → `[::1]`).
pub(crate) fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn router(text: &str) -> (Router, Vec<String>) {
        let cfg = load_str("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
        let names = cfg.routes.iter().map(|r| r.name.clone()).collect();
        (Router::new("web", &cfg.routes), names)
    }

    fn find(r: &(Router, Vec<String>), host: &str, path: &str, method: &str, hdrs: &[(&str, &str)]) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for (k, v) in hdrs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        r.0.find(&RequestFacts {
            host,
            path,
            method: &m,
            headers: &h,
        })
        .map(|i| r.1[i].clone())
    }

    const TABLE: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:1"
[[cluster]]
name = "c"
endpoints = [{ address = "127.0.0.1:2" }]
[[route]]
name = "api-exact"
hosts = ["api.example.com"]
path_exact = "/health"
cluster = "c"
[[route]]
name = "api-canary"
hosts = ["api.example.com"]
headers = [{ name = "x-canary", exact = "1" }]
cluster = "c"
[[route]]
name = "api-post"
hosts = ["api.example.com"]
methods = ["POST"]
cluster = "c"
[[route]]
name = "api-prefix"
hosts = ["api.example.com"]
path_prefix = "/v1/"
cluster = "c"
[[route]]
name = "wild"
hosts = ["*.example.com"]
path_regex = "/items/[0-9]+"
cluster = "c"
[[route]]
name = "deeper-wild"
hosts = ["*.eu.example.com"]
cluster = "c"
[[route]]
name = "has-debug"
headers = [{ name = "x-debug", present = true }, { name = "x-user", regex = "u[0-9]+" }]
cluster = "c"
[[route]]
name = "fallback"
cluster = "c"
"#;

    #[test]
    fn precedence_and_conditions() {
        let r = router(TABLE);
        assert_eq!(
            find(&r, "api.example.com", "/health", "GET", &[]).as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            find(&r, "API.Example.com", "/health", "GET", &[]).as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            find(&r, "api.example.com", "/health", "GET", &[("x-canary", "1")]).as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            find(&r, "api.example.com", "/x", "GET", &[("x-canary", "1")]).as_deref(),
            Some("api-canary")
        );
        assert_eq!(find(&r, "api.example.com", "/x", "GET", &[("x-canary", "2")]), None);
        assert_eq!(
            find(&r, "api.example.com", "/v1/x", "POST", &[]).as_deref(),
            Some("api-post")
        );
        assert_eq!(
            find(&r, "api.example.com", "/v1/x", "GET", &[]).as_deref(),
            Some("api-prefix")
        );
        // exact host group wins and does not fall back to wider groups
        assert_eq!(find(&r, "api.example.com", "/other", "GET", &[]), None);
        assert_eq!(
            find(&r, "www.example.com", "/items/42", "GET", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(find(&r, "www.example.com", "/items/4x", "GET", &[]), None);
        assert_eq!(
            find(&r, "a.eu.example.com", "/items/42", "GET", &[]).as_deref(),
            Some("deeper-wild")
        );
        assert_eq!(
            find(&r, "other.org", "/", "GET", &[("x-debug", ""), ("x-user", "u12")]).as_deref(),
            Some("has-debug")
        );
        assert_eq!(
            find(&r, "other.org", "/", "GET", &[("x-debug", ""), ("x-user", "bob")]).as_deref(),
            Some("fallback")
        );
        assert_eq!(find(&r, "example.com", "/", "GET", &[]).as_deref(), Some("fallback"));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(host_without_port("a.com:8080"), "a.com");
        assert_eq!(host_without_port("a.com"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
    }
}
