//! Each bad file produces its precise error: line, column, key, message, hint.

use super::*;

const BASE: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[[cluster]]
name = "api"
endpoints = [{ address = "127.0.0.1:9001" }]

[[route]]
name = "all"
cluster = "api"
"#;

fn issues(text: &str) -> Vec<ConfigIssue> {
    match load_str("t.toml", text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.issues().to_vec(),
    }
}

fn one(text: &str) -> ConfigIssue {
    let v = issues(text);
    assert_eq!(v.len(), 1, "{v:#?}");
    v.into_iter().next().unwrap()
}

#[test]
fn base_is_valid_and_defaults_apply() {
    let c = load_str("t.toml", BASE).unwrap();
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9900");
    assert_eq!(c.listeners[0].idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(c.routes[0].timeout, std::time::Duration::from_secs(15));
    assert_eq!(c.clusters[0].balancer, BalancerKind::RoundRobin);
    assert_eq!(c.clusters[0].connect_timeout, std::time::Duration::from_secs(2));
    assert!(c.server.workers >= 1);
    assert_eq!(c.listeners[0].tcp_buffer_bytes, 32 * 1024);
}

#[test]
fn tcp_buffer_size_is_bounded() {
    let i = one(&BASE.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntcp_buffer_bytes = 100",
    ));
    assert_eq!((i.line, i.key.as_str()), (3, "listener[0].tcp_buffer_bytes"));
    assert_eq!(i.message, "100 is out of range");
    assert!(i.hint.unwrap().contains("default 32768"));
}

#[test]
fn defer_accept_is_refused_on_a_plain_tcp_listener_only() {
    let tcp = BASE.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\ncluster = \"api\"\ndefer_accept = true",
    );
    let i = one(&tcp);
    assert_eq!((i.line, i.key.as_str()), (3, "listener[0].defer_accept"));
    assert!(i.message.contains("server speaks first"), "{}", i.message);
    assert!(i.hint.unwrap().contains("remove defer_accept"));
    // HTTP listeners take it; without it nothing is deferred.
    let c = load_str(
        "t.toml",
        &BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ndefer_accept = true",
        ),
    )
    .unwrap();
    assert!(c.listeners[0].defer_accept);
    assert!(!load_str("t.toml", BASE).unwrap().listeners[0].defer_accept);
}

#[test]
fn unknown_key_names_line_and_suggests() {
    let i = one(&BASE.replace("listen = ", "listn = "));
    assert_eq!((i.line, i.key.as_str()), (4, "listener[0].listn"));
    assert_eq!(i.message, "unknown key `listn`");
    assert_eq!(i.hint.as_deref(), Some("did you mean `listen`?"));
}

#[test]
fn unknown_top_level_table() {
    let i = one(&format!("{BASE}\n[clustr]\nx = 1\n"));
    assert_eq!(i.key, "clustr");
    assert!(i.hint.unwrap().contains("cluster"));
}

#[test]
fn missing_cluster_reference_suggests_the_near_name() {
    let i = one(&BASE.replace("cluster = \"api\"", "cluster = \"apii\""));
    assert_eq!((i.line, i.col), (12, 11));
    assert_eq!(i.key, "route[0].cluster");
    assert!(i.message.contains("`apii`"), "{}", i.message);
    assert_eq!(i.hint.as_deref(), Some("did you mean `api`?"));
}

#[test]
fn bad_endpoint_address() {
    let i = one(&BASE.replace("127.0.0.1:9001", "127.0.0.1"));
    assert_eq!(i.key, "cluster[0].endpoints[0].address");
    assert_eq!(i.line, 8);
    assert!(i.hint.unwrap().contains("add a port"));
    let i = one(&BASE.replace("127.0.0.1:9001", "backend.local:80"));
    assert!(i.message.contains("not an IP:port"));
}

