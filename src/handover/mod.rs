//! Listener hand-over: upgrading switchboard without refusing one connection attempt.
//!
//! A running process with `[admin] handover_socket = PATH` serves PATH ([`giver`]). A new
//! process started with `switchboard --take-over PATH` ([`taker`]) connects to it and gets
//! duplicates of the running one's listening sockets over SCM_RIGHTS: the same kernel sockets,
//! so both processes share one backlog and a connection waiting in it is accepted by whichever
//! process calls `accept` first. The exchange, one line each way (see [`wire`]):
//!
//! ```text
//! new → old   switchboard-take-over 1
//! old → new   listeners 3 / http 0.0.0.0:8080 / https 0.0.0.0:8443 / admin 127.0.0.1:9100 / end
//!             (the three sockets ride on this message as SCM_RIGHTS, in that order)
//! new         starts its accept loops on them (and binds whatever its own config moved)
//! new → old   ready
//! old         stops serving PATH, then:
//! old → new   bye
//! old         stops accepting (no shutdown_delay: the sockets stay open in the new process),
//!             /readyz 503, closes its tunnels politely as at SIGTERM, exits
//! new         serves PATH itself (its config's handover_socket), for the next upgrade
//! ```
//!
//! Until `ready` the old process keeps accepting: a new process that fails before it (a bad
//! config, a port it cannot bind, a crash) or takes longer than [`giver::READY_WAIT`] changes
//! nothing. The old process never stops accepting before the new one accepts, so a connection
//! attempt is never refused in between; at worst it waits in the backlog for a moment.
//!
//! Which sockets: the client listeners (`listen`, `tls.listen`) and the admin listener, so that
//! scrapes and probes go on against the new process; after `ready` the old one stops accepting
//! on the admin listener too, so `/readyz` never flaps between a ready and a draining process.
//! The new process's config decides what each socket is: a received socket serves the listener
//! of the new config with the same local address; a listener whose address changed is bound
//! anew (said in a log line); a received socket no listener wants is closed.
//!
//! Before it accepts at all, the new process waits (at most [`WARM_WAIT`]) for the first
//! lookups of its `dns:` servers, the wait `/readyz` makes at any start: the old process keeps
//! accepting meanwhile, so no client is answered by an upstream that knows no backend yet.
//!
//! The same adoption serves systemd socket activation ([`systemd`]).

pub mod giver;
mod prepared;
pub mod socket;
pub mod systemd;
pub mod taker;
pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;

pub use prepared::Prepared;

/// How long a process taking over waits for its first DNS lookups before it accepts anyway;
/// under [`giver::READY_WAIT`], after which the old process gives up on it.
pub const WARM_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

use crate::config::Config;
use crate::{Listeners, listener};

/// Which listener a socket is, in the words of the start line and the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `listen` (plain HTTP).
    Http,
    /// `tls.listen` (or `listen` with `[tls]`).
    Https,
    /// `admin.listen`.
    Admin,
}

