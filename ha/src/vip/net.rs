//! The kernel side of holding a VIP: interface lookups, adding and removing addresses
//! through rtnetlink (with a lifetime the holder keeps refreshing, so the VIP of a
//! killed process expires by itself), the raw VRRP socket (protocol 112, multicast
//! joined by interface index, TTL 255; IPv6: ff02::12, hop limit 255), gratuitous ARP
//! over AF_PACKET and unsolicited neighbour advertisements for IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use super::packet::{Advert, AdvertError, Version, GROUP, GROUP6, PROTO_VRRP};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No such interface.
    #[error("no interface `{0}`")]
    NoInterface(String),
    /// The interface has no address of the VIPs' family to advertise from (IPv4, or an
    /// IPv6 link-local address).
    #[error("interface `{0}` has no {1} address to advertise from")]
    NoAddress(String, &'static str),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// OS error.
        source: io::Error,
    },
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io { what, source }
}

/// An interface: name, index, MAC and the address adverts come from.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Kernel index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// Advert source and tie-break: the first IPv4 address (IPv4 VIPs) or the link-local
    /// address (IPv6 VIPs).
    pub address: IpAddr,
}

impl Interface {
    /// Looks `name` up (index, MAC, and the advert source of the family of `vips`: the
    /// first IPv4 address that is not a VIP, or the IPv6 link-local address).
    pub fn lookup(name: &str, vips: &[IpAddr]) -> Result<Interface, NetError> {
        let cname = std::ffi::CString::new(name).map_err(|_| NetError::NoInterface(name.into()))?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(NetError::NoInterface(name.into()));
        }
        let mac_text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap_or_default();
        let mut mac = [0u8; 6];
        for (i, part) in mac_text.trim().split(':').take(6).enumerate() {
            mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
        }
        let address = if vips.first().is_some_and(IpAddr::is_ipv6) {
            link_local_of(name)
                .map(IpAddr::V6)
                .ok_or(NetError::NoAddress(name.into(), "IPv6 link-local"))?
        } else {
            ipv4_addrs(name)
                .into_iter()
                .find(|a| !vips.contains(&IpAddr::V4(*a)))
                .map(IpAddr::V4)
                .ok_or(NetError::NoAddress(name.into(), "IPv4"))?
        };
        Ok(Interface {
            name: name.into(),
            index,
            mac,
            address,
        })
    }
}

