//! Configuration: TOML in, an immutable, validated [`Config`] out.
//!
//! Loading is two stages. [`raw`] mirrors the file (unknown keys are errors); [`validate`] turns it
//! into typed values (socket addresses, durations, resolved upstream indices) so the runtime never
//! re-checks anything. Every failure is a [`ConfigError`] that names the file, the line and the
//! key in the config's own words, and says how to fix it; one run reports every mistake in the
//! file (up to [`MAX_ERRORS`]).

mod duration;
mod error;
mod parse;
mod raw;
mod spelling;
mod validate;
mod words;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use duration::{DurationError, format_duration, parse_duration};
pub use error::{ConfigError, MAX_ERRORS};

/// A validated configuration. Built once; shared read-only.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config was read from (`None` for text given directly); a reload reads it
    /// again.
    pub path: Option<PathBuf>,
    /// Client-facing listener address.
    pub listen: SocketAddr,
    /// `proxy_protocol`: the PROXY header every client connection must start with (from a
    /// peer in `trusted_proxies`); `None`: off.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// `trusted_proxies`: the peers whose PROXY header, or last `X-Forwarded-For` entry, names
    /// the client.
    pub trusted_proxies: Arc<crate::proxy_protocol::trusted::TrustedProxies>,
    /// The admin listener (metrics, health, `/admin/*`), if configured.
    pub admin: Option<SocketAddr>,
    /// The bearer token every `/admin/*` endpoint then requires (read from `admin.token_file`).
    pub admin_token: Option<String>,
    /// `admin.handover_socket`: the Unix socket where a new process started with `--take-over`
    /// gets the listening sockets ([`crate::handover`]); changing it takes a restart.
    pub handover_socket: Option<PathBuf>,
    /// Front-end protection limits.
    pub limits: Limits,
    /// Timeouts for each phase of the data path.
    pub timeouts: Timeouts,
    /// How tunnels are ended politely (shutdown, and later drains).
    pub drain: Drain,
    /// What switchboard does inside WebSocket tunnels: pings, size and age limits.
    pub websocket: WebSocket,
    /// Log output format.
    pub log_format: LogFormat,
    /// `[log] level`: which lines are written, as tracing filter directives (`"info"`,
    /// `"warn,switchboard=debug"`); `RUST_LOG`, when set, wins. Read at start only.
    pub log_level: String,
    /// The access log's switches.
    pub access_log: AccessLog,
    /// `[runtime]`: the event loops. Read at start only.
    pub runtime: Runtime,
    /// TLS termination, if configured.
    pub tls: Option<TlsConfig>,
    /// Routes in file order; the router orders them by specificity.
    pub routes: Vec<Route>,
    /// Each route's `allowed_origins` and `require_origin`, index-aligned with `routes`.
    pub route_origins: Vec<OriginPolicy>,
    /// Upstreams sorted by name; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// `[dns]`: where `dns:` servers are looked up.
    pub dns: Dns,
}

/// `[dns]`: the resolver behind `dns:` servers. Separate from the system's so that a cluster's
/// node-local cache (or a test's responder) can be named without touching `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Asked over UDP (and TCP for truncated answers), in order; empty: the system's resolver
    /// configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

/// A `dns:NAME:PORT` server: every A and AAAA record of NAME is a backend on PORT, looked up at
/// start and every `resolve_interval`, so backends can come and go without a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServer {
    /// As written, `dns:NAME:PORT`: what logs and errors call it.
    pub spec: String,
    /// The name looked up.
    pub host: String,
    /// The port every discovered address is given.
    pub port: u16,
    /// The weight every discovered backend is given, 1..=256.
    pub weight: u32,
}

impl Config {
    /// The plain-HTTP listener: `listen`, unless `[tls]` without its own `listen` made it TLS.
    pub fn plain_listen(&self) -> Option<SocketAddr> {
        match &self.tls {
            Some(tls) if tls.listen.is_none() => None,
            _ => Some(self.listen),
        }
    }

    /// The TLS listener: `tls.listen`, or `listen` when `[tls]` has none.
    pub fn tls_listen(&self) -> Option<SocketAddr> {
        self.tls
            .as_ref()
            .map(|tls| tls.listen.unwrap_or(self.listen))
    }
}

/// `[runtime]`: how connections are spread over the cores (see [`crate::workers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// One loop per core (default) or one work-stealing pool.
    pub mode: crate::workers::RuntimeMode,
    /// Event loops or worker threads; `None`: `TOKIO_WORKER_THREADS`, else the cores.
    pub threads: Option<usize>,
}

