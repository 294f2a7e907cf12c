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
    pub admin: Option<AdminSection>,
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
    /// The pair's shared state (restart-only).
    pub ha: Option<HaSection>,
    /// proxy-wasm filters that routes can use (hot: reloadable).
    #[serde(default, rename = "filter")]
    pub filters: Vec<FilterSection>,
    /// Floating VIPs held with a VRRPv3 election (restart-only).
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipSection>,
    /// The BGP speaker that announces the anycast addresses (restart-only).
    pub bgp: Option<BgpSection>,
    /// Service addresses held on every healthy node and announced by BGP
    /// (restart-only).
    #[serde(default, rename = "anycast")]
    pub anycast: Vec<AnycastSection>,
}

/// `[bgp]`: how Tandem drives the node's BGP speaker (BIRD 2). Tandem writes the
/// routes it announces to `fragment`, which the speaker's configuration includes, and
/// asks the speaker to reload it; it does not speak BGP itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpSection {
    /// The speaker: `bird` (BIRD 2).
    #[serde(default = "default_bgp_speaker")]
    pub speaker: SpannedStr,
    /// The file Tandem writes (a `protocol static` per address family); bird.conf
    /// `include`s it and exports its routes to the BGP sessions.
    pub fragment: SpannedStr,
    /// BIRD's control socket (`birdc -s`).
    #[serde(default = "default_bird_socket")]
    pub control_socket: SpannedStr,
    /// The `birdc` program.
    #[serde(default = "default_birdc")]
    pub birdc: SpannedStr,
    /// Name of the static protocol in the fragment (IPv6: this name with `6`).
    #[serde(default = "default_bgp_protocol")]
    pub protocol: SpannedStr,
}

fn default_bgp_speaker() -> SpannedStr {
    Spanned::new(0..0, "bird".into())
}
fn default_bird_socket() -> SpannedStr {
    Spanned::new(0..0, "/run/bird/bird.ctl".into())
}
fn default_birdc() -> SpannedStr {
    Spanned::new(0..0, "birdc".into())
}
fn default_bgp_protocol() -> SpannedStr {
    Spanned::new(0..0, "tandem_anycast".into())
}

/// `[[anycast]]`: service addresses every healthy node holds and announces by BGP, so
/// the upstream router spreads flows over the nodes by ECMP. A node withdraws its route
/// while it is unhealthy or in maintenance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnycastSection {
    /// Name in logs, metrics and status.
    pub name: SpannedStr,
    /// The service addresses, `"10.99.1.10/32"` (prefix defaults to /32, /128).
    pub addresses: Vec<SpannedStr>,
    /// Interface Tandem adds the addresses to at start (a loopback or dummy interface).
    #[serde(default = "default_anycast_interface")]
    pub interface: SpannedStr,
    /// Withdraw while one of these clusters has no endpoint taking traffic.
    #[serde(default)]
    pub track_clusters: Vec<SpannedStr>,
    /// With `[ha]`: withdraw while this node is not in touch with a quorum of the group.
    #[serde(default)]
    pub withdraw_on_no_quorum: bool,
    /// Announce only after the node has been healthy this long (at start and after a
    /// withdraw): a flapping backend does not make the route flap.
    #[serde(default = "default_anycast_hold_down")]
    pub hold_down: Dur,
    /// Withdraw only after the node has been unhealthy this long (0: at once).
    #[serde(default = "default_withdraw_after")]
    pub withdraw_after: Dur,
}

fn default_anycast_interface() -> SpannedStr {
    Spanned::new(0..0, "lo".into())
}
fn default_anycast_hold_down() -> Dur {
    Dur::secs(5)
}
fn default_withdraw_after() -> Dur {
    Dur::millis(0)
}

