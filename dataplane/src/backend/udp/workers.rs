//! The forwarding threads and their ownership: two threads per queue
//! (TUN -> UDP and UDP -> TUN), started together, stopped together, and
//! joined. On the offload path the receive thread also reads the TUN
//! device while the traffic is light (see `duty`). A thread ends on a
//! persistent error (the TUN device deleted under it, a closed
//! descriptor, too many errors in a row) or a panic;
//! it then wakes the reconciler, which rebuilds the queues and starts new
//! threads after a backoff (`UdpBackend::reconcile`, with `restart.rs`).
//!
//! Each thread sleeps in `poll(2)` on its data descriptor and a stop
//! eventfd, so stopping never waits for traffic.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tun_rs::SyncDevice;

use super::duty::{Duty, BULK_QUIET};
use super::lane_priority::LanePriority;
use super::offload::{RxPath, Step, TxPath};
use super::plain::{PlainRx, PlainTx};
use super::shared::{wait, wait_any, Exit, Shared, StopSignal, Wake, WakeOnExit};
use super::sys;
use crate::error::{Error, Result};

/// What a forwarding thread runs.
type Body = Box<dyn FnOnce(&StopSignal) -> Exit + Send>;

/// One forwarding queue: a TUN queue and the UDP socket that pairs with it.
pub(crate) struct Queue {
    pub(crate) dev: Arc<SyncDevice>,
    pub(crate) sock: Arc<UdpSocket>,
    /// The socket's offload state; `None` on the plain path.
    pub(crate) state: Option<Arc<UdpSocketState>>,
}

/// How one thread ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) thread: String,
    pub(crate) queue: usize,
    /// `None` when the thread panicked.
    pub(crate) exit: Option<Exit>,
}

struct Worker {
    name: String,
    queue: usize,
    handle: JoinHandle<Exit>,
}

/// The running threads of every queue.
pub(crate) struct Workers {
    stop: Arc<StopSignal>,
    threads: Vec<Worker>,
    /// Run each thread at `SCHED_FIFO` priority [`REALTIME_PRIORITY`].
    realtime: bool,
    /// The `LatencyLane` queue, whose threads alone run at `SCHED_FIFO`
    /// without `realtime`: they carry only small packets, so they cannot
    /// starve the node.
    lane: Option<usize>,
    /// On the offload path: the lane's threads are real-time only while a
    /// bulk queue is bulk (see `lane_priority`); else always.
    lane_priority: Option<Arc<LanePriority>>,
}

/// How a thread is scheduled.
enum Priority {
    Nice,
    Fifo,
    /// A lane thread: nice, and `SCHED_FIFO` while a bulk queue is bulk.
    Lane(Arc<LanePriority>),
}

/// The real-time priority of the forwarding threads with
/// `RealtimeThreads`: low, so that the kernel's own real-time threads
/// (migration, watchdogs) still come first.
const REALTIME_PRIORITY: i32 = 10;

/// The nice value of the forwarding threads without `RealtimeThreads`.
/// On a saturated node a woken forwarding thread otherwise waits behind
/// the busy tasks' slices, and every packet with it: at -19 a ping beside
/// a bulk stream waits about 8 times less at the median and 2 times less
/// at the 99th percentile, at the same throughput (docs/benchmarks.md).
/// Needs `CAP_SYS_NICE` (the packaged unit keeps it).
const FORWARDING_NICE: i32 = -19;

/// Whether a refusal of the nice value was logged already.
static NICE_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a refusal of `SCHED_FIFO` was logged already.
static REALTIME_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The kernel refused `SCHED_FIFO`: said once per process.
pub(crate) fn realtime_refused(e: &io::Error) {
    if !REALTIME_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "RealtimeThreads or LatencyLane: the kernel refused SCHED_FIFO ({e}); forwarding at nice {FORWARDING_NICE}. Under systemd, allow it with a drop-in: RestrictRealtime=no and LimitRTPRIO={REALTIME_PRIORITY} (a kernel with CONFIG_RT_GROUP_SCHED also needs a real-time budget for the service's cgroup)"
        );
    }
}

/// Step until told to stop or a persistent error.
fn run(mut step: impl FnMut() -> Step, fd: i32, stop: &StopSignal) -> Exit {
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        match step() {
            Step::Worked => {}
            Step::Idle => match wait(fd, libc::POLLIN, stop) {
                Ok(Wake::Ready(_)) => {}
                Ok(Wake::Stop) => return Exit::Stopped,
                Err(e) => return Exit::Failed(e),
            },
            Step::Failed(e) => return Exit::Failed(e),
        }
    }
}

