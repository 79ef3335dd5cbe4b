//! The udp backend: pod packets leave the kernel through a TUN device
//! (`flannel0`), travel to the peer node as the payload of a UDP datagram
//! (port 8285, nothing added: flanneld's wire format), and enter the peer's
//! TUN device. All in userspace, built for speed:
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `device`   | the TUN device: created or re-attached, kept as it should be   |
//! | `socket`   | the UDP sockets, one per queue, with large buffers             |
//! | `workers`  | the forwarding threads: started, stopped and joined together   |
//! | `duty`     | which thread reads the TUN device: light or bulk traffic       |
//! | `offload`  | the offload path: TUN->UDP and UDP->TUN steps, batched         |
//! | `plain`    | the plain path: one packet per syscall                         |
//! | `shared`   | what threads share: route table, stop signal, waits, error log |
//! | `icmp`     | ICMP errors written back into the TUN device, rate-limited     |
//! | `lane`     | `LatencyLane`: the eBPF classifier of small packets, attached  |
//! | `lane_priority` | when the lane's threads are real-time: while bulk flows |
//! | `restart`  | the restart backoff of ended threads (pure, clock passed in)   |
//! | `sys`      | every libc call, each in one checked helper                    |
//!
//! The per-packet decisions, packet views, route table and counters are
//! the pure [`crate::forward`].
//!
//! The TUN device gets `<subnet network>/<network prefix>` (so the kernel
//! routes the whole overlay network into it) and MTU = external MTU − 28.
//! On dual-stack networks it also gets `<v6 subnet network>/<v6 network
//! prefix>` and carries the pods' IPv6 packets, to the peers' `PublicIPv6`
//! over the IPv6 underlay (one socket per queue on `[::]` for both
//! families, MTU = external − 48); pod IPv4 stays on the IPv4 underlay. A
//! datagram's payload is the pod packet of either family, as flanneld
//! frames IPv4.
//! It is persistent (`IFF_PERSIST`): it outlives the process with its
//! address and route, and a restart re-attaches to it as soon as the
//! external interface is known, before etcd is asked anything. Until the
//! route table is loaded, packets wait in the TUN queue and the UDP socket
//! buffer instead of being dropped.
//!
//! Supervision: every reconcile checks the device (exists, up, MTU,
//! address, route) and the threads. A thread that ended (persistent error
//! or panic) gets its queues rebuilt and restarted after a backoff of 100 ms
//! doubling to 10 s (reset after 30 s of healthy running).

mod device;
pub(crate) mod duty;
mod icmp;
pub(crate) mod lane;
mod lane_priority;
pub(crate) mod offload;
mod plain;
pub(crate) mod restart;
pub(crate) mod shared;
pub(crate) mod socket;
pub(crate) mod sys;
pub(crate) mod workers;

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ipnet::{Ipv4Net, Ipv6Net};
use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tracing::{info, warn};
use tun_rs::SyncDevice;
use weft_types::{BackendKind, UdpOptions};

use crate::error::{chain, Error, Result};
use crate::forward::decide::Local;
use crate::forward::table::{RouteTable, Snapshot};
use crate::kernel::Netlink;
use crate::model::{Peer, TUN_NAME};
use crate::report::{ObjectKind, Problem, Report, UdpCounters};
use crate::sync::converge;
use crate::sync::iface::ExternalInterface;
use restart::Restart;
use shared::{Exit, Shared};
use workers::{Queue, Workers};

/// IPv4 (20) + UDP (8).
pub(crate) const UDP_OVERHEAD: u32 = 28;

/// IPv6 (40) + UDP (8): the overhead over an IPv6 underlay.
pub(crate) const UDP6_OVERHEAD: u32 = 48;

pub(crate) struct UdpBackend {
    nl: Netlink,
    opts: UdpOptions,
    ext: ExternalInterface,
    /// The IPv4 pod network (none on IPv6-only networks).
    network: Option<Ipv4Net>,
    /// The IPv6 pod network, on dual-stack and IPv6-only networks.
    network6: Option<Ipv6Net>,
    /// This node's `PublicIPv6` when pod IPv6 travels over an IPv6
    /// underlay (a network with IPv6, and the node has one).
    underlay6: Option<Ipv6Addr>,
    table: Arc<RouteTable>,
    counters: Arc<UdpCounters>,
    sockets: Vec<Arc<UdpSocket>>,
    states: Vec<Option<Arc<UdpSocketState>>>,
    /// The `LatencyLane` classifier, attached to the sockets (none: off, or
    /// the kernel refused it).
    lane: Option<lane::Classifier>,
    /// Whether `start` ran: the subnets below are this node's.
    started: bool,
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
    /// The attached TUN queues (empty: none attached).
    tun: Vec<Arc<SyncDevice>>,
    vnet_hdr: bool,
    /// The device's index as last seen.
    index: Option<u32>,
    workers: Option<Workers>,
    restart: Restart,
    wake: Arc<Notify>,
}