/// `[[vip]]`: one virtual router (VRID) and the addresses it floats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSection {
    /// Name in logs, metrics and notify calls.
    pub name: SpannedStr,
    /// Interface the VIPs are added to (and adverts sent on).
    pub interface: SpannedStr,
    /// Virtual router id, 1–255, the same on both nodes.
    pub vrid: u32,
    /// This node's priority, 1–254 (255 = address owner).
    pub priority: u32,
    /// The VIPs, `"10.0.0.100/24"` (prefix defaults to /32).
    pub addresses: Vec<SpannedStr>,
    /// Advertisement interval (10 ms steps).
    #[serde(default = "default_advert_interval")]
    pub advert_interval: Dur,
    /// Take over from a lower-priority master.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// Unicast peers instead of 224.0.0.18.
    #[serde(default)]
    pub unicast_peers: Vec<SpannedStr>,
    /// Gratuitous ARPs on takeover.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    /// Gratuitous ARP refresh while master (0 = off).
    #[serde(default = "default_garp_refresh")]
    pub garp_refresh: Dur,
    /// Valid lifetime of a held VIP, refreshed while master.
    #[serde(default = "default_address_lifetime")]
    pub address_lifetime: Dur,
    /// Script run as `SCRIPT NAME STATE` on changes.
    pub notify: Option<SpannedStr>,
    /// `notify` gets keepalived's arguments: INSTANCE NAME STATE PRIORITY.
    #[serde(default)]
    pub notify_keepalived: bool,
    /// FIFO receiving `INSTANCE "NAME" STATE PRIORITY` lines (keepalived's notify_fifo).
    pub notify_fifo: Option<SpannedStr>,
    /// Extra wait past Master_Down before a backup takes over (lossy links).
    #[serde(default = "default_hold_down")]
    pub hold_down: Dur,
    /// Clusters tracked: while one has no endpoint taking traffic, the priority drops.
    #[serde(default)]
    pub track_clusters: Vec<SpannedStr>,
    /// How much a failed track lowers the priority.
    #[serde(default = "default_track_weight")]
    pub track_weight: u32,
    /// With `[ha]`: `vrrp` (a node without quorum follows plain VRRP) or `hold` (it
    /// changes nothing: a backup never takes over).
    #[serde(default = "default_on_no_quorum")]
    pub on_no_quorum: SpannedStr,
    /// With `[ha]`: how long a takeover waits for the lease to commit before the group
    /// counts as unreachable.
    #[serde(default = "default_quorum_wait")]
    pub quorum_wait: Dur,
    /// Accept adverts whose address list differs from ours (keepalived's
    /// `vrrp_skip_check_adv_addr`), for peers configured with other addresses.
    #[serde(default)]
    pub skip_check_adv_addr: bool,
    /// After a start, a higher-priority node waits this long before it preempts.
    #[serde(default = "default_preempt_delay")]
    pub preempt_delay: Dur,
    /// Interfaces that must be up: while one is not, the priority drops by `track_weight`.
    #[serde(default)]
    pub track_interfaces: Vec<SpannedStr>,
    /// Scripts run periodically: while one fails, the priority drops by its weight.
    #[serde(default)]
    pub track_scripts: Vec<TrackScriptSection>,
    /// Files holding an integer added to the priority (missing: 0).
    #[serde(default)]
    pub track_files: Vec<SpannedStr>,
    /// Processes that must run: while one has fewer instances than its quorum, the
    /// priority drops by its weight.
    #[serde(default)]
    pub track_processes: Vec<TrackProcessSection>,
    /// VIPs with the same sync group fail over together (keepalived's vrrp_sync_group).
    pub sync_group: Option<SpannedStr>,
    /// 3 (default) or 2 for peers that speak only VRRPv2 (IPv4, whole seconds).
    #[serde(default = "default_vrrp_version")]
    pub vrrp_version: u32,
    /// Hold the VIPs on a macvlan `vrrp.VRID` with the VRRP virtual MAC (keepalived's
    /// `use_vmac`): clients need no ARP update on failover.
    #[serde(default)]
    pub use_vmac: bool,
}

