//! Backend selection: one [`Balancer`] per upstream, one strategy behind it.
//!
//! Lock-free on the hot path: each [`Backend`] carries atomics (live count, passive health) and a
//! pick returns a [`Lease`] that holds the backend and gives its count back on drop, so a panic or
//! a cancelled task cannot leak a count. Strategies only rank backends; health, retries ("try the
//! next one") and the key fallback live here so each strategy stays pure and unit-testable.

pub mod hash;
pub mod health;
pub mod key;
mod least_conn;
pub mod pacing;
mod pin;
pub mod registry;
mod round_robin;
mod sticky_hash;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Balance, HashKeySpec, Server, Upstream};
use crate::metrics::{BackendMetrics, Metrics, UpstreamMetrics};

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;
pub use sticky_hash::StickyHash;

/// One backend server and its shared, live state.
pub struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The address as configured: its identity in hashing, metrics and logs.
    pub name: String,
    /// Relative share, 1..=256 (a reload may change it; the backend and its counts stay).
    weight: AtomicU32,
    /// Hash of `name`, fixed for the backend's life; rendezvous hashing mixes it with the key.
    id_hash: u64,
    /// Live tunnels plus in-flight requests; only [`Lease`] changes it.
    live: AtomicUsize,
    /// Milliseconds since the balancer's epoch of the last connect failure, 0 when healthy.
    failed_at_ms: AtomicU64,
    /// A connect to it has succeeded at least once; until then (and without a health-check
    /// verdict) its state is [`BackendState::Unknown`].
    connected_once: AtomicBool,
    /// What the active health checks last concluded ([`Health`] as a number).
    health: AtomicU8,
    /// Taking no new connections: drained by the admin API, or removed by a reload.
    draining: AtomicBool,
    /// Counts drains, so a drain timer knows whether its drain is still the current one.
    drain_epoch: AtomicU32,
    /// Token bucket on new upgrades (`max_upgrades_per_second`).
    pub pacing: pacing::Pacing,
    /// When the backend's slow start began (process clock, ms; 0: none running).
    ramp_start_ms: AtomicU64,
    /// Length of a slow start, ms (0: off).
    slow_start_ms: AtomicU64,
    /// Metric handles for this backend.
    pub metrics: BackendMetrics,
}

/// What the active health checks say of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not checked (passive health only), or no verdict yet: selectable.
    Unknown = 0,
    /// `rise` checks in a row passed.
    Up = 1,
    /// `fall` checks in a row failed: skipped by every strategy.
    Down = 2,
}

/// The state an operator sees (`switchboard_backend_state`, `/admin/upstreams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Known to take connections: its health checks pass, or its last connect succeeded.
    Up,
    /// Failed its health checks (or, without them, its last connect).
    Down,
    /// Takes no new connections; its tunnels are being drained.
    Draining,
    /// Nothing has tried it yet: no health-check verdict and no connect, so it cannot be called
    /// up. It is still picked like an up backend (reporting only: it is not down); passive
    /// health knows a backend only from traffic.
    Unknown,
}

impl BackendState {
    /// The label value and the JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Draining => "draining",
            BackendState::Unknown => "unknown",
        }
    }

    /// Every state, in label order.
    pub const ALL: [BackendState; 4] = [
        BackendState::Up,
        BackendState::Down,
        BackendState::Draining,
        BackendState::Unknown,
    ];
}

impl Backend {
    /// A backend of `upstream`, with its metric series (published as unknown).
    pub fn new(upstream: &str, server: &Server, metrics: &Metrics) -> Arc<Backend> {
        let backend = Arc::new(Backend {
            addr: server.addr,
            name: server.name.clone(),
            weight: AtomicU32::new(server.weight),
            id_hash: hash::hash_bytes(server.name.as_bytes()),
            live: AtomicUsize::new(0),
            failed_at_ms: AtomicU64::new(0),
            connected_once: AtomicBool::new(false),
            health: AtomicU8::new(Health::Unknown as u8),
            draining: AtomicBool::new(false),
            drain_epoch: AtomicU32::new(0),
            pacing: pacing::Pacing::default(),
            ramp_start_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            metrics: metrics.backend(upstream, &server.name),
        });
        backend.publish_state();
        backend
    }

    /// Relative share, 1..=256.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Takes the weight of a reloaded config.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Live tunnels plus in-flight requests now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The active health checks' verdict.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// Records a health-check verdict and publishes the state. A backend that comes back up
    /// ramps in (slow start).
    pub fn set_health(&self, health: Health) {
        let before = self.health.swap(health as u8, Ordering::Relaxed);
        if before == Health::Down as u8 && health == Health::Up {
            self.start_ramp();
        }
        self.publish_state();
    }