impl UdpBackend {
    /// Bind the UDP port(s) and, when `flannel0` is left from an earlier
    /// run, attach to it at once; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: UdpOptions,
        ext: ExternalInterface,
        network: Option<Ipv4Net>,
        network6: Option<Ipv6Net>,
        wake: Arc<Notify>,
    ) -> Result<UdpBackend> {
        // With `LatencyLane`, one more queue after the bulk ones: the lane.
        let queues = socket::queue_count(opts.offload, opts.queues) + usize::from(opts.latency_lane);
        // On a dual-stack network with a public IPv6 address, one socket per
        // queue for both families, on [::]; else on the IPv4 public address.
        let underlay6 = ext.public_ipv6.filter(|_| network6.is_some());
        let addr = match (underlay6, ext.public_ip) {
            (Some(_), _) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, opts.port)),
            (None, Some(ip)) => SocketAddr::V4(SocketAddrV4::new(ip, opts.port)),
            (None, None) => return Err(Error::NoAddress6 { iface: ext.name.clone() }),
        };
        let sockets = (0..queues).map(|_| socket::bind(addr, queues > 1).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        let states = sockets
            .iter()
            .map(|s| {
                if !opts.offload {
                    return Ok(None);
                }
                UdpSocketState::new((&**s).into())
                    .map(|st| Some(Arc::new(st)))
                    .map_err(|source| Error::UdpSocket { addr, source })
            })
            .collect::<Result<Vec<_>>>()?;
        let lane = if opts.latency_lane { lane::attach_to_sockets(queues - 1, &sockets[0]) } else { None };
        let mut b = UdpBackend {
            nl,
            opts,
            ext,
            network,
            network6,
            underlay6,
            table: RouteTable::new(),
            counters: Arc::new(UdpCounters {
                stats: Arc::default(),
                restarts: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            }),
            sockets,
            states,
            lane,
            started: false,
            subnet: None,
            subnet6: None,
            tun: Vec::new(),
            vnet_hdr: false,
            index: None,
            workers: None,
            restart: Restart::new(Instant::now()),
            wake,
        };
        if let Some(link) = b.nl.link_by_name(TUN_NAME).await? {
            if link.kind.as_deref() == Some("tun") {
                match b.open_queues() {
                    Ok(()) => info!(device = TUN_NAME, "re-attached to the TUN device left by the last run"),
                    Err(e) => warn!("cannot re-attach to the existing {TUN_NAME} ({}); recreating it later", chain(&e)),
                }
            }
        }
        Ok(b)
    }

    pub(crate) fn mtu(&self) -> u32 {
        let overhead = if self.underlay6.is_some() { UDP6_OVERHEAD } else { UDP_OVERHEAD };
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(overhead))
    }

    pub(crate) fn device(&self) -> (&'static str, Option<u32>) {
        (TUN_NAME, self.index)
    }

    fn stop_workers(&mut self) {
        if let Some(mut w) = self.workers.take() {
            w.stop_all();
        }
    }

    /// Give up the TUN queues (after stopping the threads that use them).
    pub(super) fn detach(&mut self) {
        self.stop_workers();
        self.tun.clear();
    }

    /// Remove stale routes of an earlier kernel-backend run and set up the
    /// device. Forwarding starts at the first reconcile, once the route
    /// table is loaded.
    pub(crate) async fn start(&mut self, subnet: Option<Ipv4Net>, subnet6: Option<Ipv6Net>) -> Result<()> {
        self.subnet = subnet.filter(|_| self.network.is_some());
        self.subnet6 = subnet6.filter(|_| self.network6.is_some());
        self.started = true;
        let o = converge::routes(
            &self.nl,
            &crate::backend::networks(self.network, self.network6),
            &BTreeMap::new(),
            &BTreeMap::new(),
            converge::Pass::Full,
        )
        .await?;
        if let Some((dst, e)) = o.failed.first() {
            warn!("could not remove the stale route to {dst}: {}", chain(e));
        }
        self.ensure_device(&mut Report::default()).await.map(|_| ())
    }

    /// Swap in the route table for `peers`, check the device, and keep the
    /// forwarding threads running.
    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report) {
        let snapshot = Snapshot::build(peers, self.opts.port, self.underlay6.is_some());
        let before: std::collections::BTreeSet<_> = self.table.load().routes().into_iter().collect();
        let after: std::collections::BTreeSet<_> = snapshot.routes().into_iter().collect();
        report.changes += before.symmetric_difference(&after).count();
        self.table.store(snapshot);

        if !self.started {
            report.problem(Problem::NotStarted { backend: BackendKind::Udp });
            return;
        }
        self.reap_workers(report);
        if let Err(e) = self.ensure_device(report).await {
            report.problem(Problem::Device { name: TUN_NAME.into(), error: chain(&e) });
            return;
        }
        if self.workers.is_none() {
            if !self.restart.due(Instant::now()) {
                report.problem(Problem::ThreadsBackingOff);
                return;
            }
            if let Err(e) = self.start_workers() {
                report.problem(Problem::ThreadsCannotStart { error: chain(&e) });
                self.restart.failed(Instant::now());
                return;
            }
        }
        report.peers_programmed = peers.len();
    }

    /// Collect threads that ended; a failed one means rebuilding the queues.
    fn reap_workers(&mut self, report: &mut Report) {
        let Some(w) = &mut self.workers else { return };
        if w.all_alive() {
            return;
        }
        let ended = w.stop_all();
        self.workers = None;
        let mut failed_queues = Vec::new();
        for e in &ended {
            let why = match &e.exit {
                Some(Exit::Stopped) => continue,
                Some(Exit::Failed(err)) => err.to_string(),
                None => "panicked".to_string(),
            };
            warn!(thread = %e.thread, "udp forwarding thread ended: {why}; rebuilding its queues");
            if !failed_queues.contains(&e.queue) {
                failed_queues.push(e.queue);
            }
        }
        self.count_restarts(failed_queues, report);
        // The queues may be broken (device deleted under them): reopen.
        self.tun.clear();
        self.restart.failed(Instant::now());
    }

    /// The threads of `queues` are restarted: counted per queue and as
    /// repairs.
    pub(super) fn count_restarts(&self, queues: impl IntoIterator<Item = usize>, report: &mut Report) {
        for q in queues {
            self.counters.restarts[q].fetch_add(1, Ordering::Relaxed);
            report.repaired(ObjectKind::Thread, 1);
        }
    }

    fn start_workers(&mut self) -> Result<()> {
        let shared = Shared {
            table: self.table.clone(),
            stats: self.counters.stats.clone(),
            local: Local { v4: self.subnet, v6: self.subnet6 },
            icmp_from: self.subnet.map(|s| s.network()),
            icmp_from6: self.subnet6.map(|s| s.network()),
            send_from: self.underlay6.map(|v6| (self.ext.public_ip, v6)),
            vnet_hdr: self.vnet_hdr,
        };
        let queues: Vec<Queue> = self
            .tun
            .iter()
            .zip(&self.sockets)
            .zip(&self.states)
            .map(|((dev, sock), state)| Queue {
                dev: dev.clone(),
                sock: sock.clone(),
                state: if self.vnet_hdr { state.clone() } else { None },
            })
            .collect();
        let mtu = self.mtu() as usize;
        let lane = self.lane.as_ref().map(|_| queues.len() - 1);
        self.workers = Some(Workers::start(&queues, &shared, mtu, self.opts.realtime_threads, lane, &self.wake)?);
        self.restart.started(Instant::now());
        let (gso, gro) = match self.states.first().and_then(|s| s.as_ref()).filter(|_| self.vnet_hdr) {
            Some(s) => (s.max_gso_segments(), s.gro_segments()),
            None => (1, 1),
        };
        if self.opts.offload && !self.vnet_hdr {
            warn!("the kernel refused TUN offloads; forwarding one packet per syscall");
        }
        info!(
            device = TUN_NAME,
            mtu = self.mtu(),
            port = self.opts.port,
            queues = queues.len(),
            tun_offload = self.vnet_hdr,
            udp_gso_segments = gso,
            udp_gro_segments = gro,
            realtime_threads = self.opts.realtime_threads,
            latency_lane = lane.is_some(),
            ipv6_underlay = self.underlay6.map(|a| a.to_string()).unwrap_or_else(|| "no".into()),
            "udp backend forwarding"
        );
        Ok(())
    }

    /// When a stopped set of threads is due to be restarted.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.restart.next().filter(|_| self.workers.is_none())
    }

    /// Problems visible without a reconcile pass: threads that ended.
    pub(crate) fn live_problems(&self, out: &mut Vec<Problem>) {
        if let Some(w) = &self.workers {
            if !w.all_alive() {
                out.push(Problem::ThreadEnded);
            }
        }
    }

    pub(crate) fn counters(&self) -> &Arc<UdpCounters> {
        &self.counters
    }

    /// Stop and join the threads; the device stays (it is persistent).
    pub(crate) fn shutdown(&mut self) {
        self.stop_workers();
    }
}