/// `[[vip]] track_processes = [{ name = "...", ... }]`: keepalived's `vrrp_track_process`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackProcessSection {
    /// `/proc/PID/comm` name, or the start of the command line with `full_command`.
    pub name: SpannedStr,
    /// Match the command line instead of the name.
    #[serde(default)]
    pub full_command: bool,
    /// Instances that must run.
    #[serde(default = "default_one")]
    pub quorum: u32,
    /// Priority drop while fewer run (default: the VIP's `track_weight`).
    pub weight: Option<u32>,
    /// A change counts once it lasted this long.
    #[serde(default = "default_process_delay")]
    pub delay: Dur,
}

fn default_vrrp_version() -> u32 {
    3
}
fn default_process_delay() -> Dur {
    Dur::millis(0)
}

/// `[[vip]] track_scripts = [{ command = "...", ... }]`: keepalived's `vrrp_script`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackScriptSection {
    /// Run with `/bin/sh -c`; exit status 0 is success.
    pub command: SpannedStr,
    /// Time between runs.
    #[serde(default = "default_script_interval")]
    pub interval: Dur,
    /// A run taking longer is killed and fails.
    #[serde(default = "default_script_timeout")]
    pub timeout: Dur,
    /// Successes in a row that make a failing script good.
    #[serde(default = "default_one")]
    pub rise: u32,
    /// Failures in a row that make a good script failing.
    #[serde(default = "default_one")]
    pub fall: u32,
    /// Priority drop while failing (default: the VIP's `track_weight`).
    pub weight: Option<u32>,
}

fn default_preempt_delay() -> Dur {
    Dur::millis(0)
}
fn default_script_interval() -> Dur {
    Dur::secs(1)
}
fn default_script_timeout() -> Dur {
    Dur::secs(1)
}
fn default_one() -> u32 {
    1
}

fn default_on_no_quorum() -> SpannedStr {
    SpannedStr::new(0..0, "vrrp".to_string())
}
fn default_quorum_wait() -> Dur {
    Dur::millis(800)
}

fn default_track_weight() -> u32 {
    50
}

/// Short adverts with a hold-down: a crash is noticed after ≈ 150 ms, while a false
/// takeover needs 7 adverts in a row lost (keepalived's 100 ms adverts need 3).
fn default_advert_interval() -> Dur {
    Dur::millis(20)
}
fn default_hold_down() -> Dur {
    Dur::millis(80)
}
fn default_garp_repeat() -> u32 {
    5
}
fn default_garp_refresh() -> Dur {
    Dur::secs(5)
}
fn default_address_lifetime() -> Dur {
    Dur::secs(3)
}

/// `[[filter]]`: a proxy-wasm module and the plugin configuration it runs with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    /// Name routes refer to; also the plugin name in logs and metrics.
    pub name: SpannedStr,
    /// The `.wasm` file (relative to the config file).
    pub path: SpannedStr,
    /// Pinned sha256 of the file (hex); the module is refused if it differs.
    pub sha256: Option<SpannedStr>,
    /// `plugin_root_id` handed to the guest.
    #[serde(default)]
    pub root_id: String,
    /// VM id: filters with the same id share shared data and queues (default: name).
    pub vm_id: Option<String>,
    /// Plugin configuration: a string as is, or a table passed as JSON.
    pub config: Option<toml::Value>,
    /// VM configuration (string or table, as `config`).
    pub vm_config: Option<toml::Value>,
    /// `fail_closed` (503) or `fail_open` (skip the filter) when the guest fails.
    #[serde(default = "default_failure_policy")]
    pub failure_policy: SpannedStr,
    /// Linear memory cap per instance, MiB.
    #[serde(default = "default_filter_memory")]
    pub memory_limit_mb: u64,
    /// CPU time one callback may use before it is interrupted.
    #[serde(default = "default_filter_cpu")]
    pub cpu_limit: Dur,
    /// Shared-data keys starting with this prefix are cluster-scoped (replicated to the
    /// pair); other keys stay on this node.
    pub shared_prefix: Option<String>,
    /// Environment variables visible to the guest (WASI `environ_get`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

fn default_failure_policy() -> SpannedStr {
    SpannedStr::new(0..0, "fail_closed".to_string())
}
fn default_filter_memory() -> u64 {
    64
}
fn default_filter_cpu() -> Dur {
    Dur::millis(50)
}

