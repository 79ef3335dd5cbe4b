//! Which thread of a queue reads its TUN device.
//!
//! Each queue has a send thread (TUN -> UDP) and a receive thread (UDP ->
//! TUN). Waking a sleeping thread is the dearest step of the udp backend's
//! round trip: on a VM every wake-up of a thread on another CPU is an
//! inter-processor interrupt through the hypervisor, tens of microseconds.
//! Much of the traffic that comes back through the TUN device is made
//! *while the receive thread writes into it*: the kernel delivers the
//! written packet at once, and a ping's reply, a request's answer or a TCP
//! ACK is routed back into the TUN queue before the write returns.
//!
//! So while the traffic is light (single packets), the receive thread
//! serves both directions: after each write it reads the TUN device too,
//! and what was just made leaves without waking anyone; the send thread
//! sleeps on its doorbell. As soon as either direction carries bulk (a TUN
//! super-packet, or a UDP datagram of several GRO segments), the send
//! thread is rung and takes the TUN device back, and the two threads work
//! in parallel, as throughput needs. After [`BULK_QUIET`] without bulk the
//! send thread hands the TUN device back.
//!
//! Both threads read the TUN device only while holding the queue's
//! `TxPath` lock, and send what they read before letting go, so the
//! packets of a flow leave in the order they were read, across hand-overs.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::priority::Tell;
use super::sys::Doorbell;
use crate::forward::stats::Stats;

/// How long without bulk before the receive thread serves both directions again.
pub(crate) const BULK_QUIET: Duration = Duration::from_millis(100);

/// On the lane's own queue: more than this many forwarding steps (each a
/// batch or a packet, either direction) within [`LANE_WINDOW_MS`] make the
/// lane bulk (a flood of small packets: its threads leave real-time).
/// 20,000 a second: pings, DNS and requests stay far below, and so do the
/// lone ACKs of a bulk flow that a WireGuard lane receives (about 10,000
/// a second beside a 5 Gbit/s stream).
pub(crate) const LANE_MAX_STEPS: u64 = 2_000;
pub(crate) const LANE_WINDOW_MS: u64 = 100;

/// The hand-over state of one queue, shared by its two threads.
pub(crate) struct Duty {
    bulk: AtomicBool,
    /// When bulk was last seen, in ms since `epoch`.
    last_bulk: AtomicU64,
    epoch: Instant,
    quiet: Duration,
    /// Rung to make the send thread take the TUN device.
    pub(crate) to_sender: Doorbell,
    /// Rung to make the receive thread serve both directions again.
    pub(crate) to_receiver: Doorbell,
    /// Counts the hand-overs, both ways.
    stats: Arc<Stats>,
    /// Beside a `LatencyLane` (or the lane's own): told of each hand-over.
    pub(crate) lane: Option<Tell>,
    /// On the lane's own queue: the steps of the current window, and when
    /// it began (ms since `epoch`).
    steps: AtomicU64,
    window: AtomicU64,
}

impl Duty {
    /// Starts light: the receive thread reads the TUN device.
    pub(crate) fn new(quiet: Duration, stats: Arc<Stats>) -> io::Result<Duty> {
        Ok(Duty {
            bulk: AtomicBool::new(false),
            last_bulk: AtomicU64::new(0),
            epoch: Instant::now(),
            quiet,
            to_sender: Doorbell::new()?,
            to_receiver: Doorbell::new()?,
            stats,
            lane: None,
            steps: AtomicU64::new(0),
            window: AtomicU64::new(0),
        })
    }