#[test]
fn bad_duration_and_balancer_are_reported_together() {
    let text = BASE.replace(
        "name = \"api\"\n",
        "name = \"api\"\nbalancer = \"maglve\"\nconnect_timeout = \"3 parsecs\"\n",
    );
    let v = issues(&text);
    assert_eq!(v.len(), 2, "{v:#?}"); // balancer and duration, both at once
    assert!(v
        .iter()
        .any(|i| i.key == "cluster[0].balancer" && i.hint.as_deref() == Some("did you mean `maglev`?")));
    assert!(v
        .iter()
        .any(|i| i.key == "cluster[0].connect_timeout" && i.message.contains("3 parsecs")));
}

#[test]
fn hashing_balancer_needs_hash_on() {
    let i = one(&BASE.replace("name = \"api\"\n", "name = \"api\"\nbalancer = \"ring_hash\"\n"));
    assert_eq!(i.key, "cluster[0].hash_on");
}

#[test]
fn wrong_type_is_explained() {
    let i = one(&BASE.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nmax_connections = \"lots\"",
    ));
    assert_eq!(i.key, "listener[0].max_connections");
    assert_eq!(i.line, 5);
    assert!(i.message.contains("invalid type"));
}

#[test]
fn syntax_error_points_at_line() {
    let i = one(&format!("{BASE}\n[[route]\n"));
    assert_eq!(i.key, "(toml syntax)");
    assert_eq!(i.line, 14);
}

#[test]
fn duplicate_names_and_addresses() {
    let text = format!("{BASE}\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n");
    let v = issues(&text);
    assert!(v.iter().any(|i| i.message.contains("used twice")));
    assert!(v.iter().any(|i| i.message.contains("already used by listener")));
}

#[test]
fn admin_beyond_loopback_needs_token() {
    let i = one(&format!("[admin]\nlisten = \"0.0.0.0:9900\"\n{BASE}"));
    assert_eq!(i.key, "admin.listen");
    assert!(i.hint.unwrap().contains("token"));
    load_str(
        "t",
        &format!("[admin]\nlisten = \"0.0.0.0:9900\"\ntoken = \"s3cret-0123456789abcdef\"\n{BASE}"),
    )
    .unwrap();
}

#[test]
fn admin_tokens_must_be_long_and_printable() {
    let i = one(&format!("[admin]\nlisten = \"0.0.0.0:9900\"\ntoken = \"x\"\n{BASE}"));
    assert_eq!((i.key.as_str(), i.line), ("admin.token", 3));
    assert!(i.message.contains("1 characters"), "{}", i.message);
    assert!(i.hint.unwrap().contains("openssl rand"));
    let i = one(&format!("[admin]\ntoken = \"                    \"\n{BASE}"));
    assert_eq!(i.key, "admin.token");
    assert!(i.message.contains("spaces"), "{}", i.message);
}

