//! `[bgp]` and `[[anycast]]`: the BGP speaker Tandem drives and the service addresses
//! it announces through it.

use std::collections::HashMap;
use std::path::Path;

use super::checker::*;
use crate::config::model::ConfigFile;
use crate::config::{AnycastConfig, BgpConfig, ListenerConfig};

/// Validates `[bgp]`.
pub(super) fn bgp(c: &mut Checker, file: &ConfigFile, base: &Path) -> Option<BgpConfig> {
    let b = file.bgp.as_ref()?;
    let mut ok = true;
    if b.speaker.get_ref() != "bird" {
        c.at(
            &b.speaker,
            "bgp.speaker".into(),
            format!("unknown BGP speaker `{}`", b.speaker.get_ref()),
            Some("use \"bird\" (BIRD 2: apt-get install bird2)".into()),
        );
        ok = false;
    }
    let protocol = b.protocol.get_ref();
    if protocol.is_empty()
        || !protocol.starts_with(|ch: char| ch.is_ascii_alphabetic())
        || !protocol.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        c.at(
            &b.protocol,
            "bgp.protocol".into(),
            format!("`{protocol}` is not a BIRD protocol name"),
            Some("use a letter, then letters, digits and `_`, e.g. \"tandem_anycast\"".into()),
        );
        ok = false;
    }
    if b.fragment.get_ref().is_empty() {
        c.at(
            &b.fragment,
            "bgp.fragment".into(),
            "no file named".into(),
            Some("e.g. fragment = \"/etc/bird/tandem-anycast.conf\", included by bird.conf".into()),
        );
        ok = false;
    }
    let fragment = c.path(base, &b.fragment);
    ok.then(|| BgpConfig {
        fragment,
        control_socket: c.path(base, &b.control_socket),
        birdc: b.birdc.get_ref().clone(),
        protocol: protocol.clone(),
    })
}

/// Validates every `[[anycast]]`: addresses parse and belong to no other group or VIP,
/// tracked clusters exist, a listener can receive the addresses, `[bgp]` and (for
/// `withdraw_on_no_quorum`) `[ha]` are there.
pub(super) fn groups(
    c: &mut Checker,
    file: &ConfigFile,
    listeners: &[ListenerConfig],
    cluster_names: &HashMap<String, usize>,
    vips: &[tandem_ha::vip::router::VipConfig],
) -> Vec<AnycastConfig> {
    let mut out = Vec::new();
    let mut names = HashMap::new();
    let mut seen: Vec<std::net::IpAddr> = vips.iter().flat_map(|v| v.addresses.iter().map(|a| a.0)).collect();
    for (i, g) in file.anycast.iter().enumerate() {
        let key = format!("anycast[{i}]");
        let mut ok = c.define(
            &mut names,
            &g.name,
            i,
            format!("{key}.name"),
            "anycast",
            "give each [[anycast]] its own name",
        );
        if file.bgp.is_none() && i == 0 {
            c.at(
                &g.name,
                key.clone(),
                "anycast addresses need a BGP speaker to announce them".into(),
                Some("add [bgp] with fragment = \"/etc/bird/tandem-anycast.conf\" (see README: Anycast)".into()),
            );
            ok = false;
        }
        let mut addresses = Vec::new();
        for (j, a) in g.addresses.iter().enumerate() {
            let Some(parsed) = c.ip_prefix(a, format!("{key}.addresses[{j}]")) else {
                ok = false;
                continue;
            };
            if seen.contains(&parsed.0) {
                c.at(
                    a,
                    format!("{key}.addresses[{j}]"),
                    format!("{} is already a VIP or anycast address", parsed.0),
                    Some("an address is either floated by one [[vip]] or announced by one [[anycast]]".into()),
                );
                ok = false;
            }
            seen.push(parsed.0);
            addresses.push(parsed);
        }
        if g.addresses.is_empty() {
            c.at(
                &g.name,
                format!("{key}.addresses"),
                "no address".into(),
                Some("add addresses = [\"10.99.1.10/32\"]".into()),
            );
            ok = false;
        }
        for (j, t) in g.track_clusters.iter().enumerate() {
            ok &= c
                .resolve(
                    cluster_names,
                    t,
                    format!("{key}.track_clusters[{j}]"),
                    format!("unknown cluster `{}`", t.get_ref()),
                    "name a [[cluster]]",
                )
                .is_some();
        }
        let receives =
            |l: &ListenerConfig| l.listen.ip().is_unspecified() || addresses.iter().any(|a| a.0 == l.listen.ip());
        if ok && !listeners.iter().any(receives) {
            c.at(
                &g.name,
                format!("{key}.addresses"),
                "no listener receives these addresses".into(),
                Some(format!(
                    "add a [[listener]] on \"{}:PORT\" or \"0.0.0.0:PORT\"",
                    addresses[0].0
                )),
            );
            ok = false;
        }
        if g.withdraw_on_no_quorum && file.ha.is_none() {
            c.at(
                &g.name,
                format!("{key}.withdraw_on_no_quorum"),
                "withdraw_on_no_quorum needs a group to have a quorum of".into(),
                Some("add an [ha] section, or remove the key".into()),
            );
            ok = false;
        }
        if g.interface.get_ref().is_empty() {
            c.at(
                &g.interface,
                format!("{key}.interface"),
                "no interface named".into(),
                Some("use \"lo\" or a dummy interface".into()),
            );
            ok = false;
        }
        let hold_down = c.dur(&g.hold_down, format!("{key}.hold_down"));
        let withdraw_after = c.dur(&g.withdraw_after, format!("{key}.withdraw_after"));
        if ok {
            out.push(AnycastConfig {
                name: g.name.get_ref().clone(),
                addresses,
                interface: g.interface.get_ref().clone(),
                track_clusters: g.track_clusters.iter().map(|t| t.get_ref().clone()).collect(),
                withdraw_on_no_quorum: g.withdraw_on_no_quorum,
                hold_down,
                withdraw_after,
            });
        }
    }
    out
}
