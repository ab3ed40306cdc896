//! `trusted_proxies`: the peers whose word on the client's address is taken, in a PROXY header
//! or as the last `X-Forwarded-For` entry (the one the trusted proxy itself appended: entries
//! before it came from the client and prove nothing), as nginx's `set_real_ip_from`, HAProxy
//! and Envoy do.
//!
//! CIDR blocks are parsed here (a few lines; the `ipnet` crate is the usual choice but is not in
//! the dependency tree, and containment is all switchboard needs).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;

/// One `trusted_proxies` entry: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why an entry is no CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Neither an address nor `address/prefix`.
    #[error("`{0}` is not an IP address or a CIDR block")]
    NotAnAddress(String),
    /// The prefix is longer than the address (32 for IPv4, 128 for IPv6), or not a number.
    #[error("`{0}`: the prefix length must be 0 to {1}")]
    BadPrefix(String, u8),
    /// Bits below the prefix are set: the entry is ambiguous (a typo of the network?).
    #[error("`{0}` has bits set below its prefix; the network is {1}")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// Whether `ip` is inside the block. An IPv4-mapped IPv6 address (a peer of a `[::]`
    /// listener) is compared as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` (an address `width` bits wide) with every bit below `prefix` cleared.
fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    let host = u32::from(width - prefix);
    if host >= 128 { 0 } else { bits >> host << host }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(text.to_owned()))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= width => p,
                _ => return Err(CidrError::BadPrefix(text.to_owned(), width)),
            },
        };
        let bits = match network {
            IpAddr::V4(ip) => u128::from(u32::from(ip)),
            IpAddr::V6(ip) => u128::from(ip),
        };
        let masked = mask(bits, width, prefix);
        if masked != bits {
            let network = match network {
                IpAddr::V4(_) => IpAddr::V4((masked as u32).into()),
                IpAddr::V6(_) => IpAddr::V6(masked.into()),
            };
            return Err(CidrError::HostBits(
                text.to_owned(),
                Cidr { network, prefix },
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Every `trusted_proxies` block; empty by default (no peer is trusted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// The blocks, as configured.
    pub fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies(blocks)
    }

    /// The blocks, in file order (what `switchboard check` shows).
    pub fn blocks(&self) -> &[Cidr] {
        &self.0
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }
}

/// The last `X-Forwarded-For` entry, if it is an address (`1.2.3.4`, `2001:db8::1`, or with a
/// port: `1.2.3.4:5678`, `[2001:db8::1]:5678`). Port 0 when it names none.
pub fn last_forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    entry.parse::<SocketAddr>().ok()
}
