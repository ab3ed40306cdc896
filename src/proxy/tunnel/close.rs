//! The one mechanism that ends a tunnel on switchboard's initiative (RFC 6455 §7).
//!
//! A [`CloseRequest`] says with which code each side is told and when; the splice then: lets
//! each direction finish the message in progress (a frame is never cut, and a fragmented
//! message is finished too, bounded by the deadline), sends the client an unmasked Close and the
//! backend a masked one with a fresh key (§5.3), relays nothing more except that the peers'
//! Close replies are consumed, waits for both closing handshakes until the request's deadline
//! (`drain.close_linger`), and then ends TCP with FIN, after reading to EOF so that unread bytes
//! do not turn the close into a reset. A peer that already sent or got a Close is not sent
//! another one. Shutdown, idle and lifetime limits, unanswered pings, oversized messages and
//! broken framing all arrive here as the same request.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::control::CloseRequest;
use super::frames::Violation;
use super::gate::Mode;
use super::relay::Direction;
use super::splice::Splice;
use super::{CloseReason, GaugeGuard, Side, TunnelShared};

/// Close 1001 Going Away (§7.4.1): the server is going down or the client idled out.
pub const GOING_AWAY: u16 = 1001;
/// Close 1002: the peer broke the framing rules.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close 1009: a message too big to process.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Close 1011: the server hit an unexpected condition (here: its backend broke the framing).
pub const INTERNAL_ERROR: u16 = 1011;

/// A polite close in progress (or scheduled).
pub(super) struct Closing {
    pub(super) request: CloseRequest,
    /// Close frames are on their way (the request's start has come).
    pub(super) started: bool,
    /// Both closing handshakes are over; waiting for the peers' FIN.
    pub(super) settled: bool,
    /// Counts the tunnel in `switchboard_tunnels_closing` while it closes.
    pub(super) _gauge: Option<GaugeGuard>,
}

impl<C, B> Splice<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// Takes in a close request, or folds it into the one under way.
    pub(super) fn request(&mut self, request: CloseRequest, closing: &mut Option<Box<Closing>>) {
        match closing {
            Some(c) => c.request.merge(&request),
            None => {
                // Boxed: most tunnels never close this way, and an idle one should not carry it.
                *closing = Some(Box::new(Closing {
                    request,
                    started: false,
                    settled: false,
                    _gauge: None,
                }))
            }
        }
    }

    /// The request's start has come: each direction finishes its message and sends Close.
    pub(super) fn begin(&mut self, closing: &mut Closing, shared: &TunnelShared) {
        closing.started = true;
        closing._gauge = Some(GaugeGuard::new(&shared.closing));
        let reason = closing.request.reason;
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
    pub(super) fn handshakes_done(&self, request: &CloseRequest) -> bool {
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
    pub(super) fn violation(&mut self, linger: Duration) -> Option<CloseRequest> {
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

    /// Once both closing handshakes are over: shut both writers down (FIN), drop what still
    /// comes, and read to EOF so that no unread byte turns the close into a reset.
    pub(super) fn settle_when_done(&mut self, closing: &mut Closing) -> bool {
        if !closing.started || closing.settled || !self.handshakes_done(&closing.request) {
            return false;
        }
        closing.settled = true;
        for direction in [&mut self.to_backend, &mut self.to_client] {
            direction.settle = true;
            if direction.gate.mode != Mode::Lost {
                direction.gate.mode = Mode::Closed;
            }
        }
        true
    }
}
