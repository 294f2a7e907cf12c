//! Counters the data plane bumps (atomics only, no locks on the request path) and their
//! Prometheus text rendering. Stats objects are keyed by identity (route name, cluster
//! name, cluster + endpoint address) in [`StatsRegistry`] so they survive reloads.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::balancer::PeakEwma;

/// Latency bucket bounds in seconds (Prometheus `le` labels).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Responses counted by status class: index 0 = 1xx … 4 = 5xx.
#[derive(Debug, Default)]
pub struct StatusClasses([AtomicU64; 5]);

impl StatusClasses {
    /// Counts one response with `status`.
    pub fn record(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0[class].fetch_add(1, Relaxed);
    }

    /// Count for class `1..=5`.
    pub fn get(&self, class: usize) -> u64 {
        self.0[class - 1].load(Relaxed)
    }
}

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-route counters.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by class.
    pub responses: StatusClasses,
    /// Time to response headers.
    pub latency: Histogram,
    /// Requests refused by the route's rate limit (429).
    pub rate_limited: AtomicU64,
    /// gRPC responses by grpc-status (0–16; 17 = other).
    pub grpc: [AtomicU64; 18],
}

impl RouteStats {
    /// Counts one gRPC response with status `g`.
    pub fn grpc_status(&self, g: u16) {
        self.grpc[usize::from(g).min(17)].fetch_add(1, Relaxed);
    }
}

/// Per-cluster counters.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Responses by class (including local 5xx for upstream failures).
    pub responses: StatusClasses,
    /// Requests in flight to the cluster.
    pub active: AtomicU64,
    /// Requests refused because no endpoint was available.
    pub no_endpoint: AtomicU64,
    /// Retries started.
    pub retries: AtomicU64,
    /// Retries in flight (budget and breaker input).
    pub retries_active: AtomicU64,
    /// Retries refused by the retry budget.
    pub retry_budget_exhausted: AtomicU64,
    /// Requests refused by a circuit breaker, by limit (connections, pending, requests, retries).
    pub breaker_overflows: [AtomicU64; 4],
    /// Upstream connections open across workers.
    pub upstream_connections: AtomicU64,
    /// Requests waiting for a new upstream connection.
    pub pending: AtomicU64,
}

/// Per-endpoint counters and load signals; shared by all workers.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Requests in flight (balancer input).
    pub active: AtomicU64,
    /// Peak-EWMA latency (balancer input).
    pub ewma: PeakEwma,
    /// Responses by class.
    pub responses: StatusClasses,
    /// Time to response headers.
    pub latency: Histogram,
    /// Upstream connections opened.
    pub connections_opened: AtomicU64,
    /// Requests sent on a pooled connection.
    pub connections_reused: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Connect or response timeouts.
    pub timeouts: AtomicU64,
    /// Responses whose body the upstream broke off after the head (counted apart from
    /// their status class, which was already counted when the head arrived).
    pub body_resets: AtomicU64,
    /// Health state and its counters.
    pub health: crate::health::EndpointHealth,
}

/// Per-listener counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now (across workers; also the max_connections gate).
    pub active: AtomicU64,
    /// Connections refused at accept because of max_connections.
    pub refused: AtomicU64,
    /// Requests rejected as malformed (400).
    pub malformed: AtomicU64,
    /// Requests rejected as oversized (431).
    pub oversized: AtomicU64,
    /// Connections closed because the request head did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Requests the client abandoned before their answer (logged as 499).
    pub client_aborts: AtomicU64,
    /// Requests whose client stopped sending the body (408).
    pub body_timeouts: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that resumed a session.
    pub tls_resumed: AtomicU64,
    /// TLS handshakes that failed (bad client certificate, protocol error, timeout).
    pub tls_handshake_failures: AtomicU64,
    /// L4 connections proxied.
    pub tcp_connections: AtomicU64,
    /// L4 bytes from clients to upstreams.
    pub tcp_bytes_in: AtomicU64,
    /// L4 bytes from upstreams to clients.
    pub tcp_bytes_out: AtomicU64,
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct ProcessStats {
    /// Requests with no matching route.
    pub no_route: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Access log files reopened (SIGUSR1).
    pub access_log_reopens: AtomicU64,
    /// Access log reopens that failed (the old file kept being written).
    pub access_log_reopen_failures: AtomicU64,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_failed: AtomicU64,
    /// Admin connections closed at accept because `MAX_ADMIN_CONNECTIONS` were open.
    pub admin_connections_refused: AtomicU64,
    /// Admin requests refused as cross-site, rebound or without the admin header (403).
    pub admin_requests_refused: AtomicU64,
}

