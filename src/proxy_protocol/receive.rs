//! The listener side: with `proxy_protocol` on, every connection must come from a peer in
//! `trusted_proxies` and start with a valid header, read under `limits.header_read_timeout` so a
//! silent peer cannot hold a connection slot. Anything else is closed unserved and counted in
//! `switchboard_proxy_protocol_errors_total{reason}`. The header is read to its last byte and no
//! further: the request (or TLS ClientHello) behind it is left in the socket, so the stages that
//! follow (protocol sniffing, the TLS handshake) run on the bare stream as without a header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::parse::{ParseError, Parsed, parse};
use super::trusted::TrustedProxies;
use super::{Header, Version};
use crate::metrics::Metrics;

/// What a listener expects of its peers when `proxy_protocol` is on.
#[derive(Debug, Clone)]
pub struct Receive {
    /// The header's version.
    pub version: Version,
    /// Who may send one.
    pub trusted: Arc<TrustedProxies>,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The peer is not in `trusted_proxies`: its header would be a lie anyone can tell.
    #[error("peer is not in trusted_proxies")]
    Untrusted,
    /// The bytes are no valid header.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The header did not arrive within the deadline.
    #[error("no whole PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The peer closed before a header was whole; `empty` when it sent nothing at all (a TCP
    /// health check of the balancer: not counted).
    #[error("connection closed before the PROXY protocol header ended")]
    Closed {
        /// Nothing at all was sent.
        empty: bool,
    },
    /// The socket failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[source] std::io::Error),
}

impl ReceiveError {
    /// The `reason` label, or `None` for what is not counted (a connection closed unused).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ReceiveError::Untrusted => Some("untrusted"),
            ReceiveError::Parse(e) => Some(e.reason()),
            ReceiveError::Timeout(_) => Some("timeout"),
            ReceiveError::Closed { empty: true } => None,
            ReceiveError::Closed { empty: false } | ReceiveError::Io(_) => Some("malformed"),
        }
    }
}

impl Receive {
    /// The client address of a connection from `peer`, or `None` when it was refused (counted
    /// and logged at debug; the caller just drops the connection).
    pub async fn client<R: AsyncRead + Unpin>(
        &self,
        io: &mut R,
        peer: SocketAddr,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Option<(SocketAddr, Header)> {
        let result = if self.trusted.contains(peer.ip()) {
            read_header(self.version, io, timeout).await
        } else {
            Err(ReceiveError::Untrusted)
        };
        match result {
            Ok(header) => Some((header.client(peer), header)),
            Err(e) => {
                if let Some(reason) = e.reason() {
                    metrics
                        .proxy_protocol_errors_total
                        .with_label_values(&[reason])
                        .inc();
                }
                tracing::debug!(%peer, error = %e, "connection refused: PROXY protocol");
                None
            }
        }
    }
}

/// Reads one header of `version` from `io`, exactly its bytes, within `timeout`.
pub async fn read_header<R: AsyncRead + Unpin>(
    version: Version,
    io: &mut R,
    timeout: Duration,
) -> Result<Header, ReceiveError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(64);
    // Each turn reads at least one byte, and a header is bounded (parse refuses longer ones);
    // what arrived is judged after every read, so garbage is refused at once.
    loop {
        let more = match parse(version, &buf)? {
            Parsed::Done { header, .. } => return Ok(header),
            Parsed::Need(more) => more,
        };
        let start = buf.len();
        buf.resize(start + more, 0);
        let read = tokio::time::timeout_at(deadline, io.read(&mut buf[start..]))
            .await
            .map_err(|_| ReceiveError::Timeout(timeout))?
            .map_err(ReceiveError::Io)?;
        if read == 0 {
            return Err(ReceiveError::Closed { empty: start == 0 });
        }
        buf.truncate(start + read);
    }
}
