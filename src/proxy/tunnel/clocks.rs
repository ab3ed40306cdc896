//! A tunnel's clocks: idle, half-closed and lifetime limits, pings, and when to publish its
//! byte counts. One timer per tunnel serves them all; it is armed for the earliest of them and
//! re-armed lazily (see [`super::splice`]).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::close::{Closing, GOING_AWAY};
use super::control::CloseRequest;
use super::splice::{End, Splice};
use super::{CloseReason, TunnelSettings, TunnelShared};

/// Stands in for "no deadline": far enough never to fire, near enough to add to an Instant.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How often a busy tunnel publishes its byte counts.
pub(super) const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Unanswered Pings after which a client is taken for gone.
const MAX_UNANSWERED_PINGS: u8 = 2;

/// The clocks and the close in progress: what `run`'s poll changes, borrowed as one.
pub(super) struct Clocks {
    pub(super) state: Timing,
    pub(super) closing: Option<Box<Closing>>,
}

/// The clocks of one tunnel.
pub(super) struct Timing {
    pub(super) last_active: Instant,
    pub(super) last_to_client: Instant,
    pub(super) lifetime_end: Option<Instant>,
    pub(super) next_publish: Instant,
    pub(super) pings_unanswered: u8,
    pub(super) ping_queued: bool,
}

impl<C, B> Splice<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
    B: AsyncRead + AsyncWrite + Unpin + 'static,
{
    /// The timer fired: acts on whatever is due at `now`; `Some` ends the tunnel.
    pub(super) fn on_timer(
        &mut self,
        now: Instant,
        shared: &TunnelShared,
        state: &mut Timing,
        closing: &mut Option<Box<Closing>>,
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
    pub(super) fn next_deadline(
        &self,
        settings: &TunnelSettings,
        state: &Timing,
        closing: &Option<Box<Closing>>,
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
