//! Configuration: TOML file → [`model::ConfigFile`] (serde, unknown keys refused) →
//! validated [`Config`] (every problem reported with file, line, key and fix): plain
//! values, nothing built. `runtime::Artifacts::build` then loads what the files name
//! (certificates, filter modules) and `runtime::Runtime::compile` turns both into what
//! the data plane uses; the [`Anchor`]s kept here let those steps name line and key too.
//!
//! Restart-only settings (server, admin, log, listeners) are kept apart from hot ones
//! (routes, clusters) so a reload can tell which parts it may apply.

pub mod access;
pub mod error;
pub mod load;
pub mod model;
pub mod traffic;
pub mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

pub use error::{Anchor, ConfigError, ConfigIssue};
pub use load::{invalid, load_file, load_str, read_file, read_str, Reading};
pub use traffic::{Algorithm, ForwardedHeaders, LimitConfig, LimitKey, RequestIdMode, Scope, StickyConfig};

/// A validated configuration: every value parsed, every reference resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (path or label), for messages.
    pub source: String,
    /// FNV-1a hash of the file text, shown by the admin API to tell versions apart.
    pub hash: u64,
    /// Process settings (restart-only).
    pub server: ServerConfig,
    /// Admin API settings (restart-only).
    pub admin: AdminConfig,
    /// Logging settings (restart-only).
    pub log: LogConfig,
    /// Listeners (restart-only).
    pub listeners: Vec<ListenerConfig>,
    /// Routes in file order (hot).
    pub routes: Vec<RouteConfig>,
    /// Clusters in file order (hot).
    pub clusters: Vec<ClusterConfig>,
    /// The pair's Raft group (restart-only).
    pub ha: Option<HaConfigSection>,
    /// proxy-wasm filters (hot), in file order.
    pub filters: Vec<FilterConfig>,
    /// Floating VIPs (restart-only).
    pub vips: Vec<tandem_ha::vip::router::VipConfig>,
    /// The BGP speaker announcing the anycast addresses (restart-only).
    pub bgp: Option<BgpConfig>,
    /// Anycast service addresses (restart-only).
    pub anycast: Vec<AnycastConfig>,
    /// Every file and directory the process will open, with the key naming it:
    /// `tandem check` verifies the service user may use them.
    pub files: Vec<access::FileUse>,
    /// Legal but probably unintended settings (e.g. a connect timeout longer than the
    /// per-try timeout); printed by `tandem check` and logged at load.
    pub warnings: Vec<ConfigIssue>,
}

impl Config {
    /// Every address this node may stop receiving: its VIPs and its anycast addresses
    /// (listeners on them bind before the node holds them, and close their SYN gate
    /// before the VIPs are released or the routes withdrawn).
    pub fn released_addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        let vips = self.vips.iter().flat_map(|v| v.addresses.iter().map(|(a, _)| *a));
        vips.chain(self.anycast.iter().flat_map(|g| g.addresses.iter().map(|(a, _)| *a)))
    }
}

/// Validated `[bgp]`: the node's BGP speaker (BIRD 2) as Tandem drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    /// The file Tandem writes the announced routes to (bird.conf includes it).
    pub fragment: std::path::PathBuf,
    /// BIRD's control socket.
    pub control_socket: std::path::PathBuf,
    /// The `birdc` program.
    pub birdc: String,
    /// The static protocol's name in the fragment (IPv6: with `6` appended).
    pub protocol: String,
}

/// Validated `[[anycast]]`: service addresses announced while the node is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnycastConfig {
    /// Name in logs, metrics and status.
    pub name: String,
    /// The addresses with their prefix lengths.
    pub addresses: Vec<(std::net::IpAddr, u8)>,
    /// Interface the addresses are held on.
    pub interface: String,
    /// Clusters that must have an endpoint taking traffic.
    pub track_clusters: Vec<String>,
    /// Withdraw while the node has no quorum of its group (needs `[ha]`).
    pub withdraw_on_no_quorum: bool,
    /// Healthy this long before an announcement.
    pub hold_down: Duration,
    /// Unhealthy this long before a withdrawal.
    pub withdraw_after: Duration,
}

/// What a failing filter means for its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request fails with 503.
    FailClosed,
    /// The filter is skipped for that request.
    FailOpen,
}

