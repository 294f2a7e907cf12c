//! `[[listener]]`: addresses, limits, protocols, TLS, SNI routes and their destinations.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::checker::*;
use crate::config::model::ConfigFile;
use crate::config::*;

/// `[[listener]]`s; their names for the sections that refer to them.
pub(super) fn listeners(
    c: &mut Checker,
    file: &ConfigFile,
    base: &Path,
) -> (Vec<ListenerConfig>, HashMap<String, usize>) {
    let mut listeners = Vec::new();
    let mut listener_names: HashMap<String, usize> = HashMap::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        c.define(
            &mut listener_names,
            &l.name,
            i,
            format!("{key}.name"),
            "listener",
            "give each listener a unique name",
        );
        let addr = c.addr(&l.listen, format!("{key}.listen"));
        if l.max_header_bytes < 1024 {
            c.at(
                &l.name,
                format!("{key}.max_header_bytes"),
                format!("{} is too small", l.max_header_bytes),
                Some("use at least 1024 (default 65536)".into()),
            );
        }
        if l.max_connections == 0 {
            c.at(
                &l.name,
                format!("{key}.max_connections"),
                "0 would refuse every connection".into(),
                Some("use a positive number (default 10000)".into()),
            );
        }
        let protocol = match l.protocol.get_ref().as_str() {
            "http" => ListenerProtocol::Http,
            "tcp" => ListenerProtocol::Tcp,
            other => {
                c.at(
                    &l.protocol,
                    format!("{key}.protocol"),
                    format!("unknown listener protocol `{other}`"),
                    Some("use \"http\" or \"tcp\"".into()),
                );
                ListenerProtocol::Http
            }
        };
        let tls = l
            .tls
            .as_ref()
            .map(|t| c.listener_tls(t, base, &format!("{key}.tls"), &l.name));
        let mut proxy_protocol_from = Vec::new();
        for (j, s) in l.proxy_protocol_from.iter().enumerate() {
            match Cidr::parse(s.get_ref()) {
                Some(n) => proxy_protocol_from.push(n),
                None => c.at(
                    s,
                    format!("{key}.proxy_protocol_from[{j}]"),
                    format!("`{}` is not an address block", s.get_ref()),
                    Some("write e.g. \"10.0.0.0/8\" or \"192.0.2.7\"".into()),
                ),
            }
        }
        let mut sni_routes = Vec::new();
        for (j, r) in l.sni_routes.iter().enumerate() {
            let mut pats = Vec::new();
            for (k, n) in r.server_names.iter().enumerate() {
                let v = n.get_ref().to_ascii_lowercase();
                match v.strip_prefix('*') {
                    Some(sfx) if sfx.starts_with('.') && sfx.len() > 1 => {
                        pats.push(HostPattern::Suffix(sfx.to_string()))
                    }
                    Some(_) => c.at(
                        n,
                        format!("{key}.sni_routes[{j}].server_names[{k}]"),
                        format!("`{}` is not a server name pattern", n.get_ref()),
                        Some("write `a.example.com` or `*.example.com`".into()),
                    ),
                    None => pats.push(HostPattern::Exact(v)),
                }
            }
            sni_routes.push((pats, r.cluster.get_ref().clone()));
        }
        if protocol == ListenerProtocol::Tcp && l.cluster.is_none() && l.sni_routes.is_empty() {
            c.at(
                &l.name,
                format!("{key}.cluster"),
                "a tcp listener needs a destination".into(),
                Some("add cluster = \"NAME\" or sni_routes = [...]".into()),
            );
        }
        if protocol == ListenerProtocol::Http && (l.cluster.is_some() || !l.sni_routes.is_empty()) {
            c.at(
                &l.name,
                format!("{key}.cluster"),
                "`cluster` and `sni_routes` apply to tcp listeners".into(),
                Some("route HTTP with [[route]] tables, or set protocol = \"tcp\"".into()),
            );
        }
        if !l.sni_routes.is_empty() && l.tls.is_some() {
            c.at(
                &l.name,
                format!("{key}.sni_routes"),
                "sni_routes pass TLS through; this listener also terminates TLS".into(),
                Some("remove `tls` for passthrough, or `sni_routes` to terminate".into()),
            );
        }
        // A tcp listener may carry a protocol whose server speaks first (SMTP, MySQL):
        // its clients would wait out the defer for a greeting. TLS is client-first.
        if l.defer_accept && protocol == ListenerProtocol::Tcp && l.tls.is_none() && l.sni_routes.is_empty() {
            c.at(
                &l.name,
                format!("{key}.defer_accept"),
                "a tcp listener may carry protocols where the server speaks first, whose clients would wait for the deferred accept".into(),
                Some("remove defer_accept here; it suits http listeners and tcp listeners that terminate or route TLS".into()),
            );
        }
        let max_age = c.dur(&l.max_connection_age, format!("{key}.max_connection_age"));
        if !(1024..=1 << 20).contains(&l.tcp_buffer_bytes) {
            c.at(
                &l.name,
                format!("{key}.tcp_buffer_bytes"),
                format!("{} is out of range", l.tcp_buffer_bytes),
                Some("use 1024 to 1048576 bytes (default 32768)".into()),
            );
        }
        if let Some(listen) = addr {
            if let Some(prev) = listeners.iter().find(|p: &&ListenerConfig| p.listen == listen) {
                c.at(
                    &l.listen,
                    format!("{key}.listen"),
                    format!("`{listen}` is already used by listener `{}`", prev.name),
                    Some("each listener needs its own address".into()),
                );
            }
            listeners.push(ListenerConfig {
                name: l.name.get_ref().clone(),
                listen,
                max_connections: l.max_connections,
                max_requests_per_connection: l.max_requests_per_connection,
                max_header_bytes: l.max_header_bytes.max(8192),
                max_headers: l.max_headers,
                header_read_timeout: c.dur(&l.header_read_timeout, format!("{key}.header_read_timeout")),
                request_body_timeout: c.dur(&l.request_body_timeout, format!("{key}.request_body_timeout")),
                idle_timeout: c.dur(&l.idle_timeout, format!("{key}.idle_timeout")),
                http2: l.http2,
                protocol,
                tls_at: c.tls_anchors(l.tls.as_ref(), &l.name, &key),
                tls,
                proxy_protocol_from,
                cluster: l.cluster.as_ref().map(|s| s.get_ref().clone()),
                sni_routes,
                max_connection_age: (max_age > Duration::ZERO).then_some(max_age),
                tcp_buffer_bytes: l.tcp_buffer_bytes,
                filters: l.filters.iter().map(|f| f.get_ref().clone()).collect(),
                defer_accept: l.defer_accept,
            });
        }
    }
    (listeners, listener_names)
}

/// The clusters tcp listeners send to exist.
pub(super) fn destinations(c: &mut Checker, file: &ConfigFile, cluster_names: &HashMap<String, usize>) {
    // Listener destinations (tcp listeners name clusters).
    for (i, l) in file.listeners.iter().enumerate() {
        let names = l.cluster.iter().map(|c| (c, format!("listener[{i}].cluster"))).chain(
            l.sni_routes
                .iter()
                .enumerate()
                .map(|(j, r)| (&r.cluster, format!("listener[{i}].sni_routes[{j}].cluster"))),
        );
        for (name, k) in names {
            let missing = format!("no cluster named `{}`", name.get_ref());
            c.resolve(
                cluster_names,
                name,
                k,
                missing,
                "define it with [[cluster]] name = \"…\"",
            );
        }
    }
}
