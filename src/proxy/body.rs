//! Body types of the proxy: streamed through, never buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::balancer::Lease;

/// What a client receives: a backend's body streamed through, or a short local message.
pub enum ResponseBody {
    /// A backend response. The lease keeps counting the request against its backend (for
    /// least-conn) until the body has been sent or the client went away.
    Backend {
        /// The backend's body.
        body: Incoming,
        /// Dropped with the body.
        _lease: Option<Lease>,
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
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Backend { body, .. } => Pin::new(body).poll_frame(cx),
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

/// What a backend receives: the client's body streamed through, or nothing (a retried request
/// without body, or a WebSocket handshake).
pub enum RequestBody {
    /// The client's body; `failed` is set when reading it failed (a malformed chunk, a client
    /// gone mid-body), so that the error is blamed on the client, not on the backend.
    Client {
        /// The body as hyper reads it from the client.
        body: Incoming,
        /// Set when reading the body failed.
        failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
    /// No body.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client { body, failed } => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &frame {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                frame
            }
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
