//! Least connections: the backend with the fewest live tunnels plus in-flight requests per unit
//! of weight.
//!
//! A WebSocket lives for hours, so only the live count says where the load is; connect-time
//! round robin drifts badly. Small sets are scanned in full from a rotating start, so backends
//! with equal load take turns instead of the first one always winning. Large sets use the power
//! of two random choices (Mitzenmacher), which keeps the maximum load within a small factor of
//! the optimum at O(1) cost.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Backend, load_less};

/// Above this many backends a pick samples two instead of scanning all.
const FULL_SCAN_MAX: usize = 32;

/// Least-connections strategy state: only the rotating tie-break start.
pub struct LeastConn {
    next_start: AtomicUsize,
}

impl LeastConn {
    /// A fresh strategy.
    pub fn new() -> Self {
        LeastConn {
            next_start: AtomicUsize::new(0),
        }
    }

    /// The least-loaded eligible backend.
    pub fn choose(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        if n > FULL_SCAN_MAX
            && let Some(i) = Self::two_choices(backends, eligible)
        {
            return Some(i);
        }
        let start = self.next_start.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<usize> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            if !eligible(i) {
                continue;
            }
            match best {
                Some(b) if load_less(&backends[i], &backends[b]).is_ge() => {}
                _ => best = Some(i),
            }
        }
        best
    }

    /// Two random eligible backends, the less loaded wins; `None` if sampling found too few.
    fn two_choices(backends: &[Arc<Backend>], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let mut found = [0usize; 2];
        let mut count = 0;
        for _ in 0..8 {
            let i = (random_u64() % n as u64) as usize;
            if eligible(i) && (count == 0 || found[0] != i) {
                found[count] = i;
                count += 1;
                if count == 2 {
                    break;
                }
            }
        }
        match count {
            2 if load_less(&backends[found[1]], &backends[found[0]]).is_lt() => Some(found[1]),
            2 => Some(found[0]),
            _ => None,
        }
    }
}

impl Default for LeastConn {
    fn default() -> Self {
        Self::new()
    }
}

/// A per-thread wyrand generator: no lock, no shared cache line, good enough for sampling.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let addr = &STATE as *const _ as u64;
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            super::hash::fmix64(addr ^ time) | 1
        });
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) ^ t) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::upstream;
    use super::super::{Balancer, Lease, Tried};
    use crate::config::Balance;
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn balancer(weights: &[u32]) -> Balancer {
        Balancer::new(
            &upstream(Balance::LeastConn, weights),
            Duration::from_secs(1),
            &Metrics::new(),
        )
    }

    #[test]
    fn fills_the_emptier_backends_first() {
        let b = balancer(&[1, 1, 1]);
        let busy: Vec<Lease> = (0..10)
            .map(|_| Lease::new(b.backends()[0].clone()))
            .collect();
        let new: Vec<_> = (0..30)
            .map(|_| b.pick(None, &mut Tried::default()).unwrap())
            .collect();
        let on_busy = new.iter().filter(|p| p.index == 0).count();
        assert!(
            on_busy <= 4,
            "{on_busy} of 30 new tunnels went to the busy backend"
        );
        let lives: Vec<usize> = b.backends().iter().map(|x| x.live()).collect();
        assert!(
            lives.iter().max().unwrap() - lives.iter().min().unwrap() <= 1,
            "{lives:?}"
        );
        drop((busy, new));
    }

    #[test]
    fn equal_backends_share_evenly() {
        let b = balancer(&[1, 1, 1, 1]);
        let mut counts = [0usize; 4];
        for _ in 0..400 {
            // Each pick is released at once, so every pick sees a tie.
            counts[b.pick(None, &mut Tried::default()).unwrap().index] += 1;
        }
        assert_eq!(counts, [100, 100, 100, 100]);
    }

    #[test]
    fn weight_divides_load() {
        let b = balancer(&[1, 3]);
        let held: Vec<_> = (0..40)
            .map(|_| b.pick(None, &mut Tried::default()).unwrap())
            .collect();
        assert_eq!(b.backends()[0].live(), 10);
        assert_eq!(b.backends()[1].live(), 30);
        drop(held);
    }

    #[test]
    fn large_sets_stay_balanced_with_two_choices() {
        let weights = vec![1; 64];
        let b = balancer(&weights);
        let held: Vec<_> = (0..64 * 20)
            .map(|_| b.pick(None, &mut Tried::default()).unwrap())
            .collect();
        let max = b.backends().iter().map(|x| x.live()).max().unwrap();
        assert!(max <= 26, "max live {max} for a mean of 20");
        drop(held);
    }
}
