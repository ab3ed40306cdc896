//! The connection limit (`limits.max_connections`, and the admin listener's own): slots as
//! RAII [`Slot`]s, and what happens to a connection that arrives while every slot is taken.
//!
//! At the limit a new connection first waits, as under HAProxy's `maxconn`: the accept loop
//! holds it (the ones behind it wait in the kernel's backlog) for up to [`WAIT_AT_LIMIT`], so a
//! burst is absorbed while slots come free every few milliseconds (plain requests). If no slot
//! comes free in that time the limit is held by long-lived connections (tunnels, idle
//! keep-alives) and waiting would only hang clients until their own timeouts: the connection is
//! closed, and from then on, while every slot stays taken, each new one is closed at once (as
//! nginx does when `worker_connections` run out), so clients fail fast and retry elsewhere.
//! Closed connections count in `switchboard_connections_rejected_total`; the time with every
//! slot taken in `switchboard_connections_at_limit_seconds_total`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{LimitClock, Metrics};

/// How long a connection that arrives while every slot is taken waits for one before
/// switchboard closes it and starts closing new ones at once.
pub const WAIT_AT_LIMIT: Duration = Duration::from_secs(1);

/// A number of connection slots shared by accept loops.
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    /// `None` for the admin listener, whose connections are not client connections.
    counted: Option<Counted>,
}

/// The client connections' metrics.
struct Counted {
    accepted: IntCounter,
    rejected: IntCounter,
    at_limit: LimitClock,
}

impl ConnectionLimit {
    /// The client connections' limit: counted in `switchboard_connections_*`.
    pub fn clients(max: usize, metrics: &Metrics) -> Arc<Self> {
        metrics.connections_limit.set(max as i64);
        Self::build(
            max,
            Some(Counted {
                accepted: metrics.connections_total.clone(),
                rejected: metrics.connections_rejected_total.clone(),
                at_limit: metrics.connections_at_limit_seconds_total.clone(),
            }),
        )
    }

    /// A limit counted nowhere (the admin listener's).
    pub fn uncounted(max: usize) -> Arc<Self> {
        Self::build(max, None)
    }

    fn build(max: usize, counted: Option<Counted>) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            counted,
        })
    }

    /// The most connections at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A free slot, if there is one.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(self.taken(permit)),
            Err(_) => {
                self.note_full();
                None
            }
        }
    }

    /// The next slot that comes free.
    pub async fn take(self: &Arc<Self>) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.taken(permit)
    }

    /// Closes a connection that got no slot, and counts it.
    pub fn reject(&self, stream: tokio::net::TcpStream) {
        drop(stream);
        if let Some(counted) = &self.counted {
            counted.rejected.inc();
        }
    }

    fn taken(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        if let Some(counted) = &self.counted {
            counted.accepted.inc();
        }
        if self.slots.available_permits() == 0 {
            self.note_full();
        }
        Slot {
            permit: Some(permit),
            limit: self.clone(),
        }
    }

    /// Starts the at-limit clock; stops it again if a slot came free meanwhile (its release
    /// may have looked at the clock before this started it).
    fn note_full(&self) {
        if let Some(counted) = &self.counted {
            counted.at_limit.start();
            if self.slots.available_permits() > 0 {
                counted.at_limit.stop();
            }
        }
    }
}

/// One connection's slot: given back when dropped (with the connection, or with its last
/// tunnel), which also ends a stretch at the limit.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConnectionLimit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The slot is free before the clock stops, so a concurrent take that finds the limit
        // full again restarts it.
        drop(self.permit.take());
        if let Some(counted) = &self.limit.counted {
            counted.at_limit.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back_and_the_clock_runs_only_while_all_are_taken() {
        let metrics = Metrics::new();
        let limit = ConnectionLimit::clients(2, &metrics);
        let clock = &metrics.connections_at_limit_seconds_total;
        assert_eq!(metrics.connections_limit.get(), 2);
        let a = limit.try_take().expect("a free slot");
        assert!(!clock.is_running());
        let b = limit.try_take().expect("a free slot");
        assert!(clock.is_running(), "every slot taken");
        assert!(limit.try_take().is_none());
        drop(a);
        assert!(!clock.is_running());
        let c = limit.try_take().expect("the slot a gave back");
        assert!(clock.is_running());
        drop((b, c));
        assert!(!clock.is_running());
        assert_eq!(metrics.connections_total.get(), 3);
    }
}
