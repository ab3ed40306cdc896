//! One DNS lookup of a `dns:NAME:PORT` server, with hickory-resolver: A and AAAA asked in
//! parallel, every address a backend on PORT, sorted so that the set (not the order the server
//! happened to answer in) is what counts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::{Dns, DnsServer};

/// Bounds on how long a lookup waits for one nameserver's answer: `resolve_interval` within
/// them, so a lookup does not outlast the interval it serves by much, and a busy machine's
/// slow answer is not taken for a dead server.
const QUERY_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(5);

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every address of the name, on the server's port, sorted and without repeats.
    pub addrs: Vec<SocketAddr>,
    /// How long the records may be kept (the smallest TTL of the answer).
    pub ttl: Duration,
}

/// Why a lookup gave no backends.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist or has no A/AAAA records (NXDOMAIN, or NOERROR with no answer).
    #[error("no A or AAAA records")]
    Empty,
    /// No usable answer: timeout, SERVFAIL, refused, unreachable nameserver.
    #[error("{0}")]
    Failed(#[source] hickory_resolver::net::NetError),
}

/// The resolver for `[dns]`: the nameservers it names, else the system configuration.
pub fn resolver(dns: &Dns, interval: Duration) -> Result<TokioResolver, String> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            format!("cannot read the system resolver configuration (/etc/resolv.conf): {e}")
        })?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = interval.clamp(*QUERY_TIMEOUT.start(), *QUERY_TIMEOUT.end());
    options.attempts = 2;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// Looks `server` up once.
pub async fn lookup(resolver: &TokioResolver, server: &DnsServer) -> Result<Answer, LookupError> {
    let found = resolver
        .lookup_ip(server.host.as_str())
        .await
        .map_err(|e| {
            if e.is_no_records_found() || e.is_nx_domain() {
                LookupError::Empty
            } else {
                LookupError::Failed(e)
            }
        })?;
    let mut addrs: Vec<SocketAddr> = found
        .iter()
        .map(|ip| SocketAddr::new(ip, server.port))
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(LookupError::Empty);
    }
    Ok(Answer {
        addrs,
        ttl: found
            .valid_until()
            .saturating_duration_since(Instant::now()),
    })
}
