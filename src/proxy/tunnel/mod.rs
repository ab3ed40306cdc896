//! The splice: relays a WebSocket's two byte streams until both end, and ends them politely
//! when switchboard has to.
//!
//! [`relay`] moves bytes one direction at a time; [`frames`] follows the frame boundaries in
//! each direction; [`close`] is the one mechanism that ends a tunnel on switchboard's initiative:
//! stop at the next message boundary in each direction, send the client an unmasked Close and
//! the backend a masked one (RFC 6455 §5.3, §7.1.2), relay nothing after them except the peers'
//! Close replies, which are consumed, wait up to `drain.close_linger` for both closing
//! handshakes, then end TCP with FIN. Shutdown, the idle timeout, `max_lifetime`, unanswered
//! pings, oversized messages and broken framing all come down to one [`CloseRequest`].
//!
//! Timers are re-armed lazily: traffic costs one clock read per wake-up, not a timer update per
//! chunk. Bytes are counted per tunnel and published to the shared counters at most once a
//! second and at the end, so long tunnels still show their traffic while they live.

pub mod close;
pub mod frames;
mod relay;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::ConnInfo;
use crate::balancer::Lease;
pub use close::{CloseAll, CloseRequest, Control, TunnelRegistry};
use close::{GOING_AWAY, INTERNAL_ERROR, MESSAGE_TOO_BIG, PROTOCOL_ERROR};
use frames::{Extensions, Rules, Violation};
use relay::{Direction, Flow, Gate, Mode};

/// Stands in for "no deadline": far enough never to fire, near enough to add to an Instant.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How often a busy tunnel publishes its byte counts.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Unanswered Pings after which a client is taken for gone.
const MAX_UNANSWERED_PINGS: u8 = 2;

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
}

impl CloseReason {
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
    /// The client connection (its guard keeps the connection slot taken).
    pub conn: Arc<ConnInfo>,
    /// What the handshake negotiated (RSV bits the frames may carry).
    pub extensions: Extensions,
}

impl Tunnel {
    /// Splices `client` and `backend` until both directions end or switchboard ends them; then
    /// records and logs the tunnel.
    pub async fn run<C, B>(self, client: C, backend: B)
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let shared = &*self.shared;
        let backend_state = self.lease.backend();
        let _active =
            GaugeGuard::new(&backend_state.metrics.tunnels_active[self.conn.protocol.index()]);
        let registration = shared.registry.register(backend_state.clone());
        let mut splice = Splice::new(client, backend, self.extensions, shared);
        let end = splice.run(shared, &registration.control, started).await;
        drop(registration);
        splice.publish(shared);

