//! The L7 request path, one file per stage:
//!
//! 1. [`request`]: bookkeeping (request id, counters, access log record, the end of the
//!    request however it ends), the request's one authority, and the stage sequence;
//! 2. [`route`]: listener router → route (then the route's weighted cluster split);
//! 3. [`admission`]: rate limit, the cluster's in-flight breaker;
//! 4. [`filters`]: the route's proxy-wasm filters (request and response headers);
//! 5. [`retry`]: the attempts — endpoint pick (sticky, balancer), retry policy and
//!    budget, per-try and route timeouts, request body streamed or buffered;
//! 6. [`forward`]: one attempt on the wire (upstream request, pooled connection,
//!    breakers);
//! 7. [`respond`]: the downstream response, what it teaches the balancer, local errors.
//!
//! Around them: [`context`] (what every stage reads), [`conn`] (the connection's facts), [`serve`] (one HTTP connection:
//! hyper, deadlines, drain), [`body`] (the response body and its completion),
//! [`headers`], [`upgrade`] (WebSocket and CONNECT).
//!
//! Decisions use only local state: the runtime snapshot, per-worker balancer state and
//! shared atomics. Nothing here waits on disk, consensus or another thread.

pub mod admission;
pub mod body;
pub mod conn;
pub mod context;
pub mod filters;
pub mod forward;
pub mod headers;
pub mod request;
pub mod respond;
pub mod retry;
pub mod route;
pub mod serve;
pub mod upgrade;