/// `[ha]`: this node's membership in the pair's Raft group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSection {
    /// This node's id (one of `peers`).
    pub node_id: u64,
    /// Where the Raft log and snapshots live.
    pub data_dir: SpannedStr,
    /// Local changes are batched into one proposal per this period.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// Peer certificates.
    pub tls: HaTlsSection,
    /// Every member, this node included.
    pub peers: Vec<HaPeerSection>,
    /// Raft heartbeat from the leader.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Dur,
    /// Raft election timeout (randomised between it and twice it).
    #[serde(default = "default_election_timeout")]
    pub election_timeout: Dur,
    /// When this node's own active checks are off for a cluster, also adopt peers'
    /// healthy verdicts (otherwise an endpoint a peer condemned stays out until restart).
    #[serde(default = "default_true")]
    pub adopt_peer_recovery: bool,
    /// Build a snapshot (and compact the log) after this many entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

/// `tls = { ca, cert, key }` of `[ha]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaTlsSection {
    /// CA that signs every member's certificate.
    pub ca: SpannedStr,
    /// This node's certificate (DNS name `tandem-peer`, or `peer_name`).
    pub cert: SpannedStr,
    /// This node's key.
    pub key: SpannedStr,
    /// The DNS name every member's certificate must carry.
    #[serde(default)]
    pub peer_name: Option<SpannedStr>,
    /// Also require `node<ID>.<peer_name>` in the certificate of the member that speaks
    /// for node ID.
    #[serde(default)]
    pub verify_node_id: bool,
}

/// One member of the group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaPeerSection {
    /// Unique id, never reused.
    pub id: u64,
    /// Peer address (`IP:port`).
    pub address: SpannedStr,
    /// A Raft-only member (`tandem witness`).
    #[serde(default)]
    pub witness: bool,
}

/// `[server]`: worker count and lifecycle timings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout: Dur,
    /// Maintenance: how long clients are asked to close connections before the VIPs move.
    pub maintenance_handover: Dur,
    /// `X-Request-Id`: `generate`, `keep` or `off`.
    pub request_id: Option<SpannedStr>,
    /// `X-Forwarded-*` headers added: any of `for`, `proto`, `host`.
    pub forwarded_headers: Option<Vec<SpannedStr>>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            workers: 0,
            drain_timeout: Dur::secs(30),
            maintenance_handover: Dur::secs(1),
            request_id: None,
            forwarded_headers: None,
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
    pub token: Option<SpannedStr>,
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
    /// Longest wait on the client between two parts of its request body (nginx's
    /// `client_body_timeout`); the route timeout starts once the body is complete.
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: Dur,
    /// Idle keep-alive time before the connection is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// `http` (L7) or `tcp` (L4).
    #[serde(default = "default_listener_protocol")]
    pub protocol: SpannedStr,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsSection>,
    /// Expect a PROXY protocol (v1 or v2) header from these sources (CIDRs).
    #[serde(default)]
    pub proxy_protocol_from: Vec<SpannedStr>,
    /// L4: the cluster connections go to (when no SNI route matches).
    pub cluster: Option<SpannedStr>,
    /// L4: route TLS connections by the ClientHello's server name without terminating.
    #[serde(default)]
    pub sni_routes: Vec<SniRouteSection>,
    /// L4: connections older than this are closed; 0 = no limit.
    #[serde(default)]
    pub max_connection_age: Dur,
    /// L4: bytes read at once in each direction (one buffer per direction).
    #[serde(default = "default_tcp_buffer_bytes")]
    pub tcp_buffer_bytes: usize,
    /// L4: proxy-wasm network filters run on each connection, in order.
    #[serde(default)]
    pub filters: Vec<SpannedStr>,
    /// Accept a connection once its first bytes arrive (`TCP_DEFER_ACCEPT`).
    #[serde(default)]
    pub defer_accept: bool,
}

