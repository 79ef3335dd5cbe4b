//! The udp backend: pod packets leave the kernel through a TUN device
//! (`flannel0`), travel to the peer node as the payload of a UDP datagram
//! (port 8285, nothing added: flanneld's wire format), and enter the peer's
//! TUN device. All in userspace, built for speed:
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `workers`  | which threads run on each queue, at which priority             |
//! | `offload`  | the offload path: TUN->UDP and UDP->TUN steps, batched         |
//! | `plain`    | the plain path: one packet per syscall                         |
//! | `shared`   | what the threads share: route table, counters, own subnets     |
//! | `icmp`     | ICMP errors written back into the TUN device, rate-limited     |
//!
//! The device, sockets, threads and their supervision are the userspace
//! substrate's ([`super::userspace`]), shared with the wireguard backend.
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

mod icmp;
pub(crate) mod offload;
mod plain;
pub(crate) mod shared;
mod workers;

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::Notify;
use tracing::{info, warn};
use weft_types::metrics::{Kind, Writer};
use weft_types::{BackendKind, UdpOptions};

use futures::future::BoxFuture;

use super::userspace::socket::queue_count;
use super::userspace::{DeviceSpec, Forwarder, RouteBy, Running, Wire};
use super::{Backend, UserspaceBackend};
use crate::error::{chain, Error, Result};
use crate::forward::decide::Arrival;
use crate::forward::stats::Stats;
use crate::forward::table::{RouteTable, Snapshot};
use crate::kernel::Netlink;
use crate::model::{DualStack, Peer, TUN_NAME};
use crate::report::{BackendMetrics, Problem, Report};
use crate::sync::converge;
use crate::sync::iface::ExternalInterface;
use shared::Shared;

/// IPv4 (20) + UDP (8).
pub(crate) const UDP_OVERHEAD: u32 = 28;

/// IPv6 (40) + UDP (8): the overhead over an IPv6 underlay.
pub(crate) const UDP6_OVERHEAD: u32 = 48;

pub(crate) struct UdpBackend {
    nl: Netlink,
    opts: UdpOptions,
    ext: ExternalInterface,
    /// The pod network (no IPv4 part on IPv6-only networks, an IPv6 part
    /// on dual-stack and IPv6-only networks).
    network: DualStack,
    /// This node's `PublicIPv6` when pod IPv6 travels over an IPv6
    /// underlay (a network with IPv6, and the node has one).
    underlay6: Option<Ipv6Addr>,
    table: Arc<RouteTable>,
    stats: Arc<Stats>,
    /// `flannel0`, its queues and sockets, the threads.
    fwd: Forwarder,
    /// Whether `start` ran: the subnets below are this node's.
    started: bool,
    subnets: DualStack,
    wake: Arc<Notify>,
}

