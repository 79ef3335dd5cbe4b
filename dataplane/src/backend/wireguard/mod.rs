//! The wireguard backend: flanneld's `wireguard` type in userspace. Pod
//! packets leave the kernel through a TUN device named as flanneld names
//! its kernel WireGuard device (`flannel-wg`), are encrypted with the
//! WireGuard protocol (weft's [`crate::forward::noise`]: handshakes,
//! sessions, cookies, rekeying, the replay window) for the peer whose AllowedIPs (its
//! subnet) hold the destination, and travel in UDP to the peer's
//! `PublicIP:Port`, where any standard WireGuard (the kernel's, `wireguard-go`,
//! weft) decrypts them. No kernel module is needed.
//!
//! | module    | what it holds                                                        |
//! |-----------|----------------------------------------------------------------------|
//! | `key`     | the node's private key file (`/run/flannel/wgkey`), made once, kept  |
//! | `plan`    | each device's peers and endpoints by `Mode` (pure, table-tested)    |
//! | `tunnel`  | one device: its peers' protocol states, on the substrate's forwarder |
//! | `state`   | what the threads share: the peer set, the key, the counters         |
//! | `threads` | which threads run on each queue, and the handshake thread          |
//! | `fast`    | the offload path: TUN super-packets, UDP GSO and GRO, batches       |
//! | `plain`   | the path without offloads: one packet per system call               |
//! | `handshake` | the handshake thread: handshake messages, timers, the limiter     |
//! | `probe`   | the handshakes weft starts on its own, and their backoff            |
//! | `session` | a peer's protocol state, made when used, put to rest when quiet      |
//! | `keep`    | the sessions kept in systemd's descriptor store across restarts     |
//! | `uapi`    | WireGuard's userspace API socket: `wg show` reads the peers         |
//!
//! The device, sockets, threads and their supervision are the userspace
//! substrate's ([`super::userspace`]), shared with the udp backend.
//!
//! The pure part (the peer table by AllowedIPs and by receiver index, the
//! decisions per datagram) is [`crate::forward::wg`].
//!
//! As flanneld: the device gets `<subnet network>/32` and one scope-link
//! route for the whole network, MTU = external MTU − 80 (IPv6 outer
//! header, UDP and WireGuard's 32 bytes: room for either underlay), the
//! lease publishes `{"PublicKey": <base64>, "Port": <ListenPort>}`, and
//! every peer gets the lease's `PublicIP:Port`, its subnet as AllowedIPs,
//! `PersistentKeepaliveInterval` and `PSK`. On a dual-stack network
//! (flanneld's default `Mode`, `separate`) a second device, `flannel-wg-v6`,
//! carries the IPv6 pods over the IPv6 underlay on `ListenPortV6`, with
//! the same key, `<v6 subnet network>/128` and `BackendV6Data`. Beyond flanneld: weft starts
//! a handshake with every peer when its lease appears (and with an idle
//! one now and then, `probe`), so `/readyz` can say which peer does not
//! answer. As WireGuard does, a peer's endpoint follows the source of its
//! authenticated messages (a node behind NAT), and `wg show` reads the
//! devices through WireGuard's userspace API (`uapi`).
//!
//! Supervision as the udp backend's: the device is checked on every pass
//! (recreated if deleted, its address, MTU and route put back), and a
//! thread that ended gets all three restarted after a backoff.

mod fast;
mod handshake;
mod keep;
mod key;
mod plain;
mod plan;
mod probe;
mod session;
mod state;
mod threads;
mod tunnel;
mod uapi;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::Notify;
use tracing::{info, warn};
use weft_types::metrics::Writer;
use weft_types::{BackendKind, WireguardMode, WireguardOptions};

use futures::future::BoxFuture;

use super::userspace::socket;
use super::{Backend, UserspaceBackend};
use crate::error::{chain, Error, Result};
use crate::forward::wg::Key;
use crate::kernel::Netlink;
use crate::model::{DualStack, Peer, WG6_NAME, WG_NAME};
use crate::report::{BackendMetrics, Problem, Report};
use crate::sync::iface::ExternalInterface;
use plan::Layout;
use state::WgShared;
use tunnel::Tunnel;

