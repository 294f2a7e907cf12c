//! VRRPv3 advertisements for IPv4 and IPv6: encoding with the pseudo-header checksum,
//! and strict decoding (version, type, length, checksum, TTL / hop limit 255, protocol
//! 112) so malformed or foreign adverts are dropped and counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The VRRP multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The VRRP multicast group for IPv6.
pub const GROUP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The group adverts for addresses of `family_of`'s family go to.
pub fn group_for(family_of: IpAddr) -> IpAddr {
    match family_of {
        IpAddr::V4(_) => IpAddr::V4(GROUP),
        IpAddr::V6(_) => IpAddr::V6(GROUP6),
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id (1–255).
    pub vrid: u8,
    /// Priority (0 = release now, 255 = address owner).
    pub priority: u8,
    /// Advertisement interval in centiseconds (12 bits).
    pub interval_cs: u16,
    /// The virtual addresses (all of one family).
    pub addrs: Vec<IpAddr>,
}

/// Why an advert was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// Shorter than its headers or address list.
    #[error("truncated")]
    Truncated,
    /// Not version 3 / type 1.
    #[error("not a VRRPv3 advertisement")]
    Version,
    /// A VRRPv2 advertisement (keepalived's default `vrrp_version 2`): a v2 peer and
    /// this node cannot see each other, and both may hold the VIPs.
    #[error("a VRRPv2 advertisement (this router speaks VRRPv3)")]
    V2,
    /// IP TTL other than 255 (it crossed a router, or was forged off-link).
    #[error("TTL is not 255")]
    Ttl,
    /// Not protocol 112.
    #[error("not VRRP")]
    Protocol,
    /// Checksum mismatch.
    #[error("bad checksum")]
    Checksum,
    /// VRID 0 or an address count that does not match the length (or, in VRRPv2, an
    /// authentication type other than none).
    #[error("bad VRID or address list")]
    Fields,
    /// A VRRPv3 advertisement on a router configured for VRRPv2.
    #[error("a VRRPv3 advertisement (this router speaks VRRPv2)")]
    V3,
}

