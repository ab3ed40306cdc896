//! The client-facing listeners and their accept loops, as one piece a reload can change: a
//! listener whose address changed is bound anew *before* the old one stops accepting, so no
//! connection attempt is refused in between; connections already accepted are not touched.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener;
use crate::listener::limit::ConnectionLimit;
use crate::proxy::{ConnectionGuard, Proxy};
use crate::server;
use crate::tls::server::TlsTerminator;

/// Which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain HTTP (and h2c).
    Plain,
    /// TLS.
    Tls,
}

struct AcceptLoop {
    kind: Kind,
    addr: SocketAddr,
    /// A duplicate of the listening socket, for a hand-over; dropped with the loop's entry, so
    /// a stopped listener is not kept open by it.
    socket: Option<OwnedFd>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Every accept loop, the connection limit they share, and the tracker of their connections.
pub struct Frontend {
    proxy: Arc<Proxy>,
    terminator: Option<Arc<TlsTerminator>>,
    slots: Arc<ConnectionLimit>,
    /// Every client connection task, so shutdown can wait for in-flight requests.
    pub connections: TaskTracker,
    loops: Mutex<Vec<AcceptLoop>>,
}

impl Frontend {
    /// Accept loops for the given listeners, one connection limit across them (published as
    /// `switchboard_connections_limit`; a reload cannot change it).
    pub fn start(
        proxy: Arc<Proxy>,
        terminator: Option<Arc<TlsTerminator>>,
        max_connections: usize,
        listeners: [(Kind, Option<TcpListener>); 2],
    ) -> Arc<Self> {
        let slots = ConnectionLimit::clients(max_connections, &proxy.metrics);
        let frontend = Arc::new(Frontend {
            proxy,
            terminator,
            slots,
            connections: TaskTracker::new(),
            loops: Mutex::new(Vec::new()),
        });
        for (kind, listener) in listeners {
            if let Some(listener) = listener {
                frontend.serve(kind, listener);
            }
        }
        frontend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AcceptLoop>> {
        self.loops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, kind: Kind, listener: TcpListener) {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let socket = listener.as_fd().try_clone_to_owned().ok();
        let stop = self.proxy.shutdown.stop_token().child_token();
        let proxy = self.proxy.clone();
        let tls = match kind {
            Kind::Plain => None,
            Kind::Tls => self.terminator.clone(),
        };
        let metrics = proxy.metrics.clone();
        let task = tokio::spawn(listener::accept_loop(
            listener,
            self.slots.clone(),
            metrics.clone(),
            stop.clone(),
            self.connections.clone(),
            move |stream, peer, slot| {
                let guard = ConnectionGuard::new(slot, metrics.connections_active.clone());
                // Limits as configured now: a reload applies them to new connections.
                let limits = proxy.snapshot().config.limits.clone();
                server::serve_connection(proxy.clone(), limits, stream, peer, guard, tls.clone())
            },
        ));
        self.lock().push(AcceptLoop {
            kind,
            addr,
            socket,
            stop,
            task,
        });
    }

    /// Where the listener of `kind` accepts now.
    pub fn address(&self, kind: Kind) -> Option<SocketAddr> {
        self.lock().iter().find(|l| l.kind == kind).map(|l| l.addr)
    }

    /// Duplicates of the listening sockets accepting now, each with its kind and address, for a
    /// new process taking the listeners over ([`crate::handover`]).
    pub fn sockets(&self) -> io::Result<Vec<(Kind, SocketAddr, OwnedFd)>> {
        self.lock()
            .iter()
            .map(|l| {
                let socket = l.socket.as_ref().ok_or_else(|| {
                    io::Error::other(format!("no duplicate of the {} listener", l.addr))
                })?;
                Ok((l.kind, l.addr, socket.try_clone()?))
            })
            .collect()
    }

    /// Binds `addr` for the listener of `kind`, without starting it: a reload binds every
    /// moved listener first and gives up (old config kept) if one cannot be bound.
    pub fn bind(&self, kind: Kind, addr: SocketAddr) -> io::Result<TcpListener> {
        listener::bind(addr).map_err(|e| {
            let what = match kind {
                Kind::Plain => "listen",
                Kind::Tls => "tls.listen",
            };
            io::Error::new(e.kind(), format!("`{what}`: cannot listen on {addr}: {e}"))
        })
    }

    /// Starts accepting on `listener` for `kind`, then stops the loop that accepted before.
    pub fn replace(&self, kind: Kind, listener: TcpListener) {
        let old: Vec<AcceptLoop> = {
            let mut loops = self.lock();
            let (old, keep) = std::mem::take(&mut *loops)
                .into_iter()
                .partition(|l| l.kind == kind);
            *loops = keep;
            old
        };
        self.serve(kind, listener);
        for old in old {
            tracing::info!(from = %old.addr, "listener moved; the old address stops accepting");
            old.stop.cancel();
        }
    }

    /// Stops every accept loop now, before the shutdown's stop token (after a hand-over, the new
    /// process accepts on the same sockets).
    pub fn stop_accepting(&self) {
        for l in self.lock().iter() {
            l.stop.cancel();
        }
    }

    /// Waits until every accept loop has stopped (they stop with the shutdown's stop token).
    pub async fn stopped(&self) {
        let tasks: Vec<JoinHandle<()>> = self.lock().drain(..).map(|l| l.task).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