/// `tls = { … }` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// Certificate/key pairs; the first is the default when SNI matches none.
    pub certificates: Vec<CertSection>,
    /// ALPN protocols in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// `"1.2"` or `"1.3"`.
    #[serde(default = "default_min_tls")]
    pub min_version: SpannedStr,
    /// CA bundle that signs client certificates.
    pub client_ca: Option<SpannedStr>,
    /// `none`, `optional` or `required`.
    #[serde(default = "default_client_auth")]
    pub client_auth: SpannedStr,
    /// Stateless session resumption.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
}

/// One certificate/key pair (PEM files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertSection {
    /// Certificate chain file.
    pub cert: SpannedStr,
    /// Private key file.
    pub key: SpannedStr,
}

/// One SNI route of an L4 listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRouteSection {
    /// `a.example.com`, `*.example.com`.
    pub server_names: Vec<SpannedStr>,
    /// Destination cluster.
    pub cluster: SpannedStr,
}

/// `sticky = { … }` of a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySection {
    /// `cookie` (Tandem inserts a signed cookie) or `learned`.
    pub mode: SpannedStr,
    /// cookie mode: cookie name.
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// cookie mode: HMAC secret; give every node of a pair the same one.
    pub secret: Option<SpannedStr>,
    /// cookie mode: Max-Age; 0 = session cookie.
    #[serde(default)]
    pub max_age: Dur,
    /// cookie mode: mark the cookie Secure.
    #[serde(default)]
    pub secure: bool,
    /// learned mode: `cookie:NAME`, `header:NAME` or `source_ip`.
    pub on: Option<SpannedStr>,
    /// learned mode: bindings unused this long expire.
    #[serde(default = "default_sticky_idle")]
    pub idle_timeout: Dur,
}

/// `rate_limit = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// Period.
    #[serde(default = "default_rl_per")]
    pub per: Dur,
    /// Token bucket capacity (default: `requests`).
    pub burst: Option<u64>,
    /// `source_ip`, `header:NAME` or `route`.
    #[serde(default = "default_rl_key")]
    pub key: SpannedStr,
    /// `token_bucket` or `sliding_window`.
    #[serde(default = "default_rl_alg")]
    pub algorithm: SpannedStr,
    /// `local` (this node) — `cluster` arrives with the Raft group.
    #[serde(default = "default_rl_scope")]
    pub scope: SpannedStr,
}

/// `tls = { … }` of a cluster: TLS to its endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name to send and verify (default: the endpoint's IP).
    pub sni: Option<String>,
    /// CA bundle (default: the system's roots).
    pub ca: Option<SpannedStr>,
    /// Client certificate file.
    pub client_cert: Option<SpannedStr>,
    /// Client key file.
    pub client_key: Option<SpannedStr>,
    /// Skip verification (labs only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
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
    /// Admission limit for this route.
    pub rate_limit: Option<RateLimitSection>,
    /// Idle timeout of upgraded (WebSocket) and CONNECT tunnels.
    #[serde(default = "default_upgrade_idle")]
    pub upgrade_idle_timeout: Dur,
    /// Bound on one upstream attempt (default: the route timeout).
    #[serde(default)]
    pub per_try_timeout: Dur,
    /// Failures that are retried: connect-failure, reset, timeout, 5xx, gateway-error,
    /// retriable-status.
    #[serde(default)]
    pub retry_on: Vec<SpannedStr>,
    /// Statuses retried with `retriable-status`.
    #[serde(default)]
    pub retriable_statuses: Vec<u16>,
    /// Retries after the first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Backoff base (full jitter, doubling per retry).
    #[serde(default = "default_backoff")]
    pub retry_backoff: Dur,
    /// Backoff cap.
    #[serde(default = "default_backoff_max")]
    pub retry_backoff_max: Dur,
    /// Also retry non-idempotent methods (POST, PATCH).
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones are not retried.
    #[serde(default = "default_retry_buffer")]
    pub retry_buffer_bytes: usize,
    /// proxy-wasm filters run on this route's requests, in order.
    #[serde(default)]
    pub filters: Vec<SpannedStr>,
    /// Header rules applied to the request before it goes upstream.
    #[serde(default)]
    pub request_headers: HeaderRulesSection,
    /// Header rules applied to the response before it goes downstream.
    #[serde(default)]
    pub response_headers: HeaderRulesSection,
    /// Route metadata for filters, by namespace (Envoy's `filter_metadata`):
    /// `{ "my.filter" = { mode = "strict" } }`.
    pub metadata: Option<toml::Value>,
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
    /// Active health checking.
    pub health_check: Option<HealthCheckSection>,
    /// Passive outlier detection.
    pub outlier_detection: Option<OutlierSection>,
    /// New and recovered endpoints ramp their weight over this; 0 = off.
    #[serde(default)]
    pub slow_start: Dur,
    /// Slow-start curve: weight ∝ (elapsed / slow_start)^(1 / aggression).
    #[serde(default = "default_aggression")]
    pub slow_start_aggression: f64,
    /// Weight floor during slow start, percent of the full weight.
    #[serde(default = "default_slow_start_min")]
    pub slow_start_min_weight_percent: u32,
    /// Below this percentage of eligible endpoints, spread over all of them (panic mode).
    #[serde(default = "default_panic")]
    pub panic_threshold: u32,
    /// Per-cluster admission limits.
    #[serde(default)]
    pub circuit_breakers: BreakerSection,
    /// Retries in flight allowed relative to requests in flight.
    #[serde(default)]
    pub retry_budget: RetryBudgetSection,
    /// TLS to the endpoints.
    pub tls: Option<UpstreamTlsSection>,
    /// Sticky sessions.
    pub sticky: Option<StickySection>,
    /// Send a PROXY protocol header (`v1` or `v2`) on each new upstream connection.
    pub proxy_protocol: Option<SpannedStr>,
}

