//! Body types of the proxy: streamed through, never buffered whole, and never allowed to stall
//! forever (`timeouts.request_body_idle`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::access::AccessRecord;
use crate::balancer::Lease;

/// Errors of a streamed body: hyper's, or the idle deadline.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A body that delivered nothing for `timeouts.request_body_idle`.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?} (timeouts.request_body_idle)")]
pub struct BodyIdle(pub Duration);

/// The idle deadline of one streamed body. The timer exists only once the body has had to wait,
/// and the clock is read only when it waits again after progress, not per frame.
pub struct IdleDeadline {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl IdleDeadline {
    /// A deadline of `limit` without a byte.
    pub fn new(limit: Duration) -> Self {
        IdleDeadline {
            limit,
            timer: None,
            progressed: false,
        }
    }

    /// Polls `body` under the deadline.
    fn poll<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
    where
        B: Body<Data = Bytes, Error = hyper::Error>,
    {
        if let Poll::Ready(frame) = body.poll_frame(cx) {
            self.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if std::mem::take(&mut self.progressed) {
            timer.as_mut().reset(Instant::now() + limit);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyIdle(limit)))))
    }
}

/// What a client receives: a backend's body streamed through, or a short local message.
pub enum ResponseBody {
    /// A backend response. The lease keeps counting the request against its backend (for
    /// least-conn) until the body has been sent or the client went away.
    Backend {
        /// The backend's body.
        body: Incoming,
        /// Ends a body that stalls.
        idle: IdleDeadline,
        /// Dropped with the body.
        _lease: Option<Lease>,
        /// The access line, written when the body is done or dropped.
        access: Option<Box<AccessRecord>>,
    },
    /// A body generated here (errors, admin pages).
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// A local body with this text.
    pub fn text(text: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(text.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Local(None)
    }

    /// Hands the request's access line to the body: a backend body writes it when it is done,
    /// a local one at once.
    pub fn attach_access(&mut self, mut record: AccessRecord) {
        match self {
            ResponseBody::Backend { body, access, .. } => {
                record.complete = body.is_end_stream();
                *access = Some(Box::new(record));
            }
            ResponseBody::Local(data) => {
                record.bytes_out = data.as_ref().map_or(0, |d| d.len() as u64);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Backend {
                body, idle, access, ..
            } => {
                let frame = idle.poll(Pin::new(&mut *body), cx);
                if let Some(record) = access {
                    match &frame {
                        Poll::Ready(Some(Ok(f))) => {
                            record.bytes_out += f.data_ref().map_or(0, |d| d.len() as u64);
                            record.complete = body.is_end_stream();
                        }
                        Poll::Ready(None) => record.complete = true,
                        Poll::Ready(Some(Err(_))) => record.complete = false,
                        Poll::Pending => {}
                    }
                }
                frame
            }
            ResponseBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Backend { body, .. } => body.is_end_stream(),
            ResponseBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Backend { body, .. } => body.size_hint(),
            ResponseBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// How reading a client's request body went, shared with the request path so a failed
/// exchange is blamed on the right side.
#[derive(Default)]
pub struct ClientBodyState {
    outcome: AtomicU8,
    bytes: std::sync::atomic::AtomicU64,
}

/// What [`ClientBodyState`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyOutcome {
    /// Nothing went wrong (so far).
    Fine,
    /// The body was malformed, or the client went away mid-body.
    Broken,
    /// The client stopped sending for `timeouts.request_body_idle`.
    Stalled,
}

impl ClientBodyState {
    /// What happened to the body.
    pub fn outcome(&self) -> ClientBodyOutcome {
        match self.outcome.load(Ordering::Relaxed) {
            0 => ClientBodyOutcome::Fine,
            1 => ClientBodyOutcome::Broken,
            _ => ClientBodyOutcome::Stalled,
        }
    }

    /// Body bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn set(&self, outcome: ClientBodyOutcome) {
        self.outcome.store(outcome as u8, Ordering::Relaxed);
    }
}

/// A client's request body under its idle deadline.
pub struct ClientBody {
    body: Incoming,
    idle: IdleDeadline,
    state: Arc<ClientBodyState>,
}

impl ClientBody {
    /// Wraps `body`; `state` learns how reading it went.
    pub fn new(body: Incoming, idle: Duration, state: Arc<ClientBodyState>) -> Self {
        ClientBody {
            body,
            idle: IdleDeadline::new(idle),
            state,
        }
    }
}

/// A client body that stays with the request path until the backend connection asks for its
/// first frame. A request that failed before that (a refused connect) has sent nothing, and
/// its body can go to the next backend, whatever the method.
pub type HeldBody = Arc<Mutex<Option<ClientBody>>>;

/// What a backend receives: the client's body streamed through, or nothing (a request without
/// body, or a WebSocket handshake).
pub enum RequestBody {
    /// The client's body, not yet asked for: still in the request path's hands.
    Held(HeldBody),
    /// The client's body, being sent.
    Client(ClientBody),
    /// No body.
    Empty,
}

impl RequestBody {
    /// Takes a held body back out of its slot, if nothing has been read from it.
    pub fn take_held(held: &HeldBody) -> Option<ClientBody> {
        held.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let RequestBody::Held(held) = this {
            *this = match RequestBody::take_held(held) {
                Some(body) => RequestBody::Client(body),
                None => RequestBody::Empty,
            };
        }
        match this {
            RequestBody::Client(client) => {
                let frame = client.idle.poll(Pin::new(&mut client.body), cx);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        let n = f.data_ref().map_or(0, |d| d.len() as u64);
                        client.state.bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Poll::Ready(Some(Err(error))) => {
                        client.state.set(if error.is::<BodyIdle>() {
                            ClientBodyOutcome::Stalled
                        } else {
                            ClientBodyOutcome::Broken
                        });
                    }
                    _ => {}
                }
                frame
            }
            RequestBody::Held(_) | RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Held(held) => held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|c| c.body.is_end_stream()),
            RequestBody::Client(client) => client.body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Held(held) => held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(SizeHint::with_exact(0), |c| c.body.size_hint()),
            RequestBody::Client(client) => client.body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
