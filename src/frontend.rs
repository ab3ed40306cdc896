//! The client-facing listeners and their accept loops, as one piece a reload can change: a
//! listener whose address changed is bound anew *before* the old one stops accepting, so no
//! connection attempt is refused in between; connections already accepted are not touched.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener;
use crate::listener::limit::ConnectionLimit;
use crate::proxy::{ConnectionGuard, Proxy};
use crate::proxy_protocol::receive::Receive;
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

/// One listener's accept loops: one per event loop, all on the same kernel socket.
struct AcceptLoop {
    kind: Kind,
    addr: SocketAddr,
    /// A duplicate of the listening socket, for a hand-over; dropped with the loop's entry, so
    /// a stopped listener is not kept open by it.
    socket: Option<OwnedFd>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Every accept loop, the connection limit they share, and the tracker of their connections.
pub struct Frontend {
    proxy: Arc<Proxy>,
    terminator: Option<Arc<TlsTerminator>>,
    slots: Arc<ConnectionLimit>,
    /// Every client connection task, so shutdown can wait for in-flight requests.
    pub connections: TaskTracker,
    loops: Mutex<Vec<AcceptLoop>>,
    /// The event loops that accept (see [`crate::workers`]); a connection runs on the loop that
    /// accepted it.
    event_loops: Vec<Handle>,
}

impl Frontend {
    /// A front end that accepts on each of `event_loops` once given listeners ([`Self::listen`]),
    /// with one connection limit across them (published as `switchboard_connections_limit`; a
    /// reload cannot change it). Separate from `listen` so a process taking the listeners over
    /// can get ready (its first DNS lookups) before it accepts one connection.
    pub fn new(
        proxy: Arc<Proxy>,
        terminator: Option<Arc<TlsTerminator>>,
        max_connections: usize,
        event_loops: Vec<Handle>,
    ) -> Arc<Self> {
        let slots = ConnectionLimit::clients(max_connections, &proxy.metrics);
        Arc::new(Frontend {
            proxy,
            terminator,
            slots,
            connections: TaskTracker::new(),
            loops: Mutex::new(Vec::new()),
            event_loops,
        })
    }

    /// Starts the accept loops of the given listeners.
    pub fn listen(&self, listeners: [(Kind, Option<TcpListener>); 2]) {
        for (kind, listener) in listeners {
            if let Some(listener) = listener {
                self.serve(kind, listener);
            }
        }
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
        let acceptor = self.acceptor(kind, &stop);
        let tasks = match self.event_loops.as_slice() {
            [] | [_] => vec![tokio::spawn(acceptor.run(listener, 0))],
            loops => acceptor.run_on_each(listener, loops),
        };
        self.lock().push(AcceptLoop {
            kind,
            addr,
            socket,
            stop,
            tasks,
        });
    }

    fn acceptor(&self, kind: Kind, stop: &CancellationToken) -> Acceptor {
        Acceptor {
            proxy: self.proxy.clone(),
            tls: match kind {
                Kind::Plain => None,
                Kind::Tls => self.terminator.clone(),
            },
            slots: self.slots.clone(),
            stop: stop.clone(),
            connections: self.connections.clone(),
        }
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
        let tasks: Vec<JoinHandle<()>> = self.lock().drain(..).flat_map(|l| l.tasks).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// What one accept loop needs; cloned for each event loop.
#[derive(Clone)]
struct Acceptor {
    proxy: Arc<Proxy>,
    tls: Option<Arc<TlsTerminator>>,
    slots: Arc<ConnectionLimit>,
    stop: CancellationToken,
    connections: TaskTracker,
}

impl Acceptor {
    /// Accepts on `listener` until stopped, serving each connection on this runtime, the event
    /// loop numbered `event_loop`.
    async fn run(self, listener: TcpListener, event_loop: usize) {
        let Acceptor {
            proxy,
            tls,
            slots,
            stop,
            connections,
        } = self;
        let metrics = proxy.metrics.clone();
        let accepted = metrics
            .connections_accepted_total
            .with_label_values(&[&event_loop.to_string()]);
        listener::accept_loop(
            listener,
            slots,
            metrics.clone(),
            Some(accepted),
            stop,
            connections,
            move |stream, peer, slot| {
                let guard = ConnectionGuard::new(slot, metrics.connections_active.clone());
                // Limits and the PROXY protocol as configured now: a reload applies them to new
                // connections.
                let snap = proxy.snapshot();
                let limits = snap.config.limits.clone();
                let receive = snap.config.proxy_protocol.map(|version| Receive {
                    version,
                    trusted: snap.config.trusted_proxies.clone(),
                });
                server::serve_connection(
                    proxy.clone(),
                    limits,
                    stream,
                    peer,
                    guard,
                    tls.clone(),
                    receive,
                )
            },
        )
        .await
    }

    /// One accept loop on each of `loops`, each on its own duplicate of `listener`'s socket,
    /// registered with that loop's reactor. A loop whose duplicate cannot be made (out of
    /// descriptors) goes without this listener; the others still accept.
    fn run_on_each(self, listener: TcpListener, loops: &[Handle]) -> Vec<JoinHandle<()>> {
        let listener = match listener.into_std() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot share a listener between event loops");
                return Vec::new();
            }
        };
        let mut tasks = Vec::with_capacity(loops.len());
        for (index, handle) in loops.iter().enumerate() {
            let socket = match listener.try_clone() {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, event_loop = index, "cannot duplicate a listener for an event loop");
                    continue;
                }
            };
            let acceptor = self.clone();
            tasks.push(handle.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => acceptor.run(listener, index).await,
                    Err(e) => tracing::error!(error = %e, "cannot register a listener"),
                }
            }));
        }
        tasks
    }
}
