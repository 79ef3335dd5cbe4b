//! When weft starts a handshake with a peer on its own (beyond those its
//! traffic starts), and how it backs off from one that does not answer.

use std::time::{Duration, Instant};

/// After a handshake of weft's own that got no answer, the next waits at
/// least this long (longer than the 90 s for which the protocol retries
/// one), twice as long after each further miss, up to [`MAX_PROBE_WAIT`].
const PROBE_WAIT: Duration = Duration::from_secs(120);
/// The longest wait between handshakes of weft's own with a peer that
/// does not answer: thousands of unreachable peers cost next to nothing.
const MAX_PROBE_WAIT: Duration = Duration::from_secs(1800);

/// The handshakes weft starts on its own with one peer (beyond those its
/// traffic starts): at once when its lease appears, and again when its
/// session is due for renewal. A peer that answered the last one gets the
/// next when due; one that did not waits [`PROBE_WAIT`], doubled with each
/// further miss up to [`MAX_PROBE_WAIT`]. Traffic to a peer starts a
/// handshake at any time regardless (the protocol does).
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// Not before then (`None`: at once).
    next: Option<Instant>,
    /// Handshakes started in a row without one completing.
    misses: u32,
    /// The peer's completed handshakes when the last one was started.
    seen: u64,
}

impl Probe {
    /// Whether to start a handshake now, for a peer with `completed`
    /// handshakes so far; if so, when the next may come. Pure.
    pub(crate) fn start(&mut self, now: Instant, completed: u64) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        if self.next.is_some() && completed == self.seen {
            self.misses = self.misses.saturating_add(1);
        } else {
            self.misses = 0;
        }
        self.seen = completed;
        let wait = PROBE_WAIT.saturating_mul(1u32 << self.misses.min(16)).min(MAX_PROBE_WAIT);
        self.next = Some(now + wait);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_answers_is_probed_when_due_one_that_does_not_ever_more_rarely() {
        let t0 = Instant::now();
        let mut p = Probe::default();
        assert!(p.start(t0, 0), "at once when the lease appears");
        assert!(!p.start(t0 + Duration::from_secs(60), 0), "not while the first is retried");
        // No answer: 120 s, then 240, 480, ... up to 30 min apart.
        let mut at = t0 + PROBE_WAIT;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            assert!(p.start(at, 0));
            let next = p.next.unwrap();
            gaps.push((next - at).as_secs());
            assert!(!p.start(next - Duration::from_secs(1), 0));
            at = next;
        }
        assert_eq!(gaps, [240, 480, 960, 1800, 1800, 1800, 1800, 1800]);
        // It answers (a handshake completed since the last start): the
        // next start is due again after PROBE_WAIT, no more.
        assert!(p.start(at, 1));
        assert_eq!(p.next.unwrap() - at, PROBE_WAIT);
        assert_eq!(p.misses, 0);
    }
}
