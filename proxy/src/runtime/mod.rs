//! The compiled runtime: one immutable snapshot per configuration version, swapped
//! atomically on reload. In-flight requests keep the `Arc<Runtime>` they started with.

pub(crate) mod artifacts;
pub(crate) mod passive;
pub(crate) mod plugin;
pub(crate) mod router;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::{self, Candidate, Table};
use crate::config::{
    BalancerKind, BreakerConfig, ClusterConfig, Config, HashOn, HeaderRules, HealthCheckConfig, OutlierConfig,
    RetryBudget, RetryPolicy, SlowStart, UpstreamProtocol,
};
use crate::stats::{ClusterStats, EndpointStats, RouteStats, StatsRegistry};

pub(crate) use artifacts::{Artifacts, CertificateExpiry};
pub(crate) use router::{RequestFacts, Router};

/// Everything the data plane needs to serve requests for one config version.
#[derive(Debug)]
pub struct Runtime {
    /// Increases by one per applied configuration.
    pub generation: u64,
    /// Hash of the configuration text.
    pub hash: u64,
    /// The validated configuration it was compiled from.
    pub config: Arc<Config>,
    /// One router per listener, in listener order.
    pub routers: Vec<Router>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Clusters in file order.
    pub clusters: Vec<Cluster>,
    /// proxy-wasm filters of this generation.
    pub plugins: Vec<Arc<crate::runtime::plugin::Plugin>>,
    /// Network filters per listener (L4), in listener order.
    pub listener_filters: Vec<Vec<Arc<crate::runtime::plugin::Plugin>>>,
    /// TLS server configs per listener (None: plain), in listener order.
    pub listener_tls: Vec<Option<Arc<crate::tls::ServerTls>>>,
    /// Certificates this node presents, with when each expires.
    pub certificates: Vec<CertificateExpiry>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name (shared with access log records).
    pub name: Arc<str>,
    /// (cluster index, weight).
    pub destinations: Vec<(usize, u32)>,
    /// Sum of destination weights.
    pub total_weight: u32,
    /// Upstream exchange bound over all attempts.
    pub timeout: Duration,
    /// Bound on one attempt.
    pub per_try_timeout: Duration,
    /// Idle timeout of upgraded connections and tunnels.
    pub upgrade_idle_timeout: Duration,
    /// Admission limiter (its counts survive reloads while its settings do not change).
    pub limiter: Option<Arc<crate::ratelimit::Limiter>>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Request rewrites.
    pub request_headers: HeaderRules,
    /// Response rewrites.
    pub response_headers: HeaderRules,
    /// Counters.
    pub stats: Arc<RouteStats>,
    /// proxy-wasm filters run on its requests, in order.
    pub filters: Vec<Arc<crate::runtime::plugin::Plugin>>,
    /// Metadata for its filters (`route_metadata.filter_metadata.*` properties).
    pub metadata: Option<Arc<serde_json::Value>>,
    /// Which `X-Forwarded-*` headers its requests get (`[server] forwarded_headers`).
    pub forwarded: crate::config::ForwardedHeaders,
}

impl Route {
    /// Picks the destination cluster by weight (one random draw only for splits).
    pub fn pick_cluster(&self) -> usize {
        if self.destinations.len() == 1 {
            return self.destinations[0].0;
        }
        let mut r = fastrand::u32(0..self.total_weight);
        for &(idx, w) in &self.destinations {
            if r < w {
                return idx;
            }
            r -= w;
        }
        self.destinations[self.destinations.len() - 1].0
    }
}

/// A compiled cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Name (shared with access log records).
    pub name: Arc<str>,
    /// Index in `Runtime::clusters`.
    pub index: usize,
    /// Balancer.
    pub balancer: BalancerKind,
    /// Hash key source.
    pub hash_on: Option<HashOn>,
    /// Shared lookup table for hashing balancers.
    pub table: Table,
    /// Upstream protocol.
    pub protocol: UpstreamProtocol,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Pool settings.
    pub pool: PoolSettings,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Counters.
    pub stats: Arc<ClusterStats>,
    /// Active health check (run by the health thread).
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    pub outlier: Option<OutlierConfig>,
    /// Fraction of eligible endpoints below which all are used.
    pub panic_threshold: f64,
    /// Admission limits.
    pub breakers: BreakerConfig,
    /// Retry budget.
    pub retry_budget: RetryBudget,
    /// TLS to the endpoints.
    pub tls: Option<(crate::tls::UpstreamTls, Arc<rustls::ClientConfig>)>,
    /// PROXY protocol header on new upstream connections.
    pub proxy_protocol: Option<crate::config::ProxyProtocolVersion>,
    /// Sticky sessions.
    pub sticky: Option<crate::config::StickyConfig>,
}

/// Per-cluster upstream pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept per endpoint per worker.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Connections older than this are not reused.
    pub max_age: Option<Duration>,
    /// Identity of how connections are made (protocol, TLS, PROXY header): a reload that
    /// changes it never reuses connections made the old way.
    pub profile: u64,
}

/// A compiled endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub address: SocketAddr,
    /// Weight.
    pub weight: u32,
    /// Shared counters, load signals and health (identity survives reloads).
    pub stats: Arc<EndpointStats>,
    /// The cluster's slow start, if any.
    pub slow_start: Option<SlowStart>,
}

