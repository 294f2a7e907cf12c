//! `[[route]]`: matching, destinations, retries, timeouts, rate limits, filters.

use std::collections::HashMap;

use super::checker::*;
use crate::config::error::did_you_mean;
use crate::config::model::{self, ConfigFile, SpannedStr};
use crate::config::*;

impl Checker<'_> {
    pub(super) fn rate_limit(
        &mut self,
        rl: &model::RateLimitSection,
        key: &str,
        anchor: &SpannedStr,
        has_ha: bool,
    ) -> Option<crate::config::LimitConfig> {
        use crate::config::{Algorithm, LimitConfig, LimitKey};
        if rl.requests == 0 {
            self.at(
                anchor,
                format!("{key}.requests"),
                "0 would refuse every request".into(),
                Some("use a positive number".into()),
            );
        }
        let per = self.dur(&rl.per, format!("{key}.per"));
        let lk = match rl.key.get_ref().as_str() {
            "source_ip" => LimitKey::SourceIp,
            "route" => LimitKey::Route,
            k => match k
                .strip_prefix("header:")
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            {
                Some(h) => LimitKey::Header(h),
                None => {
                    self.at(
                        &rl.key,
                        format!("{key}.key"),
                        format!("`{k}` is not a limit key"),
                        Some("use \"source_ip\", \"header:NAME\" or \"route\"".into()),
                    );
                    LimitKey::Route
                }
            },
        };
        let algorithm = match rl.algorithm.get_ref().as_str() {
            "token_bucket" => Algorithm::TokenBucket,
            "sliding_window" => Algorithm::SlidingWindow,
            other => {
                self.at(
                    &rl.algorithm,
                    format!("{key}.algorithm"),
                    format!("unknown algorithm `{other}`"),
                    Some("use \"token_bucket\" or \"sliding_window\"".into()),
                );
                Algorithm::SlidingWindow
            }
        };
        let scope = match rl.scope.get_ref().as_str() {
            "local" => crate::config::Scope::Local,
            "cluster" => {
                if algorithm != Algorithm::SlidingWindow {
                    self.at(
                        &rl.scope,
                        format!("{key}.algorithm"),
                        "cluster scope counts in sliding windows".into(),
                        Some("use algorithm = \"sliding_window\" with scope = \"cluster\"".into()),
                    );
                }
                if !has_ha {
                    self.at(
                        &rl.scope,
                        format!("{key}.scope"),
                        "cluster scope needs the pair's Raft group".into(),
                        Some("add an [ha] section, or use scope = \"local\"".into()),
                    );
                }
                crate::config::Scope::Cluster
            }
            other => {
                self.at(
                    &rl.scope,
                    format!("{key}.scope"),
                    format!("unknown scope `{other}`"),
                    Some("use \"local\" or \"cluster\"".into()),
                );
                crate::config::Scope::Local
            }
        };
        (rl.requests > 0 && !per.is_zero()).then(|| LimitConfig {
            requests: rl.requests,
            per,
            burst: rl.burst.unwrap_or(rl.requests).max(1),
            key: lk,
            algorithm,
            scope,
        })
    }
}

