//! Errors of the request path, each mapped to exactly one status code.
//!
//! The match in [`ProxyError::status`] is exhaustive on purpose: a new failure mode has to decide
//! its status and who is to blame, instead of falling into a catch-all 500.

use std::io;
use std::time::Duration;

use http::StatusCode;

/// Who caused a failure; decides the log level and helps an operator look in the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we cannot serve.
    Client,
    /// A backend was unreachable, slow or broken.
    Backend,
    /// Nobody's fault: switchboard shed load on purpose (upgrade pacing, no backend up).
    Overload,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute {
        /// The request's host, if it had one.
        host: Option<String>,
        /// The request path.
        path: String,
    },
    /// A request that cannot be forwarded as it is: a host missing, given twice or given two
    /// different ways (RFC 9112 §3.2, RFC 9113 §8.3.1), or an upgrade that carries a body.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong, for the log.
        reason: &'static str,
    },
    /// The client's request body could not be read: malformed chunked framing, or the client
    /// went away mid-body.
    #[error("the client's request body is malformed or incomplete")]
    ClientBody {
        /// What hyper saw.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client stopped sending its request body for `timeouts.request_body_idle`.
    #[error("the client's request body stalled for {idle:?} (timeouts.request_body_idle)")]
    ClientBodyStalled {
        /// The idle limit.
        idle: Duration,
    },
    /// CONNECT other than an RFC 8441 WebSocket.
    #[error("CONNECT is only accepted for WebSockets over HTTP/2")]
    MethodNotAllowed,
    /// The upstream has no backend left to try.
    #[error("upstream {upstream} has no backend left to try")]
    NoBackend {
        /// Upstream name.
        upstream: String,
    },
    /// Connecting to a backend failed (refused, unreachable, or timed out).
    #[error("connect to {backend} failed")]
    Connect {
        /// Backend name.
        backend: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The backend did not answer in time.
    #[error("{backend} did not answer within {timeout:?}")]
    Timeout {
        /// Backend name.
        backend: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The backend broke the HTTP exchange (reset, malformed response).
    #[error("exchange with {backend} failed")]
    Backend {
        /// Backend name.
        backend: String,
        /// What hyper saw.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend's upgrade bucket (`max_upgrades_per_second`) had no token in time.
    #[error("{backend} takes no more upgrades this second (max_upgrades_per_second)")]
    RateLimited {
        /// Upstream name, for the metric.
        upstream: String,
        /// Backend name.
        backend: String,
    },
    /// The route's origin rules refuse this WebSocket upgrade (`allowed_origins`,
    /// `require_origin`): a page of another site must not open a socket with the user's
    /// cookies (Cross-Site WebSocket Hijacking).
    #[error("forbidden: {reason}")]
    Forbidden {
        /// What was refused, for the log.
        reason: String,
    },
    /// The client's address holds as many tunnels as `limits.max_tunnels_per_ip` allows, or
    /// has opened them faster than `limits.upgrades_per_ip_per_second`.
    #[error("client address over limits.{limit}")]
    TooManyPerIp {
        /// The limit's key in `[limits]`.
        limit: &'static str,
    },
    /// `limits.max_tunnels` tunnels are open already.
    #[error("limits.max_tunnels tunnels are open")]
    TooManyTunnels,
    /// The backend answered 101 but not with a WebSocket upgrade.
    #[error("{backend} answered 101 without `Upgrade: websocket`")]
    BadUpgrade {
        /// Backend name.
        backend: String,
    },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest { .. } | ProxyError::ClientBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientBodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Backend { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::RateLimited { .. } | ProxyError::TooManyTunnels => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::TooManyPerIp { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds for `Retry-After`, when trying again later is the answer: 1–5 s, jittered, so
    /// refused clients do not all come back in the same second.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::NoBackend { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::TooManyPerIp { .. }
            | ProxyError::TooManyTunnels => Some(1 + rand::random::<u64>() % 5),
            _ => None,
        }
    }

    /// The `outcome` label of the request and upgrade duration histograms.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyStalled { .. }
            | ProxyError::MethodNotAllowed
            | ProxyError::Forbidden { .. }
            | ProxyError::TooManyPerIp { .. } => "client_error",
            ProxyError::NoBackend { .. } => "no_backend",
            ProxyError::RateLimited { .. } | ProxyError::TooManyTunnels => "rate_limited",
            ProxyError::Connect { .. } => "connect_error",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Backend { .. } | ProxyError::BadUpgrade { .. } => "bad_response",
        }
    }

    /// Who is at fault.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyStalled { .. }
            | ProxyError::MethodNotAllowed
            | ProxyError::Forbidden { .. }
            | ProxyError::TooManyPerIp { .. } => Blame::Client,
            ProxyError::NoBackend { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::TooManyTunnels => Blame::Overload,
            ProxyError::Connect { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Backend { .. }
            | ProxyError::BadUpgrade { .. } => Blame::Backend,
        }
    }
}
