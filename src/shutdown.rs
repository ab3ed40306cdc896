//! Graceful shutdown in steps, each a cancellation token.
//!
//! `drain` (SIGTERM/SIGINT): `/readyz` turns 503 at once, and switchboard keeps accepting for
//! `timeouts.shutdown_delay` so that load balancers and Kubernetes endpoints stop sending new
//! clients before the listener closes. `stop`: accepting ends, HTTP connections finish their
//! in-flight requests, and every tunnel is asked to close politely (spread over
//! `drain.spread`). `hurry` (a second signal): skip the delay and the spread. `force` (the end of
//! `timeouts.shutdown_grace`): whatever is left is cut. Every connection task watches these
//! tokens and every tunnel is in the registry, so nothing is forgotten.
//!
//! `hand_over` (a new process took the listeners over, see [`crate::handover`]): the drain
//! starts without the delay, since the listening sockets stay open in the new process and no
//! load balancer needs time to look elsewhere; the admin listener stops accepting too, so probes
//! and scrapes reach the new process only. Tunnels are still closed spread over `drain.spread`.

use tokio_util::sync::CancellationToken;

/// The shutdown tokens, cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    drain: CancellationToken,
    stop: CancellationToken,
    hurry: CancellationToken,
    force: CancellationToken,
    handed_over: CancellationToken,
    /// A child of `force`, cancelled early by a hand-over.
    admin_stop: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        let force = CancellationToken::new();
        Shutdown {
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            hurry: CancellationToken::new(),
            admin_stop: force.child_token(),
            force,
            handed_over: CancellationToken::new(),
        }
    }
}

impl Shutdown {
    /// Fresh tokens, none cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a graceful shutdown because another process now accepts on the listeners: no
    /// `timeouts.shutdown_delay`, and the admin listener stops accepting at once.
    pub fn hand_over(&self) {
        self.handed_over.cancel();
        self.admin_stop.cancel();
        self.drain.cancel();
    }

    /// Cancelled by [`Shutdown::hand_over`].
    pub fn handed_over_token(&self) -> &CancellationToken {
        &self.handed_over
    }

    /// Cancelled when the admin listener stops accepting: at the end of the grace period, or at
    /// once after a hand-over.
    pub fn admin_stop_token(&self) -> &CancellationToken {
        &self.admin_stop
    }

    /// Starts a graceful shutdown (what SIGTERM does).
    pub fn trigger(&self) {
        self.drain.cancel();
    }

    /// Skips what is left of the delay and the spread (what a second SIGTERM does); tunnels
    /// are still closed politely.
    pub fn hurry(&self) {
        self.drain.cancel();
        self.hurry.cancel();
    }

    /// Cancelled when draining starts: `/readyz` answers 503.
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Cancelled when accepting stops, after `timeouts.shutdown_delay`: connections finish
    /// their requests and close.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancelled by a second signal.
    pub fn hurry_token(&self) -> &CancellationToken {
        &self.hurry
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

/// Wires the signals to `shutdown`: the first SIGTERM/SIGINT starts the drain, a second one
/// hurries it.
///
/// The handlers are installed before this returns (it must run inside the runtime), so a
/// SIGTERM that arrives right after the start line drains instead of killing the process with
/// the default action, or going unseen by a task that has not run yet.
pub fn watch_signals(shutdown: Shutdown) {
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.next().await;
        shutdown.trigger();
        signals.next().await;
        tracing::info!("second signal: closing every tunnel now");
        shutdown.hurry();
    });
}

/// SIGTERM and SIGINT, registered once and kept, so no signal falls between two waits.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
            Signals {
                // Without them, [`signal`] says why and falls back to Ctrl-C.
                streams: streams.ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, interrupt)) = &mut self.streams {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
            return;
        }
        signal().await;
    }
}

/// Resolves on the next SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
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