/// IPv6 (40) + UDP (8) + WireGuard (32): flanneld's overhead, whichever
/// family the underlay is.
pub(crate) const WG_OVERHEAD: u32 = 80;

pub(crate) struct WgBackend {
    nl: Netlink,
    opts: WireguardOptions,
    network: Ipv4Net,
    network6: Option<Ipv6Net>,
    public_key: Key,
    mtu: u32,
    /// `flannel-wg` (IPv4 pods over the IPv4 underlay).
    v4: Tunnel,
    /// `flannel-wg-v6` (IPv6 pods over the IPv6 underlay), on dual-stack
    /// networks.
    v6: Option<Tunnel>,
    /// This node's subnets, once started.
    subnets: DualStack,
    /// Leases whose key is refused, with why (said once each).
    refused: BTreeMap<IpNet, &'static str>,
    /// Each lease key's verdict (`key::refusal`, a Diffie-Hellman), kept
    /// for the keys of the last pass: a pass over 65,000 peers would
    /// otherwise spend seconds checking keys it checked before.
    key_checks: HashMap<Key, Option<&'static str>>,
    wake: Arc<Notify>,
    /// Where the userspace API sockets go (`None`: not served).
    uapi_dir: Option<PathBuf>,
    /// The sockets served, one per device.
    uapi: Vec<uapi::Uapi>,
}

