//! What `switchboard check` reports: the validated config, spelled the way the config file
//! spells it (`sticky-hash`, `cookie:io`, `"10s"`), never as Rust values. One structure feeds
//! both the text for people and the JSON for tools, so the two always say the same.

use serde::Serialize;

use super::words::{balance, duration, hash_key, host_pattern, origin_pattern};
use crate::config::{Config, HealthCheckKind, LogFormat};

/// The whole report of a valid config.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The config file, as given on the command line.
    pub config: String,
    /// Always true: an invalid config gets no report, only its error.
    pub ok: bool,
    /// Every listener: `http`, `https` and `admin`, in that order.
    pub listeners: Vec<ListenerReport>,
    /// `proxy_protocol`: `v1` or `v2`, the header every client connection starts with; `None`: off.
    pub proxy_protocol: Option<&'static str>,
    /// `trusted_proxies`, each block as `network/prefix`; empty: no peer is trusted.
    pub trusted_proxies: Vec<String>,
    /// `[admin] handover_socket`; `None`: no take-over of this process.
    pub handover_socket: Option<String>,
    /// `[log]`.
    pub log: LogReport,
    /// Routes in file order.
    pub routes: Vec<RouteReport>,
    /// TLS certificates, the default one first; empty without `[tls]`.
    pub certificates: Vec<CertificateReport>,
    /// Upstreams by name.
    pub upstreams: Vec<UpstreamReport>,
}

/// One listening address.
#[derive(Debug, Serialize)]
pub struct ListenerReport {
    /// `http`, `https` or `admin`.
    pub kind: &'static str,
    /// `IP:PORT`.
    pub address: String,
}

/// `[log]`.
#[derive(Debug, Serialize)]
pub struct LogReport {
    /// `text` or `json`.
    pub format: &'static str,
    /// The filter directives (`RUST_LOG` wins at run time).
    pub level: String,
}

/// One `[[route]]`.
#[derive(Debug, Serialize)]
pub struct RouteReport {
    /// `chat.example.com` or `*.example.com`; `None`: every host.
    pub host: Option<String>,
    /// The path prefix, `/` by default.
    pub path_prefix: String,
    /// The upstream's name.
    pub upstream: String,
    /// The origins that may open WebSockets; `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    /// Upgrades without `Origin` are refused.
    pub require_origin: bool,
}

/// One certificate of `[tls]`.
#[derive(Debug, Serialize)]
pub struct CertificateReport {
    /// The PEM chain file.
    pub cert: String,
    /// The PEM key file.
    pub key: String,
    /// The default certificate (also for clients without SNI or with an unknown name).
    pub default: bool,
    /// The DNS names the certificate carries.
    pub names: Vec<String>,
    /// `server_names` as configured; empty: chosen for its own names.
    pub server_names: Vec<String>,
    /// Expiry, for people.
    pub expires: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_unix: i64,
}

/// One `[upstream.NAME]`.
#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    /// The table name.
    pub name: String,
    /// `least-conn`, `sticky-hash` or `round-robin`.
    pub balance: &'static str,
    /// `ip`, `header:NAME`, `cookie:NAME` or `query:NAME` (sticky-hash only).
    pub hash_key: Option<String>,
    /// The bounded-load factor (sticky-hash only).
    pub load_factor: Option<f64>,
    /// TLS to the backends.
    pub tls: Option<BackendTlsReport>,
    /// `send_proxy_protocol`: `v1` or `v2`, the header sent first to the backends; `None`: off.
    pub send_proxy_protocol: Option<&'static str>,
    /// The backends in file order.
    pub servers: Vec<ServerReport>,
    /// The `dns:NAME:PORT` servers in file order, and how often they are looked up.
    pub dns: Option<DnsReport>,
    /// Slow-start ramp, e.g. `"30s"`; `"0s"`: off.
    pub slow_start: String,
    /// `max_upgrades_per_second` and `upgrade_burst`.
    pub upgrade_pacing: Option<PacingReport>,
    /// `rebalance_skew` and `rebalance_rate`.
    pub rebalance: Option<RebalanceReport>,
    /// `[upstream.NAME.health_check]`; `None`: passive health only.
    pub health_check: Option<HealthCheckReport>,
}

/// `tls = { server_name, ca }` on an upstream.
#[derive(Debug, Serialize)]
pub struct BackendTlsReport {
    /// The name the backends' certificate must carry.
    pub server_name: String,
    /// The CA file; `None`: the system's roots.
    pub ca: Option<String>,
}

/// One backend.
#[derive(Debug, Serialize)]
pub struct ServerReport {
    /// The address as written in the file (its identity for hashing).
    pub addr: String,
    /// What it resolved to at load.
    pub resolved: String,
    /// Relative share, 1 by default.
    pub weight: u32,
}

/// The `dns:` servers of an upstream: every A/AAAA record of each is a backend.
#[derive(Debug, Serialize)]
pub struct DnsReport {
    /// Each server as written, e.g. `dns:chat.default.svc.cluster.local:9000`.
    pub servers: Vec<String>,
    /// `resolve_interval`, e.g. `"10s"` (the answer's TTL is a floor on it).
    pub resolve_interval: String,
}

