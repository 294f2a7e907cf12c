//! Validated traffic policies as plain values: a route's rate limit, a cluster's sticky
//! sessions, the per-request headers Tandem adds. The modules that carry them out
//! (`ratelimit`, `sticky`, `headers`) read these; the configuration does not reach up
//! into them.

use std::time::Duration;

use super::HashOn;

/// Which `X-Forwarded-*` headers requests get (`[server] forwarded_headers`): all three
/// by default, as users of other proxies expect them; fewer when the upstream does not
/// read them (less work per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeaders {
    /// `X-Forwarded-For` (the client appended).
    pub xff: bool,
    /// `X-Forwarded-Proto`.
    pub proto: bool,
    /// `X-Forwarded-Host` (unless present).
    pub host: bool,
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        ForwardedHeaders {
            xff: true,
            proto: true,
            host: true,
        }
    }
}

/// What happens to `X-Request-Id` (`[server] request_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestIdMode {
    /// Kept if the client sent one, else generated; sent upstream, returned, logged.
    #[default]
    Generate,
    /// Kept, returned and logged when the client sent one; never generated.
    Keep,
    /// Left alone (a client's passes through as any header); not returned or logged.
    Off,
}

/// Where the limit key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address.
    SourceIp,
    /// A request header (requests without it share one bucket).
    Header(http::HeaderName),
    /// One bucket for the whole route.
    Route,
}

/// The counting algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Refill `requests` per `per`, up to `burst`.
    TokenBucket,
    /// At most `requests` in any window of length `per` (approximated by two windows).
    SlidingWindow,
}

/// Whose requests count against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This node's only.
    Local,
    /// The pair's: own counts plus the peers' last reported counts (sliding window).
    Cluster,
}

/// A validated limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// Requests allowed …
    pub requests: u64,
    /// … per this period.
    pub per: Duration,
    /// Token bucket capacity.
    pub burst: u64,
    /// Key source.
    pub key: LimitKey,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Local or cluster-wide.
    pub scope: Scope,
}

/// A cluster's sticky-session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyConfig {
    /// Tandem's own signed cookie.
    Cookie {
        /// Cookie name.
        name: String,
        /// HMAC key (the same on every node of the pair).
        secret: Vec<u8>,
        /// `Max-Age`; None = a session cookie.
        max_age: Option<Duration>,
        /// Add `Secure`.
        secure: bool,
    },
    /// Learned bindings.
    Learned {
        /// Where the key comes from.
        on: HashOn,
        /// Bindings unused for this long expire.
        idle: Duration,
    },
}