    /// Sets the upstream's slow start length (a reload may change it).
    pub fn set_slow_start(&self, slow_start: Duration) {
        self.slow_start_ms
            .store(slow_start.as_millis() as u64, Ordering::Relaxed);
    }

    /// Starts a slow start: the share ramps from 10 % to 100 % over `slow_start`.
    pub fn start_ramp(&self) {
        if self.slow_start_ms.load(Ordering::Relaxed) > 0 {
            self.ramp_start_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether a round-robin turn goes to this backend: always, except during a slow start,
    /// when it does with the probability of the current share.
    fn takes_turn(&self) -> bool {
        if self.ramp_start_ms.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let full = u64::from(self.weight()) * 1000;
        let share = self.effective_weight_milli();
        share >= full || rand::random::<u64>() % full < share
    }

    /// The weight least-conn and round-robin use: during a slow start, a share of it growing
    /// linearly from 10 % to 100 %, in thousandths of a weight unit.
    pub fn effective_weight_milli(&self) -> u64 {
        let full = u64::from(self.weight()) * 1000;
        let started = self.ramp_start_ms.load(Ordering::Relaxed);
        if started == 0 {
            return full;
        }
        let length = self.slow_start_ms.load(Ordering::Relaxed).max(1);
        let elapsed = now_ms().saturating_sub(started);
        if elapsed >= length {
            self.ramp_start_ms.store(0, Ordering::Relaxed);
            return full;
        }
        let share = 100 + 900 * elapsed / length; // per mille
        (full * share / 1000).max(1)
    }

    /// Whether the backend is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or ends draining; true if that changed anything.
    pub fn set_draining(&self, draining: bool) -> bool {
        let changed = self.draining.swap(draining, Ordering::Relaxed) != draining;
        if changed && draining {
            self.drain_epoch.fetch_add(1, Ordering::Relaxed);
        }
        self.publish_state();
        changed
    }

    /// Which drain this is (changes each time draining starts).
    pub fn drain_epoch(&self) -> u32 {
        self.drain_epoch.load(Ordering::Relaxed)
    }

    /// Live tunnels on this backend (without in-flight plain requests).
    pub fn tunnels(&self) -> i64 {
        self.metrics.tunnels_active.iter().map(|g| g.get()).sum()
    }

    /// Healthy as far as checks and the last connect know (true for a backend nothing has
    /// tried yet: it is eligible).
    pub fn is_healthy(&self) -> bool {
        self.health() != Health::Down && self.failed_at_ms.load(Ordering::Relaxed) == 0
    }

    /// Healthy, and known to be: a health check said up, or a connect succeeded.
    pub fn is_known_up(&self) -> bool {
        self.is_healthy()
            && (self.health() == Health::Up || self.connected_once.load(Ordering::Relaxed))
    }

    /// Up, down, draining, or unknown (never tried).
    pub fn state(&self) -> BackendState {
        if self.is_draining() {
            BackendState::Draining
        } else if !self.is_healthy() {
            BackendState::Down
        } else if self.is_known_up() {
            BackendState::Up
        } else {
            BackendState::Unknown
        }
    }

    /// Sets `switchboard_backend_up` (1 only when known up, draining or not) and
    /// `switchboard_backend_state` from the current state.
    pub fn publish_state(&self) {
        let state = self.state();
        self.metrics.up.set(i64::from(self.is_known_up()));
        for (gauge, s) in self.metrics.state.iter().zip(BackendState::ALL) {
            gauge.set(i64::from(s == state));
        }
    }
}

/// A claim on a backend: counts as one live connection until dropped.
pub struct Lease {
    backend: Arc<Backend>,
}

impl Lease {
    fn new(backend: Arc<Backend>) -> Self {
        backend.live.fetch_add(1, Ordering::Relaxed);
        Lease { backend }
    }

    /// The backend this lease counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most connect attempts per request (as HAProxy's default `retries 3`).
const MAX_ATTEMPTS: usize = 3;

/// Backends already tried for one request, so a retry goes to the next choice. Inline: a pick
/// must not allocate.
#[derive(Default, Debug)]
pub struct Tried {
    indices: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    /// Whether `index` was tried.
    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&index)
    }
    /// How many were tried.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True before the first attempt.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn push(&mut self, index: usize) {
        if self.len < MAX_ATTEMPTS {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }
}

/// A strategy ranks backends; `eligible` says which may be chosen for this pick.
enum Strategy {
    LeastConn(LeastConn),
    StickyHash(StickyHash),
    RoundRobin(RoundRobin),
}

/// The balancer of one upstream.
pub struct Balancer {
    /// Upstream name.
    pub name: String,
    backends: Vec<Arc<Backend>>,
    strategy: Strategy,
    /// Used when sticky-hash finds no key in the request.
    fallback: LeastConn,
    key: Option<HashKeySpec>,
    /// Connect attempts per request: every backend once, at most [`MAX_ATTEMPTS`].
    max_attempts: usize,
    /// A backend that failed to connect is skipped for this long.
    retry_after_ms: u64,
    /// Metric handles for this upstream.
    pub metrics: UpstreamMetrics,
}

/// The outcome of [`Balancer::pick`].
pub struct Pick {
    /// The claim on the chosen backend.
    pub lease: Lease,
    /// Its index, to record in [`Tried`] if the connect fails.
    pub index: usize,
}

impl Balancer {
    /// Builds the balancer of `upstream` with fresh backends (tests and benches).
    pub fn new(upstream: &Upstream, retry_after: Duration, metrics: &Metrics) -> Self {
        let backends = upstream
            .servers
            .iter()
            .map(|s| Backend::new(&upstream.name, s, metrics))
            .collect();
        Self::with_backends(upstream, backends, retry_after, metrics)
    }

