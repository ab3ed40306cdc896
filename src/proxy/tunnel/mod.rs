//! The splice: relays a WebSocket's two byte streams until both end, and ends them politely
//! when switchboard has to.
//!
//! One module per part: [`relay`] moves bytes one direction at a time through a [`gate`];
//! [`frames`] follows the frame boundaries in each direction (headers only, no buffer);
//! [`splice`] holds both directions; [`clocks`] its timeouts, pings and byte-count publishing;
//! [`close`] is the one mechanism that ends a tunnel politely; [`control`] is how a request to
//! close reaches a tunnel from outside.

mod clocks;
mod close;
pub mod control;
pub mod frames;
mod gate;
mod relay;
mod splice;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ConnInfo;
use crate::balancer::Lease;
pub use control::{CloseAll, CloseRequest, Control, TunnelRegistry};
use frames::Extensions;
use splice::{End, Splice};

/// Why a tunnel ended; the `reason` label of `switchboard_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Switchboard is shutting down (SIGTERM/SIGINT).
    Shutdown,
    /// No bytes either way for `timeouts.tunnel_idle`.
    IdleTimeout,
    /// One direction ended and the other carried nothing for `timeouts.half_closed`.
    HalfClosedTimeout,
    /// The tunnel reached `websocket.max_lifetime`.
    Lifetime,
    /// A message over `websocket.max_message_bytes`.
    MessageTooBig,
    /// The client did not answer two Pings in a row.
    PingTimeout,
    /// The backend sent the first Close (or, without Close frames, the first FIN).
    BackendClosed,
    /// The client sent the first Close (or, without Close frames, the first FIN).
    ClientClosed,
    /// A read or write failed (typically a reset).
    Error,
    /// A peer's bytes broke the WebSocket framing rules.
    BadFraming,
    /// Its backend was drained (admin API) or removed by a reload.
    Drain,
    /// Its backend held more than its share and the tunnel was moved (`rebalance_skew`).
    Rebalance,
}

impl CloseReason {
    /// The short reason text of switchboard's Close frames (§5.5.1 allows up to 123 bytes).
    pub fn close_text(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "server going away",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::Lifetime => "maximum lifetime reached",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::BadFraming => "protocol error",
            CloseReason::Drain => "server going away",
            CloseReason::Rebalance => "service restart",
            CloseReason::HalfClosedTimeout
            | CloseReason::BackendClosed
            | CloseReason::ClientClosed
            | CloseReason::Error => "closing",
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HalfClosedTimeout => "half_closed_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::BackendClosed => "backend_closed",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Error => "error",
            CloseReason::BadFraming => "bad_framing",
            CloseReason::Drain => "drain",
            CloseReason::Rebalance => "rebalance",
        }
    }
}

/// One end of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The WebSocket client.
    Client,
    /// The backend server.
    Backend,
}

impl Side {
    /// For log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// What every tunnel of one upstream reads, built once from the config.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// No bytes either way for this long: polite close with 1001.
    pub idle: Option<Duration>,
    /// One direction over and nothing in the other for this long: closed.
    pub half_closed: Duration,
    /// Ping a client that got nothing for this long.
    pub ping_interval: Option<Duration>,
    /// Longest data message.
    pub max_message: Option<u64>,
    /// Polite close with 1001 after this long (± `lifetime_jitter`).
    pub max_lifetime: Option<Duration>,
    /// Fraction of `max_lifetime` by which it varies per tunnel.
    pub lifetime_jitter: f64,
    /// From a Close of switchboard's to the end of TCP at the latest.
    pub linger: Duration,
}

impl TunnelSettings {
    /// The tunnel settings of a config.
    pub fn from_config(config: &crate::Config) -> Self {
        TunnelSettings {
            idle: config.timeouts.tunnel_idle,
            half_closed: config.timeouts.half_closed,
            ping_interval: config.websocket.ping_interval,
            max_message: config.websocket.max_message_bytes,
            max_lifetime: config.websocket.max_lifetime,
            lifetime_jitter: config.websocket.lifetime_jitter,
            linger: config.drain.close_linger,
        }
    }
}

/// The handles a tunnel needs, resolved once per upstream and handed to it when it starts, so
/// that it never reaches back into the proxy.
pub struct TunnelShared {
    /// Upstream name, for metrics and logs.
    pub upstream: String,
    /// Timeouts and limits.
    pub settings: TunnelSettings,
    /// Where the tunnel's control is registered.
    pub registry: Arc<TunnelRegistry>,
    bytes_to_backend: IntCounter,
    bytes_to_client: IntCounter,
    duration: Histogram,
    closed_total: IntCounterVec,
    cut_total: IntCounterVec,
    pings_sent: IntCounter,
    closing: IntGauge,
}

