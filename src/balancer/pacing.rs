//! Upgrade pacing: a token bucket per backend on new WebSocket upgrades, so that the reconnect
//! storm after a deploy reaches a backend at a rate it can take.
//!
//! The bucket is GCRA (the generic cell rate algorithm, as in ATM policing and many API rate
//! limiters): one atomic "theoretical arrival time" instead of a token count and a refill
//! timer. An upgrade that finds no token may reserve the next one if it comes within the wait
//! it is allowed; otherwise it is refused. Lock-free; no task per bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A token bucket of `rate` tokens a second, `burst` deep; all zero: no limit.
#[derive(Default)]
pub struct Pacing {
    /// Nanoseconds between tokens (0: pacing off).
    interval_ns: AtomicU64,
    /// How far ahead of now the arrival time may run: (burst − 1) × interval.
    tolerance_ns: AtomicU64,
    /// Theoretical arrival time of the next token, nanoseconds on the process clock.
    tat_ns: AtomicU64,
}

/// What the bucket says to one upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go now.
    Now,
    /// A token is reserved; go after this wait.
    After(Duration),
    /// No token within the allowed wait.
    Refused,
}

impl Pacing {
    /// Sets the rate (tokens per second) and burst; `None` turns pacing off.
    pub fn configure(&self, limit: Option<(f64, u32)>) {
        let (interval, tolerance) = match limit {
            Some((rate, burst)) if rate > 0.0 => {
                let interval = (1e9 / rate) as u64;
                (interval.max(1), interval * u64::from(burst.max(1) - 1))
            }
            _ => (0, 0),
        };
        self.interval_ns.store(interval, Ordering::Relaxed);
        self.tolerance_ns.store(tolerance, Ordering::Relaxed);
    }

    /// Takes a token now, or reserves one no more than `max_wait` away. Without pacing this
    /// is one atomic load (the clock is not read).
    pub fn admit(&self, max_wait: Duration) -> Admit {
        if self.interval_ns.load(Ordering::Relaxed) == 0 {
            return Admit::Now;
        }
        self.admit_at(now_ns(), max_wait)
    }

    /// [`Pacing::admit`] at a given time on the process clock (nanoseconds).
    pub fn admit_at(&self, now_ns: u64, max_wait: Duration) -> Admit {
        let interval = self.interval_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return Admit::Now;
        }
        let tolerance = self.tolerance_ns.load(Ordering::Relaxed);
        let max_wait = max_wait.as_nanos() as u64;
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            // This upgrade may go at `start - tolerance` (a full bucket lets `burst` go at once).
            let go_at = start.saturating_sub(tolerance);
            let wait = go_at.saturating_sub(now_ns);
            if wait > max_wait {
                return Admit::Refused;
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) if wait == 0 => return Admit::Now,
                Ok(_) => return Admit::After(Duration::from_nanos(wait)),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Nanoseconds on the process-wide clock.
pub fn now_ns() -> u64 {
    super::process_epoch().elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn off_admits_everything() {
        let p = Pacing::default();
        for i in 0..1000 {
            assert_eq!(p.admit_at(i, Duration::ZERO), Admit::Now);
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let p = Pacing::default();
        p.configure(Some((100.0, 5))); // a token every 10 ms, 5 deep
        let t0 = 1_000 * MS;
        for _ in 0..5 {
            assert_eq!(p.admit_at(t0, Duration::ZERO), Admit::Now);
        }
        assert_eq!(p.admit_at(t0, Duration::ZERO), Admit::Refused);
        // Allowed to wait 100 ms: the next ten tokens are reserved 10 ms apart.
        for i in 1..=10u64 {
            assert_eq!(
                p.admit_at(t0, Duration::from_millis(100)),
                Admit::After(Duration::from_nanos(i * 10 * MS))
            );
        }
        assert_eq!(p.admit_at(t0, Duration::from_millis(100)), Admit::Refused);
        // Later, tokens have come back.
        assert_eq!(p.admit_at(t0 + 1_000 * MS, Duration::ZERO), Admit::Now);
    }

    #[test]
    fn over_a_second_no_more_than_rate_plus_burst_go() {
        let p = Pacing::default();
        p.configure(Some((50.0, 10)));
        let t0 = 5_000 * MS;
        let mut admitted = 0;
        // 1 000 attempts spread over one second, none allowed to wait.
        for i in 0..1000u64 {
            if p.admit_at(t0 + i * MS, Duration::ZERO) == Admit::Now {
                admitted += 1;
            }
        }
        assert!((50..=60).contains(&admitted), "{admitted}");
    }
}
