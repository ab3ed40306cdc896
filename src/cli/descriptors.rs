//! The open-files budget: how many descriptors the configured limits can use at once, and what
//! to change when the process's limit is lower. A proxy that runs out of descriptors refuses
//! clients with EMFILE in the middle of the night, so the mismatch is said once, at start, with
//! the numbers to set.

use crate::config::Config;

/// Descriptors beyond clients and backends: stdio, listeners, the runtime's epoll and wakers,
/// the log writer, certificate and config reads, DNS.
const RESERVE: u64 = 64;

/// What the configured limits need, and the advice when the limit is short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Descriptors the limits can use at once.
    pub needed: u64,
    /// `limits.max_connections`.
    pub max_connections: u64,
    /// `limits.max_tunnels`.
    pub max_tunnels: u64,
    /// Fixed overhead plus one probe per backend.
    pub reserve: u64,
}

impl Budget {
    /// Each client connection holds one descriptor, and its backend side one more: a plain
    /// HTTP/1.1 connection one pooled backend connection at a time, a tunnel its own backend
    /// connection. HTTP/2 carries many tunnels on one client connection, so backend descriptors
    /// are bounded by the larger of `max_connections` and `max_tunnels`. Health checks hold one
    /// per backend while they probe.
    pub fn of(config: &Config) -> Budget {
        let max_connections = config.limits.max_connections as u64;
        let max_tunnels = config.limits.max_tunnels as u64;
        let backends: u64 = config
            .upstreams
            .iter()
            .map(|u| u.servers.len() as u64)
            .sum();
        let reserve = RESERVE + backends;
        Budget {
            needed: max_connections + max_connections.max(max_tunnels) + reserve,
            max_connections,
            max_tunnels,
            reserve,
        }
    }

    /// `None` when `limit` open files are enough; otherwise what to tell the operator: raise
    /// the limit to what is needed, or lower the limits to what fits in `limit`.
    pub fn advice(&self, limit: u64) -> Option<String> {
        if self.needed <= limit {
            return None;
        }
        let raise = format!(
            "raise the open-files limit to {needed} (`ulimit -n {needed}`, or LimitNOFILE={needed} in the systemd unit)",
            needed = self.needed
        );
        // Both limits at `half` need half + half + reserve <= limit; max_connections alone is
        // enough when max_tunnels already fits in its half.
        let half = limit.saturating_sub(self.reserve) / 2;
        let lower = if half == 0 {
            String::new()
        } else if self.max_tunnels <= half {
            format!(" or lower limits.max_connections to {half}")
        } else {
            format!(" or lower limits.max_connections and limits.max_tunnels to {half}")
        };
        Some(format!(
            "limits.max_connections = {} and limits.max_tunnels = {} need about {} open files, \
             but the limit is {limit}: {raise}{lower}",
            self.max_connections, self.max_tunnels, self.needed
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_connections: u64, max_tunnels: u64) -> Budget {
        Budget {
            needed: max_connections + max_connections.max(max_tunnels) + 66,
            max_connections,
            max_tunnels,
            reserve: 66,
        }
    }

    #[test]
    fn enough_is_silent() {
        assert_eq!(budget(100, 100).advice(266), None);
    }

    #[test]
    fn short_names_both_remedies_and_the_numbers_fit() {
        let advice = budget(10_000, 10_000).advice(1024).unwrap();
        assert!(
            advice.contains("raise the open-files limit to 20066"),
            "{advice}"
        );
        assert!(advice.contains("LimitNOFILE=20066"), "{advice}");
        assert!(
            advice.contains("lower limits.max_connections and limits.max_tunnels to 479"),
            "{advice}"
        );
        assert_eq!(budget(479, 479).advice(1024), None);
    }

    #[test]
    fn few_tunnels_need_only_fewer_connections() {
        let advice = budget(10_000, 100).advice(1024).unwrap();
        assert!(
            advice.contains("lower limits.max_connections to 479"),
            "{advice}"
        );
        assert_eq!(budget(479, 100).advice(1024), None);
    }

    #[test]
    fn many_tunnels_over_few_connections_count() {
        // HTTP/2: 100 connections may carry 5000 tunnels, each with its own backend socket.
        assert_eq!(budget(100, 5000).needed, 5166);
        assert!(budget(100, 5000).advice(1024).is_some());
    }

    #[test]
    fn a_tiny_limit_only_says_raise() {
        let advice = budget(10, 10).advice(50).unwrap();
        assert!(!advice.contains("lower"), "{advice}");
    }
}
