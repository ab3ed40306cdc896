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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Header, Version};

/// The v2 signature (§2.2): chosen to be invalid as the start of any text protocol.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 header, CRLF included (§2.1).
pub const V1_MAX: usize = 107;

/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;

/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;

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
        Version::V1 => parse_v1(buf),
        Version::V2 => parse_v2(buf),
    }
}

/// The bytes of one v1 line that matter while reading it: what each field of a TCP4 and TCP6
/// line may hold.
struct V1Fields {
    /// Shortest text of each field: "PROXY", the protocol, source, destination, two ports.
    min: [usize; 6],
    /// Longest.
    max: [usize; 6],
}

const TCP4: V1Fields = V1Fields {
    min: [5, 4, 7, 7, 1, 1],
    max: [5, 4, 15, 15, 5, 5],
};
// "::" is the shortest IPv6 text; an IPv4-mapped one written in full is 45 bytes.
const TCP6: V1Fields = V1Fields {
    min: [5, 4, 2, 2, 1, 1],
    max: [5, 4, 45, 45, 5, 5],
};

const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    const SIGNATURE: &[u8] = b"PROXY ";
    let head = buf.len().min(SIGNATURE.len());
    if buf[..head] != SIGNATURE[..head] {
        return Err(ParseError::Missing("v1"));
    }
    // The line ends at the first CR, which must be followed by LF; no LF may come alone.
    let cr = buf.iter().position(|&b| b == b'\r');
    if buf[..cr.unwrap_or(buf.len())].contains(&b'\n') {
        return Err(ParseError::Malformed(
            "a line feed without a carriage return",
        ));
    }
    match cr {
        Some(i) if i + 1 < buf.len() => {
            if buf[i + 1] != b'\n' {
                return Err(ParseError::Malformed(
                    "a carriage return without a line feed",
                ));
            }
            if i + 2 > V1_MAX {
                return Err(ParseError::TooLong("v1 allows 107 bytes"));
            }
            let header = v1_line(&buf[..i])?;
            Ok(Parsed::Done { header, len: i + 2 })
        }
        Some(i) => v1_partial(&buf[..i], true),
        None => v1_partial(buf, false),
    }
}

/// The least number of bytes still to come for `body` (the line so far, without a trailing CR;
/// `cr` when one was read), or the error its fields already show.
fn v1_partial(body: &[u8], cr: bool) -> Result<Parsed, ParseError> {
    let read = body.len() + usize::from(cr);
    let Some(rest) = body.get(6..) else {
        // Still in "PROXY " (a CR there failed the signature).
        return need(read, V1_MIN - read);
    };
    let (proto, more) = match rest.iter().position(|&b| b == b' ') {
        Some(end) => (&rest[..end], true),
        None => (rest, false),
    };
    let spec = match proto {
        b"UNKNOWN" if more || cr => None,
        b"UNKNOWN" => return need(read, 2),
        b"TCP4" if more => Some(TCP4),
        b"TCP6" if more => Some(TCP6),
        p if !more && !cr && V1_PROTOCOLS.iter().any(|known| known.starts_with(p)) => {
            // The shortest line, UNKNOWN's, bounds what is left.
            return need(read, V1_MIN.saturating_sub(read).max(1));
        }
        _ => {
            return Err(ParseError::Malformed(
                "unknown protocol (TCP4, TCP6 or UNKNOWN)",
            ));
        }
    };
    let Some(spec) = spec else {
        // UNKNOWN: anything up to the CRLF.
        if body.iter().any(|b| !(b' '..=b'~').contains(b)) {
            return Err(ParseError::Malformed("a control byte in the line"));
        }
        return need(read, if cr { 1 } else { 2 });
    };
    let fields: Vec<&[u8]> = body.split(|&b| b == b' ').collect();
    let current = fields.len() - 1;
    if current >= spec.min.len() {
        return Err(ParseError::Malformed("more than six fields"));
    }
    for (i, field) in fields.iter().enumerate().skip(2) {
        let done = i < current;
        if (done && field.len() < spec.min[i]) || field.len() > spec.max[i] {
            return Err(ParseError::Malformed("a field of the wrong length"));
        }
        let allowed = |b: &u8| match i {
            2 | 3 => b.is_ascii_hexdigit() || *b == b'.' || *b == b':',
            _ => b.is_ascii_digit(),
        };
        if !field.iter().all(allowed) {
            return Err(ParseError::Malformed("a byte that no address or port has"));
        }
    }
    if cr {
        // The CR ends the line: only the last field may be ending here.
        if current != spec.min.len() - 1 || fields[current].is_empty() {
            return Err(ParseError::Malformed("the line ends before its last field"));
        }
        return need(read, 1);
    }
    let rest_of_current = spec.min[current].saturating_sub(fields[current].len());
    let later: usize = spec.min[current + 1..].iter().map(|min| 1 + min).sum();
    need(read, rest_of_current + later + 2)
}

