//! The request path: route, then either forward a plain request or complete a WebSocket
//! upgrade and hand the two streams to a tunnel.

pub mod body;
pub mod connect;
pub mod handshake;
pub mod headers;
pub mod http;
pub mod router;
pub mod tunnel;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use ::http::{Method, Request, Response, header};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::balancer::{Backend, Balancer, Pick, Tried};
use crate::config::{Config, Timeouts};
use crate::error::{Blame, ProxyError};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use body::ResponseBody;
use router::Router;

/// Everything the request path reads, built once from a config and shared by all connections.
pub struct Proxy {
    /// Host and path → upstream index.
    pub router: Router,
    /// One balancer per upstream, in config order.
    pub balancers: Vec<Balancer>,
    /// Pooled client for plain requests, one per upstream (each with its own TLS settings).
    pub clients: Vec<http::BackendClient>,
    /// TLS connector and server name per upstream, for WebSocket backend connections.
    pub upstream_tls: Vec<Option<connect::UpstreamTls>>,
    /// Timeouts for each phase.
    pub timeouts: Timeouts,
    /// Metric handles.
    pub metrics: Metrics,
    /// Every tunnel runs on this tracker, so shutdown can wait for them: hyper's connection
    /// future ends at the upgrade and would not see them.
    pub tunnels: TaskTracker,
    /// Every live tunnel's close mailbox, so one event can close them all politely.
    pub registry: Arc<tunnel::TunnelRegistry>,
    /// What each upstream's tunnels report to and read, in config order.
    pub tunnel_shared: Vec<Arc<tunnel::TunnelShared>>,
    /// Drain and force tokens.
    pub shutdown: Shutdown,
}

impl Proxy {
    /// Builds the request path for `config`.
    pub fn new(config: &Config, metrics: Metrics, shutdown: Shutdown) -> Self {
        // Plain upstreams never use the TLS half of their connector; give them an empty config.
        let no_tls = crate::tls::client::client_config_with_roots(rustls::RootCertStore::empty());
        let clients = config
            .upstreams
            .iter()
            .map(|u| http::backend_client(u, &config.timeouts, no_tls.clone()))
            .collect();
        let upstream_tls = config
            .upstreams
            .iter()
            .map(|u| {
                u.tls.as_ref().map(|t| {
                    let name = rustls::pki_types::ServerName::try_from(t.server_name.clone())
                        .expect("validated server name");
                    (tokio_rustls::TlsConnector::from(t.client.clone()), name)
                })
            })
            .collect();
        let registry = Arc::new(tunnel::TunnelRegistry::default());
        let settings = tunnel::TunnelSettings::from_config(config);
        let tunnel_shared = config
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(tunnel::TunnelShared::new(
                    &u.name,
                    settings.clone(),
                    registry.clone(),
                    &metrics,
                ))
            })
            .collect();
        Proxy {
            router: Router::new(&config.routes),
            balancers: config
                .upstreams
                .iter()
                .map(|u| Balancer::new(u, config.timeouts.backend_retry, &metrics))
                .collect(),
            clients,
            upstream_tls,
            timeouts: config.timeouts.clone(),
            metrics,
            tunnels: TaskTracker::new(),
            registry,
            tunnel_shared,
            shutdown,
        }
    }
}

impl Proxy {
    /// The next backend of `upstream` for this key, or the error that ends the request.
    pub fn pick(
        &self,
        upstream: usize,
        key: Option<u64>,
        tried: &mut Tried,
    ) -> Result<Pick, ProxyError> {
        let balancer = &self.balancers[upstream];
        balancer
            .pick(key, tried)
            .ok_or_else(|| ProxyError::NoBackend {
                upstream: balancer.name.clone(),
            })
    }

    /// Counts one WebSocket handshake outcome in `switchboard_upgrades_total`.
    pub fn count_upgrade(
        &self,
        upstream: usize,
        backend: &Backend,
        outcome: &str,
        protocol: ClientProtocol,
    ) {
        self.metrics
            .upgrades_total
            .with_label_values(&[
                self.balancers[upstream].name.as_str(),
                backend.name.as_str(),
                outcome,
                protocol.as_str(),
            ])
            .inc();
    }
}

/// Holds a client connection's slot: the connection-limit permit and the active gauge. Shared
/// by the HTTP connection task and, after an upgrade, its tunnel; released when both are done.
pub struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    active: IntGauge,
}

impl ConnectionGuard {
    /// Takes the slot; the gauge goes up now and down on drop.
    pub fn new(permit: OwnedSemaphorePermit, active: IntGauge) -> Self {
        active.inc();
        ConnectionGuard {
            _permit: permit,
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
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`, for X-Forwarded-Proto and Forwarded.
    pub proto: &'static str,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: ClientProtocol,
    /// The connection's slot.
    pub guard: ConnectionGuard,
}

/// Serves one request: route, then forward or upgrade. Never fails: errors become responses.
pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let upgrade = match conn.protocol {
        ClientProtocol::Http1 => headers::is_websocket_upgrade(&parts),
        ClientProtocol::H2 => websocket::is_extended_connect(&parts),
    };
    if parts.method == Method::CONNECT && !upgrade {
        // switchboard is a reverse proxy, not a forward proxy: CONNECT only for WebSockets.
        proxy
            .metrics
            .http_requests_total
            .with_label_values(&["none", "405"])
            .inc();
        return error_response(&ProxyError::MethodNotAllowed);
    }
    let Some(upstream) = proxy
        .router
        .route(router::request_host(&parts), parts.uri.path())
    else {
        let error = ProxyError::NoRoute {
            host: router::request_host(&parts).map(str::to_owned),
            path: parts.uri.path().to_owned(),
        };
        tracing::debug!(client = %conn.peer, error = %error, "no route");
        proxy
            .metrics
            .http_requests_total
            .with_label_values(&["none", "404"])
            .inc();
        return error_response(&error);
    };
    let req = Request::from_parts(parts, body);
    let result = if upgrade {
        websocket::upgrade(&proxy, upstream, req, &conn).await
    } else {
        http::forward(&proxy, upstream, req, &conn).await
    };
    let response = result.unwrap_or_else(|error| {
        let upstream_name = &proxy.balancers[upstream].name;
        match error.blame() {
            Blame::Backend => tracing::warn!(upstream = %upstream_name, client = %conn.peer,
                status = error.status().as_u16(), error = %http::error_chain(&error), "request failed"),
            Blame::Client => tracing::debug!(upstream = %upstream_name, client = %conn.peer,
                status = error.status().as_u16(), error = %http::error_chain(&error), "request refused"),
        }
        error_response(&error)
    });
    if !upgrade {
        proxy
            .metrics
            .http_requests_total
            .with_label_values(&[
                proxy.balancers[upstream].name.as_str(),
                response.status().as_str(),
            ])
            .inc();
    }
    response
}

/// A backend's response on its way to the client: hop-by-hop headers removed, the body streamed,
/// and the lease held until the body is done (so least-conn counts the request until then).
pub fn relay(
    response: Response<Incoming>,
    lease: crate::balancer::Lease,
) -> Response<ResponseBody> {
    let (mut head, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut head.headers);
    Response::from_parts(
        head,
        ResponseBody::Backend {
            body,
            _lease: Some(lease),
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
    response
}