impl Candidate for Endpoint {
    fn weight(&self, now_ns: u64) -> u64 {
        let w = u64::from(self.weight) * 1000;
        match &self.slow_start {
            Some(ss) => ((w as f64 * self.stats.health.slow_start_factor(now_ns, ss)) as u64).max(1),
            None => w,
        }
    }
    fn active(&self) -> u64 {
        self.stats.active.load(Relaxed)
    }
    fn ewma_ns(&self) -> f64 {
        self.stats.ewma.get()
    }
    fn eligible(&self, now_ns: u64) -> bool {
        self.stats.health.eligible(now_ns)
    }
    fn draining(&self) -> bool {
        self.stats.health.draining.load(Relaxed)
    }
}

impl Runtime {
    /// Compiles a validated configuration with what its files became. Never fails:
    /// validation and [`Artifacts::build`] already refused everything that could.
    pub fn compile(config: Arc<Config>, artifacts: Artifacts, generation: u64, stats: &StatsRegistry) -> Runtime {
        let clusters: Vec<Cluster> = config
            .clusters
            .iter()
            .zip(artifacts.cluster_tls)
            .enumerate()
            .map(|(i, (c, tls))| compile_cluster(i, c, tls, stats))
            .collect();
        let plugins: Vec<Arc<crate::runtime::plugin::Plugin>> = config
            .filters
            .iter()
            .zip(&artifacts.modules)
            .map(|(f, module)| Arc::new(crate::runtime::plugin::Plugin::new(f, module, stats)))
            .collect();
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                destinations: r.destinations.clone(),
                total_weight: r.destinations.iter().map(|d| d.1).sum(),
                timeout: r.timeout,
                per_try_timeout: r.per_try_timeout,
                upgrade_idle_timeout: r.upgrade_idle_timeout,
                limiter: r.rate_limit.as_ref().map(|rl| stats.limiter(&r.name, rl)),
                retry: r.retry.clone(),
                request_headers: r.request_headers.clone(),
                response_headers: r.response_headers.clone(),
                stats: stats.route(&r.name),
                filters: r.filters.iter().map(|&i| plugins[i].clone()).collect(),
                metadata: r.metadata.clone(),
                forwarded: config.server.forwarded,
            })
            .collect();
        let routers = config
            .listeners
            .iter()
            .map(|l| Router::new(&l.name, &config.routes))
            .collect();
        let listener_filters = config
            .listeners
            .iter()
            .map(|l| {
                l.filters
                    .iter()
                    .filter_map(|n| plugins.iter().find(|p| &*p.name == n.as_str()).cloned())
                    .collect()
            })
            .collect();
        Runtime {
            listener_filters,
            listener_tls: artifacts.listener_tls,
            certificates: artifacts.certificates,
            generation,
            hash: config.hash,
            config,
            routers,
            routes,
            clusters,
            plugins,
        }
    }

    /// Cluster by name (L4 listeners name their destinations).
    pub fn cluster_named(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| &*c.name == name)
    }
}

fn compile_cluster(
    index: usize,
    c: &ClusterConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: &StatsRegistry,
) -> Cluster {
    let keys: Vec<(String, u32)> = c.endpoints.iter().map(|e| (e.address.to_string(), e.weight)).collect();
    Cluster {
        name: c.name.as_str().into(),
        index,
        balancer: c.balancer,
        hash_on: c.hash_on.clone(),
        table: Table::build(c.balancer, &keys, c.ring_hash_virtual_nodes, c.maglev_table_size),
        protocol: c.protocol,
        connect_timeout: c.connect_timeout,
        pool: PoolSettings {
            max_idle: c.pool_max_idle_per_endpoint,
            idle_timeout: c.pool_idle_timeout,
            max_age: c.max_connection_age,
            profile: crate::config::fnv1a(format!("{:?}|{:?}|{:?}", c.protocol, c.tls, c.proxy_protocol).as_bytes()),
        },
        endpoints: c
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address,
                weight: e.weight,
                stats: stats.endpoint(&c.name, e.address),
                slow_start: c.slow_start,
            })
            .collect(),
        stats: stats.cluster(&c.name),
        health_check: c.health_check.clone(),
        outlier: c.outlier.clone(),
        panic_threshold: c.panic_threshold,
        breakers: c.breakers,
        retry_budget: c.retry_budget,
        tls: c.tls.clone().zip(tls),
        proxy_protocol: c.proxy_protocol,
        sticky: c.sticky.clone(),
    }
}

impl Cluster {
    /// Endpoint index by address.
    pub fn endpoint_index(&self, addr: SocketAddr) -> Option<usize> {
        self.endpoints.iter().position(|e| e.address == addr)
    }

    /// The request's hash key for hashing balancers, if present.
    pub fn hash_of(&self, headers: &http::HeaderMap, client: SocketAddr) -> Option<u64> {
        match self.hash_on.as_ref()? {
            HashOn::Header(name) => headers.get(name).map(|v| balancer::hash_key(v.as_bytes())),
            HashOn::Cookie(name) => cookie_value(headers, name).map(|v| balancer::hash_key(v.as_bytes())),
            HashOn::SourceIp => Some(match client.ip() {
                std::net::IpAddr::V4(a) => balancer::hash_key(&a.octets()),
                std::net::IpAddr::V6(a) => balancer::hash_key(&a.octets()),
            }),
        }
    }
}

/// Finds cookie `name` in the request's Cookie headers.
pub(crate) fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}
