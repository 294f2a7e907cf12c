//! The node's lifecycle moves that involve its VIPs: maintenance on and off, and the
//! handover before a stop. The phase they move is in [`crate::phase`] (see
//! LIFECYCLE.md); the process state they act on in [`crate::control::Shared`].

use std::sync::Arc;
use std::time::Duration;

use crate::control::Shared;
use crate::phase::NodePhase;

/// Maintenance on: clients are asked to close their connections (so their next ones
/// go wherever the VIP is) while this node still holds its VIPs; after `handover`
/// the SYN gate closes and the VIPs are released with priority 0, and the peer takes
/// over. In-flight requests finish. Off: the gate opens, keep-alive is normal again
/// and the VIPs rejoin the election. Neither changes a node that is stopping.
pub fn set_maintenance(shared: &Arc<Shared>, on: bool, handover: Duration) {
    let vips = crate::vips::get();
    if !on {
        let before = shared.phase.step(|p| p.in_maintenance().then_some(NodePhase::Serving));
        if before.in_maintenance() {
            if let Some(v) = vips {
                v.set_maintenance(false);
            }
        }
        return;
    }
    let Some(v) = vips else {
        shared
            .phase
            .step(|p| (p == NodePhase::Serving).then_some(NodePhase::Maintenance));
        tracing::info!("maintenance: closing client connections (no VIPs configured)");
        return;
    };
    let Some(epoch) = shared.phase.begin_handover() else {
        return;
    };
    tracing::info!(
        ?handover,
        "maintenance: closing client connections, then releasing VIPs"
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(handover).await;
        // Only this handover ends here: called off (and perhaps begun again) meanwhile,
        // it is not this timer's to end.
        let ended = |p| (p == NodePhase::HandingOver { epoch }).then_some(NodePhase::Maintenance);
        if shared.phase.step(ended) == (NodePhase::HandingOver { epoch }) {
            v.set_maintenance(true);
        }
    });
}

/// A stop at a VIP holder: clients are asked to close their connections for
/// `handover` (their next ones still reach this node, one request each), then the SYN
/// gate closes and the VIPs are released with priority 0 (the peer takes over at
/// once). The drain follows ([`Shared::begin_drain`]).
pub async fn hand_over_for_stop(shared: &Shared, handover: Duration) {
    let Some(v) = crate::vips::get() else { return };
    if v.holds_any() && shared.phase.begin_handover().is_some() {
        tracing::info!(?handover, "stopping: closing client connections, then releasing VIPs");
        tokio::time::sleep(handover).await;
    }
    shared
        .phase
        .step(|p| (p != NodePhase::Draining).then_some(NodePhase::Maintenance));
    v.stop(Duration::from_secs(1));
}
