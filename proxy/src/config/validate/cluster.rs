//! `[[cluster]]`: balancers, endpoints, health checks, outlier detection, sticky sessions, pools.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::checker::*;
use crate::config::error::did_you_mean;
use crate::config::model::{self, ConfigFile, SpannedStr};
use crate::config::*;

impl Checker<'_> {
    pub(super) fn sticky(&mut self, st: &model::StickySection, key: &str) -> Option<crate::config::StickyConfig> {
        match st.mode.get_ref().as_str() {
            "cookie" => {
                if let Some(s) = &st.secret {
                    self.secret(s, format!("{key}.secret"));
                }
                let secret = match &st.secret {
                    Some(s) if s.get_ref().len() >= 16 => s.get_ref().as_bytes().to_vec(),
                    Some(s) => {
                        self.at(
                            s,
                            format!("{key}.secret"),
                            "the secret is shorter than 16 bytes".into(),
                            Some("use a long random string, the same on every node".into()),
                        );
                        return None;
                    }
                    None => {
                        self.at(
                            &st.mode,
                            format!("{key}.secret"),
                            "cookie stickiness needs a signing secret".into(),
                            Some("add secret = \"…\" (≥ 16 bytes, the same on every node of the pair)".into()),
                        );
                        return None;
                    }
                };
                let max_age = self.dur(&st.max_age, format!("{key}.max_age"));
                Some(crate::config::StickyConfig::Cookie {
                    name: st.cookie.clone(),
                    secret,
                    max_age: (!max_age.is_zero()).then_some(max_age),
                    secure: st.secure,
                })
            }
            "learned" => {
                let Some(on) = &st.on else {
                    self.at(
                        &st.mode,
                        format!("{key}.on"),
                        "learned stickiness needs a key".into(),
                        Some("add on = \"cookie:JSESSIONID\", \"header:NAME\" or \"source_ip\"".into()),
                    );
                    return None;
                };
                let on = parse_hash_on(self, on, format!("{key}.on"))?;
                Some(crate::config::StickyConfig::Learned {
                    on,
                    idle: self.dur(&st.idle_timeout, format!("{key}.idle_timeout")),
                })
            }
            other => {
                self.at(
                    &st.mode,
                    format!("{key}.mode"),
                    format!("unknown sticky mode `{other}`"),
                    Some("use \"cookie\" or \"learned\"".into()),
                );
                None
            }
        }
    }

    pub(super) fn health_check(
        &mut self,
        h: &model::HealthCheckSection,
        key: &str,
        anchor: &SpannedStr,
    ) -> Option<HealthCheckConfig> {
        let interval = self.dur(&h.interval, format!("{key}.interval"));
        let timeout = self.dur(&h.timeout, format!("{key}.timeout"));
        let jitter = self.dur(&h.jitter, format!("{key}.jitter"));
        if interval.is_zero() {
            self.at(
                anchor,
                format!("{key}.interval"),
                "a zero interval would probe in a busy loop".into(),
                Some("use e.g. \"2s\"".into()),
            );
        }
        if timeout > interval {
            self.warn(
                anchor,
                format!("{key}.timeout"),
                format!("probe timeout {timeout:?} is longer than the interval {interval:?}"),
                Some("probes will overlap; make the timeout shorter than the interval".into()),
            );
        }
        if h.rise == 0 || h.fall == 0 {
            self.at(
                anchor,
                format!("{key}.rise"),
                "rise and fall must be at least 1".into(),
                Some("e.g. rise = 2, fall = 3".into()),
            );
        }
        let kind = match h.kind.get_ref().as_str() {
            "http" => {
                let method = match http::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        self.at(
                            anchor,
                            format!("{key}.method"),
                            format!("`{}` is not an HTTP method", h.method),
                            None,
                        );
                        http::Method::GET
                    }
                };
                check_path(self, &h.path, format!("{key}.path"));
                let mut expected = Vec::new();
                for (i, e) in h.expected_statuses.iter().enumerate() {
                    let parsed = match e.get_ref().split_once('-') {
                        Some((a, b)) => a.trim().parse::<u16>().ok().zip(b.trim().parse::<u16>().ok()),
                        None => e.get_ref().trim().parse::<u16>().ok().map(|v| (v, v)),
                    };
                    match parsed {
                        Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => expected.push((a, b)),
                        _ => self.at(
                            e,
                            format!("{key}.expected_statuses[{i}]"),
                            format!("`{}` is not a status or range", e.get_ref()),
                            Some("write \"200\" or \"200-399\"".into()),
                        ),
                    }
                }
                CheckKind::Http {
                    method,
                    path: h.path.get_ref().clone(),
                    host: h.host.clone(),
                    expected,
                    body_contains: h.body_contains.clone(),
                }
            }
            "tcp" => CheckKind::Tcp {
                send: h.send.as_ref().map(|s| s.as_bytes().to_vec()),
                expect: h.expect.as_ref().map(|s| s.as_bytes().to_vec()),
            },
            other => {
                self.at(
                    &h.kind,
                    format!("{key}.kind"),
                    format!("unknown health check kind `{other}`"),
                    Some("use \"http\" or \"tcp\"".into()),
                );
                return None;
            }
        };
        Some(HealthCheckConfig {
            kind,
            interval,
            timeout,
            rise: h.rise.max(1),
            fall: h.fall.max(1),
            jitter,
            port: h.port,
            uneject: false,
        })
    }
}

