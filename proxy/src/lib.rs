//! Tandem's data plane: an L7 load-balancing proxy built as share-nothing workers over
//! a compiled, atomically swapped runtime. See `DESIGN.md` for the architecture; the
//! binary `tandem` (src/main.rs) is a thin CLI over this library.

#![warn(missing_docs)]
// `/status` is one `json!` literal with many keys.
#![recursion_limit = "256"]

pub mod access_log;
pub mod balancer;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod demo_pair;
pub mod error;
pub mod exec;
pub mod exposition;
pub mod fuzzing;
pub mod health;
pub mod health_thread;
pub mod http;
pub mod inplace;
pub mod l4;
pub mod listen;
pub mod pair;
pub mod phase;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod runtime;
pub mod send_batch;
pub mod server;
pub mod shared;
pub mod stats;
pub mod sticky;
pub mod syn_gate;
pub mod tls;
pub mod upstream;
pub mod wasm;
pub mod wasm_engine;
pub mod worker;
