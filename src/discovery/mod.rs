//! Backend discovery through DNS: a `dns:NAME:PORT` server stands for every A and AAAA record
//! of NAME (a Kubernetes headless Service, a Consul name), looked up at start and again and again.
//!
//! Process state vs. config snapshot: what the names resolved to last is process state
//! ([`Discovered`], like the backend registry); each snapshot's balancers are built from the
//! config's static servers plus that set. One task per upstream with `dns:` servers belongs to
//! the config in force (a reload restarts it, shutdown stops it); when an answer changes the set
//! it hands it to [`Reloader::rediscover`], the one writer, which rebuilds the snapshot exactly
//! as a reload does: a new address joins with slow start, a vanished one is drained politely.
//!
//! When to look up again: `resolve_interval` after a lookup, but never before the answer's TTL
//! is over (the TTL is a floor on the interval: an answer is not asked for again while it is
//! still valid). A failed lookup, and an empty one (NXDOMAIN, no records), keep the last good set
//! (a DNS hiccup must not drain every backend) and are retried after `resolve_interval`. If the
//! first lookup fails, the upstream starts without these backends (503) and keeps trying, as
//! Envoy's STRICT_DNS clusters do. `/readyz` waits until every server's first lookup is over
//! and applied ([`warming`]).

pub mod lookup;
pub mod warming;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Server, Upstream};
use crate::proxy::Proxy;
use crate::reload::Reloader;
use lookup::LookupError;

/// The `result` label values of `switchboard_dns_resolutions_total`.
pub const RESULTS: [&str; 3] = ["ok", "empty", "error"];

/// What each `dns:` server resolved to last, by (upstream, server as written). Read and written
/// only when a snapshot is built (never on the request path).
#[derive(Default)]
pub struct Discovered {
    map: Mutex<HashMap<(String, String), Vec<SocketAddr>>>,
}

impl Discovered {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Vec<SocketAddr>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what `spec` of `upstream` resolved to (sorted): `None` if that changed nothing,
    /// else whether it is the first answer the process has for it.
    pub fn set(&self, upstream: &str, spec: &str, addrs: Vec<SocketAddr>) -> Option<bool> {
        let mut map = self.lock();
        let key = (upstream.to_owned(), spec.to_owned());
        match map.insert(key, addrs.clone()) {
            Some(before) if before == addrs => None,
            before => Some(before.is_none()),
        }
    }

    /// Forgets the sets of `dns:` servers that `config` no longer has.
    pub fn retain(&self, config: &Config) {
        self.lock().retain(|(upstream, spec), _| {
            config
                .upstreams
                .iter()
                .any(|u| u.name == *upstream && u.dns.iter().any(|d| d.spec == *spec))
        });
    }

    /// `upstream` with its discovered backends added after the static ones: one server per
    /// address, sorted, named by the address itself (its identity in sticky hashing, metrics and
    /// the admin API: the same in every replica and across lookups), an address already listed
    /// statically or by an earlier `dns:` server left out.
    pub fn servers_of<'a>(&self, upstream: &'a Upstream) -> Cow<'a, Upstream> {
        if upstream.dns.is_empty() {
            return Cow::Borrowed(upstream);
        }
        let map = self.lock();
        let mut found: BTreeMap<SocketAddr, u32> = BTreeMap::new();
        for dns in &upstream.dns {
            let key = (upstream.name.clone(), dns.spec.clone());
            for addr in map.get(&key).into_iter().flatten() {
                found.entry(*addr).or_insert(dns.weight);
            }
        }
        let mut effective = upstream.clone();
        for (addr, weight) in found {
            if effective.servers.iter().all(|s| s.addr != addr) {
                effective.servers.push(Server {
                    addr,
                    name: addr.to_string(),
                    weight,
                });
            }
        }
        Cow::Owned(effective)
    }
}

/// Looks up the `dns:` servers of upstream `index` of the running config until `stop` (the
/// config is replaced) or shutdown, handing every changed set to `reloader`.
pub async fn run(
    reloader: Weak<Reloader>,
    proxy: Arc<Proxy>,
    index: usize,
    stop: CancellationToken,
) {
    let snap = proxy.snapshot();
    let Some(upstream) = snap.config.upstreams.get(index).cloned() else {
        return;
    };
    let dns = snap.config.dns.clone();
    drop(snap);
    let counters = RESULTS.map(|result| {
        proxy
            .metrics
            .dns_resolutions_total
            .with_label_values(&[upstream.name.as_str(), result])
    });
    let mut resolver = None;
    let mut failing = vec![false; upstream.dns.len()];
    let mut warm = false;
    loop {
        let mut wait = upstream.resolve_interval;
        let mut found = Vec::new();
        if resolver.is_none() {
            match lookup::resolver(&dns, upstream.resolve_interval) {
                Ok(built) => resolver = Some(built),
                Err(error) => {
                    counters[2].inc_by(upstream.dns.len() as u64);
                    tracing::error!(upstream = %upstream.name, %error, "cannot look up dns: servers");
                }
            }
        }
        for (server, failing) in upstream.dns.iter().zip(failing.iter_mut()) {
            let Some(resolver) = &resolver else { break };
            let outcome = tokio::select! {
                outcome = lookup::lookup(resolver, server) => outcome,
                _ = stop.cancelled() => return,
                _ = proxy.shutdown.stop_token().cancelled() => return,
            };
            match outcome {
                Ok(answer) => {
                    counters[0].inc();
                    if std::mem::take(failing) {
                        tracing::info!(upstream = %upstream.name, server = %server.spec,
                            addresses = answer.addrs.len(), "DNS lookups work again");
                    }
                    // The TTL is a floor: the answer is not asked for again while it is valid.
                    wait = wait.max(answer.ttl);
                    found.push((server.spec.clone(), answer.addrs));
                }
                Err(error) => {
                    counters[if matches!(error, LookupError::Empty) {
                        1
                    } else {
                        2
                    }]
                    .inc();
                    if !std::mem::replace(failing, true) {
                        tracing::warn!(upstream = %upstream.name, server = %server.spec, %error,
                            "DNS lookup failed; keeping the backends found last");
                    }
                }
            }
        }
        if !found.is_empty() {
            let Some(reloader) = reloader.upgrade() else {
                return;
            };
            reloader.rediscover(&stop, &upstream.name, found).await;
        }
        // Every server was tried once (or the resolver could not be built) and what was found
        // is in the snapshot: warming is over for them, unless a reload took over meanwhile
        // (its own task looks them up again).
        if !std::mem::replace(&mut warm, true) && !stop.is_cancelled() {
            for server in &upstream.dns {
                proxy.warming.finished(&upstream.name, &server.spec);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
            _ = proxy.shutdown.stop_token().cancelled() => return,
        }
    }
}
