//! Hot reload (SIGHUP, `POST /admin/reload`): the file is read and validated exactly as
//! `switchboard check` does, off the async workers; on any error the running config stays (logged,
//! counted, and returned to the admin caller). On success one new snapshot is swapped in:
//! routes, upstreams, limits, timeouts and TLS certificates apply to new connections at once,
//! established tunnels and in-flight requests keep what they started with, backends keep their
//! counts and health, removed backends are drained politely, and health checks restart on the
//! new backend set. DNS discovery takes the same road ([`Reloader::rediscover`]).

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::frontend::{Frontend, Kind};
use crate::proxy::Proxy;
use crate::tls::server::TlsTerminator;

mod rediscover;

/// Applies configs to a running switchboard, one at a time.
pub struct Reloader {
    proxy: Arc<Proxy>,
    terminator: Option<Arc<TlsTerminator>>,
    frontend: Arc<Frontend>,
    path: Option<PathBuf>,
    /// Held while a reload (or a DNS update) runs, so there is one writer; stops the tasks tied
    /// to one config.
    running: tokio::sync::Mutex<CancellationToken>,
    /// Stops the health checks of the backend set now in force (a child of the config's
    /// token): a DNS update changes the set without changing the config.
    checks: std::sync::Mutex<CancellationToken>,
    /// This reloader, for the tasks it starts that write through it (DNS discovery).
    me: Weak<Reloader>,
}

impl Reloader {
    /// A reloader for the config file the running config came from (none: reloads are
    /// refused), and starts the
    /// per-config tasks (certificate watching, health checks) of the running config.
    pub fn start(
        proxy: Arc<Proxy>,
        terminator: Option<Arc<TlsTerminator>>,
        frontend: Arc<Frontend>,
    ) -> Arc<Self> {
        let path = proxy.snapshot().config.path.clone();
        let reloader = Arc::new_cyclic(|me| Reloader {
            proxy,
            terminator,
            frontend,
            path,
            running: tokio::sync::Mutex::new(CancellationToken::new()),
            checks: std::sync::Mutex::new(CancellationToken::new()),
            me: me.clone(),
        });
        let stop = reloader
            .running
            .try_lock()
            .expect("nobody else holds it yet")
            .clone();
        reloader.start_tasks(&stop);
        reloader
    }

