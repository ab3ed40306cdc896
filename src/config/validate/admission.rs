//! Who may open a WebSocket: a route's `allowed_origins` and `require_origin`, and the
//! per-address limits in `[limits]`. The `Origin` parser lives here too, so a config entry and
//! a browser's header are taken apart by the same rules.

use std::net::Ipv6Addr;

use toml::Spanned;

use super::Checker;
use super::pacing::number;
use crate::config::raw::{RawLimits, RawRoute};
use crate::config::words::Found;
use crate::config::{ConfigError, HostPattern, Origin, OriginPattern, OriginPolicy};

/// Largest `limits.max_tunnels_per_ip`, the same bound as `limits.max_connections`.
const MAX_TUNNELS_PER_IP: i64 = 10_000_000;

/// The hint of every malformed `allowed_origins` entry.
const ORIGIN_HINT: &str = "write scheme://host[:port] with nothing after it, e.g. \
                           \"https://chat.example.com\", \"https://*.example.com\" or \
                           \"http://localhost:3000\"; or \"null\"";

impl Origin {
    /// Parses an `Origin` header value: `null`, or `scheme://host[:port]` (no path, no user).
    /// Scheme and host are lower-cased; the port gets the scheme's default when none is given.
    /// The error says what is wrong, for logs and config messages.
    pub fn parse(text: &str) -> Result<Origin, &'static str> {
        if text.eq_ignore_ascii_case("null") {
            return Ok(Origin::Null);
        }
        let (scheme, host, port) = split(text, false)?;
        Ok(Origin::Site { scheme, host, port })
    }
}

/// A route's `allowed_origins` and `require_origin`; a bad entry is reported and left out.
pub(super) fn origin_policy(check: &Checker, route: &Spanned<RawRoute>) -> OriginPolicy {
    let raw = route.get_ref();
    let allowed = raw.allowed_origins.as_ref().map(|list| {
        list.get_ref()
            .iter()
            .filter_map(|entry| check.keep(origin_pattern(check, entry)))
            .collect::<Vec<_>>()
    });
    let require = raw.require_origin.as_ref().is_some_and(|r| *r.get_ref());
    // The list as written: one whose entries were all wrong is not the empty list.
    if let (Some(r), Some(list)) = (&raw.require_origin, &raw.allowed_origins)
        && *r.get_ref()
        && list.get_ref().is_empty()
    {
        check.report(
            r.span(),
            "route.require_origin",
            "with allowed_origins = [] and require_origin = true no WebSocket can ever open on \
             this route",
            Some(
                "list the pages that may connect in allowed_origins, or set \
                 require_origin = false to let only clients without Origin (non-browsers) in"
                    .into(),
            ),
        );
    }
    OriginPolicy { allowed, require }
}

/// One `allowed_origins` entry.
fn origin_pattern(check: &Checker, entry: &Spanned<String>) -> Result<OriginPattern, ConfigError> {
    let key = "route.allowed_origins";
    let text = entry.get_ref().as_str();
    if text == "*" {
        return check.error(
            entry.span(),
            key,
            "`*` is not an origin",
            Some("leave allowed_origins out to allow any origin".into()),
        );
    }
    if text.eq_ignore_ascii_case("null") {
        return Ok(OriginPattern::Null);
    }
    match split(text, true) {
        Ok((scheme, host, port)) => {
            let host = match host.strip_prefix("*.") {
                Some(suffix) => HostPattern::Wildcard(format!(".{suffix}")),
                None => HostPattern::Exact(host),
            };
            Ok(OriginPattern::Site { scheme, host, port })
        }
        Err(why) => check.error(
            entry.span(),
            key,
            format!("`{text}` is not an origin: {why}"),
            Some(match without_path(text) {
                Some(origin) => format!("write \"{origin}\": an origin is scheme://host[:port]"),
                None => ORIGIN_HINT.into(),
            }),
        ),
    }
}

/// `https://chat.example.com/app` → `https://chat.example.com`, when that is an origin.
fn without_path(text: &str) -> Option<&str> {
    let authority = text.find("://")? + 3;
    let end = authority + text[authority..].find(['/', '?', '#'])?;
    let origin = &text[..end];
    split(origin, true).is_ok().then_some(origin)
}

/// `scheme://host[:port]` → (scheme, host, port), lower-cased, the default port filled in.
/// With `wildcard`, the host may start with `*.`.
fn split(text: &str, wildcard: bool) -> Result<(String, String, Option<u16>), &'static str> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("it has no scheme (an origin is scheme://host[:port])");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("the scheme is not valid");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment, not even a trailing /");
    }
    if rest.contains('@') {
        return Err("an origin has no user name or password");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let Some((inner, after)) = bracketed.split_once(']') else {
                return Err("the IPv6 address has no closing ]");
            };
            if inner.parse::<Ipv6Addr>().is_err() {
                return Err("the host is not a valid IPv6 address");
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or("junk after the IPv6 address")?,
                ),
            };
            (&rest[..inner.len() + 2], port)
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err("the port is not a number from 1 to 65535"),
        },
    };
    if !host.starts_with('[') {
        let name = match host.strip_prefix("*.") {
            Some(suffix) if wildcard => suffix,
            _ => host,
        };
        check_name(name, wildcard)?;
    }
    let scheme = scheme.to_ascii_lowercase();
    let port = port.or(default_port(&scheme));
    Ok((scheme, host.to_ascii_lowercase(), port))
}

