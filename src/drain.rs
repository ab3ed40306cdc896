//! Draining a backend without cutting anyone off: it takes no new connections or requests at
//! once; its live tunnels stay up for `drain.timeout`, then each is closed politely (the
//! tunnel's own close mechanism), spread over `drain.spread`. A backend undrained before its
//! timeout keeps its tunnels. A backend removed by a reload is drained the same way, and its
//! metric series go once its last tunnel has.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::Backend;
use crate::proxy::Proxy;
use crate::proxy::tunnel::{CloseAll, CloseReason};

/// How often a removed backend is checked for its last tunnel, to drop its metric series.
const GONE_POLL: Duration = Duration::from_millis(500);

/// Starts draining `backend` of `upstream`; `removed`: the config no longer has it. False if it
/// was already draining (the running drain goes on).
pub fn start(proxy: &Arc<Proxy>, upstream: &str, backend: Arc<Backend>, removed: bool) -> bool {
    if !backend.set_draining(true) && !removed {
        return false;
    }
    let epoch = backend.drain_epoch();
    let drain = proxy.snapshot().config.drain.clone();
    tracing::info!(upstream, backend = %backend.name, removed, tunnels = backend.tunnels(),
        timeout_s = drain.timeout.as_secs_f64(), "draining backend");
    let (proxy, upstream) = (proxy.clone(), upstream.to_owned());
    if removed {
        proxy.note_leaving(&upstream, &backend);
    }
    tokio::spawn(async move {
        let stop = proxy.shutdown.stop_token().clone();
        tokio::select! {
            _ = tokio::time::sleep(drain.timeout) => {}
            // A shutdown closes every tunnel anyway.
            _ = stop.cancelled() => return,
        }
        if !backend.is_draining() || backend.drain_epoch() != epoch {
            return; // undrained (or drained anew) meanwhile
        }
        let asked = proxy.registry.close_backend(
            &backend,
            CloseAll {
                reason: CloseReason::Drain,
                code: drain.close_code,
                spread: drain.spread,
                linger: drain.close_linger,
            },
        );
        tracing::info!(upstream = %upstream, backend = %backend.name, tunnels = asked, "drain timeout: closing tunnels");
        if !removed {
            return;
        }
        let bound = drain.spread + drain.close_linger + Duration::from_secs(10);
        let _ = tokio::time::timeout(bound, async {
            while backend.live() > 0 {
                tokio::time::sleep(GONE_POLL).await;
            }
        })
        .await;
        proxy.forget(&upstream, &backend);
    });
    true
}

/// Ends the drain of `backend`: it takes connections again and keeps its tunnels.
pub fn stop(upstream: &str, backend: &Backend) -> bool {
    let changed = backend.set_draining(false);
    if changed {
        tracing::info!(upstream, backend = %backend.name, "backend undrained");
    }
    changed
}
