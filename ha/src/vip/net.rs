//! The kernel side of holding a VIP: interface lookups, adding and removing addresses
//! through rtnetlink (with a lifetime the holder keeps refreshing, so the VIP of a
//! killed process expires by itself), the raw VRRP socket (protocol 112, multicast
//! joined by interface index, TTL 255), and gratuitous ARP over AF_PACKET.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use super::packet::{Advert, GROUP, PROTO_VRRP};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No such interface.
    #[error("no interface `{0}`")]
    NoInterface(String),
    /// The interface has no IPv4 address to advertise from.
    #[error("interface `{0}` has no IPv4 address")]
    NoAddress(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// OS error.
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io { what, source }
}

/// An interface: name, index, MAC and first IPv4 address.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Kernel index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// Primary IPv4 address (advert source, tie-break).
    pub address: Ipv4Addr,
}

impl Interface {
    /// Looks `name` up (index, MAC, first IPv4 address that is not one of `exclude`).
    pub fn lookup(name: &str, exclude: &[Ipv4Addr]) -> Result<Interface, NetError> {
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
        let address = ipv4_of(name, exclude).ok_or_else(|| NetError::NoAddress(name.into()))?;
        Ok(Interface {
            name: name.into(),
            index,
            mac,
            address,
        })
    }
}

/// The IPv4 addresses configured on interface `name`, in kernel order.
fn ipv4_addrs(name: &str) -> Vec<Ipv4Addr> {
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
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        if n.to_bytes() != name.as_bytes() || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so it is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: frees the list from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// The first IPv4 address of interface `name` not in `exclude`.
fn ipv4_of(name: &str, exclude: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    ipv4_addrs(name).into_iter().find(|a| !exclude.contains(a))
}

/// Whether `addr` is configured on interface `name`.
pub fn has_address(name: &str, addr: Ipv4Addr) -> bool {
    ipv4_addrs(name).contains(&addr)
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const NLMSG_ERROR: u16 = 2;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One rtnetlink request, waiting for its acknowledgement.
fn rtnetlink(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
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

fn ifaddrmsg(index: u32, prefix: u8) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    b
}

/// Adds (or refreshes) `addr/prefix` on interface `index`, valid for `lifetime`
/// (`None`: forever). Refreshing before it runs out keeps it; a holder that dies
/// stops refreshing and the kernel removes it.
pub fn add_address(index: u32, addr: Ipv4Addr, prefix: u8, lifetime: Option<Duration>) -> Result<(), NetError> {
    let mut body = ifaddrmsg(index, prefix);
    attr(&mut body, IFA_LOCAL, &addr.octets());
    attr(&mut body, IFA_ADDRESS, &addr.octets());
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
pub fn remove_address(index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    let mut body = ifaddrmsg(index, prefix);
    attr(&mut body, IFA_LOCAL, &addr.octets());
    attr(&mut body, IFA_ADDRESS, &addr.octets());
    match rtnetlink(RTM_DELADDR, 0, &body) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) || e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map_err(io_err("remove VIP address")),
    }
}

/// The raw VRRP socket of one interface.
pub struct VrrpSocket {
    sock: tokio::io::unix::AsyncFd<Socket>,
    src: Ipv4Addr,
}

impl VrrpSocket {
    /// Opens protocol 112, joins 224.0.0.18 on `iface` by index, sends from its address
    /// with TTL 255 and DSCP CS6. Not bound (a bound raw socket misses the group).
    pub fn open(iface: &Interface) -> Result<VrrpSocket, NetError> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(PROTO_VRRP))))
            .map_err(io_err("open raw VRRP socket"))?;
        s.join_multicast_v4_n(&GROUP, &InterfaceIndexOrAddress::Index(iface.index))
            .map_err(io_err("join 224.0.0.18"))?;
        s.set_multicast_if_v4(&iface.address)
            .map_err(io_err("IP_MULTICAST_IF"))?;
        s.set_multicast_ttl_v4(255).map_err(io_err("IP_MULTICAST_TTL"))?;
        s.set_ttl_v4(255).map_err(io_err("IP_TTL"))?;
        s.set_multicast_loop_v4(false).map_err(io_err("IP_MULTICAST_LOOP"))?;
        let _ = s.set_tos_v4(0xc0);
        s.bind_device(Some(iface.name.as_bytes()))
            .map_err(io_err("SO_BINDTODEVICE"))?;
        s.set_nonblocking(true).map_err(io_err("nonblocking"))?;
        // The socket is owned by the AsyncFd for its whole life.
        #[allow(deprecated)]
        Ok(VrrpSocket {
            sock: tokio::io::unix::AsyncFd::new(s).map_err(io_err("register VRRP socket"))?,
            src: iface.address,
        })
    }

    /// Sends an advertisement to the group (or a unicast peer).
    pub async fn send(&self, a: &Advert, dst: Ipv4Addr) -> io::Result<()> {
        let msg = a.encode(self.src, dst);
        let to = SockAddr::from(std::net::SocketAddrV4::new(dst, 0));
        loop {
            let mut g = self.sock.writable().await?;
            match g.try_io(|s| s.get_ref().send_to(&msg, &to)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one IPv4 packet (header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.sock.readable().await?;
            let r = g.try_io(|s| {
                // SAFETY: recv writes at most buf.len() bytes into buf.
                let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Sends one gratuitous ARP request for `vip` from `iface` (sender = target = VIP,
/// broadcast), as keepalived does; clients holding an entry for the VIP update it.
pub fn send_garp(iface: &Interface, vip: Ipv4Addr) -> Result<(), NetError> {
    const ETH_P_ARP: u16 = 0x0806;
    let s = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
    )
    .map_err(io_err("open AF_PACKET socket"))?;
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
    s.send_to(&frame, &addr).map_err(io_err("send gratuitous ARP"))?;
    Ok(())
}
