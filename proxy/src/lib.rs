//! Tandem's data plane: an L7 load-balancing proxy built as share-nothing workers over
//! a compiled, atomically swapped runtime. See `DESIGN.md` for the architecture; the
//! binary `tandem` (src/main.rs) is a thin CLI over this library.

#![warn(missing_docs)]
#![warn(unreachable_pub)]
// `/status` is one `json!` literal with many keys.
#![recursion_limit = "256"]

pub(crate) mod access_log;
pub mod allocator;
pub(crate) mod balancer;
pub(crate) mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod demo_pair;
pub(crate) mod epoch_ticker;
pub(crate) mod error;
pub(crate) mod exec;
pub(crate) mod exposition;
pub mod fuzzing;
pub(crate) mod health;
pub(crate) mod health_thread;
pub(crate) mod http;
pub(crate) mod inplace;
pub(crate) mod l4;
pub(crate) mod listen;
pub mod pair;
pub(crate) mod phase;
pub mod proxy_protocol;
pub(crate) mod ratelimit;
pub(crate) mod runtime;
pub(crate) mod send_batch;
pub mod server;
pub mod shared;
pub(crate) mod stats;
pub(crate) mod sticky;
pub(crate) mod syn_gate;
pub mod tls;
pub(crate) mod upstream;
pub mod wasm;
pub mod wasm_engine;
pub(crate) mod worker;
