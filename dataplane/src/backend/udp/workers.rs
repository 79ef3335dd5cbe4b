//! The udp backend's forwarding threads: two per queue (TUN -> UDP and
//! UDP -> TUN), on the offload path sharing the TUN device by the
//! substrate's duty hand-over, on the plain path one packet per syscall.
//! Which priority each runs at: `RealtimeThreads` makes them all
//! `SCHED_FIFO`; with `LatencyLane` the lane's threads are real-time while
//! bulk flows (see `userspace::priority`). The substrate owns, supervises
//! and restarts them.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use quinn_udp::UdpSocketState;
use tokio::sync::Notify;

use super::offload::{RxPath, TxPath};
use super::plain::{PlainRx, PlainTx};
use super::shared::Shared;
use crate::backend::userspace::duty::{Duty, BULK_QUIET};
use crate::backend::userspace::loops::{run, run_receiver, run_sender, TunReader};
use crate::backend::userspace::priority::Priorities;
use crate::backend::userspace::threads::Body;
use crate::backend::userspace::{Queue, ThreadSet};
use crate::error::{Error, Result};

impl TunReader for TxPath {
    fn read_bulk(&self) -> bool {
        self.bulk
    }
}

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
) -> Result<ThreadSet> {
    let mut set = ThreadSet::new(wake).map_err(|e| Error::tun("creating the stop eventfd", e))?;
    // The lane's threads follow the bulk queues' state where it is known:
    // on the offload path, where each queue has a `Duty`.
    let priorities = Priorities::new(realtime, lane, queues.iter().all(|q| q.offload));
    for (q, queue) in queues.iter().enumerate() {
        let (tx, rx) = if queue.offload {
            let mut duty = Duty::new(BULK_QUIET, common.stats.clone())
                .map_err(|e| Error::tun("creating the queue's doorbells", e))?;
            duty.lane = priorities.told_by(q);
            offload_bodies(queue, queue.state.clone(), common, mtu, Arc::new(duty))
        } else {
            plain_bodies(queue, common)
        };
        for (name, body) in [(format!("weft-tx-{q}"), tx), (format!("weft-rx-{q}"), rx)] {
            set.spawn(name.clone(), q, priorities.of(q), body)
                .map_err(|e| Error::tun(format!("starting thread {name}"), e))?;
        }
    }
    Ok(set)
}

/// The offload path's two threads, sharing the TUN device (see `duty`).
fn offload_bodies(
    queue: &Queue,
    state: Arc<UdpSocketState>,
    common: &Shared,
    mtu: usize,
    duty: Arc<Duty>,
) -> (Body, Body) {
    let txp = Arc::new(Mutex::new(TxPath::new(queue.sock.clone(), state.clone(), common, mtu)));
    let (dev, shared, duty2, txp2) = (queue.dev.clone(), common.clone(), duty.clone(), txp.clone());
    let tx: Body = Box::new(move |stop| {
        let step = |t: &mut TxPath| t.step(&dev, &shared, stop);
        run_sender(&txp2, step, &duty2, dev.as_raw_fd(), stop)
    });
    let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
    let rx: Body = Box::new(move |stop| {
        let mut rx = RxPath::new();
        let receive = || {
            let step = rx.step(&dev, &sock, &state, &shared);
            (step, rx.bulk)
        };
        let send = |t: &mut TxPath| t.step(&dev, &shared, stop);
        run_receiver(receive, &txp, send, &duty, [sock.as_raw_fd(), dev.as_raw_fd()], stop)
    });
    (tx, rx)
}

/// The plain path: one thread per direction, one packet per syscall.
fn plain_bodies(queue: &Queue, common: &Shared) -> (Body, Body) {
    let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
    let tx: Body = Box::new(move |stop| {
        let mut tx = PlainTx::new();
        run(|| tx.step(&dev, &sock, &shared), dev.as_raw_fd(), stop)
    });
    let (dev, sock, state, shared) = (queue.dev.clone(), queue.sock.clone(), queue.state.clone(), common.clone());
    let rx: Body = Box::new(move |stop| {
        let mut rx = PlainRx::new();
        run(|| rx.step(&dev, &sock, &state, &shared), sock.as_raw_fd(), stop)
    });
    (tx, rx)
}
