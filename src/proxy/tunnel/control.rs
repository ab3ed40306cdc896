//! The one road into a live tunnel: a close request (codes, a start, a deadline) delivered to
//! the tunnel, which acts on it at its next frame boundary.
//!
//! Every reason switchboard has to end a tunnel — shutdown, and later drains and reloads — is a
//! [`CloseRequest`] handed to the tunnel's [`Control`]; nothing reaches into a tunnel from
//! outside. The [`TunnelRegistry`] holds every live tunnel's control, so one event can ask all of
//! them, spread evenly with jitter over a window so that clients do not reconnect in the same
//! instant. Idle, lifetime, ping and size limits build the same request inside the tunnel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::CloseReason;
use crate::balancer::Backend;

/// Ask a tunnel to end politely: Close frames at the next message boundary from `start`, then
/// TCP ends when both closing handshakes are done or at `deadline`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    /// Why; the metric label and the log line.
    pub reason: CloseReason,
    /// The code of the Close sent to the client; `None`: send none, do not wait for one.
    pub to_client: Option<u16>,
    /// The code of the Close sent to the backend; `None`: send none, do not wait for one.
    pub to_backend: Option<u16>,
    /// When to begin (a spread close begins later for some tunnels than for others).
    pub start: Instant,
    /// When TCP ends whatever the peers did.
    pub deadline: Instant,
}

impl CloseRequest {
    /// The same code both ways, starting now, ending TCP after `linger`.
    pub fn now(reason: CloseReason, code: u16, linger: Duration) -> Self {
        let now = Instant::now();
        CloseRequest {
            reason,
            to_client: Some(code),
            to_backend: Some(code),
            start: now,
            deadline: now + linger,
        }
    }

    /// Folds a later request into this one: the first reason and codes stay, the earlier
    /// start and deadline win (a second SIGTERM hurries a spread close; a cut ends it).
    pub fn merge(&mut self, later: &CloseRequest) {
        self.start = self.start.min(later.start);
        self.deadline = self.deadline.min(later.deadline);
    }
}

/// A tunnel's doorbell: a waker and a flag, set from any thread, seen by the tunnel's task.
/// The request itself waits in the registry, so an idle tunnel carries 32 bytes for this.
#[derive(Default)]
pub struct Control {
    waker: AtomicWaker,
    pending: AtomicBool,
}

impl Control {
    fn ring(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the bell rang since the last call; otherwise registers for a wake-up.
    fn poll_rung(&self, cx: &mut Context<'_>) -> bool {
        if !self.pending.load(Ordering::Acquire) {
            self.waker.register(cx.waker());
            if !self.pending.load(Ordering::Acquire) {
                return false;
            }
        }
        self.pending.store(false, Ordering::Release);
        true
    }
}

/// What one event asks of every tunnel: codes, and a window to spread the closes over.
#[derive(Debug, Clone, Copy)]
pub struct CloseAll {
    /// Why.
    pub reason: CloseReason,
    /// The Close code both ways.
    pub code: u16,
    /// Closes are spread evenly, with jitter, over this window from now.
    pub spread: Duration,
    /// Each tunnel's time from its Close to the end of TCP.
    pub linger: Duration,
}

impl CloseAll {
    /// The request for one tunnel whose polite close starts at `start`.
    fn request_at(&self, start: Instant) -> CloseRequest {
        CloseRequest {
            reason: self.reason,
            to_client: Some(self.code),
            to_backend: Some(self.code),
            start,
            deadline: start + self.linger,
        }
    }
}

struct Entry {
    control: Arc<Control>,
    /// For closing the tunnels of one backend (drains).
    backend: Arc<Backend>,
    /// A close was already asked of it (a rebalance does not count it as movable again).
    asked: bool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    tunnels: HashMap<u64, Entry>,
    /// Requests not yet taken by their tunnel, merged (few, except while a shutdown spreads).
    requests: HashMap<u64, CloseRequest>,
    /// Set once every tunnel is being closed: a tunnel that starts later is asked at once.
    closing_all: Option<CloseAll>,
}

/// Every live tunnel, for the process's life. Touched when a tunnel starts and
/// ends and when an event closes many; never per message.
#[derive(Default)]
pub struct TunnelRegistry {
    inner: Mutex<Inner>,
}

/// A tunnel's place in the registry; leaves it when dropped.
pub struct Registration {
    registry: Arc<TunnelRegistry>,
    id: u64,
    control: Arc<Control>,
}

impl Registration {
    /// The request delivered since the last call, if any; otherwise registers for a wake-up.
    /// The registry's lock is taken only when there is one.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Option<CloseRequest> {
        if !self.control.poll_rung(cx) {
            return None;
        }
        self.registry.lock().requests.remove(&self.id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.tunnels.remove(&self.id);
        inner.requests.remove(&self.id);
    }
}

impl TunnelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a tunnel on `backend`. If every tunnel is being closed, this one is asked at once.
    pub fn register(self: &Arc<Self>, backend: Arc<Backend>) -> Registration {
        let control = Arc::new(Control::default());
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if let Some(all) = inner.closing_all {
            let request = CloseRequest::now(all.reason, all.code, all.linger);
            inner.requests.insert(id, request);
            control.ring();
        }
        let asked = inner.closing_all.is_some();
        inner.tunnels.insert(
            id,
            Entry {
                control: control.clone(),
                backend,
                asked,
            },
        );
        Registration {
            registry: self.clone(),
            id,
            control,
        }
    }

