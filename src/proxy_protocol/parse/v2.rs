//! Version 2 (§2.2): binary, length-prefixed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Header, ParseError, Parsed, V2_FIXED, V2_MAX_BLOCK, V2_SIGNATURE};

pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
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
