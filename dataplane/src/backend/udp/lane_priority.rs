//! When `LatencyLane`'s threads are real-time: only while a bulk queue
//! carries bulk traffic.
//!
//! `SCHED_FIFO` is what keeps a ping beside a bulk stream short (a woken
//! lane thread takes a CPU at once instead of waiting out a busy task's
//! slice), but on an idle node it makes the round trip longer than the
//! nice -19 threads' (docs/benchmarks.md, "LatencyLane"). So the lane's
//! threads start at nice -19, and a bulk queue's `Duty`, on its hand-overs
//! between light and bulk (rare: at most every `BULK_QUIET`), switches
//! them to `SCHED_FIFO` when the first bulk queue turns bulk and back when
//! the last one turns light.

use std::sync::Mutex;

use super::sys;

/// How many bulk queues are bulk: the pure part.
#[derive(Debug, Default)]
pub(crate) struct BulkCount {
    busy: usize,
}

impl BulkCount {
    /// One bulk queue turned bulk (`true`) or light; returns the lane's new
    /// policy (`true`: real-time) when it changes.
    pub(crate) fn change(&mut self, bulk: bool) -> Option<bool> {
        let before = self.busy > 0;
        if bulk {
            self.busy += 1;
        } else {
            self.busy = self.busy.saturating_sub(1);
        }
        let after = self.busy > 0;
        (before != after).then_some(after)
    }

    pub(crate) fn busy(&self) -> bool {
        self.busy > 0
    }
}

#[derive(Default)]
struct State {
    count: BulkCount,
    /// The lane's threads (kernel thread ids).
    threads: Vec<libc::pid_t>,
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
        if st.count.busy() {
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

    fn apply(&self, threads: &[libc::pid_t], fifo: bool) {
        for &tid in threads {
            if let Err(e) = sys::set_policy(tid, fifo.then_some(self.priority)) {
                super::workers::realtime_refused(&e);
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
        assert!(c.busy());
    }
}
