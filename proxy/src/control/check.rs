//! `tandem check`: what a configuration compiles to, said in the words of the file, and
//! whether the user the service runs as may open every file it names.

use std::fmt::Write as _;

use crate::config::access::{self, User};
use crate::config::{self, Config, HostPattern, ListenerProtocol, PathMatch, UpstreamProtocol};

/// The files `user` could not open as the configuration needs, rendered like the
/// loader's problems: `file:line:col: key: message; hint`.
pub fn file_problems(c: &Config, user: &User) -> Vec<String> {
    access::check(&c.files, user)
        .into_iter()
        .map(|i| {
            format!(
                "{}:{}:{}: {}: {}{}",
                c.source,
                i.line,
                i.col,
                i.key,
                i.message,
                i.hint.map(|h| format!("; {h}")).unwrap_or_default()
            )
        })
        .collect()
}

/// A readable summary: listeners, routes, clusters, filters, VIPs and the pair.
pub fn summary(c: &Config, user: &User) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "configuration OK: {} (checked as user {})", c.source, user.name);
    let _ = writeln!(
        out,
        "workers: {}   admin API: {}{}",
        c.server.workers,
        c.admin.listen,
        if c.admin.token.is_some() { " (token)" } else { "" }
    );
    let _ = writeln!(out, "\nlisteners:");
    for l in &c.listeners {
        let what = match (l.protocol, &l.tls) {
            (ListenerProtocol::Tcp, _) => format!("TCP → cluster {}", l.cluster.as_deref().unwrap_or("?")),
            (ListenerProtocol::Http, Some(t)) => format!(
                "HTTPS ({} certificate{}{})",
                t.certificates.len(),
                if t.certificates.len() == 1 { "" } else { "s" },
                if l.http2 { ", h2" } else { "" }
            ),
            (ListenerProtocol::Http, None) => format!("HTTP{}", if l.http2 { " (h2c too)" } else { "" }),
        };
        let _ = writeln!(out, "  {:<16} {:<22} {}", l.name, l.listen.to_string(), what);
    }
    if !c.routes.is_empty() {
        let _ = writeln!(out, "\nroutes (first match wins):");
    }
    for r in &c.routes {
        let hosts: Vec<String> = r
            .hosts
            .iter()
            .map(|h| match h {
                HostPattern::Any => "any host".into(),
                HostPattern::Exact(s) => s.clone(),
                HostPattern::Suffix(s) => format!("*{s}"),
            })
            .collect();
        let path = match &r.path {
            PathMatch::Any => "any path".to_string(),
            PathMatch::Exact(s) => format!("path = {s}"),
            PathMatch::Prefix(s) => format!("path {s}*"),
            PathMatch::Regex(re) => format!("path ~ {}", re.as_str()),
        };
        let methods = if r.methods.is_empty() {
            String::new()
        } else {
            format!(
                " {}",
                r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("|")
            )
        };
        let to: Vec<String> = r
            .destinations
            .iter()
            .map(|(i, w)| {
                if r.destinations.len() > 1 {
                    format!("{} ({w})", c.clusters[*i].name)
                } else {
                    c.clusters[*i].name.clone()
                }
            })
            .collect();
        let mut extras = Vec::new();
        if !r.filters.is_empty() {
            let names: Vec<&str> = r.filters.iter().map(|f| c.filters[*f].name.as_str()).collect();
            extras.push(format!("filters {}", names.join(", ")));
        }
        if r.rate_limit.is_some() {
            extras.push("rate limit".into());
        }
        if r.retry.is_some() {
            extras.push("retries".into());
        }
        let _ = writeln!(
            out,
            "  {:<16} {}, {}{} → {}{}",
            r.name,
            hosts.join(", "),
            path,
            methods,
            to.join(", "),
            if extras.is_empty() {
                String::new()
            } else {
                format!("  [{}]", extras.join("; "))
            }
        );
    }
    if !c.clusters.is_empty() {
        let _ = writeln!(out, "\nclusters:");
    }
    for cl in &c.clusters {
        let proto = match (cl.protocol, cl.tls.is_some()) {
            (UpstreamProtocol::Http1, false) => "HTTP/1.1",
            (UpstreamProtocol::Http1, true) => "HTTP/1.1 over TLS",
            (UpstreamProtocol::H2c, false) => "h2c",
            (UpstreamProtocol::H2c, true) => "h2 over TLS",
        };
        let mut checks = Vec::new();
        if cl.health_check.is_some() {
            checks.push("active health checks");
        }
        if cl.outlier.is_some() {
            checks.push("outlier detection");
        }
        let _ = writeln!(
            out,
            "  {:<16} {}, {}, {} endpoint{}{}",
            cl.name,
            cl.balancer.name(),
            proto,
            cl.endpoints.len(),
            if cl.endpoints.len() == 1 { "" } else { "s" },
            if checks.is_empty() {
                String::new()
            } else {
                format!(", {}", checks.join(", "))
            }
        );
        for e in &cl.endpoints {
            let _ = writeln!(out, "    {} (weight {})", e.address, e.weight);
        }
    }
    if !c.filters.is_empty() {
        let _ = writeln!(out, "\nfilters:");
    }
    for f in &c.filters {
        let policy = match f.failure_policy {
            config::FailurePolicy::FailClosed => "fails closed",
            config::FailurePolicy::FailOpen => "fails open",
        };
        let _ = writeln!(out, "  {:<16} {} ({policy})", f.name, f.path.display());
    }
    if !c.vips.is_empty() {
        let _ = writeln!(out, "\nfloating VIPs:");
    }
    for v in &c.vips {
        let addrs: Vec<String> = v.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        let _ = writeln!(
            out,
            "  {:<16} {} on {}, VRID {}, priority {}, adverts every {} ms{}",
            v.name,
            addrs.join(", "),
            v.interface,
            v.vrid,
            v.priority,
            u32::from(v.interval_cs) * 10,
            if v.unicast_peers.is_empty() {
                String::new()
            } else {
                format!(
                    ", unicast to {}",
                    v.unicast_peers
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    match &c.ha {
        None => {
            let _ = writeln!(out, "\npair: none (a single node; state is local)");
        }
        Some(h) => {
            let g = &h.group;
            let members: Vec<String> = g
                .peers
                .iter()
                .map(|p| {
                    let role = if h.witnesses.contains(&p.id) { " witness" } else { "" };
                    let me = if p.id == g.id { " (this node)" } else { "" };
                    format!("{} {}{role}{me}", p.id, p.address)
                })
                .collect();
            let _ = writeln!(
                out,
                "\npair: node {} of {} members: {}\n  data in {}, heartbeat {:?}, election timeout {:?}",
                g.id,
                g.peers.len(),
                members.join(", "),
                g.data_dir.display(),
                g.heartbeat,
                g.election_timeout
            );
        }
    }
    out
}
