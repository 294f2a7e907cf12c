//! The admin API: liveness, readiness, Prometheus metrics, JSON status, a small status
//! page, and the reload and drain calls. Runs on its own thread so a busy data plane
//! never delays a health check. A token is required when bound beyond loopback.
//!
//! It is a control port, so it is bounded like one: at most [`MAX_ADMIN_CONNECTIONS`]
//! open (more are closed at accept and counted), a request head must arrive within
//! [`ADMIN_HEADER_TIMEOUT`] (which also closes idle keep-alives), and a connection lives
//! at most [`ADMIN_CONNECTION_LIFETIME`]. A flood of connections to it costs the data
//! plane nothing but the cap's file descriptors. State-changing calls refuse what a
//! browser could be made to send (see [`refuse_browser`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::control::Node;
use crate::pair::Pair;

/// Most admin connections open at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 256;
/// A request head (the first, or the next on a keep-alive connection) must arrive within this.
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// An admin connection is asked to close after this long, and cut 10 s later.
pub const ADMIN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);
/// The header `tandem ctl` sends with state-changing calls: a page on another site
/// cannot add it without a CORS preflight, which the admin API never grants.
pub const ADMIN_HEADER: &str = "x-tandem-admin";

/// Starts the admin listener on its own thread; returns once it is bound.
pub fn start(node: Node, addr: SocketAddr, token: Option<String>) -> std::io::Result<SocketAddr> {
    let stats = node.shared.stats.clone();
    listen(addr, token, stats, move |req, token, stats| {
        let node = node.clone();
        async move { guarded(req, token.as_deref(), &stats, |req| serve(&node, req)).await }
    })
}

/// Starts a witness's admin listener (`/live`, `/ready`, `/metrics`, `/status`,
/// `/cluster`: the group as the witness sees it) on its own thread.
pub fn start_witness(addr: SocketAddr, token: Option<String>, pair: Arc<Pair>) -> std::io::Result<SocketAddr> {
    let stats = Arc::new(crate::stats::StatsRegistry::default());
    listen(addr, token, stats, move |req, token, stats| {
        let pair = pair.clone();
        async move { guarded(req, token.as_deref(), &stats, |req| serve_witness(&pair, req)).await }
    })
}

/// The listener loop shared by both: connection cap, one task per connection.
fn listen<H, F>(
    addr: SocketAddr,
    token: Option<String>,
    stats: Arc<crate::stats::StatsRegistry>,
    handler: H,
) -> std::io::Result<SocketAddr>
where
    H: Fn(Request<Incoming>, Option<Arc<str>>, Arc<crate::stats::StatsRegistry>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "admin runtime failed");
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "admin listener failed");
                    return;
                }
            };
            let token: Option<Arc<str>> = token.map(Into::into);
            let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors (or another transient failure): wait a
                        // little instead of spinning on the same error.
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.fetch_add(1, Relaxed) >= MAX_ADMIN_CONNECTIONS {
                    open.fetch_sub(1, Relaxed);
                    stats.process.admin_connections_refused.fetch_add(1, Relaxed);
                    drop(stream);
                    continue;
                }
                let (handler, token, stats, open) = (handler.clone(), token.clone(), stats.clone(), open.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let f = handler(req, token.clone(), stats.clone());
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    serve_connection(stream, svc).await;
                    open.fetch_sub(1, Relaxed);
                });
            }
        });
    })?;
    Ok(bound)
}

/// One admin connection: HTTP/1.1 with a head deadline and a bounded lifetime.
async fn serve_connection<S>(stream: tokio::net::TcpStream, svc: S)
where
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(ADMIN_CONNECTION_LIFETIME) => conn.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
}

/// The token check and the browser refusals in front of a handler.
async fn guarded<'a, F, Fut>(
    req: Request<Incoming>,
    token: Option<&'a str>,
    stats: &'a crate::stats::StatsRegistry,
    handler: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + 'a,
{
    if let Some(t) = token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| constant_time_eq(v.as_bytes(), t.as_bytes()));
        if !ok {
            return text(StatusCode::UNAUTHORIZED, "text/plain", "admin token required\n");
        }
    }
    if let Some(why) = refuse_browser(&req, token.is_some()) {
        stats.process.admin_requests_refused.fetch_add(1, Relaxed);
        return text(StatusCode::FORBIDDEN, "text/plain", why);
    }
    handler(req).await
}

