//! The PROXY header parser, sans IO: fed the bytes read so far, it answers with the header and
//! its length, or with how many more bytes it needs *at least*. The reader reads exactly that
//! many, so it never takes a byte past the header: what follows (an HTTP request, a TLS
//! ClientHello) stays in the socket for the next stage. Garbage is refused as soon as it shows.
//!
//! proxy-protocol.txt §2.1 (v1): `"PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport
//! CRLF`, or `"PROXY UNKNOWN"` followed by anything up to CRLF; at most 107 bytes with the CRLF.
//! §2.2 (v2): the 12-byte signature, the version (2) and command (LOCAL 0, PROXY 1) byte, the
//! family and transport byte, a big-endian length, then that many bytes: the addresses, then
//! TLVs (skipped). LOCAL, `UNKNOWN` and the UNSPEC and UNIX families name no client (§2.2: the
//! receiver uses the connection's own addresses).

use super::{Header, Version};

mod v1;
mod v2;

/// The v2 signature (§2.2): chosen to be invalid as the start of any text protocol.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 header, CRLF included (§2.1).
pub const V1_MAX: usize = 107;

/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
pub(super) const V1_MIN: usize = 15;

/// The fixed part of a v2 header: signature, version/command, family, length.
pub(super) const V2_FIXED: usize = 16;

/// Largest v2 address block (addresses and TLVs) accepted. The spec sets no bound below 64 KiB;
/// balancers send tens of bytes of TLVs (AWS: the VPC endpoint id), and a bound keeps what one
/// connection can make the listener buffer small.
pub const V2_MAX_BLOCK: usize = 4096;

/// What [`parse`] found in the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long: the bytes after it belong to the client's stream.
    Done {
        /// What the header says.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes so far may start a valid header; at least this many more are needed (never
    /// more than the shortest valid header that starts with them leaves).
    Need(usize),
}

/// Why the bytes are no header of the expected version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The connection does not start with the version's signature (`PROXY ` or the v2 bytes):
    /// the peer sent no header at all (or the other version's).
    #[error("no PROXY protocol {0} header (the connection does not start with one)")]
    Missing(&'static str),
    /// It starts like a header but breaks the spec.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Longer than the version allows (v1: 107 bytes; v2: [`V2_MAX_BLOCK`]).
    #[error("PROXY protocol header too long ({0})")]
    TooLong(&'static str),
}

impl ParseError {
    /// The `reason` label of `switchboard_proxy_protocol_errors_total`.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Missing(_) => "missing",
            ParseError::Malformed(_) | ParseError::TooLong(_) => "malformed",
        }
    }
}

/// Parses the start of a connection as a header of `version`.
pub fn parse(version: Version, buf: &[u8]) -> Result<Parsed, ParseError> {
    match version {
        Version::V1 => v1::parse(buf),
        Version::V2 => v2::parse(buf),
    }
}
