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