/// The send thread of an offload queue: reads the TUN device while the
/// traffic is bulk, and sleeps on its doorbell while the receive thread
/// serves both directions (see `duty`).
pub(crate) fn run_sender<T: TunReader>(
    tx: &Mutex<T>,
    mut step: impl FnMut(&mut T) -> Step,
    duty: &Duty,
    tun: i32,
    stop: &StopSignal,
) -> Exit {
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        if !duty.bulk() {
            match wait_any(&[duty.to_sender.fd()], libc::POLLIN, stop, None) {
                Ok(Wake::Ready(_)) => duty.to_sender.clear(),
                Ok(Wake::Stop) => return Exit::Stopped,
                Err(e) => return Exit::Failed(e),
            }
            continue;
        }
        match send_step(tx, &mut step, duty) {
            Step::Worked => {}
            Step::Idle => {
                if duty.hand_back_if_quiet() {
                    continue;
                }
                match wait_any(&[tun], libc::POLLIN, stop, Some(duty.quiet())) {
                    Ok(Wake::Ready(_)) => {}
                    Ok(Wake::Stop) => return Exit::Stopped,
                    Err(e) => return Exit::Failed(e),
                }
            }
            Step::Failed(e) => return Exit::Failed(e),
        }
    }
}

/// The receive thread of an offload queue: UDP -> TUN, and TUN -> UDP too
/// while the traffic is light (see `duty`).
///
/// After each round it goes back to `poll` rather than trying its
/// descriptors until they fail: a light packet's hop then costs one wake-up
/// and the calls that move it, and `poll` reports what is ready. The one
/// exception is the TUN read right after a write, which picks up what the
/// kernel made of the written packet (a reply, an ACK) without a wake-up.
pub(crate) fn run_receiver<T: TunReader>(
    mut receive: impl FnMut() -> (Step, bool),
    tx: &Mutex<T>,
    mut send: impl FnMut(&mut T) -> Step,
    duty: &Duty,
    fds: [i32; 2],
    stop: &StopSignal,
) -> Exit {
    const SOCK: u8 = 1;
    const TUN: u8 = 2;
    const BELL: u8 = 4;
    let [sock, tun] = fds;
    // What to read this round; at the start, both.
    let mut ready = SOCK | TUN;
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        let received = if ready & SOCK != 0 {
            match receive() {
                (Step::Failed(e), _) => return Exit::Failed(e),
                (Step::Worked, true) => {
                    duty.saw_bulk();
                    Step::Worked
                }
                (step, _) => step,
            }
        } else {
            Step::Idle
        };
        let light = !duty.bulk();
        let look_at_tun = ready & TUN != 0 || matches!(received, Step::Worked);
        if light && look_at_tun {
            if let Step::Failed(e) = send_step(tx, &mut send, duty) {
                return Exit::Failed(e);
            }
        }
        // In `fds` order, so that the wake-up's bits are SOCK, TUN and BELL;
        // poll(2) skips a negative descriptor (the TUN device while bulk).
        let tun_if_ours = if duty.bulk() { -1 } else { tun };
        ready = match wait_any(&[sock, tun_if_ours, duty.to_receiver.fd()], libc::POLLIN, stop, None) {
            Ok(Wake::Ready(r)) => r,
            Ok(Wake::Stop) => return Exit::Stopped,
            Err(e) => return Exit::Failed(e),
        };
        if ready & BELL != 0 {
            // Rung: light again (the TUN device is ours) or bulk (it is not).
            duty.to_receiver.clear();
            ready |= TUN;
        }
    }
}

/// One TUN -> UDP step under the queue's send lock; bulk is noted.
/// What reads a queue's TUN device: says whether its last read was bulk
/// (a super-packet), which hands the device to the send thread.
pub(crate) trait TunReader {
    fn read_bulk(&self) -> bool;
}

impl TunReader for TxPath {
    fn read_bulk(&self) -> bool {
        self.bulk
    }
}

fn send_step<T: TunReader>(tx: &Mutex<T>, step: &mut impl FnMut(&mut T) -> Step, duty: &Duty) -> Step {
    let Ok(mut path) = tx.lock() else {
        return Step::Failed(io::Error::other("the other thread of this queue panicked while sending"));
    };
    let result = step(&mut path);
    if matches!(result, Step::Worked) && path.read_bulk() {
        duty.saw_bulk();
    }
    result
}

impl Workers {
    /// Start two threads per queue, at `SCHED_FIFO` when `realtime`, or for
    /// the `lane` queue (while bulk flows, on the offload path). `wake` is
    /// notified when any ends.
    pub(crate) fn start(
        queues: &[Queue],
        common: &Shared,
        mtu: usize,
        realtime: bool,
        lane: Option<usize>,
        wake: &Arc<Notify>,
    ) -> Result<Workers> {
        let stop = Arc::new(StopSignal::new().map_err(|e| Error::tun("creating the stop eventfd", e))?);
        // The lane's threads follow the bulk queues' state where it is
        // known: on the offload path, where each queue has a `Duty`.
        let governed = lane.is_some() && !realtime && queues.iter().all(|q| q.state.is_some());
        let lane_priority = governed.then(|| Arc::new(LanePriority::new(REALTIME_PRIORITY)));
        let mut workers = Workers { stop, threads: Vec::new(), realtime, lane, lane_priority };
        for (q, queue) in queues.iter().enumerate() {
            match &queue.state {
                Some(state) => workers.start_offload(q, queue, state, common, mtu, wake)?,
                None => workers.start_plain(q, queue, common, wake)?,
            }
        }
        Ok(workers)
    }

