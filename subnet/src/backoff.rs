//! Capped exponential backoff with jitter, for reconnects and retries.

use std::time::Duration;

use rand::RngExt;

/// Delays of `initial`, 2x, 4x, ... up to `max`, each with up to 20 %
/// random jitter so that many nodes do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter_ms = (base.as_millis() as u64 / 5).max(1);
        base + Duration::from_millis(rand::rng().random_range(0..jitter_ms))
    }

    /// Start again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(120));
        assert!(delays[1] >= Duration::from_millis(200) && delays[1] < Duration::from_millis(240));
        for d in &delays[6..] {
            assert!(*d >= Duration::from_secs(5) && *d <= Duration::from_secs(6), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(120));
    }
}
