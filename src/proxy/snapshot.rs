//! The config snapshot: everything the request path reads that comes from the config, built
//! once per config and never changed. A request loads it once; a tunnel keeps the handles it
//! started with; a reload builds the next one (carrying backends and warm pools over) and the
//! old one is freed when the last request that holds it is done.

use std::collections::HashMap;
use std::sync::Arc;

use super::router::Router;
use super::{ClientProtocol, connect, http, tunnel};
use crate::balancer::registry::BackendRegistry;
use crate::balancer::{Attempts, Backend, Balancer, Pick};
use crate::config::{Config, Timeouts, Upstream};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// What a pooled backend client depends on: the upstream's TLS settings (server name, CA
/// file) and the connect timeout. Equal keys share one pool across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    tls: Option<(String, Option<std::path::PathBuf>)>,
    connect: std::time::Duration,
    proxy_header: Option<crate::proxy_protocol::Version>,
}

impl PoolKey {
    fn of(upstream: &Upstream, timeouts: &Timeouts) -> Self {
        PoolKey {
            tls: upstream
                .tls
                .as_ref()
                .map(|t| (t.server_name.clone(), t.ca.clone())),
            connect: timeouts.connect,
            proxy_header: upstream.send_proxy_protocol,
        }
    }
}

/// What applying a config changed in the backend set.
pub struct Applied {
    /// Backends that are new in this config.
    pub joined: Vec<Arc<Backend>>,
    /// Backends the config no longer has, with their upstream names: to be drained.
    pub left: Vec<(String, Arc<Backend>)>,
}

/// Everything built from one config.
pub struct Snapshot {
    /// The validated config itself.
    pub config: Config,
    /// Host and path → upstream index.
    pub router: Router,
    /// One balancer per upstream, in config order.
    pub balancers: Vec<Balancer>,
    /// Pooled client for plain requests, one per upstream (each with its own TLS settings).
    pub clients: Vec<http::BackendClient>,
    /// TLS connector and server name per upstream, for WebSocket backend connections.
    pub upstream_tls: Vec<Option<connect::UpstreamTls>>,
    /// Timeouts for each phase (the config's).
    pub timeouts: Timeouts,
    /// What each upstream's tunnels report to and read, in config order.
    pub tunnel_shared: Vec<Arc<tunnel::TunnelShared>>,
    /// Each upstream's signed sticky cookie, if it has one, in config order.
    pub sticky_cookies: Vec<Option<super::sticky_cookie::Routes>>,
    /// Metric handles.
    pub metrics: Metrics,
}

impl Snapshot {
    /// Builds the snapshot of `config`: backends from (and new ones into) `backends`, each
    /// upstream's static servers plus what its `dns:` servers resolved to (`discovered`), pooled
    /// clients from `pools` where the settings did not change. Also returns the backends that
    /// joined.
    pub(super) fn build(
        config: Config,
        backends: &BackendRegistry,
        discovered: &crate::discovery::Discovered,
        pools: &mut HashMap<PoolKey, http::BackendClient>,
        registry: &Arc<tunnel::TunnelRegistry>,
        metrics: &Metrics,
    ) -> (Snapshot, Vec<Arc<Backend>>) {
        // Plain upstreams never use the TLS half of their connector; give them an empty config.
        let no_tls = crate::tls::client::client_config_with_roots(rustls::RootCertStore::empty());
        let mut fresh_pools = HashMap::new();
        let clients = config
            .upstreams
            .iter()
            .map(|u| {
                let key = PoolKey::of(u, &config.timeouts);
                let client = pools
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| http::backend_client(u, &config.timeouts, no_tls.clone()));
                fresh_pools.insert(key, client.clone());
                client
            })
            .collect();
        // Pools no config uses any more close with the last snapshot that holds them.
        *pools = fresh_pools;
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
        let settings = tunnel::TunnelSettings::from_config(&config);
        let tunnel_shared = config
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(tunnel::TunnelShared::new(
                    &u.name,
                    settings.clone(),
                    registry.clone(),
                    metrics,
                ))
            })
            .collect();
        // Each upstream with its discovered servers after the static ones.
        let effective: Vec<_> = config
            .upstreams
            .iter()
            .map(|u| discovered.servers_of(u))
            .collect();
        let mut joined = Vec::new();
        let balancers = effective
            .iter()
            .map(|u| {
                let (members, new) = backends.resolve(u, metrics);
                joined.extend(new);
                Balancer::with_backends(u, members, config.timeouts.backend_retry, metrics)
            })
            .collect();
        let sticky_cookies = effective
            .iter()
            .map(|u| super::sticky_cookie::Routes::new(u, metrics))
            .collect();
        drop(effective);
        let snapshot = Snapshot {
            sticky_cookies,
            router: Router::new(&config.routes),
            balancers,
            clients,
            upstream_tls,
            timeouts: config.timeouts.clone(),
            tunnel_shared,
            metrics: metrics.clone(),
            config,
        };
        (snapshot, joined)
    }

    /// The next backend of `attempts`, or the error that ends the request.
    pub fn next_pick(
        &self,
        upstream: usize,
        attempts: &mut Attempts<'_>,
    ) -> Result<Pick, ProxyError> {
        attempts.next_pick().ok_or_else(|| ProxyError::NoBackend {
            upstream: self.balancers[upstream].name.clone(),
        })
    }

    /// Counts one failed connect attempt in `switchboard_backend_connect_errors_total`.
    pub fn count_connect_error(&self, upstream: usize, backend: &Backend, error: &std::io::Error) {
        let text = error.to_string();
        let reason = match error.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::TimedOut => "timeout",
            _ if text.contains("certificate") || text.contains("tls") || text.contains("TLS") => {
                "tls"
            }
            _ => "other",
        };
        self.metrics
            .backend_connect_errors_total
            .with_label_values(&[
                self.balancers[upstream].name.as_str(),
                backend.name.as_str(),
                reason,
            ])
            .inc();
    }

    /// Counts one WebSocket handshake outcome in `switchboard_upgrades_total` (handles resolved
    /// when the backend joined).
    pub fn count_upgrade(&self, backend: &Backend, outcome: &str, protocol: ClientProtocol) {
        let index = crate::metrics::UPGRADE_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .expect("a known upgrade outcome");
        backend.metrics.upgrades[index][protocol.index()].inc();
    }
}
