//! The wireguard backend's threads, per device: on each queue one thread
//! encrypts what the TUN device gives (TUN -> UDP, `fast` or `plain`) and
//! one decrypts what the socket receives (UDP -> TUN); one more does the
//! handshakes and the protocol's timers (`handshake`), so that handshake
//! work never holds up forwarding, nor forwarding it. The substrate's
//! [`ThreadSet`] owns them; its loops hand the TUN device between a
//! queue's two threads as the udp backend's do.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::fast::{FastRx, FastTx};
use super::handshake::{self, Inbox};
use super::plain;
use super::state::WgShared;
use crate::backend::userspace::duty::{Duty, BULK_QUIET};
use crate::backend::userspace::loops::{run_receiver, run_sender, TunReader};
use crate::backend::userspace::priority::{Priorities, Priority, Tell};
use crate::backend::userspace::threads::Body;
use crate::backend::userspace::{Queue, ThreadSet};
use crate::forward::stats::Stats;

impl TunReader for FastTx {
    fn read_bulk(&self) -> bool {
        self.bulk()
    }
}

/// The TX and RX bodies of one queue; with the socket's GSO/GRO state (on
/// a TUN device with virtio-net headers) on the offload path
/// ([`super::fast`]), else one packet per system call.
fn queue_bodies(
    q: &Queue,
    mtu: usize,
    shared: &Arc<WgShared>,
    inbox: &Arc<Inbox>,
    lane: Option<Tell>,
) -> io::Result<(Body, Body)> {
    let (dev, sock) = (q.dev.clone(), q.sock.clone());
    Ok(if q.offload {
        let state = q.state.clone();
        // As the udp backend's queues: the RX thread serves both
        // directions while the traffic is light, the TX thread takes
        // the TUN device when bulk starts (see `userspace::duty`).
        let mut duty = Duty::new(BULK_QUIET, Arc::new(Stats::default()))?;
        duty.lane = lane;
        let duty = Arc::new(duty);
        let tx_path = Arc::new(Mutex::new(FastTx::new(sock.clone(), state.clone(), mtu)));
        let tx: Body = {
            let (dev, shared) = (dev.clone(), shared.clone());
            let (path, duty) = (tx_path.clone(), duty.clone());
            Box::new(move |stop| {
                let step = |p: &mut FastTx| p.step(&dev, &shared, stop);
                run_sender(&path, step, &duty, dev.as_raw_fd(), stop)
            })
        };
        let rx: Body = {
            let (shared, inbox) = (shared.clone(), inbox.clone());
            let mut path = FastRx::new(sock.clone(), state, mtu);
            Box::new(move |stop| {
                let receive = || {
                    let step = path.step(&dev, &shared, &inbox);
                    (step, path.bulk())
                };
                let send = |p: &mut FastTx| p.step(&dev, &shared, stop);
                let fds = [sock.as_raw_fd(), dev.as_raw_fd()];
                run_receiver(receive, &tx_path, send, &duty, fds, stop)
            })
        };
        (tx, rx)
    } else {
        let tx: Body = {
            let (dev, sock, shared) = (dev.clone(), sock.clone(), shared.clone());
            Box::new(move |stop| plain::tx(&dev, &sock, &shared, stop))
        };
        let rx: Body = {
            let (shared, inbox) = (shared.clone(), inbox.clone());
            Box::new(move |stop| plain::rx(&dev, &sock, &shared, &inbox, stop))
        };
        (tx, rx)
    })
}

/// Start two threads per queue and the handshake thread (which sends from
/// the first queue's socket); with `lane` (the `LatencyLane` queue) its
/// threads are real-time while bulk flows, as the udp backend's. `wake`
/// is notified when any ends.
pub(crate) fn start(
    queues: &[Queue],
    mtu: usize,
    shared: &Arc<WgShared>,
    lane: Option<usize>,
    wake: &Arc<Notify>,
) -> io::Result<ThreadSet> {
    let mut set = ThreadSet::new(wake)?;
    let inbox = Inbox::new();
    let priorities = Priorities::new(false, lane, queues.iter().all(|q| q.offload));
    for (i, q) in queues.iter().enumerate() {
        let (tx, rx) = queue_bodies(q, mtu, shared, &inbox, priorities.told_by(i))?;
        set.spawn(format!("weft-wg-tx-{i}"), i, priorities.of(i), tx)?;
        set.spawn(format!("weft-wg-rx-{i}"), i, priorities.of(i), rx)?;
    }
    let sock = queues.first().map(|q| q.sock.clone()).ok_or_else(|| io::Error::other("no queue"))?;
    let (shared, wake) = (shared.clone(), wake.clone());
    let body: Body = Box::new(move |stop| handshake::run(&sock, &shared, &inbox, &wake, stop));
    set.spawn("weft-wg-handshake".into(), 0, Priority::Nice, body)?;
    Ok(set)
}
