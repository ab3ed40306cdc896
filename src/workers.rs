//! Where connections run: one event loop per core (the default), or one work-stealing pool.
//!
//! A WebSocket upgrade is a few microseconds of work spread over a dozen socket events. On
//! tokio's work-stealing runtime those events often wake a second worker (a `futex` and an
//! eventfd `write`, then a context switch) and the connection's task migrates between cores;
//! `benches/upgrade_cost` counted 4 of the 43 syscalls of an upgrade there. So, like nginx's
//! workers, switchboard runs N single-threaded runtimes by default, each with its own accept loop
//! on every listener (each registers a duplicate of the same listening socket, so a listener
//! stays one kernel socket: a reload can move it, a hand-over can pass it); a connection and
//! its tunnel live on the runtime that accepted it. Process-wide state (least-conn counts, the
//! tunnel registry, limits) is atomics and channels, so it stays global whichever core holds a
//! tunnel. The price is fairness: a core cannot hand work to an idle one, so a core holding
//! chatty tunnels stays busier; the kernel spreads new connections over the loops that wait.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio_util::sync::CancellationToken;

/// How the process's runtime is laid out (`[runtime] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeMode {
    /// One current-thread runtime per core, each accepting for itself.
    #[default]
    PerCore,
    /// One multi-threaded, work-stealing runtime.
    Shared,
}

impl RuntimeMode {
    /// The name written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeMode::PerCore => "per-core",
            RuntimeMode::Shared => "shared",
        }
    }
}

/// The runtimes that accept and serve client connections. The first is the one `run` is called
/// on (it also runs the admin listener, reloads and health checks); the others are loops of
/// their own, each on one thread.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Only the runtime this is called on: what tests and the shared mode use. Called from
    /// inside that runtime (it starts the runtime's timer anchor there, see `anchor_timers`);
    /// the anchor ends when the `Workers` are dropped.
    pub fn current() -> Self {
        let stop = CancellationToken::new();
        tokio::spawn(stop.clone().run_until_cancelled_owned(anchor_timers()));
        Workers {
            handles: vec![Handle::current()],
            threads: Vec::new(),
            stop,
        }
    }

    /// The calling runtime plus `extra` single-threaded runtimes on threads of their own.
    pub fn with_extra_loops(extra: usize) -> io::Result<Self> {
        let mut workers = Workers::current();
        for index in 1..=extra {
            let runtime = event_loop()?;
            workers.handles.push(runtime.handle().clone());
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("switchboard-loop-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.run_until_cancelled_owned(anchor_timers()));
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many loops accept connections.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: there is always the calling runtime.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// A handle on each loop, the calling runtime's first.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// How often each loop's anchoring timer fires (see [`anchor_timers`]).
const TIMER_ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_ANCHOR_PERIOD`] on this loop, for ever.
///
/// tokio's timer driver wakes its loop through the loop's eventfd (a `write(2)`, and an
/// `epoll_wait` that returns at once) whenever a new timer is due before every timer it knows,
/// even when the loop registering it is the one that will sleep on it. On a quiet loop every new
/// timer is the earliest, so each upgrade paid two such writes: its header-read deadline and its
/// backend deadline (`benches/upgrade_cost`: 2.00 `write`s per upgrade, 0 with the anchor). With
/// a timer always due within a second, no timeout of a second or more is ever the earliest. The
/// price is one wake-up a second on an idle loop.
async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// A single-threaded runtime with IO and timers: one event loop.
pub fn event_loop() -> io::Result<Runtime> {
    Builder::new_current_thread().enable_all().build()
}

/// Loops to run: `TOKIO_WORKER_THREADS` when set (the variable tokio itself reads), else the
/// cores this process may use.
pub fn default_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
