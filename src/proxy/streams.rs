//! Open streams of one HTTP/2 connection, so the connection can be closed when it has carried
//! none for `limits.h2_idle_timeout` (hyper's HTTP/2 server has no idle timeout of its own, and
//! keep-alive pings would hold an unused connection open forever).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::body::{BodyError, ResponseBody};

/// How many streams of one connection are open; the connection's driver waits on it.
#[derive(Default)]
pub struct OpenStreams {
    open: AtomicUsize,
    /// Woken when the count goes from 0 to 1 or back.
    changed: Notify,
}

impl OpenStreams {
    /// Whether no stream is open. Call [`OpenStreams::changed`]'s `enable` first, so a change
    /// right after this check still wakes the waiter.
    pub fn none(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Resolves when the count crosses zero.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// One open stream: a request until its response body is done, or a tunnel until it ends.
/// Clones count as streams too: a request's guard and its tunnel's overlap.
pub struct StreamGuard(Arc<OpenStreams>);

impl StreamGuard {
    /// Counts a stream of `streams` open until dropped.
    pub fn new(streams: &Arc<OpenStreams>) -> Self {
        if streams.open.fetch_add(1, Ordering::AcqRel) == 0 {
            streams.changed.notify_waiters();
        }
        StreamGuard(streams.clone())
    }
}

impl Clone for StreamGuard {
    fn clone(&self) -> Self {
        StreamGuard::new(&self.0)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// An HTTP/2 response body that keeps its stream counted until it is sent or dropped.
pub struct CountedBody {
    inner: ResponseBody,
    _stream: StreamGuard,
}

impl CountedBody {
    /// `inner`, counted by `stream`.
    pub fn new(inner: ResponseBody, stream: StreamGuard) -> Self {
        CountedBody {
            inner,
            _stream: stream,
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
