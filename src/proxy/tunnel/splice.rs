//! Both directions of a tunnel: relays until the tunnel ends, and turns timeouts (its clocks
//! are in [`super::clocks`]), limits and requests from outside into polite closes (see
//! [`super::close`]).
//!
//! Timers are re-armed lazily: traffic costs one clock read per wake-up, not a timer update per
//! chunk. Bytes are counted per tunnel and published to the shared counters at most once a
//! second and at the end, so long tunnels still show their traffic while they live.

use std::future::poll_fn;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::clocks::{Clocks, PUBLISH_EVERY, Timing};
use super::control::Registration;
use super::frames::{Extensions, Rules};
use super::gate::Gate;
use super::relay::{Direction, Flow};
use super::{CloseReason, Side, TunnelShared};

/// How a tunnel ended.
pub(super) struct End {
    pub(super) reason: CloseReason,
    /// The close code sent or seen first.
    pub(super) code: Option<u16>,
    /// TCP was ended at a deadline before the closing handshakes were done.
    pub(super) cut: bool,
}

/// Both directions between a client and a backend.
pub(super) struct Splice<C, B> {
    pub(super) client: C,
    pub(super) backend: B,
    pub(super) to_backend: Direction,
    pub(super) to_client: Direction,
    pub(super) first_closed: Option<Side>,
    /// Which peer sent a Close first.
    pub(super) first_close: Option<Side>,
    /// The first close code a peer sent.
    pub(super) first_code: Option<u16>,
    /// Both streams are plain TCP: once the closing handshake is over both ways, the first EOF
    /// ends the tunnel and closing the sockets sends both FINs (two `shutdown` calls and a
    /// wait for the second EOF saved). Not over TLS, whose streams end with close_notify.
    fast_close: bool,
    /// When the tunnel started: its clocks count from here, and its duration.
    pub(super) started: Instant,
}

impl<C, B> Splice<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
    B: AsyncRead + AsyncWrite + Unpin + 'static,
{
    pub(super) fn new(
        client: C,
        backend: B,
        extensions: Extensions,
        shared: &TunnelShared,
    ) -> Self {
        let max = shared.settings.max_message;
        Splice {
            client,
            backend,
            to_backend: Direction::new(Gate::new(Rules::new(true, extensions, max), true)),
            to_client: Direction::new(Gate::new(Rules::new(false, extensions, max), false)),
            first_closed: None,
            first_close: None,
            first_code: None,
            fast_close: is_tcp::<C>() && is_tcp::<B>(),
            started: Instant::now(),
        }
    }

    /// The closing handshake is over both ways and nothing is left to write: the tunnel may
    /// end at the first EOF. Only for plain TCP (see `fast_close`).
    fn handshake_over(&self) -> bool {
        self.fast_close
            && self.to_backend.gate.close_seen.is_some()
            && self.to_client.gate.close_seen.is_some()
            && self.to_backend.is_flushed()
            && self.to_client.is_flushed()
    }

    /// Adds what was relayed since the last call to the upstream's counters.
    pub(super) fn publish(&mut self, shared: &TunnelShared) {
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
    ///
    /// Its state across the wait is kept small on purpose, since an idle tunnel is mostly this
    /// future: no copy of the start time (it is in the splice), the timer's deadline read back
    /// from the timer, and the clocks and the close in one struct the poll borrows once.
    pub(super) async fn run(&mut self, shared: &TunnelShared, registration: &Registration) -> End {
        let started = self.started;
        let settings = &shared.settings;
        let lifetime_end = settings.max_lifetime.map(|life| {
            let jitter = settings.lifetime_jitter * (2.0 * rand::random::<f64>() - 1.0);
            started + life.mul_f64(1.0 + jitter)
        });
        let mut clocks = Clocks {
            state: Timing {
                last_active: started,
                last_to_client: started,
                lifetime_end,
                next_publish: started + PUBLISH_EVERY,
                pings_unanswered: 0,
                ping_queued: false,
            },
            closing: None,
        };
        let timer = tokio::time::sleep_until(self.next_deadline(settings, &clocks.state, &None));
        tokio::pin!(timer);
        poll_fn(|cx| {
            let settings = &shared.settings;
            let Clocks { state, closing } = &mut clocks;
            let mut changed = false;
            if let Some(request) = registration.poll_take(cx) {
                self.request(request, closing);
                changed = true;
            }

            let over = self.handshake_over();
            self.to_backend.skip_fin = over;
            self.to_client.skip_fin = over;
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
            if self.note_closes() {
                changed = true;
            }
            let one_done = self.to_backend.flow == Flow::Done || self.to_client.flow == Flow::Done;
            if one_done && self.handshake_over() {
                self.to_backend.flow = Flow::Done;
                self.to_client.flow = Flow::Done;
            }
            if self.to_backend.flow == Flow::Done && self.to_client.flow == Flow::Done {
                let end = match closing {
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
                } else if timer.deadline() > state.next_publish {
                    // Publish what this burst relayed even if the tunnel goes quiet now; at
                    // most one timer update a second.
                    timer.as_mut().reset(state.next_publish);
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
                self.request(request, closing);
                changed = true;
            }

            while timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if let Some(end) = self.on_timer(now, shared, state, closing) {
                    return Poll::Ready(end);
                }
                let next = self.next_deadline(settings, state, closing);
                timer.as_mut().reset(next);
                changed = true;
            }
            if let Some(c) = closing {
                if !c.started && c.request.start <= Instant::now() {
                    self.begin(c, shared);
                    changed = true;
                }
                if self.settle_when_done(c) {
                    changed = true;
                }
            }
            if changed {
                let wanted = self.next_deadline(settings, state, closing);
                if wanted < timer.deadline() {
                    timer.as_mut().reset(wanted);
                }
                // Let the directions act on the new state (write a Close, shut down).
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }

    /// Records which side closed first and the first close code, for the log and the label.
    /// True when a direction has just ended (the half-closed timeout starts counting).
    fn note_closes(&mut self) -> bool {
        let mut half_closed = false;
        if self.first_closed.is_none() {
            if self.to_backend.flow != Flow::Open {
                self.first_closed = Some(Side::Client);
            } else if self.to_client.flow != Flow::Open {
                self.first_closed = Some(Side::Backend);
            }
            half_closed = self.first_closed.is_some();
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
                .to_backend
                .gate
                .close_seen
                .or(self.to_client.gate.close_seen);
        }
        half_closed
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

    pub(super) fn end(&self, reason: CloseReason, cut: bool) -> End {
        End {
            reason,
            // What the client was told says most (1009 to the sender of a big message while
            // the backend got 1001); then what the backend was told; then what a peer sent.
            code: self
                .to_client
                .gate
                .sent_code
                .or(self.to_backend.gate.sent_code)
                .or(self.first_code),
            cut,
        }
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

/// Whether `S` is a plain TCP stream.
fn is_tcp<S: 'static>() -> bool {
    std::any::TypeId::of::<S>() == std::any::TypeId::of::<tokio::net::TcpStream>()
}
