//! The SYN gate: a classic BPF socket filter on a listener that drops, unanswered, the
//! SYNs of new connections addressed to this node's VIPs.
//!
//! It closes just before the VIPs are released (maintenance, stop). Without it a client
//! that connects in the instant the address moves is caught half-open: its SYN reached
//! the old holder, but its next packet reaches the new one, which knows nothing of the
//! connection and answers with a reset — a failed request. With the gate closed such a
//! SYN gets no answer at all, so the client's kernel sends it again a second later, by
//! then to the node that holds the VIP. Connections already established (or whose
//! handshake is completing) are untouched: only packets with SYN set and ACK clear are
//! dropped, and only those addressed to a VIP (a wildcard listener keeps serving the
//! node's own addresses).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// `SKF_NET_OFF`: loads relative to the packet's network (IP) header.
const NET: u32 = (-0x0010_0000i32) as u32;
const LD_B_ABS: u16 = 0x30;
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const ALU_RSH_K: u16 = 0x74;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

/// The filter program for one listener; `None` when the listener cannot receive
/// connections to a VIP (it is bound to another specific address, or there are none).
#[derive(Debug, Clone)]
pub(crate) struct SynGate {
    program: Vec<libc::sock_filter>,
}

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl SynGate {
    /// The gate for a listener on `listen` when this node's VIPs are `vips`.
    pub(crate) fn for_listener(listen: SocketAddr, vips: &[IpAddr]) -> Option<SynGate> {
        let ip = listen.ip();
        let vips: Vec<IpAddr> = if ip.is_unspecified() {
            vips.to_vec()
        } else if vips.contains(&ip) {
            vec![ip]
        } else {
            return None;
        };
        // An IPv4 wildcard listener only sees IPv4; an IPv6 one sees both (mapped).
        let v4: Vec<u32> = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(u32::from(*a)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<[u32; 4]> = if listen.is_ipv6() {
            vips.iter()
                .filter_map(|a| match a {
                    IpAddr::V6(a) => {
                        let o = a.octets();
                        Some(std::array::from_fn(|i| {
                            u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                        }))
                    }
                    IpAddr::V4(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        if v4.is_empty() && v6.is_empty() {
            return None;
        }
        // Each address check falls through on a mismatch and returns DROP on a match.
        let mut v4_block = vec![op(LD_W_ABS, 0, 0, NET.wrapping_add(16))];
        for a in &v4 {
            v4_block.push(op(JEQ_K, 0, 1, *a));
            v4_block.push(op(RET_K, 0, 0, DROP));
        }
        v4_block.push(op(RET_K, 0, 0, ACCEPT));
        let mut v6_block = Vec::new();
        for a in &v6 {
            // Four words; a mismatch at word i skips the rest of this address.
            for (i, w) in a.iter().enumerate() {
                let skip = (2 * (3 - i) + 1) as u8;
                v6_block.push(op(LD_W_ABS, 0, 0, NET.wrapping_add(24 + 4 * i as u32)));
                v6_block.push(op(JEQ_K, 0, skip, *w));
            }
            v6_block.push(op(RET_K, 0, 0, DROP));
        }
        v6_block.push(op(RET_K, 0, 0, ACCEPT));
        let mut p = vec![
            // The packet's data starts at the TCP header: byte 13 holds the flags.
            op(LD_B_ABS, 0, 0, 13),
            op(ALU_AND_K, 0, 0, 0x12),
            op(JEQ_K, 1, 0, 0x02),
            op(RET_K, 0, 0, ACCEPT),
            op(LD_B_ABS, 0, 0, NET),
            op(ALU_RSH_K, 0, 0, 4),
        ];
        // Version 4 → the IPv4 block; otherwise on to the IPv6 block.
        p.push(op(JEQ_K, 0, u8::try_from(v4_block.len()).ok()?, 4));
        p.extend(v4_block);
        p.extend(v6_block);
        (p.len() <= 4096).then_some(SynGate { program: p })
    }

    /// Closes the gate on the listening socket `fd`: new connections to a VIP are
    /// dropped unanswered from now on.
    pub(crate) fn close(&self, fd: RawFd) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // The kernel copies the program before returning.
        set_socket_option(fd, libc::SO_ATTACH_FILTER, &prog)
    }

    /// Opens the gate again (no filter on `fd`).
    pub(crate) fn open(fd: RawFd) -> io::Result<()> {
        match set_socket_option(fd, libc::SO_DETACH_FILTER, &0 as &libc::c_int) {
            // ENOENT: there was no filter; the gate is open either way.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`.
fn set_socket_option<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of the length given; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whether a connection to `to` completes within 300 ms (a dropped SYN does not;
    /// a refused one errors at once, which would also count as false but faster).
    fn connects(to: SocketAddr) -> bool {
        TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok()
    }

    #[test]
    fn a_listener_on_another_address_has_no_gate() {
        assert!(SynGate::for_listener("127.0.0.1:80".parse().unwrap(), &[ip("10.0.0.1")]).is_none());
        assert!(SynGate::for_listener("0.0.0.0:80".parse().unwrap(), &[]).is_none());
        // An IPv4 wildcard never sees IPv6 VIPs.
        assert!(SynGate::for_listener("0.0.0.0:80".parse().unwrap(), &[ip("fd00::1")]).is_none());
    }

    #[test]
    fn a_closed_gate_drops_new_connections_to_a_vip_and_keeps_established_ones() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let gate = SynGate::for_listener(addr, &[ip("127.0.0.1")]).unwrap();
        let mut before = TcpStream::connect(addr).unwrap();
        gate.close(l.as_raw_fd()).unwrap();
        let t = std::time::Instant::now();
        assert!(!connects(addr), "a new connection completed through a closed gate");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "the SYN was refused, not dropped"
        );
        // The connection made before the gate closed is accepted and carries data.
        let (mut accepted, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        before.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        SynGate::open(l.as_raw_fd()).unwrap();
        assert!(connects(addr), "the reopened gate still drops connections");
        SynGate::open(l.as_raw_fd()).unwrap();
    }

    #[test]
    fn a_wildcard_listener_drops_only_connections_to_vips() {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let gate = SynGate::for_listener(l.local_addr().unwrap(), &[ip("127.0.0.2"), ip("127.0.0.3")]).unwrap();
        gate.close(l.as_raw_fd()).unwrap();
        assert!(connects(SocketAddr::new(ip("127.0.0.1"), port)));
        assert!(!connects(SocketAddr::new(ip("127.0.0.2"), port)));
        assert!(!connects(SocketAddr::new(ip("127.0.0.3"), port)));
        assert!(connects(SocketAddr::new(ip("127.0.0.4"), port)));
    }

    #[test]
    fn an_ipv6_wildcard_listener_checks_both_families() {
        let Ok(l) = TcpListener::bind("[::]:0") else { return };
        let port = l.local_addr().unwrap().port();
        let gate = SynGate::for_listener(l.local_addr().unwrap(), &[ip("::1"), ip("127.0.0.2")]).unwrap();
        gate.close(l.as_raw_fd()).unwrap();
        if TcpStream::connect_timeout(&SocketAddr::new(ip("::1"), 1), Duration::from_millis(100))
            .is_err_and(|e| e.kind() == io::ErrorKind::AddrNotAvailable)
        {
            return; // no IPv6 loopback here
        }
        assert!(!connects(SocketAddr::new(ip("::1"), port)));
        assert!(connects(SocketAddr::new(ip("127.0.0.1"), port)));
        assert!(!connects(SocketAddr::new(ip("127.0.0.2"), port)));
    }
}
