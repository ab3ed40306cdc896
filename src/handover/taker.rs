//! The new process's side (`switchboard --take-over PATH`): before serving, get the running
//! process's listening sockets; once accepting on them, say `ready` so that it stops.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Inherited, wire};

/// How long the running process has to answer each step.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Why a take-over did not start; the running process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    /// Nothing answers at the path.
    #[error(
        "--take-over: cannot reach a running switchboard at `{}`: {source} (its config must have `[admin] handover_socket` set to this path)",
        path.display()
    )]
    Connect {
        /// The path given.
        path: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// The running process said no.
    #[error("--take-over: the running switchboard refused: {0}")]
    Refused(String),
    /// The exchange broke off.
    #[error("--take-over: the exchange with the running switchboard failed: {0}")]
    Exchange(#[source] io::Error),
}

/// The process being taken over, waiting for [`Predecessor::ready`].
pub struct Predecessor {
    stream: UnixStream,
    pid: Option<i32>,
}

/// Connects to `path` and receives the running process's listening sockets. Blocking.
pub fn take_over(path: &Path) -> Result<(Vec<Inherited>, Predecessor), TakeOverError> {
    let stream = UnixStream::connect(path).map_err(|source| TakeOverError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let pid = rustix::net::sockopt::socket_peercred(&stream)
        .ok()
        .map(|p| p.pid.as_raw_nonzero().get());
    let exchange = TakeOverError::Exchange;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(exchange)?;
    (&stream)
        .write_all(wire::GREETING.as_bytes())
        .map_err(exchange)?;
    let (offer, fds) = wire::recv_offer(&stream).map_err(exchange)?;
    let listeners = match offer {
        wire::Offer::Refused(why) => return Err(TakeOverError::Refused(why)),
        wire::Offer::Listeners(listeners) => listeners,
    };
    if listeners.len() != fds.len() {
        return Err(exchange(io::Error::other(format!(
            "{} listeners named but {} sockets attached",
            listeners.len(),
            fds.len()
        ))));
    }
    let mut inherited = Vec::with_capacity(fds.len());
    for ((role, named), fd) in listeners.into_iter().zip(fds) {
        let socket = Inherited::from_fd(fd, Some(role)).map_err(|e| {
            exchange(io::Error::new(
                e.kind(),
                format!("the {} socket: {e}", role.as_str()),
            ))
        })?;
        if socket.addr != named {
            tracing::warn!(named = %named, actual = %socket.addr, "received socket's address differs from its name; using the socket's");
        }
        inherited.push(socket);
    }
    Ok((inherited, Predecessor { stream, pid }))
}

impl Predecessor {
    /// The running process's pid, as the kernel tells.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Says `ready` (this process accepts on every socket now) and waits for `bye`. An error
    /// means the running process gave up waiting and keeps serving; a process that is gone
    /// without `bye` is not an error (this one serves alone).
    pub async fn ready(self) -> Result<(), String> {
        let Predecessor { stream, pid } = self;
        let answer = tokio::task::spawn_blocking(move || {
            let sent = (&stream).write_all(wire::READY.as_bytes());
            let answer = wire::read_line(&stream);
            (sent, answer)
        })
        .await;
        match answer {
            Ok((_, Ok(line))) if line == wire::BYE => Ok(()),
            Ok((_, Ok(line))) if line == wire::TIMED_OUT => Err(format!(
                "the running switchboard (pid {pid:?}) stopped waiting for this one and keeps serving"
            )),
            other => {
                tracing::warn!(pid, answer = ?other, "the running switchboard went away without confirming the take-over; serving alone");
                Ok(())
            }
        }
    }
}
