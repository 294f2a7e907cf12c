//! VRRPv3 advertisements for IPv4: encoding with the pseudo-header checksum, and strict
//! decoding (version, type, length, checksum, TTL 255, protocol 112) so malformed or
//! foreign adverts are dropped and counted.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The VRRP multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// An advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id (1–255).
    pub vrid: u8,
    /// Priority (0 = release now, 255 = address owner).
    pub priority: u8,
    /// Advertisement interval in centiseconds (12 bits).
    pub interval_cs: u16,
    /// The virtual addresses.
    pub addrs: Vec<Ipv4Addr>,
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
    /// IP TTL other than 255 (it crossed a router, or was forged off-link).
    #[error("TTL is not 255")]
    Ttl,
    /// Not protocol 112.
    #[error("not VRRP")]
    Protocol,
    /// Checksum mismatch.
    #[error("bad checksum")]
    Checksum,
    /// VRID 0 or an address count that does not match the length.
    #[error("bad VRID or address list")]
    Fields,
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

/// The checksum over the IPv4 pseudo-header and the VRRP message (checksum field zero).
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> u16 {
    let mut sum = add_bytes(0, &src.octets());
    sum = add_bytes(sum, &dst.octets());
    sum += u32::from(PROTO_VRRP);
    sum += msg.len() as u32;
    fold(add_bytes(sum, msg))
}

impl Advert {
    /// The VRRP message (no IP header) as sent from `src` to `dst`.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut m = Vec::with_capacity(8 + 4 * self.addrs.len());
        m.push(0x31);
        m.push(self.vrid);
        m.push(self.priority);
        m.push(self.addrs.len() as u8);
        m.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        for a in &self.addrs {
            m.extend_from_slice(&a.octets());
        }
        let c = checksum(src, dst, &m);
        m[6..8].copy_from_slice(&c.to_be_bytes());
        m
    }

    /// Decodes a VRRP message received from `src` to `dst`.
    pub fn decode(m: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, AdvertError> {
        if m.len() < 8 {
            return Err(AdvertError::Truncated);
        }
        if m[0] != 0x31 {
            return Err(AdvertError::Version);
        }
        let count = usize::from(m[3]);
        if m[1] == 0 || m.len() != 8 + 4 * count {
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
                .chunks(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect(),
        })
    }

    /// Decodes a whole IPv4 packet (as a raw socket delivers it): checks the IP header
    /// (protocol 112, TTL 255), then the advert. Returns the source and the advert.
    pub fn decode_ip(p: &[u8]) -> Result<(Ipv4Addr, Advert), AdvertError> {
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
        Ok((src, Advert::decode(&p[ihl..total], src, dst)?))
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
            addrs: vec![Ipv4Addr::new(10, 99, 0, 100)],
        }
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
        assert_eq!(Advert::decode(&v2, a1, GROUP), Err(AdvertError::Version));
        assert_eq!(Advert::decode(&m[..10], a1, GROUP), Err(AdvertError::Fields));
        assert_eq!(Advert::decode(&m[..4], a1, GROUP), Err(AdvertError::Truncated));
        // Whole IP packets: TTL must be 255.
        let mut ip = hex("45 c0 00 20 00 01 00 00 ff 70 00 00 0a 63 00 01 e0 00 00 12");
        ip.extend_from_slice(&m);
        assert_eq!(Advert::decode_ip(&ip), Ok((a1, vip())));
        ip[8] = 64;
        assert_eq!(Advert::decode_ip(&ip), Err(AdvertError::Ttl));
    }
}
