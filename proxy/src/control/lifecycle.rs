//! The node's lifecycle moves that involve the addresses it can stop receiving (its
//! VIPs and its anycast routes): maintenance on and off, and the handover before a
//! stop. The phase they move is in [`crate::phase`] (see LIFECYCLE.md); the process
//! state they act on in [`crate::shared::Shared`].

use std::time::Duration;

use crate::control::Node;
use crate::phase::NodePhase;

/// Maintenance on: clients are asked to close their connections (so their next ones
/// go wherever the VIP is, or to another node of the anycast tier) while this node
/// still holds its VIPs and announces its routes; after `handover` the SYN gate closes,
/// the VIPs are released with priority 0 (the peer takes over) and the anycast routes
/// are withdrawn. In-flight requests finish. Off: the gate opens, keep-alive is normal
/// again, the VIPs rejoin the election and the routes are announced while healthy.
/// Neither changes a node that is stopping.
pub fn set_maintenance(node: &Node, on: bool, handover: Duration) {
    let (shared, vips, anycast) = (&node.shared, node.vips.clone(), node.anycast.clone());
    if !on {
        let before = shared.phase.step(|p| p.in_maintenance().then_some(NodePhase::Serving));
        if before.in_maintenance() {
            if let Some(v) = &vips {
                v.set_maintenance(false);
            }
            if let Some(a) = &anycast {
                a.set_maintenance(false);
            }
        }
        return;
    }
    if vips.is_none() && anycast.is_none() {
        shared
            .phase
            .step(|p| (p == NodePhase::Serving).then_some(NodePhase::Maintenance));
        tracing::info!("maintenance: closing client connections (no VIPs or anycast routes configured)");
        return;
    }
    let Some(epoch) = shared.phase.begin_handover() else {
        return;
    };
    tracing::info!(
        ?handover,
        "maintenance: closing client connections, then releasing VIPs and withdrawing routes"
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(handover).await;
        // Only this handover ends here: called off (and perhaps begun again) meanwhile,
        // it is not this timer's to end.
        let ended = |p| (p == NodePhase::HandingOver { epoch }).then_some(NodePhase::Maintenance);
        if shared.phase.step(ended) == (NodePhase::HandingOver { epoch }) {
            if let Some(v) = vips {
                v.set_maintenance(true);
            }
            if let Some(a) = anycast {
                a.set_maintenance(true);
            }
        }
    });
}

/// A stop at a VIP holder or an announcing anycast node: clients are asked to close
/// their connections for `handover` (their next ones still reach this node, one request
/// each), then the SYN gate closes, the VIPs are released with priority 0 (the peer
/// takes over at once) and the routes are withdrawn. The drain follows
/// ([`Shared::begin_drain`]).
pub async fn hand_over_for_stop(node: &Node, handover: Duration) {
    let (shared, vips, anycast) = (&node.shared, node.vips.as_deref(), node.anycast.as_deref());
    if vips.is_none() && anycast.is_none() {
        return;
    }
    let serving_any = vips.is_some_and(|v| v.holds_any()) || anycast.is_some_and(|a| a.announces_any());
    if serving_any && shared.phase.begin_handover().is_some() {
        tracing::info!(
            ?handover,
            "stopping: closing client connections, then releasing VIPs and withdrawing routes"
        );
        tokio::time::sleep(handover).await;
    }
    shared
        .phase
        .step(|p| (p != NodePhase::Draining).then_some(NodePhase::Maintenance));
    if let Some(v) = vips {
        v.stop(Duration::from_secs(1));
    }
    if let Some(a) = anycast {
        a.stop(Duration::from_secs(2));
    }
}
