//! Raw → typed. Every check that can fail lives here, so the running proxy trusts its config.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawLimits, RawServer, RawTimeouts, RawUpstream};
use super::{
    Balance, Config, ConfigError, HashKeySpec, HostPattern, Limits, LogFormat, Route, Server,
    Timeouts, Upstream, line_of, parse_duration,
};

/// Largest weight accepted; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 256;

/// Carries the source text so errors can turn spans into line numbers.
struct Checker<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    fn error<T>(
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

    fn addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
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

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => self.error(value.span(), key, "must be longer than zero", None),
            Ok(d) => Ok(d),
            Err(message) => self.error(value.span(), key, message, None),
        }
    }

    fn count(
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
    let admin = match &raw.admin {
        Some(admin) => Some(check.addr(&admin.listen, "admin.listen")?),
        None => None,
    };
    let limits = limits(&check, raw.limits.as_ref().unwrap_or(&RawLimits::default()))?;
    let timeouts = timeouts(
        &check,
        raw.timeouts.as_ref().unwrap_or(&RawTimeouts::default()),
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

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, upstream) in &raw.upstreams {
        upstreams.push(self::upstream(&check, name, upstream)?);
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
        routes.push(Route {
            host,
            path_prefix,
            upstream,
        });
    }

    Ok(Config {
        listen,
        admin,
        limits,
        timeouts,
        log_format,
        routes,
        upstreams,
    })
}

fn limits(check: &Checker, raw: &RawLimits) -> Result<Limits, ConfigError> {
    Ok(Limits {
        max_connections: check.count(
            &raw.max_connections,
            "limits.max_connections",
            10_000,
            1..=10_000_000,
        )?,
        max_header_bytes: check.count(
            &raw.max_header_bytes,
            "limits.max_header_bytes",
            32 * 1024,
            1024..=1024 * 1024,
        )?,
        header_read_timeout: check.duration(
            &raw.header_read_timeout,
            "limits.header_read_timeout",
            Duration::from_secs(10),
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

fn upstream(
    check: &Checker,
    name: &str,
    spanned: &Spanned<RawUpstream>,
) -> Result<Upstream, ConfigError> {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.{field}");
    let balance = match &raw.balance {
        None => Balance::LeastConn,
        Some(b) => match b.get_ref().as_str() {
            "least-conn" => Balance::LeastConn,
            "sticky-hash" => Balance::StickyHash,
            "round-robin" => Balance::RoundRobin,
            other => {
                return check.error(
                    b.span(),
                    &key("balance"),
                    format!("unknown strategy `{other}`"),
                    Some("use \"least-conn\", \"sticky-hash\" or \"round-robin\"".into()),
                );
            }
        },
    };
    let hash_key = match &raw.hash_key {
        None if balance == Balance::StickyHash => {
            return check.error(
                spanned.span(),
                &key("hash_key"),
                "sticky-hash needs a hash_key",
                Some(
                    "add hash_key = \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
                        .into(),
                ),
            );
        }
        None => None,
        Some(k) if balance != Balance::StickyHash => {
            return check.error(
                k.span(),
                &key("hash_key"),
                "hash_key only applies to balance = \"sticky-hash\"",
                Some("remove it, or set balance = \"sticky-hash\"".into()),
            );
        }
        Some(k) => Some(hash_key(check, k, &key("hash_key"))?),
    };
    let load_factor = match &raw.load_factor {
        None => None,
        Some(f) if balance != Balance::StickyHash => {
            return check.error(
                f.span(),
                &key("load_factor"),
                "load_factor only applies to balance = \"sticky-hash\"",
                None,
            );
        }
        Some(f) if !(1.0..=100.0).contains(f.get_ref()) => {
            return check.error(
                f.span(),
                &key("load_factor"),
                format!("{} is out of range", f.get_ref()),
                Some("use a factor from 1.0 to 100.0, e.g. 1.25".into()),
            );
        }
        Some(f) => Some(*f.get_ref()),
    };

    if raw.servers.get_ref().is_empty() {
        return check.error(
            raw.servers.span(),
            &key("servers"),
            "the server list is empty",
            Some("list at least one backend, e.g. servers = [\"127.0.0.1:9001\"]".into()),
        );
    }
    let mut servers: Vec<Server> = Vec::with_capacity(raw.servers.get_ref().len());
    for server in raw.servers.get_ref() {
        let RawServer { addr, weight } = server.get_ref();
        let spanned_addr = Spanned::new(server.span(), addr.clone());
        let socket = check.addr(&spanned_addr, &key("servers"))?;
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return check.error(
                server.span(),
                &key("servers"),
                format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"),
                None,
            );
        }
        if servers.iter().any(|s| s.name == *addr) {
            return check.error(
                server.span(),
                &key("servers"),
                format!("`{addr}` is listed twice"),
                Some("give it a higher weight instead".into()),
            );
        }
        servers.push(Server {
            addr: socket,
            name: addr.clone(),
            weight: weight as u32,
        });
    }
    Ok(Upstream {
        name: name.to_owned(),
        balance,
        hash_key,
        load_factor,
        servers,
    })
}

fn hash_key(check: &Checker, k: &Spanned<String>, key: &str) -> Result<HashKeySpec, ConfigError> {
    let text = k.get_ref().as_str();
    let parsed = match text.split_once(':') {
        None if text == "ip" => Some(HashKeySpec::Ip),
        Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .map(HashKeySpec::Header),
        Some(("cookie", name)) if !name.is_empty() => Some(HashKeySpec::Cookie(name.to_owned())),
        Some(("query", name)) if !name.is_empty() => Some(HashKeySpec::Query(name.to_owned())),
        _ => None,
    };
    match parsed {
        Some(spec) => Ok(spec),
        None => check.error(
            k.span(),
            key,
            format!("`{text}` is not a hash key"),
            Some("use \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"".into()),
        ),
    }
}