/// A witness's admin calls.
async fn serve_witness(pair: &Pair, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let stopped = pair.view().role == "stopped";
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n"),
        (Method::GET, "/ready") if stopped => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "ha core stopped\n"),
        (Method::GET, "/ready") => text(StatusCode::OK, "text/plain", "ready\n"),
        (Method::GET, "/metrics") => {
            let mut out = String::new();
            crate::control::metrics::render_group(&mut out, &pair.view());
            text(StatusCode::OK, "text/plain; version=0.0.4", out)
        }
        (Method::GET, "/status") | (Method::GET, "/cluster") => {
            text(StatusCode::OK, "application/json", cluster_json(Some(pair)).to_string())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "a witness answers /cluster, /status, /metrics, /ready, /live\n",
        ),
    }
}

/// Why a request that a browser could have been made to send is refused, if it is:
///
/// - without a token (loopback only), every request must be addressed to an IP
///   literal or `localhost`: a DNS-rebinding page names its own host;
/// - a state-changing call (anything but GET/HEAD) must not come from another site
///   (`Origin` other than the admin's own, `Sec-Fetch-Site` cross-site or same-site),
///   and without a token it must carry [`ADMIN_HEADER`], which a cross-site page cannot
///   add without a CORS preflight.
fn refuse_browser(req: &Request<Incoming>, has_token: bool) -> Option<&'static str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !has_token && !host.is_empty() && !addressed_by_ip(host) {
        return Some("address the admin API by IP or localhost\n");
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    if let Some(site) = req.headers().get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some("cross-site admin calls are refused\n");
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-site admin calls are refused\n");
        }
    }
    if !has_token && !req.headers().contains_key(ADMIN_HEADER) {
        return Some("state-changing admin calls need the X-Tandem-Admin header (tandem ctl sends it)\n");
    }
    None
}

/// Whether a `Host` value names an IP address or `localhost` (with or without a port).
fn addressed_by_ip(host: &str) -> bool {
    let name = crate::runtime::router::host_without_port(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// `POST /cluster/add?id=N&address=IP:PORT`, `/cluster/remove?id=N`,
/// `/cluster/replace?old=N&id=M&address=IP:PORT` (add the new member, then remove the
/// old one): carried out by the group's leader, answered with the voters afterwards.
fn membership_call(pair: Option<&Pair>, path: &str, query: &str) -> Response<Full<Bytes>> {
    use tandem_ha::protocol::MembershipChange;
    let bad = |msg: String| {
        text(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({"error": msg}).to_string(),
        )
    };
    let Some(pair) = pair else {
        return bad("this node has no [ha] section".into());
    };
    let param = |k: &str| query_param(query, k);
    let id = |k: &str| param(k).and_then(|v| v.parse::<u64>().ok());
    let address = param("address").filter(|a| a.parse::<std::net::SocketAddr>().is_ok());
    let changes = match (path, id("id"), address, id("old")) {
        ("/cluster/add", Some(id), Some(address), _) => vec![MembershipChange::Add { id, address }],
        ("/cluster/remove", Some(id), _, _) => vec![MembershipChange::Remove { id }],
        ("/cluster/replace", Some(id), Some(address), Some(old)) if old != id => {
            vec![
                MembershipChange::Add { id, address },
                MembershipChange::Remove { id: old },
            ]
        }
        _ => {
            return bad(
                "pass ?id=N&address=IP:PORT (add), ?id=N (remove), or ?old=N&id=M&address=IP:PORT (replace)".into(),
            )
        }
    };
    let mut voters = Vec::new();
    for c in changes {
        match pair.change_membership(c) {
            Ok(v) => voters = v,
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    json!({"error": e}).to_string(),
                )
            }
        }
    }
    text(
        StatusCode::OK,
        "application/json",
        json!({"voters": voters}).to_string(),
    )
}

/// Query parameter `key` (`%3A` decoded, for IP:port values).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(a, _)| *a == key)
        .map(|(_, v)| v.replace("%3A", ":").replace("%3a", ":"))
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r
}

