//! Binding and the accept loop.
//!
//! The accept loop never dies of its own errors: a connection reset before accept is ignored,
//! and running out of file descriptors (EMFILE/ENFILE) is logged, counted and met with a short
//! pause (the pending connection stays in the kernel's backlog) instead of a busy loop or an
//! exit. Each accepted connection takes a slot of the connection [`limit`]; at the limit it
//! waits briefly for one (the next ones in the backlog, as with HAProxy's `maxconn`), and while
//! the limit stays full new connections are closed at once and counted ([`limit`] says why).

pub mod limit;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use limit::{ConnectionLimit, Slot, WAIT_AT_LIMIT};
use tokio_util::sync::CancellationToken;

/// Pause after running out of descriptors, so the loop does not spin while none are free.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// Binds a TCP listener with the usual server socket options.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Raises the soft open-files limit to the hard limit, as HAProxy does at start; each tunnel
/// holds two descriptors. Returns `(soft, hard)` after the change.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    rlimit::Resource::NOFILE.get()
}

/// Accepts until `stop` (the shutdown's, or a reload that moved the listener), handing each
/// connection with its slot of `limit` to `serve`; `accepted` counts client connections for
/// this event loop (the admin listener's are not counted).
#[allow(clippy::too_many_arguments)]
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limit: Arc<ConnectionLimit>,
    metrics: Metrics,
    accepted: Option<prometheus::IntCounter>,
    stop: CancellationToken,
    connections: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Set once a connection waited WAIT_AT_LIMIT in vain; cleared when a slot is taken again.
    let mut shedding = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = listener.accept() => next,
        };
        let (stream, peer) = match next {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, &metrics).await;
                continue;
            }
        };
        if let Some(accepted) = &accepted {
            accepted.inc();
        }
        let slot = match limit.try_take() {
            Some(slot) => slot,
            None if shedding => {
                limit.reject(stream);
                continue;
            }
            None => {
                // This one waits for a slot; the ones behind it wait in the backlog.
                let waited = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    waited = tokio::time::timeout(WAIT_AT_LIMIT, limit.take()) => waited,
                };
                match waited {
                    Ok(slot) => slot,
                    Err(_) => {
                        tracing::warn!(
                            max_connections = limit.max(),
                            "connection limit: every slot taken for {} s; closing new connections until one comes free (raise limits.max_connections or add replicas)",
                            WAIT_AT_LIMIT.as_secs_f64()
                        );
                        shedding = true;
                        limit.reject(stream);
                        continue;
                    }
                }
            }
        };
        if std::mem::take(&mut shedding) {
            tracing::info!("connection limit: a slot came free; accepting again");
        }
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(stream, peer, slot));
    }
    tracing::info!("stopped accepting connections");
}

/// Counts a failed accept; pauses when descriptors ran out, so the loop does not spin.
async fn accept_failed(e: &io::Error, metrics: &Metrics) {
    let kind = if is_fd_exhausted(e) {
        "fd_limit"
    } else {
        "other"
    };
    metrics.accept_errors_total.with_label_values(&[kind]).inc();
    if kind == "fd_limit" {
        tracing::error!(error = %e, "out of file descriptors: accept paused; raise `ulimit -n` or lower limits.max_connections");
        tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
    } else if !is_transient(e) {
        tracing::warn!(error = %e, "accept failed");
    }
}

fn is_fd_exhausted(e: &io::Error) -> bool {
    // EMFILE (24): this process's limit; ENFILE (23): the system's.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
