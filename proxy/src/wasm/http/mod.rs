//! A request's filter chain: one stream context per filter of its route, driven stage by
//! stage from the request path — request headers (forward order), request body and
//! trailers (a body wrapper), response headers (reverse order), response body and
//! trailers (a body wrapper), then `on_log`/`on_delete` when the chain is dropped.
//! A paused stream waits for `proxy_continue_stream` (or a local response) from a later
//! callback; a failed guest applies its filter's policy.
//!
//! `chain.rs` holds the chain and its per-filter entries, `headers.rs` the header
//! phases, `body.rs` the body wrapper.

mod body;
mod chain;
mod headers;

pub use body::{FilterBodyError, FilteredBody};
pub use chain::{Chain, ChainRef, Flow, Upstream};
pub use headers::{
    local_response, request_headers_after, request_headers_now, response_headers_after, response_headers_now, Step,
};

/// Boxed error of filtered bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
