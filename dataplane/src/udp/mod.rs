//! The udp backend: pod packets leave the kernel through a TUN device
//! (`flannel0`), travel to the peer node as the payload of a UDP datagram
//! (port 8285, nothing added: flanneld's wire format), and enter the peer's
//! TUN device. All in userspace, built for speed:
//!
//! | module      | what it holds                                                  |
//! |-------------|----------------------------------------------------------------|
//! | [`packet`]  | checked IPv4 views, TTL handling, ICMP errors (pure)           |
//! | [`decide`]  | the per-packet decisions: forward, answer with ICMP, drop (pure) |
//! | [`table`]   | the LPM route table, swapped lock-free under the threads       |
//! | [`stats`]   | packet, byte and per-reason drop counters                      |
//! | `io`        | what threads share: stop signal, waits, ICMP sender, error log |
//! | `offload`   | the offload path: TUN->UDP and UDP->TUN steps, batched         |
//! | `coalesce`  | received TCP segments joined into one TUN write (pure)         |
//! | `plain`     | the plain path: one packet per syscall                         |
//! | `workers`   | the forwarding threads: started, stopped and joined together   |
//! | `duty`      | which thread reads the TUN device: light or bulk traffic       |
//!
//! The TUN device gets `<subnet network>/<network prefix>` (so the kernel
//! routes the whole overlay network into it) and MTU = external MTU − 28.
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

mod coalesce;
pub mod decide;
mod duty;
mod io;
mod offload;
pub mod packet;
mod plain;
pub mod stats;
pub mod table;
mod workers;

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use quinn_udp::UdpSocketState;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Notify;
use tracing::{info, warn};
use tun_rs::SyncDevice;
use weft_types::UdpOptions;

use crate::converge;
use crate::error::{chain, Error, Result};
use crate::iface::ExternalInterface;
use crate::netlink::Netlink;
use crate::peer::Peer;
use crate::report::{ObjectKind, Report, UdpCounters};
use io::{Exit, Shared};
use table::{RouteTable, Snapshot};
use workers::{Queue, Workers};

/// IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;
/// flanneld's TUN device name.
pub const TUN_NAME: &str = "flannel0";
/// Socket buffer size asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root).
const SOCKET_BUFFER: usize = 8 << 20;
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// Threads that ran this long count as healthy: the backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

pub(crate) struct UdpBackend {
    nl: Netlink,
    opts: UdpOptions,
    ext: ExternalInterface,
    network: Ipv4Net,
    table: Arc<RouteTable>,
    counters: Arc<UdpCounters>,
    sockets: Vec<Arc<UdpSocket>>,
    states: Vec<Option<Arc<UdpSocketState>>>,
    subnet: Option<Ipv4Net>,
    /// The attached TUN queues (empty: none attached).
    tun: Vec<Arc<SyncDevice>>,
    vnet_hdr: bool,
    /// The device's index as last seen.
    index: Option<u32>,
    workers: Option<Workers>,
    restart_delay: Duration,
    restart_at: Option<Instant>,
    started_at: Instant,
    wake: Arc<Notify>,
}

/// Forwarding queues: `Queues` if set, else one per two cores with
/// offloads (at most 4), else one.
fn queue_count(offload: bool, configured: Option<u32>) -> usize {
    if let Some(q) = configured {
        return q.max(1) as usize;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if offload && cores >= 4 {
        (cores / 2).min(4)
    } else {
        1
    }
}

/// Ask for a large socket buffer: `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` as root,
/// else within the sysctl limits. A smaller buffer only costs speed, so a
/// refusal is logged, not fatal.
fn force_buffer(sock: &Socket, opt: libc::c_int) {
    let size = SOCKET_BUFFER as libc::c_int;
    // SAFETY: setsockopt on a valid fd with a pointer to a c_int that
    // outlives the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return;
    }
    let forced = std::io::Error::last_os_error();
    let fallback = if opt == libc::SO_RCVBUFFORCE {
        sock.set_recv_buffer_size(SOCKET_BUFFER)
    } else {
        sock.set_send_buffer_size(SOCKET_BUFFER)
    };
    if let Err(e) = fallback {
        warn!("cannot enlarge the UDP socket buffer ({forced}; then {e}); forwarding may be slower");
    }
}

fn bind(addr: SocketAddrV4, reuse_port: bool) -> Result<UdpSocket> {
    let fail = |source: std::io::Error| Error::UdpSocket { addr, source };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(fail)?;
    }
    force_buffer(&sock, libc::SO_RCVBUFFORCE);
    force_buffer(&sock, libc::SO_SNDBUFFORCE);
    sock.bind(&SocketAddr::V4(addr).into()).map_err(fail)?;
    sock.set_nonblocking(true).map_err(fail)?;
    Ok(sock.into())
}