/// `[cluster.health_check]`: one prober per endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `http` or `tcp`.
    #[serde(default = "default_check_kind")]
    pub kind: SpannedStr,
    /// Time between probes of one endpoint.
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    /// Probe timeout.
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    /// Consecutive passes to become healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Random extra delay added to each interval (probes never align).
    #[serde(default)]
    pub jitter: Dur,
    /// Probe this port instead of the endpoint's.
    pub port: Option<u16>,
    /// HTTP method.
    #[serde(default = "default_check_method")]
    pub method: String,
    /// HTTP path.
    #[serde(default = "default_check_path")]
    pub path: SpannedStr,
    /// Host header (default: the endpoint address).
    pub host: Option<String>,
    /// Passing statuses: `"200"`, `"200-399"`.
    #[serde(default = "default_expected")]
    pub expected_statuses: Vec<SpannedStr>,
    /// The body must contain this.
    pub body_contains: Option<String>,
    /// TCP: bytes to send after connecting.
    pub send: Option<String>,
    /// TCP: the reply must contain this.
    pub expect: Option<String>,
}

/// `[cluster.outlier_detection]`: ejection from real traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Consecutive 5xx responses that eject; 0 = off.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (connect failure, reset, timeout, 502/503/504); 0 = off.
    #[serde(default = "default_consecutive_gateway")]
    pub consecutive_gateway_errors: u32,
    /// Success-rate sweep interval.
    #[serde(default = "default_outlier_interval")]
    pub interval: Dur,
    /// Requests an endpoint needs in an interval to be judged by success rate.
    #[serde(default = "default_sr_min_requests")]
    pub success_rate_min_requests: u64,
    /// Endpoints with enough requests needed for the success-rate check; 0 = off.
    #[serde(default = "default_sr_min_hosts")]
    pub success_rate_min_hosts: usize,
    /// Ejected when success rate < mean − factor × stdev.
    #[serde(default = "default_sr_factor")]
    pub success_rate_stdev_factor: f64,
    /// First ejection time; multiplied by the times ejected.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    /// Ejection time cap.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// At most this percentage of a cluster's endpoints ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// A passing active check ends an ejection early. Off by default: a gray failure
    /// (slow or failing on real traffic, green health endpoint) would return at once.
    #[serde(default)]
    pub uneject_on_active_check: bool,
}

