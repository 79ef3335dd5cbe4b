//! [`Forwarder`]: what a userspace backend runs per device, and its
//! supervision: the TUN device's queues, one UDP socket per queue, the
//! threads that forward between them, and the restart backoff. The
//! backend says what its threads do (a closure that starts them on the
//! queues); the forwarder keeps them running.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::UdpSocketState;
use tracing::{info, warn};
use tun_rs::SyncDevice;
use weft_types::BackendKind;

use super::handover;
use super::lane::{Lane, Wire};
use super::restart::Restart;
use super::socket;
use super::thread::Exit;
use super::threads::ThreadSet;
use crate::error::{chain, Error, Result};
use crate::kernel::Netlink;
use crate::report::{ObjectKind, Problem, Report};

/// How the routes of the pod network through the device are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteBy {
    /// The device's address carries the network's prefix, and the kernel's
    /// prefix route is the route (flanneld's `flannel0`): a lost route is
    /// brought back by adding the address again.
    AddressPrefix,
    /// A host address, and one scope-link route per network (flanneld's
    /// `flannel-wg`).
    DeviceRoute,
}

/// What makes one backend's TUN device its own.
#[derive(Debug, Clone)]
pub(crate) struct DeviceSpec {
    pub(crate) name: &'static str,
    pub(crate) backend: BackendKind,
    pub(crate) mtu: u32,
    /// Ask for TUN offloads (virtio-net headers, TSO/USO).
    pub(crate) offload: bool,
    pub(crate) route_by: RouteBy,
    /// Set `accept_local` on the device: the udp backend writes ICMP
    /// errors into it from the device's own address, which the kernel
    /// otherwise drops as martians.
    pub(crate) accept_local: bool,
    /// Said after "exists but is not a TUN device" (a likely cause).
    pub(crate) not_tun_hint: &'static str,
}

/// One forwarding queue: a TUN queue and the UDP socket that pairs with it.
#[derive(Clone)]
pub(crate) struct Queue {
    pub(crate) dev: Arc<SyncDevice>,
    pub(crate) sock: Arc<UdpSocket>,
    /// The socket's quinn-udp state: its receive metadata (destination,
    /// interface) on both paths, GSO/GRO on the offload path.
    pub(crate) state: Arc<UdpSocketState>,
    /// The offload path: the TUN device carries virtio-net headers and the
    /// socket hands over GRO datagrams; else one packet per system call.
    pub(crate) offload: bool,
}

/// Whether the threads run after [`Forwarder::keep_running`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Running {
    Already,
    /// Started by this call: the backend says so in its log.
    Started,
    /// Not running; the problem is in the report.
    No,
}

pub(crate) struct Forwarder {
    pub(super) spec: DeviceSpec,
    /// One socket per queue (`SO_REUSEPORT` when there are several).
    pub(super) sockets: Vec<Arc<UdpSocket>>,
    /// Each socket's quinn-udp state (GRO on only while `vnet_hdr`).
    states: Vec<Arc<UdpSocketState>>,
    /// The `LatencyLane` classifiers, attached to the sockets (none: off,
    /// or the kernel refused them); the lane is the last queue.
    pub(super) lane: Option<Lane>,
    /// The attached TUN queues (empty: none attached).
    pub(super) tun: Vec<Arc<SyncDevice>>,
    /// Whether the device carries virtio-net headers (offloads on).
    pub(super) vnet_hdr: bool,
    /// The device's index as last seen.
    pub(super) index: Option<u32>,
    pub(super) threads: Option<ThreadSet>,
    restart: Restart,
    /// Thread restarts per queue.
    restarts: Arc<Vec<AtomicU64>>,
}

