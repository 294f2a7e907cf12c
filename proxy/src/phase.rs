//! The node's lifecycle as one value: every part that acts on maintenance or a stop
//! (the request path, idle keep-alive connections, the listeners' SYN gate, `/ready`,
//! status) reads the same [`NodePhase`] from one watch channel, instead of each reading
//! its own flag. See LIFECYCLE.md beside this file.
//!
//! ```text
//! Serving ──maintenance on, VIPs or anycast──▶ HandingOver{epoch} ──maintenance_handover──▶ Maintenance
//! Serving ──maintenance on, neither─────────▶ Maintenance
//! HandingOver / Maintenance ──maintenance off──▶ Serving
//! any ──stop──▶ (HandingOver, if serving a VIP or announcing) ──▶ Maintenance ──VIPs released, routes withdrawn──▶ Draining
//! ```

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePhase {
    /// Accepting and answering normally.
    Serving,
    /// A VIP holder is handing over (maintenance on, or a stop): clients are asked to
    /// close their connections, so their next ones go wherever the VIPs go, while this
    /// node still holds the VIPs. `epoch` tells one handover from the next, so the
    /// timer of a handover that was called off never ends a later one.
    HandingOver {
        /// Which handover.
        epoch: u64,
    },
    /// Maintenance: clients are asked to close; the SYN gate is closed and the VIPs are
    /// released (or there are none). The listeners still accept other traffic.
    Maintenance,
    /// A graceful stop: listeners closed, in-flight requests finish.
    Draining,
}

impl NodePhase {
    /// Responses carry `Connection: close` (h2: GOAWAY) and idle keep-alive connections
    /// close.
    pub fn asks_clients_to_close(self) -> bool {
        self != NodePhase::Serving
    }

    /// Listeners drop new connections to a VIP unanswered (see [`crate::syn_gate`]), so
    /// their SYNs are sent again to the VIP's next holder.
    pub fn closes_syn_gate(self) -> bool {
        matches!(self, NodePhase::Maintenance | NodePhase::Draining)
    }

    /// In maintenance (handing over or done) as `tandem ctl maintenance` set it.
    pub fn in_maintenance(self) -> bool {
        matches!(self, NodePhase::HandingOver { .. } | NodePhase::Maintenance)
    }

    /// One word for status, ctl and the status page.
    pub fn name(self) -> &'static str {
        match self {
            NodePhase::Serving => "serving",
            NodePhase::HandingOver { .. } => "handover",
            NodePhase::Maintenance => "maintenance",
            NodePhase::Draining => "draining",
        }
    }
}

/// The phase, published: a watch channel for the tasks that wait on a change, and the
/// same answer to "asks clients to close?" as an atomic for the request path (no lock).
#[derive(Debug)]
pub struct Phase {
    tx: tokio::sync::watch::Sender<NodePhase>,
    closing: AtomicU8,
    /// The last handover's number.
    epochs: AtomicU64,
}

impl Default for Phase {
    fn default() -> Self {
        Phase {
            tx: tokio::sync::watch::channel(NodePhase::Serving).0,
            closing: AtomicU8::new(0),
            epochs: AtomicU64::new(0),
        }
    }
}

impl Phase {
    /// The phase now.
    pub fn get(&self) -> NodePhase {
        *self.tx.borrow()
    }

    /// A receiver woken at every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<NodePhase> {
        self.tx.subscribe()
    }

    /// Begins a handover if the node is serving: its number (a called-off handover's
    /// timer never ends a later one), or `None` when the node was not serving.
    pub fn begin_handover(&self) -> Option<u64> {
        let epoch = self.epochs.fetch_add(1, Relaxed) + 1;
        let before = self.step(|p| (p == NodePhase::Serving).then_some(NodePhase::HandingOver { epoch }));
        (before == NodePhase::Serving).then_some(epoch)
    }

    /// For the request path: whether responses should ask clients to close.
    pub fn asks_clients_to_close(&self) -> bool {
        self.closing.load(Relaxed) != 0
    }

    /// Moves to whatever `step` returns for the current phase (`None`: stay); the
    /// phase before. One step at a time, so two callers never both see the same "before".
    pub fn step(&self, step: impl FnOnce(NodePhase) -> Option<NodePhase>) -> NodePhase {
        let mut before = NodePhase::Serving;
        self.tx.send_if_modified(|p| {
            before = *p;
            match step(*p) {
                Some(next) if next != *p => {
                    *p = next;
                    self.closing.store(u8::from(next.asks_clients_to_close()), Relaxed);
                    true
                }
                _ => false,
            }
        });
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_called_off_handover_cannot_end_a_later_one() {
        let p = Phase::default();
        assert!(!p.asks_clients_to_close());
        // On (epoch 1), off, on again (epoch 2) within the first handover's window.
        assert_eq!(p.begin_handover(), Some(1));
        assert!(p.asks_clients_to_close() && !p.get().closes_syn_gate());
        assert_eq!(p.begin_handover(), None, "a handover is on already");
        p.step(|_| Some(NodePhase::Serving));
        assert_eq!(p.begin_handover(), Some(3));
        // The first handover's timer ends: it only ends its own epoch.
        let end = |epoch| move |now| (now == NodePhase::HandingOver { epoch }).then_some(NodePhase::Maintenance);
        p.step(end(1));
        assert_eq!(p.get(), NodePhase::HandingOver { epoch: 3 });
        p.step(end(3));
        assert_eq!(p.get(), NodePhase::Maintenance);
        assert!(p.get().closes_syn_gate() && p.get().in_maintenance());
        // A stop is final: maintenance off does not bring it back.
        p.step(|_| Some(NodePhase::Draining));
        p.step(|now| (now != NodePhase::Draining).then_some(NodePhase::Serving));
        assert_eq!(p.get().name(), "draining");
        assert!(p.asks_clients_to_close());
    }
}
