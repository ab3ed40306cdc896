//! switchboard: a WebSocket-aware reverse proxy and load balancer.
//!
//! The data path, one module per stage: [`listener`] accepts, [`server`] speaks HTTP/1.1,
//! [`proxy`] routes and either forwards a request or completes a WebSocket upgrade, the
//! [`balancer`] picks a backend, and [`proxy::tunnel`] splices the upgraded streams.
//! [`run`] wires them up on listeners the caller has already bound, so tests and benchmarks run
//! the real server on `127.0.0.1:0` in process.

pub mod admin;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod error;
pub mod frontend;
pub mod handover;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod rebalance;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod workers;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
use frontend::Frontend;
use metrics::Metrics;
use proxy::Proxy;
use reload::Reloader;
pub use shutdown::Shutdown;
use tls::server::TlsTerminator;

/// How long to wait for tasks to wind down after the force token, before returning anyway.
const FORCE_WAIT: Duration = Duration::from_secs(5);

/// After a hand-over, how long connections accepted in the last moment have to send their
/// first request before idle connections are closed (a second signal skips it).
const HANDOVER_SETTLE: Duration = Duration::from_secs(2);

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
    /// `admin.handover_socket` cannot be served.
    #[error("`admin.handover_socket`: {0}")]
    HandoverSocket(std::io::Error),
    /// The process being taken over stopped waiting and keeps serving; this one drained.
    #[error("--take-over: {0}")]
    TakeOver(String),
}

/// Runs switchboard until `shutdown` is triggered and the drain is over. Metrics are registered
/// in `metrics`, which the caller may keep to read them. Connections are accepted and served on
/// the calling runtime.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
    metrics: Metrics,
) -> Result<(), RunError> {
    let here = vec![tokio::runtime::Handle::current()];
    run_with(config, listeners, shutdown, metrics, here, None).await
}

/// [`run`], with client connections accepted and served on each of `event_loops` (see
/// [`workers`]); everything else runs on the calling runtime.
pub async fn run_on_loops(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
    metrics: Metrics,
    event_loops: Vec<tokio::runtime::Handle>,
) -> Result<(), RunError> {
    run_with(config, listeners, shutdown, metrics, event_loops, None).await
}

