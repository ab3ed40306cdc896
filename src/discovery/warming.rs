//! Readiness waits for the first DNS lookups, as Envoy's cluster warming does: a replica that
//! answered `/readyz` 200 before its `dns:` servers were looked up would get traffic while it
//! knows no backend, and answer 503 to it.
//!
//! Only the config the process started with gates readiness: readiness is about startup, so a
//! reload that adds a `dns:` server never turns a ready process unready. A first lookup that
//! fails finishes warming too, once that attempt is over (the resolver's timeouts included):
//! a DNS outage must not keep a replica unready for ever (the failure is logged and counted,
//! and the upstream answers 503 until a lookup works).

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::config::Config;

/// The `dns:` servers of the starting config whose first lookup is not over yet, by
/// (upstream, server as written). Process state; read by `/readyz`, never on the request path.
#[derive(Default)]
pub struct Warming {
    pending: Mutex<BTreeSet<(String, String)>>,
    /// Woken whenever `pending` shrinks, for [`Warming::warm`].
    shrunk: Notify,
}

impl Warming {
    /// Waits for every `dns:` server of `config`, the config the process starts with.
    pub fn new(config: &Config) -> Warming {
        let pending = config
            .upstreams
            .iter()
            .flat_map(|u| u.dns.iter().map(|d| (u.name.clone(), d.spec.clone())))
            .collect();
        Warming {
            pending: Mutex::new(pending),
            shrunk: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first lookup of `spec` of `upstream` is over (whatever it found), and applied.
    pub fn finished(&self, upstream: &str, spec: &str) {
        self.lock().remove(&(upstream.to_owned(), spec.to_owned()));
        self.shrunk.notify_waiters();
    }

    /// Stops waiting for the servers that `config` (a reload) no longer has: nobody looks them
    /// up any more.
    pub fn retain(&self, config: &Config) {
        self.lock().retain(|(upstream, spec)| {
            config
                .upstreams
                .iter()
                .any(|u| u.name == *upstream && u.dns.iter().any(|d| d.spec == *spec))
        });
        self.shrunk.notify_waiters();
    }

    /// Returns once nothing is waited for (at once without `dns:` servers).
    pub async fn warm(&self) {
        loop {
            let shrunk = self.shrunk.notified();
            tokio::pin!(shrunk);
            // Registered before the check, so a change between the two is not missed.
            shrunk.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            shrunk.await;
        }
    }

    /// What is still waited for, one `upstream (dns:NAME:PORT)` each; empty once warm.
    pub fn waiting(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(upstream, spec)| format!("{upstream} ({spec})"))
            .collect()
    }
}