/// Keeps stats objects by identity so a reload hands the same counters to the new
/// runtime. Locked only while a runtime is compiled, never on the request path.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    routes: Mutex<HashMap<String, Arc<RouteStats>>>,
    clusters: Mutex<HashMap<String, Arc<ClusterStats>>>,
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointStats>>>,
    listeners: Mutex<HashMap<String, Arc<ListenerStats>>>,
    limiters: Mutex<HashMap<String, Arc<crate::ratelimit::Limiter>>>,
    /// Learned sticky bindings of this node.
    pub sticky: crate::sticky::StickyTable,
    /// Process-wide counters.
    pub process: ProcessStats,
}

impl StatsRegistry {
    /// Stats of route `name`.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        get_or_default(&self.routes, name.to_string())
    }
    /// Stats of cluster `name`.
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        get_or_default(&self.clusters, name.to_string())
    }
    /// Stats of endpoint `addr` in cluster `cluster`.
    pub fn endpoint(&self, cluster: &str, addr: SocketAddr) -> Arc<EndpointStats> {
        get_or_default(&self.endpoints, (cluster.to_string(), addr))
    }
    /// The limiter of route `name`, kept across reloads unless its settings changed.
    pub fn limiter(&self, name: &str, cfg: &crate::config::LimitConfig) -> Arc<crate::ratelimit::Limiter> {
        let mut m = self.limiters.lock().expect("limiter registry poisoned");
        match m.get(name) {
            Some(l) if l.config == *cfg => l.clone(),
            _ => {
                let l = Arc::new(crate::ratelimit::Limiter::new(name, cfg.clone()));
                m.insert(name.to_string(), l.clone());
                l
            }
        }
    }

    /// Every limiter (for the sweeper).
    pub fn limiters(&self) -> Vec<Arc<crate::ratelimit::Limiter>> {
        self.limiters
            .lock()
            .expect("limiter registry poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Stats of listener `name`.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        get_or_default(&self.listeners, name.to_string())
    }
}

fn get_or_default<K: std::hash::Hash + Eq, V: Default>(m: &Mutex<HashMap<K, Arc<V>>>, k: K) -> Arc<V> {
    m.lock().expect("stats registry poisoned").entry(k).or_default().clone()
}

