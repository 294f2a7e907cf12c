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
//! hyper, deadlines, drain), [`served`] (what a connection owns between tasks), [`watch`] (a worker's connection deadlines), [`idle_lot`]
//! (a worker's idle plain connections, parked outside tokio), [`body`] (the response
//! body and its completion), [`headers`], [`upgrade`] (WebSocket and CONNECT).
//!
//! Decisions use only local state: the runtime snapshot, per-worker balancer state and
//! shared atomics. Nothing here waits on disk, consensus or another thread.

pub(crate) mod admission;
pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod context;
pub(crate) mod due_heap;
pub(crate) mod filters;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod idle_lot;
pub(crate) mod request;
pub(crate) mod respond;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod serve;
pub(crate) mod served;
pub(crate) mod upgrade;
pub(crate) mod watch;
