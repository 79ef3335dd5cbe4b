//! The udp backend: pod packets leave the kernel through a TUN device
//! (`flannel0`), travel to the peer node as the payload of a UDP datagram
//! (port 8285, nothing added: flanneld's wire format), and enter the peer's
//! TUN device. All in userspace, built for speed:
//!
//! | module      | what it holds                                              |
//! |-------------|------------------------------------------------------------|
//! | [`packet`]  | checked IPv4 views, TTL handling, ICMP errors (pure)       |
//! | [`table`]   | the LPM route table, swapped lock-free under the threads   |
//! | [`stats`]   | packet, byte and per-reason drop counters                  |
//! | [`offload`] | the offload path: TUN->UDP and UDP->TUN halves, batched     |
//! | [`forward`] | the forwarding threads and the plain one-packet path       |
//!
//! The TUN device gets `<subnet network>/<network prefix>` (so the kernel
//! routes the whole overlay network into it) and MTU = external MTU − 28.

pub mod forward;
pub mod offload;
pub mod packet;
pub mod stats;
pub mod table;

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quinn_udp::UdpSocketState;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};
use weft_subnet::config::UdpOptions;

use crate::converge::{self, Failures};
use crate::error::{Error, Result};
use crate::iface::ExternalInterface;
use crate::netlink::Netlink;
use crate::peer::Peer;
use forward::Shared;
use stats::Stats;
use table::{RouteTable, Snapshot};

/// IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;
/// flanneld's TUN device name.
pub const TUN_NAME: &str = "flannel0";
/// Socket buffer size asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root).
const SOCKET_BUFFER: usize = 8 << 20;

pub struct UdpBackend {
    nl: Netlink,
    opts: UdpOptions,
    ext: ExternalInterface,
    network: Ipv4Net,
    table: Arc<RouteTable>,
    stats: Arc<Stats>,
    sockets: Vec<Arc<UdpSocket>>,
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
    if rc != 0 {
        // Without CAP_NET_ADMIN: ask within the sysctl limits instead.
        let _ = if opt == libc::SO_RCVBUFFORCE {
            sock.set_recv_buffer_size(SOCKET_BUFFER)
        } else {
            sock.set_send_buffer_size(SOCKET_BUFFER)
        };
    }
}

fn bind(addr: SocketAddrV4, reuse_port: bool) -> Result<UdpSocket> {
    let fail = |e: std::io::Error| Error::UdpSocket { addr, reason: e.to_string() };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(fail)?;
    }
    force_buffer(&sock, libc::SO_RCVBUFFORCE);
    force_buffer(&sock, libc::SO_SNDBUFFORCE);
    sock.bind(&SocketAddr::V4(addr).into()).map_err(fail)?;
    Ok(sock.into())
}

impl UdpBackend {
    /// Bind the UDP port(s); nothing on the host changes yet.
    pub fn prepare(nl: Netlink, opts: UdpOptions, ext: ExternalInterface, network: Ipv4Net) -> Result<UdpBackend> {
        let queues = queue_count(opts.offload, opts.queues);
        let addr = SocketAddrV4::new(ext.public_ip, opts.port);
        let sockets = (0..queues).map(|_| bind(addr, queues > 1).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        Ok(UdpBackend { nl, opts, ext, network, table: RouteTable::new(), stats: Arc::new(Stats::default()), sockets })
    }

    pub fn mtu(&self) -> u32 {
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(UDP_OVERHEAD))
    }

