//! [`ThreadSet`]: the owned forwarding threads of one device, started
//! together, stopped together and joined. A thread ends on a persistent
//! error or a panic; it then wakes the reconciler (its `WakeOnExit`), which
//! collects the set and restarts it after a backoff (`Forwarder::reap`).

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::Notify;

use super::priority::Priority;
use super::thread::{Exit, StopSignal, WakeOnExit};

/// What a forwarding thread runs.
pub(crate) type Body = Box<dyn FnOnce(&StopSignal) -> Exit + Send>;

/// How one thread ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) thread: String,
    pub(crate) queue: usize,
    /// `None` when the thread panicked.
    pub(crate) exit: Option<Exit>,
}

struct Owned {
    name: String,
    queue: usize,
    handle: JoinHandle<Exit>,
}

/// The running threads of every queue of one device.
pub(crate) struct ThreadSet {
    stop: Arc<StopSignal>,
    threads: Vec<Owned>,
    wake: Arc<Notify>,
}

impl ThreadSet {
    /// An empty set; `wake` is notified when any of its threads ends.
    pub(crate) fn new(wake: &Arc<Notify>) -> io::Result<ThreadSet> {
        Ok(ThreadSet { stop: Arc::new(StopSignal::new()?), threads: Vec::new(), wake: wake.clone() })
    }

    /// Start thread `name` of `queue` with `priority`. On failure every
    /// thread of the set is stopped: nothing is left half-started.
    pub(crate) fn spawn(&mut self, name: String, queue: usize, priority: Priority, body: Body) -> io::Result<()> {
        let stop = self.stop.clone();
        let wake = WakeOnExit(self.wake.clone());
        let handle = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let _wake = wake;
            priority.apply();
            body(&stop)
        });
        match handle {
            Ok(handle) => {
                self.threads.push(Owned { name, queue, handle });
                Ok(())
            }
            Err(e) => {
                self.stop_all();
                Err(e)
            }
        }
    }

    /// Whether every thread is still running.
    pub(crate) fn all_alive(&self) -> bool {
        self.threads.iter().all(|t| !t.handle.is_finished())
    }

    /// Stop every thread and join them; returns how each ended.
    pub(crate) fn stop_all(&mut self) -> Vec<Ended> {
        self.stop.fire();
        self.threads.drain(..).map(|t| Ended { thread: t.name, queue: t.queue, exit: t.handle.join().ok() }).collect()
    }
}

impl Drop for ThreadSet {
    fn drop(&mut self) {
        self.stop_all();
    }
}
