//! Backends outlive configs: each is keyed by (upstream, server as written, or the address a
//! `dns:` server resolved to) and carried into
//! every snapshot a reload builds, so its live count, leases, health and drain state stay true
//! across reloads. Touched only when a config is applied and by the admin API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Backend, Balancer};
use crate::config::Upstream;
use crate::metrics::Metrics;

/// Every configured backend of the process.
#[derive(Default)]
pub struct BackendRegistry {
    map: Mutex<HashMap<(String, String), Arc<Backend>>>,
}

impl BackendRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Backend>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backends of `upstream` in server order: the known ones kept (with the new weight),
    /// new ones created. The second list holds the backends that joined.
    pub fn resolve(
        &self,
        upstream: &Upstream,
        metrics: &Metrics,
    ) -> (Vec<Arc<Backend>>, Vec<Arc<Backend>>) {
        let mut map = self.lock();
        let mut joined = Vec::new();
        let backends = upstream
            .servers
            .iter()
            .map(|server| {
                let key = (upstream.name.clone(), server.name.clone());
                let backend = map.entry(key).or_insert_with(|| {
                    let backend = Backend::new(&upstream.name, server, metrics);
                    joined.push(backend.clone());
                    backend
                });
                backend.set_weight(server.weight);
                backend.set_slow_start(upstream.slow_start);
                backend.pacing.configure(upstream.upgrade_pacing);
                backend.clone()
            })
            .collect();
        (backends, joined)
    }

    /// Takes out the backends that none of `balancers` (a new snapshot's) has, with their
    /// upstream names: removed from the config, or gone from a `dns:` server's answer.
    pub fn remove_absent(&self, balancers: &[Balancer]) -> Vec<(String, Arc<Backend>)> {
        let mut map = self.lock();
        let keep = |upstream: &str, name: &str| {
            balancers
                .iter()
                .any(|b| b.name == upstream && b.backends().iter().any(|s| s.name == name))
        };
        let gone: Vec<(String, String)> =
            map.keys().filter(|(u, n)| !keep(u, n)).cloned().collect();
        gone.into_iter()
            .filter_map(|key| map.remove(&key).map(|b| (key.0, b)))
            .collect()
    }

    /// Puts a removed `backend` of `upstream` back, unless one of its name was made meanwhile;
    /// true if it is back.
    pub fn revive(&self, upstream: &str, backend: &Arc<Backend>) -> bool {
        let mut map = self.lock();
        let key = (upstream.to_owned(), backend.name.clone());
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, backend.clone());
        true
    }

    /// The backend `name` of `upstream`.
    pub fn find(&self, upstream: &str, name: &str) -> Option<Arc<Backend>> {
        self.lock()
            .get(&(upstream.to_owned(), name.to_owned()))
            .cloned()
    }
}
