//! The `[ha]` section: the group's members, peer TLS and timers.

use std::time::Duration;

use super::checker::*;
use crate::config::model::{self};
use crate::config::*;

impl Checker<'_> {
    pub(super) fn ha(&mut self, h: &model::HaSection, base: &std::path::Path) -> Option<HaConfigSection> {
        let mut peers = Vec::new();
        for (i, p) in h.peers.iter().enumerate() {
            if let Some(a) = self.addr(&p.address, format!("ha.peers[{i}].address")) {
                if peers.iter().any(|q: &tandem_ha::Peer| q.id == p.id) {
                    self.at(
                        &p.address,
                        format!("ha.peers[{i}].id"),
                        format!("peer id {} is used twice", p.id),
                        Some("give every member its own id, and never reuse one".into()),
                    );
                }
                peers.push(tandem_ha::Peer { id: p.id, address: a });
            }
        }
        if !h.peers.iter().any(|p| p.id == h.node_id) {
            self.at(
                &h.data_dir,
                "ha.node_id".into(),
                format!("node_id {} is not among ha.peers", h.node_id),
                Some("list this node in peers = [{ id = …, address = \"IP:port\" }]".into()),
            );
        }
        if h.peers.len() == 2 {
            self.warn(
                &h.data_dir,
                "ha.peers".into(),
                "a two-member group stops committing when either member is down".into(),
                Some("add a witness: { id = 3, address = \"…\", witness = true } run with `tandem witness`".into()),
            );
        }
        let sync = self.dur(&h.sync_interval, "ha.sync_interval".into());
        let mut tls = tandem_ha::PeerTls::new(
            self.file(base, &h.tls.ca, "ha.tls.ca".into(), crate::config::access::Access::Read),
            self.file(
                base,
                &h.tls.cert,
                "ha.tls.cert".into(),
                crate::config::access::Access::Read,
            ),
            self.file(
                base,
                &h.tls.key,
                "ha.tls.key".into(),
                crate::config::access::Access::Read,
            ),
        );
        tls.verify_node_id = h.tls.verify_node_id;
        if let Some(n) = &h.tls.peer_name {
            if rustls_pki_types::ServerName::try_from(n.get_ref().as_str())
                .is_ok_and(|s| matches!(s, rustls_pki_types::ServerName::DnsName(_)))
            {
                tls.name = n.get_ref().clone();
            } else {
                self.at(
                    n,
                    "ha.tls.peer_name".into(),
                    format!("`{}` is not a DNS name", n.get_ref()),
                    Some("use a DNS name such as \"tandem-peer\" (it must be in every member's certificate)".into()),
                );
            }
        }
        for (what, p, s) in [
            ("ca", &tls.ca, &h.tls.ca),
            ("cert", &tls.cert, &h.tls.cert),
            ("key", &tls.key, &h.tls.key),
        ] {
            if let Err(e) = std::fs::metadata(p) {
                self.at(
                    s,
                    format!("ha.tls.{what}"),
                    format!("cannot read {}: {e}", p.display()),
                    Some("`tandem ctl cluster certs` makes a lab CA and node certificates".into()),
                );
            }
        }
        let heartbeat = self.dur(&h.heartbeat, "ha.heartbeat".into());
        let election = self.dur(&h.election_timeout, "ha.election_timeout".into());
        if election < heartbeat * 3 || heartbeat.is_zero() {
            let span = h
                .election_timeout
                .0
                .as_ref()
                .or(h.heartbeat.0.as_ref())
                .unwrap_or(&h.data_dir);
            self.at(
                span,
                "ha.election_timeout".into(),
                format!("election timeout {election:?} is under three heartbeats ({heartbeat:?})"),
                Some("keep election_timeout at least 3 × heartbeat (defaults \"150ms\" and \"50ms\")".into()),
            );
        }
        let mut group = tandem_ha::HaConfig::new(
            h.node_id,
            peers,
            self.file(
                base,
                &h.data_dir,
                "ha.data_dir".into(),
                crate::config::access::Access::Directory,
            ),
            tls,
        );
        if !sync.is_zero() {
            group.sync_interval = sync;
        }
        group.heartbeat = heartbeat.max(Duration::from_millis(1));
        group.election_timeout = election.max(Duration::from_millis(3));
        // The witness leads by preference: a VIP holder's death then needs no election
        // before its lease can move.
        group.preferred_leader = h.peers.iter().find(|p| p.witness).map(|p| p.id);
        group.snapshot_every = h.snapshot_every.max(10);
        Some(HaConfigSection {
            group,
            witnesses: h.peers.iter().filter(|p| p.witness).map(|p| p.id).collect(),
            adopt_peer_recovery: h.adopt_peer_recovery,
        })
    }
}
