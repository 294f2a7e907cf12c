//! The configuration file as the operator writes it: plain serde structs that refuse
//! unknown keys. Nothing here is validated beyond types; `validate` turns a
//! [`ConfigFile`] into checked settings and `runtime` compiles those.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A span-carrying string: names, addresses and references keep their position so
/// semantic errors can point at the exact line.
pub type SpannedStr = Spanned<String>;

/// Root of a Tandem configuration file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Process-wide settings (restart-only).
    #[serde(default)]
    pub server: ServerSection,
    /// Admin API listener (restart-only).
    #[serde(default)]
    pub admin: AdminSection,
    /// Logging and access log.
    #[serde(default)]
    pub log: LogSection,
    /// Downstream listeners (restart-only).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// Routes, matched per listener (hot: reloadable).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// Upstream clusters (hot: reloadable).
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterSection>,
}

/// `[server]`: worker count and lifecycle timings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout: Dur,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            workers: 0,
            drain_timeout: Dur::secs(30),
        }
    }
}

/// `[admin]`: where the admin API listens and the token guarding it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Socket address of the admin API; loopback by default.
    pub listen: SpannedStr,
    /// Bearer token; required when `listen` is not a loopback address.
    pub token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:9900".to_string()),
            token: None,
        }
    }
}

/// `[log]`: process log and access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: SpannedStr,
    /// `stdout`, `stderr`, `off`, or a file path.
    pub access_log: String,
    /// `json` or `text`.
    pub access_log_format: SpannedStr,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: Spanned::new(0..0, "text".into()),
            access_log: "stdout".into(),
            access_log_format: Spanned::new(0..0, "json".into()),
        }
    }
}

/// `[[listener]]`: one downstream HTTP listener and its protective limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Name routes refer to.
    pub name: SpannedStr,
    /// Socket address to bind on every worker (SO_REUSEPORT).
    pub listen: SpannedStr,
    /// Connections accepted at once across all workers; excess are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests served on one connection before it is closed; 0 = unlimited.
    #[serde(default)]
    pub max_requests_per_connection: u64,
    /// Largest request head accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request head; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time allowed to receive a full request head (slowloris guard).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Idle keep-alive time before the connection is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    #[serde(default = "default_true")]
    pub http2: bool,
}

/// `[[route]]`: a match and where matching requests go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Name used in metrics and logs.
    pub name: SpannedStr,
    /// Listeners this route serves; empty = all.
    #[serde(default)]
    pub listeners: Vec<SpannedStr>,
    /// Host patterns: exact (`api.example.com`), suffix (`*.example.com`) or `*`.
    #[serde(default)]
    pub hosts: Vec<SpannedStr>,
    /// Path must equal this.
    pub path_exact: Option<SpannedStr>,
    /// Path must start with this.
    pub path_prefix: Option<SpannedStr>,
    /// Path must match this regular expression (anchored).
    pub path_regex: Option<SpannedStr>,
    /// Allowed methods; empty = any.
    #[serde(default)]
    pub methods: Vec<SpannedStr>,
    /// Header conditions, all of which must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatchSection>,
    /// Single destination cluster.
    pub cluster: Option<SpannedStr>,
    /// Weighted destinations (canary splits).
    #[serde(default)]
    pub clusters: Vec<WeightedClusterSection>,
    /// Total time for the upstream exchange up to response headers.
    #[serde(default = "default_route_timeout")]
    pub timeout: Dur,
    /// Header rules applied to the request before it goes upstream.
    #[serde(default)]
    pub request_headers: HeaderRulesSection,
    /// Header rules applied to the response before it goes downstream.
    #[serde(default)]
    pub response_headers: HeaderRulesSection,
}

/// One header condition of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSection {
    /// Header name (case-insensitive).
    pub name: SpannedStr,
    /// Value must equal this.
    pub exact: Option<String>,
    /// Value must match this regular expression (anchored).
    pub regex: Option<SpannedStr>,
    /// `true`: header must be present; `false`: must be absent.
    pub present: Option<bool>,
}

/// One weighted destination of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterSection {
    /// Cluster name.
    pub name: SpannedStr,
    /// Relative weight.
    pub weight: u32,
}

/// Header rewrites: `add` appends, `set` replaces, `remove` deletes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSection {
    /// Headers appended.
    #[serde(default)]
    pub add: Vec<HeaderValueSection>,
    /// Headers replaced (or inserted).
    #[serde(default)]
    pub set: Vec<HeaderValueSection>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<SpannedStr>,
}

/// A header name and value, written `{ name = "x-env", value = "prod" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueSection {
    /// Header name.
    pub name: SpannedStr,
    /// Header value.
    pub value: SpannedStr,
}

/// `[[cluster]]`: a set of endpoints and how to pick and talk to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Name routes refer to.
    pub name: SpannedStr,
    /// Balancer name.
    #[serde(default = "default_balancer")]
    pub balancer: SpannedStr,
    /// Hash key for ring_hash and maglev: `header:NAME`, `cookie:NAME` or `source_ip`.
    pub hash_on: Option<SpannedStr>,
    /// Upstream protocol: `http1` or `h2c`.
    #[serde(default = "default_protocol")]
    pub protocol: SpannedStr,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Idle pooled connections kept per endpoint per worker.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_endpoint: usize,
    /// Idle pooled connections older than this are closed.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
    /// Connections older than this are not reused; 0 = no limit.
    #[serde(default)]
    pub max_connection_age: Dur,
    /// Points per unit of weight on the ring_hash ring.
    #[serde(default = "default_virtual_nodes")]
    pub ring_hash_virtual_nodes: u32,
    /// Maglev lookup table size (a prime well above 100 × endpoints).
    #[serde(default = "default_maglev_table")]
    pub maglev_table_size: u32,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSection>,
}

/// One upstream endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// `IP:port`.
    pub address: SpannedStr,
    /// Relative weight for weighted balancers.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_idle_timeout() -> Dur {
    Dur::secs(60)
}
fn default_route_timeout() -> Dur {
    Dur::secs(15)
}
fn default_balancer() -> SpannedStr {
    Spanned::new(0..0, "round_robin".into())
}
fn default_protocol() -> SpannedStr {
    Spanned::new(0..0, "http1".into())
}
fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}
fn default_pool_max_idle() -> usize {
    64
}
fn default_pool_idle_timeout() -> Dur {
    Dur::secs(60)
}
fn default_virtual_nodes() -> u32 {
    160
}
fn default_maglev_table() -> u32 {
    65_537
}
fn default_weight() -> u32 {
    1
}

/// A duration as written (`"250ms"`, `"5s"`, `"2m"`), with its position. Parsing is
/// deferred to validation so a bad duration is reported together with every other
/// problem instead of stopping the parse.
#[derive(Debug, Clone, Default)]
pub struct Dur(pub Option<Spanned<String>>, pub Duration);

impl Dur {
    /// A default of `n` seconds.
    pub fn secs(n: u64) -> Dur {
        Dur(None, Duration::from_secs(n))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = Spanned::<String>::deserialize(d)?;
        Ok(Dur(Some(s), Duration::ZERO))
    }
}