    /// Whether the send thread reads the TUN device now.
    pub(crate) fn bulk(&self) -> bool {
        self.bulk.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Bulk went through: the send thread takes (or keeps) the TUN device.
    pub(crate) fn saw_bulk(&self) {
        self.last_bulk.store(self.now_ms(), Ordering::Relaxed);
        if !self.bulk.swap(true, Ordering::AcqRel) {
            self.stats.handovers.fetch_add(1, Ordering::Relaxed);
            if let Some(lane) = &self.lane {
                lane.changed(true);
            }
            // A failed ring means it is rung already.
            let _ = self.to_sender.ring();
        }
    }

    /// A forwarding step moved something. On the lane's own queue, a rate
    /// above [`LANE_MAX_STEPS`] per window is bulk; elsewhere nothing.
    pub(crate) fn worked(&self) {
        if !matches!(self.lane, Some(Tell::Lane(_))) {
            return;
        }
        let now = self.now_ms();
        if now.saturating_sub(self.window.load(Ordering::Relaxed)) >= LANE_WINDOW_MS {
            self.window.store(now, Ordering::Relaxed);
            self.steps.store(1, Ordering::Relaxed);
        } else if self.steps.fetch_add(1, Ordering::Relaxed) + 1 > LANE_MAX_STEPS {
            self.saw_bulk();
        }
    }

    /// For the send thread when idle: hand the TUN device back to the
    /// receive thread if there was no bulk for the quiet time. Returns
    /// whether it did.
    pub(crate) fn hand_back_if_quiet(&self) -> bool {
        let since = self.now_ms().saturating_sub(self.last_bulk.load(Ordering::Relaxed));
        if since < self.quiet.as_millis() as u64 {
            return false;
        }
        if self.bulk.swap(false, Ordering::AcqRel) {
            self.stats.handovers.fetch_add(1, Ordering::Relaxed);
            if let Some(lane) = &self.lane {
                lane.changed(false);
            }
            let _ = self.to_receiver.ring();
        }
        true
    }

    /// How long the send thread may sleep on the TUN device before it
    /// checks whether to hand it back.
    pub(crate) fn quiet(&self) -> Duration {
        self.quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(bell: &Doorbell) -> bool {
        bell.rung()
    }

    #[test]
    fn bulk_moves_the_tun_to_the_sender_and_quiet_moves_it_back() {
        let stats = Arc::new(Stats::default());
        let duty = Duty::new(Duration::from_millis(30), stats.clone()).unwrap();
        assert!(!duty.bulk(), "starts light: the receive thread reads the TUN device");
        duty.saw_bulk();
        assert!(duty.bulk());
        assert!(rung(&duty.to_sender), "the send thread is woken to take over");
        duty.to_sender.clear();
        duty.saw_bulk();
        assert!(!rung(&duty.to_sender), "no second ring while already bulk");
        assert!(!duty.hand_back_if_quiet(), "not quiet yet");
        assert!(duty.bulk());
        std::thread::sleep(Duration::from_millis(40));
        assert!(duty.hand_back_if_quiet());
        assert!(!duty.bulk());
        assert!(rung(&duty.to_receiver), "the receive thread is woken to serve both directions");
        duty.to_receiver.clear();
        assert!(!rung(&duty.to_receiver));
        assert_eq!(stats.handovers.load(Ordering::Relaxed), 2, "both hand-overs counted");
    }

    #[test]
    fn a_flood_on_the_lane_is_bulk_and_a_bulk_queue_is_not_judged_by_rate() {
        use crate::backend::userspace::priority::{LanePriority, Tell};
        let lane = Arc::new(LanePriority::new(10));
        let mut on_lane = Duty::new(Duration::from_millis(30), Arc::default()).unwrap();
        on_lane.lane = Some(Tell::Lane(lane.clone()));
        for _ in 0..LANE_MAX_STEPS / 2 {
            on_lane.worked();
        }
        assert!(!on_lane.bulk(), "a few hundred small packets are light");
        for _ in 0..LANE_MAX_STEPS {
            on_lane.worked();
        }
        assert!(on_lane.bulk(), "more than {LANE_MAX_STEPS} steps in {LANE_WINDOW_MS} ms are a flood");
        let mut beside = Duty::new(Duration::from_millis(30), Arc::default()).unwrap();
        beside.lane = Some(Tell::Bulk(lane));
        for _ in 0..LANE_MAX_STEPS * 3 {
            beside.worked();
        }
        assert!(!beside.bulk(), "a bulk queue turns bulk by what it reads, not by its rate");
    }
}