/// `[[cluster]]`s; their names for the sections that refer to them.
pub(super) fn clusters(
    c: &mut Checker,
    file: &ConfigFile,
    base: &Path,
) -> (Vec<ClusterConfig>, HashMap<String, usize>) {
    let mut clusters = Vec::new();
    let mut cluster_names: HashMap<String, usize> = HashMap::new();
    for (i, cl) in file.clusters.iter().enumerate() {
        let key = format!("cluster[{i}]");
        c.define(
            &mut cluster_names,
            &cl.name,
            i,
            format!("{key}.name"),
            "cluster",
            "give each cluster a unique name",
        );
        let balancer = match BalancerKind::from_name(cl.balancer.get_ref()) {
            Some(b) => b,
            None => {
                let hint = match did_you_mean(cl.balancer.get_ref(), BalancerKind::NAMES) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("one of: {}", BalancerKind::NAMES.join(", ")),
                };
                c.at(
                    &cl.balancer,
                    format!("{key}.balancer"),
                    format!("unknown balancer `{}`", cl.balancer.get_ref()),
                    Some(hint),
                );
                BalancerKind::RoundRobin
            }
        };
        let hash_on = cl
            .hash_on
            .as_ref()
            .and_then(|h| parse_hash_on(&mut *c, h, format!("{key}.hash_on")));
        if balancer.is_hashing() && cl.hash_on.is_none() {
            c.at(
                &cl.balancer,
                format!("{key}.hash_on"),
                format!("balancer `{}` needs a hash key", balancer.name()),
                Some("add hash_on = \"header:NAME\", \"cookie:NAME\" or \"source_ip\"".into()),
            );
        }
        let protocol = match cl.protocol.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "h2c" | "http2" => UpstreamProtocol::H2c,
            other => {
                c.at(
                    &cl.protocol,
                    format!("{key}.protocol"),
                    format!("unknown upstream protocol `{other}`"),
                    Some("use \"http1\" or \"h2c\"".into()),
                );
                UpstreamProtocol::Http1
            }
        };
        if cl.endpoints.is_empty() {
            c.at(
                &cl.name,
                format!("{key}.endpoints"),
                format!("cluster `{}` has no endpoints", cl.name.get_ref()),
                Some("add endpoints = [{ address = \"127.0.0.1:9001\" }]".into()),
            );
        }
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        for (j, ep) in cl.endpoints.iter().enumerate() {
            let ekey = format!("{key}.endpoints[{j}]");
            if ep.weight == 0 {
                c.at(
                    &ep.address,
                    format!("{ekey}.weight"),
                    "weight 0 would never be picked".into(),
                    Some("use a weight ≥ 1, or remove the endpoint".into()),
                );
            }
            if let Some(address) = c.addr(&ep.address, format!("{ekey}.address")) {
                if endpoints.iter().any(|e| e.address == address) {
                    c.at(
                        &ep.address,
                        format!("{ekey}.address"),
                        format!("`{address}` is listed twice in cluster `{}`", cl.name.get_ref()),
                        Some("list each endpoint once and use weight to favour it".into()),
                    );
                }
                endpoints.push(EndpointConfig {
                    address,
                    weight: ep.weight.max(1),
                });
            }
        }
        if balancer == BalancerKind::Maglev && (cl.maglev_table_size as usize) < 100 * endpoints.len().max(1) {
            c.at(
                &cl.name,
                format!("{key}.maglev_table_size"),
                format!(
                    "{} is too small for {} endpoints",
                    cl.maglev_table_size,
                    endpoints.len()
                ),
                Some("use a prime above 100 × endpoints (default 65537)".into()),
            );
        }
        if cl.ring_hash_virtual_nodes == 0 {
            c.at(
                &cl.name,
                format!("{key}.ring_hash_virtual_nodes"),
                "0 leaves the ring empty".into(),
                Some("use 100–1000 (default 160)".into()),
            );
        }
        let health_check = cl
            .health_check
            .as_ref()
            .and_then(|h| c.health_check(h, &format!("{key}.health_check"), &cl.name));
        let outlier = cl.outlier_detection.as_ref().map(|o| {
            let k = format!("{key}.outlier_detection");
            if o.max_ejection_percent > 100 {
                c.at(
                    &cl.name,
                    format!("{k}.max_ejection_percent"),
                    format!("{} is above 100", o.max_ejection_percent),
                    Some("use 0–100".into()),
                );
            }
            OutlierConfig {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: c
                    .dur(&o.interval, format!("{k}.interval"))
                    .max(Duration::from_millis(100)),
                success_rate_min_requests: o.success_rate_min_requests,
                success_rate_min_hosts: o.success_rate_min_hosts,
                success_rate_stdev_factor: o.success_rate_stdev_factor,
                base_ejection_time: c.dur(&o.base_ejection_time, format!("{k}.base_ejection_time")),
                max_ejection_time: c.dur(&o.max_ejection_time, format!("{k}.max_ejection_time")),
                max_ejection_percent: o.max_ejection_percent.min(100),
                uneject_on_active_check: o.uneject_on_active_check,
            }
        });
        let slow_window = c.dur(&cl.slow_start, format!("{key}.slow_start"));
        if cl.slow_start_aggression <= 0.0 {
            c.at(
                &cl.name,
                format!("{key}.slow_start_aggression"),
                "must be above 0".into(),
                Some("1.0 is linear; larger ramps faster early".into()),
            );
        }
        let slow_start = (!slow_window.is_zero()).then(|| SlowStart {
            window: slow_window,
            aggression: cl.slow_start_aggression.max(0.01),
            min_weight: f64::from(cl.slow_start_min_weight_percent.min(100)) / 100.0,
        });
        if cl.panic_threshold > 100 {
            c.at(
                &cl.name,
                format!("{key}.panic_threshold"),
                format!("{} is above 100", cl.panic_threshold),
                Some("use 0–100 (default 50); 0 disables panic mode".into()),
            );
        }
        let connect_timeout = c.dur(&cl.connect_timeout, format!("{key}.connect_timeout"));
        let pool_idle_timeout = c.dur(&cl.pool_idle_timeout, format!("{key}.pool_idle_timeout"));
        let max_connection_age = c.dur(&cl.max_connection_age, format!("{key}.max_connection_age"));
        let (tls, tls_at) = match cl
            .tls
            .as_ref()
            .and_then(|t| c.upstream_tls(t, base, &format!("{key}.tls"), &cl.name, protocol))
        {
            Some((settings, at)) => (Some(settings), at),
            None => (None, Anchor::default()),
        };
        clusters.push(ClusterConfig {
            name: cl.name.get_ref().clone(),
            balancer,
            hash_on,
            protocol,
            connect_timeout,
            pool_max_idle_per_endpoint: cl.pool_max_idle_per_endpoint,
            pool_idle_timeout,
            max_connection_age: (max_connection_age > Duration::ZERO).then_some(max_connection_age),
            ring_hash_virtual_nodes: cl.ring_hash_virtual_nodes.max(1),
            maglev_table_size: cl.maglev_table_size,
            endpoints,
            health_check,
            outlier,
            slow_start,
            panic_threshold: f64::from(cl.panic_threshold.min(100)) / 100.0,
            breakers: BreakerConfig {
                max_connections: cl.circuit_breakers.max_connections,
                max_pending: cl.circuit_breakers.max_pending,
                max_requests: cl.circuit_breakers.max_requests,
                max_retries: cl.circuit_breakers.max_retries,
            },
            retry_budget: RetryBudget {
                ratio: (cl.retry_budget.budget_percent / 100.0).clamp(0.0, 1.0),
                min_concurrency: cl.retry_budget.min_retry_concurrency,
            },
            tls,
            tls_at,
            sticky: cl.sticky.as_ref().and_then(|st| c.sticky(st, &format!("{key}.sticky"))),
            proxy_protocol: cl.proxy_protocol.as_ref().and_then(|p| match p.get_ref().as_str() {
                "v1" => Some(ProxyProtocolVersion::V1),
                "v2" => Some(ProxyProtocolVersion::V2),
                other => {
                    c.at(
                        p,
                        format!("{key}.proxy_protocol"),
                        format!("unknown PROXY protocol version `{other}`"),
                        Some("use \"v1\" or \"v2\"".into()),
                    );
                    None
                }
            }),
        });
    }
    (clusters, cluster_names)
}
