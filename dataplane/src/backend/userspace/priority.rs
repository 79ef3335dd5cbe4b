//! How the forwarding threads are scheduled ([`Priority`]), and when
//! `LatencyLane`'s threads are real-time: only while a bulk queue carries
//! bulk traffic.
//!
//! `SCHED_FIFO` is what keeps a ping beside a bulk stream short (a woken
//! lane thread takes a CPU at once instead of waiting out a busy task's
//! slice), but on an idle node it makes the round trip longer than the
//! nice -19 threads' (docs/benchmarks.md, "LatencyLane"). So the lane's
//! threads start at nice -19, and a bulk queue's `Duty`, on its hand-overs
//! between light and bulk (rare: at most every `BULK_QUIET`), switches
//! them to `SCHED_FIFO` when the first bulk queue turns bulk and back when
//! the last one turns light.
//!
//! The lane is real-time because what it carries is small and rare. When
//! the lane itself turns bulk (its receive thread gets full batches or GRO
//! batches: a flood of small datagrams, junk from the underlay, or a
//! misclassified stream), its threads go back to nice -19 until it is
//! light again, so that nobody can hold a CPU at real-time priority by
//! sending small datagrams.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sys;

/// The real-time priority of the forwarding threads with
/// `RealtimeThreads` (and of the lane's): low, so that the kernel's own
/// real-time threads (migration, watchdogs) still come first.
pub(crate) const REALTIME_PRIORITY: i32 = 10;

/// The nice value of the forwarding threads without `RealtimeThreads`.
/// On a saturated node a woken forwarding thread otherwise waits behind
/// the busy tasks' slices, and every packet with it: at -19 a ping beside
/// a bulk stream waits about 8 times less at the median and 2 times less
/// at the 99th percentile, at the same throughput (docs/benchmarks.md).
/// Needs `CAP_SYS_NICE` (the packaged unit keeps it).
pub(crate) const FORWARDING_NICE: i32 = -19;

/// Whether a refusal of the nice value was logged already.
static NICE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Times a lane turned bulk itself and left real-time, in this process
/// (one backend per process): `weft_<backend>_lane_floods_total`.
pub(crate) static LANE_FLOODS: AtomicU64 = AtomicU64::new(0);

/// At most one log line per this long about the lane's floods.
const FLOODS_SAID_EVERY: Duration = Duration::from_secs(60);

/// The metric family of [`LANE_FLOODS`] for `backend` (`udp`, `wireguard`).
pub(crate) fn render_lane_floods(backend: &str, w: &mut weft_types::metrics::Writer<'_>) {
    let name = format!("weft_{backend}_lane_floods_total");
    w.family(
        &name,
        weft_types::metrics::Kind::Counter,
        "Times the LatencyLane itself carried bulk traffic (a flood of small packets) and its threads left real-time until it was quiet.",
    )
    .sample(&name, &[], LANE_FLOODS.load(Ordering::Relaxed) as f64);
}

/// Whether a refusal of `SCHED_FIFO` was logged already.
static REALTIME_REFUSED: AtomicBool = AtomicBool::new(false);

/// The kernel refused `SCHED_FIFO`: said once per process.
fn realtime_refused(e: &io::Error) {
    if !REALTIME_REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "RealtimeThreads or LatencyLane: the kernel refused SCHED_FIFO ({e}); forwarding at nice {FORWARDING_NICE}. Under systemd the service needs RestrictRealtime=no and LimitRTPRIO={REALTIME_PRIORITY} (the packaged unit has both; check a drop-in with systemctl cat weft), and a kernel built with CONFIG_RT_GROUP_SCHED also a real-time budget for the service's cgroup"
        );
    }
}

/// How a forwarding thread is scheduled.
pub(crate) enum Priority {
    /// Nice [`FORWARDING_NICE`].
    Nice,
    /// `SCHED_FIFO` at [`REALTIME_PRIORITY`] (nice when refused).
    Fifo,
    /// A lane thread: nice, and `SCHED_FIFO` while a bulk queue is bulk.
    Lane(Arc<LanePriority>),
}