/// A DNS name or IPv4 address: dot-separated labels of letters, digits, `-` and `_`.
fn check_name(name: &str, wildcard: bool) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the host is missing");
    }
    if name.contains('*') {
        return Err(if wildcard {
            "a wildcard is only allowed as the whole first label, as in https://*.example.com"
        } else {
            "the host has a `*`"
        });
    }
    if !name.is_ascii() {
        return Err(
            "the host is not ASCII; write an international name in its xn-- form, as \
                    browsers send it",
        );
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !name.split('.').all(label_ok) {
        return Err("the host is not a valid name");
    }
    Ok(())
}

/// The port a browser leaves out of the origin of a page (or socket) on `scheme`.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `limits.max_tunnels_per_ip`, off by default.
pub(super) fn max_tunnels_per_ip(
    check: &Checker,
    raw: &RawLimits,
) -> Result<Option<u32>, ConfigError> {
    let key = "limits.max_tunnels_per_ip";
    Ok(match &raw.max_tunnels_per_ip {
        None => None,
        Some(v) => {
            match v.get_ref() {
                toml::Value::String(s) if is_off(s) => None,
                toml::Value::Integer(n) if (1..=MAX_TUNNELS_PER_IP).contains(n) => Some(*n as u32),
                toml::Value::Integer(n) => {
                    return check.error(
                    v.span(),
                    key,
                    format!("{n} is out of range; use 1 to {MAX_TUNNELS_PER_IP}, or \"off\""),
                    Some(
                        "the most WebSocket tunnels one client address may hold at once, e.g. 100"
                            .into(),
                    ),
                );
                }
                other => {
                    let found = Found::of(other);
                    return check.error(
                    v.span(),
                    key,
                    format!("expected a whole number of tunnels such as 100, or \"off\"; found {found}"),
                    Some(match found.number() {
                        Some(n) if n.parse::<i64>().is_ok() => {
                            format!("write {n} without quotes, or \"off\"")
                        }
                        _ => "write the number bare (no quotes, no decimals), or \"off\"".into(),
                    }),
                );
                }
            }
        }
    })
}

/// `limits.upgrades_per_ip_per_second` → `(rate, burst)`, off by default.
pub(super) fn upgrades_per_ip_per_second(
    check: &Checker,
    raw: &RawLimits,
) -> Result<Option<(f64, u32)>, ConfigError> {
    let key = "limits.upgrades_per_ip_per_second";
    Ok(match &raw.upgrades_per_ip_per_second {
        None => None,
        Some(v) if matches!(v.get_ref(), toml::Value::String(s) if is_off(s)) => None,
        Some(v) => {
            let rate = number(check, v, key, "5").map_err(|mut e| {
                if !v.get_ref().is_float() {
                    e.hint = e.hint.take().map(|hint| format!("{hint}, or \"off\""));
                }
                e
            })?;
            if rate <= 0.0 {
                return check.error(
                    v.span(),
                    key,
                    format!("{rate} is not a rate; use upgrades per second above zero"),
                    Some("e.g. 5, or 0.5 for one every two seconds; \"off\" for no limit".into()),
                );
            }
            // One second's worth at once, and at least one so a slow rate still admits any.
            let burst = rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
            Some((rate, burst))
        }
    })
}

/// `"off"`, in any case.
fn is_off(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("off")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(scheme: &str, host: &str, port: Option<u16>) -> Origin {
        Origin::Site {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn origins_are_taken_apart_lower_cased_with_the_default_port() {
        assert_eq!(
            Origin::parse("HTTPS://Chat.Example.COM"),
            Ok(site("https", "chat.example.com", Some(443)))
        );
        assert_eq!(
            Origin::parse("https://chat.example.com:443"),
            Ok(site("https", "chat.example.com", Some(443)))
        );
        assert_eq!(
            Origin::parse("http://localhost:3000"),
            Ok(site("http", "localhost", Some(3000)))
        );
        assert_eq!(
            Origin::parse("http://[::1]:8080"),
            Ok(site("http", "[::1]", Some(8080)))
        );
        assert_eq!(
            Origin::parse("chrome-extension://abcdef"),
            Ok(site("chrome-extension", "abcdef", None))
        );
        assert_eq!(Origin::parse("null"), Ok(Origin::Null));
        for bad in [
            "chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/app",
            "https://chat.example.com?x",
            "https://user@chat.example.com",
            "https://chat.example.com:",
            "https://chat.example.com:0",
            "https://chat.example.com:65536",
            "https://chat.example.com:+80",
            "https://*.example.com",
            "https://",
            "https://a..b",
            "https://[::1",
            "https://[::g]",
            "https://[::1]x",
            "1https://a.b",
            "https://bücher.example",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_takes_one_or_more_labels_but_not_the_bare_suffix() {
        let (scheme, host, port) = split("https://*.Example.com", true).unwrap();
        let pattern = OriginPattern::Site {
            scheme,
            host: HostPattern::Wildcard(host.strip_prefix('*').unwrap().to_owned()),
            port,
        };
        let matches = |origin: &str| pattern.matches(&Origin::parse(origin).unwrap());
        assert!(matches("https://a.example.com"));
        assert!(matches("https://a.b.example.com"));
        assert!(matches("https://A.EXAMPLE.COM:443"));
        assert!(!matches("https://example.com"));
        assert!(!matches("https://badexample.com"));
        assert!(!matches("https://a.example.com.evil.test"));
        assert!(!matches("http://a.example.com"));
        assert!(!matches("https://a.example.com:8443"));
        assert!(!OriginPattern::Null.matches(&Origin::parse("https://a.example.com").unwrap()));
        assert!(OriginPattern::Null.matches(&Origin::Null));
        assert!(split("https://a.*.example.com", true).is_err());
        assert!(split("https://*example.com", true).is_err());
        assert!(split("https://*.", true).is_err());
    }
}
