//! The request path: route, then either forward a plain request or complete a WebSocket
//! upgrade and hand the two streams to a tunnel.

pub mod access;
pub mod admission;
pub mod body;
pub mod connect;
pub mod handshake;
pub mod headers;
pub mod http;
pub mod router;
pub mod snapshot;
pub mod sticky_cookie;
pub mod streams;
pub mod tunnel;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ::http::{Method, Request, Response, StatusCode, header};
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio_util::task::TaskTracker;

use crate::balancer::Backend;
use crate::balancer::registry::BackendRegistry;
use crate::config::Config;
use crate::error::{Blame, ProxyError};
use crate::listener::limit::Slot;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use body::ResponseBody;
pub use snapshot::Snapshot;

/// Process state: what lives as long as the process, whatever the config. Everything that
/// comes from the config is one immutable [`Snapshot`] behind an [`ArcSwap`], loaded once per
/// request; a reload builds a new one and swaps it in one store, and what already runs keeps
/// the snapshot (or the tunnel handles) it started with.
pub struct Proxy {
    /// Metric handles.
    pub metrics: Metrics,
    /// Every tunnel runs on this tracker, so shutdown can wait for them: hyper's connection
    /// future ends at the upgrade and would not see them.
    pub tunnels: TaskTracker,
    /// Every live tunnel's close mailbox, so one event can close them all politely.
    pub registry: Arc<tunnel::TunnelRegistry>,
    /// Every backend, carried from snapshot to snapshot.
    pub backends: BackendRegistry,
    /// What the `dns:` servers resolved to last; each snapshot's balancers include it.
    pub discovered: crate::discovery::Discovered,
    /// The starting config's `dns:` servers not looked up yet: `/readyz` waits for them.
    pub warming: crate::discovery::warming::Warming,
    /// Pooled backend clients by TLS settings and connect timeout, so a reload keeps warm pools.
    pools: Mutex<HashMap<snapshot::PoolKey, http::BackendClient>>,
    /// Drain and force tokens.
    pub shutdown: Shutdown,
    snapshot: ArcSwap<Snapshot>,
    /// Backends a reload removed, until their last tunnel is gone.
    leaving: Mutex<Vec<(String, Arc<Backend>)>>,
    /// One permit per live tunnel (and upgrade in progress), across every connection:
    /// `limits.max_tunnels`, so one HTTP/2 connection cannot open a backend socket per stream
    /// without bound.
    pub tunnel_slots: Arc<tokio::sync::Semaphore>,
    /// Per-client-address tunnel counts and upgrade buckets; survives reloads.
    pub admission: Arc<admission::PerIp>,
}

