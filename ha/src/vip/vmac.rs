//! keepalived's `use_vmac`: the VIPs live on a macvlan interface (`vrrp.VRID`, or
//! `vrrp6.VRID` for IPv6) whose MAC is the VRRP virtual MAC RFC 5798 defines
//! (00:00:5e:00:01:VRID, IPv6 00:00:5e:00:02:VRID). Clients resolve the VIP to that MAC
//! whichever node holds it, so a failover needs no ARP update in their caches: the
//! new holder's gratuitous ARP only moves the MAC to its switch port.
//!
//! The interface is up only while the node is master, so a backup never sends from the
//! virtual MAC (the switch would move it there). Adverts still go out on the parent
//! interface, from its address (keepalived's `vmac_xmit_base`). The parent needs
//! `arp_ignore = 1` and `arp_announce = 2` (set here when allowed, and by
//! deploy/sysctl), so only the macvlan answers ARP for the VIP, with the virtual MAC,
//! and the parent's own ARP requests do not name the VIP; the macvlan gets no IPv6 link-local
//! address, so nothing is sent from it unasked.

use std::net::IpAddr;

use super::net::{attr, io_err, rtnetlink, Interface, NetError, NLM_F_CREATE, NLM_F_EXCL};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_MACVLAN_MODE: u16 = 1;
/// Private mode: macvlans of one parent do not talk to each other.
const MACVLAN_MODE_PRIVATE: u32 = 1;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
/// No IPv6 link-local address is generated.
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

/// The name of the VRRP MAC interface of `vrid` (`vrrp.51`, `vrrp6.51`).
pub fn name(vrid: u8, v6: bool) -> String {
    if v6 {
        format!("vrrp6.{vrid}")
    } else {
        format!("vrrp.{vrid}")
    }
}

/// The VRRP virtual MAC of `vrid` (RFC 5798 §7.3).
pub fn mac(vrid: u8, v6: bool) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, if v6 { 0x02 } else { 0x01 }, vrid]
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        tracing::debug!(path, error = %e, "sysctl not set");
    }
}

/// Creates (again, when one is left from an earlier run) the VRRP MAC interface of
/// `vrid` on `parent`, down; its [`Interface`] carries the virtual MAC and the parent's
/// advert address.
pub fn create(parent: &Interface, vrid: u8) -> Result<Interface, NetError> {
    let v6 = parent.address.is_ipv6();
    let name = name(vrid, v6);
    let mac = mac(vrid, v6);
    delete(&name);
    let request = |gen_mode: bool| {
        let mut body = ifinfomsg(0, 0, 0);
        let mut cname = name.clone().into_bytes();
        cname.push(0);
        attr(&mut body, IFLA_IFNAME, &cname);
        attr(&mut body, IFLA_LINK, &parent.index.to_ne_bytes());
        attr(&mut body, IFLA_ADDRESS, &mac);
        let mut data = Vec::new();
        attr(&mut data, IFLA_MACVLAN_MODE, &MACVLAN_MODE_PRIVATE.to_ne_bytes());
        let mut info = Vec::new();
        attr(&mut info, IFLA_INFO_KIND, b"macvlan");
        attr(&mut info, IFLA_INFO_DATA, &data);
        attr(&mut body, IFLA_LINKINFO, &info);
        if gen_mode {
            // No link-local address: nothing (DAD, router solicitations) leaves it unasked.
            let mut inet6 = Vec::new();
            attr(&mut inet6, IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE]);
            let mut spec = Vec::new();
            attr(&mut spec, libc::AF_INET6 as u16, &inet6);
            attr(&mut body, IFLA_AF_SPEC, &spec);
        }
        rtnetlink(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
    };
    match request(true) {
        // A kernel without IPv6 generates no link-local address anyway.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP)) => request(false),
        r => r,
    }
    .map_err(io_err("create the VRRP MAC interface"))?;
    let index = super::net::interface_index(&name).ok_or_else(|| NetError::NoInterface(name.clone()))?;
    if !v6 {
        // Only the interface that holds the VIP answers ARP for it (arp_ignore), and the
        // parent's own ARP requests never name the VIP as their sender (arp_announce:
        // a client would file the parent's MAC under the VIP). deploy/sysctl sets both for
        // all interfaces; under the systemd unit /proc/sys is read-only.
        let level = |i: &str, key: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/{key}"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        for (key, want) in [("arp_ignore", 1), ("arp_announce", 2)] {
            if level("all", key).max(level(&parent.name, key)) < want {
                sysctl(
                    &format!("/proc/sys/net/ipv4/conf/{}/{key}", parent.name),
                    &want.to_string(),
                );
            }
            if level("all", key).max(level(&parent.name, key)) < want {
                tracing::warn!(
                    interface = %parent.name,
                    "{key} is below {want}: clients may learn the parent interface's MAC for the VIP; set \
                     net.ipv4.conf.all.{key} = {want} (deploy/sysctl/60-tandem.conf does)"
                );
            }
        }
    }
    Ok(Interface {
        name,
        index,
        mac,
        address: parent.address,
    })
}

/// Sets the interface up or down.
pub fn set_up(index: u32, up: bool) -> Result<(), NetError> {
    let flags = if up { libc::IFF_UP as u32 } else { 0 };
    let body = ifinfomsg(index, flags, libc::IFF_UP as u32);
    rtnetlink(RTM_NEWLINK, 0, &body).map_err(io_err("set the VRRP MAC interface up or down"))
}

/// Deletes the interface named `name` (absent is fine).
pub fn delete(name: &str) {
    let Some(index) = super::net::interface_index(name) else {
        return;
    };
    if let Err(e) = rtnetlink(RTM_DELLINK, 0, &ifinfomsg(index, 0, 0)) {
        tracing::warn!(interface = name, error = %e, "cannot delete the VRRP MAC interface");
    }
}

/// The interface the VIPs of a router live on: its VRRP MAC interface with `use_vmac`,
/// else `interface` itself.
pub fn address_interface(interface: &str, vrid: u8, use_vmac: bool, first_vip: Option<IpAddr>) -> String {
    if use_vmac {
        name(vrid, first_vip.is_some_and(|a| a.is_ipv6()))
    } else {
        interface.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_follow_rfc_5798_and_keepalived() {
        assert_eq!(name(51, false), "vrrp.51");
        assert_eq!(name(51, true), "vrrp6.51");
        assert_eq!(mac(51, false), [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(mac(255, true), [0, 0, 0x5e, 0, 2, 255]);
    }
}
