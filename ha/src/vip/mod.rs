//! Floating VIPs with a VRRPv3-compatible election (RFC 5798): the wire format
//! ([`packet`]) and the Initialize/Backup/Master state machine ([`machine`]). Sockets,
//! netlink address changes and gratuitous ARP come with the VIP issue; these two parts
//! are pure and tested against keepalived's bytes.

pub mod fence;
pub mod machine;
pub mod net;
pub mod packet;
pub mod router;
pub mod sync_group;
pub mod vmac;