impl Proxy {
    /// Process state, and the first snapshot built from `config`.
    pub fn new(config: Config, metrics: Metrics, shutdown: Shutdown) -> Self {
        let registry = Arc::new(tunnel::TunnelRegistry::default());
        let tunnel_slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_tunnels));
        metrics.tunnels_limit.set(config.limits.max_tunnels as i64);
        let backends = BackendRegistry::default();
        let discovered = crate::discovery::Discovered::default();
        let warming = crate::discovery::warming::Warming::new(&config);
        let mut pools = HashMap::new();
        let (first, _) = Snapshot::build(
            config,
            &backends,
            &discovered,
            &mut pools,
            &registry,
            &metrics,
        );
        Proxy {
            metrics,
            tunnels: TaskTracker::new(),
            registry,
            tunnel_slots,
            backends,
            discovered,
            warming,
            pools: Mutex::new(pools),
            shutdown,
            snapshot: ArcSwap::from_pointee(first),
            leaving: Mutex::new(Vec::new()),
            admission: Arc::new(admission::PerIp::new()),
        }
    }

    /// The config now in force, with everything built from it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Builds a snapshot for `config` and swaps it in. Returns the backends that joined, and
    /// those that left (no longer configured: the caller drains them).
    pub fn apply(&self, config: Config) -> snapshot::Applied {
        self.discovered.retain(&config);
        self.warming.retain(&config);
        self.revive_leaving(&config);
        let (next, joined) = self.build(config);
        let left = self.backends.remove_absent(&next.balancers);
        self.snapshot.store(Arc::new(next));
        snapshot::Applied { joined, left }
    }

    /// Keeps a removed backend in view (admin API, `switchboard_tunnels_draining`) while it
    /// drains.
    pub fn note_leaving(&self, upstream: &str, backend: &Arc<Backend>) {
        self.lock_leaving()
            .push((upstream.to_owned(), backend.clone()));
    }

    /// A removed backend is empty: drops it and its metric series (bounded cardinality).
    pub fn forget(&self, upstream: &str, backend: &Arc<Backend>) {
        self.lock_leaving()
            .retain(|(_, b)| !Arc::ptr_eq(b, backend));
        // A later reload may have added the same server again: then its series live on.
        if self.backends.find(upstream, &backend.name).is_none() {
            self.metrics.remove_backend(upstream, &backend.name);
        }
    }

    /// Takes back the removed backends that `config` has again (a record that came back to a
    /// DNS answer, a server re-added) while they drain: undrained, they keep their tunnels,
    /// counts and metric series, as a backend undrained before its drain timeout does.
    fn revive_leaving(&self, config: &Config) {
        self.lock_leaving().retain(|(upstream, backend)| {
            let Some(u) = config.upstreams.iter().find(|u| u.name == *upstream) else {
                return true;
            };
            let listed = self
                .discovered
                .servers_of(u)
                .servers
                .iter()
                .any(|s| s.name == backend.name && s.addr == backend.addr);
            if !listed || !self.backends.revive(upstream, backend) {
                return true;
            }
            crate::drain::stop(upstream, backend);
            false
        });
    }

    /// Removed backends still draining, with their upstream names.
    pub fn leaving(&self) -> Vec<(String, Arc<Backend>)> {
        self.lock_leaving().clone()
    }

    fn lock_leaving(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<Backend>)>> {
        self.leaving.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, config: Config) -> (Snapshot, Vec<Arc<Backend>>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot::build(
            config,
            &self.backends,
            &self.discovered,
            &mut pools,
            &self.registry,
            &self.metrics,
        )
    }
}

/// Holds a client connection's slot: the connection-limit permit and the active gauge. Shared
/// by the HTTP connection task and, after an upgrade, its tunnel; released when both are done.
pub struct ConnectionGuard {
    _slot: Slot,
    active: IntGauge,
}

impl ConnectionGuard {
    /// Takes the slot; the gauge goes up now and down on drop.
    pub fn new(slot: Slot, active: IntGauge) -> Self {
        active.inc();
        ConnectionGuard {
            _slot: slot,
            active,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// The HTTP version a client connection speaks; WebSocket tunnels are labelled with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    /// HTTP/1.1: WebSockets by `Upgrade`.
    Http1,
    /// HTTP/2: WebSockets by extended CONNECT (RFC 8441).
    H2,
}

impl ClientProtocol {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProtocol::Http1 => "http1",
            ClientProtocol::H2 => "h2",
        }
    }

    /// Index into per-protocol metric handles.
    pub fn index(self) -> usize {
        match self {
            ClientProtocol::Http1 => 0,
            ClientProtocol::H2 => 1,
        }
    }
}

/// Facts about one client connection.
pub struct ConnInfo {
    /// The TCP peer: the client, or a proxy or load balancer in front.
    pub peer: SocketAddr,
    /// The client's address as the connection names it: the PROXY header's, else `peer`.
    /// (Behind a trusted HTTP proxy each request may name its own: see [`client_address`].)
    pub client: SocketAddr,
    /// `http` or `https`, for X-Forwarded-Proto and Forwarded.
    pub proto: &'static str,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: ClientProtocol,
    /// The connection's slot.
    pub guard: ConnectionGuard,
}