/// Renders the Prometheus text exposition for the current runtime.
pub fn render(rt: &crate::runtime::Runtime, listeners: &[(String, Arc<ListenerStats>)], reg: &StatsRegistry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let p = &reg.process;
    crate::process_metrics::render_build_info(&mut out);
    crate::process_metrics::render_process(&mut out);
    crate::process_metrics::render_certificates(&mut out, &rt.config.certificates);
    // The file's hash is in /status; a label that changes every reload would start a
    // new series each time.
    let _ = writeln!(
        out,
        "# HELP tandem_config_generation Generation of the applied configuration."
    );
    let _ = writeln!(out, "# TYPE tandem_config_generation gauge");
    let _ = writeln!(out, "tandem_config_generation {}", rt.generation);
    counter(&mut out, "tandem_reloads_total", "Configuration reloads by result.");
    let _ = writeln!(
        out,
        "tandem_reloads_total{{result=\"ok\"}} {}",
        p.reloads_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "tandem_reloads_total{{result=\"failed\"}} {}",
        p.reloads_failed.load(Relaxed)
    );
    for (name, help, v) in [
        (
            "tandem_admin_connections_refused_total",
            "Admin connections closed at accept because the connection cap was reached.",
            &p.admin_connections_refused,
        ),
        (
            "tandem_admin_requests_refused_total",
            "Admin requests refused as cross-site, DNS-rebound or missing the admin header (403).",
            &p.admin_requests_refused,
        ),
        (
            "tandem_no_route_total",
            "Requests that matched no route (404).",
            &p.no_route,
        ),
        (
            "tandem_access_log_dropped_total",
            "Access log lines dropped under back-pressure.",
            &p.access_log_dropped,
        ),
        (
            "tandem_access_log_reopens_total",
            "Access log files reopened on SIGUSR1 (log rotation).",
            &p.access_log_reopens,
        ),
        (
            "tandem_access_log_reopen_failures_total",
            "Access log reopens that failed; lines kept going to the file open before.",
            &p.access_log_reopen_failures,
        ),
    ] {
        counter(&mut out, name, help);
        let _ = writeln!(out, "{name} {}", v.load(Relaxed));
    }

    type ListenerField = fn(&ListenerStats) -> &AtomicU64;
    let lfields: [(&str, &str, bool, ListenerField); 15] = [
        (
            "tandem_listener_tls_handshakes_total",
            "TLS handshakes completed.",
            true,
            |s| &s.tls_handshakes,
        ),
        (
            "tandem_listener_tls_resumed_total",
            "TLS handshakes that resumed a session.",
            true,
            |s| &s.tls_resumed,
        ),
        (
            "tandem_listener_tls_handshake_failures_total",
            "Failed TLS handshakes.",
            true,
            |s| &s.tls_handshake_failures,
        ),
        (
            "tandem_listener_tcp_connections_total",
            "L4 connections proxied.",
            true,
            |s| &s.tcp_connections,
        ),
        (
            "tandem_listener_tcp_received_bytes_total",
            "L4 bytes from clients.",
            true,
            |s| &s.tcp_bytes_in,
        ),
        (
            "tandem_listener_tcp_sent_bytes_total",
            "L4 bytes to clients.",
            true,
            |s| &s.tcp_bytes_out,
        ),
        (
            "tandem_listener_connections_accepted_total",
            "Downstream connections accepted.",
            true,
            |s| &s.accepted,
        ),
        (
            "tandem_listener_connections_active",
            "Downstream connections open.",
            false,
            |s| &s.active,
        ),
        (
            "tandem_listener_connections_refused_total",
            "Connections refused by max_connections.",
            true,
            |s| &s.refused,
        ),
        ("tandem_listener_requests_total", "Requests received.", true, |s| {
            &s.requests
        }),
        (
            "tandem_listener_malformed_requests_total",
            "Requests rejected as malformed (400).",
            true,
            |s| &s.malformed,
        ),
        (
            "tandem_listener_oversized_requests_total",
            "Requests rejected as oversized (431).",
            true,
            |s| &s.oversized,
        ),
        (
            "tandem_listener_header_timeouts_total",
            "Connections closed by header_read_timeout.",
            true,
            |s| &s.header_timeouts,
        ),
        (
            "tandem_listener_client_aborts_total",
            "Requests the client abandoned before their answer (logged as 499).",
            true,
            |s| &s.client_aborts,
        ),
        (
            "tandem_listener_request_body_timeouts_total",
            "Requests whose client stopped sending its body for request_body_timeout (408).",
            true,
            |s| &s.body_timeouts,
        ),
    ];
    for (name, help, is_counter, field) in lfields {
        if is_counter {
            counter(&mut out, name, help);
        } else {
            gauge(&mut out, name, help);
        }
        for (lname, s) in listeners {
            let _ = writeln!(out, "{name}{{listener=\"{lname}\"}} {}", field(s).load(Relaxed));
        }
    }

    counter(
        &mut out,
        "tandem_route_responses_total",
        "Responses per route by status class.",
    );
    for r in &rt.routes {
        for class in 1..=5 {
            let _ = writeln!(
                out,
                "tandem_route_responses_total{{route=\"{}\",code=\"{class}xx\"}} {}",
                r.name,
                r.stats.responses.get(class)
            );
        }
    }
    histogram_head(
        &mut out,
        "tandem_route_latency_seconds",
        "Time to response headers per route.",
    );
    for r in &rt.routes {
        r.stats.latency.render(
            &mut out,
            "tandem_route_latency_seconds",
            &format!("route=\"{}\"", r.name),
        );
    }

    counter(
        &mut out,
        "tandem_route_rate_limited_total",
        "Requests refused by the route's rate limit (429).",
    );
    for r in &rt.routes {
        let _ = writeln!(
            out,
            "tandem_route_rate_limited_total{{route=\"{}\"}} {}",
            r.name,
            r.stats.rate_limited.load(Relaxed)
        );
    }
    gauge(
        &mut out,
        "tandem_sticky_bindings",
        "Learned sticky bindings held by this node.",
    );
    let _ = writeln!(out, "tandem_sticky_bindings {}", reg.sticky.len());
    counter(
        &mut out,
        "tandem_route_grpc_responses_total",
        "gRPC responses per route by grpc-status.",
    );
    for r in &rt.routes {
        for (g, v) in r.stats.grpc.iter().enumerate() {
            let n = v.load(Relaxed);
            if n > 0 {
                let label = if g == 17 { "other".to_string() } else { g.to_string() };
                let _ = writeln!(
                    out,
                    "tandem_route_grpc_responses_total{{route=\"{}\",grpc_status=\"{label}\"}} {n}",
                    r.name
                );
            }
        }
    }
    counter(
        &mut out,
        "tandem_cluster_responses_total",
        "Responses per cluster by status class.",
    );
    for c in &rt.clusters {
        for class in 1..=5 {
            let _ = writeln!(
                out,
                "tandem_cluster_responses_total{{cluster=\"{}\",code=\"{class}xx\"}} {}",
                c.name,
                c.stats.responses.get(class)
            );
        }
    }
    gauge(
        &mut out,
        "tandem_cluster_active_requests",
        "Requests in flight per cluster.",
    );
    for c in &rt.clusters {
        let _ = writeln!(
            out,
            "tandem_cluster_active_requests{{cluster=\"{}\"}} {}",
            c.name,
            c.stats.active.load(Relaxed)
        );
    }
    counter(
        &mut out,
        "tandem_cluster_no_endpoint_total",
        "Requests refused for lack of an endpoint (503).",
    );
    for c in &rt.clusters {
        let _ = writeln!(
            out,
            "tandem_cluster_no_endpoint_total{{cluster=\"{}\"}} {}",
            c.name,
            c.stats.no_endpoint.load(Relaxed)
        );
    }

    counter(
        &mut out,
        "tandem_endpoint_responses_total",
        "Upstream responses per endpoint by status class.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            for class in 1..=5 {
                let _ = writeln!(
                    out,
                    "tandem_endpoint_responses_total{{cluster=\"{}\",endpoint=\"{}\",code=\"{class}xx\"}} {}",
                    c.name,
                    e.address,
                    e.stats.responses.get(class)
                );
            }
        }
    }
    histogram_head(
        &mut out,
        "tandem_endpoint_latency_seconds",
        "Upstream time to response headers per endpoint.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            e.stats.latency.render(
                &mut out,
                "tandem_endpoint_latency_seconds",
                &format!("cluster=\"{}\",endpoint=\"{}\"", c.name, e.address),
            );
        }
    }
    type EndpointField = fn(&EndpointStats) -> &AtomicU64;
    let efields: [(&str, &str, bool, EndpointField); 6] = [
        (
            "tandem_endpoint_active_requests",
            "Requests in flight per endpoint.",
            false,
            |s| &s.active,
        ),
        (
            "tandem_endpoint_connections_opened_total",
            "Upstream connections opened.",
            true,
            |s| &s.connections_opened,
        ),
        (
            "tandem_endpoint_connections_reused_total",
            "Requests sent on a pooled connection.",
            true,
            |s| &s.connections_reused,
        ),
        (
            "tandem_endpoint_connect_failures_total",
            "Failed upstream connection attempts.",
            true,
            |s| &s.connect_failures,
        ),
        (
            "tandem_endpoint_timeouts_total",
            "Upstream connect or response timeouts.",
            true,
            |s| &s.timeouts,
        ),
        (
            "tandem_endpoint_response_body_resets_total",
            "Responses whose body the upstream broke off after the head.",
            true,
            |s| &s.body_resets,
        ),
    ];
    for (name, help, is_counter, field) in efields {
        if is_counter {
            counter(&mut out, name, help);
        } else {
            gauge(&mut out, name, help);
        }
        for c in &rt.clusters {
            for e in &c.endpoints {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                    c.name,
                    e.address,
                    field(&e.stats).load(Relaxed)
                );
            }
        }
    }
    type ClusterField = fn(&ClusterStats) -> &AtomicU64;
    let cfields: [(&str, &str, bool, ClusterField); 5] = [
        ("tandem_cluster_retries_total", "Retries started.", true, |s| &s.retries),
        ("tandem_cluster_retries_active", "Retries in flight.", false, |s| {
            &s.retries_active
        }),
        (
            "tandem_cluster_retry_budget_exhausted_total",
            "Retries refused by the retry budget.",
            true,
            |s| &s.retry_budget_exhausted,
        ),
        (
            "tandem_cluster_upstream_connections",
            "Upstream connections open.",
            false,
            |s| &s.upstream_connections,
        ),
        (
            "tandem_cluster_pending_requests",
            "Requests waiting for an upstream connection.",
            false,
            |s| &s.pending,
        ),
    ];
    for (name, help, is_counter, field) in cfields {
        if is_counter {
            counter(&mut out, name, help);
        } else {
            gauge(&mut out, name, help);
        }
        for c in &rt.clusters {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\"}} {}",
                c.name,
                field(&c.stats).load(Relaxed)
            );
        }
    }
    counter(
        &mut out,
        "tandem_cluster_breaker_overflows_total",
        "Requests refused by a circuit breaker (503).",
    );
    for c in &rt.clusters {
        for (i, limit) in crate::error::Limit::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tandem_cluster_breaker_overflows_total{{cluster=\"{}\",limit=\"{}\"}} {}",
                c.name,
                limit.as_str(),
                c.stats.breaker_overflows[i].load(Relaxed)
            );
        }
    }
    let now = crate::clock::now_ns();
    gauge(
        &mut out,
        "tandem_endpoint_healthy",
        "1 when the endpoint takes new requests (not unhealthy, ejected or draining).",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let _ = writeln!(
                out,
                "tandem_endpoint_healthy{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                c.name,
                e.address,
                u8::from(e.stats.health.eligible(now))
            );
        }
    }
    // One series per possible state (1 for the current one), so each keeps its labels.
    gauge(
        &mut out,
        "tandem_endpoint_state",
        "1 for the endpoint's current state (healthy, unhealthy, unknown, ejected, draining, drained), 0 for the others.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let current = e.stats.health.state_name(now);
            for state in tandem_abi::EndpointState::ALL.map(tandem_abi::EndpointState::name) {
                let _ = writeln!(
                    out,
                    "tandem_endpoint_state{{cluster=\"{}\",endpoint=\"{}\",state=\"{state}\"}} {}",
                    c.name,
                    e.address,
                    u8::from(current == state)
                );
            }
        }
    }
    counter(
        &mut out,
        "tandem_endpoint_ejections_total",
        "Outlier ejections by reason.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let h = &e.stats.health;
            for (reason, v) in [
                ("consecutive_5xx", &h.ejections_5xx),
                ("consecutive_gateway_errors", &h.ejections_gateway),
                ("success_rate", &h.ejections_success_rate),
                ("peer", &h.ejections_peer),
                ("refused_max_percent", &h.ejections_refused),
            ] {
                let _ = writeln!(
                    out,
                    "tandem_endpoint_ejections_total{{cluster=\"{}\",endpoint=\"{}\",reason=\"{reason}\"}} {}",
                    c.name,
                    e.address,
                    v.load(Relaxed)
                );
            }
        }
    }
    counter(
        &mut out,
        "tandem_endpoint_health_checks_total",
        "Active health probes by result.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let h = &e.stats.health;
            for (result, v) in [("pass", &h.checks_passed), ("fail", &h.checks_failed)] {
                let _ = writeln!(
                    out,
                    "tandem_endpoint_health_checks_total{{cluster=\"{}\",endpoint=\"{}\",result=\"{result}\"}} {}",
                    c.name,
                    e.address,
                    v.load(Relaxed)
                );
            }
        }
    }
    gauge(
        &mut out,
        "tandem_endpoint_weight_effective",
        "Effective weight (slow start applied).",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let _ = writeln!(
                out,
                "tandem_endpoint_weight_effective{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                c.name,
                e.address,
                crate::balancer::Candidate::weight(e, now) as f64 / 1000.0
            );
        }
    }
    gauge(
        &mut out,
        "tandem_endpoint_ewma_latency_seconds",
        "Peak-EWMA latency estimate per endpoint.",
    );
    for c in &rt.clusters {
        for e in &c.endpoints {
            let _ = writeln!(
                out,
                "tandem_endpoint_ewma_latency_seconds{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                c.name,
                e.address,
                e.stats.ewma.get() / 1e9
            );
        }
    }
    crate::wasm::metrics::render(&mut out);
    if let Some(p) = crate::pair::get() {
        render_group(&mut out, &p.view());
    }
    if let Some(v) = crate::vips::get() {
        v.render(&mut out);
    }
    out
}