/// The VRRP version a router speaks: 3 (RFC 5798, IPv4 and IPv6), or 2 (RFC 3768, IPv4
/// only, keepalived's default) for peers that speak nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// RFC 3768: interval in whole seconds, checksum over the message alone, 8 bytes
    /// of (unused) authentication data.
    V2,
    /// RFC 5798.
    #[default]
    V3,
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_bytes(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

/// The checksum over the IPv4 or IPv6 pseudo-header and the VRRP message (checksum
/// field zero). Both pseudo-headers sum to the same words: addresses, protocol, length.
pub fn checksum(src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
    let mut sum = add_bytes(0, &octets(&src));
    sum = add_bytes(sum, &octets(&dst));
    sum += u32::from(PROTO_VRRP);
    sum += msg.len() as u32;
    fold(add_bytes(sum, msg))
}

impl Advert {
    /// The VRRP message (no IP header) as sent from `src` to `dst`.
    pub fn encode(&self, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
        let (src, dst) = (src.into(), dst.into());
        let mut m = Vec::with_capacity(8 + 16 * self.addrs.len());
        m.push(0x31);
        m.push(self.vrid);
        m.push(self.priority);
        m.push(self.addrs.len() as u8);
        m.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        for a in &self.addrs {
            m.extend_from_slice(&octets(a));
        }
        let c = checksum(src, dst, &m);
        m[6..8].copy_from_slice(&c.to_be_bytes());
        m
    }

    /// The message in `version`'s format (VRRPv2: IPv4 only, interval rounded to whole
    /// seconds, at least 1).
    pub fn encode_as(&self, version: Version, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
        match version {
            Version::V3 => self.encode(src, dst),
            Version::V2 => {
                let mut m = Vec::with_capacity(16 + 4 * self.addrs.len());
                m.push(0x21);
                m.push(self.vrid);
                m.push(self.priority);
                m.push(self.addrs.len() as u8);
                m.push(0); // authentication: none
                m.push((self.interval_cs / 100).clamp(1, 255) as u8);
                m.extend_from_slice(&[0, 0]);
                for a in &self.addrs {
                    m.extend_from_slice(&octets(a));
                }
                m.extend_from_slice(&[0; 8]);
                let c = fold(add_bytes(0, &m));
                m[6..8].copy_from_slice(&c.to_be_bytes());
                m
            }
        }
    }

    /// Decodes a VRRPv2 message (IPv4): no authentication, 8 bytes of authentication
    /// data after the addresses (keepalived sends them; a message without is accepted),
    /// checksum over the message.
    pub fn decode_v2(m: &[u8]) -> Result<Advert, AdvertError> {
        if m.len() < 8 {
            return Err(AdvertError::Truncated);
        }
        if m[0] == 0x31 {
            return Err(AdvertError::V3);
        }
        if m[0] != 0x21 {
            return Err(AdvertError::Version);
        }
        let count = usize::from(m[3]);
        let addrs_end = 8 + 4 * count;
        // VRID 0, authentication, an interval of 0 s, or a length the count does not give.
        if m[1] == 0 || m[4] != 0 || m[5] == 0 || (m.len() != addrs_end && m.len() != addrs_end + 8) {
            return Err(AdvertError::Fields);
        }
        if fold(add_bytes(0, m)) != 0 {
            return Err(AdvertError::Checksum);
        }
        Ok(Advert {
            vrid: m[1],
            priority: m[2],
            interval_cs: u16::from(m[5]) * 100,
            addrs: m[8..addrs_end]
                .chunks(4)
                .map(|c| IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])))
                .collect(),
        })
    }

    /// Decodes a VRRP message received from `src` to `dst` (the address list has their
    /// family).
    pub fn decode(m: &[u8], src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Result<Advert, AdvertError> {
        let (src, dst) = (src.into(), dst.into());
        let size = if src.is_ipv4() { 4 } else { 16 };
        if m.len() < 8 {
            return Err(AdvertError::Truncated);
        }
        if m[0] == 0x21 {
            return Err(AdvertError::V2);
        }
        if m[0] != 0x31 {
            return Err(AdvertError::Version);
        }
        let count = usize::from(m[3]);
        if m[1] == 0 || m.len() != 8 + size * count {
            return Err(AdvertError::Fields);
        }
        if checksum(src, dst, m) != 0 {
            return Err(AdvertError::Checksum);
        }
        Ok(Advert {
            vrid: m[1],
            priority: m[2],
            interval_cs: u16::from_be_bytes([m[4], m[5]]) & 0x0fff,
            addrs: m[8..]
                .chunks(size)
                .map(|c| match <[u8; 16]>::try_from(c) {
                    Ok(b) => IpAddr::V6(Ipv6Addr::from(b)),
                    Err(_) => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                })
                .collect(),
        })
    }

    /// Decodes an IPv6 advert as a raw socket delivers it (payload only; the hop limit
    /// and destination come from ancillary data).
    pub fn decode_v6(m: &[u8], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Result<Advert, AdvertError> {
        if hop_limit != 255 {
            return Err(AdvertError::Ttl);
        }
        Advert::decode(m, src, dst)
    }

    /// Decodes a whole IPv4 packet (as a raw socket delivers it): checks the IP header
    /// (protocol 112, TTL 255), then the advert. Returns the source, the destination
    /// and the advert.
    pub fn decode_ip(p: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, Advert), AdvertError> {
        Advert::decode_ip_as(p, Version::V3)
    }

    /// [`Advert::decode_ip`] for a router speaking `version`.
    pub fn decode_ip_as(p: &[u8], version: Version) -> Result<(Ipv4Addr, Ipv4Addr, Advert), AdvertError> {
        if p.len() < 20 || p[0] >> 4 != 4 {
            return Err(AdvertError::Truncated);
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if ihl < 20 || p.len() < total || total < ihl {
            return Err(AdvertError::Truncated);
        }
        if p[9] != PROTO_VRRP {
            return Err(AdvertError::Protocol);
        }
        if p[8] != 255 {
            return Err(AdvertError::Ttl);
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let m = &p[ihl..total];
        let advert = match version {
            Version::V3 => Advert::decode(m, src, dst)?,
            Version::V2 => Advert::decode_v2(m)?,
        };
        Ok((src, dst, advert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn vip() -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            interval_cs: 10,
            addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100))],
        }
    }

    #[test]
    fn ipv6_adverts_carry_16_byte_addresses_and_need_hop_limit_255() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let a = Advert {
            addrs: vec![IpAddr::V6("fd77::100".parse().unwrap())],
            ..vip()
        };
        let m = a.encode(src, GROUP6);
        assert_eq!(m.len(), 8 + 16);
        assert_eq!(Advert::decode_v6(&m, src, GROUP6, 255), Ok(a.clone()));
        assert_eq!(Advert::decode_v6(&m, src, GROUP6, 64), Err(AdvertError::Ttl));
        let other: Ipv6Addr = "fe80::9".parse().unwrap();
        assert_eq!(Advert::decode_v6(&m, other, GROUP6, 255), Err(AdvertError::Checksum));
    }

    #[test]
    fn matches_keepalived_bytes() {
        let a1 = Ipv4Addr::new(10, 99, 0, 1);
        let a2 = Ipv4Addr::new(10, 99, 0, 2);
        assert_eq!(vip().encode(a1, GROUP), hex("31 33 96 01 00 0a 43 07 0a 63 00 64"));
        let release = Advert { priority: 0, ..vip() };
        assert_eq!(release.encode(a1, GROUP), hex("31 33 00 01 00 0a d9 07 0a 63 00 64"));
        let other = Advert { priority: 100, ..vip() };
        assert_eq!(other.encode(a2, GROUP), hex("31 33 64 01 00 0a 75 06 0a 63 00 64"));
        // Unicast: the destination is in the pseudo-header.
        assert_eq!(vip().encode(a1, a2), hex("31 33 96 01 00 0a 18 b5 0a 63 00 64"));
    }

    #[test]
    fn vrrp_v2_matches_keepalived_bytes_and_refuses_v3_and_damage() {
        let a1 = Ipv4Addr::new(10, 99, 0, 1);
        let v2 = Advert {
            interval_cs: 100,
            ..vip()
        };
        // RFC 3768's layout: no authentication, interval 1 s, 8 bytes of zero
        // authentication data, checksum without a pseudo-header (the namespace test
        // elects against keepalived in `vrrp_version 2`).
        let m = v2.encode_as(Version::V2, a1, GROUP);
        assert_eq!(m, hex("21 33 96 01 00 01 3e 03 0a 63 00 64 00 00 00 00 00 00 00 00"));
        assert_eq!(Advert::decode_v2(&m), Ok(v2.clone()));
        assert_eq!(
            Advert::decode_v2(&m[..12]),
            Ok(v2.clone()),
            "without authentication data"
        );
        let mut bad = m.clone();
        bad[2] = 1;
        assert_eq!(Advert::decode_v2(&bad), Err(AdvertError::Checksum));
        let mut auth = m.clone();
        auth[4] = 1;
        assert_eq!(
            Advert::decode_v2(&auth),
            Err(AdvertError::Fields),
            "simple-text authentication"
        );
        assert_eq!(Advert::decode_v2(&vip().encode(a1, GROUP)), Err(AdvertError::V3));
        assert_eq!(Advert::decode(&m, a1, GROUP), Err(AdvertError::V2));
    }

    #[test]
    fn decodes_what_it_encodes_and_refuses_damage() {
        let a1 = Ipv4Addr::new(10, 99, 0, 1);
        let m = vip().encode(a1, GROUP);
        assert_eq!(Advert::decode(&m, a1, GROUP), Ok(vip()));
        let mut bad = m.clone();
        bad[2] = 200;
        assert_eq!(Advert::decode(&bad, a1, GROUP), Err(AdvertError::Checksum));
        assert_eq!(
            Advert::decode(&m, Ipv4Addr::new(10, 99, 0, 9), GROUP),
            Err(AdvertError::Checksum),
            "spoofed source"
        );
        let mut v2 = m.clone();
        v2[0] = 0x21;
        assert_eq!(Advert::decode(&v2, a1, GROUP), Err(AdvertError::V2));
        v2[0] = 0x41;
        assert_eq!(Advert::decode(&v2, a1, GROUP), Err(AdvertError::Version));
        assert_eq!(Advert::decode(&m[..10], a1, GROUP), Err(AdvertError::Fields));
        assert_eq!(Advert::decode(&m[..4], a1, GROUP), Err(AdvertError::Truncated));
        // Whole IP packets: TTL must be 255.
        let mut ip = hex("45 c0 00 20 00 01 00 00 ff 70 00 00 0a 63 00 01 e0 00 00 12");
        ip.extend_from_slice(&m);
        assert_eq!(Advert::decode_ip(&ip).map(|(s, _, a)| (s, a)), Ok((a1, vip())));
        ip[8] = 64;
        assert_eq!(Advert::decode_ip(&ip), Err(AdvertError::Ttl));
    }
}