impl Forwarder {
    /// Bind a UDP socket on `bind` for each of `bulk` queues and, with
    /// `lane` (the sockets' wire format) where the kernel loads its
    /// classifiers, one more for the lane; when the device is left from an
    /// earlier run, attach to it at once; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: &Netlink,
        spec: DeviceSpec,
        bind: SocketAddr,
        bulk: usize,
        lane: Option<Wire>,
    ) -> Result<Forwarder> {
        let name = spec.name;
        // Loaded first: refused, the node forwards exactly as without it.
        let mut lane = lane.and_then(|wire| Lane::load(bulk, wire));
        let queues = bulk + usize::from(lane.is_some());
        let sockets = match handover::take_sockets(name, bind, queues) {
            Some(kept) => {
                info!(device = name, "took over the {} UDP sockets of the last run on {bind}", kept.len());
                kept.into_iter().map(Arc::new).collect()
            }
            None => {
                let fresh =
                    (0..queues).map(|_| socket::bind(bind, queues > 1).map(Arc::new)).collect::<Result<Vec<_>>>()?;
                handover::store(fresh.iter().enumerate().map(|(i, s)| (handover::name(name, "udp", i), s.as_fd())));
                fresh
            }
        };
        let states = sockets
            .iter()
            .map(|s| {
                let fail = |source| Error::UdpSocket { addr: bind, source };
                let state = UdpSocketState::new((&**s).into()).map_err(fail)?;
                socket::set_gro(s, false).map_err(fail)?;
                Ok(Arc::new(state))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(Err(e)) = lane.as_ref().map(|l| l.steer_sockets(&*sockets[0])) {
            warn!(device = name, "LatencyLane: attaching the classifier to the UDP sockets: {e}; forwarding without the lane ({queues} bulk queues)");
            lane = None;
        }
        let mut f = Forwarder {
            spec,
            sockets,
            states,
            lane,
            tun: Vec::new(),
            vnet_hdr: false,
            index: None,
            threads: None,
            restart: Restart::new(Instant::now()),
            restarts: Arc::new((0..queues).map(|_| AtomicU64::new(0)).collect()),
        };
        if let Some(link) = nl.link_by_name(name).await? {
            if link.kind.as_deref() == Some("tun") {
                match f.open_device() {
                    Ok(()) => info!(device = name, "re-attached to the TUN device left by the last run"),
                    Err(e) => warn!("cannot re-attach to the existing {name} ({}); recreating it later", chain(&e)),
                }
            }
        }
        Ok(f)
    }

    pub(crate) fn name(&self) -> &'static str {
        self.spec.name
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    /// The device's index as last seen.
    pub(crate) fn index(&self) -> Option<u32> {
        self.index
    }

    /// Whether the lane's classifier is attached (the last queue is the lane).
    pub(crate) fn has_lane(&self) -> bool {
        self.lane.is_some()
    }

    /// Thread restarts per queue, for metrics.
    pub(crate) fn restarts(&self) -> &Arc<Vec<AtomicU64>> {
        &self.restarts
    }

    /// (GSO segments per send, GRO segments per receive) of the offload
    /// path; (1, 1) on the plain path.
    pub(crate) fn segments(&self) -> (usize, usize) {
        match self.states.first().filter(|_| self.vnet_hdr) {
            Some(s) => (s.max_gso_segments(), s.gro_segments()),
            None => (1, 1),
        }
    }

    /// Whether the TUN device carries virtio-net headers (offloads on).
    pub(crate) fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// How many queues are attached.
    pub(crate) fn queue_count(&self) -> usize {
        self.tun.len()
    }

    /// The attached queues, each with the socket that pairs with it.
    pub(crate) fn queues(&self) -> Vec<Queue> {
        self.tun
            .iter()
            .zip(&self.sockets)
            .zip(&self.states)
            .map(|((dev, sock), state)| Queue {
                dev: dev.clone(),
                sock: sock.clone(),
                state: state.clone(),
                offload: self.vnet_hdr,
            })
            .collect()
    }

    fn stop_threads(&mut self) {
        if let Some(mut t) = self.threads.take() {
            t.stop_all();
        }
    }

    /// Give up the TUN queues (after stopping the threads that use them).
    pub(super) fn detach(&mut self) {
        self.stop_threads();
        self.release_tun();
    }

    /// Close the TUN queues, systemd's copies too, so that the device can
    /// be attached anew (one queue of a single-queue device at most).
    fn release_tun(&mut self) {
        handover::remove((0..self.tun.len()).map(|i| handover::name(self.spec.name, "tun", i)));
        self.tun.clear();
    }

    /// The threads of `queues` are restarted: counted per queue and as
    /// repairs.
    pub(super) fn count_restarts(&self, queues: impl IntoIterator<Item = usize>, report: &mut Report) {
        for q in queues {
            if let Some(n) = self.restarts.get(q) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            report.repaired(ObjectKind::Thread, 1);
        }
    }

    /// Collect threads that ended; a failed one means rebuilding the
    /// queues, after a backoff.
    pub(crate) fn reap(&mut self, report: &mut Report) {
        let Some(t) = &mut self.threads else { return };
        if t.all_alive() {
            return;
        }
        let ended = t.stop_all();
        self.threads = None;
        let mut failed_queues = Vec::new();
        for e in &ended {
            let why = match &e.exit {
                Some(Exit::Stopped) => continue,
                Some(Exit::Failed(err)) => err.to_string(),
                None => "panicked".to_string(),
            };
            warn!(
                device = self.spec.name,
                thread = %e.thread,
                "{} forwarding thread ended: {why}; rebuilding its queues",
                self.spec.backend
            );
            if !failed_queues.contains(&e.queue) {
                failed_queues.push(e.queue);
            }
        }
        self.count_restarts(failed_queues, report);
        // The queues may be broken (device deleted under them): reopen.
        self.release_tun();
        self.restart.failed(Instant::now());
    }

    /// Start the threads with `start` when there are none and the backoff
    /// allows.
    pub(crate) fn keep_running(
        &mut self,
        report: &mut Report,
        start: impl FnOnce(&[Queue]) -> Result<ThreadSet>,
    ) -> Running {
        let backend = self.spec.backend;
        if self.threads.is_some() {
            return Running::Already;
        }
        if !self.restart.due(Instant::now()) {
            report.problem(Problem::ThreadsBackingOff { backend });
            return Running::No;
        }
        match start(&self.queues()) {
            Ok(t) => {
                self.threads = Some(t);
                self.restart.started(Instant::now());
                Running::Started
            }
            Err(e) => {
                report.problem(Problem::ThreadsCannotStart { backend, error: chain(&e) });
                self.restart.failed(Instant::now());
                Running::No
            }
        }
    }

    /// When a stopped set of threads is due to be restarted.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.restart.next().filter(|_| self.threads.is_none())
    }

    /// Whether a thread ended since the last pass.
    pub(crate) fn thread_ended(&self) -> bool {
        self.threads.as_ref().is_some_and(|t| !t.all_alive())
    }

    /// Stop and join the threads; the device stays (it is persistent).
    pub(crate) fn shutdown(&mut self) {
        self.stop_threads();
    }
}
