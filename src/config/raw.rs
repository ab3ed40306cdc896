//! The configuration exactly as the TOML file spells it.
//!
//! Field meanings are documented in `config/switchboard.toml` (printed by
//! `switchboard --print-default-config`); these structs only mirror it.
//! Every struct denies unknown fields so that a typo is an error with a line number rather than a
//! silently ignored setting. Values that need a semantic check later keep their span
//! (`toml::Spanned`) so the error can point at the line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// A duration key as written. Any TOML value is taken here and read by the one duration check
/// (`Checker::duration_value`), so `connect = 120` gets "write \"120s\"" rather than a type
/// error, and `"OFF"` is recognised in any case where "off" is allowed.
pub type RawDuration = Spanned<toml::Value>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Spanned<String>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub admin: Option<RawAdmin>,
    pub limits: Option<RawLimits>,
    pub timeouts: Option<RawTimeouts>,
    pub drain: Option<RawDrain>,
    pub websocket: Option<RawWebSocket>,
    pub log: Option<RawLog>,
    pub runtime: Option<RawRuntime>,
    pub tls: Option<RawTls>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    pub dns: Option<Spanned<RawDns>>,
}

/// `[dns]`: the resolver behind `dns:` servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub nameservers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[admin]`: the metrics and health listener, the file holding the `/admin/*` token, and the
/// Unix socket a new process takes the listeners over from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    pub token_file: Option<Spanned<String>>,
    pub handover_socket: Option<Spanned<String>>,
}

/// `[limits]`: protection of the front end. The per-address limits are a number or `"off"`,
/// so they stay `toml::Value`s and are checked by hand for a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub header_read_timeout: Option<RawDuration>,
    pub max_tunnels_per_ip: Option<Spanned<toml::Value>>,
    pub upgrades_per_ip_per_second: Option<Spanned<toml::Value>>,
    pub max_tunnels: Option<Spanned<i64>>,
    pub h2_max_streams: Option<Spanned<i64>>,
    pub h2_keepalive: Option<RawDuration>,
    pub h2_idle_timeout: Option<RawDuration>,
}

/// `[timeouts]`: durations written like "250ms", "10s", "1m30s", "1.5h".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<RawDuration>,
    pub handshake: Option<RawDuration>,
    pub request: Option<RawDuration>,
    pub tunnel_idle: Option<RawDuration>,
    pub half_closed: Option<RawDuration>,
    pub shutdown_delay: Option<RawDuration>,
    pub shutdown_grace: Option<RawDuration>,
    pub backend_retry: Option<RawDuration>,
    pub request_body_idle: Option<RawDuration>,
    pub pool_idle: Option<RawDuration>,
}

/// `[drain]`: how many tunnels are ended politely at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    pub spread: Option<RawDuration>,
    pub close_code: Option<Spanned<i64>>,
    pub close_linger: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
}

/// `[websocket]`: pings, message size and tunnel age. `max_message_bytes` is an integer or
/// `"off"` and `lifetime_jitter` a percentage in quotes, so they stay `toml::Value`s and are
/// checked by hand for a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub ping_interval: Option<RawDuration>,
    pub max_message_bytes: Option<Spanned<toml::Value>>,
    pub max_lifetime: Option<RawDuration>,
    pub lifetime_jitter: Option<Spanned<toml::Value>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub access: Option<Spanned<String>>,
    pub access_query: Option<Spanned<bool>>,
    pub level: Option<Spanned<String>>,
}

/// `[runtime]`: how many event loops, and of which kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub mode: Option<Spanned<String>>,
    pub threads: Option<Spanned<i64>>,
}

/// `[tls]`: TLS termination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Option<Spanned<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertificate>>,
    pub handshake_timeout: Option<RawDuration>,
    pub reload_interval: Option<RawDuration>,
}

/// One `[[tls.certificates]]`, chosen by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub server_names: Option<Spanned<Vec<String>>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `tls = { server_name = "…", ca = "…" }` on an upstream: TLS to the backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    pub server_name: Spanned<String>,
    pub ca: Option<Spanned<String>>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub require_origin: Option<Spanned<bool>>,
}

/// One `[upstream.NAME]`. The rates and the skew may be written as integers or floats, so they
/// stay `toml::Value`s and are checked by hand for a clear message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub balance: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub load_factor: Option<Spanned<f64>>,
    pub tls: Option<Spanned<RawBackendTls>>,
    pub servers: Spanned<Vec<Spanned<RawServer>>>,
    pub resolve_interval: Option<RawDuration>,
    pub slow_start: Option<RawDuration>,
    pub max_upgrades_per_second: Option<Spanned<toml::Value>>,
    pub upgrade_burst: Option<Spanned<i64>>,
    pub rebalance_skew: Option<Spanned<toml::Value>>,
    pub rebalance_rate: Option<Spanned<toml::Value>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub sticky_cookie: Option<Spanned<RawStickyCookie>>,
    pub send_proxy_protocol: Option<Spanned<String>>,
}

/// `sticky_cookie = { name = "…", secret_file = "…", max_age = "1h" }` on an upstream: a signed
/// cookie that pins a client to the backend it was given. `secret_file` is optional here so that
/// its absence gets an error with the key and a hint rather than serde's message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStickyCookie {
    pub name: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
}

/// `[upstream.NAME.health_check]`: active probes of each backend. `kind` is optional here so
/// that its absence gets an error with the key and a hint rather than serde's message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<i64>>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

/// A server is either `"host:port"` or `{ addr = "host:port", weight = N }`.
#[derive(Debug)]
pub struct RawServer {
    pub addr: String,
    pub weight: Option<i64>,
}

/// The table form of a server, kept strict so `{ adr = … }` is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTable {
    addr: String,
    weight: Option<i64>,
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;

        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#"a server address "host:port" or a table { addr = "host:port", weight = N }"#,
                )
            }

            fn visit_str<E: de::Error>(self, addr: &str) -> Result<RawServer, E> {
                Ok(RawServer {
                    addr: addr.to_owned(),
                    weight: None,
                })
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawServer, M::Error> {
                let table =
                    RawServerTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawServer {
                    addr: table.addr,
                    weight: table.weight,
                })
            }
        }

        deserializer.deserialize_any(ServerVisitor)
    }
}
