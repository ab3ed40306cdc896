//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): how an L4 load
//! balancer (AWS NLB, GCP, HAProxy in TCP mode) tells the server behind it who the client is, in
//! a header sent before the first byte of the client's own stream.
//!
//! [`parse`] is the sans-IO parser (fed bytes, it says how many more it needs at least, so the
//! reader never takes a byte of the HTTP or TLS stream behind the header); [`receive`] reads a
//! header on an accepted connection under the header deadline; [`encode`] writes one toward a
//! backend; [`connector`] puts it on the pooled plain-HTTP client's connections. Which peers may
//! send a header, or name the client in `X-Forwarded-For`, is [`trusted`].

pub mod connector;
pub mod encode;
pub mod parse;
pub mod receive;
pub mod trusted;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

/// A PROXY protocol version, as `proxy_protocol` and `send_proxy_protocol` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text form: `PROXY TCP4 … \r\n`, at most 107 bytes.
    V1,
    /// The binary form: a 12-byte signature, then a length-prefixed address block.
    V2,
}

impl Version {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The sender relays a client: `source` is the client, `destination` the address it
    /// connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// Where the client connected.
        destination: SocketAddr,
    },
    /// No client address: v2 `LOCAL` (the balancer's own health check), v1 `UNKNOWN`, or an
    /// address family the spec lets a receiver ignore (UNIX, unspecified). The connection's own
    /// peer address is then the client's.
    Local,
}

impl Header {
    /// The client address: the header's source, or `peer` when the header names none.
    pub fn client(self, peer: SocketAddr) -> SocketAddr {
        match self {
            Header::Proxied { source, .. } => source,
            Header::Local => peer,
        }
    }
}
