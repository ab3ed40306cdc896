//! Every metric switchboard exports, in one place, registered against an owned [`Registry`].
//!
//! No global statics: each running instance (and each test) owns its registry. Labels come only
//! from config names (upstream, backend) and small fixed enums (outcome, direction, code), never
//! from client input, so cardinality is bounded by the config. Handles used per chunk or per
//! request are resolved once (per upstream, per backend) so the hot path is one atomic add.
//!
//! On Linux the registry also holds the prometheus crate's process collector (`process_*`:
//! memory, descriptors, CPU, start time), read from `/proc/self` at each scrape.

mod limit;

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Counter, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub use limit::LimitClock;

/// The version in `switchboard_build_info`: the crate's.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit in `switchboard_build_info`: `git rev-parse --short HEAD` at build time, or
/// "unknown" (see `build.rs`).
pub const BUILD_COMMIT: &str = env!("SWITCHBOARD_COMMIT");

/// Buckets for handshakes and HTTP requests: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for tunnel lifetimes: 1 s to 1 day; WebSockets live for minutes to hours.
const TUNNEL_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

/// The registry and every metric family.
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` renders.
    pub registry: Registry,
    /// Client connections open now, plain and upgraded.
    pub connections_active: IntGauge,
    /// Client connections accepted since start.
    pub connections_total: IntCounter,
    /// `limits.max_connections`, beside `connections_active` (set at start; changing it takes
    /// a restart).
    pub connections_limit: IntGauge,
    /// `limits.max_tunnels`, beside `tunnels_active`, so an alert can say how close the
    /// process is to refusing upgrades (set at start; changing it takes a restart).
    pub tunnels_limit: IntGauge,
    /// Connections closed unserved because every slot stayed taken (see [`crate::listener::limit`]).
    pub connections_rejected_total: IntCounter,
    /// Time with every connection slot taken.
    pub connections_at_limit_seconds_total: LimitClock,
    /// 1, labelled with the version and commit that runs.
    pub build_info: IntGaugeVec,
    /// Failed accepts by kind (`fd_limit`, `other`); the accept loop carries on after each.
    pub accept_errors_total: IntCounterVec,
    /// Accepted client connections per event loop (`[runtime]`): how evenly the kernel spreads
    /// them over the loops.
    pub connections_accepted_total: IntCounterVec,
    /// Connections closed because `proxy_protocol` refused them, by reason.
    pub proxy_protocol_errors_total: IntCounterVec,
    /// Live tunnels per backend.
    pub tunnels_active: IntGaugeVec,
    /// WebSocket handshakes by outcome.
    pub upgrades_total: IntCounterVec,
    /// Time from the client's upgrade request to the backend's answer.
    pub upgrade_duration_seconds: HistogramVec,
    /// Tunnel lifetimes.
    pub tunnel_duration_seconds: HistogramVec,
    /// Bytes relayed through tunnels, counted per tunnel and published about once a second.
    pub tunnel_bytes_total: IntCounterVec,
    /// Tunnels closed, by reason and the close code sent or seen first.
    pub tunnels_closed_total: IntCounterVec,
    /// Tunnels whose TCP was ended at a deadline before their closing handshakes were done.
    pub tunnels_cut_total: IntCounterVec,
    /// Pings switchboard sent to idle clients.
    pub pings_sent_total: IntCounterVec,
    /// Polite closes in progress.
    pub tunnels_closing: IntGaugeVec,
    /// Plain requests by upstream and status code.
    pub http_requests_total: IntCounterVec,
    /// Plain requests sent again: to the next backend after a failed connect, or once more
    /// after a kept-alive connection closed under them.
    pub http_retries_total: IntCounterVec,
    /// Log lines the non-blocking writer dropped because it fell behind.
    pub log_lines_dropped_total: IntCounter,
    /// Where the dropped-line count comes from, set once logging is up.
    log_drops: Arc<std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter>>,
    /// Plain request latency to the response head.
    pub http_request_duration_seconds: HistogramVec,
    /// 1 when the backend is known healthy (health checks, or its last connect), else 0.
    pub backend_up: IntGaugeVec,
    /// 1 for the backend's current state (up, down, draining, unknown).
    pub backend_state: IntGaugeVec,
    /// Active health checks by result.
    pub health_checks_total: IntCounterVec,
    /// Config reloads by result.
    pub config_reloads_total: IntCounterVec,
    /// Lookups of `dns:` servers by upstream and result (ok, empty, error).
    pub dns_resolutions_total: IntCounterVec,
    /// When the config was last loaded successfully, seconds since the epoch.
    pub config_last_reload_success_timestamp_seconds: IntGauge,
    /// Live tunnels on draining backends.
    pub tunnels_draining: IntGaugeVec,
    /// WebSocket upgrades refused before reaching a backend, by reason.
    pub upgrades_rejected_total: IntCounterVec,
    /// Failed connect attempts to a backend, by reason (each attempt, apart from outcomes).
    pub backend_connect_errors_total: IntCounterVec,
    /// Sticky-hash picks that had no key and fell back to least-conn.
    pub balancer_fallback_total: IntCounterVec,
    /// Requests to upstreams with a `sticky_cookie`, by what their cookie was.
    pub sticky_cookie_total: IntCounterVec,
    /// TLS handshakes by outcome and protocol version.
    pub tls_handshakes_total: IntCounterVec,
    /// Time from the first byte to a finished TLS handshake.
    pub tls_handshake_duration_seconds: Histogram,
    /// Application protocol chosen by ALPN.
    pub tls_alpn_total: IntCounterVec,
    /// Expiry of each served certificate, seconds since the epoch.
    pub tls_cert_not_after_seconds: IntGaugeVec,
    /// Certificate reloads from disk by outcome.
    pub tls_cert_reloads_total: IntCounterVec,
    /// Take-overs asked of this process on `admin.handover_socket`, by result.
    pub handovers_total: IntCounterVec,
    /// 1 for each listener this process was given instead of binding it (hand-over, systemd).
    pub listeners_inherited: IntGaugeVec,
}

impl Metrics {
    /// Builds every family and registers it with a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            connections_active: IntGauge::new(
                "switchboard_connections_active",
                "Client connections open now, plain and upgraded.",
            )
            .expect("valid metric"),
            connections_total: IntCounter::new(
                "switchboard_connections_total",
                "Client connections accepted and given a slot.",
            )
            .expect("valid metric"),
            connections_limit: IntGauge::new(
                "switchboard_connections_limit",
                "The most client connections open at once (limits.max_connections).",
            )
            .expect("valid metric"),
            tunnels_limit: IntGauge::new(
                "switchboard_tunnels_limit",
                "The most WebSocket tunnels open at once (limits.max_tunnels).",
            )
            .expect("valid metric"),
            connections_rejected_total: IntCounter::new(
                "switchboard_connections_rejected_total",
                "Client connections closed unserved: every slot stayed taken for the wait at the limit.",
            )
            .expect("valid metric"),
            connections_at_limit_seconds_total: LimitClock::new(
                Counter::new(
                    "switchboard_connections_at_limit_seconds_total",
                    "Seconds with every client connection slot (limits.max_connections) taken.",
                )
                .expect("valid metric"),
            ),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "switchboard_build_info",
                    "1, labelled with the running switchboard's version and commit.",
                ),
                &["version", "commit"],
            )
            .expect("valid metric"),
            accept_errors_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_accept_errors_total",
                    "Failed accepts; fd_limit means the open-files limit was reached.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            connections_accepted_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_connections_accepted_total",
                    "Client connections accepted, per event loop.",
                ),
                &["event_loop"],
            )
            .expect("valid metric"),
            proxy_protocol_errors_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_proxy_protocol_errors_total",
                    "Connections closed unserved by proxy_protocol, by reason: untrusted (peer not in \
                     trusted_proxies), missing (no header), malformed, timeout.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            tunnels_active: IntGaugeVec::new(
                Opts::new(
                    "switchboard_tunnels_active",
                    "Live WebSocket tunnels; protocol is the client's: http1 (Upgrade) or h2 (RFC 8441).",
                ),
                &["upstream", "backend", "protocol"],
            )
            .expect("valid metric"),
            upgrades_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_upgrades_total",
                    "WebSocket handshakes by outcome: upgraded, rejected (backend answered non-101), \
                     connect_error, timeout, bad_response.",
                ),
                &["upstream", "backend", "outcome", "protocol"],
            )
            .expect("valid metric"),
            upgrade_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_upgrade_duration_seconds",
                    "Time from the client's upgrade request to its answer, by outcome: ok, rejected \
                     (backend answered non-101), connect_error, timeout, bad_response, no_backend, \
                     rate_limited, client_error.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["upstream", "outcome"],
            )
            .expect("valid metric"),
            tunnel_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_tunnel_duration_seconds",
                    "Lifetime of WebSocket tunnels.",
                )
                .buckets(TUNNEL_BUCKETS.to_vec()),
                &["upstream"],
            )
            .expect("valid metric"),
            tunnel_bytes_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tunnel_bytes_total",
                    "Bytes relayed through tunnels; direction is to_backend or to_client.",
                ),
                &["upstream", "direction"],
            )
            .expect("valid metric"),
            tunnels_closed_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tunnels_closed_total",
                    "Tunnels closed, by reason (shutdown, idle_timeout, half_closed_timeout, lifetime, \
                     message_too_big, ping_timeout, backend_closed, client_closed, error, bad_framing) \
                     and code (the WebSocket close code sent or seen first, other, or none).",
                ),
                &["upstream", "reason", "code"],
            )
            .expect("valid metric"),
            tunnels_cut_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tunnels_cut_total",
                    "Tunnels whose TCP was ended at a deadline (drain.close_linger, the end of \
                     timeouts.shutdown_grace, timeouts.half_closed) before their closing handshakes were done.",
                ),
                &["upstream", "reason"],
            )
            .expect("valid metric"),
            pings_sent_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_pings_sent_total",
                    "Pings switchboard sent to clients whose tunnel was quiet for websocket.ping_interval.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            tunnels_closing: IntGaugeVec::new(
                Opts::new(
                    "switchboard_tunnels_closing",
                    "Tunnels in a polite close now: Close frames sent, closing handshakes not yet over.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            http_requests_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_requests_total",
                    "Plain HTTP requests by upstream (\"none\" when no route matched), status and the \
                     backend that answered (\"none\" when none did).",
                ),
                &["upstream", "code", "backend"],
            )
            .expect("valid metric"),
            http_retries_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_http_retries_total",
                    "Plain requests sent again: to the next backend after a failed connect (any \
                     method; nothing had been sent), or once on a new connection after a kept-alive \
                     one closed before answering (idempotent methods).",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            log_lines_dropped_total: IntCounter::new(
                "switchboard_log_lines_dropped_total",
                "Log lines (access lines included) dropped because the log writer fell behind.",
            )
            .expect("valid metric"),
            log_drops: Arc::default(),
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "switchboard_http_request_duration_seconds",
                    "Plain HTTP request latency until the response head, failures included, by outcome: \
                     ok (the backend answered), connect_error, timeout, bad_response, no_backend, client_error.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["upstream", "outcome"],
            )
            .expect("valid metric"),
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "switchboard_backend_up",
                    "1 if the backend is known healthy (health checks pass, or its last connect \
                     succeeded), 0 if down or not known yet (nothing tried it).",
                ),
                &["upstream", "backend"],
            )
            .expect("valid metric"),
            backend_state: IntGaugeVec::new(
                Opts::new(
                    "switchboard_backend_state",
                    "1 for the backend's current state: up, down (health checks or last connect failed), \
                     draining, or unknown (no health checks and no connect tried yet).",
                ),
                &["upstream", "backend", "state"],
            )
            .expect("valid metric"),
            health_checks_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_health_checks_total",
                    "Active health checks by result: ok, failed, timeout.",
                ),
                &["upstream", "backend", "result"],
            )
            .expect("valid metric"),
            config_reloads_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_config_reloads_total",
                    "Config reloads (SIGHUP, POST /admin/reload) by result: ok, error (the running config stays).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            dns_resolutions_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_dns_resolutions_total",
                    "Lookups of dns: servers by upstream and result: ok, empty (NXDOMAIN or no records), error; empty and error keep the backends found last.",
                ),
                &["upstream", "result"],
            )
            .expect("valid metric"),
            config_last_reload_success_timestamp_seconds: IntGauge::new(
                "switchboard_config_last_reload_success_timestamp_seconds",
                "When the running config was loaded (at start or by the last good reload), Unix time.",
            )
            .expect("valid metric"),
            tunnels_draining: IntGaugeVec::new(
                Opts::new(
                    "switchboard_tunnels_draining",
                    "Live tunnels on draining backends (drained by the admin API or removed by a reload).",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upgrades_rejected_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_upgrades_rejected_total",
                    "WebSocket upgrades refused before reaching a backend, by reason: no_backend, \
                     rate_limited (max_upgrades_per_second), origin (allowed_origins, require_origin), \
                     per_ip_limit (limits.max_tunnels_per_ip, limits.upgrades_per_ip_per_second), \
                     max_tunnels (limits.max_tunnels).",
                ),
                &["upstream", "reason"],
            )
            .expect("valid metric"),
            backend_connect_errors_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_backend_connect_errors_total",
                    "Failed connect attempts to a backend (one request may make several), by reason: \
                     refused, timeout, tls, other.",
                ),
                &["upstream", "backend", "reason"],
            )
            .expect("valid metric"),
            balancer_fallback_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_balancer_fallback_total",
                    "Sticky-hash picks whose request had no hash key; they use least-conn.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            sticky_cookie_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_sticky_cookie_total",
                    "Requests to upstreams with a sticky_cookie, by outcome: valid (sent to the backend \
                     it names), missing, invalid (malformed or wrongly signed), unavailable (its \
                     backend is down, draining or gone); all but valid get a new cookie.",
                ),
                &["upstream", "outcome"],
            )
            .expect("valid metric"),
            tls_handshakes_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tls_handshakes_total",
                    "TLS handshakes by outcome (ok, error, timeout, plain_http) and version.",
                ),
                &["outcome", "version"],
            )
            .expect("valid metric"),
            tls_handshake_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_tls_handshake_duration_seconds",
                    "Time from the client's first byte to a finished TLS handshake.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            tls_alpn_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tls_alpn_total",
                    "TLS connections by ALPN protocol (h2, http/1.1, none).",
                ),
                &["protocol"],
            )
            .expect("valid metric"),
            tls_cert_not_after_seconds: IntGaugeVec::new(
                Opts::new(
                    "switchboard_tls_cert_not_after_seconds",
                    "Expiry of each served certificate (by file), seconds since the Unix epoch.",
                ),
                &["cert"],
            )
            .expect("valid metric"),
            tls_cert_reloads_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_tls_cert_reloads_total",
                    "Certificate reloads from disk by outcome; on error the previous certificate stays.",
                ),
                &["cert", "outcome"],
            )
            .expect("valid metric"),
            handovers_total: IntCounterVec::new(
                Opts::new(
                    "switchboard_handovers_total",
                    "Take-overs asked of this process on admin.handover_socket: ok (the listeners went to the new process), failed (it did not get ready; this one keeps serving), refused.",
                ),
                &["result"],
            )
            .expect("valid metric"),
            listeners_inherited: IntGaugeVec::new(
                Opts::new(
                    "switchboard_listeners_inherited",
                    "1 for each listener taken from a previous process (source=handover) or from systemd (source=systemd) instead of bound.",
                ),
                &["listener", "source"],
            )
            .expect("valid metric"),
            registry,
        };
        m.build_info
            .with_label_values(&[BUILD_VERSION, BUILD_COMMIT])
            .set(1);
        // Both results exist from the start at 0, so the first failed reload is an increase
        // that `increase()` and alerts can see, not a series that appears already at 1.
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        for c in m.collectors() {
            m.registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        m
    }

    /// switchboard's own collectors (without the process collector).
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.connections_active.clone()),
            Box::new(self.connections_total.clone()),
            Box::new(self.connections_limit.clone()),
            Box::new(self.tunnels_limit.clone()),
            Box::new(self.connections_rejected_total.clone()),
            Box::new(self.connections_at_limit_seconds_total.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.accept_errors_total.clone()),
            Box::new(self.connections_accepted_total.clone()),
            Box::new(self.proxy_protocol_errors_total.clone()),
            Box::new(self.tunnels_active.clone()),
            Box::new(self.upgrades_total.clone()),
            Box::new(self.upgrade_duration_seconds.clone()),
            Box::new(self.tunnel_duration_seconds.clone()),
            Box::new(self.tunnel_bytes_total.clone()),
            Box::new(self.tunnels_closed_total.clone()),
            Box::new(self.tunnels_cut_total.clone()),
            Box::new(self.pings_sent_total.clone()),
            Box::new(self.tunnels_closing.clone()),
            Box::new(self.http_requests_total.clone()),
            Box::new(self.http_retries_total.clone()),
            Box::new(self.log_lines_dropped_total.clone()),
            Box::new(self.http_request_duration_seconds.clone()),
            Box::new(self.backend_up.clone()),
            Box::new(self.backend_state.clone()),
            Box::new(self.health_checks_total.clone()),
            Box::new(self.config_reloads_total.clone()),
            Box::new(self.dns_resolutions_total.clone()),
            Box::new(self.config_last_reload_success_timestamp_seconds.clone()),
            Box::new(self.tunnels_draining.clone()),
            Box::new(self.upgrades_rejected_total.clone()),
            Box::new(self.balancer_fallback_total.clone()),
            Box::new(self.backend_connect_errors_total.clone()),
            Box::new(self.sticky_cookie_total.clone()),
            Box::new(self.tls_handshakes_total.clone()),
            Box::new(self.tls_handshake_duration_seconds.clone()),
            Box::new(self.tls_alpn_total.clone()),
            Box::new(self.tls_cert_not_after_seconds.clone()),
            Box::new(self.tls_cert_reloads_total.clone()),
            Box::new(self.handovers_total.clone()),
            Box::new(self.listeners_inherited.clone()),
        ]
    }

    /// Every registered family's name and type (`counter`, `gauge`, `histogram`), with or
    /// without samples: a labelled family shows on `/metrics` only once it has a series, and
    /// the test that holds README.md's table to the code needs them all.
    pub fn families(&self) -> Vec<(String, &'static str)> {
        let mut families: Vec<(String, &'static str)> = self
            .collectors()
            .iter()
            .flat_map(|c| c.collect())
            .chain(self.registry.gather())
            .map(|f| (f.name().to_owned(), type_name(f.get_field_type())))
            .collect();
        families.sort();
        families.dedup();
        families
    }

    /// Handles for one upstream, resolved once per config.
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let each = |vec: &HistogramVec| OUTCOMES.map(|o| vec.with_label_values(&[upstream, o]));
        UpstreamMetrics {
            http_retries_total: self.http_retries_total.with_label_values(&[upstream]),
            http_duration: each(&self.http_request_duration_seconds),
            upgrade_duration: each(&self.upgrade_duration_seconds),
            fallback: self.balancer_fallback_total.with_label_values(&[upstream]),
        }
    }

    /// Handles for one backend, resolved once when it joins; the backend publishes its state
    /// into them ([`crate::balancer::Backend::publish_state`]).
    pub fn backend(&self, upstream: &str, backend: &str) -> BackendMetrics {
        let up = self.backend_up.with_label_values(&[upstream, backend]);
        let state = crate::balancer::BackendState::ALL.map(|s| {
            self.backend_state
                .with_label_values(&[upstream, backend, s.as_str()])
        });
        let upgrades = UPGRADE_OUTCOMES.map(|outcome| {
            ["http1", "h2"].map(|protocol| {
                self.upgrades_total
                    .with_label_values(&[upstream, backend, outcome, protocol])
            })
        });
        BackendMetrics {
            state,
            upgrades,
            tunnels_active: [
                self.tunnels_active
                    .with_label_values(&[upstream, backend, "http1"]),
                self.tunnels_active
                    .with_label_values(&[upstream, backend, "h2"]),
            ],
            up,
        }
    }

    /// Drops every series of a backend that left the config.
    pub fn remove_backend(&self, upstream: &str, backend: &str) {
        let _ = self.backend_up.remove_label_values(&[upstream, backend]);
        for state in crate::balancer::BackendState::ALL {
            let _ = self
                .backend_state
                .remove_label_values(&[upstream, backend, state.as_str()]);
        }
        for protocol in ["http1", "h2"] {
            let _ = self
                .tunnels_active
                .remove_label_values(&[upstream, backend, protocol]);
            for outcome in UPGRADE_OUTCOMES {
                let _ = self
                    .upgrades_total
                    .remove_label_values(&[upstream, backend, outcome, protocol]);
            }
        }
        for reason in ["refused", "timeout", "tls", "other"] {
            let _ = self
                .backend_connect_errors_total
                .remove_label_values(&[upstream, backend, reason]);
        }
        for result in ["ok", "failed", "timeout"] {
            let _ = self
                .health_checks_total
                .remove_label_values(&[upstream, backend, result]);
        }
    }

    /// Lets scrapes report the lines the log writer dropped.
    pub fn watch_log_writer(&self, counter: tracing_appender::non_blocking::ErrorCounter) {
        let _ = self.log_drops.set(counter);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        if let Some(drops) = self.log_drops.get() {
            let seen = drops.dropped_lines() as u64;
            let counted = self.log_lines_dropped_total.get();
            if seen > counted {
                self.log_lines_dropped_total.inc_by(seen - counted);
            }
        }
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl UpstreamMetrics {
    /// Observes one plain request (`upgrade` false) or upgrade that took `seconds`.
    pub fn observe(&self, upgrade: bool, outcome: &str, seconds: f64) {
        let index = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        let histograms = if upgrade {
            &self.upgrade_duration
        } else {
            &self.http_duration
        };
        histograms[index].observe(seconds);
    }
}

/// The type as the text format's `# TYPE` line writes it.
fn type_name(t: prometheus::proto::MetricType) -> &'static str {
    use prometheus::proto::MetricType;
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `outcome` label values of the duration histograms.
pub const OUTCOMES: [&str; 8] = [
    "ok",
    "rejected",
    "connect_error",
    "timeout",
    "bad_response",
    "no_backend",
    "rate_limited",
    "client_error",
];