impl Role {
    /// The word on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Https => "https",
            Role::Admin => "admin",
        }
    }

    /// The role named `word`, if any.
    pub fn parse(word: &str) -> Option<Role> {
        match word {
            "http" => Some(Role::Http),
            "https" => Some(Role::Https),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Where inherited sockets came from (the `source` label of `switchboard_listeners_inherited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A running switchboard, over `--take-over`.
    Handover,
    /// systemd (`LISTEN_FDS`).
    Systemd,
}

impl Source {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Handover => "handover",
            Source::Systemd => "systemd",
        }
    }
}

/// A listening TCP socket this process was given, with its local address as the kernel says.
#[derive(Debug)]
pub struct Inherited {
    /// What the giver called it (systemd: the `LISTEN_FDNAMES` entry, if it is a role word).
    pub role: Option<Role>,
    /// Its local address.
    pub addr: SocketAddr,
    /// The socket.
    pub socket: std::net::TcpListener,
}

impl Inherited {
    /// Checks that `fd` is a listening TCP socket and reads its address.
    pub fn from_fd(fd: OwnedFd, role: Option<Role>) -> io::Result<Inherited> {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let family = sockopt::socket_domain(&fd)?;
        if family != AddressFamily::INET && family != AddressFamily::INET6 {
            return Err(io::Error::other("not a TCP/IP socket"));
        }
        if sockopt::socket_type(&fd)? != SocketType::STREAM || !sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::other("not a listening TCP socket"));
        }
        let socket = std::net::TcpListener::from(fd);
        let addr = socket.local_addr()?;
        Ok(Inherited { role, addr, socket })
    }
}

/// Where this process's listening sockets came from, when it did not bind them all itself.
pub struct Origin {
    /// The listeners that are inherited sockets (the rest were bound here).
    pub inherited: Vec<Role>,
    /// Who gave them.
    pub source: Source,
    /// The process being taken over (`--take-over`), to tell once this one accepts.
    pub predecessor: Option<taker::Predecessor>,
}

impl Origin {
    /// Sets `switchboard_listeners_inherited` for each inherited listener.
    pub fn publish(&self, metrics: &crate::metrics::Metrics) {
        for role in &self.inherited {
            metrics
                .listeners_inherited
                .with_label_values(&[role.as_str(), self.source.as_str()])
                .set(1);
        }
    }
}

/// The listeners for [`crate::run_with`]: taken over from the switchboard serving `take_over`,
/// passed by systemd (`LISTEN_FDS`), or else bound here. Inside the tokio runtime; the error
/// is what to print.
pub fn obtain(
    config: &Config,
    take_over: Option<&Path>,
) -> Result<(Listeners, Option<Origin>), String> {
    let (sockets, source, predecessor) = if let Some(path) = take_over {
        let (sockets, predecessor) = taker::take_over(path).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), pid = predecessor.pid(), sockets = sockets.len(),
            "received the running switchboard's listening sockets");
        (sockets, Source::Handover, Some(predecessor))
    } else {
        match systemd::inherited().map_err(|e| format!("socket activation: {e}"))? {
            Some(sockets) => (sockets, Source::Systemd, None),
            None => return Ok((Listeners::bind(config).map_err(|e| e.to_string())?, None)),
        }
    };
    let (listeners, inherited) = adopt(config, sockets, source).map_err(|e| e.to_string())?;
    let origin = Origin {
        inherited,
        source,
        predecessor,
    };
    Ok((listeners, Some(origin)))
}

/// The listeners `config` asks for, each taken from `sockets` when one has its address and
/// bound here otherwise (logged); sockets no listener wants are closed (logged). Returns which
/// listeners are inherited. Needs the tokio runtime (the sockets are registered with it).
pub fn adopt(
    config: &Config,
    sockets: Vec<Inherited>,
    source: Source,
) -> io::Result<(Listeners, Vec<Role>)> {
    let mut left: Vec<Option<Inherited>> = sockets.into_iter().map(Some).collect();
    let mut inherited = Vec::new();
    let mut take = |role: Role,
                    addr: Option<SocketAddr>|
     -> io::Result<Option<tokio::net::TcpListener>> {
        let Some(addr) = addr else { return Ok(None) };
        let found = left
            .iter_mut()
            .find(|s| {
                s.as_ref()
                    .is_some_and(|s| s.addr == addr && addr.port() != 0)
            })
            .and_then(Option::take);
        let socket = match found {
            Some(found) => {
                if found.role.is_some_and(|r| r != role) {
                    tracing::info!(addr = %addr, was = found.role.map(Role::as_str), now = role.as_str(),
                        "inherited listener serves another role in this config");
                }
                inherited.push(role);
                found.socket.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(found.socket)?
            }
            None => {
                tracing::info!(listener = role.as_str(), addr = %addr, source = source.as_str(),
                    "no inherited socket has this address (it changed in the config): binding it fresh");
                listener::bind(addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} ({}): {e}", role.as_str()),
                    )
                })?
            }
        };
        Ok(Some(socket))
    };
    let listeners = Listeners {
        plain: take(Role::Http, config.plain_listen())?,
        tls: take(Role::Https, config.tls_listen())?,
        admin: take(Role::Admin, config.admin)?,
    };
    for unused in left.into_iter().flatten() {
        tracing::warn!(addr = %unused.addr, role = unused.role.map(Role::as_str), source = source.as_str(),
            "inherited socket matches no listener of this config: closing it here");
    }
    Ok((listeners, inherited))
}
