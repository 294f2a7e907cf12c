//! Integration tests: the real `tandem` binary, real sockets, real backends. One test
//! binary (modules below) so it links once.

mod common;
mod pair;
mod pki;
mod protocols;

mod admin;
mod balancing;
mod cli;
mod demo;
mod errors;
mod fuzz;
mod health;
mod in_process;
mod l4;
mod layout;
mod lifecycle;
mod limits;
mod packaging;
mod resilience;
mod routing;
mod security;
mod sessions;
mod tls;
mod upstream_h1;
mod wasm;
mod wasm_grpc;