impl Runtime {
    /// The threads to run.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(crate::workers::default_threads)
    }
}

/// TLS termination settings, with the certificates already loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// A separate TLS listener; `None` makes the top-level `listen` the TLS listener.
    pub listen: Option<SocketAddr>,
    /// The default certificate first, then the `[[tls.certificates]]` in file order.
    pub certificates: Vec<Certificate>,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// One certificate and the names it is chosen for.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// SNI names (lower case; `*.example.com` for wildcards) this certificate answers; for the
    /// default certificate also the fallback for every other name.
    pub server_names: Vec<String>,
    /// PEM chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
    /// The loaded key and chain, checked to match.
    pub loaded: Arc<rustls::sign::CertifiedKey>,
    /// Names and expiry read from the leaf certificate.
    pub info: crate::tls::CertInfo,
}

/// TLS from switchboard to an upstream's backends.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The name the backends' certificate must carry (also sent as SNI).
    pub server_name: String,
    /// The CA file that signs the backends' certificates; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The client configuration built from the above.
    pub client: Arc<rustls::ClientConfig>,
}

/// Limits that protect the front end from too many or too large clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections held at once (plain and upgraded); accept pauses at the limit.
    pub max_connections: usize,
    /// Largest request head (start line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a whole request head.
    pub header_read_timeout: Duration,
    /// WebSocket tunnels (and upgrades in progress) one client address may hold at once;
    /// `None`: no limit. An IPv4 address counts alone, an IPv6 address by its /64.
    pub max_tunnels_per_ip: Option<u32>,
    /// Token bucket on new WebSocket upgrades per client address: (rate per second, burst);
    /// `None`: no limit.
    pub upgrades_per_ip_per_second: Option<(f64, u32)>,
    /// WebSocket tunnels held at once, over every connection (an HTTP/2 connection carries
    /// many); over it an upgrade gets 503. Default: `max_connections`.
    pub max_tunnels: usize,
    /// Concurrent streams one HTTP/2 connection may open (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// more are refused with RST_STREAM(REFUSED_STREAM) by the HTTP/2 layer.
    pub h2_max_streams: u32,
    /// HTTP/2 keep-alive: a PING after this long without frames; a connection that does not
    /// answer within it again is closed.
    pub h2_keepalive: Duration,
    /// An HTTP/2 connection with no open stream for this long is closed with GOAWAY, so idle
    /// connections do not hold a slot of `max_connections` forever.
    pub h2_idle_timeout: Duration,
}

/// Timeouts for each phase; each has a default so a minimal config works.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect to one backend; on expiry the next backend is tried.
    pub connect: Duration,
    /// Backend's answer to a WebSocket handshake; on expiry the client gets 504.
    pub handshake: Duration,
    /// Backend's response head to a plain request; on expiry the client gets 504.
    pub request: Duration,
    /// A tunnel with no bytes in either direction for this long is closed; `None` never.
    pub tunnel_idle: Option<Duration>,
    /// Once one direction of a tunnel has ended, the other is closed after this long without
    /// traffic, so a peer that never sends its FIN cannot hold the tunnel forever.
    pub half_closed: Duration,
    /// After SIGTERM, keep accepting this long with `/readyz` at 503, so load balancers (and
    /// Kubernetes endpoints) stop sending clients before the listener closes.
    pub shutdown_delay: Duration,
    /// The bound for the whole shutdown, from SIGTERM: polite closes happen inside it, and what
    /// is still open at its end is cut.
    pub shutdown_grace: Duration,
    /// How long a backend that refused a connection is skipped (passive health).
    pub backend_retry: Duration,
    /// A plain request's body (either way) that delivers no byte for this long is ended: a
    /// stalled backend or client cannot hold a backend connection and a lease forever.
    pub request_body_idle: Duration,
    /// How long an idle pooled backend connection is kept: below the keep-alive timeouts of
    /// common servers (Node 5 s, gunicorn 2–5 s) so their close does not meet a new request.
    pub pool_idle: Duration,
}

/// `[drain]`: how switchboard ends many tunnels at once without a reconnect storm.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Polite closes of one event (a shutdown) are spread evenly, with jitter, over this window.
    pub spread: Duration,
    /// The code of switchboard's Close frames: 1001 Going Away or 1012 Service Restart.
    pub close_code: u16,
    /// After sending Close, how long to wait for the closing handshakes before ending TCP.
    pub close_linger: Duration,
    /// How long tunnels on a draining backend stay up before they are closed (used by backend
    /// drains; parsed and validated now).
    pub timeout: Duration,
}

