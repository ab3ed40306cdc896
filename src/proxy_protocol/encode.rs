//! Writing a PROXY header toward a backend (`send_proxy_protocol`): the client's address as
//! source, the backend's as destination, so a backend behind switchboard learns who the client
//! is the way it would behind any L4 balancer. Health checks send the no-client form instead
//! (v2 `LOCAL`, v1 `UNKNOWN`): a probe speaks for no client.

use std::net::{IpAddr, SocketAddr};

use super::Version;
use super::parse::V2_SIGNATURE;

/// The header for a connection from `source` to `destination`. The two must share a family in
/// either version; when they do not, the IPv4 one is written as IPv4-mapped IPv6.
pub fn header(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {proto} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    // AF_INET, STREAM; 12 bytes of addresses.
                    out.push(0x11);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&src.octets());
                    out.extend_from_slice(&dst.octets());
                }
                (src, dst) => {
                    // AF_INET6, STREAM; 36 bytes of addresses.
                    out.push(0x21);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(src).octets());
                    out.extend_from_slice(&v6(dst).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

/// The header that names no client: what a health check sends.
pub fn local(version: Version) -> &'static [u8] {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n",
        // Signature, version 2 with command LOCAL, UNSPEC family, no address block.
        Version::V2 => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let widen = |s: SocketAddr| SocketAddr::new(IpAddr::V6(v6(s.ip())), s.port());
    (widen(a), widen(b))
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}
