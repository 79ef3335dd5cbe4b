//! The forwarding threads and their ownership: two threads per queue
//! (TUN -> UDP and UDP -> TUN), started together, stopped together, and
//! joined. A thread ends on a persistent error (the TUN device deleted
//! under it, a closed descriptor, too many errors in a row) or a panic;
//! it then wakes the reconciler, which rebuilds the queues and starts new
//! threads after a backoff (see `Supervisor` in the backend).
//!
//! Each thread sleeps in `poll(2)` on its data descriptor and a stop
//! eventfd, so stopping never waits for traffic.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tun_rs::SyncDevice;

use super::io::{wait, Exit, Shared, StopSignal, Wake, WakeOnExit};
use super::offload::{RxPath, Step, TxPath};
use super::plain::{PlainRx, PlainTx};
use crate::error::{Error, Result};

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
                Ok(Wake::Ready) => {}
                Ok(Wake::Stop) => return Exit::Stopped,
                Err(e) => return Exit::Failed(e),
            },
            Step::Failed(e) => return Exit::Failed(e),
        }
    }
}

impl Workers {
    /// Start two threads per queue. `wake` is notified when any ends.
    pub(crate) fn start(queues: &[Queue], common: &Shared, mtu: usize, wake: &Arc<Notify>) -> Result<Workers> {
        let stop = Arc::new(StopSignal::new().map_err(|e| Error::tun("creating the stop eventfd", e))?);
        let mut workers = Workers { stop, threads: Vec::new() };
        for (q, queue) in queues.iter().enumerate() {
            let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
            let tx: Box<dyn FnOnce(&StopSignal) -> Exit + Send> = match &queue.state {
                Some(state) => {
                    let state = state.clone();
                    Box::new(move |stop| {
                        let mut tx = TxPath::new(&state, mtu);
                        run(|| tx.step(&dev, &sock, &state, &shared, stop), dev.as_raw_fd(), stop)
                    })
                }
                None => Box::new(move |stop| {
                    let mut tx = PlainTx::new();
                    run(|| tx.step(&dev, &sock, &shared), dev.as_raw_fd(), stop)
                }),
            };
            workers.spawn(format!("weft-tx-{q}"), q, tx, wake)?;
            let (dev, sock, shared) = (queue.dev.clone(), queue.sock.clone(), common.clone());
            let rx: Box<dyn FnOnce(&StopSignal) -> Exit + Send> = match &queue.state {
                Some(state) => {
                    let state = state.clone();
                    Box::new(move |stop| {
                        let mut rx = RxPath::new();
                        run(|| rx.step(&dev, &sock, &state, &shared), sock.as_raw_fd(), stop)
                    })
                }
                None => Box::new(move |stop| {
                    let mut rx = PlainRx::new();
                    run(|| rx.step(&dev, &sock, &shared), sock.as_raw_fd(), stop)
                }),
            };
            workers.spawn(format!("weft-rx-{q}"), q, rx, wake)?;
        }
        Ok(workers)
    }

    fn spawn(
        &mut self,
        name: String,
        queue: usize,
        body: Box<dyn FnOnce(&StopSignal) -> Exit + Send>,
        wake: &Arc<Notify>,
    ) -> Result<()> {
        let stop = self.stop.clone();
        let wake = WakeOnExit(wake.clone());
        let handle = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let _wake = wake;
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
