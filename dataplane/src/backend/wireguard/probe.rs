//! When weft starts a handshake with a peer on its own (beyond those its
//! traffic starts), how it backs off from one that does not answer, and
//! whether the peer answered the last one (what `/readyz` reports).
//!
//! Traffic renews its own sessions (the protocol starts a handshake when a
//! packet finds its session old). The handshakes weft adds are for what
//! traffic does not tell: whether a peer answers at all. One goes out when
//! the peer's lease appears; after that, while the session is stale, one
//! goes out [`PROBE_WAIT`] after the last if packets were sent to the peer
//! since (the protocol's own attempts may have failed), and only every
//! [`IDLE_CHECK`] for an idle peer, so a node with thousands of quiet
//! peers rekeys none of them every two minutes. A peer that did not
//! answer waits twice as long after each further miss, up to
//! [`MAX_PROBE_WAIT`]. The first handshakes with new leases go out at
//! most [`FIRST_PROBES_PER_TICK`] per timer tick (24 a second), so that
//! a node starting among thousands of leases wakes their protocol states
//! a few at a time (traffic to a peer wakes its state at once).

use std::time::{Duration, Instant};

/// After a handshake of weft's own, the next waits at least this long
/// (longer than the 90 s for which the protocol retries one); twice as
/// long after each further miss, up to [`MAX_PROBE_WAIT`].
const PROBE_WAIT: Duration = Duration::from_secs(120);
/// The longest wait between handshakes of weft's own with a peer that
/// does not answer: thousands of unreachable peers cost next to nothing.
const MAX_PROBE_WAIT: Duration = Duration::from_secs(1800);
/// How often an idle peer that answered the last time is asked again, so
/// that one gone since is named within about this long.
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(600);

/// First handshakes with new leases per timer tick (250 ms).
pub(crate) const FIRST_PROBES_PER_TICK: usize = 6;

/// The handshakes weft starts on its own with one peer.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// Not before then (`None`: at once).
    next: Option<Instant>,
    /// When the last one was started.
    started: Option<Instant>,
    /// Handshakes started in a row without one completing.
    misses: u32,
    /// The peer's completed handshakes when the last one was started.
    seen: u64,
    /// Bytes sent to the peer when the last one was started.
    sent: u64,
}

impl Probe {
    /// Whether to start a handshake now with a peer whose session is stale,
    /// which has `completed` handshakes and was sent `sent` bytes so far;
    /// if so, it counts as started. Pure.
    pub(crate) fn start(&mut self, now: Instant, completed: u64, sent: u64) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        let answered = completed != self.seen;
        if let Some(last) = self.started {
            if answered && sent == self.sent && now < last + IDLE_CHECK {
                return false;
            }
        }
        self.misses = match self.started {
            Some(_) if !answered => self.misses.saturating_add(1),
            _ => 0,
        };
        self.seen = completed;
        self.sent = sent;
        self.started = Some(now);
        let wait = PROBE_WAIT.saturating_mul(1u32 << self.misses.min(16)).min(MAX_PROBE_WAIT);
        self.next = Some(now + wait);
        true
    }

    /// Whether weft has never started a handshake with the peer.
    pub(crate) fn never_started(&self) -> bool {
        self.started.is_none()
    }

    /// How long ago weft started the handshake the peer has not answered
    /// (no handshake completed since), if it did.
    pub(crate) fn unanswered(&self, now: Instant, completed: u64) -> Option<Duration> {
        let started = self.started.filter(|_| completed == self.seen)?;
        Some(now.saturating_duration_since(started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_answers_is_probed_when_due_one_that_does_not_ever_more_rarely() {
        let t0 = Instant::now();
        let mut p = Probe::default();
        assert!(p.start(t0, 0, 0), "at once when the lease appears");
        assert!(!p.start(t0 + Duration::from_secs(60), 0, 0), "not while the first is retried");
        assert_eq!(p.unanswered(t0 + Duration::from_secs(60), 0), Some(Duration::from_secs(60)));
        // No answer: 120 s, then 240, 480, ... up to 30 min apart.
        let mut at = t0 + PROBE_WAIT;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            assert!(p.start(at, 0, 0));
            let next = p.next.unwrap();
            gaps.push((next - at).as_secs());
            assert!(!p.start(next - Duration::from_secs(1), 0, 0));
            at = next;
        }
        assert_eq!(gaps, [240, 480, 960, 1800, 1800, 1800, 1800, 1800]);
        // It answers (a handshake completed since the last start): no
        // longer unanswered, and the next start waits PROBE_WAIT, no more.
        assert_eq!(p.unanswered(at, 1), None);
        assert!(p.start(at, 1, 0));
        assert_eq!(p.next.unwrap() - at, PROBE_WAIT);
        assert_eq!(p.misses, 0);
    }

    #[test]
    fn an_idle_peer_that_answered_is_asked_again_only_every_idle_check() {
        let t0 = Instant::now();
        let mut p = Probe::default();
        assert!(p.start(t0, 0, 0));
        // It answered; nothing sent since: the stale session is left alone.
        for s in [120, 300, 599] {
            assert!(!p.start(t0 + Duration::from_secs(s), 1, 0), "idle at {s} s");
        }
        assert_eq!(p.unanswered(t0 + Duration::from_secs(599), 1), None, "an idle peer is no problem");
        assert!(p.start(t0 + IDLE_CHECK, 1, 0), "asked again after IDLE_CHECK");
        // Packets sent since: its stale session is renewed when due.
        let t1 = t0 + IDLE_CHECK;
        assert!(p.start(t1 + PROBE_WAIT, 2, 1500), "traffic since the last start");
        // It stops answering while traffic flows: named, and backed off.
        assert_eq!(p.unanswered(t1 + PROBE_WAIT + Duration::from_secs(20), 2), Some(Duration::from_secs(20)));
        assert!(p.start(t1 + 2 * PROBE_WAIT, 2, 9000));
        assert_eq!(p.misses, 1);
    }
}
