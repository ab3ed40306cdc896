//! The splice: relays bytes between the client and the backend until both directions end.
//!
//! Frames are not parsed; bytes are copied as they come. What this module is careful about:
//!
//! - **No buffer while idle.** Each read goes into a buffer on the poll's own stack. Data that
//!   the other side cannot take right away is copied to the heap and freed once written, so an
//!   idle tunnel holds no relay buffer at all (`copy_bidirectional` would hold 2 × 8 KiB for the
//!   tunnel's whole life). This is what lets one process hold very many idle WebSockets.
//! - **Half-close.** EOF from one side becomes a write shutdown (FIN) to the other, and the
//!   other direction keeps flowing until it ends too (RFC 9293 §3.6).
//! - **Backpressure.** While a direction has unwritten data it does not read, so a slow reader
//!   slows the writer instead of growing memory.
//! - **Idle timeout** separate from any HTTP timeout: a tunnel with no bytes either way for
//!   `timeouts.tunnel_idle` is closed, and once one direction has ended the other is closed
//!   after `timeouts.half_closed` without traffic (a peer that never sends its FIN must not
//!   hold a tunnel forever). The timer is re-armed lazily (only when it fires), so traffic
//!   costs one clock read per wake-up, not a timer update per chunk.
//! - **Accounting.** Bytes are counted per chunk, so long tunnels show their traffic while they
//!   live; the [`Lease`] and the connection guard go when the task ends, however it ends.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{ConnInfo, Proxy};
use crate::balancer::Lease;

/// Bytes read per chunk. Lives on the stack of one poll, never in the tunnel.
const CHUNK: usize = 16 * 1024;

/// Stands in for "no idle timeout": far enough never to fire, near enough to add to an Instant.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a tunnel ended; the `reason` label of `switchboard_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions reached EOF.
    Closed,
    /// A read or write failed (typically a reset).
    Error,
    /// No bytes either way for the idle timeout.
    IdleTimeout,
    /// The shutdown grace period ran out.
    Shutdown,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Error => "error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Which side closed its sending direction first.
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

/// Everything a tunnel holds for its life: what it counts against, and where to report.
pub struct Tunnel {
    /// The running proxy (metrics, timeouts, shutdown).
    pub proxy: Arc<Proxy>,
    /// Index of the upstream.
    pub upstream: usize,
    /// Counts this tunnel against its backend until dropped.
    pub lease: Lease,
    /// The client connection (its guard keeps the connection slot taken).
    pub conn: Arc<ConnInfo>,
}

impl Tunnel {
    /// Splices `client` and `backend` until both directions end, the tunnel idles out, or the
    /// shutdown grace period is over; then records and logs the tunnel.
    pub async fn run<C, B>(self, client: C, backend: B)
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let balancer = &self.proxy.balancers[self.upstream];
        let backend_state = self.lease.backend();
        let active = &backend_state.metrics.tunnels_active[self.conn.protocol.index()];
        active.inc();
        let mut splice = Splice::new(client, backend);
        let reason = tokio::select! {
            reason = splice.run(
                self.proxy.timeouts.tunnel_idle,
                self.proxy.timeouts.half_closed,
                &balancer.metrics.bytes_to_backend,
                &balancer.metrics.bytes_to_client,
            ) => reason,
            _ = self.proxy.shutdown.force_token().cancelled() => CloseReason::Shutdown,
        };
        active.dec();
        let lifetime = started.elapsed();
        balancer
            .metrics
            .tunnel_duration
            .observe(lifetime.as_secs_f64());
        self.proxy
            .metrics
            .tunnels_closed_total
            .with_label_values(&[balancer.name.as_str(), reason.as_str()])
            .inc();
        tracing::info!(
            upstream = %balancer.name,
            backend = %backend_state.name,
            client = %self.conn.peer,
            duration_ms = lifetime.as_millis() as u64,
            bytes_to_backend = splice.to_backend.bytes,
            bytes_to_client = splice.to_client.bytes,
            reason = reason.as_str(),
            first_to_close = splice.first_closed.map_or("none", Side::as_str),
            "tunnel closed"
        );
    }
}