#[test]
fn secrets_in_a_world_readable_file_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let text = format!("[admin]\ntoken = \"0123456789abcdef0123\"\n{BASE}");
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = crate::config::load_file(&path).unwrap();
    let w = cfg.warnings.iter().find(|w| w.key == "admin.token").expect("a warning");
    assert_eq!(w.line, 2);
    assert!(w.message.contains("every local user can read"), "{}", w.message);
    assert!(w.hint.as_deref().unwrap().contains("chmod 640"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = crate::config::load_file(&path).unwrap();
    assert!(cfg.warnings.iter().all(|w| w.key != "admin.token"));
}

#[test]
fn bad_regex_and_path() {
    let text = BASE.replace("cluster = \"api\"\n", "cluster = \"api\"\npath_regex = \"/a/([\"\n");
    let i = one(&text);
    assert_eq!(i.key, "route[0].path_regex");
    let i = one(&BASE.replace("cluster = \"api\"\n", "cluster = \"api\"\npath_prefix = \"v1\"\n"));
    assert_eq!(i.hint.as_deref(), Some("write \"/v1\""));
}

#[test]
fn route_without_destination_and_unknown_listener() {
    let text = BASE.replace("cluster = \"api\"\n", "listeners = [\"wbe\"]\n");
    let v = issues(&text);
    assert!(v
        .iter()
        .any(|i| i.key == "route[0].cluster" && i.message.contains("no destination")));
    assert!(v
        .iter()
        .any(|i| i.key == "route[0].listeners[0]" && i.hint.as_deref() == Some("did you mean `web`?")));
}

#[test]
fn display_is_file_line_col_key_message_hint() {
    let e = load_str(
        "conf/tandem.toml",
        &BASE.replace("cluster = \"api\"", "cluster = \"apii\""),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/tandem.toml:12:11: route[0].cluster: route points at cluster `apii`, which does not exist; did you mean `api`?"
    );
}

#[test]
fn per_try_timeout_longer_than_route_total_is_refused() {
    let i = one(&BASE.replace(
        "cluster = \"api\"\n",
        "cluster = \"api\"\ntimeout = \"2s\"\nper_try_timeout = \"5s\"\n",
    ));
    assert_eq!(i.key, "route[0].per_try_timeout");
    assert!(i.message.contains("longer than the route timeout"), "{}", i.message);
}

#[test]
fn timeout_inversions_are_warnings() {
    let c = load_str(
        "t.toml",
        &BASE
            .replace("name = \"api\"\n", "name = \"api\"\nconnect_timeout = \"3s\"\n")
            .replace("cluster = \"api\"\n", "cluster = \"api\"\nper_try_timeout = \"1s\"\n"),
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("connect_timeout"));
}

#[test]
fn health_and_retry_settings_are_checked() {
    let text = BASE
        .replace(
            "name = \"api\"\n",
            "name = \"api\"\nhealth_check = { kind = \"udp\" }\noutlier_detection = { max_ejection_percent = 150 }\n",
        )
        .replace(
            "cluster = \"api\"\n",
            "cluster = \"api\"\nretry_on = [\"5xxx\", \"retriable-status\"]\n",
        );
    let v = issues(&text);
    assert!(v.iter().any(|i| i.key == "cluster[0].health_check.kind"), "{v:#?}");
    assert!(v
        .iter()
        .any(|i| i.key == "cluster[0].outlier_detection.max_ejection_percent"));
    assert!(v
        .iter()
        .any(|i| i.key == "route[0].retry_on[0]" && i.hint.as_deref() == Some("did you mean `5xx`?")));
    assert!(v.iter().any(|i| i.key == "route[0].retriable_statuses"));
}

#[test]
fn sticky_and_rate_limit_settings_are_checked() {
    let text = BASE
        .replace("name = \"api\"\n", "name = \"api\"\nsticky = { mode = \"cookie\" }\n")
        .replace(
            "cluster = \"api\"\n",
            "cluster = \"api\"\nrate_limit = { requests = 10, scope = \"cluster\", key = \"cookie:x\" }\n",
        );
    let v = issues(&text);
    assert!(v.iter().any(|i| i.key == "cluster[0].sticky.secret"), "{v:#?}");
    assert!(v
        .iter()
        .any(|i| i.key == "route[0].rate_limit.scope" && i.message.contains("Raft group")));
    assert!(v.iter().any(|i| i.key == "route[0].rate_limit.key"));
}

#[test]
fn vip_trackers_are_checked_with_their_key_and_a_fix() {
    let vip =
        "\n[[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\naddresses = [\"10.0.0.100/24\"]\n";
    let ok = load_str(
        "t.toml",
        &format!("{BASE}{vip}preempt_delay = \"2s\"\ntrack_interfaces = [\"eth1\"]\ntrack_files = [\"/run/w\"]\ntrack_scripts = [{{ command = \"pidof x\", interval = \"2s\", fall = 3 }}]\n"),
    )
    .unwrap();
    let v = &ok.vips[0];
    assert_eq!(v.preempt_delay, std::time::Duration::from_secs(2));
    assert_eq!(v.track_interfaces, vec!["eth1".to_string()]);
    assert_eq!(
        (
            v.track_scripts[0].fall,
            v.track_scripts[0].rise,
            v.track_scripts[0].weight
        ),
        (3, 1, 50)
    );
    assert!(!v.skip_check_adv_addr);

    let i = one(&format!(
        "{BASE}{vip}track_scripts = [{{ command = \"pidof x\", rise = 0 }}]\n"
    ));
    assert_eq!((i.line, i.key.as_str()), (20, "vip[0].track_scripts[0].rise"));
    assert!(i.hint.unwrap().contains("rise = 2"));
    let i = one(&format!("{BASE}{vip}track_scripts = [{{ command = \" \" }}]\n"));
    assert_eq!(i.key, "vip[0].track_scripts[0].command");
    let i = one(&format!(
        "{BASE}{vip}track_scripts = [{{ command = \"x\", interval = \"10ms\" }}]\n"
    ));
    assert_eq!(i.key, "vip[0].track_scripts[0].interval");
}

#[test]
fn sync_groups_vrrp_v2_track_processes_and_vmac_are_checked_with_their_key_and_a_fix() {
    let vip = |name: &str, vrid: u32, extra: &str| {
        format!("\n[[vip]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = 150\naddresses = [\"10.0.0.{vrid}/24\"]\n{extra}\n")
    };
    let ok = load_str(
        "t.toml",
        &format!(
            "{BASE}{}{}",
            vip("web", 51, "sync_group = \"edge\"\nuse_vmac = true\ntrack_processes = [{ name = \"bird\", quorum = 2, delay = \"1s\" }]"),
            vip("inner", 52, "sync_group = \"edge\"\nvrrp_version = 2\nadvert_interval = \"1s\"")
        ),
    )
    .unwrap();
    assert_eq!(ok.vips[0].sync_group.as_deref(), Some("edge"));
    assert_eq!(ok.vips[0].address_interface(), "vrrp.51");
    assert_eq!(ok.vips[1].address_interface(), "eth0");
    assert_eq!(ok.vips[0].track_processes[0].quorum, 2);
    assert_eq!(ok.vips[0].track_processes[0].weight, 50);
    assert_eq!(ok.vips[1].version, tandem_ha::vip::packet::Version::V2);

    let i = one(&format!("{BASE}{}", vip("web", 51, "sync_group = \"edge\"")));
    assert_eq!(i.key, "vip[0].sync_group");
    assert!(i.hint.unwrap().contains("same sync_group"));
    let i = one(&format!("{BASE}{}", vip("web", 51, "vrrp_version = 2")));
    assert_eq!(
        i.key, "vip[0].advert_interval",
        "v2 counts whole seconds; the default is 100ms"
    );
    let i = one(&format!("{BASE}{}", vip("web", 51, "vrrp_version = 4")));
    assert_eq!(i.key, "vip[0].vrrp_version");
    let i = one(&format!(
        "{BASE}{}",
        vip("web", 51, "track_processes = [{ name = \"a-very-long-process-name\" }]")
    ));
    assert_eq!(i.key, "vip[0].track_processes[0].name");
    assert!(i.hint.unwrap().contains("full_command"));
}

#[test]
fn route_metadata_is_a_table_of_namespaces() {
    let route = "\n[[route]]\nname = \"r\"\ncluster = \"c\"\n";
    let base = format!("[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n{route}");
    let ok = load_str(
        "t.toml",
        &format!("{base}metadata = {{ \"envoy.filters.http.lua\" = {{ k = 1 }} }}\n"),
    )
    .unwrap();
    assert_eq!(
        ok.routes[0].metadata.as_deref(),
        Some(&serde_json::json!({ "envoy.filters.http.lua": { "k": 1 } }))
    );
    let i = one(&format!("{base}metadata = {{ k = 1 }}\n"));
    assert_eq!(i.key, "route[0].metadata");
    assert!(i.hint.unwrap().contains("filter_metadata"));
}

#[test]
fn request_id_and_forwarded_headers_are_checked_with_their_key_and_a_fix() {
    let ok = load_str(
        "t.toml",
        &format!("[server]\nrequest_id = \"keep\"\nforwarded_headers = [\"for\", \"host\"]\n{BASE}"),
    )
    .unwrap();
    assert_eq!(ok.server.request_id, crate::config::RequestIdMode::Keep);
    assert_eq!(
        ok.server.forwarded,
        crate::config::ForwardedHeaders {
            xff: true,
            proto: false,
            host: true
        }
    );
    let ok = load_str("t.toml", BASE).unwrap();
    assert_eq!(ok.server.request_id, crate::config::RequestIdMode::Generate);
    assert_eq!(ok.server.forwarded, crate::config::ForwardedHeaders::default());
    let i = one(&format!("[server]\nrequest_id = \"random\"\n{BASE}"));
    assert_eq!(i.key, "server.request_id");
    let i = one(&format!("[server]\nforwarded_headers = [\"for\", \"port\"]\n{BASE}"));
    assert_eq!(i.key, "server.forwarded_headers[1]");
}

#[test]
fn anycast_is_validated_with_its_speaker() {
    let good = format!(
        "{BASE}\n[bgp]\nfragment = \"/etc/bird/tandem-anycast.conf\"\n\
         [[anycast]]\nname = \"web\"\naddresses = [\"10.99.1.10\", \"fd00::10/128\"]\ntrack_clusters = [\"api\"]\n"
    );
    let c = load_str("t.toml", &good.replace("127.0.0.1:8080", "0.0.0.0:8080")).unwrap();
    let g = &c.anycast[0];
    assert_eq!(g.addresses[0], ("10.99.1.10".parse().unwrap(), 32));
    assert_eq!(g.addresses[1].1, 128);
    assert_eq!(g.interface, "lo");
    assert_eq!(g.hold_down, std::time::Duration::from_secs(5));
    let bgp = c.bgp.as_ref().unwrap();
    assert_eq!(bgp.protocol, "tandem_anycast");
    assert_eq!(bgp.control_socket, std::path::PathBuf::from("/run/bird/bird.ctl"));
    assert!(c
        .released_addresses()
        .any(|a| a == "10.99.1.10".parse::<std::net::IpAddr>().unwrap()));

    // The listener on 127.0.0.1 cannot receive the anycast address.
    let i = one(&good);
    assert_eq!(i.key, "anycast[0].addresses");
    assert!(i.hint.unwrap().contains("0.0.0.0:PORT"));

    let wild = good.replace("127.0.0.1:8080", "0.0.0.0:8080");
    let i = one(&wild.replace("[bgp]\nfragment = \"/etc/bird/tandem-anycast.conf\"\n", ""));
    assert_eq!(i.key, "anycast[0]");
    assert!(i.message.contains("BGP speaker"), "{i:?}");

    let i = one(&wild.replace("\"10.99.1.10\"", "\"10.99.1.300\""));
    assert_eq!(i.key, "anycast[0].addresses[0]");

    let i = one(&wild.replace("track_clusters = [\"api\"]", "track_clusters = [\"apx\"]"));
    assert_eq!(i.key, "anycast[0].track_clusters[0]");
    assert_eq!(i.hint.as_deref(), Some("did you mean `api`?"));

    let i = one(&format!("{wild}withdraw_on_no_quorum = true\n"));
    assert_eq!(i.key, "anycast[0].withdraw_on_no_quorum");
    assert!(i.hint.unwrap().contains("[ha]"));

    let i = one(&wild.replace("fragment = ", "speaker = \"gobgp\"\nfragment = "));
    assert_eq!(i.key, "bgp.speaker");

    let i = one(&format!(
        "{wild}[[anycast]]\nname = \"web2\"\naddresses = [\"10.99.1.10/32\"]\n"
    ));
    assert_eq!(i.key, "anycast[1].addresses[0]");
    assert!(i.message.contains("already"), "{i:?}");
}