impl TunnelShared {
    /// The handles of `upstream`.
    pub fn new(
        upstream: &str,
        settings: TunnelSettings,
        registry: Arc<TunnelRegistry>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let tunnel_bytes = |direction| {
            metrics
                .tunnel_bytes_total
                .with_label_values(&[upstream, direction])
        };
        TunnelShared {
            upstream: upstream.to_owned(),
            settings,
            registry,
            bytes_to_backend: tunnel_bytes("to_backend"),
            bytes_to_client: tunnel_bytes("to_client"),
            duration: metrics
                .tunnel_duration_seconds
                .with_label_values(&[upstream]),
            closed_total: metrics.tunnels_closed_total.clone(),
            cut_total: metrics.tunnels_cut_total.clone(),
            pings_sent: metrics.pings_sent_total.with_label_values(&[upstream]),
            closing: metrics.tunnels_closing.with_label_values(&[upstream]),
        }
    }
}

/// Moves a gauge up while held; a panic or a cancelled task cannot leak it.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Raises `gauge` until the guard is dropped.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything a tunnel holds for its life: what it counts against, and where it reports.
pub struct Tunnel {
    /// The upstream's handles and settings.
    pub shared: Arc<TunnelShared>,
    /// Counts this tunnel against its backend until dropped.
    pub lease: Lease,
    /// The client address's per-IP tunnel slot, if counted. Declared before `conn`, so it is
    /// given back before the connection's slot (and `switchboard_connections_active`) is.
    pub admitted: super::admission::Admitted,
    /// This tunnel's place under `limits.max_tunnels`.
    pub _slot: tokio::sync::OwnedSemaphorePermit,
    /// The client connection (its guard keeps the connection slot taken).
    pub conn: Arc<ConnInfo>,
    /// The client address the upgrade was made for (see [`super::client_address`]).
    pub client: std::net::SocketAddr,
    /// Keeps the HTTP/2 stream counted open (`limits.h2_idle_timeout`); `None` on HTTP/1.1.
    pub _stream: Option<super::streams::StreamGuard>,
    /// The request id of the upgrade, for the close line; `None` when the access log is off
    /// (and then no close line is written).
    pub access_id: Option<Box<str>>,
    /// What the handshake negotiated (RSV bits the frames may carry).
    pub extensions: Extensions,
}

impl Tunnel {
    /// Splices `client` and `backend` until both directions end or switchboard ends them; then
    /// records and logs the tunnel.
    ///
    /// Not an `async fn`: the streams go straight into the splice, so the task that holds an
    /// idle tunnel does not also keep a second, dead copy of them (memory per idle tunnel).
    pub fn run<C, B>(self, client: C, backend: B) -> impl Future<Output = ()>
    where
        C: AsyncRead + AsyncWrite + Unpin + 'static,
        B: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let mut splice = Splice::new(client, backend, self.extensions, &self.shared);
        // One frame, not an `async fn` called from here: a nested one would keep its own
        // copies of its arguments for the tunnel's whole life.
        async move {
            let backend_state = self.lease.backend();
            let _active =
                GaugeGuard::new(&backend_state.metrics.tunnels_active[self.conn.protocol.index()]);
            let registration = self.shared.registry.register(backend_state.clone());
            let end = splice.run(&self.shared, &registration).await;
            drop(registration);
            self.finish(&mut splice, end);
        }
    }

    /// Publishes, counts and logs the tunnel that ended with `end`.
    fn finish<C, B>(&self, splice: &mut Splice<C, B>, end: End)
    where
        C: AsyncRead + AsyncWrite + Unpin + 'static,
        B: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let shared = &*self.shared;
        let backend_state = self.lease.backend();
        splice.publish(shared);

        let lifetime = splice.started.elapsed();
        shared.duration.observe(lifetime.as_secs_f64());
        let code = end.code.map(CodeLabel);
        let code_label = code.as_ref().map_or("none", CodeLabel::as_str);
        shared
            .closed_total
            .with_label_values(&[shared.upstream.as_str(), end.reason.as_str(), code_label])
            .inc();
        if end.cut {
            shared
                .cut_total
                .with_label_values(&[shared.upstream.as_str(), end.reason.as_str()])
                .inc();
        }
        let Some(request_id) = &self.access_id else {
            return;
        };
        let code_of = |c: Option<u16>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
        tracing::info!(
            target: super::access::TARGET,
            request_id = &**request_id,
            upstream = %shared.upstream,
            backend = %backend_state.name,
            client = %self.client,
            duration_ms = lifetime.as_millis() as u64,
            bytes_to_backend = splice.to_backend.bytes,
            bytes_to_client = splice.to_client.bytes,
            reason = end.reason.as_str(),
            client_close_code = %code_of(splice.to_backend.gate.close_seen),
            backend_close_code = %code_of(splice.to_client.gate.close_seen),
            switchboard_close_to_client = %code_of(splice.to_client.gate.sent_code),
            switchboard_close_to_backend = %code_of(splice.to_backend.gate.sent_code),
            cut = end.cut,
            first_to_close = splice.first_closed.map_or("none", Side::as_str),
            "tunnel closed"
        );
    }
}

/// A close code as a metric label without allocating for the common ones.
struct CodeLabel(u16);

impl CodeLabel {
    fn as_str(&self) -> &str {
        match self.0 {
            1000 => "1000",
            1001 => "1001",
            1002 => "1002",
            1005 => "1005",
            1008 => "1008",
            1009 => "1009",
            1011 => "1011",
            1012 => "1012",
            // Any other code is one of a bounded range (0–65535) but not worth a label each.
            _ => "other",
        }
    }
}
