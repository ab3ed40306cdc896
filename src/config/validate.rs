//! Raw → typed. Every check that can fail lives here, so the running proxy trusts its config.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawBackendTls, RawConfig, RawLimits, RawServer, RawTimeouts, RawTls, RawUpstream,
};
use super::{
    BackendTls, Balance, Certificate, Config, ConfigError, HashKeySpec, HostPattern, Limits,
    LogFormat, Route, Server, Timeouts, TlsConfig, Upstream, line_of, parse_duration,
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

    let tls = match &raw.tls {
        Some(t) => Some(tls(&check, t)?),
        None => None,
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
        tls,
        routes,
        upstreams,
    })
}

fn tls(check: &Checker, raw: &RawTls) -> Result<TlsConfig, ConfigError> {
    let listen = match &raw.listen {
        Some(l) => Some(check.addr(l, "tls.listen")?),
        None => None,
    };
    let mut certificates = vec![certificate(check, &raw.cert, &raw.key, "tls", Vec::new())?];
    for extra in &raw.certificates {
        let c = extra.get_ref();
        let mut names = Vec::new();
        if let Some(list) = &c.server_names {
            for name in list.get_ref() {
                let lower = name.trim().to_ascii_lowercase();
                let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                if bare.is_empty() || bare.contains('*') || bare.contains(':') || bare.contains('/')
                {
                    return check.error(
                        list.span(),
                        "tls.certificates.server_names",
                        format!("`{name}` is not a server name"),
                        Some("write \"chat.example.com\" or \"*.example.com\"".into()),
                    );
                }
                names.push(lower);
            }
        }
        certificates.push(certificate(
            check,
            &c.cert,
            &c.key,
            "tls.certificates",
            names,
        )?);
    }
    Ok(TlsConfig {
        listen,
        certificates,
        handshake_timeout: check.duration(
            &raw.handshake_timeout,
            "tls.handshake_timeout",
            Duration::from_secs(10),
        )?,
        reload_interval: check.duration(
            &raw.reload_interval,
            "tls.reload_interval",
            Duration::from_secs(10),
        )?,
    })
}

/// Loads one cert/key pair now, so a missing file or a mismatched key stops the start with the
/// line of the key at fault.
fn certificate(
    check: &Checker,
    cert: &Spanned<String>,
    key: &Spanned<String>,
    table: &str,
    server_names: Vec<String>,
) -> Result<Certificate, ConfigError> {
    use crate::tls::CertError;
    let cert_path = std::path::PathBuf::from(cert.get_ref());
    let key_path = std::path::PathBuf::from(key.get_ref());
    match crate::tls::load_certified_key(&cert_path, &key_path) {
        Ok((loaded, info)) => Ok(Certificate {
            server_names,
            cert: cert_path,
            key: key_path,
            loaded,
            info,
        }),
        Err(e) => {
            let (span, field, hint) = match &e {
                CertError::Read { path, .. } if *path == key_path => (
                    key.span(),
                    "key",
                    "check the path; relative paths start from the working directory",
                ),
                CertError::Read { .. } => (
                    cert.span(),
                    "cert",
                    "check the path; relative paths start from the working directory",
                ),
                CertError::NoCertificate { .. } | CertError::Parse { .. } => (
                    cert.span(),
                    "cert",
                    "the file must hold the PEM chain, leaf first",
                ),
                CertError::NoKey { .. } | CertError::BadKey { .. } => (
                    key.span(),
                    "key",
                    "the file must hold a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ),
                CertError::Mismatch { .. } => {
                    (key.span(), "key", "pair each certificate with its own key")
                }
            };
            check.error(
                span,
                &format!("{table}.{field}"),
                e.to_string(),
                Some(hint.to_owned()),
            )
        }
    }
}

fn backend_tls(
    check: &Checker,
    raw: &Spanned<RawBackendTls>,
    key: &str,
) -> Result<BackendTls, ConfigError> {
    let t = raw.get_ref();
    let server_name = t.server_name.get_ref().trim().to_owned();
    if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
        return check.error(
            t.server_name.span(),
            &format!("{key}.server_name"),
            format!("`{server_name}` is not a DNS name or IP address"),
            None,
        );
    }
    let ca = t.ca.as_ref().map(|c| std::path::PathBuf::from(c.get_ref()));
    match crate::tls::client::client_config(ca.as_deref()) {
        Ok(client) => Ok(BackendTls {
            server_name,
            ca,
            client,
        }),
        Err(e) => check.error(
            t.ca.as_ref().map_or(raw.span(), |c| c.span()),
            &format!("{key}.ca"),
            e.to_string(),
            Some("the file must hold the PEM certificate of the CA that signs the backends".into()),
        ),
    }
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
    let tls = match &raw.tls {
        Some(t) => Some(backend_tls(check, t, &key("tls"))?),
        None => None,
    };
    Ok(Upstream {
        name: name.to_owned(),
        balance,
        hash_key,
        load_factor,
        tls,
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