    /// Reads the config file again and applies it; the error text is what `switchboard check`
    /// prints, and then nothing changed.
    pub async fn reload(&self) -> Result<(), String> {
        let mut tasks = self.running.lock().await;
        let metrics = &self.proxy.metrics;
        let result = self.load_and_apply(&tasks).await;
        match &result {
            Ok(stop) => {
                tasks.cancel();
                *tasks = stop.clone();
                metrics
                    .config_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                metrics
                    .config_last_reload_success_timestamp_seconds
                    .set(unix_now());
                tracing::info!("config reloaded");
            }
            Err(e) => {
                metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "config reload failed; the running config stays");
            }
        }
        result.map(|_| ())
    }

    async fn load_and_apply(&self, _old: &CancellationToken) -> Result<CancellationToken, String> {
        let Some(path) = self.path.clone() else {
            return Err(
                "this switchboard was not started from a config file: nothing to reload".into(),
            );
        };
        // Validation reads certificate files and resolves names: not on an async worker.
        let config = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| format!("config validation did not finish: {e}"))?
            .map_err(|e| format!("error: {e}"))?;
        self.check_fixed(&config)?;
        // Moved listeners: every new address bound before anything changes.
        let mut moved = Vec::new();
        for (kind, next) in [
            (Kind::Plain, config.plain_listen()),
            (Kind::Tls, config.tls_listen()),
        ] {
            let now = self.proxy.snapshot();
            let before = match kind {
                Kind::Plain => now.config.plain_listen(),
                Kind::Tls => now.config.tls_listen(),
            };
            if let Some(addr) = next
                && before != next
            {
                let listener = self
                    .frontend
                    .bind(kind, addr)
                    .map_err(|e| format!("error: {e}"))?;
                moved.push((kind, listener));
            }
        }
        if let (Some(terminator), Some(tls)) = (&self.terminator, &config.tls) {
            terminator.replace(tls);
        }
        let applied = self.proxy.apply(config);
        for (kind, listener) in moved {
            self.frontend.replace(kind, listener);
        }
        self.settle(applied, true);
        let stop = CancellationToken::new();
        self.start_tasks(&stop);
        Ok(stop)
    }

    /// What follows a new backend set: joined backends ramp in (slow start) if `ramp`, removed
    /// ones are drained politely.
    fn settle(&self, applied: crate::proxy::snapshot::Applied, ramp: bool) {
        for backend in &applied.joined {
            tracing::info!(backend = %backend.name, "backend joined");
            if ramp {
                backend.start_ramp();
            }
        }
        for (upstream, backend) in applied.left {
            crate::drain::start(&self.proxy, &upstream, backend, true);
        }
    }

    /// Restarts the health checks on the backend set now in force, under the config's `stop`.
    fn restart_checks(&self, stop: &CancellationToken) {
        let token = stop.child_token();
        let old = std::mem::replace(
            &mut *self.checks.lock().unwrap_or_else(|e| e.into_inner()),
            token.clone(),
        );
        old.cancel();
        start_health_checks(&self.proxy, &self.proxy.snapshot(), &token);
    }

    /// What a running process cannot take from a new config: a listener added or removed (TLS
    /// switched on or off), a moved admin listener, or a moved hand-over socket.
    fn check_fixed(&self, next: &Config) -> Result<(), String> {
        let running = self.proxy.snapshot();
        let now = &running.config;
        let show = |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        let restart = |what: &str, a: String, b: String| {
            Err(format!(
                "error: `{what}` changed from {a} to {b}; that takes a restart (a reload moves listeners but does not add or remove them)"
            ))
        };
        if now.plain_listen().is_some() != next.plain_listen().is_some() {
            return restart(
                "listen",
                show(now.plain_listen()),
                show(next.plain_listen()),
            );
        }
        if now.tls_listen().is_some() != next.tls_listen().is_some() {
            return restart(
                "tls.listen",
                show(now.tls_listen()),
                show(next.tls_listen()),
            );
        }
        if now.admin != next.admin {
            return restart("admin.listen", show(now.admin), show(next.admin));
        }
        if now.handover_socket != next.handover_socket {
            let show = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map_or("none".to_owned(), |p| p.display().to_string())
            };
            return Err(format!(
                "error: `admin.handover_socket` changed from {} to {}; that takes a restart (or a take-over: `switchboard --take-over {}`)",
                show(&now.handover_socket),
                show(&next.handover_socket),
                show(&now.handover_socket),
            ));
        }
        if now.limits.max_tunnels != next.limits.max_tunnels {
            return Err(format!(
                "error: `limits.max_tunnels` changed from {} to {}; that takes a restart",
                now.limits.max_tunnels, next.limits.max_tunnels
            ));
        }
        if now.limits.max_connections != next.limits.max_connections {
            return Err(format!(
                "error: `limits.max_connections` changed from {} to {}; that takes a restart",
                now.limits.max_connections, next.limits.max_connections
            ));
        }
        if now.runtime != next.runtime {
            let show = |r: &crate::config::Runtime| {
                format!("{} with {} threads", r.mode.as_str(), r.threads())
            };
            return Err(format!(
                "error: `[runtime]` changed from {} to {}; that takes a restart",
                show(&now.runtime),
                show(&next.runtime)
            ));
        }
        Ok(())
    }

    /// Tasks that belong to the config now running, stopped when the next one is applied.
    fn start_tasks(&self, stop: &CancellationToken) {
        let snap = self.proxy.snapshot();
        if let (Some(terminator), Some(tls)) = (&self.terminator, &snap.config.tls) {
            let watch = terminator
                .clone()
                .watch(tls.clone(), self.proxy.shutdown.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = watch => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        self.restart_checks(stop);
        for (i, upstream) in snap.config.upstreams.iter().enumerate() {
            if upstream.rebalance_skew.is_some() {
                tokio::spawn(crate::rebalance::run(self.proxy.clone(), i, stop.clone()));
            }
            if !upstream.dns.is_empty() {
                tokio::spawn(crate::discovery::run(
                    self.me.clone(),
                    self.proxy.clone(),
                    i,
                    stop.clone(),
                ));
            }
        }
    }
}

/// One health-check task per backend of each upstream that has `[upstream.NAME.health_check]`.
fn start_health_checks(proxy: &Proxy, snap: &crate::proxy::Snapshot, stop: &CancellationToken) {
    for (i, upstream) in snap.config.upstreams.iter().enumerate() {
        let Some(check) = &upstream.health_check else {
            // Checks removed by this config: no verdict of theirs may keep a backend down.
            for backend in snap.balancers[i].backends() {
                if backend.health() != crate::balancer::Health::Unknown {
                    backend.set_health(crate::balancer::Health::Unknown);
                }
            }
            continue;
        };
        let name: Arc<str> = upstream.name.as_str().into();
        for backend in snap.balancers[i].backends() {
            tokio::spawn(crate::balancer::health::run(
                backend.clone(),
                name.clone(),
                check.clone(),
                snap.upstream_tls[i].clone(),
                proxy.metrics.clone(),
                stop.clone(),
            ));
        }
    }
}

/// SIGHUP reloads, as for nginx and HAProxy.
pub fn watch_sighup(reloader: Arc<Reloader>, shutdown: crate::Shutdown) {
    // Registered before the task is spawned: a SIGHUP that comes before the task first runs
    // (new connection tasks are polled ahead of it) must reload, not kill the process.
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        }
    };
    #[cfg(unix)]
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP received: reloading the config");
                    let _ = reloader.reload().await;
                }
                _ = shutdown.drain_token().cancelled() => return,
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (reloader, shutdown);
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
