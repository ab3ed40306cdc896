//! Raw → typed. Every check that can fail lives here, so the running proxy trusts its config.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawDrain, RawLimits, RawTimeouts, RawWebSocket};
use super::{
    Config, ConfigError, HostPattern, Limits, LogFormat, Route, Timeouts, line_of, parse_duration,
};

mod admin;
mod admission;
mod health_check;
mod log;
mod pacing;
mod sticky_cookie;
mod tls;
mod tunnel;
mod upstream;

/// Upstream names that would collide with a metric label value switchboard uses itself.
const RESERVED_NAMES: [&str; 1] = ["none"];

/// Largest weight accepted; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 256;

/// Carries the source text so errors can turn spans into line numbers.
pub(super) struct Checker<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    pub(super) fn error<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            origin: self.origin.to_owned(),
            line: Some(line_of(self.src, span.start)),
            key: Some(key.to_owned()),
            message: message.into(),
            hint: hint.into(),
        })
    }

    pub(super) fn addr(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = value.get_ref().parse::<SocketAddr>() {
            return Ok(addr);
        }
        let resolved = value
            .get_ref()
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next());
        match resolved {
            Some(addr) => Ok(addr),
            None => self.error(
                value.span(),
                key,
                format!("`{}` is not a usable address", value.get_ref()),
                Some("write \"IP:PORT\" or \"HOSTNAME:PORT\", e.g. \"127.0.0.1:8080\"".into()),
            ),
        }
    }

    pub(super) fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_or_zero(value, key, default)?;
        match value {
            Some(v) if d.is_zero() => self.error(v.span(), key, "must be longer than zero", None),
            _ => Ok(d),
        }
    }

    /// Like [`Checker::duration`], but "0s" is accepted (for keys where zero means "none").
    pub(super) fn duration_or_zero(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref()).or_else(|m| self.error(v.span(), key, m, None)),
        }
    }

    pub(super) fn count(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        if !range.contains(&n) {
            return self.error(
                value.span(),
                key,
                format!(
                    "{n} is out of range; use {} to {}",
                    range.start(),
                    range.end()
                ),
                None,
            );
        }
        Ok(n as usize)
    }
}

/// Turns the raw file into a [`Config`] or the first error found, in file order.
pub(super) fn validate(raw: RawConfig, src: &str, origin: &str) -> Result<Config, ConfigError> {
    let check = Checker { src, origin };
    let listen = check.addr(&raw.listen, "listen")?;
    let (admin, admin_token) = match &raw.admin {
        Some(admin) => (
            Some(check.addr(&admin.listen, "admin.listen")?),
            admin::token(&check, admin)?,
        ),
        None => (None, None),
    };
    let limits = limits(&check, raw.limits.as_ref().unwrap_or(&RawLimits::default()))?;
    let timeouts = timeouts(
        &check,
        raw.timeouts.as_ref().unwrap_or(&RawTimeouts::default()),
    )?;
    let drain = tunnel::drain(&check, raw.drain.as_ref().unwrap_or(&RawDrain::default()))?;
    let websocket = tunnel::websocket(
        &check,
        raw.websocket.as_ref().unwrap_or(&RawWebSocket::default()),
    )?;
    let log_format = match raw.log.as_ref().and_then(|log| log.format.as_ref()) {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return check.error(
                    f.span(),
                    "log.format",
                    format!("unknown log format `{other}`"),
                    Some("use \"text\" or \"json\"".into()),
                );
            }
        },
    };

    let log_level = log::level(&check, raw.log.as_ref())?;

    let tls = match &raw.tls {
        Some(t) => Some(tls::tls(&check, t)?),
        None => None,
    };

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, upstream) in &raw.upstreams {
        if RESERVED_NAMES.contains(&name.as_str()) {
            return check.error(
                upstream.span(),
                &format!("upstream.{name}"),
                format!("`{name}` is reserved: metrics use it for requests that matched no route"),
                Some("choose another name for this upstream".into()),
            );
        }
        upstreams.push(upstream::upstream(&check, name, upstream)?);
    }
    let index: BTreeMap<&str, usize> = raw
        .upstreams
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();

    if raw.routes.is_empty() {
        return check.error(
            raw.listen.span(),
            "route",
            "no [[route]] is defined, so every request would be 404",
            Some("add [[route]] with path_prefix = \"/\" and upstream = \"NAME\"".into()),
        );
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_origins = Vec::with_capacity(raw.routes.len());
    for route in &raw.routes {
        let r = route.get_ref();
        let Some(&upstream) = index.get(r.upstream.get_ref().as_str()) else {
            let known: Vec<&str> = index.keys().copied().collect();
            return check.error(
                r.upstream.span(),
                "route.upstream",
                format!("unknown upstream `{}`", r.upstream.get_ref()),
                Some(if known.is_empty() {
                    "define it with [upstream.NAME] and servers = [\"HOST:PORT\"]".to_owned()
                } else {
                    format!("defined upstreams: {}", known.join(", "))
                }),
            );
        };
        let host = match &r.host {
            None => None,
            Some(h) => Some(host_pattern(&check, h)?),
        };
        let path_prefix = match &r.path_prefix {
            None => "/".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                return check.error(
                    p.span(),
                    "route.path_prefix",
                    format!("`{}` does not start with `/`", p.get_ref()),
                    None,
                );
            }
        };
        if let Some(earlier) = routes
            .iter()
            .position(|other: &Route| other.host == host && other.path_prefix == path_prefix)
        {
            return check.error(
                route.span(),
                "route",
                format!(
                    "this route has the same host and path_prefix as route {} (the first wins, so this one is dead)",
                    earlier + 1
                ),
                Some("remove one, or give them different hosts or path prefixes".into()),
            );
        }
        routes.push(Route {
            host,
            path_prefix,
            upstream,
        });
        route_origins.push(admission::origin_policy(&check, route)?);
    }

    for (key, other, value) in [
        (
            "admin.listen",
            admin,
            raw.admin.as_ref().map(|a| a.listen.span()),
        ),
        (
            "tls.listen",
            tls.as_ref().and_then(|t| t.listen),
            raw.tls
                .as_ref()
                .and_then(|t| t.listen.as_ref())
                .map(|l| l.span()),
        ),
    ] {
        // Port 0 asks the system for a fresh port each time: never a clash.
        if let (Some(addr), Some(span)) = (other, value)
            && addr == listen
            && addr.port() != 0
        {
            return check.error(
                span,
                key,
                format!("{addr} is also `listen`: two listeners cannot share one address"),
                Some("give it a port of its own".into()),
            );
        }
    }

    Ok(Config {
        path: None,
        listen,
        admin,
        admin_token,
        limits,
        timeouts,
        drain,
        websocket,
        log_format,
        log_level,
        access_log: log::access(&check, raw.log.as_ref())?,
        tls,
        routes,
        route_origins,
        upstreams,
    })
}

