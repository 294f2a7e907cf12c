//! `[[vip]]`: VRRP settings, tracking, fencing, sync groups.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::checker::*;
use crate::config::model::{self, ConfigFile};

impl Checker<'_> {
    /// Validates a `[[vip]]`.
    pub(super) fn vip(
        &mut self,
        v: &model::VipSection,
        key: &str,
        base: &std::path::Path,
    ) -> Option<tandem_ha::vip::router::VipConfig> {
        let mut ok = true;
        if !(1..=255).contains(&v.vrid) {
            self.at(
                &v.name,
                format!("{key}.vrid"),
                format!("{} is not a VRID", v.vrid),
                Some("use 1–255, the same on both nodes".into()),
            );
            ok = false;
        }
        if !(1..=255).contains(&v.priority) {
            self.at(
                &v.name,
                format!("{key}.priority"),
                format!("{} is out of range", v.priority),
                Some("use 1–254 (higher wins; 255 only on the node that owns the address)".into()),
            );
            ok = false;
        }
        let mut addresses: Vec<(std::net::IpAddr, u8)> = Vec::new();
        for (j, a) in v.addresses.iter().enumerate() {
            match self.ip_prefix(a, format!("{key}.addresses[{j}]")) {
                Some(v) if addresses.first().is_some_and(|f| f.0.is_ipv4() != v.0.is_ipv4()) => {
                    self.at(
                        a,
                        format!("{key}.addresses[{j}]"),
                        format!("`{}` mixes IPv4 and IPv6 in one VIP", a.get_ref()),
                        Some("VRRPv3 runs one virtual router per family: put the IPv6 addresses in their own [[vip]] with another vrid".into()),
                    );
                    ok = false;
                }
                Some(v) => addresses.push(v),
                None => ok = false,
            }
        }
        if v.addresses.is_empty() {
            self.at(
                &v.name,
                format!("{key}.addresses"),
                "no address".into(),
                Some("add addresses = [\"10.0.0.100/24\"]".into()),
            );
            ok = false;
        }
        let interval = self.dur(&v.advert_interval, format!("{key}.advert_interval"));
        let interval_cs = (interval.as_millis() / 10) as u64;
        if !(1..=4095).contains(&interval_cs) {
            self.at(
                &v.name,
                format!("{key}.advert_interval"),
                format!("{interval:?} is out of range"),
                Some("use 10ms to 40.95s (VRRPv3 counts centiseconds)".into()),
            );
            ok = false;
        }
        let lifetime = self.dur(&v.address_lifetime, format!("{key}.address_lifetime"));
        if lifetime < Duration::from_secs(1) || lifetime < interval * 3 {
            self.at(
                &v.name,
                format!("{key}.address_lifetime"),
                format!("{lifetime:?} is shorter than 1s or three advert intervals"),
                Some("use a few seconds (default \"3s\"): a killed holder's VIP disappears after it".into()),
            );
            ok = false;
        }
        let mut peers = Vec::new();
        let v6 = addresses.first().is_some_and(|a| a.0.is_ipv6());
        for (j, p) in v.unicast_peers.iter().enumerate() {
            // IPv6 adverts come from the link-local address and their checksum covers
            // it: a peer is reached at its link-local address on the VIP's interface.
            match p.get_ref().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) if !v6 => peers.push(std::net::IpAddr::V4(a)),
                Ok(std::net::IpAddr::V6(a)) if v6 && a.segments()[0] & 0xffc0 == 0xfe80 => {
                    peers.push(std::net::IpAddr::V6(a))
                }
                _ => {
                    self.at(
                        p,
                        format!("{key}.unicast_peers[{j}]"),
                        if v6 {
                            format!("`{}` is not an IPv6 link-local address", p.get_ref())
                        } else {
                            format!("`{}` is not an IPv4 address", p.get_ref())
                        },
                        Some(if v6 {
                            "IPv6 adverts go between link-local addresses: name the peer's fe80:: address on this interface (`ip -6 addr show scope link`)".into()
                        } else {
                            "e.g. \"10.0.0.12\"".into()
                        }),
                    );
                    ok = false;
                }
            }
        }
        let garp_refresh = self.dur(&v.garp_refresh, format!("{key}.garp_refresh"));
        let hold_down = self.dur(&v.hold_down, format!("{key}.hold_down"));
        let quorum_wait = self.dur(&v.quorum_wait, format!("{key}.quorum_wait"));
        let on_no_quorum = match v.on_no_quorum.get_ref().as_str() {
            "vrrp" => tandem_ha::vip::router::NoQuorum::Vrrp,
            "hold" => tandem_ha::vip::router::NoQuorum::Hold,
            other => {
                self.at(
                    &v.on_no_quorum,
                    format!("{key}.on_no_quorum"),
                    format!("unknown policy `{other}`"),
                    Some(
                        "use \"vrrp\" (take over by VRRP alone) or \"hold\" (a node without quorum never takes over)"
                            .into(),
                    ),
                );
                ok = false;
                tandem_ha::vip::router::NoQuorum::Vrrp
            }
        };
        let preempt_delay = self.dur(&v.preempt_delay, format!("{key}.preempt_delay"));
        let mut track_scripts = Vec::new();
        for (j, t) in v.track_scripts.iter().enumerate() {
            let skey = format!("{key}.track_scripts[{j}]");
            if t.command.get_ref().trim().is_empty() {
                self.at(
                    &t.command,
                    format!("{skey}.command"),
                    "empty command".into(),
                    Some("a shell command whose exit status 0 means healthy, e.g. \"pidof haproxy\"".into()),
                );
                ok = false;
            }
            let interval = self.dur(&t.interval, format!("{skey}.interval"));
            let timeout = self.dur(&t.timeout, format!("{skey}.timeout"));
            if interval < Duration::from_millis(100) || timeout.is_zero() {
                self.at(
                    &t.command,
                    format!("{skey}.interval"),
                    format!("interval {interval:?} / timeout {timeout:?} out of range"),
                    Some("use an interval of at least 100ms and a timeout above 0 (e.g. interval = \"2s\", timeout = \"1s\")".into()),
                );
                ok = false;
            }
            if t.rise == 0 || t.fall == 0 {
                self.at(
                    &t.command,
                    format!("{skey}.rise"),
                    "rise and fall must be at least 1".into(),
                    Some("rise = 2, fall = 2 waits for two results in a row".into()),
                );
                ok = false;
            }
            track_scripts.push(tandem_ha::vip::router::TrackScript {
                command: t.command.get_ref().clone(),
                interval,
                timeout,
                rise: t.rise,
                fall: t.fall,
                weight: t.weight.unwrap_or(v.track_weight).min(254) as u8,
            });
        }
        let mut track_processes = Vec::new();
        for (j, t) in v.track_processes.iter().enumerate() {
            let pkey = format!("{key}.track_processes[{j}]");
            let name = t.name.get_ref();
            if name.trim().is_empty() || (!t.full_command && name.len() > 15) {
                self.at(
                    &t.name,
                    format!("{pkey}.name"),
                    format!("`{name}` cannot name a process"),
                    Some("the kernel keeps 15 characters of a process name (`ps -o comm`); for a longer one or a path, set full_command = true and give the start of its command line".into()),
                );
                ok = false;
            }
            if t.quorum == 0 {
                self.at(
                    &t.name,
                    format!("{pkey}.quorum"),
                    "quorum 0 is always met".into(),
                    Some("quorum = 1 (the default) needs one running instance".into()),
                );
                ok = false;
            }
            track_processes.push(tandem_ha::vip::router::TrackProcess {
                name: name.clone(),
                full_command: t.full_command,
                quorum: t.quorum,
                weight: t.weight.unwrap_or(v.track_weight).min(254) as u8,
                delay: self.dur(&t.delay, format!("{pkey}.delay")),
            });
        }
        let version = match v.vrrp_version {
            3 => tandem_ha::vip::packet::Version::V3,
            2 if v6 => {
                self.at(
                    &v.name,
                    format!("{key}.vrrp_version"),
                    "VRRPv2 carries IPv4 addresses only".into(),
                    Some("IPv6 VIPs need vrrp_version = 3 (the default)".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V3
            }
            2 if interval.subsec_millis() != 0 || interval < Duration::from_secs(1) => {
                self.at(
                    &v.name,
                    format!("{key}.advert_interval"),
                    format!("{interval:?} is not whole seconds"),
                    Some("VRRPv2 counts the interval in seconds: use advert_interval = \"1s\" (or more)".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V2
            }
            2 => tandem_ha::vip::packet::Version::V2,
            other => {
                self.at(
                    &v.name,
                    format!("{key}.vrrp_version"),
                    format!("VRRP version {other} does not exist"),
                    Some("use 3 (the default), or 2 for peers that speak only VRRPv2".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V3
            }
        };
        for (j, i) in v.track_interfaces.iter().enumerate() {
            if i.get_ref().is_empty() || i.get_ref().len() >= 16 {
                self.at(
                    i,
                    format!("{key}.track_interfaces[{j}]"),
                    format!("`{}` is not an interface name", i.get_ref()),
                    Some("name an interface as `ip link` shows it, e.g. \"eth1\"".into()),
                );
                ok = false;
            }
        }
        ok.then(|| tandem_ha::vip::router::VipConfig {
            name: v.name.get_ref().clone(),
            interface: v.interface.get_ref().clone(),
            vrid: v.vrid as u8,
            priority: v.priority as u8,
            interval_cs: interval_cs as u16,
            preempt: v.preempt,
            addresses,
            unicast_peers: peers,
            garp_repeat: v.garp_repeat,
            garp_refresh,
            address_lifetime: lifetime,
            notify: v
                .notify
                .as_ref()
                .map(|n| self.file(base, n, format!("{key}.notify"), crate::config::access::Access::Read)),
            notify_keepalived: v.notify_keepalived,
            notify_fifo: v.notify_fifo.as_ref().map(|f| self.path(base, f)),
            hold_down,
            track_clusters: v.track_clusters.iter().map(|c| c.get_ref().clone()).collect(),
            track_weight: v.track_weight.min(254) as u8,
            on_no_quorum,
            quorum_wait,
            skip_check_adv_addr: v.skip_check_adv_addr,
            preempt_delay,
            track_interfaces: v.track_interfaces.iter().map(|c| c.get_ref().clone()).collect(),
            track_scripts,
            track_files: v.track_files.iter().map(|f| self.path(base, f)).collect(),
            sync_group: v.sync_group.as_ref().map(|g| g.get_ref().clone()),
            track_processes,
            version,
            use_vmac: v.use_vmac,
        })
    }
}

/// `[[vip]]`s: each one's settings, VRIDs unique per interface, sync groups of two or
/// more.
pub(super) fn vips(
    c: &mut Checker,
    file: &ConfigFile,
    base: &Path,
    cluster_names: &HashMap<String, usize>,
) -> Vec<tandem_ha::vip::router::VipConfig> {
    let mut vips = Vec::new();
    for (i, v) in file.vips.iter().enumerate() {
        for (j, t) in v.track_clusters.iter().enumerate() {
            c.resolve(
                cluster_names,
                t,
                format!("vip[{i}].track_clusters[{j}]"),
                format!("unknown cluster `{}`", t.get_ref()),
                "name a [[cluster]]",
            );
        }
        if let Some(cfg) = c.vip(v, &format!("vip[{i}]"), base) {
            if vips
                .iter()
                .any(|o: &tandem_ha::vip::router::VipConfig| o.vrid == cfg.vrid && o.interface == cfg.interface)
            {
                c.at(
                    &v.name,
                    format!("vip[{i}].vrid"),
                    format!("VRID {} is used twice on {}", cfg.vrid, cfg.interface),
                    Some("give each [[vip]] on an interface its own vrid".into()),
                );
            }
            vips.push(cfg);
        }
    }
    for (i, v) in file.vips.iter().enumerate() {
        let Some(g) = &v.sync_group else { continue };
        let members = file
            .vips
            .iter()
            .filter(|o| o.sync_group.as_ref().is_some_and(|h| h.get_ref() == g.get_ref()));
        if members.count() < 2 {
            c.at(
                g,
                format!("vip[{i}].sync_group"),
                format!("sync group `{}` has only this VIP", g.get_ref()),
                Some("a sync group moves two or more VIPs together: give the other [[vip]] the same sync_group, or remove the key".into()),
            );
        }
    }
    vips
}