/// Serves one request: route, then forward or upgrade. Never fails: errors become responses.
///
/// `stream` counts an HTTP/2 stream open (for `limits.h2_idle_timeout`); a tunnel keeps it.
pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    stream: Option<streams::StreamGuard>,
) -> Response<ResponseBody> {
    let snap = proxy.snapshot();
    let (mut parts, body) = req.into_parts();
    let client = client_address(&snap.config, &conn, &parts.headers);
    let upgrade = match conn.protocol {
        ClientProtocol::Http1 => headers::is_websocket_upgrade(&parts),
        ClientProtocol::H2 => websocket::is_extended_connect(&parts),
    };
    let access_log = snap.config.access_log;
    // With the access log off (or filtered out), a request costs no id and no facts.
    let logging = access_log.enabled && access::enabled();
    let request_id = logging.then(|| access::request_id(&mut parts.headers));
    let facts = request_id
        .as_ref()
        .map(|id| access::RequestFacts::new(&parts, client, access_log.query, id.clone()));
    let mut trace = access::Trace::default();
    let refuse =
        |error: ProxyError, facts: Option<access::RequestFacts>, trace: &mut access::Trace| {
            tracing::debug!(client = %client, error = %error, "request refused");
            let mut response = error_response(&error);
            proxy
                .metrics
                .http_requests_total
                .with_label_values(&["none", response.status().as_str(), "none"])
                .inc();
            if let Some(facts) = facts {
                let status = response.status().as_u16();
                response
                    .body_mut()
                    .attach_access(facts.record("none", trace, status));
            }
            response
        };
    if parts.method == Method::CONNECT && !upgrade {
        // switchboard is a reverse proxy, not a forward proxy: CONNECT only for WebSockets.
        return refuse(ProxyError::MethodNotAllowed, facts, &mut trace);
    }
    let checked = router::check_host(&parts).and_then(|()| {
        // Only origin-form (and absolute-form) targets name a resource of a backend; `OPTIONS *`
        // asks about this server, and an authority-form target belongs to CONNECT.
        if !parts.uri.path().starts_with('/') {
            return Err(ProxyError::BadRequest {
                reason: "the request target is not a path (OPTIONS * is not forwarded)",
            });
        }
        // An upgrade has no body (RFC 6455 §4.1): bytes behind its head would be read as frames.
        if upgrade && conn.protocol == ClientProtocol::Http1 && has_body(&parts) {
            Err(ProxyError::BadRequest {
                reason: "a WebSocket upgrade with a body",
            })
        } else {
            Ok(())
        }
    });
    if let Err(error) = checked {
        return refuse(error, facts, &mut trace);
    }
    let Some(upstream) = snap
        .router
        .route(router::request_host(&parts), parts.uri.path())
    else {
        let error = ProxyError::NoRoute {
            host: router::request_host(&parts).map(str::to_owned),
            path: parts.uri.path().to_owned(),
        };
        return refuse(error, facts, &mut trace);
    };
    let req = Request::from_parts(parts, body);
    let started = std::time::Instant::now();
    let result = if upgrade {
        trace.request_id = request_id.clone();
        websocket::upgrade(
            &proxy, &snap, upstream, req, &conn, client, stream, &mut trace,
        )
        .await
    } else {
        http::forward(&snap, upstream, req, &conn, client, &mut trace).await
    };
    // Every request is observed, failures too: slow failures are what p99 dashboards need.
    let upgraded = match &result {
        Ok(response) if upgrade => match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => true,
            StatusCode::OK => conn.protocol == ClientProtocol::H2,
            _ => false,
        },
        _ => false,
    };
    let outcome = match &result {
        Ok(_) if upgrade && !upgraded => "rejected",
        Ok(_) => "ok",
        Err(error) => error.outcome(),
    };
    let balancer = &snap.balancers[upstream];
    balancer
        .metrics
        .observe(upgrade, outcome, started.elapsed().as_secs_f64());
    let mut response = result.unwrap_or_else(|error| {
        let upstream_name = &balancer.name;
        let status = error.status().as_u16();
        let tried = trace.tried();
        match error.blame() {
            Blame::Backend => tracing::warn!(upstream = %upstream_name, client = %client,
                status, error = %error, tried = %tried, request_id = request_id.as_ref().and_then(|id| id.to_str().ok()).unwrap_or("-"),
                "request failed"),
            Blame::Client => tracing::debug!(upstream = %upstream_name, client = %client,
                status, error = %http::error_chain(&error), "request refused"),
            Blame::Overload => tracing::debug!(upstream = %upstream_name, client = %client,
                status, error = %error, tried = %tried, "request shed"),
        }
        if upgrade {
            let reason = match &error {
                ProxyError::NoBackend { .. } => Some("no_backend"),
                ProxyError::RateLimited { .. } => Some("rate_limited"),
                ProxyError::TooManyTunnels => Some("max_tunnels"),
                _ => None,
            };
            if let Some(reason) = reason {
                proxy
                    .metrics
                    .upgrades_rejected_total
                    .with_label_values(&[upstream_name.as_str(), reason])
                    .inc();
            }
        }
        error_response(&error)
    });
    if !upgrade {
        let answered_by = match response.body() {
            ResponseBody::Backend { .. } => trace.backend_name(),
            ResponseBody::Local(_) => "none",
        };
        proxy
            .metrics
            .http_requests_total
            .with_label_values(&[
                balancer.name.as_str(),
                response.status().as_str(),
                answered_by,
            ])
            .inc();
    }
    // A WebSocket that opened has its own lines (at upgrade and at close); every other request
    // gets one here.
    if let Some(facts) = facts
        && !upgraded
    {
        let status = response.status().as_u16();
        let record = facts.record(&balancer.name, &mut trace, status);
        response.body_mut().attach_access(record);
    }
    response
}

