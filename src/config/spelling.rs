//! Typed config values written back as the file spells them (`sticky-hash`, `cookie:io`), so
//! messages, logs and `check` never show Rust's names (`StickyHash`, `Cookie("io")`).

use std::fmt;

use super::{Balance, HashKeySpec, HealthCheckKind, LogFormat};

/// `least-conn`, `sticky-hash`, `round-robin`: as `balance` is written.
impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::LeastConn => "least-conn",
            Balance::StickyHash => "sticky-hash",
            Balance::RoundRobin => "round-robin",
        })
    }
}

/// `ip`, `header:NAME`, `cookie:NAME`, `query:NAME`: as `hash_key` is written.
impl fmt::Display for HashKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKeySpec::Ip => f.write_str("ip"),
            HashKeySpec::Header(name) => write!(f, "header:{name}"),
            HashKeySpec::Cookie(name) => write!(f, "cookie:{name}"),
            HashKeySpec::Query(name) => write!(f, "query:{name}"),
        }
    }
}

/// `tcp`, `http`, `websocket`: as a health check's `kind` is written.
impl fmt::Display for HealthCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthCheckKind::Tcp => "tcp",
            HealthCheckKind::Http => "http",
            HealthCheckKind::WebSocket => "websocket",
        })
    }
}

/// `text`, `json`: as `log.format` is written.
impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_written() {
        assert_eq!(Balance::StickyHash.to_string(), "sticky-hash");
        assert_eq!(Balance::LeastConn.to_string(), "least-conn");
        assert_eq!(Balance::RoundRobin.to_string(), "round-robin");
        assert_eq!(HashKeySpec::Cookie("io".into()).to_string(), "cookie:io");
        assert_eq!(HashKeySpec::Query("room".into()).to_string(), "query:room");
        assert_eq!(
            HashKeySpec::Header(http::HeaderName::from_static("x-room")).to_string(),
            "header:x-room"
        );
        assert_eq!(HashKeySpec::Ip.to_string(), "ip");
        assert_eq!(HealthCheckKind::WebSocket.to_string(), "websocket");
        assert_eq!(LogFormat::Json.to_string(), "json");
    }
}
