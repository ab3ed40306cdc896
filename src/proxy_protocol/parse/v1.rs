//! Version 1 (§2.1): one text line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Header, ParseError, Parsed, V1_MAX, V1_MIN};

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

pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
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
