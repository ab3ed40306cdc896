//! Request → upstream. Host first (exact, then the longest matching `*.suffix`, then routes
//! without a host), then the longest path prefix within that host group. Built once per config.
//!
//! A path prefix is a raw string prefix, as nginx's prefix locations and Envoy's `prefix` match:
//! `/ws` matches `/ws`, `/ws/room` and also `/wsx`; write `/ws/` to match only below it. If no
//! path of the most specific host group matches, the next less specific group is tried.

use std::collections::HashMap;

use crate::config::{HostPattern, Route};

/// Prefixes of one host group, longest first.
#[derive(Debug, Default)]
struct Paths(Vec<(String, usize)>);

impl Paths {
    fn add(&mut self, prefix: &str, upstream: usize) {
        // A duplicate prefix keeps the first route, as config order suggests.
        if !self.0.iter().any(|(p, _)| p == prefix) {
            self.0.push((prefix.to_owned(), upstream));
            self.0
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        }
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|&(_, upstream)| upstream)
    }
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Paths>,
    /// `(".example.com", paths)`, longest suffix first.
    wildcard: Vec<(String, Paths)>,
    any_host: Paths,
}

impl Router {
    /// Builds the table from the config's routes.
    pub fn new(routes: &[Route]) -> Self {
        let mut router = Router::default();
        for route in routes {
            let paths = match &route.host {
                None => &mut router.any_host,
                Some(HostPattern::Exact(host)) => router.exact.entry(host.clone()).or_default(),
                Some(HostPattern::Wildcard(suffix)) => {
                    match router.wildcard.iter().position(|(s, _)| s == suffix) {
                        Some(i) => &mut router.wildcard[i].1,
                        None => {
                            router.wildcard.push((suffix.clone(), Paths::default()));
                            &mut router.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                }
            };
            paths.add(&route.path_prefix, route.upstream);
        }
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }

    /// The upstream index for this host (without port, any case) and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if let Some(host) = host {
            let host = host.to_ascii_lowercase();
            let exact = self.exact.get(&host).and_then(|p| p.find(path));
            let wildcard = || {
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| {
                        host.ends_with(suffix.as_str()) && host.len() > suffix.len()
                    })
                    .find_map(|(_, p)| p.find(path))
            };
            if let Some(upstream) = exact.or_else(wildcard) {
                return Some(upstream);
            }
        }
        self.any_host.find(path)
    }
}

/// The authority a request is for, as the client wrote it: the URI's authority (absolute-form)
/// or the `Host` header.
pub fn request_authority(parts: &http::request::Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => parts.headers.get(http::header::HOST)?.to_str().ok(),
    }
}

/// Checks that the request names one host, one way: an HTTP/1.1 request needs exactly one
/// `Host` (RFC 9112 §3.2), and an authority in the URI (absolute form, or HTTP/2's
/// `:authority`) must equal `Host` when both are sent (RFC 9112 §3.2.2, RFC 9113 §8.3.1). So
/// the backend sees exactly the host switchboard routed on, and a client cannot route on one
/// name and present another to a shared backend.
pub fn check_host(parts: &http::request::Parts) -> Result<(), crate::error::ProxyError> {
    use crate::error::ProxyError::BadRequest;
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest {
            reason: "two Host headers",
        });
    }
    match (parts.uri.authority(), host) {
        (None, None) if parts.version == http::Version::HTTP_11 => Err(BadRequest {
            reason: "HTTP/1.1 request without Host",
        }),
        (Some(authority), Some(host))
            if !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Err(BadRequest {
                reason: "the URI's authority and Host differ",
            })
        }
        _ => Ok(()),
    }
}

/// The host a request is for, without port.
pub fn request_host(parts: &http::request::Parts) -> Option<&str> {
    request_authority(parts).map(strip_port)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // "[::1]:8080" → "::1"
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, upstream: usize) -> Route {
        Route {
            host: host.map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
                None => HostPattern::Exact(h.to_owned()),
            }),
            path_prefix: prefix.to_owned(),
            upstream,
        }
    }

    #[test]
    fn host_then_longest_prefix() {
        let r = Router::new(&[
            route(None, "/", 0),
            route(Some("chat.example.com"), "/", 1),
            route(Some("chat.example.com"), "/ws", 2),
            route(Some("*.example.com"), "/", 3),
            route(Some("*.eu.example.com"), "/", 4),
        ]);
        assert_eq!(r.route(Some("chat.example.com"), "/ws?x"), Some(2));
        assert_eq!(r.route(Some("CHAT.example.com"), "/index"), Some(1));
        assert_eq!(r.route(Some("game.example.com"), "/ws"), Some(3));
        assert_eq!(r.route(Some("a.eu.example.com"), "/"), Some(4));
        assert_eq!(r.route(Some("example.com"), "/"), Some(0));
        assert_eq!(r.route(None, "/"), Some(0));
    }

    #[test]
    fn no_match_is_none_and_falls_through_groups() {
        let r = Router::new(&[route(Some("a.test"), "/api", 0), route(None, "/ws", 1)]);
        assert_eq!(r.route(Some("a.test"), "/ws"), Some(1));
        assert_eq!(r.route(Some("b.test"), "/api"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("chat.example.com:8080"), "chat.example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
