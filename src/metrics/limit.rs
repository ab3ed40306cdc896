//! The clock behind `switchboard_connections_at_limit_seconds_total`: how long every connection
//! slot was taken.
//!
//! A saturation can last for hours (tunnels at the limit), so the time is not credited only
//! when it ends: each scrape folds the part elapsed so far into the counter and restarts the
//! clock from there, and a dashboard's `rate()` shows the saturation while it lasts. Lock-free:
//! the start is one atomic, and every interval is credited once, by whoever moves that atomic on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::{Counter, proto};

use crate::balancer::now_ms;

/// Time spent at the connection limit, as a counter of seconds; registered as a collector so
/// that each scrape sees the time up to now.
#[derive(Clone)]
pub struct LimitClock {
    inner: Arc<Inner>,
}

struct Inner {
    /// When the current stretch at the limit began (process clock, ms); 0 when not at it.
    since_ms: AtomicU64,
    seconds: Counter,
}

impl LimitClock {
    /// A stopped clock publishing into `seconds`.
    pub fn new(seconds: Counter) -> Self {
        LimitClock {
            inner: Arc::new(Inner {
                since_ms: AtomicU64::new(0),
                seconds,
            }),
        }
    }

    /// Every slot is taken from now on (no effect if the clock already runs).
    pub fn start(&self) {
        let _ =
            self.inner
                .since_ms
                .compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A slot was given back: credits the stretch that ends now. One load when not running, so
    /// it is cheap on every connection close.
    pub fn stop(&self) {
        self.stop_at(now_ms());
    }

    fn stop_at(&self, now: u64) {
        if self.inner.since_ms.load(Ordering::SeqCst) == 0 {
            return;
        }
        let since = self.inner.since_ms.swap(0, Ordering::SeqCst);
        self.credit(since, now);
    }

    /// Whether the clock runs (every slot taken).
    pub fn is_running(&self) -> bool {
        self.inner.since_ms.load(Ordering::SeqCst) != 0
    }

    /// Credits the running stretch up to `now` and keeps the clock running from there.
    fn fold_at(&self, now: u64) {
        let since = self.inner.since_ms.load(Ordering::SeqCst);
        if since == 0 {
            return;
        }
        if self
            .inner
            .since_ms
            .compare_exchange(since, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.credit(since, now);
        }
    }

    fn credit(&self, since: u64, now: u64) {
        if since != 0 {
            self.inner
                .seconds
                .inc_by(now.saturating_sub(since) as f64 / 1000.0);
        }
    }
}

impl Collector for LimitClock {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.seconds.desc()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        self.fold_at(now_ms());
        self.inner.seconds.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> LimitClock {
        LimitClock::new(Counter::new("t_seconds_total", "test").unwrap())
    }

    fn since(c: &LimitClock) -> u64 {
        c.inner.since_ms.load(Ordering::SeqCst)
    }

    #[test]
    fn a_stopped_clock_credits_nothing_and_a_stop_without_start_is_harmless() {
        let c = clock();
        c.stop();
        assert!(c.collect()[0].get_metric()[0].get_counter().get_value() == 0.0);
        assert!(!c.is_running());
    }

    #[test]
    fn scrapes_credit_a_running_stretch_once_and_keep_it_running() {
        let c = clock();
        c.start();
        let start = since(&c);
        c.start();
        assert_eq!(since(&c), start, "a second start changes nothing");
        c.fold_at(start + 1500);
        assert!(c.is_running());
        assert_eq!(c.inner.seconds.get(), 1.5);
        c.fold_at(start + 2000);
        assert_eq!(c.inner.seconds.get(), 2.0, "only the new half second");
        c.stop_at(start + 2250);
        assert!(!c.is_running());
        assert_eq!(c.inner.seconds.get(), 2.25);
        c.fold_at(start + 9000);
        assert_eq!(c.inner.seconds.get(), 2.25, "nothing while stopped");
    }
}