    /// Builds the balancer of `upstream` over `backends` (one per server, in config order),
    /// which may be carried over from the previous config so their counts stay true.
    pub fn with_backends(
        upstream: &Upstream,
        backends: Vec<Arc<Backend>>,
        retry_after: Duration,
        metrics: &Metrics,
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
        let strategy = match upstream.balance {
            Balance::LeastConn => Strategy::LeastConn(LeastConn::new()),
            Balance::StickyHash => {
                Strategy::StickyHash(StickyHash::new(upstream.load_factor, &weights))
            }
            Balance::RoundRobin => Strategy::RoundRobin(RoundRobin::new(&weights)),
        };
        Balancer {
            name: upstream.name.clone(),
            max_attempts: backends.len().min(MAX_ATTEMPTS),
            backends,
            strategy,
            fallback: LeastConn::new(),
            key: upstream.hash_key.clone(),
            retry_after_ms: retry_after.as_millis() as u64,
            metrics: metrics.upstream(&upstream.name),
        }
    }

    /// The backends, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// What the sticky-hash key is taken from, if any.
    pub fn key_spec(&self) -> Option<&HashKeySpec> {
        self.key.as_ref()
    }

    /// Whether another attempt is allowed after `tried`.
    pub fn may_retry(&self, tried: &Tried) -> bool {
        tried.len() < self.max_attempts
    }

    /// Picks a backend not yet tried, never a draining one nor one the health checks took
    /// down. Backends whose last connect worked first; if every untried one failed recently,
    /// they are tried anyway (a fast refusal beats a guess). `key` is the request's hash
    /// key (sticky-hash); `None` makes sticky-hash fall back to least-conn.
    pub fn pick(&self, key: Option<u64>, tried: &mut Tried) -> Option<Pick> {
        if tried.len() >= self.max_attempts.max(1) {
            return None;
        }
        let now = std::cell::OnceCell::new();
        // Draining backends and those the health checks took down are never picked.
        let selectable = |i: usize| {
            let backend = &self.backends[i];
            !tried.contains(i) && !backend.is_draining() && backend.health() != Health::Down
        };
        let healthy =
            |i: usize| selectable(i) && self.is_available(i, || *now.get_or_init(|| self.now_ms()));
        let index = self
            .choose(key, &healthy)
            .or_else(|| self.choose(key, &selectable))?;
        tried.push(index);
        Some(Pick {
            lease: Lease::new(self.backends[index].clone()),
            index,
        })
    }

    fn choose(&self, key: Option<u64>, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        match (&self.strategy, key) {
            (Strategy::LeastConn(s), _) => s.choose(&self.backends, eligible),
            // Slow start in a fixed cycle: a ramping backend takes its turn with the
            // probability of its current share, else the turn passes on.
            (Strategy::RoundRobin(s), _) => s
                .choose(&|i| eligible(i) && self.backends[i].takes_turn())
                .or_else(|| s.choose(eligible)),
            (Strategy::StickyHash(s), Some(key)) => s.choose(&self.backends, key, eligible),
            (Strategy::StickyHash(_), None) => self.fallback.choose(&self.backends, eligible),
        }
    }

    /// Records a failed connect: the backend is skipped for `backend_retry`.
    pub fn report_failure(&self, index: usize) {
        let backend = &self.backends[index];
        backend
            .failed_at_ms
            .store(self.now_ms().max(1), Ordering::Relaxed);
        backend.publish_state();
    }

    /// Records a successful connect. Publishes only on a change (the first success, or one
    /// after a failure), so the common case is two loads.
    pub fn report_success(&self, index: usize) {
        let backend = &self.backends[index];
        let first = !backend.connected_once.load(Ordering::Relaxed)
            && !backend.connected_once.swap(true, Ordering::Relaxed);
        if backend.failed_at_ms.load(Ordering::Relaxed) != 0 || first {
            backend.failed_at_ms.store(0, Ordering::Relaxed);
            backend.publish_state();
        }
    }

