//! What makes one node part of a highly available set: floating VIPs (VRRP) with their
//! trackers, anycast routes announced through the node's BGP speaker, and the crash
//! guard that takes both away when the process dies. Each runs on a thread of its own,
//! never on a worker.

pub mod anycast;
pub mod guard;
pub mod vip_trackers;
pub mod vips;
