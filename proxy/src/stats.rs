//! Counters the data plane bumps (atomics only, no locks on the request path). Stats
//! objects are keyed by identity (route name, cluster name, cluster + endpoint address)
//! in [`StatsRegistry`] so they survive reloads. `metrics.rs` renders them.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::balancer::PeakEwma;

/// Latency bucket bounds in seconds (Prometheus `le` labels).
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
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

    /// Writes the histogram's Prometheus samples (buckets, sum, count) for `name{labels}`.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
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
    /// Times an idle HTTP/1.1 connection gave its buffers back.
    pub idle_releases: AtomicU64,
    /// Idle plain HTTP/1.1 connections parked in their worker's lot now (no buffer, no
    /// task: see `http::idle_lot`).
    pub parked: AtomicU64,
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
    plugins: Mutex<HashMap<String, Arc<PluginStats>>>,
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
    /// Counters of filter `name` (the same object across reloads).
    pub fn plugin(&self, name: &str) -> Arc<PluginStats> {
        get_or_default(&self.plugins, name.to_string())
    }
    /// Every filter's counters, by name (for the exposition).
    pub fn plugins(&self) -> Vec<(String, Arc<PluginStats>)> {
        let m = self.plugins.lock().expect("plugin stats poisoned");
        let mut v: Vec<_> = m.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
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

/// Per-plugin host counters.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Stream contexts created.
    pub streams: AtomicU64,
    /// Guest traps (panics, unreachable, bad pointers).
    pub traps: AtomicU64,
    /// Callbacks interrupted by the CPU limit.
    pub deadlines: AtomicU64,
    /// Instances that hit the memory cap.
    pub memory_faults: AtomicU64,
    /// Instances created (first and after failures).
    pub instances: AtomicU64,
    /// Instance creations that failed.
    pub instance_failures: AtomicU64,
    /// Requests failed closed because of this plugin.
    pub failed_closed: AtomicU64,
    /// Requests where the failed plugin was skipped (fail_open).
    pub failed_open: AtomicU64,
    /// Local responses the guest sent.
    pub local_responses: AtomicU64,
    /// `http_call`s dispatched.
    pub callouts: AtomicU64,
    /// `http_call`s that failed or timed out.
    pub callout_failures: AtomicU64,
    /// gRPC calls and streams opened.
    pub grpc_calls: AtomicU64,
    /// gRPC calls and streams that closed with a status other than OK.
    pub grpc_failures: AtomicU64,
    /// gRPC calls refused because the instance had `grpc::MAX_OPEN` open.
    pub grpc_refused: AtomicU64,
    /// Largest linear memory of one instance (bytes): the largest size an instance's
    /// memory was allowed to grow to (`wasm::state::MemoryCap`).
    pub memory_bytes: AtomicU64,
}
