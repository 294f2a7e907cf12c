//! The control plane of one node: what operators and their tools talk to, and the
//! moves they make. Nothing here is on the request path.
//!
//! - [`admin`]: the admin API (health, readiness, metrics, status, reload, drain, maintenance);
//! - [`ctl`], [`ctl_view`]: `tandem ctl`, its client and how it shows answers;
//! - [`check`]: `tandem check`;
//! - [`reload`]: a new configuration, compiled and swapped in;
//! - [`lifecycle`]: maintenance and the handover before a stop;
//! - [`metrics`], [`process_metrics`]: the Prometheus exposition (written through `exposition.rs`).

pub mod admin;
pub mod check;
pub mod ctl;
pub mod ctl_view;
pub mod lifecycle;
pub mod metrics;
pub mod process_metrics;
pub mod reload;

use std::sync::Arc;

use crate::cluster::anycast::Anycast;
use crate::cluster::vips::Vips;
use crate::shared::Shared;

/// One node as its control plane acts on it: the state its workers share, and what it
/// announces (its VIPs, its anycast routes) when configured. `server::Server::start` builds it
/// in that order (the announcers need the listeners up); no process global holds any
/// of it, so a process can run more than one.
#[derive(Clone)]
pub struct Node {
    /// The state the workers, the health thread and the admin API share.
    pub shared: Arc<Shared>,
    /// The virtual routers, when VIPs are configured.
    pub vips: Option<Arc<Vips>>,
    /// The anycast groups, when configured.
    pub anycast: Option<Arc<Anycast>>,
    /// The status page's recent per-route totals, for its rates (see `admin.rs`).
    pub rate_samples: Arc<std::sync::Mutex<std::collections::VecDeque<RateSample>>>,
}

/// When, for which runtime generation, and each route's (requests, 5xx) totals then.
pub type RateSample = (std::time::Instant, u64, Vec<(u64, u64)>);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("shared", &self.shared)
            .field("vips", &self.vips.as_ref().map(|v| v.routers.len()))
            .field("anycast", &self.anycast.is_some())
            .finish()
    }
}
