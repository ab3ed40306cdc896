//! A pinned first attempt: the backend a sticky cookie names is tried before the strategy's
//! choice, when it takes connections, and counts as one of the request's attempts. If its
//! connect fails, the attempts go on with the strategy's choices, without it.

use super::{Attempts, Balancer, Health, Lease, Pick};

impl Balancer {
    /// Whether backend `index` may be asked for by name now: configured, not draining, not
    /// taken down by the health checks, and not refusing connects within `backend_retry`.
    pub fn can_pin(&self, index: usize) -> bool {
        let Some(backend) = self.backends.get(index) else {
            return false;
        };
        !backend.is_draining()
            && backend.health() != Health::Down
            && self.is_available(index, || self.now_ms())
    }
}

impl Attempts<'_> {
    /// Tries backend `index` first (a sticky cookie's), if it is given and [`Balancer::can_pin`]
    /// still says yes at the first attempt.
    pub fn pinned(mut self, index: Option<usize>) -> Self {
        self.pin = index;
        self
    }

    /// The pinned pick, at the first attempt only.
    pub(super) fn take_pin(&mut self) -> Option<Pick> {
        let index = self.pin.take()?;
        if !self.tried.is_empty() || !self.balancer.can_pin(index) {
            return None;
        }
        self.tried.push(index);
        Some(Pick {
            lease: Lease::new(self.balancer.backends[index].clone()),
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::upstream;
    use super::*;
    use crate::config::Balance;
    use crate::metrics::Metrics;

    fn balancer(balance: Balance) -> Balancer {
        Balancer::new(
            &upstream(balance, &[1, 1, 1]),
            Duration::from_secs(60),
            &Metrics::new(),
        )
    }

    #[test]
    fn the_pin_comes_first_then_the_others_without_it() {
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::StickyHash] {
            let b = balancer(balance);
            let mut attempts = b.attempts(Some(7)).pinned(Some(2));
            let first = attempts.next_pick().unwrap();
            assert_eq!(first.index, 2, "{balance:?}");
            assert!(attempts.failed(&first));
            let rest: Vec<usize> = std::iter::from_fn(|| attempts.next_pick().map(|p| p.index))
                .take(5)
                .collect();
            assert_eq!(rest.len(), 2, "{balance:?}: {rest:?}");
            assert!(!rest.contains(&2), "{balance:?}: {rest:?}");
        }
    }

    #[test]
    fn a_draining_down_or_unknown_backend_is_not_pinned() {
        let b = balancer(Balance::RoundRobin);
        assert!(b.can_pin(1));
        b.backends()[1].set_draining(true);
        assert!(!b.can_pin(1));
        b.backends()[1].set_draining(false);
        b.backends()[1].set_health(Health::Down);
        assert!(!b.can_pin(1));
        b.backends()[1].set_health(Health::Up);
        b.report_failure(1);
        assert!(!b.can_pin(1));
        assert!(!b.can_pin(3));
        let mut attempts = b.attempts(None).pinned(Some(1));
        assert_ne!(attempts.next_pick().unwrap().index, 1);
    }
}
