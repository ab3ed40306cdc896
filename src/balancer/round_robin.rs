//! Smooth weighted round robin, lock-free.
//!
//! The cycle is computed once with nginx's smooth weighted round robin (each step every backend
//! gains its weight, the richest is picked and pays the total), which spreads each backend's
//! turns evenly: weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`. A pick is then one
//! atomic increment into that cycle, so no lock is needed at pick time. Weights are divided by
//! their common divisor first so the cycle is as short as it can be.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round-robin state: the precomputed cycle and the position in it.
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the cycle for these weights (in backend order).
    pub fn new(weights: &[u32]) -> Self {
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let reduced: Vec<u64> = weights.iter().map(|&w| (w / divisor) as u64).collect();
        let total: i64 = reduced.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; reduced.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in reduced.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        RoundRobin {
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The next eligible backend in the cycle.
    pub fn choose(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|step| self.schedule[(start + step) % len] as usize)
            .find(|&i| eligible(i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights_without_bursts() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| rr.choose(&|_| true).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        // Smooth: nginx's documented order for 5, 1, 1, never five in a row.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn common_divisor_shortens_the_cycle() {
        assert_eq!(RoundRobin::new(&[100, 200]).schedule.len(), 3);
    }

    #[test]
    fn skips_ineligible_backends() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..6 {
            assert_ne!(rr.choose(&|i| i != 1), Some(1));
        }
        assert_eq!(rr.choose(&|_| false), None);
    }
}
