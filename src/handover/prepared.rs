//! The hand-over's part of [`crate::run_with`]: what is set up before accepting starts, and
//! what follows once it has (the predecessor told, the hand-over socket served).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::{giver, socket, taker};
use crate::Listeners;
use crate::config::Config;

/// What [`crate::run_with`] sets up for hand-overs before it starts accepting: the hand-over
/// socket (bound now, unless taking over: the predecessor serves it until then) and a
/// duplicate of the admin listener to offer.
pub struct Prepared {
    socket: Option<socket::HandoverSocket>,
    admin: Option<(SocketAddr, OwnedFd)>,
}

impl Prepared {
    /// Binds `admin.handover_socket` (unless `taking_over`) and duplicates the admin listener.
    pub fn new(config: &Config, listeners: &Listeners, taking_over: bool) -> io::Result<Prepared> {
        let Some(path) = &config.handover_socket else {
            return Ok(Prepared {
                socket: None,
                admin: None,
            });
        };
        let socket = match taking_over {
            true => None,
            false => Some(socket::HandoverSocket::bind(path, false)?),
        };
        let admin = match &listeners.admin {
            Some(admin) => Some((
                admin.local_addr()?,
                std::os::fd::AsFd::as_fd(admin).try_clone_to_owned()?,
            )),
            None => None,
        };
        Ok(Prepared { socket, admin })
    }

    /// Once this process accepts: tells the `predecessor` to stop (an error: it stopped waiting
    /// and keeps serving, so this process hands over at once and exits), then serves the
    /// hand-over socket for the next upgrade: the task doing so, to wait for at the end.
    pub async fn finish(
        self,
        config: &Config,
        predecessor: Option<taker::Predecessor>,
        frontend: &std::sync::Arc<crate::frontend::Frontend>,
        shutdown: &crate::Shutdown,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        if let Some(predecessor) = predecessor {
            let pid = predecessor.pid();
            if let Err(e) = predecessor.ready().await {
                tracing::error!("{e}; this process stops accepting and exits");
                shutdown.hand_over();
                return Err(e);
            }
            tracing::info!(
                pid,
                "took the listeners over; the previous process stops accepting"
            );
        }
        let Some(path) = &config.handover_socket else {
            return Ok(None);
        };
        let socket = match self.socket {
            Some(socket) => socket,
            None => match socket::HandoverSocket::bind(path, true) {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot serve admin.handover_socket: no take-over of this process is possible");
                    return Ok(None);
                }
            },
        };
        let giver = giver::Giver {
            frontend: frontend.clone(),
            admin: self.admin,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        };
        Ok(Some(tokio::spawn(giver::serve(socket, giver))))
    }
}