        let lifetime = started.elapsed();
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
        let code_of = |c: Option<u16>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
        tracing::info!(
            upstream = %shared.upstream,
            backend = %backend_state.name,
            client = %self.conn.peer,
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

/// How a tunnel ended.
struct End {
    reason: CloseReason,
    /// The close code sent or seen first.
    code: Option<u16>,
    /// TCP was ended at a deadline before the closing handshakes were done.
    cut: bool,
}

/// A polite close in progress (or scheduled).
struct Closing {
    request: CloseRequest,
    /// Close frames are on their way (the request's start has come).
    started: bool,
    /// Both closing handshakes are over; waiting for the peers' FIN.
    settled: bool,
    /// Counts the tunnel in `switchboard_tunnels_closing` while it closes.
    _gauge: Option<GaugeGuard>,
}

/// Both directions between a client and a backend.
struct Splice<C, B> {
    client: C,
    backend: B,
    to_backend: Direction,
    to_client: Direction,
    first_closed: Option<Side>,
    /// Which peer sent a Close first.
    first_close: Option<Side>,
    first_code: Option<u16>,
}

impl<C, B> Splice<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    fn new(client: C, backend: B, extensions: Extensions, shared: &TunnelShared) -> Self {
        let max = shared.settings.max_message;
        Splice {
            client,
            backend,
            to_backend: Direction::new(Gate::new(Rules::new(true, extensions, max), true)),
            to_client: Direction::new(Gate::new(Rules::new(false, extensions, max), false)),
            first_closed: None,
            first_close: None,
            first_code: None,
        }
    }

    /// Adds what was relayed since the last call to the upstream's counters.
    fn publish(&mut self, shared: &TunnelShared) {
        for (direction, counter) in [
            (&mut self.to_backend, &shared.bytes_to_backend),
            (&mut self.to_client, &shared.bytes_to_client),
        ] {
            if direction.bytes > direction.published {
                counter.inc_by(direction.bytes - direction.published);
                direction.published = direction.bytes;
            }
        }
    }

    /// Relays until the tunnel ends.
    async fn run(&mut self, shared: &TunnelShared, control: &Control, started: Instant) -> End {
        let settings = &shared.settings;
        let lifetime_end = settings.max_lifetime.map(|life| {
            let jitter = settings.lifetime_jitter * (2.0 * rand::random::<f64>() - 1.0);
            started + life.mul_f64(1.0 + jitter)
        });
        let mut state = Timing {
            last_active: started,
            last_to_client: started,
            lifetime_end,
            next_publish: started + PUBLISH_EVERY,
            pings_unanswered: 0,
            ping_queued: false,
        };
        let mut closing: Option<Closing> = None;
        let mut armed = self.next_deadline(settings, &state, &closing);
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        poll_fn(|cx| {
            let mut changed = false;
            if let Some(request) = control.poll_take(cx) {
                self.request(request, &mut closing);
                changed = true;
            }

            let (mut up_active, mut down_active) = (false, false);
            let up =
                self.to_backend
                    .poll_relay(cx, &mut self.client, &mut self.backend, &mut up_active);
            let down = self.to_client.poll_relay(
                cx,
                &mut self.backend,
                &mut self.client,
                &mut down_active,
            );
            let failed = [up.is_ready_and_err(), down.is_ready_and_err()];
            if failed.contains(&true) && closing.is_none() {
                return Poll::Ready(self.end(CloseReason::Error, false));
            }
            // A peer that resets while closing is simply gone.
            if failed[0] {
                self.to_backend.flow = Flow::Done;
            }
            if failed[1] {
                self.to_client.flow = Flow::Done;
            }
            self.note_closes();
            if self.to_backend.flow == Flow::Done && self.to_client.flow == Flow::Done {
                let end = match &closing {
                    Some(c) => self.end(c.request.reason, false),
                    None => self.end(self.peer_reason(), false),
                };
                return Poll::Ready(end);
            }

            if up_active || down_active {
                let now = Instant::now();
                state.last_active = now;
                if down_active {
                    state.last_to_client = now;
                }
                if now >= state.next_publish {
                    self.publish(shared);
                    state.next_publish = now + PUBLISH_EVERY;
                } else if armed > state.next_publish {
                    // Publish what this burst relayed even if the tunnel goes quiet now; at
                    // most one timer update a second.
                    armed = state.next_publish;
                    timer.as_mut().reset(armed);
                }
            }
            if state.ping_queued && !self.to_client.gate.want_ping {
                state.ping_queued = false;
                state.pings_unanswered += 1;
                shared.pings_sent.inc();
            }
            if std::mem::take(&mut self.to_backend.gate.pong_matched) {
                state.pings_unanswered = 0;
            }
            self.to_backend.gate.watch_pong = state.pings_unanswered > 0 || state.ping_queued;
            if let Some(request) = self.violation(settings.linger) {
                self.request(request, &mut closing);
                changed = true;
            }

            while timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if let Some(end) = self.on_timer(now, shared, &mut state, &mut closing) {
                    return Poll::Ready(end);
                }
                armed = self.next_deadline(settings, &state, &closing);
                timer.as_mut().reset(armed);
                changed = true;
            }
            if let Some(c) = &mut closing {
                if !c.started && c.request.start <= Instant::now() {
                    self.begin(c, shared);
                    changed = true;
                }
                if c.started && !c.settled && self.handshakes_done(&c.request) {
                    c.settled = true;
                    for direction in [&mut self.to_backend, &mut self.to_client] {
                        direction.settle = true;
                        if direction.gate.mode != Mode::Lost {
                            direction.gate.mode = Mode::Closed;
                        }
                    }
                    changed = true;
                }
            }
            if changed {
                let wanted = self.next_deadline(settings, &state, &closing);
                if wanted < armed {
                    armed = wanted;
                    timer.as_mut().reset(armed);
                }
                // Let the directions act on the new state (write a Close, shut down).
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }

    /// Takes in a close request, or folds it into the one under way.
    fn request(&mut self, request: CloseRequest, closing: &mut Option<Closing>) {
        match closing {
            Some(c) => c.request.merge(&request),
            None => {
                *closing = Some(Closing {
                    request,
                    started: false,
                    settled: false,
                    _gauge: None,
                })
            }
        }
    }

    /// The request's start has come: each direction finishes its message and sends Close.
    fn begin(&mut self, closing: &mut Closing, shared: &TunnelShared) {
        closing.started = true;
        closing._gauge = Some(GaugeGuard::new(&shared.closing));
        let reason = closing.request.reason_text();
        for (code, direction) in [
            (closing.request.to_client, &mut self.to_client),
            (closing.request.to_backend, &mut self.to_backend),
        ] {
            if direction.gate.mode != Mode::Open {
                continue;
            }
            direction.gate.mode = match code {
                Some(code) if !direction.gate.delivered && direction.writer_open() => {
                    Mode::Finishing(code, reason)
                }
                // No Close for this side (it is gone, or it already has one): relay no more.
                _ => Mode::Closed,
            };
        }
    }

    /// Whether each side that is to be closed got a Close and answered (or can do neither).
    fn handshakes_done(&self, request: &CloseRequest) -> bool {
        let side_done = |code: Option<u16>, toward: &Direction, from: &Direction| {
            code.is_none()
                || ((toward.gate.delivered || !toward.writer_open())
                    && (from.gate.close_seen.is_some()
                        || !from.reader_open()
                        || from.gate.mode == Mode::Lost))
        };
        side_done(request.to_client, &self.to_client, &self.to_backend)
            && side_done(request.to_backend, &self.to_backend, &self.to_client)
    }

    /// A close request for a framing violation the last poll found.
    fn violation(&mut self, linger: Duration) -> Option<CloseRequest> {
        let (side, violation) = if let Some(v) = self.to_backend.gate.violation.take() {
            (Side::Client, v)
        } else {
            (Side::Backend, self.to_client.gate.violation.take()?)
        };
        let (reason, to_offender, to_other) = match violation {
            Violation::TooBig => (CloseReason::MessageTooBig, MESSAGE_TOO_BIG, GOING_AWAY),
            _ if side == Side::Backend => (CloseReason::BadFraming, PROTOCOL_ERROR, INTERNAL_ERROR),
            _ => (CloseReason::BadFraming, PROTOCOL_ERROR, GOING_AWAY),
        };
        tracing::info!(
            offender = side.as_str(),
            violation = violation.as_str(),
            "closing tunnel: {}",
            reason.as_str()
        );
        let mut request = CloseRequest::now(reason, to_offender, linger);
        match side {
            Side::Client => request.to_backend = Some(to_other),
            Side::Backend => request.to_client = Some(to_other),
        }
        Some(request)
    }

    /// Records which side closed first and the first close code, for the log and the label.
    fn note_closes(&mut self) {
        if self.first_closed.is_none() {
            if self.to_backend.flow != Flow::Open {
                self.first_closed = Some(Side::Client);
            } else if self.to_client.flow != Flow::Open {
                self.first_closed = Some(Side::Backend);
            }
        }
        if self.first_close.is_none() {
            if self.to_backend.gate.close_seen.is_some() {
                self.first_close = Some(Side::Client);
            } else if self.to_client.gate.close_seen.is_some() {
                self.first_close = Some(Side::Backend);
            }
        }
        if self.first_code.is_none() {
            self.first_code = self
                .to_client
                .gate
                .sent_code
                .or(self.to_backend.gate.sent_code)
                .or(self.to_backend.gate.close_seen)
                .or(self.to_client.gate.close_seen);
        }
    }

    /// Why a tunnel that its peers ended, ended: whoever sent Close first, else FIN first.
    fn peer_reason(&self) -> CloseReason {
        let first = self.first_close.or(self.first_closed);
        match first {
            Some(Side::Client) => CloseReason::ClientClosed,
            Some(Side::Backend) => CloseReason::BackendClosed,
            None => CloseReason::Error,
        }
    }

    fn end(&self, reason: CloseReason, cut: bool) -> End {
        End {
            reason,
            code: self.first_code,
            cut,
        }
    }

    /// The timer fired: acts on whatever is due at `now`; `Some` ends the tunnel.
    fn on_timer(
        &mut self,
        now: Instant,
        shared: &TunnelShared,
        state: &mut Timing,
        closing: &mut Option<Closing>,
    ) -> Option<End> {
        let settings = &shared.settings;
        if now >= state.next_publish {
            self.publish(shared);
            state.next_publish = now + PUBLISH_EVERY;
        }
        if let Some(c) = closing {
            if now >= c.request.deadline {
                return Some(self.end(c.request.reason, !c.settled));
            }
            if !c.started && now >= c.request.start {
                self.begin(c, shared);
            }
            return None;
        }
        if self.first_closed.is_some()
            && now >= state.last_active + settings.half_closed.min(settings.idle.unwrap_or(NEVER))
        {
            return Some(self.end(CloseReason::HalfClosedTimeout, true));
        }
        let polite = |reason| CloseRequest::now(reason, GOING_AWAY, settings.linger);
        if settings
            .idle
            .is_some_and(|idle| now >= state.last_active + idle)
        {
            self.request(polite(CloseReason::IdleTimeout), closing);
        } else if state.lifetime_end.is_some_and(|end| now >= end) {
            self.request(polite(CloseReason::Lifetime), closing);
        } else if let Some(interval) = settings.ping_interval
            && now >= state.last_to_client + interval
        {
            if state.pings_unanswered >= MAX_UNANSWERED_PINGS {
                // The client is gone: tell the backend; the client only gets the FIN.
                let mut request = polite(CloseReason::PingTimeout);
                request.to_client = None;
                self.request(request, closing);
            } else if !state.ping_queued {
                self.to_client.gate.want_ping = true;
                state.ping_queued = true;
                state.last_to_client = now;
            } else {
                // Still mid-frame toward the client; look again in an interval.
                state.last_to_client = now;
            }
        }
        if let Some(c) = closing
            && !c.started
            && now >= c.request.start
        {
            self.begin(c, shared);
        }
        None
    }

    /// The earliest moment something may be due.
    fn next_deadline(
        &self,
        settings: &TunnelSettings,
        state: &Timing,
        closing: &Option<Closing>,
    ) -> Instant {
        let unpublished = self.to_backend.bytes > self.to_backend.published
            || self.to_client.bytes > self.to_client.published;
        let publish = if unpublished {
            state.next_publish
        } else {
            state.last_active + NEVER
        };
        if let Some(c) = closing {
            return publish.min(if c.started {
                c.request.deadline
            } else {
                c.request.start.min(c.request.deadline)
            });
        }
        let far = state.last_active + NEVER;
        let mut idle = settings.idle.unwrap_or(NEVER);
        if self.first_closed.is_some() {
            idle = idle.min(settings.half_closed);
        }
        let mut deadline = state.last_active + idle;
        if let Some(end) = state.lifetime_end {
            deadline = deadline.min(end);
        }
        if let Some(interval) = settings.ping_interval {
            deadline = deadline.min(state.last_to_client + interval);
        }
        deadline.min(far).min(publish)
    }
}

/// `Ready(Err(_))`, without caring which error.
trait ReadyErr {
    fn is_ready_and_err(&self) -> bool;
}

impl<E> ReadyErr for Poll<Result<(), E>> {
    fn is_ready_and_err(&self) -> bool {
        matches!(self, Poll::Ready(Err(_)))
    }
}

/// The clocks of one tunnel.
struct Timing {
    last_active: Instant,
    last_to_client: Instant,
    lifetime_end: Option<Instant>,
    next_publish: Instant,
    pings_unanswered: u8,
    ping_queued: bool,
}
