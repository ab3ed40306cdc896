//! The running process's side: serves `admin.handover_socket`, offers its listening sockets to
//! a new process, and hands over (see [`crate::Shutdown::hand_over`]) only once that process
//! says it accepts on them. One take-over at a time; none once a shutdown has begun.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::socket::HandoverSocket;
use super::{Role, wire};
use crate::frontend::{Frontend, Kind};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long the new process has, after receiving the sockets, to start accepting on them.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a connecting process has to send its greeting.
const GREETING_WAIT: Duration = Duration::from_secs(5);

/// What a take-over needs of the running process.
pub struct Giver {
    /// The client listeners, as they are now (a reload may have moved one).
    pub frontend: Arc<Frontend>,
    /// A duplicate of the admin listener, if there is one.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// Handed over on success.
    pub shutdown: Shutdown,
    /// `switchboard_handovers_total`.
    pub metrics: Metrics,
}

/// Serves take-overs on `socket` until one succeeds or a shutdown begins.
pub async fn serve(socket: HandoverSocket, giver: Giver) {
    let draining = giver.shutdown.drain_token().clone();
    tracing::info!(path = %socket.path().display(), "serving listener hand-overs");
    loop {
        let accepted = tokio::select! {
            _ = draining.cancelled() => break,
            accepted = socket.listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "hand-over socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = rustix::net::sockopt::socket_peercred(&stream).ok();
        let pid = peer.map(|p| p.pid.as_raw_nonzero().get());
        let me = rustix::process::getuid();
        if !peer.is_some_and(|p| p.uid == me || p.uid.is_root()) {
            tracing::warn!(pid, "take-over refused: the process runs as another user");
            giver
                .metrics
                .handovers_total
                .with_label_values(&["refused"])
                .inc();
            continue;
        }
        let sockets = match gather(&giver) {
            Ok(sockets) => sockets,
            Err(e) => {
                tracing::error!(pid, error = %e, "take-over refused: cannot duplicate the listeners");
                giver
                    .metrics
                    .handovers_total
                    .with_label_values(&["refused"])
                    .inc();
                continue;
            }
        };
        let exchange = stream.into_std().and_then(|stream| {
            stream.set_nonblocking(false)?;
            Ok(stream)
        });
        let outcome = match exchange {
            Ok(stream) => tokio::task::spawn_blocking(move || offer(stream, sockets))
                .await
                .unwrap_or_else(|e| Err(format!("the exchange did not finish: {e}"))),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(stream) => {
                socket.close(false);
                tracing::info!(
                    pid,
                    "handed the listeners over: the new process accepts; this one stops accepting and closes its tunnels politely"
                );
                giver
                    .metrics
                    .handovers_total
                    .with_label_values(&["ok"])
                    .inc();
                giver.shutdown.hand_over();
                let _ = (&stream).write_all(wire::BYE.as_bytes());
                return;
            }
            Err(why) => {
                tracing::warn!(pid, "take-over failed: {why}; this process keeps serving");
                giver
                    .metrics
                    .handovers_total
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }
    socket.close(true);
}

/// Duplicates of every listening socket, each with its role and address.
fn gather(giver: &Giver) -> io::Result<Vec<(Role, SocketAddr, OwnedFd)>> {
    let mut sockets: Vec<(Role, SocketAddr, OwnedFd)> = giver
        .frontend
        .sockets()?
        .into_iter()
        .map(|(kind, addr, fd)| {
            let role = match kind {
                Kind::Plain => Role::Http,
                Kind::Tls => Role::Https,
            };
            (role, addr, fd)
        })
        .collect();
    if let Some((addr, fd)) = &giver.admin {
        sockets.push((Role::Admin, *addr, fd.try_clone()?));
    }
    Ok(sockets)
}

/// The blocking exchange with one new process: greeting, offer, `ready`. Returns the stream
/// (to say `bye` on) once the new process is ready.
fn offer(
    stream: UnixStream,
    sockets: Vec<(Role, SocketAddr, OwnedFd)>,
) -> Result<UnixStream, String> {
    let failed = |what: &str, e: io::Error| format!("{what}: {e}");
    stream
        .set_read_timeout(Some(GREETING_WAIT))
        .map_err(|e| failed("socket", e))?;
    let greeting = wire::read_line(&stream).map_err(|e| failed("no greeting", e))?;
    if greeting != wire::GREETING {
        let _ = (&stream).write_all(wire::refusal_text("unknown greeting").as_bytes());
        return Err(format!("unknown greeting {greeting:?}"));
    }
    wire::send_offer(&stream, &sockets).map_err(|e| failed("cannot send the listeners", e))?;
    drop(sockets);
    stream
        .set_read_timeout(Some(READY_WAIT))
        .map_err(|e| failed("socket", e))?;
    match wire::read_line(&stream) {
        Ok(line) if line == wire::READY => Ok(stream),
        Ok(line) if line.is_empty() => {
            Err("the new process closed the connection before it was ready (see its log)".into())
        }
        Ok(line) => Err(format!("the new process said {line:?} instead of ready")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            let _ = (&stream).write_all(wire::TIMED_OUT.as_bytes());
            Err(format!(
                "the new process was not ready within {} s",
                READY_WAIT.as_secs()
            ))
        }
        Err(e) => Err(failed("waiting for ready", e)),
    }
}