/// A validated `[[filter]]` (its module is loaded and compiled by `runtime::Artifacts`).
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Name (`plugin_name`).
    pub name: String,
    /// Module file.
    pub path: std::path::PathBuf,
    /// `plugin_root_id`.
    pub root_id: String,
    /// VM id (shared data and queues scope).
    pub vm_id: String,
    /// Plugin configuration bytes.
    pub config: Vec<u8>,
    /// VM configuration bytes.
    pub vm_config: Vec<u8>,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// Memory cap per instance, bytes.
    pub memory_limit: usize,
    /// CPU bound per callback.
    pub cpu_limit: Duration,
    /// Cluster-scoped shared-data prefix.
    pub shared_prefix: Option<String>,
    /// WASI environment.
    pub env: Vec<(String, String)>,
    /// The module's pinned SHA-256 (hex), if any.
    pub sha256: Option<String>,
    /// Where `path` is written (a module that cannot be read or compiled is reported there).
    pub path_at: Anchor,
    /// Where `sha256` is written (a module that does not match is reported there).
    pub sha256_at: Anchor,
    /// Line and column of its `name` in the file: where a filter that does not start
    /// is reported (it is started once before the configuration is taken).
    pub declared_at: (usize, usize),
}

/// Validated `[ha]`.
#[derive(Debug, Clone)]
pub struct HaConfigSection {
    /// Group settings for tandem-ha.
    pub group: tandem_ha::HaConfig,
    /// Ids of witness members.
    pub witnesses: Vec<u64>,
    /// Adopt peers' healthy verdicts where own checks are off.
    pub adopt_peer_recovery: bool,
}

/// Process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Worker threads (already resolved from 0 = per core).
    pub workers: usize,
    /// Graceful-stop bound.
    pub drain_timeout: Duration,
    /// Maintenance: how long clients are asked to close their connections before the
    /// VIPs are released.
    pub maintenance_handover: Duration,
    /// What happens to `X-Request-Id`.
    pub request_id: crate::config::RequestIdMode,
    /// Which `X-Forwarded-*` headers requests get.
    pub forwarded: crate::config::ForwardedHeaders,
}

/// Admin API settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Bind address.
    pub listen: SocketAddr,
    /// The file has an `[admin]` section (a witness starts its admin API only then).
    pub explicit: bool,
    /// Required bearer token, if any.
    pub token: Option<String>,
}

/// Output format of the process log or the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Disabled.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(std::path::PathBuf),
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// tracing filter directive.
    pub level: String,
    /// Process log format.
    pub format: LogFormat,
    /// Access log target.
    pub access_log: AccessLogTarget,
    /// Access log format.
    pub access_log_format: LogFormat,
}

/// A downstream listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Name.
    pub name: String,
    /// Bind address.
    pub listen: SocketAddr,
    /// Connection cap across workers.
    pub max_connections: usize,
    /// Requests per connection, 0 = unlimited.
    pub max_requests_per_connection: u64,
    /// Request head size cap.
    pub max_header_bytes: usize,
    /// Header count cap.
    pub max_headers: usize,
    /// Slowloris guard.
    pub header_read_timeout: Duration,
    /// Longest wait on the client between two parts of its request body (408 after it).
    pub request_body_timeout: Duration,
    /// Keep-alive idle bound.
    pub idle_timeout: Duration,
    /// Accept h2c prior knowledge.
    pub http2: bool,
    /// L7 or L4.
    pub protocol: ListenerProtocol,
    /// TLS settings (files reload with the configuration).
    pub tls: Option<crate::tls::ListenerTls>,
    /// Where `tls` and each of its certificates are written.
    pub tls_at: TlsAnchors,
    /// Sources trusted to send a PROXY protocol header.
    pub proxy_protocol_from: Vec<Cidr>,
    /// L4: default cluster name.
    pub cluster: Option<String>,
    /// L4: (server-name patterns, cluster name).
    pub sni_routes: Vec<(Vec<HostPattern>, String)>,
    /// L4: connection age bound.
    pub max_connection_age: Option<Duration>,
    /// L4: copy buffer per direction.
    pub tcp_buffer_bytes: usize,
    /// L4: network filter names (resolved against `Config::filters`).
    pub filters: Vec<String>,
    /// The kernel hands a connection over once its first bytes arrive, or after
    /// [`DEFER_ACCEPT_SECONDS`] (`TCP_DEFER_ACCEPT`): one wake-up less per connection,
    /// and connections that send nothing cost no process memory meanwhile.
    pub defer_accept: bool,
}

/// How long the kernel holds a connection that has sent nothing when its listener has
/// `defer_accept` (HAProxy's `defer-accept` uses the same second). It then hands it
/// over anyway, and `header_read_timeout` runs from there.
pub const DEFER_ACCEPT_SECONDS: u32 = 1;

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2, routed by route tables.
    Http,
    /// TCP proxying (optionally SNI-routed TLS passthrough, or TLS termination).
    Tcp,
}

