//! Binding and the accept loop.
//!
//! The accept loop never dies of its own errors: a connection reset before accept is ignored,
//! and running out of file descriptors (EMFILE/ENFILE) is logged, counted and met with a short
//! pause (the pending connection stays in the kernel's backlog) instead of a busy loop or an
//! exit. The connection limit is a semaphore taken *before* accept, so at the limit new clients
//! wait in the backlog, as with HAProxy's `maxconn`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
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
/// connection with its slot to `serve`. `count_connections`: count them as client connections
/// (not for the admin listener).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    stop: CancellationToken,
    connections: TaskTracker,
    count_connections: bool,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let drain = stop;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = drain.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                if count_connections {
                    metrics.connections_total.inc();
                }
                let _ = stream.set_nodelay(true);
                connections.spawn(serve(stream, peer, permit));
            }
            Err(e) => {
                let kind = if is_fd_exhausted(&e) {
                    "fd_limit"
                } else {
                    "other"
                };
                metrics.accept_errors_total.with_label_values(&[kind]).inc();
                if kind == "fd_limit" {
                    tracing::error!(error = %e, "out of file descriptors: accept paused; raise `ulimit -n` or lower limits.max_connections");
                    tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
                } else if !is_transient(&e) {
                    tracing::warn!(error = %e, "accept failed");
                }
            }
        }
    }
    tracing::info!("stopped accepting connections");
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
