//! Graceful shutdown in two steps, each a cancellation token.
//!
//! `drain` (SIGTERM/SIGINT): stop accepting, let HTTP connections finish their in-flight
//! requests, keep tunnels up. `force` (the grace period ran out): close whatever is left. Every
//! connection task and every tunnel task watches these tokens, so nothing is forgotten.

use tokio_util::sync::CancellationToken;

/// The two shutdown tokens, cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    /// Fresh tokens, neither cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a graceful shutdown (what SIGTERM does).
    pub fn trigger(&self) {
        self.drain.cancel();
    }

    /// Cancelled when draining starts.
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Cancelled when the grace period is over: remaining connections and tunnels close.
    pub fn force_token(&self) -> &CancellationToken {
        &self.force
    }

    /// Whether draining has started (for `/readyz`).
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, draining"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops switchboard");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