/// The pair's Raft group as this node sees it: role, term, leader, quorum, log
/// positions, members' lag and last contact, snapshots, pending changes, refused peers
/// and VIP leases. Label sets are fixed (every role is listed, 0 or 1), so series stay
/// continuous across changes.
pub fn render_group(out: &mut String, v: &crate::pair::GroupView) {
    gauge(out, "tandem_ha_node_id", "This member's node id.");
    let _ = writeln!(out, "tandem_ha_node_id {}", v.id);
    gauge(
        out,
        "tandem_ha_role",
        "1 for this member's Raft role (stopped: the core quit).",
    );
    for role in ["leader", "follower", "candidate", "learner", "stopped"] {
        let _ = writeln!(out, "tandem_ha_role{{role=\"{role}\"}} {}", u8::from(v.role == role));
    }
    gauge(
        out,
        "tandem_ha_quorum",
        "1 while a quorum is within reach of this member.",
    );
    let _ = writeln!(out, "tandem_ha_quorum {}", u8::from(v.quorum));
    gauge(out, "tandem_ha_term", "Current Raft term.");
    let _ = writeln!(out, "tandem_ha_term {}", v.term);
    gauge(
        out,
        "tandem_ha_leader_id",
        "Node id of the leader this member follows (0: none).",
    );
    let _ = writeln!(out, "tandem_ha_leader_id {}", v.leader.unwrap_or(0));
    gauge(
        out,
        "tandem_ha_log_index",
        "Log positions: last held, applied, covered by the snapshot, purged.",
    );
    for (what, x) in [
        ("last", v.last_log_index),
        ("applied", v.last_applied),
        ("snapshot", v.snapshot_index),
        ("purged", v.purged_index),
    ] {
        let _ = writeln!(out, "tandem_ha_log_index{{position=\"{what}\"}} {}", x.unwrap_or(0));
    }
    gauge(out, "tandem_ha_members", "Members by kind.");
    let _ = writeln!(out, "tandem_ha_members{{kind=\"voter\"}} {}", v.voters.len());
    let _ = writeln!(out, "tandem_ha_members{{kind=\"learner\"}} {}", v.learners.len());
    type PeerField = fn(&crate::pair::PeerView) -> Option<f64>;
    let per_peer: [(&str, &str, PeerField); 2] = [
        (
            "tandem_ha_peer_lag_entries",
            "Leader only: log entries each member is behind.",
            |m| m.lag.map(|l| l as f64),
        ),
        (
            "tandem_ha_peer_last_contact_seconds",
            "Seconds since this member last heard from each other member.",
            |m| m.last_contact_seconds,
        ),
    ];
    for (name, help, field) in per_peer {
        gauge(out, name, help);
        for m in v.members.iter().filter(|m| m.id != v.id) {
            if let Some(x) = field(m) {
                let _ = writeln!(out, "{name}{{peer=\"{}\"}} {x}", m.id);
            }
        }
    }
    counter(
        out,
        "tandem_ha_snapshots_total",
        "Snapshots built here or installed from the leader.",
    );
    let _ = writeln!(out, "tandem_ha_snapshots_total{{kind=\"built\"}} {}", v.snapshots_built);
    let _ = writeln!(
        out,
        "tandem_ha_snapshots_total{{kind=\"installed\"}} {}",
        v.snapshots_installed
    );
    gauge(
        out,
        "tandem_ha_snapshot_last_build_seconds",
        "How long the last snapshot build took.",
    );
    let _ = writeln!(
        out,
        "tandem_ha_snapshot_last_build_seconds {}",
        v.snapshot_last_build_seconds
    );
    gauge(out, "tandem_ha_snapshot_bytes", "Size of the current snapshot.");
    let _ = writeln!(out, "tandem_ha_snapshot_bytes {}", v.snapshot_bytes);
    gauge(
        out,
        "tandem_ha_pending_changes",
        "Local changes not committed yet (kept while there is no quorum).",
    );
    let _ = writeln!(out, "tandem_ha_pending_changes {}", v.pending_changes);
    counter(
        out,
        "tandem_ha_peer_refused_total",
        "Peer connections or frames refused: handshake (no, bad or misnamed certificate, or too slow), capacity (listener caps), malformed (frame), identity (spoke for another node id).",
    );
    for (reason, n) in &v.peer_refused {
        let _ = writeln!(out, "tandem_ha_peer_refused_total{{reason=\"{reason}\"}} {n}");
    }
    gauge(out, "tandem_ha_table_entries", "Replicated table sizes.");
    for (t, n) in &v.tables {
        let _ = writeln!(out, "tandem_ha_table_entries{{table=\"{t}\"}} {n}");
    }
    gauge(
        out,
        "tandem_ha_lease_holder",
        "Node id allowed to hold each VIP (by VRID).",
    );
    for l in &v.leases {
        let _ = writeln!(out, "tandem_ha_lease_holder{{vrid=\"{}\"}} {}", l.vrid, l.holder);
    }
    gauge(
        out,
        "tandem_ha_lease_remaining_seconds",
        "Seconds left on each VIP lease.",
    );
    for l in &v.leases {
        let _ = writeln!(
            out,
            "tandem_ha_lease_remaining_seconds{{vrid=\"{}\"}} {}",
            l.vrid, l.remaining_seconds
        );
    }
}

/// Writes the HELP and TYPE lines of a counter.
pub(crate) fn counter(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}
/// Writes the HELP and TYPE lines of a gauge.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}
fn histogram_head(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
}