impl Priority {
    /// Apply to the calling thread, as it starts.
    pub(crate) fn apply(&self) {
        let fifo = matches!(self, Priority::Fifo)
            && sys::set_policy(0, Some(REALTIME_PRIORITY)).map_err(|e| realtime_refused(&e)).is_ok();
        if !fifo {
            if let Err(e) = sys::set_nice(FORWARDING_NICE) {
                if !NICE_REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the kernel refused nice {FORWARDING_NICE} for the forwarding threads ({e}); forwarding at normal priority, with longer waits under CPU load. Give the service CAP_SYS_NICE (the packaged unit has it)"
                    );
                }
            }
        }
        if let Priority::Lane(lane) = self {
            lane.join();
        }
    }
}

/// What decides the lane's policy: how many bulk queues are bulk, and
/// whether the lane itself is. The pure part.
#[derive(Debug, Default)]
pub(crate) struct BulkCount {
    busy: usize,
    lane_busy: bool,
}

impl BulkCount {
    /// One bulk queue turned bulk (`true`) or light; returns the lane's new
    /// policy (`true`: real-time) when it changes.
    pub(crate) fn change(&mut self, bulk: bool) -> Option<bool> {
        let before = self.fifo();
        if bulk {
            self.busy += 1;
        } else {
            self.busy = self.busy.saturating_sub(1);
        }
        let after = self.fifo();
        (before != after).then_some(after)
    }

    /// The lane itself turned bulk or light; returns the lane's new
    /// policy when it changes.
    pub(crate) fn lane_change(&mut self, bulk: bool) -> Option<bool> {
        let before = self.fifo();
        self.lane_busy = bulk;
        let after = self.fifo();
        (before != after).then_some(after)
    }

    /// Whether the lane's threads are real-time: a bulk queue is bulk and
    /// the lane is not.
    pub(crate) fn fifo(&self) -> bool {
        self.busy > 0 && !self.lane_busy
    }
}

/// Whom a queue's `Duty` tells of its hand-overs between light and bulk.
pub(crate) enum Tell {
    /// A bulk queue's: the lane is real-time while one is bulk.
    Bulk(Arc<LanePriority>),
    /// The lane's own: it is not real-time while it is bulk itself.
    Lane(Arc<LanePriority>),
}

impl Tell {
    pub(crate) fn changed(&self, bulk: bool) {
        match self {
            Tell::Bulk(p) => p.bulk_changed(bulk),
            Tell::Lane(p) => p.lane_changed(bulk),
        }
    }
}

/// How the threads of one set are scheduled: all `SCHED_FIFO` with
/// `RealtimeThreads`, else nice -19 but for the lane's.
pub(crate) struct Priorities {
    realtime: bool,
    /// The `LatencyLane` queue, whose threads alone run at `SCHED_FIFO`
    /// without `realtime`: they carry only small packets, so they cannot
    /// starve the node.
    lane: Option<usize>,
    /// On the offload path: the lane's threads are real-time only while a
    /// bulk queue is bulk and the lane is not; else never.
    lane_priority: Option<Arc<LanePriority>>,
}

impl Priorities {
    /// For a set whose queue `lane` is the lane; `governed`: every queue
    /// is on the offload path, where each has a `Duty` that tells the
    /// lane when it turns bulk.
    pub(crate) fn new(realtime: bool, lane: Option<usize>, governed: bool) -> Priorities {
        let governed = lane.is_some() && !realtime && governed;
        let lane_priority = governed.then(|| Arc::new(LanePriority::new(REALTIME_PRIORITY)));
        Priorities { realtime, lane, lane_priority }
    }

    /// The priority of queue `queue`'s threads.
    pub(crate) fn of(&self, queue: usize) -> Priority {
        match &self.lane_priority {
            _ if self.realtime => Priority::Fifo,
            _ if self.lane != Some(queue) => Priority::Nice,
            Some(lane) => Priority::Lane(lane.clone()),
            // Without a `Duty` to say when bulk flows and when the lane is
            // flooded, the lane's threads stay at nice -19: the steering
            // alone.
            None => Priority::Nice,
        }
    }