/// `[websocket]`: the few things switchboard does inside a tunnel's framing.
#[derive(Debug, Clone)]
pub struct WebSocket {
    /// Ping a client whose tunnel carried nothing toward it for this long; `None`: never.
    pub ping_interval: Option<Duration>,
    /// A data message longer than this gets Close 1009; `None`: no limit.
    pub max_message_bytes: Option<u64>,
    /// Tunnels are closed politely after this long (± `lifetime_jitter`); `None`: never.
    pub max_lifetime: Option<Duration>,
    /// Fraction of `max_lifetime` by which each tunnel's lifetime is varied, 0.0..=0.5.
    pub lifetime_jitter: f64,
}

/// `[log] access` and `access_query`: one line per request and per WebSocket, with or without
/// the query string (queries often carry tokens, so they are left out unless asked for).
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    /// Whether access lines are written.
    pub enabled: bool,
    /// Whether the path in them keeps its query string.
    pub query: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// A routing rule: requests whose host and path match go to `upstream`.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None` matches every host.
    pub host: Option<HostPattern>,
    /// Raw prefix of the request path; `/` matches everything.
    pub path_prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
}

/// Which pages may open WebSockets on a route: its `allowed_origins` and `require_origin`.
/// Plain requests on the route are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `None`: any origin; otherwise the upgrade's `Origin` must match one entry.
    pub allowed: Option<Vec<OriginPattern>>,
    /// Refuse upgrades that carry no `Origin` at all (non-browser clients).
    pub require: bool,
}

impl OriginPolicy {
    /// True when the policy lets everything through (the default).
    pub fn is_open(&self) -> bool {
        self.allowed.is_none() && !self.require
    }
}

/// One `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `"null"`: the opaque origin of sandboxed frames, `file:` pages and some redirects.
    Null,
    /// `scheme://host[:port]`, lower-cased.
    Site {
        /// The scheme, e.g. `https`.
        scheme: String,
        /// The host: exact, or `*.suffix`, which matches one or more labels in front of the
        /// suffix but not the suffix itself.
        host: HostPattern,
        /// The port, with the scheme's default (80 for http and ws, 443 for https and wss)
        /// filled in when none was written; `None` only for other schemes without a port.
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Whether a parsed `Origin` matches this entry.
    pub fn matches(&self, origin: &Origin) -> bool {
        match (self, origin) {
            (OriginPattern::Null, Origin::Null) => true,
            (
                OriginPattern::Site { scheme, host, port },
                Origin::Site {
                    scheme: s,
                    host: h,
                    port: p,
                },
            ) => {
                scheme == s
                    && port == p
                    && match host {
                        HostPattern::Exact(name) => name == h,
                        HostPattern::Wildcard(suffix) => {
                            h.len() > suffix.len() && h.ends_with(suffix.as_str())
                        }
                    }
            }
            _ => false,
        }
    }
}

/// A serialized origin (RFC 6454 §6), as a browser's `Origin` header carries it, taken apart
/// and lower-cased; parse one with [`Origin::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `null`: an opaque origin.
    Null,
    /// `scheme://host[:port]`.
    Site {
        /// The scheme.
        scheme: String,
        /// The host name or IP literal (IPv6 in brackets).
        host: String,
        /// The port, the scheme's default filled in as for [`OriginPattern::Site`].
        port: Option<u16>,
    },
}

/// A host name to match, lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `chat.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any name ending with it.
    Wildcard(String),
}