/// Per-upstream handles used on the data path.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// Plain request latency per outcome, in [`OUTCOMES`] order.
    pub http_duration: [Histogram; 8],
    /// Upgrade latency per outcome, in [`OUTCOMES`] order.
    pub upgrade_duration: [Histogram; 8],
    /// Sticky-hash fallbacks to least-conn.
    pub fallback: IntCounter,
    /// `switchboard_http_retries_total` of this upstream.
    pub http_retries_total: IntCounter,
}

/// Per-backend handles.
#[derive(Clone)]
pub struct BackendMetrics {
    /// Live tunnels on this backend: `[http1, h2]` by the client's protocol.
    pub tunnels_active: [IntGauge; 2],
    /// Healthy (1) or not.
    pub up: IntGauge,
    /// `switchboard_backend_state`, one gauge per state in [`crate::balancer::BackendState::ALL`] order.
    pub state: [IntGauge; 4],
    /// `switchboard_upgrades_total` by [`UPGRADE_OUTCOMES`] and `[http1, h2]`: resolved when
    /// the backend joins, so an upgrade hashes no labels.
    pub upgrades: [[IntCounter; 2]; 5],
}

/// The `outcome` label values of `switchboard_upgrades_total`.
pub const UPGRADE_OUTCOMES: [&str; 5] = [
    "upgraded",
    "rejected",
    "connect_error",
    "timeout",
    "bad_response",
];