impl WgBackend {
    /// Read (or make) the node's key, bind the UDP port(s) and re-attach
    /// devices left by an earlier run; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: WireguardOptions,
        ext: ExternalInterface,
        network: DualStack,
        wake: Arc<Notify>,
        uapi_dir: Option<PathBuf>,
    ) -> Result<WgBackend> {
        let network6 = network.v6;
        // The config refuses an IPv6-only wireguard network; this is the
        // same rule for a caller that did not parse one.
        let (Some(network), Some(local_ip)) = (network.v4, ext.local_ip) else {
            return Err(Error::Unsupported {
                backend: "wireguard",
                reason: "IPv6-only networks (EnableIPv4 false) are not supported yet; use udp, vxlan or host-gw".into(),
            });
        };
        let private = key::load_or_create(&key::key_file())?;
        let mtu = opts.mtu.unwrap_or(ext.mtu.saturating_sub(WG_OVERHEAD));
        let separate = opts.mode == WireguardMode::Separate;
        // One device for both families (auto, ipv4, ipv6) on a dual-stack
        // network sends to IPv6 endpoints too: one socket for both, on [::].
        let bind4 = if !separate && network6.is_some() {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, opts.listen_port, 0, 0))
        } else {
            SocketAddr::V4(SocketAddrV4::new(local_ip, opts.listen_port))
        };
        if opts.mode == WireguardMode::Ipv6 && ext.public_ipv6.is_none() {
            return Err(Error::Unsupported {
                backend: "wireguard",
                reason: "Mode ipv6 reaches every peer over IPv6, and this node has no public IPv6 address; give the interface one or pass --public-ipv6".into(),
            });
        }
        let queues = (socket::queue_count(true, opts.queues), opts.latency_lane);
        let v4 = Tunnel::prepare(&nl, WG_NAME, bind4, mtu, queues, &private).await?;
        let v6 = match network6.filter(|_| separate) {
            None => None,
            Some(_) => {
                let ip6 = ext.local_ipv6.ok_or_else(|| Error::Unsupported {
                    backend: "wireguard",
                    reason: "IPv6 pods travel over the IPv6 underlay, and this node has no public IPv6 address; give the interface one or pass --public-ipv6".into(),
                })?;
                let bind6 = SocketAddr::V6(SocketAddrV6::new(ip6, opts.listen_port_v6, 0, 0));
                Some(Tunnel::prepare(&nl, WG6_NAME, bind6, mtu, queues, &private).await?)
            }
        };
        Ok(WgBackend {
            nl,
            public_key: private.public(),
            opts,
            network,
            network6,
            mtu,
            v4,
            v6,
            subnets: DualStack::default(),
            refused: BTreeMap::new(),
            key_checks: HashMap::new(),
            wake,
            uapi_dir,
            uapi: Vec::new(),
        })
    }

    fn tunnels(&self) -> impl Iterator<Item = &Tunnel> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }

    /// Set up the device(s); forwarding starts at the first reconcile.
    pub(crate) async fn start(&mut self, subnets: DualStack) -> Result<()> {
        self.subnets = subnets.within(DualStack::new(Some(self.network), self.network6));
        self.ensure_devices(&mut Report::default()).await?;
        self.serve_uapi();
        Ok(())
    }

    /// The userspace API for each device, so `wg show` lists the peers; a
    /// socket that cannot be served is said (forwarding goes on without).
    fn serve_uapi(&mut self) {
        let Some(dir) = self.uapi_dir.clone() else { return };
        let (psk, keepalive) = (self.opts.psk, self.opts.persistent_keepalive);
        let devices: Vec<uapi::Device> = self
            .tunnels()
            .map(|t| uapi::Device { name: t.name(), shared: t.shared.clone(), port: t.port, psk, keepalive })
            .collect();
        for dev in devices {
            let name = dev.name;
            match uapi::Uapi::serve(&dir, dev) {
                Ok(u) => self.uapi.push(u),
                Err(e) => warn!(
                    device = name,
                    dir = %dir.display(),
                    "not serving the WireGuard userspace API, so wg show cannot list this device: {e}"
                ),
            }
        }
    }

    async fn ensure_devices(&mut self, report: &mut Report) -> Result<()> {
        let Some(subnet) = self.subnets.v4 else { return Ok(()) };
        let mut addrs = vec![IpNet::V4(Ipv4Net::new(subnet.network(), 32).expect("/32 is valid"))];
        let mut networks = vec![IpNet::V4(self.network)];
        let v6 = match (self.subnets.v6, self.network6) {
            (Some(s6), Some(n6)) => {
                Some((IpNet::V6(Ipv6Net::new(s6.network(), 128).expect("/128 is valid")), IpNet::V6(n6)))
            }
            _ => None,
        };
        match (&mut self.v6, v6) {
            // separate: the IPv6 pods have a device of their own.
            (Some(t), Some((addr, network))) => {
                t.fwd.ensure_device(&self.nl, &[addr], &[network], report).await?;
            }
            // one device for both families.
            (None, Some((addr, network))) => {
                addrs.push(addr);
                networks.push(network);
            }
            _ => {}
        }
        self.v4.fwd.ensure_device(&self.nl, &addrs, &networks, report).await?;
        Ok(())
    }

    /// Swap in the peers, check the devices, keep the threads running.
    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report) {
        let layout = Layout {
            mode: self.opts.mode,
            port: self.opts.listen_port,
            port6: self.opts.listen_port_v6,
            dual_stack: self.network6.is_some(),
        };
        let (own, own_public) = (&self.v4.shared.private, &self.public_key);
        let (checks, mut used) = (&mut self.key_checks, HashSet::new());
        let plan = plan::plan(peers, &layout, |k| {
            used.insert(*k);
            *checks.entry(*k).or_insert_with(|| key::refusal(own, own_public, k))
        });
        checks.retain(|k, _| used.contains(k));
        self.note_refused(plan.refused);
        let unreachable = plan.unreachable;
        self.v4.set_peers(plan.v4, &self.opts, report);
        if let (Some(t), Some(v6)) = (&mut self.v6, plan.v6) {
            t.set_peers(v6, &self.opts, report);
        }
        if self.subnets.v4.is_none() {
            report.problem(Problem::NotStarted { backend: BackendKind::Wireguard });
            return;
        }
        self.v4.fwd.reap(report);
        if let Some(t) = &mut self.v6 {
            t.fwd.reap(report);
        }
        if let Err(e) = self.ensure_devices(report).await {
            report.problem(Problem::Device { name: WG_NAME.into(), error: chain(&e) });
            return;
        }
        let mut running = self.v4.keep_running(&self.opts, &self.wake, report);
        if let Some(t) = &mut self.v6 {
            running &= t.keep_running(&self.opts, &self.wake, report);
        }
        if running {
            report.peers_programmed = peers.len() - unreachable.len() - self.refused.len();
            if let Some(first) = unreachable.first() {
                report.problem(Problem::Peers {
                    failed: unreachable.len(),
                    of: peers.len(),
                    first: format!("{first}: its lease has no PublicIPv6, and Mode ipv6 reaches peers over IPv6"),
                });
            }
        }
    }

    /// Say once which peers' keys are refused, and when a refusal ends; the
    /// count is a metric. A refused peer is another node's fault: it does
    /// not make this node not ready.
    fn note_refused(&mut self, refused: Vec<(IpNet, &'static str)>) {
        let now: BTreeMap<IpNet, &'static str> = refused.into_iter().collect();
        for (subnet, why) in &now {
            if self.refused.get(subnet) != Some(why) {
                warn!(%subnet, "refusing the wireguard lease of {subnet}: {why}; fix or remove that lease");
            }
        }
        for subnet in self.refused.keys().filter(|s| !now.contains_key(s)) {
            info!(%subnet, "the wireguard lease of {subnet} is no longer refused");
        }
        self.v4.shared.stats.refused_peers.store(now.len() as u64, Ordering::Relaxed);
        self.refused = now;
    }
}

