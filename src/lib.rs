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
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use config::Config;
use metrics::Metrics;
use proxy::{ConnectionGuard, Proxy};
pub use shutdown::Shutdown;
use tls::server::TlsTerminator;

/// How long to wait for tasks to wind down after the force token, before returning anyway.
const FORCE_WAIT: Duration = Duration::from_secs(5);

/// Already-bound sockets for [`run`].
pub struct Listeners {
    /// The plain HTTP listener, if any.
    pub plain: Option<TcpListener>,
    /// The TLS listener, if any (the config must have `[tls]`).
    pub tls: Option<TcpListener>,
    /// The admin listener, if any.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let bind =
            |addr: Option<std::net::SocketAddr>, what: &str| -> io::Result<Option<TcpListener>> {
                addr.map(|addr| {
                    listener::bind(addr).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen on {addr}{what}: {e}"))
                    })
                })
                .transpose()
            };
        Ok(Listeners {
            plain: bind(config.plain_listen(), "")?,
            tls: bind(config.tls_listen(), " (tls)")?,
            admin: bind(config.admin, " (admin)")?,
        })
    }
}

/// Errors that stop [`run`] before it serves anything.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A TLS listener was given but the config has no `[tls]`.
    #[error("a TLS listener was passed but the config has no [tls] table")]
    TlsWithoutConfig,
    /// rustls refused the server configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Runs switchboard until `shutdown` is triggered and the drain is over. Metrics are registered
/// in `metrics`, which the caller may keep to read them.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
    metrics: Metrics,
) -> Result<(), RunError> {
    let proxy = Arc::new(Proxy::new(&config, metrics.clone(), shutdown.clone()));
    let limits = Arc::new(config.limits.clone());
    let terminator = match (&config.tls, &listeners.tls) {
        (Some(tls), Some(_)) => {
            let terminator = Arc::new(TlsTerminator::new(tls, metrics.clone())?);
            tokio::spawn(terminator.clone().watch(tls.clone(), shutdown.clone()));
            Some(terminator)
        }
        (None, Some(_)) => return Err(RunError::TlsWithoutConfig),
        _ => None,
    };
    if let Some(admin) = listeners.admin {
        tokio::spawn(admin::serve(admin, metrics.clone(), shutdown.clone()));
    }

    // One connection limit across all listeners.
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let connections = TaskTracker::new();
    let mut accepting = Vec::new();
    for (listener, tls) in [(listeners.plain, None), (listeners.tls, terminator)] {
        let Some(listener) = listener else { continue };
        let (proxy, limits, metrics) = (proxy.clone(), limits.clone(), metrics.clone());
        accepting.push(tokio::spawn(listener::accept_loop(
            listener,
            slots.clone(),
            metrics.clone(),
            shutdown.clone(),
            connections.clone(),
            move |stream, peer, permit| {
                let guard = ConnectionGuard::new(permit, metrics.connections_active.clone());
                server::serve_connection(
                    proxy.clone(),
                    limits.clone(),
                    stream,
                    peer,
                    guard,
                    tls.clone(),
                )
            },
        )));
    }
    for task in accepting {
        let _ = task.await;
    }

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
    Ok(())
}
