//! Why a request failed, mapped in one place to the status code the client gets, the
//! short plain body that says which failure it was, the access-log reason, which side
//! caused it and which retry conditions cover it. A [`Failure`] carries the kind with its
//! cause (the I/O or protocol error underneath), which the access log records.

/// The circuit-breaker limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Upstream connections.
    Connections = 0,
    /// Requests waiting for a connection.
    Pending = 1,
    /// Requests in flight.
    Requests = 2,
    /// Retries in flight.
    Retries = 3,
}

impl Limit {
    /// Every limit, in index order.
    pub const ALL: [Limit; 4] = [Limit::Connections, Limit::Pending, Limit::Requests, Limit::Retries];

    /// Config/metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Pending => "max_pending",
            Limit::Requests => "max_requests",
            Limit::Retries => "max_retries",
        }
    }
}

/// Why a request was refused as malformed before it was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// More than one `Host` header.
    DuplicateHost,
    /// HTTP/1.1 (or HTTP/2) without any authority.
    MissingHost,
    /// A `Host` value that is not a valid authority.
    InvalidHost,
    /// HTTP/2 `:authority` and `host` that name different authorities.
    AuthorityMismatch,
}

/// A request-level failure on the proxy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The request head is malformed (authority rules); answered 400, connection closed.
    #[error("bad request")]
    BadRequest(BadRequest),
    /// No route matched the request.
    #[error("no route matches this request")]
    NoRoute,
    /// The cluster has no endpoint to send to.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// Connecting to the endpoint failed (refused, unreachable).
    #[error("upstream connect error")]
    ConnectFailure,
    /// Connecting took longer than the cluster's connect_timeout.
    #[error("upstream connect timeout")]
    ConnectTimeout,
    /// No response headers within the route timeout.
    #[error("upstream request timeout")]
    Timeout,
    /// The upstream closed or reset the connection, or spoke invalid HTTP.
    #[error("upstream connection reset or protocol error")]
    UpstreamReset,
    /// A circuit breaker refused the request.
    #[error("circuit breaker open")]
    Overflow(Limit),
    /// The request body could not be read from the client: its framing is invalid
    /// (a downstream fault, never counted against an endpoint).
    #[error("client request body error")]
    DownstreamBody,
    /// The client went away (or reset its stream) before the answer was sent: nginx's
    /// 499 convention; never counted against an endpoint.
    #[error("client closed the request")]
    ClientAbort,
    /// The client stopped sending its request body for longer than the listener's
    /// `request_body_timeout` (408; never counted against an endpoint).
    #[error("client request body timeout")]
    RequestBodyTimeout,
    /// A proxy-wasm filter failed (trap, CPU or memory limit) with `fail_closed`, or
    /// closed the stream.
    #[error("filter failed")]
    FilterFailed,
    /// The route's rate limit refused the request.
    #[error("rate limited")]
    RateLimited {
        /// Milliseconds until a request would be admitted.
        retry_after_ms: u64,
        /// The limit (requests per period).
        limit: u64,
    },
}

/// nginx's status for a request whose client went away before the answer (logged,
/// never sent).
pub(crate) fn client_closed_request() -> http::StatusCode {
    http::StatusCode::from_u16(499).expect("499 is a valid status code")
}

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (malformed request, body framing, went away, too slow): never counted
    /// against an endpoint.
    Downstream,
    /// An upstream endpoint (connect, reset, protocol, timeout): counted against it, and
    /// retried where the route says so.
    Upstream,
    /// This proxy's own decision (no route, no healthy endpoint, a breaker, a rate limit,
    /// a filter).
    Local,
}

/// The error underneath a failure (the same type as the bodies' errors).
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A failure with its cause: what the client is told ([`ProxyError`]) and the error
/// underneath (an I/O or protocol error), for the access log and debug logs.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What failed.
    pub kind: ProxyError,
    /// Why, when an error underneath says it.
    pub cause: Option<Cause>,
}

impl Failure {
    /// A failure of `kind` caused by `cause`.
    pub(crate) fn new(kind: ProxyError, cause: impl Into<Cause>) -> Failure {
        Failure {
            kind,
            cause: Some(cause.into()),
        }
    }
}

