//! Tandem's data plane: an L7 load-balancing proxy built as share-nothing workers over
//! a compiled, atomically swapped runtime. See `DESIGN.md` for the architecture; the
//! binary `tandem` (src/main.rs) is a thin CLI over this library.

#![warn(missing_docs)]
// `/status` is one `json!` literal with many keys.
#![recursion_limit = "256"]

pub mod access_log;
pub mod admin;
pub mod anycast;
pub mod balancer;
pub mod body;
pub mod check;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod ctl_view;
pub mod demo;
pub mod demo_pair;
pub mod downstream;
pub mod error;
pub mod exec;
pub mod exposition;
pub mod fuzzing;
pub mod guard;
pub mod headers;
pub mod health;
pub mod inplace;
pub mod l4;
pub mod lifecycle;
pub mod metrics;
pub mod pair;
pub mod phase;
pub mod process_metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod runtime;
pub mod send_batch;
pub mod server;
pub mod sni;
pub mod stats;
pub mod sticky;
pub mod syn_gate;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod vip_trackers;
pub mod vips;
pub mod wasm;
pub mod worker;