    /// Healthy, or failed long enough ago to be tried again. The clock is read only when a
    /// backend has failed.
    fn is_available(&self, index: usize, now_ms: impl FnOnce() -> u64) -> bool {
        let failed = self.backends[index].failed_at_ms.load(Ordering::Relaxed);
        failed == 0 || now_ms().saturating_sub(failed) >= self.retry_after_ms
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// The backends one request may try, in order: the strategy's choice for the key, then the
/// next ones while attempts fail, never a draining backend or one the health checks took down.
/// The one "try the next backend" of the request path; the callers only decide *whether* a
/// failure may be retried (a WebSocket handshake always, a plain request only if resending it
/// is safe).
pub struct Attempts<'a> {
    balancer: &'a Balancer,
    key: Option<u64>,
    tried: Tried,
    /// A backend to try first (a sticky cookie's); see [`Attempts::pinned`].
    pin: Option<usize>,
}

impl<'a> Attempts<'a> {
    /// The next backend to try; `None` when none is left.
    pub fn next_pick(&mut self) -> Option<Pick> {
        if let Some(pick) = self.take_pin() {
            return Some(pick);
        }
        if self.tried.is_empty()
            && self.key.is_none()
            && matches!(self.balancer.strategy, Strategy::StickyHash(_))
        {
            // Once per request, however many attempts and passes follow.
            self.balancer.metrics.fallback.inc();
        }
        self.balancer.pick(self.key, &mut self.tried)
    }

    /// The attempt on `pick` failed to connect: the backend is skipped for `backend_retry`.
    /// True if another attempt is allowed.
    pub fn failed(&mut self, pick: &Pick) -> bool {
        self.balancer.report_failure(pick.index);
        self.balancer.may_retry(&self.tried)
    }

    /// The attempt on `pick` connected.
    pub fn succeeded(&self, pick: &Pick) {
        self.balancer.report_success(pick.index);
    }
}

impl Balancer {
    /// The attempts of one request with this hash key.
    pub fn attempts(&self, key: Option<u64>) -> Attempts<'_> {
        Attempts {
            balancer: self,
            key,
            tried: Tried::default(),
            pin: None,
        }
    }
}

/// Milliseconds on the process-wide clock (never 0), so that passive-failure times mean the same
/// in every balancer a reload builds.
pub fn now_ms() -> u64 {
    process_epoch().elapsed().as_millis() as u64 + 1
}

/// The start of the process-wide clock.
fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Compares `a.live / a.weight` with `b.live / b.weight` without division (weights as slow
/// start has them now).
fn load_less(a: &Backend, b: &Backend) -> std::cmp::Ordering {
    let la = a.live() as u64 * b.effective_weight_milli();
    let lb = b.live() as u64 * a.effective_weight_milli();
    la.cmp(&lb)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Server;

    pub(crate) fn upstream(balance: Balance, weights: &[u32]) -> Upstream {
        Upstream {
            name: "test".into(),
            balance,
            hash_key: (balance == Balance::StickyHash).then_some(HashKeySpec::Ip),
            load_factor: None,
            tls: None,
            dns: Vec::new(),
            resolve_interval: Duration::from_secs(10),
            slow_start: Duration::ZERO,
            upgrade_pacing: None,
            rebalance_skew: None,
            rebalance_rate: 10.0,
            health_check: None,
            sticky_cookie: None,
            send_proxy_protocol: None,
            servers: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Server {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    name: format!("127.0.0.1:{}", 9000 + i),
                    weight,
                })
                .collect(),
        }
    }

    #[test]
    fn lease_counts_until_dropped_even_on_panic() {
        let b = Balancer::new(
            &upstream(Balance::LeastConn, &[1, 1]),
            Duration::from_secs(1),
            &Metrics::new(),
        );
        let pick = b.pick(None, &mut Tried::default()).unwrap();
        let backend = pick.lease.backend().clone();
        assert_eq!(backend.live(), 1);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = pick;
            panic!("task died");
        }));
        assert!(result.is_err());
        assert_eq!(backend.live(), 0);
    }

    #[test]
    fn failed_backend_is_skipped_then_retried_as_last_resort() {
        let b = Balancer::new(
            &upstream(Balance::RoundRobin, &[1, 1]),
            Duration::from_secs(60),
            &Metrics::new(),
        );
        b.report_failure(0);
        for _ in 0..4 {
            let pick = b.pick(None, &mut Tried::default()).unwrap();
            assert_eq!(pick.index, 1);
        }
        let mut tried = Tried::default();
        assert_eq!(b.pick(None, &mut tried).unwrap().index, 1);
        assert_eq!(b.pick(None, &mut tried).unwrap().index, 0);
        assert!(b.pick(None, &mut tried).is_none());
    }
}