impl From<ProxyError> for Failure {
    fn from(kind: ProxyError) -> Failure {
        Failure { kind, cause: None }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            Some(c) => write!(f, "{}: {c}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl ProxyError {
    /// Who caused it.
    pub fn side(self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::DownstreamBody
            | ProxyError::ClientAbort
            | ProxyError::RequestBodyTimeout => Side::Downstream,
            ProxyError::ConnectFailure
            | ProxyError::ConnectTimeout
            | ProxyError::Timeout
            | ProxyError::UpstreamReset => Side::Upstream,
            ProxyError::NoRoute
            | ProxyError::NoHealthyUpstream
            | ProxyError::Overflow(_)
            | ProxyError::FilterFailed
            | ProxyError::RateLimited { .. } => Side::Local,
        }
    }

    /// The client, not an upstream, caused this failure: it never counts against an
    /// endpoint (no passive health, outlier or latency signal, no retry).
    pub fn is_downstream(self) -> bool {
        self.side() == Side::Downstream
    }

    /// Whether a route retrying on `on` retries this failure (Envoy's `retry_on`
    /// conditions; a response's status is judged apart, by the caller).
    pub fn retried_on(self, on: crate::config::RetryOn) -> bool {
        use crate::config::RetryOn as R;
        let gateway = on.has(R::GATEWAY_ERROR) || on.has(R::FIVE_XX);
        match self {
            ProxyError::ConnectFailure | ProxyError::ConnectTimeout => on.has(R::CONNECT_FAILURE) || gateway,
            ProxyError::UpstreamReset => on.has(R::RESET) || gateway,
            ProxyError::Timeout => on.has(R::TIMEOUT) || gateway,
            _ => false,
        }
    }

    /// HTTP status for the client.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::NoRoute => S::NOT_FOUND,
            ProxyError::NoHealthyUpstream | ProxyError::Overflow(_) | ProxyError::FilterFailed => {
                S::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailure | ProxyError::UpstreamReset => S::BAD_GATEWAY,
            ProxyError::DownstreamBody | ProxyError::BadRequest(_) => S::BAD_REQUEST,
            ProxyError::ClientAbort => client_closed_request(),
            ProxyError::RequestBodyTimeout => S::REQUEST_TIMEOUT,
            ProxyError::RateLimited { .. } => S::TOO_MANY_REQUESTS,
            ProxyError::ConnectTimeout | ProxyError::Timeout => S::GATEWAY_TIMEOUT,
        }
    }

    /// Termination reason for the access log and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::NoHealthyUpstream => "no-healthy-upstream",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::ConnectTimeout => "connect-timeout",
            ProxyError::Timeout => "timeout",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::Overflow(_) => "overflow",
            ProxyError::DownstreamBody => "downstream-body",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::ClientAbort => "client-abort",
            ProxyError::RequestBodyTimeout => "request-body-timeout",
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::FilterFailed => "filter-failure",
        }
    }

    /// The short plain-text body sent with the status.
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches this request\n",
            ProxyError::NoHealthyUpstream => "no healthy upstream\n",
            ProxyError::ConnectFailure => "upstream connect error\n",
            ProxyError::ConnectTimeout => "upstream connect timeout\n",
            ProxyError::Timeout => "upstream request timeout\n",
            ProxyError::UpstreamReset => "upstream connection reset\n",
            ProxyError::Overflow(_) => "upstream overloaded: circuit breaker open\n",
            ProxyError::DownstreamBody => "could not read the request body\n",
            ProxyError::BadRequest(BadRequest::DuplicateHost) => "bad request: more than one Host header\n",
            ProxyError::BadRequest(BadRequest::MissingHost) => "bad request: no Host header\n",
            ProxyError::BadRequest(BadRequest::InvalidHost) => "bad request: invalid Host header\n",
            ProxyError::BadRequest(BadRequest::AuthorityMismatch) => {
                "bad request: :authority and host name different authorities\n"
            }
            ProxyError::ClientAbort => "client closed the request\n",
            ProxyError::RequestBodyTimeout => "request body timeout\n",
            ProxyError::RateLimited { .. } => "rate limit exceeded\n",
            ProxyError::FilterFailed => "filter failed\n",
        }
    }
}