/// `[[route]]`s, resolved against the listeners, clusters and filters defined.
pub(super) fn routes(
    c: &mut Checker,
    file: &ConfigFile,
    clusters: &[ClusterConfig],
    listener_names: &HashMap<String, usize>,
    cluster_names: &HashMap<String, usize>,
    filter_names: &HashMap<String, usize>,
) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    let mut route_names: HashMap<String, usize> = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        let key = format!("route[{i}]");
        c.define(
            &mut route_names,
            &r.name,
            i,
            format!("{key}.name"),
            "route",
            "give each route a unique name",
        );
        for (j, l) in r.listeners.iter().enumerate() {
            c.resolve(
                listener_names,
                l,
                format!("{key}.listeners[{j}]"),
                format!("no listener named `{}`", l.get_ref()),
                "name a listener defined with [[listener]]",
            );
        }
        let mut hosts = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            let s = h.get_ref().to_ascii_lowercase();
            if s == "*" {
                hosts.push(HostPattern::Any);
            } else if let Some(suffix) = s.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 {
                    c.at(
                        h,
                        format!("{key}.hosts[{j}]"),
                        format!("`{}` is not a host pattern", h.get_ref()),
                        Some("write an exact host, `*.example.com`, or `*`".into()),
                    );
                }
                hosts.push(HostPattern::Suffix(suffix.to_string()));
            } else if s.contains('*') || s.contains('/') || s.is_empty() {
                c.at(
                    h,
                    format!("{key}.hosts[{j}]"),
                    format!("`{}` is not a host pattern", h.get_ref()),
                    Some("write an exact host, `*.example.com`, or `*`".into()),
                );
            } else {
                hosts.push(HostPattern::Exact(s));
            }
        }
        if hosts.is_empty() {
            hosts.push(HostPattern::Any);
        }
        let path_count = [r.path_exact.is_some(), r.path_prefix.is_some(), r.path_regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if path_count > 1 {
            c.at(
                &r.name,
                format!("{key}.path_*"),
                "more than one of path_exact, path_prefix, path_regex is set".into(),
                Some("keep one; split the route in two if both are needed".into()),
            );
        }
        let path = if let Some(p) = &r.path_exact {
            check_path(&mut *c, p, format!("{key}.path_exact"));
            PathMatch::Exact(p.get_ref().clone())
        } else if let Some(p) = &r.path_prefix {
            check_path(&mut *c, p, format!("{key}.path_prefix"));
            PathMatch::Prefix(p.get_ref().clone())
        } else if let Some(p) = &r.path_regex {
            c.regex(p, format!("{key}.path_regex"))
                .map_or(PathMatch::Any, PathMatch::Regex)
        } else {
            PathMatch::Any
        };
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(mm) => methods.push(mm),
                Err(_) => c.at(
                    m,
                    format!("{key}.methods[{j}]"),
                    format!("`{}` is not an HTTP method", m.get_ref()),
                    Some("e.g. \"GET\", \"POST\"".into()),
                ),
            }
        }
        let mut headers = Vec::new();
        for (j, h) in r.headers.iter().enumerate() {
            let hkey = format!("{key}.headers[{j}]");
            let name = c.header_name(&h.name, format!("{hkey}.name"));
            let set = [h.exact.is_some(), h.regex.is_some(), h.present.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            let cond = if set != 1 {
                c.at(
                    &h.name,
                    hkey.clone(),
                    format!(
                        "header match on `{}` needs exactly one of exact, regex, present",
                        h.name.get_ref()
                    ),
                    Some("e.g. { name = \"x-canary\", exact = \"1\" }".into()),
                );
                None
            } else if let Some(v) = &h.exact {
                Some(HeaderCondition::Exact(v.clone()))
            } else if let Some(re) = &h.regex {
                c.regex(re, format!("{hkey}.regex")).map(HeaderCondition::Regex)
            } else if h.present == Some(true) {
                Some(HeaderCondition::Present)
            } else {
                Some(HeaderCondition::Absent)
            };
            if let (Some(n), Some(cond)) = (name, cond) {
                headers.push((n, cond));
            }
        }
        let mut destinations = Vec::new();
        let mut resolve = |c: &mut Checker, name: &SpannedStr, k: String, weight: u32| {
            let missing = format!("route points at cluster `{}`, which does not exist", name.get_ref());
            if let Some(idx) = c.resolve(
                cluster_names,
                name,
                k,
                missing,
                "define it with [[cluster]] name = \"…\"",
            ) {
                destinations.push((idx, weight));
            }
        };
        match (&r.cluster, r.clusters.is_empty()) {
            (Some(cl), true) => resolve(&mut *c, cl, format!("{key}.cluster"), 1),
            (None, false) => {
                for (j, wc) in r.clusters.iter().enumerate() {
                    resolve(&mut *c, &wc.name, format!("{key}.clusters[{j}].name"), wc.weight);
                }
                if r.clusters.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                    c.at(
                        &r.name,
                        format!("{key}.clusters"),
                        "all weights are 0".into(),
                        Some("give at least one cluster a positive weight".into()),
                    );
                }
            }
            (Some(_), false) => c.at(
                &r.name,
                format!("{key}.cluster"),
                "both `cluster` and `clusters` are set".into(),
                Some("use `cluster` for one destination or `clusters` for a weighted split".into()),
            ),
            (None, true) => c.at(
                &r.name,
                format!("{key}.cluster"),
                format!("route `{}` has no destination", r.name.get_ref()),
                Some("add cluster = \"NAME\" or clusters = [{ name = \"…\", weight = … }]".into()),
            ),
        }
        let timeout = c.dur(&r.timeout, format!("{key}.timeout"));
        if timeout.is_zero()
            && r.timeout
                .0
                .as_ref()
                .is_some_and(|t| humantime::parse_duration(t.get_ref()).is_ok())
        {
            c.at(
                &r.name,
                format!("{key}.timeout"),
                "a zero timeout fails every request".into(),
                Some("use e.g. \"15s\"".into()),
            );
        }
        let per_try_timeout = if r.per_try_timeout.0.is_some() {
            let t = c.dur(&r.per_try_timeout, format!("{key}.per_try_timeout"));
            if t > timeout && !timeout.is_zero() {
                c.at(
                    &r.name,
                    format!("{key}.per_try_timeout"),
                    format!("per_try_timeout {t:?} is longer than the route timeout {timeout:?}"),
                    Some("a try can never outlast the whole request; make per_try_timeout ≤ timeout".into()),
                );
            }
            t
        } else {
            timeout
        };
        for &(ci, _) in &destinations {
            let ct = clusters[ci].connect_timeout;
            if ct > per_try_timeout && !per_try_timeout.is_zero() {
                c.warn(
                    &r.name,
                    format!("{key}.per_try_timeout"),
                    format!("cluster `{}` connect_timeout {ct:?} is longer than this route's per-try timeout {per_try_timeout:?}", clusters[ci].name),
                    Some("timeouts should descend: connect < per-try < route total".into()),
                );
            }
        }
        let mut on = 0u8;
        for (j, name) in r.retry_on.iter().enumerate() {
            match RetryOn::NAMES.iter().find(|(n, _)| n == name.get_ref()) {
                Some((_, bit)) => on |= bit,
                None => {
                    let hint = match did_you_mean(name.get_ref(), RetryOn::NAMES.iter().map(|(n, _)| *n)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("one of: {}", RetryOn::NAMES.map(|(n, _)| n).join(", ")),
                    };
                    c.at(
                        name,
                        format!("{key}.retry_on[{j}]"),
                        format!("unknown retry condition `{}`", name.get_ref()),
                        Some(hint),
                    );
                }
            }
        }
        if on & RetryOn::RETRIABLE_STATUS != 0 && r.retriable_statuses.is_empty() {
            c.at(
                &r.name,
                format!("{key}.retriable_statuses"),
                "retry_on has retriable-status but no statuses are listed".into(),
                Some("add retriable_statuses = [503]".into()),
            );
        }
        let retry = (on != 0).then(|| RetryPolicy {
            on: RetryOn(on),
            statuses: r.retriable_statuses.clone(),
            max_retries: r.max_retries,
            backoff: c.dur(&r.retry_backoff, format!("{key}.retry_backoff")),
            backoff_max: c.dur(&r.retry_backoff_max, format!("{key}.retry_backoff_max")),
            non_idempotent: r.retry_non_idempotent,
            buffer_bytes: r.retry_buffer_bytes,
        });
        let mut route_filters = Vec::new();
        for (j, name) in r.filters.iter().enumerate() {
            // usize::MAX: a filter that failed its own checks (reported there).
            match c.resolve(
                filter_names,
                name,
                format!("{key}.filters[{j}]"),
                format!("unknown filter `{}`", name.get_ref()),
                "define it with [[filter]] name = \"…\" path = \"….wasm\"",
            ) {
                Some(usize::MAX) | None => {}
                Some(idx) => route_filters.push(idx),
            }
        }
        let request_headers = c.rules(&r.request_headers, &format!("{key}.request_headers"));
        let response_headers = c.rules(&r.response_headers, &format!("{key}.response_headers"));
        let metadata = match &r.metadata {
            None => None,
            Some(toml::Value::Table(t)) if t.values().all(toml::Value::is_table) => {
                serde_json::to_value(t).ok().map(std::sync::Arc::new)
            }
            Some(_) => {
                c.at(
                    &r.name,
                    format!("{key}.metadata"),
                    "metadata is a table of namespaces, each a table of settings".into(),
                    Some("e.g. metadata = { \"my.filter\" = { mode = \"strict\", limit = 10 } }; filters read metadata.filter_metadata.my.filter.mode".into()),
                );
                None
            }
        };
        routes.push(RouteConfig {
            name: r.name.get_ref().clone(),
            listeners: r.listeners.iter().map(|l| l.get_ref().clone()).collect(),
            hosts,
            path,
            methods,
            headers,
            destinations,
            timeout,
            per_try_timeout,
            upgrade_idle_timeout: c.dur(&r.upgrade_idle_timeout, format!("{key}.upgrade_idle_timeout")),
            rate_limit: r
                .rate_limit
                .as_ref()
                .and_then(|rl| c.rate_limit(rl, &format!("{key}.rate_limit"), &r.name, file.ha.is_some())),
            retry,
            request_headers,
            response_headers,
            filters: route_filters,
            metadata,
        });
    }
    routes
}
