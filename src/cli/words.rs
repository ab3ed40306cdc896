//! Config words: each typed value back in the spelling a config file uses for it, so what
//! `check` prints can be pasted into a config.

use std::time::Duration;

use crate::config::{Balance, HashKeySpec, HostPattern, OriginPattern};

/// The config's name of a strategy.
pub fn balance(balance: Balance) -> &'static str {
    match balance {
        Balance::LeastConn => "least-conn",
        Balance::StickyHash => "sticky-hash",
        Balance::RoundRobin => "round-robin",
    }
}

/// A hash key as `hash_key` spells it.
pub fn hash_key(key: &HashKeySpec) -> String {
    match key {
        HashKeySpec::Ip => "ip".to_owned(),
        HashKeySpec::Header(name) => format!("header:{name}"),
        HashKeySpec::Cookie(name) => format!("cookie:{name}"),
        HashKeySpec::Query(name) => format!("query:{name}"),
    }
}

/// A route host as written: `chat.example.com` or `*.example.com`.
pub fn host_pattern(host: &HostPattern) -> String {
    match host {
        HostPattern::Exact(name) => name.clone(),
        HostPattern::Wildcard(suffix) => format!("*{suffix}"),
    }
}

/// An `allowed_origins` entry, with the scheme's default port left out as one would write it.
pub fn origin_pattern(origin: &OriginPattern) -> String {
    match origin {
        OriginPattern::Null => "null".to_owned(),
        OriginPattern::Site { scheme, host, port } => {
            let default = match scheme.as_str() {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            };
            match port {
                Some(port) if Some(*port) != default => {
                    format!("{scheme}://{}:{port}", host_pattern(host))
                }
                _ => format!("{scheme}://{}", host_pattern(host)),
            }
        }
    }
}

/// A duration as a config file writes it: the largest unit that divides it exactly (`"90s"`,
/// `"5m"`, `"250ms"`, `"0s"`), so the text can be pasted back into a config.
pub fn duration(d: Duration) -> String {
    let millis = d.as_millis();
    match millis {
        0 => "0s".to_owned(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_back_as_written() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(duration(d), text);
            assert_eq!(crate::config::parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn keys_and_strategies_in_config_words() {
        assert_eq!(hash_key(&HashKeySpec::Cookie("io".into())), "cookie:io");
        assert_eq!(
            hash_key(&HashKeySpec::Header(http::HeaderName::from_static(
                "x-user"
            ))),
            "header:x-user"
        );
        assert_eq!(balance(Balance::StickyHash), "sticky-hash");
    }
}