fn limits(check: &Checker, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let max_connections = check.count(
        &raw.max_connections,
        "limits.max_connections",
        10_000,
        1..=10_000_000,
    )?;
    let max_header_bytes = check.count(
        &raw.max_header_bytes,
        "limits.max_header_bytes",
        32 * 1024,
        1024..=1024 * 1024,
    )?;
    let header_read_timeout = check.duration(
        &raw.header_read_timeout,
        "limits.header_read_timeout",
        Duration::from_secs(10),
    )?;
    Ok(Limits {
        max_connections,
        max_header_bytes,
        header_read_timeout,
        max_tunnels_per_ip: admission::max_tunnels_per_ip(check, raw)?,
        upgrades_per_ip_per_second: admission::upgrades_per_ip_per_second(check, raw)?,
        max_tunnels: check.count(
            &raw.max_tunnels,
            "limits.max_tunnels",
            max_connections,
            1..=10_000_000,
        )?,
        h2_max_streams: check.count(
            &raw.h2_max_streams,
            "limits.h2_max_streams",
            100,
            1..=10_000,
        )? as u32,
        h2_keepalive: check.duration(
            &raw.h2_keepalive,
            "limits.h2_keepalive",
            Duration::from_secs(20),
        )?,
        h2_idle_timeout: check.duration(
            &raw.h2_idle_timeout,
            "limits.h2_idle_timeout",
            Duration::from_secs(60),
        )?,
    })
}

fn timeouts(check: &Checker, raw: &RawTimeouts) -> Result<Timeouts, ConfigError> {
    let tunnel_idle = match &raw.tunnel_idle {
        Some(v) if v.get_ref().trim() == "off" => None,
        other => Some(check.duration(other, "timeouts.tunnel_idle", Duration::from_secs(3600))?),
    };
    Ok(Timeouts {
        connect: check.duration(&raw.connect, "timeouts.connect", Duration::from_secs(3))?,
        handshake: check.duration(
            &raw.handshake,
            "timeouts.handshake",
            Duration::from_secs(10),
        )?,
        request: check.duration(&raw.request, "timeouts.request", Duration::from_secs(60))?,
        tunnel_idle,
        half_closed: check.duration(
            &raw.half_closed,
            "timeouts.half_closed",
            Duration::from_secs(10),
        )?,
        shutdown_delay: check.duration_or_zero(
            &raw.shutdown_delay,
            "timeouts.shutdown_delay",
            Duration::ZERO,
        )?,
        shutdown_grace: check.duration(
            &raw.shutdown_grace,
            "timeouts.shutdown_grace",
            Duration::from_secs(30),
        )?,
        backend_retry: check.duration(
            &raw.backend_retry,
            "timeouts.backend_retry",
            Duration::from_secs(10),
        )?,
        request_body_idle: check.duration(
            &raw.request_body_idle,
            "timeouts.request_body_idle",
            Duration::from_secs(60),
        )?,
        pool_idle: check.duration(&raw.pool_idle, "timeouts.pool_idle", Duration::from_secs(4))?,
    })
}

fn host_pattern(check: &Checker, host: &Spanned<String>) -> Result<HostPattern, ConfigError> {
    let name = host.get_ref().trim().to_ascii_lowercase();
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
    };
    if let Some(suffix) = name.strip_prefix("*.") {
        if valid_label(suffix) {
            return Ok(HostPattern::Wildcard(format!(".{suffix}")));
        }
    } else if valid_label(&name) {
        return Ok(HostPattern::Exact(name));
    }
    check.error(
        host.span(),
        "route.host",
        format!("`{}` is not a host name", host.get_ref()),
        Some("write \"chat.example.com\" or \"*.example.com\", without port or scheme".into()),
    )
}
