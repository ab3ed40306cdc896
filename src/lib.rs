//! switchboard: a WebSocket-aware reverse proxy and load balancer.
//!
//! The data path, one module per stage: [`listener`] accepts, [`server`] speaks HTTP/1.1,
//! [`proxy`] routes and either forwards a request or completes a WebSocket upgrade, the
//! [`balancer`] picks a backend, and [`proxy::tunnel`] splices the upgraded streams.
//! [`run`] wires them up on listeners the caller has already bound, so tests and benchmarks run
//! the real server on `127.0.0.1:0` in process.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod demo;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod shutdown;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::Config;
use metrics::Metrics;
use proxy::{ConnInfo, ConnectionGuard, Proxy};
pub use shutdown::Shutdown;

/// How long to wait for tasks to wind down after the force token, before returning anyway.
const FORCE_WAIT: Duration = Duration::from_secs(5);

/// Already-bound sockets for [`run`].
pub struct Listeners {
    /// The client-facing listener.
    pub proxy: TcpListener,
    /// The admin listener, if any.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let proxy = listener::bind(config.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let admin = match config.admin {
            Some(addr) => Some(listener::bind(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}"))
            })?),
            None => None,
        };
        Ok(Listeners { proxy, admin })
    }
}

/// Runs switchboard until `shutdown` is triggered and the drain is over. Metrics are registered
/// in `metrics`, which the caller may keep to read them.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown, metrics: Metrics) {
    let proxy = Arc::new(Proxy::new(&config, metrics.clone(), shutdown.clone()));
    let limits = Arc::new(config.limits.clone());
    if let Some(admin) = listeners.admin {
        tokio::spawn(admin::serve(admin, metrics.clone(), shutdown.clone()));
    }

    let connections = TaskTracker::new();
    listener::accept_loop(
        listeners.proxy,
        config.limits.max_connections,
        metrics.clone(),
        shutdown.clone(),
        connections.clone(),
        |stream, peer, permit| {
            let conn = ConnInfo {
                peer,
                proto: "http",
                guard: ConnectionGuard::new(permit, metrics.connections_active.clone()),
            };
            server::serve_connection(proxy.clone(), limits.clone(), stream, conn)
        },
    )
    .await;

    // Draining: connections finish their requests, tunnels live on for the grace period.
    connections.close();
    proxy.tunnels.close();
    let live = proxy.tunnels.len();
    tracing::info!(
        tunnels = live,
        grace_s = config.timeouts.shutdown_grace.as_secs_f64(),
        "draining"
    );
    let drained = tokio::time::timeout(config.timeouts.shutdown_grace, async {
        connections.wait().await;
        proxy.tunnels.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            tunnels = proxy.tunnels.len(),
            "grace period over, closing what is left"
        );
    }
    shutdown.force_token().cancel();
    let _ = tokio::time::timeout(FORCE_WAIT, async {
        connections.wait().await;
        proxy.tunnels.wait().await;
    })
    .await;
    tracing::info!("shutdown complete");
}
