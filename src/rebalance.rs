//! Active rebalancing (`rebalance_skew`, least-conn and round-robin upstreams only).
//!
//! A WebSocket lives for hours, so after a scale-out or a backend's recovery least-conn fills
//! the new backend only as old clients leave, while the others stay hot. Here a backend holding
//! more than ceil(skew × mean) live tunnels (the mean per unit of weight, over backends that
//! take connections) has the excess closed politely with 1012 Service Restart, at most
//! `rebalance_rate` closes a second per upstream; the clients reconnect and least-conn sends
//! them to the emptier backends. Never on sticky-hash upstreams: affinity wins.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::proxy::tunnel::{CloseAll, CloseReason};

/// Close 1012 Service Restart: "come back in a moment", as after a deploy.
const SERVICE_RESTART: u16 = 1012;
/// How often the balance is looked at.
const TICK: Duration = Duration::from_millis(100);

/// Rebalances upstream `index` of the running snapshot until `stop`.
pub async fn run(proxy: Arc<Proxy>, index: usize, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = 0.0f64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
            _ = proxy.shutdown.stop_token().cancelled() => return,
        }
        let snap = proxy.snapshot();
        let (Some(upstream), Some(balancer)) =
            (snap.config.upstreams.get(index), snap.balancers.get(index))
        else {
            return;
        };
        let Some(skew) = upstream.rebalance_skew else {
            return;
        };
        budget =
            (budget + upstream.rebalance_rate * TICK.as_secs_f64()).min(upstream.rebalance_rate);
        if budget < 1.0 {
            continue;
        }
        let open: Vec<_> = balancer
            .backends()
            .iter()
            .filter(|b| !b.is_draining() && b.is_healthy())
            .collect();
        let total: i64 = open.iter().map(|b| b.tunnels()).sum();
        let weight: u64 = open.iter().map(|b| u64::from(b.weight())).sum();
        if open.len() < 2 || total <= 0 || weight == 0 {
            continue;
        }
        let mean_per_weight = total as f64 / weight as f64;
        for backend in open {
            let allowed = (skew * mean_per_weight * f64::from(backend.weight())).ceil() as usize;
            if backend.tunnels() as usize <= allowed || budget < 1.0 {
                continue;
            }
            let moved = proxy.registry.shed(
                backend,
                allowed,
                budget as usize,
                CloseAll {
                    reason: CloseReason::Rebalance,
                    code: SERVICE_RESTART,
                    spread: Duration::ZERO,
                    linger: snap.config.drain.close_linger,
                },
            );
            if moved > 0 {
                budget -= moved as f64;
                tracing::info!(upstream = %upstream.name, backend = %backend.name, moved, allowed, "rebalancing: closing tunnels with 1012");
            }
        }
    }
}