    /// Whom queue `queue`'s `Duty` tells of its hand-overs.
    pub(crate) fn told_by(&self, queue: usize) -> Option<Tell> {
        let p = self.lane_priority.clone()?;
        Some(if self.lane == Some(queue) { Tell::Lane(p) } else { Tell::Bulk(p) })
    }
}

#[derive(Default)]
struct State {
    count: BulkCount,
    /// The lane's threads (kernel thread ids).
    threads: Vec<libc::pid_t>,
    /// When a flood was last said, and how many came since.
    floods_said: Option<Instant>,
    floods_unsaid: u64,
}

/// The lane's threads and the bulk queues' state, shared by all threads.
pub(crate) struct LanePriority {
    state: Mutex<State>,
    priority: i32,
}

impl LanePriority {
    pub(crate) fn new(priority: i32) -> LanePriority {
        LanePriority { state: Mutex::default(), priority }
    }

    /// For a lane thread as it starts (at nice -19): count it in, and give
    /// it the policy of now.
    pub(crate) fn join(&self) {
        let tid = sys::gettid();
        let Ok(mut st) = self.state.lock() else { return };
        st.threads.push(tid);
        if st.count.fifo() {
            self.apply(&[tid], true);
        }
    }

    /// For a bulk queue's `Duty`: it turned bulk (`true`) or light.
    pub(crate) fn bulk_changed(&self, bulk: bool) {
        let Ok(mut st) = self.state.lock() else { return };
        if let Some(fifo) = st.count.change(bulk) {
            self.apply(&st.threads, fifo);
        }
    }

    /// For the lane's own `Duty`: the lane turned bulk (`true`) or light.
    pub(crate) fn lane_changed(&self, bulk: bool) {
        let Ok(mut st) = self.state.lock() else { return };
        if bulk {
            LANE_FLOODS.fetch_add(1, Ordering::Relaxed);
            st.floods_unsaid += 1;
            if st.floods_said.is_none_or(|t| t.elapsed() >= FLOODS_SAID_EVERY) {
                tracing::warn!(
                    times = st.floods_unsaid,
                    "LatencyLane: the lane carries bulk traffic itself (a flood of small packets, from a pod or the underlay?); its threads run at nice -19 until it is quiet (said at most once a minute; weft_*_lane_floods_total counts each)"
                );
                st.floods_said = Some(Instant::now());
                st.floods_unsaid = 0;
            }
        }
        if let Some(fifo) = st.count.lane_change(bulk) {
            self.apply(&st.threads, fifo);
        }
    }

    fn apply(&self, threads: &[libc::pid_t], fifo: bool) {
        for &tid in threads {
            if let Err(e) = sys::set_policy(tid, fifo.then_some(self.priority)) {
                realtime_refused(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_is_real_time_while_any_bulk_queue_is_bulk() {
        let mut c = BulkCount::default();
        // (queue turns bulk?, the lane's new policy if it changes)
        let steps = [
            (true, Some(true)),
            (true, None),
            (false, None),
            (false, Some(false)),
            // A light report with nothing bulk changes nothing.
            (false, None),
            (true, Some(true)),
        ];
        for (i, (bulk, want)) in steps.into_iter().enumerate() {
            assert_eq!(c.change(bulk), want, "step {i}");
        }
        assert!(c.fifo());
    }

    #[test]
    fn the_lane_is_not_real_time_while_it_is_bulk_itself() {
        let mut c = BulkCount::default();
        // (a bulk queue's change or the lane's own, the new policy if it changes)
        enum Who {
            Queue(bool),
            Lane(bool),
        }
        let steps = [
            (Who::Lane(true), None),
            (Who::Queue(true), None),
            (Who::Lane(false), Some(true)),
            (Who::Lane(true), Some(false)),
            (Who::Queue(false), None),
            (Who::Lane(false), None),
            (Who::Queue(true), Some(true)),
        ];
        for (i, (who, want)) in steps.into_iter().enumerate() {
            let got = match who {
                Who::Queue(b) => c.change(b),
                Who::Lane(b) => c.lane_change(b),
            };
            assert_eq!(got, want, "step {i}");
        }
    }
}