    /// Live tunnels now.
    pub fn len(&self) -> usize {
        self.lock().tunnels.len()
    }

    /// True when no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every tunnel to close: tunnel *i* of *n* starts at `spread × (i + u) / n` from now,
    /// `u` uniform in [0, 1), so closes are even across the window and not in lockstep. Calling
    /// it again with a shorter spread hurries them (requests merge to the earlier start).
    pub fn close_all(&self, all: CloseAll) {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.closing_all = Some(all);
        let n = inner.tunnels.len().max(1) as f64;
        for (i, (id, entry)) in inner.tunnels.iter_mut().enumerate() {
            entry.asked = true;
            let slot = (i as f64 + rand::random::<f64>()) / n;
            let start = now + all.spread.mul_f64(slot);
            let request = all.request_at(start);
            deliver(&mut inner.requests, *id, request, &entry.control);
        }
    }

    /// Asks the tunnels of `backend` to close, spread over `all.spread` like [`Self::close_all`].
    /// Returns how many were asked.
    pub fn close_backend(&self, backend: &Arc<Backend>, all: CloseAll) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let chosen: Vec<(u64, Arc<Control>)> = inner
            .tunnels
            .iter_mut()
            .filter(|(_, e)| Arc::ptr_eq(&e.backend, backend))
            .map(|(id, e)| {
                e.asked = true;
                (*id, e.control.clone())
            })
            .collect();
        let n = chosen.len().max(1) as f64;
        for (i, (id, control)) in chosen.iter().enumerate() {
            let slot = (i as f64 + rand::random::<f64>()) / n;
            let start = now + all.spread.mul_f64(slot);
            let request = all.request_at(start);
            deliver(&mut inner.requests, *id, request, control);
        }
        chosen.len()
    }

    /// Moves load off `backend`: of its tunnels not yet asked to close, keeps `keep` and asks
    /// the youngest of the rest (at most `max`) to close with `all.code` now. Youngest first:
    /// they have the least session state to rebuild, and the longest-lived ones, which have
    /// proved stable, stay. Returns how many were asked.
    pub fn shed(&self, backend: &Arc<Backend>, keep: usize, max: usize, all: CloseAll) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut movable: Vec<u64> = inner
            .tunnels
            .iter()
            .filter(|(_, e)| !e.asked && Arc::ptr_eq(&e.backend, backend))
            .map(|(id, _)| *id)
            .collect();
        if movable.len() <= keep {
            return 0;
        }
        let n = (movable.len() - keep).min(max);
        movable.sort_unstable_by(|a, b| b.cmp(a));
        for id in &movable[..n] {
            let entry = inner.tunnels.get_mut(id).expect("listed above");
            entry.asked = true;
            let request = all.request_at(now);
            deliver(&mut inner.requests, *id, request, &entry.control);
        }
        n
    }

    /// Ends every tunnel now, politely or not (the shutdown grace period is over).
    pub fn cut_all(&self, reason: CloseReason) {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        for (id, entry) in &inner.tunnels {
            let request = CloseRequest {
                reason,
                to_client: None,
                to_backend: None,
                start: now,
                deadline: now,
            };
            deliver(&mut inner.requests, *id, request, &entry.control);
        }
    }
}

/// Leaves `request` for tunnel `id` (merged with one it has not taken yet) and wakes it.
fn deliver(
    requests: &mut HashMap<u64, CloseRequest>,
    id: u64,
    request: CloseRequest,
    control: &Control,
) {
    requests
        .entry(id)
        .and_modify(|held| held.merge(&request))
        .or_insert(request);
    control.ring();
}
