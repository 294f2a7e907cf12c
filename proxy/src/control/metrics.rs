//! The Prometheus text exposition of the counters in [`crate::stats`], the process,
//! the pair, VIPs and filters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::exposition::{counter, gauge};
use crate::stats::{ClusterStats, EndpointStats, ListenerStats};

/// Renders the Prometheus text exposition of `node` for its current runtime.
pub fn render(node: &crate::control::Node) -> String {
    let shared = &node.shared;
    let rt = &**shared.runtime.load();
    let (listeners, reg, sticky_bindings) = (&shared.listeners[..], &*shared.stats, shared.sticky.len());
    let mut out = String::with_capacity(16 * 1024);
    let p = &reg.process;
    crate::control::process_metrics::render_build_info(&mut out);
    crate::control::process_metrics::render_process(&mut out);
    crate::control::process_metrics::render_certificates(&mut out, &rt.certificates);
    // The file's hash is in /status; a label that changes every reload would start a
    // new series each time.
    gauge(
        &mut out,
        "tandem_config_generation",
        "Generation of the applied configuration.",
    );
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
    let lfields: [(&str, &str, bool, ListenerField); 17] = [
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
        (
            "tandem_listener_idle_releases_total",
            "Times an idle HTTP/1.1 connection gave its buffers back (it stays open).",
            true,
            |s| &s.idle_releases,
        ),
        (
            "tandem_listener_connections_parked",
            "Idle plain HTTP/1.1 connections waiting for their next request outside the worker's runtime (no buffer, no task).",
            false,
            |s| &s.parked,
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
    crate::exposition::histogram(
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
    let _ = writeln!(out, "tandem_sticky_bindings {}", sticky_bindings);
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
    crate::exposition::histogram(
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
    crate::wasm::metrics::render(&mut out, &shared.wasm, &shared.stats);
    if let Some(p) = &shared.pair {
        render_group(&mut out, &p.view());
    }
    if let Some(v) = &node.vips {
        v.render(&mut out);
    }
    if let Some(a) = &node.anycast {
        a.render(&mut out);
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