/// The client a request comes from, for `ip` hashing, forwarding headers, logs and per-address
/// limits: the connection's (the PROXY header's when `proxy_protocol` is on), or, when the peer
/// is a trusted HTTP proxy, the last `X-Forwarded-For` entry (the one that proxy appended).
pub fn client_address(config: &Config, conn: &ConnInfo, headers: &::http::HeaderMap) -> SocketAddr {
    if config.proxy_protocol.is_some()
        || config.trusted_proxies.is_empty()
        || !config.trusted_proxies.contains(conn.peer.ip())
    {
        return conn.client;
    }
    crate::proxy_protocol::trusted::last_forwarded_for(headers).unwrap_or(conn.client)
}

/// Whether a request head announces a body: chunked, or a non-zero length.
fn has_body(parts: &::http::request::Parts) -> bool {
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// A backend's response on its way to the client: hop-by-hop headers removed, the body streamed,
/// and the lease held until the body is done (so least-conn counts the request until then).
pub fn relay(
    response: Response<Incoming>,
    lease: crate::balancer::Lease,
    body_idle: std::time::Duration,
) -> Response<ResponseBody> {
    let (mut head, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut head.headers);
    Response::from_parts(
        head,
        ResponseBody::Backend {
            body,
            idle: body::IdleDeadline::new(body_idle),
            _lease: Some(lease),
            access: None,
        },
    )
}

/// A short plain-text response for a failure; details go to the log, not the client.
pub fn error_response(error: &ProxyError) -> Response<ResponseBody> {
    let status = error.status();
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut response = Response::new(ResponseBody::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        error,
        ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyStalled { .. }
            | ProxyError::BadRequest { .. }
    ) {
        // After a framing error the connection's byte stream cannot be trusted: close it.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    if let Some(seconds) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}