async fn serve(node: &Node, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let shared = &node.shared;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    // Drain any request body; admin calls carry none that matters.
    let _ = req.into_body().collect().await;
    match (method, path.as_str()) {
        (Method::GET, "/live") => text(StatusCode::OK, "text/plain", "live\n"),
        (Method::GET, "/ready") => {
            let ha_stopped = shared.pair.as_ref().is_some_and(|p| p.view().role == "stopped");
            if ha_stopped {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "ha core stopped: shared state and VIP fencing are down; restart this node\n",
                )
            } else if shared.is_ready() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else if shared.phase.get() == crate::phase::NodePhase::Draining {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        (Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::control::metrics::render(node),
        ),
        (Method::GET, "/cluster") => text(
            StatusCode::OK,
            "application/json",
            cluster_json(shared.pair.as_deref()).to_string(),
        ),
        (Method::GET, "/status") => text(StatusCode::OK, "application/json", status_json(node).to_string()),
        (Method::GET, "/") => text(StatusCode::OK, "text/html; charset=utf-8", status_page(node)),
        (Method::POST, "/reload") => match crate::control::reload::reload(shared) {
            Ok(o) => text(
                StatusCode::OK,
                "application/json",
                json!({"generation": o.generation, "restart_required_for": o.ignored}).to_string(),
            ),
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                "application/json",
                json!({"error": e.to_string()}).to_string(),
            ),
        },
        (Method::POST, "/endpoints/drain") | (Method::POST, "/endpoints/undrain") => {
            let param = |k: &str| query_param(&query, k);
            let (Some(cluster), Some(addr)) = (param("cluster"), param("address")) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    json!({"error": "pass ?cluster=NAME&address=IP:PORT"}).to_string(),
                );
            };
            let Ok(addr) = addr.parse() else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    json!({"error": format!("`{addr}` is not an IP:port address")}).to_string(),
                );
            };
            match crate::control::reload::set_endpoint_drain(shared, &cluster, addr, path.ends_with("/drain")) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/json",
                    json!({"cluster": cluster, "address": addr.to_string(), "draining": path.ends_with("/drain")})
                        .to_string(),
                ),
                Err(e) => text(
                    StatusCode::NOT_FOUND,
                    "application/json",
                    json!({"error": e}).to_string(),
                ),
            }
        }
        (Method::POST, "/maintenance") => {
            let on = !query.split('&').any(|p| p == "on=0" || p == "off");
            let handover = shared.runtime.load().config.server.maintenance_handover;
            crate::control::lifecycle::set_maintenance(node, on, handover);
            let phase = shared.phase();
            text(
                StatusCode::OK,
                "application/json",
                json!({
                    "maintenance": on,
                    "phase": phase,
                    "vips_released_in_ms": (phase == "handover").then_some(handover.as_millis() as u64),
                    "connections": shared.connections.load(Relaxed),
                    "vips": node.vips.as_ref().map_or(serde_json::Value::Array(Vec::new()), |v| v.status_json()),
                    "anycast": node.anycast.as_ref().map(|a| a.status_json()),
                })
                .to_string(),
            )
        }
        (Method::POST, "/cluster/add") | (Method::POST, "/cluster/remove") | (Method::POST, "/cluster/replace") => {
            // It waits for the leader (a new member catches up first): off this thread.
            let (pair, p, q) = (shared.pair.clone(), path.clone(), query.clone());
            tokio::task::spawn_blocking(move || membership_call(pair.as_deref(), &p, &q))
                .await
                .unwrap_or_else(|_| {
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "membership call failed\n",
                    )
                })
        }
        (Method::POST, "/drain") => {
            shared.stop_requested.send_replace(true);
            text(
                StatusCode::ACCEPTED,
                "application/json",
                json!({"draining": true}).to_string(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "unknown admin path; try /status, /metrics, /ready, /live\n",
        ),
    }
}

/// The `/cluster` document: this node's view of the pair's Raft group
/// ([`crate::pair::GroupView`] with `"member": true`).
pub fn cluster_json(pair: Option<&Pair>) -> serde_json::Value {
    let Some(p) = pair else {
        return json!({"member": false, "note": "no [ha] section: this node runs alone"});
    };
    let mut v = serde_json::to_value(p.view()).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("member".into(), json!(true));
    }
    v
}