    /// The forwarding counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Create the TUN device, address it, and start forwarding.
    pub async fn setup(&mut self, subnet: Ipv4Net) -> Result<()> {
        // Routes of an earlier kernel-backend run are stale now.
        let mut failures = Failures::default();
        converge::routes(&self.nl, self.network, &BTreeMap::new(), &mut failures).await?;
        if let Some(first) = failures.0.first() {
            warn!("could not remove stale routes: {first}");
        }
        let mtu = self.mtu();
        let queues = self.sockets.len();
        let first = tun_rs::DeviceBuilder::new()
            .name(TUN_NAME)
            .mtu(mtu.min(u32::from(u16::MAX)) as u16)
            .offload(self.opts.offload)
            .multi_queue(queues > 1)
            .build_sync()
            .map_err(|e| Error::Tun(format!("creating {TUN_NAME}: {e}")))?;
        let vnet_hdr = self.opts.offload && (first.tcp_gso() || first.udp_gso());
        let mut devices = vec![Arc::new(first)];
        for _ in 1..queues {
            let q =
                devices[0].try_clone().map_err(|e| Error::Tun(format!("opening another queue of {TUN_NAME}: {e}")))?;
            devices.push(Arc::new(q));
        }
        let link = self
            .nl
            .link_by_name(TUN_NAME)
            .await?
            .ok_or_else(|| Error::Tun(format!("{TUN_NAME} vanished after creation")))?;
        let addr = Ipv4Net::new(subnet.network(), self.network.prefix_len()).map_err(|e| Error::Tun(e.to_string()))?;
        for (idx, a) in self.nl.addresses().await? {
            if idx == link.index && a != addr {
                self.nl.delete_address(link.index, a).await?;
            }
        }
        self.nl.replace_address(link.index, addr).await?;
        self.nl.set_up_with_mtu(link.index, mtu).await?;
        // The ICMP errors weft writes into the device come from the device's
        // own address; without accept_local the kernel drops them as martians.
        let sysctl = format!("/proc/sys/net/ipv4/conf/{TUN_NAME}/accept_local");
        std::fs::write(&sysctl, "1").map_err(|e| Error::Tun(format!("setting {sysctl}: {e}")))?;

        let shared = Shared {
            table: self.table.clone(),
            stats: self.stats.clone(),
            local: subnet,
            icmp_from: subnet.network(),
            vnet_hdr,
        };
        let mut gso = 1;
        let mut gro = 1;
        for (q, (dev, sock)) in devices.into_iter().zip(self.sockets.iter()).enumerate() {
            let (tx_shared, rx_shared) = (shared.clone(), shared.clone());
            let (tx_dev, rx_dev) = (dev.clone(), dev);
            let (tx_sock, rx_sock) = (sock.clone(), sock.clone());
            if vnet_hdr {
                let state = Arc::new(
                    UdpSocketState::new((&**sock).into())
                        .map_err(|e| Error::Tun(format!("UDP socket offloads: {e}")))?,
                );
                gso = state.max_gso_segments();
                gro = state.gro_segments();
                let tx_state = state.clone();
                spawn(format!("weft-tx-{q}"), move || {
                    forward::run_tx(tx_dev, tx_sock, tx_state, tx_shared, mtu as usize)
                })?;
                spawn(format!("weft-rx-{q}"), move || forward::run_rx(rx_dev, rx_sock, state, rx_shared))?;
            } else {
                spawn(format!("weft-tx-{q}"), move || forward::tun_to_udp_plain(tx_dev, tx_sock, tx_shared))?;
                spawn(format!("weft-rx-{q}"), move || forward::udp_to_tun_plain(rx_dev, rx_sock, rx_shared))?;
            }
        }
        if self.opts.offload && !vnet_hdr {
            warn!("the kernel refused TUN offloads; forwarding one packet per syscall");
        }
        if vnet_hdr && gso <= 1 {
            warn!("UDP GSO is not available; sending one datagram per packet");
        }
        if vnet_hdr && gro <= 1 {
            warn!("UDP GRO is not available; receiving one datagram per packet");
        }
        info!(
            device = TUN_NAME,
            %addr,
            mtu,
            port = self.opts.port,
            queues,
            tun_offload = vnet_hdr,
            udp_gso_segments = gso,
            udp_gro_segments = gro,
            "udp backend forwarding"
        );
        Ok(())
    }

    /// Swap in a route table for `peers`; returns how many routes changed.
    pub fn reconcile(&mut self, peers: &[Peer]) -> Result<usize> {
        let snapshot = Snapshot::new(peers, self.opts.port);
        let before: std::collections::BTreeSet<_> = self.table.load().routes().into_iter().collect();
        let after: std::collections::BTreeSet<_> = snapshot.routes().into_iter().collect();
        let changes = before.symmetric_difference(&after).count();
        self.table.store(snapshot);
        Ok(changes)
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::Tun(format!("starting thread {name}: {e}")))
}