/// [`run_on_loops`], for a process taking the listeners over from `predecessor`
/// ([`handover::taker::take_over`]): once it accepts on them, the predecessor is told to stop.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
    metrics: Metrics,
    event_loops: Vec<tokio::runtime::Handle>,
    predecessor: Option<handover::taker::Predecessor>,
) -> Result<(), RunError> {
    let handover = handover::Prepared::new(&config, &listeners, predecessor.is_some())
        .map_err(RunError::HandoverSocket)?;
    let proxy = Arc::new(Proxy::new(
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let terminator = match (&config.tls, &listeners.tls) {
        (Some(tls), Some(_)) => Some(Arc::new(TlsTerminator::new(tls, metrics.clone())?)),
        (None, Some(_)) => return Err(RunError::TlsWithoutConfig),
        _ => None,
    };
    metrics
        .config_last_reload_success_timestamp_seconds
        .set(reload::unix_now());
    let frontend = Frontend::new(
        proxy.clone(),
        terminator.clone(),
        config.limits.max_connections,
        event_loops,
    );
    let reloader = Reloader::start(proxy.clone(), terminator, frontend.clone());
    if predecessor.is_some() {
        // The predecessor accepts on the same sockets until told `ready`: accepting here only
        // once the first DNS lookups are in means no client reaches an upstream that does
        // not know its backends yet.
        if tokio::time::timeout(handover::WARM_WAIT, proxy.warming.warm())
            .await
            .is_err()
        {
            tracing::warn!(
                waiting = ?proxy.warming.waiting(),
                wait_s = handover::WARM_WAIT.as_secs(),
                "taking the listeners over before the first DNS lookups are over"
            );
        }
    }
    frontend.listen([
        (frontend::Kind::Plain, listeners.plain),
        (frontend::Kind::Tls, listeners.tls),
    ]);
    if config.path.is_some() {
        reload::watch_sighup(reloader.clone(), shutdown.clone());
    }
    if let Some(admin) = listeners.admin {
        tokio::spawn(admin::serve(admin, proxy.clone(), reloader.clone()));
    }
    let connections = frontend.connections.clone();
    let giver = handover
        .finish(&config, predecessor, &frontend, &shutdown, &metrics)
        .await;

    shutdown.drain_token().cancelled().await;
    // The config in force now (a reload may have changed the shutdown settings).
    let config = proxy.snapshot().config.clone();
    let grace_end = tokio::time::Instant::now() + config.timeouts.shutdown_grace;
    // After a hand-over the listening sockets stay open in the new process: accepting stops at
    // once, but idle connections are closed only after HANDOVER_SETTLE, since one accepted a
    // moment ago may not have sent its request yet and would be closed unanswered.
    let handed_over = shutdown.handed_over_token().is_cancelled();
    let pause = if handed_over {
        frontend.stop_accepting();
        tracing::info!(
            settle_s = HANDOVER_SETTLE.as_secs_f64(),
            "handed over: stopped accepting (the new process accepts on the same sockets)"
        );
        HANDOVER_SETTLE
    } else {
        tracing::info!(
            delay_s = config.timeouts.shutdown_delay.as_secs_f64(),
            "draining: /readyz answers 503; still accepting for timeouts.shutdown_delay"
        );
        config.timeouts.shutdown_delay
    };
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = shutdown.hurry_token().cancelled() => {}
        _ = shutdown.handed_over_token().cancelled(), if !handed_over => {}
    }
    shutdown.stop_token().cancel();
    frontend.stopped().await;

    // Connections finish their requests; tunnels are closed politely, spread over the window.
    connections.close();
    proxy.tunnels.close();
    close_tunnels(&proxy, &config, &shutdown, grace_end);
    let drained = tokio::time::timeout_at(grace_end, async {
        connections.wait().await;
        proxy.tunnels.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            tunnels = proxy.registry.len(),
            "timeouts.shutdown_grace is over: cutting what is left"
        );
        proxy.registry.cut_all(proxy::tunnel::CloseReason::Shutdown);
    }
    shutdown.force_token().cancel();
    let _ = tokio::time::timeout(FORCE_WAIT, async {
        connections.wait().await;
        proxy.tunnels.wait().await;
    })
    .await;
    tracing::info!("shutdown complete");
    match giver {
        // It stops serving the hand-over socket (and removes its file) at the drain.
        Ok(Some(giver)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), giver).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(RunError::TakeOver(e)),
    }
}

/// Asks every tunnel to close with `drain.close_code`, spread over `drain.spread` but so that
/// spread and linger end before `grace_end`; a second signal asks again with no spread.
fn close_tunnels(
    proxy: &Arc<Proxy>,
    config: &Config,
    shutdown: &Shutdown,
    grace_end: tokio::time::Instant,
) {
    let drain = &config.drain;
    let left = grace_end.saturating_duration_since(tokio::time::Instant::now());
    let spread = drain.spread.min(left.saturating_sub(drain.close_linger));
    let all = proxy::tunnel::CloseAll {
        reason: proxy::tunnel::CloseReason::Shutdown,
        code: drain.close_code,
        spread: if shutdown.hurry_token().is_cancelled() {
            Duration::ZERO
        } else {
            spread
        },
        linger: drain.close_linger.min(left),
    };
    tracing::info!(
        tunnels = proxy.registry.len(),
        spread_s = all.spread.as_secs_f64(),
        code = all.code,
        "closing tunnels"
    );
    proxy.registry.close_all(all);
    let (proxy, hurry) = (proxy.clone(), shutdown.hurry_token().clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = hurry.cancelled() => {
                proxy.registry.close_all(proxy::tunnel::CloseAll { spread: Duration::ZERO, ..all });
            }
            _ = proxy.tunnels.wait() => {}
        }
    });
}