impl UdpBackend {
    /// Bind the UDP port(s) and, when `flannel0` is left from an earlier
    /// run, attach to it at once; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: UdpOptions,
        ext: ExternalInterface,
        network: DualStack,
        wake: Arc<Notify>,
    ) -> Result<UdpBackend> {
        // With `LatencyLane`, one more queue after the bulk ones: the lane.
        let queues = queue_count(opts.offload, opts.queues);
        // On a dual-stack network with a public IPv6 address, one socket per
        // queue for both families, on [::]; else on the IPv4 address (the public one where it is the host's).
        let underlay6 = ext.local_ipv6.filter(|_| network.v6.is_some());
        let addr = match (underlay6, ext.local_ip) {
            (Some(_), _) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, opts.port)),
            (None, Some(ip)) => SocketAddr::V4(SocketAddrV4::new(ip, opts.port)),
            (None, None) => return Err(Error::NoAddress6 { iface: ext.name.clone() }),
        };
        let overhead = if underlay6.is_some() { UDP6_OVERHEAD } else { UDP_OVERHEAD };
        let spec = DeviceSpec {
            name: TUN_NAME,
            backend: BackendKind::Udp,
            mtu: opts.mtu.unwrap_or(ext.mtu.saturating_sub(overhead)),
            offload: opts.offload,
            route_by: RouteBy::AddressPrefix,
            accept_local: true,
            not_tun_hint: "",
        };
        let fwd = Forwarder::prepare(&nl, spec, addr, queues, opts.latency_lane.then_some(Wire::Plain)).await?;
        Ok(UdpBackend {
            nl,
            opts,
            ext,
            network,
            underlay6,
            table: RouteTable::new(),
            stats: Arc::default(),
            fwd,
            started: false,
            subnets: DualStack::default(),
            wake,
        })
    }

    /// Remove stale routes of an earlier kernel-backend run and set up the
    /// device. Forwarding starts at the first reconcile, once the route
    /// table is loaded.
    pub(crate) async fn start(&mut self, subnets: DualStack) -> Result<()> {
        self.subnets = subnets.within(self.network);
        self.started = true;
        let o =
            converge::routes(&self.nl, &self.network.both(), &BTreeMap::new(), &BTreeMap::new(), converge::Pass::Full)
                .await?;
        if let Some((dst, e)) = o.failed.first() {
            warn!("could not remove the stale route to {dst}: {}", chain(e));
        }
        self.ensure_device(&mut Report::default()).await
    }

    /// `flannel0` with `<subnet network>/<network prefix>` of each family,
    /// so that the kernel routes the whole network into it.
    async fn ensure_device(&mut self, report: &mut Report) -> Result<()> {
        let mut addrs: Vec<IpNet> = Vec::new();
        if let (Some(n4), Some(s4)) = (self.network.v4, self.subnets.v4) {
            addrs.push(Ipv4Net::new(s4.network(), n4.prefix_len()).expect("network prefix is valid").into());
        }
        if let (Some(n6), Some(s6)) = (self.network.v6, self.subnets.v6) {
            addrs.push(Ipv6Net::new(s6.network(), n6.prefix_len()).expect("network prefix is valid").into());
        }
        let networks: Vec<IpNet> = addrs.iter().map(IpNet::trunc).collect();
        self.fwd.ensure_device(&self.nl, &addrs, &networks, report).await.map(|_| ())
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
        self.fwd.reap(report);
        if let Err(e) = self.ensure_device(report).await {
            report.problem(Problem::Device { name: TUN_NAME.into(), error: chain(&e) });
            return;
        }
        let (mtu, vnet_hdr, lane) = (self.fwd.mtu() as usize, self.fwd.vnet_hdr(), self.fwd.has_lane());
        // What the threads share is made only when they are started.
        let (table, stats, subnets, ext, underlay6) =
            (&self.table, &self.stats, self.subnets, &self.ext, self.underlay6);
        let (realtime, wake) = (self.opts.realtime_threads, &self.wake);
        let running = self.fwd.keep_running(report, |queues| {
            let shared = Shared {
                table: table.clone(),
                stats: stats.clone(),
                local: subnets,
                icmp_from: subnets.v4.map(|s| s.network()),
                icmp_from6: subnets.v6.map(|s| s.network()),
                send_from: underlay6.map(|v6| (ext.local_ip, v6)),
                arrival: Arrival { iface: ext.index, v4: ext.local_ip, v6: underlay6 },
                vnet_hdr,
            };
            let lane = lane.then(|| queues.len() - 1);
            workers::start(queues, &shared, mtu, realtime, lane, wake)
        });
        match running {
            Running::No => return,
            Running::Started => self.log_started(),
            Running::Already => {}
        }
        report.peers_programmed = peers.len();
    }

    fn log_started(&self) {
        let (gso, gro) = self.fwd.segments();
        if self.opts.offload && !self.fwd.vnet_hdr() {
            warn!("the kernel refused TUN offloads; forwarding one packet per syscall");
        }
        info!(
            device = TUN_NAME,
            mtu = self.mtu(),
            port = self.opts.port,
            queues = self.fwd.queue_count(),
            tun_offload = self.fwd.vnet_hdr(),
            udp_gso_segments = gso,
            udp_gro_segments = gro,
            realtime_threads = self.opts.realtime_threads,
            latency_lane = self.fwd.has_lane(),
            ipv6_underlay = self.underlay6.map(|a| a.to_string()).unwrap_or_else(|| "no".into()),
            "udp backend forwarding"
        );
    }
}

/// The udp backend's counters for `/metrics`.
#[derive(Debug)]
struct UdpMetrics {
    stats: Arc<Stats>,
    /// Thread restarts per queue.
    restarts: Arc<Vec<std::sync::atomic::AtomicU64>>,
}

impl BackendMetrics for UdpMetrics {
    fn render(&self, w: &mut Writer<'_>) {
        self.stats.render(w);
        crate::backend::userspace::priority::render_lane_floods("udp", w);
        w.family(
            "weft_udp_thread_restarts_total",
            Kind::Counter,
            "Restarts of a queue's forwarding threads after a persistent error or a panic.",
        );
        for (q, n) in self.restarts.iter().enumerate() {
            w.sample("weft_udp_thread_restarts_total", &[("queue", &q.to_string())], n.load(Ordering::Relaxed) as f64);
        }
    }
}

impl Backend for UdpBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Udp
    }

    fn mtu(&self) -> u32 {
        self.fwd.mtu()
    }

    fn devices(&self) -> Vec<(String, Option<u32>)> {
        vec![(TUN_NAME.to_string(), self.fwd.index())]
    }

    fn start(&mut self, subnets: DualStack) -> BoxFuture<'_, Result<()>> {
        Box::pin(UdpBackend::start(self, subnets))
    }
}

impl UserspaceBackend for UdpBackend {
    fn reconcile<'a>(&'a mut self, peers: &'a [Peer], report: &'a mut Report) -> BoxFuture<'a, ()> {
        Box::pin(UdpBackend::reconcile(self, peers, report))
    }

    /// When a stopped set of threads is due to be restarted.
    fn next_wake(&self) -> Option<Instant> {
        self.fwd.next_wake()
    }

    /// Problems visible without a reconcile pass: threads that ended.
    fn live_problems(&self, out: &mut Vec<Problem>) {
        if self.fwd.thread_ended() {
            out.push(Problem::ThreadEnded { backend: BackendKind::Udp });
        }
    }

    fn metrics(&self) -> Arc<dyn BackendMetrics> {
        Arc::new(UdpMetrics { stats: self.stats.clone(), restarts: self.fwd.restarts().clone() })
    }

    /// Stop and join the threads; the device stays (it is persistent).
    fn shutdown(&mut self) {
        self.fwd.shutdown();
    }
}