/// Where a listener's TLS section and each of its certificates are written: a
/// certificate that does not load is reported at the one it concerns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsAnchors {
    /// The `tls` table (or the listener's name when it has none).
    pub section: Anchor,
    /// One per certificate, in order.
    pub certificates: Vec<Anchor>,
}

/// An address block (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub net: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `IP` or `IP/len`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<std::net::IpAddr>().ok()?, len.parse::<u8>().ok()?),
            None => {
                let ip: std::net::IpAddr = s.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr { net: ip, prefix: len })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Anchored regular expression.
    Regex(Regex),
}

/// How a route matches one header.
#[derive(Debug, Clone)]
pub enum HeaderCondition {
    /// Must be present.
    Present,
    /// Must be absent.
    Absent,
    /// Must equal.
    Exact(String),
    /// Must match (anchored).
    Regex(Regex),
}

/// A host pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*` or no hosts: any host.
    Any,
    /// `api.example.com` (stored lowercase, without port).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

/// Header rewrite rules.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Appended.
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Replaced.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed.
    pub remove: Vec<http::HeaderName>,
}

impl HeaderRules {
    /// True when there is nothing to apply (lets the hot path skip the call).
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name.
    pub name: String,
    /// Listener names it serves (empty = all).
    pub listeners: Vec<String>,
    /// Host patterns (never empty: `[Any]` when unspecified).
    pub hosts: Vec<HostPattern>,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods (empty = any).
    pub methods: Vec<http::Method>,
    /// Header conditions.
    pub headers: Vec<(http::HeaderName, HeaderCondition)>,
    /// (cluster index, weight); weights sum > 0.
    pub destinations: Vec<(usize, u32)>,
    /// Upstream exchange bound over all attempts.
    pub timeout: Duration,
    /// Bound on one attempt (≤ `timeout`).
    pub per_try_timeout: Duration,
    /// Idle timeout of upgraded connections and tunnels.
    pub upgrade_idle_timeout: Duration,
    /// Admission limit.
    pub rate_limit: Option<crate::config::LimitConfig>,
    /// Retry policy, if the route retries.
    pub retry: Option<RetryPolicy>,
    /// Request header rules.
    pub request_headers: HeaderRules,
    /// Response header rules.
    pub response_headers: HeaderRules,
    /// Indices into `Config::filters`, in order.
    pub filters: Vec<usize>,
    /// Metadata for filters, by namespace (`filter_metadata`), as JSON.
    pub metadata: Option<std::sync::Arc<serde_json::Value>>,
}

/// The balancing algorithm of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    /// Each endpoint in turn.
    RoundRobin,
    /// Smooth weighted round robin.
    Weighted,
    /// Fewest active requests (weighted), two random candidates.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency × outstanding.
    P2cEwma,
    /// Consistent hashing on a ring with virtual nodes.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
    /// Uniform (weighted) random.
    Random,
}

impl BalancerKind {
    /// Every accepted name, for messages.
    pub const NAMES: [&'static str; 7] = [
        "round_robin",
        "weighted",
        "least_request",
        "p2c_ewma",
        "ring_hash",
        "maglev",
        "random",
    ];

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "round_robin" => Self::RoundRobin,
            "weighted" => Self::Weighted,
            "least_request" => Self::LeastRequest,
            "p2c_ewma" => Self::P2cEwma,
            "ring_hash" => Self::RingHash,
            "maglev" => Self::Maglev,
            "random" => Self::Random,
            _ => return None,
        })
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether the balancer needs a hash key.
    pub fn is_hashing(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// Where a hashing balancer takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client address.
    SourceIp,
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 prior knowledge (gRPC).
    H2c,
}