    /// The offload path's two threads, sharing the TUN device (see `duty`).
    fn start_offload(
        &mut self,
        q: usize,
        queue: &Queue,
        state: &Arc<UdpSocketState>,
        common: &Shared,
        mtu: usize,
        wake: &Arc<Notify>,
    ) -> Result<()> {
        let mut duty =
            Duty::new(BULK_QUIET, common.stats.clone()).map_err(|e| Error::tun("creating the queue's doorbells", e))?;
        if self.lane != Some(q) {
            duty.lane = self.lane_priority.clone();
        }
        let duty = Arc::new(duty);
        let txp = Arc::new(Mutex::new(TxPath::new(state, mtu)));
        let (dev, sock, shared, state2, duty2, txp2) =
            (queue.dev.clone(), queue.sock.clone(), common.clone(), state.clone(), duty.clone(), txp.clone());
        let tx: Body = Box::new(move |stop| {
            let step = |t: &mut TxPath| t.step(&dev, &sock, &state2, &shared, stop);
            run_sender(&txp2, step, &duty2, dev.as_raw_fd(), stop)
        });
        self.spawn(format!("weft-tx-{q}"), q, tx, wake)?;
        let (dev, sock, shared, state) = (queue.dev.clone(), queue.sock.clone(), common.clone(), state.clone());
        let rx: Body = Box::new(move |stop| {
            let mut rx = RxPath::new();
            let receive = || {
                let step = rx.step(&dev, &sock, &state, &shared);
                (step, rx.bulk)
            };
            let send = |t: &mut TxPath| t.step(&dev, &sock, &state, &shared, stop);
            run_receiver(receive, &txp, send, &duty, [sock.as_raw_fd(), dev.as_raw_fd()], stop)
        });
        self.spawn(format!("weft-rx-{q}"), q, rx, wake)
    }

    /// The plain path: one thread per direction, one packet per syscall.
    fn start_plain(&mut self, q: usize, queue: &Queue, common: &Shared, wake: &Arc<Notify>) -> Result<()> {
        let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
        let tx: Body = Box::new(move |stop| {
            let mut tx = PlainTx::new();
            run(|| tx.step(&dev, &sock, &shared), dev.as_raw_fd(), stop)
        });
        self.spawn(format!("weft-tx-{q}"), q, tx, wake)?;
        let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
        let rx: Body = Box::new(move |stop| {
            let mut rx = PlainRx::new();
            run(|| rx.step(&dev, &sock, &shared), sock.as_raw_fd(), stop)
        });
        self.spawn(format!("weft-rx-{q}"), q, rx, wake)
    }

    fn spawn(&mut self, name: String, queue: usize, body: Body, wake: &Arc<Notify>) -> Result<()> {
        let stop = self.stop.clone();
        let wake = WakeOnExit(wake.clone());
        let priority = match &self.lane_priority {
            _ if self.realtime => Priority::Fifo,
            _ if self.lane != Some(queue) => Priority::Nice,
            Some(lane) => Priority::Lane(lane.clone()),
            None => Priority::Fifo,
        };
        let handle = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let _wake = wake;
            let fifo = matches!(priority, Priority::Fifo)
                && sys::set_policy(0, Some(REALTIME_PRIORITY)).map_err(|e| realtime_refused(&e)).is_ok();
            if !fifo {
                if let Err(e) = sys::set_nice(FORWARDING_NICE) {
                    if !NICE_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(
                            "the kernel refused nice {FORWARDING_NICE} for the forwarding threads ({e}); forwarding at normal priority, with longer waits under CPU load. Give the service CAP_SYS_NICE (the packaged unit has it)"
                        );
                    }
                }
            }
            if let Priority::Lane(lane) = &priority {
                lane.join();
            }
            body(&stop)
        });
        match handle {
            Ok(handle) => {
                self.threads.push(Worker { name, queue, handle });
                Ok(())
            }
            Err(e) => {
                // Leave nothing half-started.
                self.stop_all();
                Err(Error::tun(format!("starting thread {name}"), e))
            }
        }
    }

    /// Whether every thread is still running.
    pub(crate) fn all_alive(&self) -> bool {
        self.threads.iter().all(|w| !w.handle.is_finished())
    }

    /// Stop every thread and join them; returns how each ended.
    pub(crate) fn stop_all(&mut self) -> Vec<Ended> {
        self.stop.fire();
        self.threads.drain(..).map(|w| Ended { thread: w.name, queue: w.queue, exit: w.handle.join().ok() }).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}