/// The wireguard counters for `/metrics`, both devices' summed, with each
/// device's thread restarts per queue.
struct WgMetrics(Vec<(Arc<WgShared>, state::Restarts)>);

impl std::fmt::Debug for WgMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WgMetrics")
    }
}

impl BackendMetrics for WgMetrics {
    fn render(&self, w: &mut Writer<'_>) {
        state::render(&self.0, w);
        super::userspace::priority::render_lane_floods("wireguard", w);
    }
}

impl Backend for WgBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wireguard
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    /// `BackendData` as flanneld writes it: the public key and the port.
    fn backend_data(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "PublicKey": self.public_key.to_base64(), "Port": self.opts.listen_port }))
    }

    /// `BackendV6Data` on dual-stack networks: the same key, and the IPv6
    /// device's port (`separate`) or the one device's.
    fn backend_v6_data(&self) -> Option<serde_json::Value> {
        let port = if self.v6.is_some() { self.opts.listen_port_v6 } else { self.opts.listen_port };
        self.network6.map(|_| serde_json::json!({ "PublicKey": self.public_key.to_base64(), "Port": port }))
    }

    /// The devices and their indexes as last seen.
    fn devices(&self) -> Vec<(String, Option<u32>)> {
        self.tunnels().map(|t| (t.name().to_string(), t.fwd.index())).collect()
    }

    fn start(&mut self, subnets: DualStack) -> BoxFuture<'_, Result<()>> {
        Box::pin(WgBackend::start(self, subnets))
    }
}

impl UserspaceBackend for WgBackend {
    fn reconcile<'a>(&'a mut self, peers: &'a [Peer], report: &'a mut Report) -> BoxFuture<'a, ()> {
        Box::pin(WgBackend::reconcile(self, peers, report))
    }

    /// When a pass is due without any event (a restart of stopped
    /// threads, the end of a new peer's grace period, so that `/readyz`
    /// names it then).
    fn next_wake(&self) -> Option<Instant> {
        self.tunnels().filter_map(Tunnel::next_wake).min()
    }

    /// Problems visible without a pass: a thread that ended, peers whose
    /// handshake has not completed (beyond a grace period) or expired.
    fn live_problems(&self, out: &mut Vec<Problem>) {
        let mut silent = tunnel::Silent::default();
        let (mut ended, mut of) = (false, 0);
        for t in self.tunnels() {
            let (e, n) = t.live_problems(&mut silent);
            ended |= e;
            of += n;
        }
        if ended {
            out.push(Problem::ThreadEnded { backend: BackendKind::Wireguard });
        }
        if let Some((_, first)) = silent.first {
            out.push(Problem::NoHandshake { peers: silent.count, of, first });
        }
    }

    fn metrics(&self) -> Arc<dyn BackendMetrics> {
        Arc::new(WgMetrics(self.tunnels().map(|t| (t.shared.clone(), t.fwd.restarts().clone())).collect()))
    }

    /// Stop and join the threads; the devices stay (they are persistent).
    fn shutdown(&mut self) {
        self.uapi.clear();
        self.v4.shutdown();
        if let Some(t) = &mut self.v6 {
            t.shutdown();
        }
    }
}