/// The addresses configured on interface `name`, in kernel order.
fn addrs(name: &str) -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if n.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: the family is AF_INET, so it is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
            libc::AF_INET6 => {
                // SAFETY: the family is AF_INET6, so it is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: frees the list from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

fn ipv4_addrs(name: &str) -> Vec<Ipv4Addr> {
    addrs(name)
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The IPv6 link-local address of interface `name` (VRRPv3 adverts come from it).
fn link_local_of(name: &str) -> Option<Ipv6Addr> {
    addrs(name).into_iter().find_map(|a| match a {
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(a),
        _ => None,
    })
}

/// The index of interface `name` (`None`: no such interface).
pub fn interface_index(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether interface `name` can carry the router's traffic: administratively up, with
/// carrier (IFF_UP and IFF_RUNNING), and still holding the address adverts come from.
/// A router whose interface fails this is in FAULT.
pub fn link_usable(name: &str, address: IpAddr) -> bool {
    link_up(name) && has_address(name, address)
}

/// Whether interface `name` is administratively up and has carrier (IFF_UP and
/// IFF_RUNNING); false when there is no such interface.
pub fn link_up(name: &str) -> bool {
    // SAFETY: a plain datagram socket, closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return true;
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed ifreq with the interface name copied in (NUL-terminated, as
    // long as IFNAMSIZ allows); SIOCGIFFLAGS fills ifr_flags.
    let flags = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return false;
        }
        req.ifr_ifru.ifru_flags as libc::c_int
    };
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

/// Whether `addr` is configured on interface `name`.
pub fn has_address(name: &str, addr: IpAddr) -> bool {
    addrs(name).contains(&addr)
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_EXCL: u16 = 0x200;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const NLMSG_ERROR: u16 = 2;

/// Appends one netlink attribute (padded to 4 bytes).
pub(super) fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One rtnetlink request, waiting for its acknowledgement.
pub(super) fn rtnetlink(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and sa are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

/// IPv6: usable at once, without duplicate address detection (the election already
/// decided who holds it).
const IFA_F_NODAD: u8 = 0x02;

fn ifaddrmsg(addr: IpAddr, index: u32, prefix: u8) -> Vec<u8> {
    let (family, flags) = match addr {
        IpAddr::V4(_) => (libc::AF_INET as u8, 0),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, IFA_F_NODAD),
    };
    let mut b = vec![family, prefix, flags, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    b
}

fn addr_attrs(body: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            attr(body, IFA_LOCAL, &a.octets());
            attr(body, IFA_ADDRESS, &a.octets());
        }
        IpAddr::V6(a) => attr(body, IFA_ADDRESS, &a.octets()),
    }
}

/// Adds (or refreshes) `addr/prefix` on interface `index`, valid for `lifetime`
/// (`None`: forever). Refreshing before it runs out keeps it; a holder that dies
/// stops refreshing and the kernel removes it.
pub fn add_address(index: u32, addr: IpAddr, prefix: u8, lifetime: Option<Duration>) -> Result<(), NetError> {
    add_address_with(index, addr, prefix, lifetime, false)
}

/// `add_address`; with `no_prefix_route` the kernel adds no route for the prefix (a
/// VIP on a VRRP MAC interface must not take the parent's subnet route).
pub fn add_address_with(
    index: u32,
    addr: IpAddr,
    prefix: u8,
    lifetime: Option<Duration>,
    no_prefix_route: bool,
) -> Result<(), NetError> {
    const IFA_FLAGS: u16 = 8;
    const IFA_F_NOPREFIXROUTE: u32 = 0x200;
    let mut body = ifaddrmsg(addr, index, prefix);
    addr_attrs(&mut body, addr);
    if no_prefix_route {
        let flags = IFA_F_NOPREFIXROUTE | u32::from(body[2]);
        attr(&mut body, IFA_FLAGS, &flags.to_ne_bytes());
    }
    if let Some(l) = lifetime {
        let secs = l.as_secs().clamp(1, u64::from(u32::MAX - 1)) as u32;
        let mut ci = Vec::with_capacity(16);
        ci.extend_from_slice(&secs.to_ne_bytes()); // preferred
        ci.extend_from_slice(&secs.to_ne_bytes()); // valid
        ci.extend_from_slice(&0u32.to_ne_bytes());
        ci.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, IFA_CACHEINFO, &ci);
    }
    rtnetlink(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body).map_err(io_err("add VIP address"))
}

/// Removes `addr/prefix` from interface `index` (absent is fine).
pub fn remove_address(index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetError> {
    let mut body = ifaddrmsg(addr, index, prefix);
    addr_attrs(&mut body, addr);
    match rtnetlink(RTM_DELADDR, 0, &body) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) || e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map_err(io_err("remove VIP address")),
    }
}

/// The raw VRRP socket of one interface.
pub struct VrrpSocket {
    sock: tokio::io::unix::AsyncFd<Socket>,
    src: IpAddr,
    index: u32,
    version: Version,
}

impl VrrpSocket {
    /// Opens protocol 112 for the family of the interface's advert address: IPv4 joins
    /// 224.0.0.18 by index and sends with TTL 255 and DSCP CS6; IPv6 joins ff02::12,
    /// sends with hop limit 255 from the link-local address and asks for the hop limit
    /// and destination of what it receives. Not bound (a bound raw socket misses the group).
    /// Adverts are sent and decoded as `version` says.
    pub fn open(iface: &Interface, version: Version) -> Result<VrrpSocket, NetError> {
        let proto = Some(Protocol::from(i32::from(PROTO_VRRP)));
        let s = match iface.address {
            IpAddr::V4(addr) => {
                let s = Socket::new(Domain::IPV4, Type::RAW, proto).map_err(io_err("open raw VRRP socket"))?;
                s.join_multicast_v4_n(&GROUP, &InterfaceIndexOrAddress::Index(iface.index))
                    .map_err(io_err("join 224.0.0.18"))?;
                s.set_multicast_if_v4(&addr).map_err(io_err("IP_MULTICAST_IF"))?;
                s.set_multicast_ttl_v4(255).map_err(io_err("IP_MULTICAST_TTL"))?;
                s.set_ttl_v4(255).map_err(io_err("IP_TTL"))?;
                s.set_multicast_loop_v4(false).map_err(io_err("IP_MULTICAST_LOOP"))?;
                let _ = s.set_tos_v4(0xc0);
                s
            }
            IpAddr::V6(_) => {
                let s = Socket::new(Domain::IPV6, Type::RAW, proto).map_err(io_err("open raw VRRPv6 socket"))?;
                s.join_multicast_v6(&GROUP6, iface.index)
                    .map_err(io_err("join ff02::12"))?;
                s.set_multicast_if_v6(iface.index)
                    .map_err(io_err("IPV6_MULTICAST_IF"))?;
                s.set_multicast_hops_v6(255).map_err(io_err("IPV6_MULTICAST_HOPS"))?;
                s.set_unicast_hops_v6(255).map_err(io_err("IPV6_UNICAST_HOPS"))?;
                s.set_multicast_loop_v6(false).map_err(io_err("IPV6_MULTICAST_LOOP"))?;
                let _ = s.set_tclass_v6(0xc0);
                for opt in [libc::IPV6_RECVHOPLIMIT, libc::IPV6_RECVPKTINFO] {
                    let on: libc::c_int = 1;
                    // SAFETY: setsockopt with an int option on a valid socket.
                    let r = unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::IPPROTO_IPV6,
                            opt,
                            (&on as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as u32,
                        )
                    };
                    if r != 0 {
                        return Err(NetError::Io {
                            what: "IPV6_RECVHOPLIMIT / IPV6_RECVPKTINFO",
                            source: io::Error::last_os_error(),
                        });
                    }
                }
                s
            }
        };
        s.bind_device(Some(iface.name.as_bytes()))
            .map_err(io_err("SO_BINDTODEVICE"))?;
        s.set_nonblocking(true).map_err(io_err("nonblocking"))?;
        // The socket is owned by the AsyncFd for its whole life.
        #[allow(deprecated)]
        Ok(VrrpSocket {
            sock: tokio::io::unix::AsyncFd::new(s).map_err(io_err("register VRRP socket"))?,
            src: iface.address,
            index: iface.index,
            version,
        })
    }

    /// Sends an advertisement to the group (or a unicast peer).
    pub async fn send(&self, a: &Advert, dst: IpAddr) -> io::Result<()> {
        let msg = a.encode_as(self.version, self.src, dst);
        let to = match dst {
            IpAddr::V4(d) => SockAddr::from(std::net::SocketAddrV4::new(d, 0)),
            IpAddr::V6(d) => SockAddr::from(std::net::SocketAddrV6::new(d, 0, 0, self.index)),
        };
        loop {
            let mut g = self.sock.writable().await?;
            match g.try_io(|s| s.get_ref().send_to(&msg, &to)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one advert: its source, its destination and the advert, or why it was
    /// dropped. IPv4 packets carry their header (TTL, protocol); IPv6 ones have the hop
    /// limit and the destination in ancillary data.
    pub async fn recv_advert(&self, buf: &mut [u8]) -> io::Result<Result<Received, AdvertError>> {
        loop {
            let mut g = self.sock.readable().await?;
            let r = g.try_io(|s| match self.src {
                IpAddr::V4(_) => recv_v4(s.as_raw_fd(), buf, self.version),
                IpAddr::V6(_) => recv_v6(s.as_raw_fd(), buf),
            });
            match r {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// An advert as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Source address (the sender's primary address on the link).
    pub src: IpAddr,
    /// Destination: the VRRP group, or this node's address for a unicast advert.
    pub dst: IpAddr,
    /// The advert.
    pub advert: Advert,
}

fn recv_v4(fd: i32, buf: &mut [u8], version: Version) -> io::Result<Result<Received, AdvertError>> {
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(
        Advert::decode_ip_as(&buf[..n as usize], version).map(|(src, dst, advert)| Received {
            src: src.into(),
            dst: dst.into(),
            advert,
        }),
    )
}

fn recv_v6(fd: i32, buf: &mut [u8]) -> io::Result<Result<Received, AdvertError>> {
    // SAFETY: zeroed C structs, filled in by recvmsg within the lengths given.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut hop_limit, mut dst) = (0u8, None);
    // SAFETY: walking the control messages recvmsg wrote, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    hop_limit = std::ptr::read_unaligned(data.cast::<libc::c_int>()) as u8;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
    let Some(dst) = dst else {
        return Ok(Err(AdvertError::Truncated));
    };
    Ok(
        Advert::decode_v6(&buf[..n as usize], src, dst, hop_limit).map(|advert| Received {
            src: src.into(),
            dst: dst.into(),
            advert,
        }),
    )
}

/// Announces VIPs from one interface: gratuitous ARPs (IPv4) or unsolicited neighbour
/// advertisements with the override flag (IPv6). Its socket is opened once: closing an
/// AF_PACKET socket waits for an RCU grace period in the kernel (≈ 12 ms here, more
/// under load), and a takeover's burst of five would block the router's thread — its
/// adverts and its lease's fence — for tens of milliseconds.
pub struct Announcer {
    sock: Socket,
    iface: Interface,
}

impl Announcer {
    /// Opens the socket for `iface`'s address family.
    pub fn open(iface: &Interface) -> Result<Announcer, NetError> {
        let sock = match iface.address {
            // Protocol 0: the socket sends, and receives nothing.
            IpAddr::V4(_) => Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
                .map_err(io_err("open AF_PACKET socket"))?,
            IpAddr::V6(_) => {
                let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(io_err("open ICMPv6 socket"))?;
                // Nothing is read from it: let no ICMPv6 message be queued to it.
                const ICMP6_FILTER: libc::c_int = 1;
                let block_all = [u32::MAX; 8];
                // SAFETY: a 32-byte icmp6_filter, valid for its length.
                let rc = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::IPPROTO_ICMPV6,
                        ICMP6_FILTER,
                        block_all.as_ptr().cast(),
                        std::mem::size_of_val(&block_all) as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io_err("ICMP6_FILTER")(io::Error::last_os_error()));
                }
                s.set_multicast_if_v6(iface.index)
                    .map_err(io_err("IPV6_MULTICAST_IF"))?;
                s.set_multicast_hops_v6(255).map_err(io_err("IPV6_MULTICAST_HOPS"))?;
                s
            }
        };
        // Sends only; a full buffer drops the announcement rather than blocking.
        sock.set_nonblocking(true).map_err(io_err("O_NONBLOCK"))?;
        Ok(Announcer {
            sock,
            iface: iface.clone(),
        })
    }

    /// Announces `vip` once.
    pub fn announce(&self, vip: IpAddr) -> Result<(), NetError> {
        match vip {
            IpAddr::V4(v) => self.send_garp(v),
            IpAddr::V6(v) => self.send_unsolicited_na(v),
        }
    }

    /// One unsolicited neighbour advertisement for `vip` to all nodes (ff02::1), with
    /// the override flag and our MAC, hop limit 255: neighbours that cached the old
    /// holder's MAC replace it. The kernel fills the ICMPv6 checksum.
    fn send_unsolicited_na(&self, vip: Ipv6Addr) -> Result<(), NetError> {
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&[136, 0, 0, 0]); // neighbour advertisement, checksum by the kernel
        m.extend_from_slice(&[0x20, 0, 0, 0]); // override
        m.extend_from_slice(&vip.octets());
        m.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
        m.extend_from_slice(&self.iface.mac);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let to = SockAddr::from(std::net::SocketAddrV6::new(all_nodes, 0, 0, self.iface.index));
        self.sock
            .send_to(&m, &to)
            .map_err(io_err("send unsolicited neighbour advertisement"))?;
        Ok(())
    }

    /// One gratuitous ARP request for `vip` (sender = target = VIP, broadcast), as
    /// keepalived sends; clients holding an entry for the VIP update it.
    fn send_garp(&self, vip: Ipv4Addr) -> Result<(), NetError> {
        const ETH_P_ARP: u16 = 0x0806;
        let iface = &self.iface;
        let mut frame = Vec::with_capacity(42);
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&iface.mac);
        frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        frame.extend_from_slice(&iface.mac);
        frame.extend_from_slice(&vip.octets());
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&vip.octets());
        // SAFETY: a zeroed sockaddr_ll filled with the interface, protocol and broadcast MAC.
        let addr = unsafe {
            SockAddr::try_init(|storage, len| {
                let ll = storage.cast::<libc::sockaddr_ll>();
                (*ll).sll_family = libc::AF_PACKET as u16;
                (*ll).sll_protocol = ETH_P_ARP.to_be();
                (*ll).sll_ifindex = iface.index as i32;
                (*ll).sll_halen = 6;
                (&mut (*ll).sll_addr)[..6].copy_from_slice(&[0xff; 6]);
                *len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                Ok(())
            })
        }
        .map_err(io_err("sockaddr_ll"))?
        .1;
        self.sock
            .send_to(&frame, &addr)
            .map_err(io_err("send gratuitous ARP"))?;
        Ok(())
    }
}