/// A named group of backends and how to balance over them.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The table name, used in metrics and logs.
    pub name: String,
    /// Balancing strategy.
    pub balance: Balance,
    /// What sticky-hash hashes.
    pub hash_key: Option<HashKeySpec>,
    /// Bounded-load factor for sticky-hash (`None`: strict stickiness).
    pub load_factor: Option<f64>,
    /// TLS to the backends, if configured.
    pub tls: Option<BackendTls>,
    /// Backends in file order (the static ones: `dns:` servers are in `dns`).
    pub servers: Vec<Server>,
    /// `dns:` servers in file order; what they resolve to joins `servers` in each snapshot.
    pub dns: Vec<DnsServer>,
    /// How often `dns` is looked up again (the answer's TTL is a floor on it).
    pub resolve_interval: Duration,
    /// A backend that joins or comes back ramps its share from 10 % to 100 % over this.
    pub slow_start: Duration,
    /// Per-backend token bucket on new WebSocket upgrades: (rate per second, burst).
    pub upgrade_pacing: Option<(f64, u32)>,
    /// least-conn / round-robin: close the excess of a backend above ceil(skew × mean).
    pub rebalance_skew: Option<f64>,
    /// Polite closes per second per upstream while rebalancing.
    pub rebalance_rate: f64,
    /// Active health checks; `None`: passive health only.
    pub health_check: Option<HealthCheck>,
    /// The signed cookie that pins a client to its backend; `None`: no cookie.
    pub sticky_cookie: Option<StickyCookie>,
    /// `send_proxy_protocol`: a PROXY header with the client's address first on every new
    /// backend connection; `None`: none.
    pub send_proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// `sticky_cookie = { … }` on an upstream, with the secret already read: replicas that read the
/// same secret honour each other's cookies, so the proxy tier scales out without shared state.
#[derive(Debug, Clone)]
pub struct StickyCookie {
    /// The cookie name, e.g. `sb_route`.
    pub name: String,
    /// Where the secret came from (for `check`; the bytes themselves are only in `key`).
    pub secret_file: PathBuf,
    /// The HMAC-SHA256 key made from the file's bytes. Its `Debug` shows no key material, so a
    /// printed config cannot leak the secret.
    pub key: ring::hmac::Key,
    /// `Max-Age` of the cookie; `None`: a session cookie (the browser drops it when it closes).
    pub max_age: Option<Duration>,
}

/// `[upstream.NAME.health_check]`: how each backend is probed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: HealthCheckKind,
    /// Request path for `http` and `websocket` probes.
    pub path: String,
    /// `Host` header of the probe; `None`: the server address.
    pub host: Option<String>,
    /// `http` only: the status that counts as up; `None`: any 2xx.
    pub expect_status: Option<u16>,
    /// Time between probes of one backend.
    pub interval: Duration,
    /// A probe that takes longer has failed.
    pub timeout: Duration,
    /// Consecutive successes that make a down backend up.
    pub rise: u32,
    /// Consecutive failures that make an up backend down.
    pub fall: u32,
    /// The upstream's `send_proxy_protocol`: probes then start with the header that names no
    /// client (v2 LOCAL, v1 UNKNOWN), so a backend that requires one accepts them.
    pub proxy_header: Option<crate::proxy_protocol::Version>,
}

/// The kinds of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect.
    Tcp,
    /// `GET path`, then the status.
    Http,
    /// A real WebSocket upgrade (101 with the right `Sec-WebSocket-Accept`), then Close 1000.
    WebSocket,
}

/// The balancing strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Fewest live tunnels and in-flight requests, divided by weight.
    LeastConn,
    /// Consistent (rendezvous) hashing on a request key.
    StickyHash,
    /// Smooth weighted round robin.
    RoundRobin,
}

/// Where the sticky-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKeySpec {
    /// The client's IP address.
    Ip,
    /// A request header value.
    Header(http::HeaderName),
    /// A cookie value.
    Cookie(String),
    /// A query-string parameter value.
    Query(String),
}

/// One backend.
#[derive(Debug, Clone)]
pub struct Server {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The address as written in the file: the stable identity that hashing uses.
    pub name: String,
    /// Relative share of traffic, 1..=256.
    pub weight: u32,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            &origin,
            None,
            None,
            format!("cannot read the file: {e}"),
            Some("pass an existing file with --config FILE".into()),
        )
    })?;
    let mut config = from_toml_str(&src, &origin)?;
    config.path = Some(path.to_owned());
    Ok(config)
}

/// Parses and validates config text; `origin` names it in errors. No file IO, so tests and the
/// demo can build configs from strings. The error lists every mistake found (a TOML syntax
/// error only by itself: nothing after it can be read).
pub fn from_toml_str(src: &str, origin: &str) -> Result<Config, ConfigError> {
    let parsed = parse::parse(src, origin)?;
    let (config, errors) = validate::validate(parsed.raw, src, origin);
    let mut found = parsed.errors;
    found.extend(errors.into_iter().filter(|e| {
        let key = e.key.as_deref().unwrap_or_default();
        !parsed.damage.iter().any(|d| d.covers(key, e.line))
    }));
    match found.pop() {
        None => Ok(config),
        Some(last) => Err(ConfigError::collect(last, found)),
    }
}

/// 1-based line number of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