/// Per-backend upgrade pacing.
#[derive(Debug, Serialize)]
pub struct PacingReport {
    /// Upgrades per second per backend.
    pub max_upgrades_per_second: f64,
    /// Upgrades admitted at once after a quiet spell.
    pub upgrade_burst: u32,
}

/// Rebalancing of long-lived tunnels.
#[derive(Debug, Serialize)]
pub struct RebalanceReport {
    /// Close the excess above ceil(skew × mean).
    pub skew: f64,
    /// Polite closes per second per upstream.
    pub rate: f64,
}

/// Active health checks.
#[derive(Debug, Serialize)]
pub struct HealthCheckReport {
    /// `tcp`, `http` or `websocket`.
    pub kind: &'static str,
    /// Request path (`http` and `websocket`).
    pub path: Option<String>,
    /// `Host` of the probe; `None`: the server address.
    pub host: Option<String>,
    /// `http` only: the status that passes; `None`: any 2xx.
    pub expect_status: Option<u16>,
    /// Time between probes, e.g. `"5s"`.
    pub interval: String,
    /// Bound of one probe.
    pub timeout: String,
    /// Passed probes in a row that bring a backend up.
    pub rise: u32,
    /// Failed probes in a row that take it down.
    pub fall: u32,
}

impl Report {
    /// The report of `config`, read from `path`.
    pub fn new(path: &str, config: &Config) -> Report {
        let mut listeners = Vec::new();
        let mut listener = |kind, addr: Option<std::net::SocketAddr>| {
            if let Some(addr) = addr {
                listeners.push(ListenerReport {
                    kind,
                    address: addr.to_string(),
                });
            }
        };
        listener("http", config.plain_listen());
        listener("https", config.tls_listen());
        listener("admin", config.admin);
        let routes = config
            .routes
            .iter()
            .zip(&config.route_origins)
            .map(|(route, origins)| RouteReport {
                host: route.host.as_ref().map(host_pattern),
                path_prefix: route.path_prefix.clone(),
                upstream: config.upstreams[route.upstream].name.clone(),
                allowed_origins: origins
                    .allowed
                    .as_ref()
                    .map(|list| list.iter().map(origin_pattern).collect()),
                require_origin: origins.require,
            })
            .collect();
        let certificates = config.tls.iter().flat_map(|tls| {
            tls.certificates
                .iter()
                .enumerate()
                .map(|(i, cert)| CertificateReport {
                    cert: cert.cert.display().to_string(),
                    key: cert.key.display().to_string(),
                    default: i == 0,
                    names: cert.info.names.clone(),
                    server_names: cert.server_names.clone(),
                    expires: cert.info.not_after_text.clone(),
                    expires_unix: cert.info.not_after,
                })
        });
        Report {
            config: path.to_owned(),
            ok: true,
            listeners,
            proxy_protocol: config.proxy_protocol.map(|v| v.as_str()),
            trusted_proxies: config
                .trusted_proxies
                .blocks()
                .iter()
                .map(|block| block.to_string())
                .collect(),
            handover_socket: config
                .handover_socket
                .as_ref()
                .map(|path| path.display().to_string()),
            log: LogReport {
                format: match config.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: config.log_level.clone(),
            },
            routes,
            certificates: certificates.collect(),
            upstreams: config.upstreams.iter().map(upstream).collect(),
        }
    }
}

fn upstream(upstream: &crate::config::Upstream) -> UpstreamReport {
    UpstreamReport {
        name: upstream.name.clone(),
        balance: balance(upstream.balance),
        hash_key: upstream.hash_key.as_ref().map(hash_key),
        load_factor: upstream.load_factor,
        tls: upstream.tls.as_ref().map(|tls| BackendTlsReport {
            server_name: tls.server_name.clone(),
            ca: tls.ca.as_ref().map(|ca| ca.display().to_string()),
        }),
        send_proxy_protocol: upstream.send_proxy_protocol.map(|v| v.as_str()),
        servers: upstream
            .servers
            .iter()
            .map(|server| ServerReport {
                addr: server.name.clone(),
                resolved: server.addr.to_string(),
                weight: server.weight,
            })
            .collect(),
        dns: (!upstream.dns.is_empty()).then(|| DnsReport {
            servers: upstream.dns.iter().map(|d| d.spec.clone()).collect(),
            resolve_interval: duration(upstream.resolve_interval),
        }),
        slow_start: duration(upstream.slow_start),
        upgrade_pacing: upstream.upgrade_pacing.map(|(rate, burst)| PacingReport {
            max_upgrades_per_second: rate,
            upgrade_burst: burst,
        }),
        rebalance: upstream.rebalance_skew.map(|skew| RebalanceReport {
            skew,
            rate: upstream.rebalance_rate,
        }),
        health_check: upstream
            .health_check
            .as_ref()
            .map(|check| HealthCheckReport {
                kind: match check.kind {
                    HealthCheckKind::Tcp => "tcp",
                    HealthCheckKind::Http => "http",
                    HealthCheckKind::WebSocket => "websocket",
                },
                path: (check.kind != HealthCheckKind::Tcp).then(|| check.path.clone()),
                host: check.host.clone(),
                expect_status: check.expect_status,
                interval: duration(check.interval),
                timeout: duration(check.timeout),
                rise: check.rise,
                fall: check.fall,
            }),
    }
}