impl UdpBackend {
    /// Bind the UDP port(s) and, when `flannel0` is left from an earlier
    /// run, attach to it at once; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: UdpOptions,
        ext: ExternalInterface,
        network: Ipv4Net,
        wake: Arc<Notify>,
    ) -> Result<UdpBackend> {
        let queues = queue_count(opts.offload, opts.queues);
        let addr = SocketAddrV4::new(ext.public_ip, opts.port);
        let sockets = (0..queues).map(|_| bind(addr, queues > 1).map(Arc::new)).collect::<Result<Vec<_>>>()?;
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
        let mut b = UdpBackend {
            nl,
            opts,
            ext,
            network,
            table: RouteTable::new(),
            counters: Arc::new(UdpCounters {
                stats: Arc::default(),
                restarts: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            }),
            sockets,
            states,
            subnet: None,
            tun: Vec::new(),
            vnet_hdr: false,
            index: None,
            workers: None,
            restart_delay: RESTART_FIRST,
            restart_at: None,
            started_at: Instant::now(),
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
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(UDP_OVERHEAD))
    }

    pub(crate) fn device(&self) -> (&str, Option<u32>) {
        (TUN_NAME, self.index)
    }

    /// Create the TUN device (or attach to it), persistent, one file
    /// descriptor per queue, non-blocking.
    fn open_queues(&mut self) -> Result<()> {
        let n = self.sockets.len();
        let first = tun_rs::DeviceBuilder::new()
            .name(TUN_NAME)
            .mtu(self.mtu().min(u32::from(u16::MAX)) as u16)
            .offload(self.opts.offload)
            .multi_queue(n > 1)
            .build_sync()
            .map_err(|e| Error::tun(format!("creating or attaching {TUN_NAME}"), e))?;
        first.persist().map_err(|e| Error::tun(format!("making {TUN_NAME} persistent"), e))?;
        self.vnet_hdr = self.opts.offload && (first.tcp_gso() || first.udp_gso());
        let mut devices = vec![Arc::new(first)];
        for _ in 1..n {
            let q =
                devices[0].try_clone().map_err(|e| Error::tun(format!("opening another queue of {TUN_NAME}"), e))?;
            devices.push(Arc::new(q));
        }
        for d in &devices {
            d.set_nonblocking(true).map_err(|e| Error::tun(format!("making {TUN_NAME} non-blocking"), e))?;
        }
        self.tun = devices;
        Ok(())
    }

    fn stop_workers(&mut self) {
        if let Some(mut w) = self.workers.take() {
            w.stop_all();
        }
    }

    /// Give up the TUN queues (after stopping the threads that use them).
    fn detach(&mut self) {
        self.stop_workers();
        self.tun.clear();
    }

    /// Remove stale routes of an earlier kernel-backend run and set up the
    /// device. Forwarding starts at the first reconcile, once the route
    /// table is loaded.
    pub(crate) async fn start(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.subnet = Some(subnet);
        let o =
            converge::routes(&self.nl, self.network, &BTreeMap::new(), &BTreeMap::new(), converge::Pass::Full).await?;
        if let Some((dst, e)) = o.failed.first() {
            warn!("could not remove the stale route to {dst}: {}", chain(e));
        }
        self.ensure_device(subnet, &mut Report::default()).await.map(|_| ())
    }

    /// Make `flannel0` exist and be attached, up, with its MTU, address and
    /// the route of the whole network; returns its index.
    async fn ensure_device(&mut self, subnet: Ipv4Net, report: &mut Report) -> Result<u32> {
        let known = self.index.is_some();
        let link = self.nl.link_by_name(TUN_NAME).await?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("tun") {
                return Err(Error::Unsupported {
                    backend: "udp",
                    reason: format!("{TUN_NAME} exists but is not a TUN device; remove it"),
                });
            }
        }
        let replaced = match (&link, self.index) {
            (None, _) => true,
            (Some(l), Some(i)) => l.index != i,
            (Some(_), None) => false,
        };
        if replaced {
            if known {
                warn!(device = TUN_NAME, "TUN device is missing or was replaced; recreating it");
                report.repaired(ObjectKind::Device, 1);
                // Threads still running lost their device before they could
                // notice it themselves (the link event won the race): they
                // are restarted on the new device and counted the same way.
                if self.workers.is_some() {
                    self.count_restarts(0..self.tun.len(), report);
                }
            }
            self.detach();
        }
        let fresh = self.tun.is_empty();
        if fresh {
            self.open_queues()?;
        }
        let link = self.nl.link_by_name(TUN_NAME).await?.ok_or(Error::Vanished { device: TUN_NAME.into() })?;
        let same = known && !replaced;
        let mtu = self.mtu();
        if !link.up || link.mtu != mtu {
            if same {
                warn!(
                    device = TUN_NAME,
                    up = link.up,
                    mtu = link.mtu,
                    "TUN device was set down or its MTU changed; restoring it"
                );
                report.repaired(ObjectKind::Device, 1);
            }
            self.nl.set_up_with_mtu(link.index, mtu).await?;
        }
        let addr = Ipv4Net::new(subnet.network(), self.network.prefix_len()).expect("network prefix is valid");
        if self.nl.ensure_only_address(link.index, addr).await? && same {
            warn!(device = TUN_NAME, %addr, "TUN device lost its address; restoring it");
            report.repaired(ObjectKind::Address, 1);
        }
        if !self.nl.has_route(self.network, link.index).await? {
            // The kernel adds the network's route for the address; adding
            // the address again brings it back as flanneld has it.
            if same {
                warn!(device = TUN_NAME, network = %self.network, "the route of the network was removed; restoring it");
                report.repaired(ObjectKind::Route, 1);
            }
            self.nl.delete_address(link.index, addr).await?;
            self.nl.replace_address(link.index, addr).await?;
        }
        if fresh || replaced {
            // The ICMP errors weft writes into the device come from the
            // device's own address; without accept_local the kernel drops
            // them as martians.
            let sysctl = format!("/proc/sys/net/ipv4/conf/{TUN_NAME}/accept_local");
            std::fs::write(&sysctl, "1").map_err(|e| Error::tun(format!("setting {sysctl}"), e))?;
        }
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// Swap in the route table for `peers`, check the device, and keep the
    /// forwarding threads running.
    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report) {
        report.peers_desired = peers.len();
        let snapshot = Snapshot::new(peers, self.opts.port);
        let before: std::collections::BTreeSet<_> = self.table.load().routes().into_iter().collect();
        let after: std::collections::BTreeSet<_> = snapshot.routes().into_iter().collect();
        report.changes += before.symmetric_difference(&after).count();
        self.table.store(snapshot);

        let Some(subnet) = self.subnet else {
            report.problem("udp backend not started");
            return;
        };
        self.reap_workers(report);
        if let Err(e) = self.ensure_device(subnet, report).await {
            report.problem(format!("{TUN_NAME} missing or wrong, repairing: {}", chain(&e)));
            return;
        }
        if self.workers.is_none() {
            match self.restart_at {
                Some(at) if Instant::now() < at => {
                    report.problem("udp forwarding threads stopped, restarting after a backoff");
                    return;
                }
                _ => {}
            }
            if let Err(e) = self.start_workers(subnet) {
                report.problem(format!("cannot start the udp forwarding threads: {}", chain(&e)));
                self.schedule_restart();
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
        self.schedule_restart();
    }

    /// The threads of `queues` are restarted: counted per queue and as
    /// repairs.
    fn count_restarts(&self, queues: impl IntoIterator<Item = usize>, report: &mut Report) {
        for q in queues {
            self.counters.restarts[q].fetch_add(1, Ordering::Relaxed);
            report.repaired(ObjectKind::Thread, 1);
        }
    }

    fn schedule_restart(&mut self) {
        if self.started_at.elapsed() >= HEALTHY_RUN {
            self.restart_delay = RESTART_FIRST;
        }
        self.restart_at = Some(Instant::now() + self.restart_delay);
        self.restart_delay = (self.restart_delay * 2).min(RESTART_MAX);
    }

    fn start_workers(&mut self, subnet: Ipv4Net) -> Result<()> {
        let shared = Shared {
            table: self.table.clone(),
            stats: self.counters.stats.clone(),
            local: subnet,
            icmp_from: subnet.network(),
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
        self.workers = Some(Workers::start(&queues, &shared, mtu, &self.wake)?);
        self.started_at = Instant::now();
        self.restart_at = None;
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
            "udp backend forwarding"
        );
        Ok(())
    }

    /// When a stopped set of threads is due to be restarted.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.restart_at.filter(|_| self.workers.is_none())
    }

    /// Problems visible without a reconcile pass: threads that ended.
    pub(crate) fn live_problems(&self, out: &mut Vec<String>) {
        if let Some(w) = &self.workers {
            if !w.all_alive() {
                out.push("a udp forwarding thread ended, restarting".into());
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