/// The state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Relaying.
    Open,
    /// The reader hit EOF; the writer's shutdown is in progress.
    ShuttingDown,
    /// Finished.
    Done,
}

/// One direction of the relay.
struct Direction {
    /// Data read but not yet accepted by the writer, and how much of it was written.
    pending: Option<(Box<[u8]>, usize)>,
    /// The writer needs a flush before more is read (matters for TLS writers).
    needs_flush: bool,
    flow: Flow,
    /// Bytes relayed, for the close log line.
    bytes: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            pending: None,
            needs_flush: false,
            flow: Flow::Open,
            bytes: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until the reader would block, or to the end.
    /// Sets `*active` when bytes moved. `Ready(Ok)` means this direction is finished.
    fn poll_relay<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &IntCounter,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some((data, written)) = &mut self.pending {
                while *written < data.len() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, &data[*written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *written += n;
                    *active = true;
                }
                self.pending = None;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.needs_flush = false;
            }
            match self.flow {
                Flow::Open => {}
                Flow::ShuttingDown => {
                    // The peer may already be gone; a failed FIN changes nothing for us.
                    let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                    self.flow = Flow::Done;
                    return Poll::Ready(Ok(()));
                }
                Flow::Done => return Poll::Ready(Ok(())),
            }

            let mut storage = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
            let data = buf.filled();
            if data.is_empty() {
                self.flow = Flow::ShuttingDown;
                continue;
            }
            counter.inc_by(data.len() as u64);
            self.bytes += data.len() as u64;
            *active = true;
            let mut written = 0;
            while written < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Only now does this direction need memory of its own.
                        self.pending = Some((data[written..].into(), 0));
                        return Poll::Pending;
                    }
                }
            }
            self.needs_flush = true;
        }
    }
}

/// Both directions between a client and a backend.
pub struct Splice<C, B> {
    client: C,
    backend: B,
    to_backend: Direction,
    to_client: Direction,
    first_closed: Option<Side>,
}

impl<C, B> Splice<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// A splice of two connected streams.
    pub fn new(client: C, backend: B) -> Self {
        Splice {
            client,
            backend,
            to_backend: Direction::new(),
            to_client: Direction::new(),
            first_closed: None,
        }
    }

    /// Relays until both directions end (or fail, or idle out).
    pub async fn run(
        &mut self,
        idle: Option<Duration>,
        half_closed: Duration,
        to_backend_bytes: &IntCounter,
        to_client_bytes: &IntCounter,
    ) -> CloseReason {
        // Without an idle timeout the timer matters only once a direction ends (re-armed below).
        let mut limit = idle.unwrap_or(NEVER);
        let timer = tokio::time::sleep(limit);
        tokio::pin!(timer);
        let mut last_active = Instant::now();
        poll_fn(|cx| {
            let mut active = false;
            let up = self.to_backend.poll_relay(
                cx,
                &mut self.client,
                &mut self.backend,
                to_backend_bytes,
                &mut active,
            );
            let down = self.to_client.poll_relay(
                cx,
                &mut self.backend,
                &mut self.client,
                to_client_bytes,
                &mut active,
            );
            if self.first_closed.is_none() {
                if self.to_backend.flow != Flow::Open {
                    self.first_closed = Some(Side::Client);
                } else if self.to_client.flow != Flow::Open {
                    self.first_closed = Some(Side::Backend);
                }
                if self.first_closed.is_some() {
                    limit = limit.min(half_closed);
                    timer.as_mut().reset(Instant::now() + limit);
                }
            }
            match (up, down) {
                (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => {
                    return Poll::Ready(CloseReason::Error);
                }
                (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                    return Poll::Ready(CloseReason::Closed);
                }
                _ => {}
            }
            if active {
                last_active = Instant::now();
            }
            while timer.as_mut().poll(cx).is_ready() {
                match last_active.checked_add(limit) {
                    Some(deadline) if deadline > Instant::now() => timer.as_mut().reset(deadline),
                    _ => return Poll::Ready(CloseReason::IdleTimeout),
                }
            }
            Poll::Pending
        })
        .await
    }
}