/// `[cluster.circuit_breakers]`: overflow answers 503 at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Upstream connections open across workers.
    pub max_connections: u64,
    /// Requests waiting for a new upstream connection.
    pub max_pending: u64,
    /// Requests in flight.
    pub max_requests: u64,
    /// Retries in flight.
    pub max_retries: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_pending: 1_000,
            max_requests: 10_000,
            max_retries: 100,
        }
    }
}

/// `[cluster.retry_budget]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetSection {
    /// Retries in flight ≤ this percentage of requests in flight …
    pub budget_percent: f64,
    /// … or this many, whichever is larger.
    pub min_retry_concurrency: u64,
}

impl Default for RetryBudgetSection {
    fn default() -> Self {
        Self {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
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
/// Large enough that bulk transfers move in few system calls; two per L4 connection.
fn default_tcp_buffer_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_snapshot_every() -> u64 {
    5_000
}
fn default_request_body_timeout() -> Dur {
    Dur::secs(60)
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
    256
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
fn default_heartbeat() -> Dur {
    Dur::millis(50)
}
fn default_election_timeout() -> Dur {
    Dur::millis(150)
}
fn default_sync_interval() -> Dur {
    Dur(None, Duration::from_millis(50))
}
fn default_sticky_cookie() -> String {
    "tandem_sticky".into()
}
fn default_sticky_idle() -> Dur {
    Dur::secs(1800)
}
fn default_rl_per() -> Dur {
    Dur::secs(1)
}
fn default_rl_key() -> SpannedStr {
    Spanned::new(0..0, "source_ip".into())
}
fn default_rl_alg() -> SpannedStr {
    Spanned::new(0..0, "sliding_window".into())
}
fn default_rl_scope() -> SpannedStr {
    Spanned::new(0..0, "local".into())
}
fn default_upgrade_idle() -> Dur {
    Dur::secs(3600)
}
fn default_listener_protocol() -> SpannedStr {
    Spanned::new(0..0, "http".into())
}
fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}
fn default_min_tls() -> SpannedStr {
    Spanned::new(0..0, "1.2".into())
}
fn default_client_auth() -> SpannedStr {
    Spanned::new(0..0, "none".into())
}
fn default_aggression() -> f64 {
    1.0
}
fn default_slow_start_min() -> u32 {
    10
}
fn default_panic() -> u32 {
    50
}
fn default_check_kind() -> SpannedStr {
    Spanned::new(0..0, "http".into())
}
fn default_check_interval() -> Dur {
    Dur(None, Duration::from_secs(2))
}
fn default_check_timeout() -> Dur {
    Dur(None, Duration::from_secs(1))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_check_method() -> String {
    "GET".into()
}
fn default_check_path() -> SpannedStr {
    Spanned::new(0..0, "/healthz".into())
}
fn default_expected() -> Vec<SpannedStr> {
    vec![Spanned::new(0..0, "200-399".into())]
}
fn default_consecutive_5xx() -> u32 {
    5
}
fn default_consecutive_gateway() -> u32 {
    3
}
fn default_outlier_interval() -> Dur {
    Dur::secs(10)
}
fn default_sr_min_requests() -> u64 {
    100
}
fn default_sr_min_hosts() -> usize {
    3
}
fn default_sr_factor() -> f64 {
    1.9
}
fn default_base_ejection() -> Dur {
    Dur::secs(30)
}
fn default_max_ejection() -> Dur {
    Dur::secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_max_retries() -> u32 {
    1
}
fn default_backoff() -> Dur {
    Dur(None, Duration::from_millis(25))
}
fn default_backoff_max() -> Dur {
    Dur(None, Duration::from_millis(250))
}
fn default_retry_buffer() -> usize {
    64 * 1024
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

    /// A default of `n` milliseconds.
    pub fn millis(n: u64) -> Dur {
        Dur(None, Duration::from_millis(n))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = Spanned::<String>::deserialize(d)?;
        Ok(Dur(Some(s), Duration::ZERO))
    }
}