/// A validated endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Address.
    pub address: SocketAddr,
    /// Weight (> 0).
    pub weight: u32,
}

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Name.
    pub name: String,
    /// Balancer.
    pub balancer: BalancerKind,
    /// Hash key source (hashing balancers).
    pub hash_on: Option<HashOn>,
    /// Upstream protocol.
    pub protocol: UpstreamProtocol,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Pool cap.
    pub pool_max_idle_per_endpoint: usize,
    /// Pool idle bound.
    pub pool_idle_timeout: Duration,
    /// Connection age bound (None = unlimited).
    pub max_connection_age: Option<Duration>,
    /// Ring points per weight unit.
    pub ring_hash_virtual_nodes: u32,
    /// Maglev table size.
    pub maglev_table_size: u32,
    /// Endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// Active health check.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    pub outlier: Option<OutlierConfig>,
    /// Slow start for new and recovered endpoints.
    pub slow_start: Option<SlowStart>,
    /// Fraction (0–1) of eligible endpoints below which all are used.
    pub panic_threshold: f64,
    /// Admission limits.
    pub breakers: BreakerConfig,
    /// Retry budget.
    pub retry_budget: RetryBudget,
    /// TLS to the endpoints (the client config is built by `runtime::Artifacts`).
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Where `tls`'s files are written.
    pub tls_at: Anchor,
    /// PROXY protocol header sent on new upstream connections.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Sticky sessions.
    pub sticky: Option<crate::config::StickyConfig>,
}

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// What an active probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// An HTTP/1.1 request on a fresh connection.
    Http {
        /// Method.
        method: http::Method,
        /// Path.
        path: String,
        /// Host header (None = the endpoint address).
        host: Option<String>,
        /// Passing status ranges (inclusive).
        expected: Vec<(u16, u16)>,
        /// Required body substring.
        body_contains: Option<String>,
    },
    /// A TCP connect, optionally with a send/expect exchange.
    Tcp {
        /// Bytes sent after connecting.
        send: Option<Vec<u8>>,
        /// Bytes the reply must contain.
        expect: Option<Vec<u8>>,
    },
}

/// A validated active health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Probe kind.
    pub kind: CheckKind,
    /// Interval.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Passes to become healthy.
    pub rise: u32,
    /// Failures to become unhealthy.
    pub fall: u32,
    /// Random extra delay per interval.
    pub jitter: Duration,
    /// Port override.
    pub port: Option<u16>,
    /// Set from the cluster's outlier detection: a pass ends an ejection.
    pub uneject: bool,
}

/// Validated outlier detection.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive 5xx to eject (0 = off).
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors to eject (0 = off).
    pub consecutive_gateway_errors: u32,
    /// Success-rate sweep interval.
    pub interval: Duration,
    /// Minimum requests per endpoint per interval for success rate.
    pub success_rate_min_requests: u64,
    /// Minimum qualifying endpoints (0 = success rate off).
    pub success_rate_min_hosts: usize,
    /// Stdev factor.
    pub success_rate_stdev_factor: f64,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Ejection cap.
    pub max_ejection_time: Duration,
    /// Max ejected share, 0–100.
    pub max_ejection_percent: u32,
    /// A passing active check ends an ejection.
    pub uneject_on_active_check: bool,
}

/// Slow-start ramp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// Ramp length.
    pub window: Duration,
    /// Curve exponent's inverse (1 = linear).
    pub aggression: f64,
    /// Weight floor as a fraction.
    pub min_weight: f64,
}

/// Circuit breaker limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Upstream connections.
    pub max_connections: u64,
    /// Requests waiting for a connection.
    pub max_pending: u64,
    /// Requests in flight.
    pub max_requests: u64,
    /// Retries in flight.
    pub max_retries: u64,
}

/// Retry budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Fraction (0–1) of active requests that may be retries.
    pub ratio: f64,
    /// Floor.
    pub min_concurrency: u64,
}

/// Failures a route retries (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(pub u8);

impl RetryOn {
    /// The upstream could not be reached (nothing was sent).
    pub const CONNECT_FAILURE: u8 = 1;
    /// The connection broke before a response.
    pub const RESET: u8 = 2;
    /// The attempt exceeded per_try_timeout.
    pub const TIMEOUT: u8 = 4;
    /// Any 5xx response (and all of the above).
    pub const FIVE_XX: u8 = 8;
    /// 502, 503, 504 (and connect-failure, reset, timeout).
    pub const GATEWAY_ERROR: u8 = 16;
    /// A status in `retriable_statuses`.
    pub const RETRIABLE_STATUS: u8 = 32;
    /// Accepted names with their bits.
    pub const NAMES: [(&'static str, u8); 6] = [
        ("connect-failure", Self::CONNECT_FAILURE),
        ("reset", Self::RESET),
        ("timeout", Self::TIMEOUT),
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("retriable-status", Self::RETRIABLE_STATUS),
    ];

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// What is retried.
    pub on: RetryOn,
    /// Statuses for `retriable-status`.
    pub statuses: Vec<u16>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff base.
    pub backoff: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Retry POST/PATCH too.
    pub non_idempotent: bool,
    /// Replay buffer cap.
    pub buffer_bytes: usize,
}

/// FNV-1a over bytes; stable across runs and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