/// `Need(more)`, unless that would take the line past 107 bytes.
fn need(read: usize, more: usize) -> Result<Parsed, ParseError> {
    if read + more > V1_MAX {
        return Err(ParseError::TooLong("v1 allows 107 bytes"));
    }
    Ok(Parsed::Need(more))
}

/// A whole v1 line, without its CRLF.
fn v1_line(line: &[u8]) -> Result<Header, ParseError> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match fields.get(1).copied() {
        Some(b"UNKNOWN") => {
            if line.iter().any(|b| !(b' '..=b'~').contains(b)) {
                return Err(ParseError::Malformed("a control byte in the line"));
            }
            Ok(Header::Local)
        }
        Some(proto @ (b"TCP4" | b"TCP6")) => {
            let [_, _, src, dst, sport, dport] = fields[..] else {
                return Err(ParseError::Malformed("a TCP line has six fields"));
            };
            let v6 = proto == b"TCP6";
            let source = SocketAddr::new(v1_ip(src, v6)?, v1_port(sport)?);
            let destination = SocketAddr::new(v1_ip(dst, v6)?, v1_port(dport)?);
            Ok(Header::Proxied {
                source,
                destination,
            })
        }
        _ => Err(ParseError::Malformed(
            "unknown protocol (TCP4, TCP6 or UNKNOWN)",
        )),
    }
}

fn v1_ip(text: &[u8], v6: bool) -> Result<IpAddr, ParseError> {
    let text = std::str::from_utf8(text).map_err(|_| ParseError::Malformed("a bad address"))?;
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| ParseError::Malformed("an address that is not of the line's family"))
}

fn v1_port(text: &[u8]) -> Result<u16, ParseError> {
    // Digits only (no sign, no spaces), at most 65535.
    if text.is_empty() || text.len() > 5 || !text.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("a bad port"));
    }
    let n = text.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| ParseError::Malformed("a port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    let head = buf.len().min(V2_SIGNATURE.len());
    if buf[..head] != V2_SIGNATURE[..head] {
        return Err(ParseError::Missing("v2"));
    }
    if let Some(&version_command) = buf.get(12) {
        if version_command >> 4 != 2 {
            return Err(ParseError::Malformed("version is not 2"));
        }
        if version_command & 0x0f > 1 {
            return Err(ParseError::Malformed("command is neither LOCAL nor PROXY"));
        }
    }
    // A LOCAL header's family is ignored (§2.2: its block is discarded).
    if let Some(&family) = buf.get(13)
        && buf[12] & 0x0f == 1
        && (family >> 4 > 3 || family & 0x0f > 2)
    {
        return Err(ParseError::Malformed("unknown address family or transport"));
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Need(V2_FIXED - buf.len()));
    }
    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if block > V2_MAX_BLOCK {
        return Err(ParseError::TooLong("a v2 address block over 4096 bytes"));
    }
    let len = V2_FIXED + block;
    if buf.len() < len {
        return Ok(Parsed::Need(len - buf.len()));
    }
    let header = v2_addresses(buf[12] & 0x0f, buf[13], &buf[V2_FIXED..len])?;
    Ok(Parsed::Done { header, len })
}

/// The addresses of a v2 header (`block` is its address block; TLVs after them are skipped).
fn v2_addresses(command: u8, family: u8, block: &[u8]) -> Result<Header, ParseError> {
    const LOCAL: u8 = 0;
    const INET: u8 = 1;
    const INET6: u8 = 2;
    const UNSPEC: u8 = 0;
    const STREAM: u8 = 1;
    if command == LOCAL {
        return Ok(Header::Local);
    }
    match family & 0x0f {
        UNSPEC => return Ok(Header::Local),
        STREAM => {}
        _ => {
            return Err(ParseError::Malformed(
                "a datagram (UDP) header on a TCP connection",
            ));
        }
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family >> 4 {
        INET => {
            if block.len() < 12 {
                return Err(ParseError::Malformed("an IPv4 block shorter than 12 bytes"));
            }
            let ip = |at: usize| {
                Ipv4Addr::from(<[u8; 4]>::try_from(&block[at..at + 4]).expect("4 bytes"))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            })
        }
        INET6 => {
            if block.len() < 36 {
                return Err(ParseError::Malformed("an IPv6 block shorter than 36 bytes"));
            }
            let ip = |at: usize| {
                Ipv6Addr::from(<[u8; 16]>::try_from(&block[at..at + 16]).expect("16 bytes"))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            })
        }
        // UNSPEC and UNIX: no address switchboard can use.
        _ => Ok(Header::Local),
    }
}
