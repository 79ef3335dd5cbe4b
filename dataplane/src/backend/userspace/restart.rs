//! When the forwarding threads are restarted after they ended: a backoff
//! of 100 ms doubling to 10 s, started over once threads have run healthy
//! for 30 s. Pure: the clock is passed in.

use std::time::{Duration, Instant};

const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// Threads that ran this long count as healthy: the backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// The restart backoff of one set of forwarding threads.
#[derive(Debug)]
pub(crate) struct Restart {
    /// The wait before the next restart after the next failure.
    delay: Duration,
    /// When a stopped set of threads may start again.
    at: Option<Instant>,
    /// When the running threads started.
    started_at: Instant,
}

impl Restart {
    pub(crate) fn new(now: Instant) -> Restart {
        Restart { delay: RESTART_FIRST, at: None, started_at: now }
    }

    /// The threads started at `now`.
    pub(crate) fn started(&mut self, now: Instant) {
        self.started_at = now;
        self.at = None;
    }

    /// The threads ended (or could not start) at `now`: the next start
    /// waits out the backoff.
    pub(crate) fn failed(&mut self, now: Instant) {
        if now.duration_since(self.started_at) >= HEALTHY_RUN {
            self.delay = RESTART_FIRST;
        }
        self.at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(RESTART_MAX);
    }

    /// Whether threads may start at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|at| now >= at)
    }

    /// When the next restart is due, if one is waiting.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_starts_over_after_a_healthy_run() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = Restart::new(t0);
        assert!(r.due(t0) && r.next().is_none(), "the first start does not wait");
        // Failing at once, again and again: (failed at, next due at).
        let mut now = 0;
        for wait in [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000] {
            r.failed(ms(now));
            assert_eq!(r.next(), Some(ms(now + wait)), "after a failure at {now} ms");
            assert!(!r.due(ms(now + wait - 1)) && r.due(ms(now + wait)));
            now += wait;
            r.started(ms(now));
            assert!(r.next().is_none() && r.due(ms(now)));
        }
        // Running 30 s before ending: back to the first delay.
        r.failed(ms(now + 30_000));
        assert_eq!(r.next(), Some(ms(now + 30_100)));
    }
}