/// The `/status` document: listeners, routes, clusters, endpoints with live stats.
pub fn status_json(node: &Node) -> serde_json::Value {
    let shared = &node.shared;
    let rt = shared.runtime.load();
    let cfg = &rt.config;
    let now = crate::clock::now_ns();
    let since = |ns: u64| {
        if ns == 0 {
            serde_json::Value::Null
        } else {
            json!(now.saturating_sub(ns) as f64 / 1e9)
        }
    };
    let ejected_for = |until: u64| {
        if until > now {
            json!((until - now) as f64 / 1e9)
        } else {
            serde_json::Value::Null
        }
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "ready": shared.is_ready(),
        "draining": shared.phase.get() == crate::phase::NodePhase::Draining,
        "maintenance": shared.phase.get().in_maintenance(),
        "phase": shared.phase(),
        "syn_gate_closed": (node.vips.is_some() || node.anycast.is_some()) && shared.phase.get().closes_syn_gate(),
        "workers": shared.workers,
        "connections": shared.connections.load(Relaxed),
        "config": { "source": cfg.source, "generation": rt.generation, "hash": format!("{:016x}", rt.hash) },
        "vips": node.vips.as_ref().map_or(serde_json::Value::Array(Vec::new()), |v| v.status_json()),
        "anycast": node.anycast.as_ref().map(|a| a.status_json()),
        "ha": shared.pair.as_ref().map(|p| serde_json::to_value(p.view()).unwrap_or_default()),
        "listeners": cfg.listeners.iter().zip(&shared.listeners).map(|(l, (_, s))| json!({
            "name": l.name,
            "listen": l.listen.to_string(),
            "connections_active": s.active.load(Relaxed),
            "connections_accepted": s.accepted.load(Relaxed),
            "requests": s.requests.load(Relaxed),
        })).collect::<Vec<_>>(),
        "routes": rt.routes.iter().map(|r| json!({
            "name": &*r.name,
            "clusters": r.destinations.iter().map(|(c, w)| json!({"cluster": &*rt.clusters[*c].name, "weight": w})).collect::<Vec<_>>(),
            "timeout_ms": r.timeout.as_millis() as u64,
            "responses": by_class(|c| r.stats.responses.get(c)),
        })).collect::<Vec<_>>(),
        "clusters": rt.clusters.iter().map(|c| json!({
            "name": &*c.name,
            "balancer": c.balancer.name(),
            "active_requests": c.stats.active.load(Relaxed),
            "retries": c.stats.retries.load(Relaxed),
            "retry_budget_exhausted": c.stats.retry_budget_exhausted.load(Relaxed),
            "upstream_connections": c.stats.upstream_connections.load(Relaxed),
            "breaker_overflows": crate::error::Limit::ALL.iter().map(|l| (l.as_str().to_string(), json!(c.stats.breaker_overflows[*l as usize].load(Relaxed)))).collect::<serde_json::Map<_, _>>(),
            "endpoints": c.endpoints.iter().map(|e| json!({
                "address": e.address.to_string(),
                "weight": e.weight,
                "state": e.stats.health.state_name(now),
                "health_source": e.stats.health.source_name(now),
                "eligible": e.stats.health.eligible(now),
                "effective_weight": crate::balancer::Candidate::weight(e, now) as f64 / 1000.0,
                "ejected_for_seconds": ejected_for(e.stats.health.ejected_until_ns.load(Relaxed)),
                "times_ejected": e.stats.health.times_ejected.load(Relaxed),
                "draining_for_seconds": if e.stats.health.draining.load(Relaxed) { since(e.stats.health.drain_started_ns.load(Relaxed)) } else { serde_json::Value::Null },
                "drained_seconds_ago": if e.stats.health.draining.load(Relaxed) { since(e.stats.health.drained_ns.load(Relaxed)) } else { serde_json::Value::Null },
                "active_requests": e.stats.active.load(Relaxed),
                "ewma_latency_ms": e.stats.ewma.get() / 1e6,
                "responses": by_class(|c| e.stats.responses.get(c)),
                "connections_opened": e.stats.connections_opened.load(Relaxed),
                "connections_reused": e.stats.connections_reused.load(Relaxed),
                "connect_failures": e.stats.connect_failures.load(Relaxed),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "removed_endpoints": shared.removed_endpoints().iter().map(|r| json!({
            "cluster": &*r.cluster,
            "address": r.address.to_string(),
            "state": r.stats.health.state_name(now),
            "active_requests": r.stats.active.load(Relaxed),
            "draining_for_seconds": since(r.stats.health.drain_started_ns.load(Relaxed)),
            "drained_seconds_ago": since(r.stats.health.drained_ns.load(Relaxed)),
        })).collect::<Vec<_>>(),
    })
}

/// Request rate and 5xx share per route over the last few seconds, from samples the
/// status page keeps (at most one a second, the oldest within 10 s used): `None` for a
/// route until there is a sample a second old. A new generation starts over.
fn route_rates(node: &Node, generation: u64, totals: &[(u64, u64)]) -> Vec<Option<(f64, f64)>> {
    let now = Instant::now();
    let mut samples = node.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
    samples.retain(|(t, g, v)| {
        *g == generation && v.len() == totals.len() && now.duration_since(*t) <= Duration::from_secs(10)
    });
    let rates = match samples.front() {
        Some((t, _, then)) if now.duration_since(*t) >= Duration::from_secs(1) => {
            let dt = now.duration_since(*t).as_secs_f64();
            totals
                .iter()
                .zip(then)
                .map(|((all, err), (all0, err0))| {
                    let n = all.saturating_sub(*all0);
                    let e = err.saturating_sub(*err0);
                    Some((n as f64 / dt, if n == 0 { 0.0 } else { e as f64 / n as f64 }))
                })
                .collect()
        }
        _ => vec![None; totals.len()],
    };
    if samples
        .back()
        .is_none_or(|(t, _, _)| now.duration_since(*t) >= Duration::from_secs(1))
    {
        samples.push_back((now, generation, totals.to_vec()));
    }
    rates
}

/// Response counts labelled by class: `{"1xx": n, "2xx": n, …}`.
fn by_class(get: impl Fn(usize) -> u64) -> serde_json::Value {
    json!({
        "1xx": get(1),
        "2xx": get(2),
        "3xx": get(3),
        "4xx": get(4),
        "5xx": get(5),
    })
}

/// The status page: the node's phase, its VIPs, the pair's group, routes and
/// endpoints, refreshed every two seconds. Built from the same data as `/status`.
fn status_page(node: &Node) -> String {
    let shared = &node.shared;
    use std::fmt::Write as _;
    let rt = shared.runtime.load();
    let now = crate::clock::now_ns();
    let phase = shared.phase();
    let mut vips = String::new();
    if let Some(v) = &node.vips {
        for x in v.status_json().as_array().into_iter().flatten() {
            let _ = write!(
                vips,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=s-{}>{}</td><td>{} / {}</td></tr>",
                html_escape(x["name"].as_str().unwrap_or("")),
                x["vrid"],
                html_escape(&x["addresses"].to_string()),
                html_escape(x["state"].as_str().unwrap_or("")),
                html_escape(x["state"].as_str().unwrap_or("")),
                x["priority_now"],
                x["priority"],
            );
        }
    }
    let vips = if vips.is_empty() {
        "<p>no VIPs on this node</p>".to_string()
    } else {
        format!("<table id=vips><tr><th>VIP</th><th>VRID</th><th>addresses</th><th>state</th><th>priority now / configured</th></tr>{vips}</table>")
    };
    let anycast = match &node.anycast {
        None => String::new(),
        Some(a) => {
            let mut rows = String::new();
            for g in &a.groups {
                let announced = g.announced.load(Relaxed);
                let _ = write!(
                    rows,
                    "<tr><td>{}</td><td>{}</td><td class=q-{announced}>{}</td><td>{}</td><td>{}</td></tr>",
                    html_escape(&g.config.name),
                    html_escape(
                        &g.config
                            .addresses
                            .iter()
                            .map(|(a, p)| format!("{a}/{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    if announced { "announced" } else { "withdrawn" },
                    html_escape(&g.reason.lock().map(|r| r.clone()).unwrap_or_default()),
                    g.withdrawals.load(Relaxed),
                );
            }
            format!("<h2>Anycast</h2><table id=anycast><tr><th>group</th><th>addresses</th><th>route</th><th>why not</th><th>withdrawals</th></tr>{rows}</table>")
        }
    };
    let group = match shared.pair.as_ref().map(|p| p.view()) {
        None => "<p>no [ha] section: this node runs alone</p>".to_string(),
        Some(g) => {
            let mut rows = String::new();
            for m in &g.members {
                let _ = write!(
                    rows,
                    "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    m.id,
                    if m.id == g.id { " (this node)" } else { "" },
                    html_escape(&m.address),
                    if m.witness {
                        "witness"
                    } else if m.voter {
                        "voter"
                    } else {
                        "learner"
                    },
                    m.lag.map_or("–".into(), |l| l.to_string()),
                    m.last_contact_seconds.map_or("–".into(), |s| format!("{s:.2} s ago")),
                );
            }
            format!(
                "<p id=ha class=q-{}>role <b>{}</b> · quorum <b>{}</b> · leader {} · term {} · applied {} · pending changes {}</p>\
<table><tr><th>member</th><th>address</th><th>kind</th><th>lag</th><th>last contact</th></tr>{rows}</table>",
                g.quorum,
                g.role,
                if g.quorum { "yes" } else { "NO" },
                g.leader.map_or("none".into(), |l| l.to_string()),
                g.term,
                g.last_applied.unwrap_or(0),
                g.pending_changes,
            )
        }
    };
    let totals: Vec<(u64, u64)> = rt
        .routes
        .iter()
        .map(|r| {
            (
                (1..=5).map(|c| r.stats.responses.get(c)).sum(),
                r.stats.responses.get(5),
            )
        })
        .collect();
    let rates = route_rates(node, rt.generation, &totals);
    let mut routes = String::new();
    for (i, r) in rt.routes.iter().enumerate() {
        let by_class: Vec<u64> = (1..=5).map(|c| r.stats.responses.get(c)).collect();
        let total: u64 = by_class.iter().sum();
        let (rps, errors) = rates
            .get(i)
            .copied()
            .flatten()
            .map_or(("–".to_string(), "–".to_string()), |(rps, err)| {
                (format!("{rps:.1}"), format!("{:.1} %", err * 100.0))
            });
        let _ = write!(
            routes,
            "<tr><td>{}</td><td>{}</td><td>{rps}</td><td>{errors}</td><td>{total}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&r.name),
            r.destinations
                .iter()
                .map(|(c, _)| html_escape(&rt.clusters[*c].name))
                .collect::<Vec<_>>()
                .join(", "),
            by_class[3],
            by_class[4],
            r.stats.rate_limited.load(Relaxed),
        );
    }
    let mut rows = String::new();
    for c in &rt.clusters {
        for e in &c.endpoints {
            let total: u64 = (1..=5).map(|k| e.stats.responses.get(k)).sum();
            let state = e.stats.health.state_name(now);
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td class=s-{state}>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&c.name),
                e.address,
                e.stats.health.source_name(now),
                c.balancer.name(),
                e.weight,
                e.stats.active.load(Relaxed),
                e.stats.ewma.get() / 1e6,
                total,
                e.stats.responses.get(5),
            );
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2><title>Tandem</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}\
.s-healthy,.s-master,.q-true{{color:#070}}.s-unhealthy,.s-ejected,.q-false{{color:#b00}}.s-draining,.s-drained,.s-backup{{color:#a60}}</style></head>\
<body><h1>Tandem</h1><p id=phase>{phase} · generation {} · {} workers · {} connections</p>\
<h2>VIPs</h2>{vips}{anycast}<h2>Pair</h2>{group}\
<h2>Routes</h2><table id=routes><tr><th>route</th><th>clusters</th><th>req/s</th><th>5xx (recent)</th><th>responses</th><th>4xx</th><th>5xx</th><th>rate limited</th></tr>{routes}</table>\
<h2>Endpoints</h2><table id=endpoints><tr><th>cluster</th><th>endpoint</th><th>state</th><th>decided by</th><th>balancer</th><th>weight</th><th>active</th><th>ewma ms</th><th>responses</th><th>5xx</th></tr>{rows}</table>\
<p><a href=/status>/status</a> · <a href=/cluster>/cluster</a> · <a href=/metrics>/metrics</a></p></body></html>",
        rt.generation,
        shared.workers,
        shared.connections.load(Relaxed),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
