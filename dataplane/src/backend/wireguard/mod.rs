//! The wireguard backend: flanneld's `wireguard` type in userspace. Pod
//! packets leave the kernel through a TUN device named as flanneld names
//! its kernel WireGuard device (`flannel-wg`), are encrypted with the
//! WireGuard protocol (boringtun's `noise`: handshakes, sessions, cookies,
//! rekeying, the replay window) for the peer whose AllowedIPs (its
//! subnet) hold the destination, and travel in UDP to the peer's
//! `PublicIP:Port`, where any standard WireGuard (the kernel's, `wireguard-go`,
//! weft) decrypts them. No kernel module is needed.
//!
//! | module    | what it holds                                                        |
//! |-----------|----------------------------------------------------------------------|
//! | `key`     | the node's private key file (`/run/flannel/wgkey`), made once, kept  |
//! | `threads` | the threads (started, stopped together), the peer set, the counters |
//! | `fast`    | the offload path: TUN super-packets, UDP GSO and GRO, batches       |
//! | `plain`   | the path without offloads: one packet per system call               |
//! | `handshake` | the handshake thread: handshake messages, timers, the limiter     |
//!
//! The pure part (the peer table by AllowedIPs and by receiver index, the
//! decisions per datagram) is [`crate::forward::wg`].
//!
//! As flanneld: the device gets `<subnet network>/32` and one scope-link
//! route for the whole network, MTU = external MTU − 80 (IPv6 outer
//! header, UDP and WireGuard's 32 bytes: room for either underlay), the
//! lease publishes `{"PublicKey": <base64>, "Port": <ListenPort>}`, and
//! every peer gets the lease's `PublicIP:Port`, its subnet as AllowedIPs,
//! `PersistentKeepaliveInterval` and `PSK`. Beyond flanneld: weft starts
//! a handshake with every peer at once and again before the session ages
//! out, so `/readyz` can say which peer does not answer.
//!
//! Supervision as the udp backend's: the device is checked on every pass
//! (recreated if deleted, its address, MTU and route put back), and a
//! thread that ended gets all three restarted after a backoff.

mod fast;
mod handshake;
mod key;
mod plain;
mod threads;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use ipnet::{IpNet, Ipv4Net};
use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tracing::{info, warn};
use tun_rs::SyncDevice;
use weft_types::metrics::Writer;
use weft_types::{BackendKind, WireguardOptions};

use super::udp::restart::Restart;
use super::udp::shared::Exit;
use super::udp::socket;
use crate::error::{chain, Error, Result};
use crate::forward::wg::{Indexes, Key, PeerTable, WgPeer};
use crate::kernel::Netlink;
use crate::model::{Peer, WG_NAME};
use crate::report::{BackendMetrics, ObjectKind, Problem, Report};
use crate::sync::device;
use crate::sync::iface::ExternalInterface;
use threads::{PeerSet, PeerState, Threads, WgShared};

/// IPv6 (40) + UDP (8) + WireGuard (32): flanneld's overhead, whichever
/// family the underlay is.
pub(crate) const WG_OVERHEAD: u32 = 80;

/// How long a new peer may take to complete its first handshake before
/// `/readyz` names it.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(10);
/// A session older than this has expired (WireGuard's REJECT_AFTER_TIME);
/// weft renews it at 120 s, so a peer past it has stopped answering.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

pub(crate) struct WgBackend {
    nl: Netlink,
    opts: WireguardOptions,
    ext: ExternalInterface,
    network: Ipv4Net,
    public_key: Key,
    shared: Arc<WgShared>,
    sock: Arc<UdpSocket>,
    /// The socket's GSO/GRO state (offload path).
    state: Option<Arc<UdpSocketState>>,
    /// Whether `flannel-wg` carries virtio-net headers (offloads on).
    vnet_hdr: bool,
    indexes: Indexes,
    subnet: Option<Ipv4Net>,
    tun: Option<Arc<SyncDevice>>,
    /// The device's index as last seen.
    index: Option<u32>,
    threads: Option<Threads>,
    restart: Restart,
    wake: Arc<Notify>,
}

impl WgBackend {
    /// Read (or make) the node's key, bind the UDP port and re-attach a
    /// `flannel-wg` left by an earlier run; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: Netlink,
        opts: WireguardOptions,
        ext: ExternalInterface,
        network: Ipv4Net,
        wake: Arc<Notify>,
    ) -> Result<WgBackend> {
        let private = key::load_or_create(&key::key_file())?;
        let addr = SocketAddr::V4(SocketAddrV4::new(ext.public_ip, opts.listen_port));
        let sock = Arc::new(socket::bind(addr, false)?);
        // Without GSO/GRO state the backend still works, a packet a call.
        let state = UdpSocketState::new((&*sock).into()).ok().map(Arc::new);
        let mut b = WgBackend {
            nl,
            public_key: private.public(),
            shared: Arc::new(WgShared::new(StaticSecret::from(private.0))),
            opts,
            ext,
            network,
            sock,
            state,
            vnet_hdr: false,
            indexes: Indexes::default(),
            subnet: None,
            tun: None,
            index: None,
            threads: None,
            restart: Restart::new(Instant::now()),
            wake,
        };
        if let Some(link) = b.nl.link_by_name(WG_NAME).await? {
            if link.kind.as_deref() == Some("tun") {
                match b.open_device() {
                    Ok(()) => info!(device = WG_NAME, "re-attached to the TUN device left by the last run"),
                    Err(e) => warn!("cannot re-attach to the existing {WG_NAME} ({}); recreating it later", chain(&e)),
                }
            }
        }
        Ok(b)
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.opts.mtu.unwrap_or(self.ext.mtu.saturating_sub(WG_OVERHEAD))
    }

    pub(crate) fn device(&self) -> (&'static str, Option<u32>) {
        (WG_NAME, self.index)
    }

    /// `BackendData` as flanneld writes it: the public key and the port.
    pub(crate) fn backend_data(&self) -> serde_json::Value {
        serde_json::json!({ "PublicKey": self.public_key.to_base64(), "Port": self.opts.listen_port })
    }

    fn open_device(&mut self) -> Result<()> {
        let dev = tun_rs::DeviceBuilder::new()
            .name(WG_NAME)
            .mtu(self.mtu().min(u32::from(u16::MAX)) as u16)
            .offload(true)
            .build_sync()
            .map_err(|e| Error::tun(format!("creating or attaching {WG_NAME}"), e))?;
        self.vnet_hdr = dev.tcp_gso() || dev.udp_gso();
        dev.persist().map_err(|e| Error::tun(format!("making {WG_NAME} persistent"), e))?;
        dev.set_nonblocking(true).map_err(|e| Error::tun(format!("making {WG_NAME} non-blocking"), e))?;
        self.tun = Some(Arc::new(dev));
        Ok(())
    }

    fn stop_threads(&mut self) {
        if let Some(mut t) = self.threads.take() {
            t.stop_all();
        }
    }

    /// Set up the device; forwarding starts at the first reconcile.
    pub(crate) async fn start(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.subnet = Some(subnet);
        self.ensure_device(subnet, &mut Report::default()).await.map(|_| ())
    }

    /// Make `flannel-wg` exist and be attached, up, with its MTU, address
    /// and the network's route.
    async fn ensure_device(&mut self, subnet: Ipv4Net, report: &mut Report) -> Result<u32> {
        let known = self.index.is_some();
        let link = self.nl.link_by_name(WG_NAME).await?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("tun") {
                return Err(Error::Unsupported {
                    backend: "wireguard",
                    reason: format!("{WG_NAME} exists but is not weft's TUN device (a kernel WireGuard device left by flanneld?); remove it"),
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
                warn!(device = WG_NAME, "TUN device is missing or was replaced; recreating it");
                report.repaired(ObjectKind::Device, 1);
                if self.threads.is_some() {
                    self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    report.repaired(ObjectKind::Thread, 1);
                }
            }
            self.stop_threads();
            self.tun = None;
        }
        if self.tun.is_none() {
            self.open_device()?;
        }
        let link = self.nl.link_by_name(WG_NAME).await?.ok_or(Error::Vanished { device: WG_NAME.into() })?;
        let same = known && !replaced;
        let addr = IpNet::V4(Ipv4Net::new(subnet.network(), 32).expect("/32 is valid"));
        device::configure(&self.nl, &link, self.mtu(), &[addr], same, "TUN device", report).await?;
        let network = IpNet::V4(self.network);
        if !self.nl.has_route(network, link.index).await? {
            if same {
                warn!(device = WG_NAME, %network, "the route of the network was removed; restoring it");
                report.repaired(ObjectKind::Route, 1);
            }
            self.nl.replace_device_route(network, link.index).await?;
        }
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// Swap in the peers, check the device, keep the threads running.
    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report) {
        self.set_peers(peers, report);
        let Some(subnet) = self.subnet else {
            report.problem(Problem::NotStarted { backend: BackendKind::Wireguard });
            return;
        };
        self.reap_threads(report);
        if let Err(e) = self.ensure_device(subnet, report).await {
            report.problem(Problem::Device { name: WG_NAME.into(), error: chain(&e) });
            return;
        }
        if self.threads.is_none() {
            if !self.restart.due(Instant::now()) {
                report.problem(Problem::ThreadsBackingOff);
                return;
            }
            let dev = self.tun.clone().expect("ensure_device attached the device");
            let offload = self.state.clone().filter(|_| self.vnet_hdr);
            let fast = offload.is_some();
            let mtu = self.mtu() as usize;
            match Threads::start(dev, self.sock.clone(), offload, mtu, self.shared.clone(), &self.wake) {
                Ok(t) => {
                    self.threads = Some(t);
                    self.restart.started(Instant::now());
                    info!(
                        device = WG_NAME,
                        mtu = self.mtu(),
                        port = self.opts.listen_port,
                        public_key = %self.public_key.to_base64(),
                        keepalive_s = self.opts.persistent_keepalive,
                        psk = self.opts.psk.is_some(),
                        offload = fast,
                        udp_gso_segments = self.state.as_ref().map_or(1, |s| s.max_gso_segments()),
                        udp_gro_segments = self.state.as_ref().map_or(1, |s| s.gro_segments()),
                        "wireguard backend forwarding"
                    );
                }
                Err(e) => {
                    report.problem(Problem::ThreadsCannotStart { error: e.to_string() });
                    self.restart.failed(Instant::now());
                    return;
                }
            }
        }
        report.peers_programmed = peers.len();
    }

    /// The new peer set: a peer whose key and endpoint stay keeps its
    /// session; a new key gets a new protocol state; a gone lease takes
    /// its peer with it.
    fn set_peers(&mut self, peers: &[Peer], report: &mut Report) {
        let old = self.shared.peers.load_full();
        let keys: HashSet<Key> = peers.iter().filter_map(|p| p.wg_key.map(Key)).collect();
        self.indexes.retain(&keys);
        let mut wanted = Vec::new();
        let mut states = HashMap::new();
        for p in peers {
            let Some(key) = p.wg_key.map(Key) else { continue };
            let Some(index) = self.indexes.of(key) else { continue };
            let port = p.wg_port.unwrap_or(self.opts.listen_port);
            let peer = WgPeer {
                public_key: key,
                endpoint: SocketAddr::V4(SocketAddrV4::new(p.public_ip, port)),
                allowed_ips: vec![IpNet::V4(p.subnet)],
                index,
            };
            let state = match old.states.get(&index) {
                Some(s) if s.peer == peer && s.subnet == p.subnet => s.clone(),
                _ => Arc::new(PeerState {
                    tunn: std::sync::Mutex::new(self.shared.tunn(&peer, self.opts.psk, self.opts.persistent_keepalive)),
                    peer: peer.clone(),
                    subnet: p.subnet,
                    added: Instant::now(),
                    handshakes: Default::default(),
                }),
            };
            states.insert(index, state);
            wanted.push(peer);
        }
        let changed = states.len() != old.states.len()
            || states.iter().any(|(i, s)| old.states.get(i).is_none_or(|o| !Arc::ptr_eq(o, s)));
        if changed {
            report.changes += 1;
            self.shared.peers.store(Arc::new(PeerSet { table: PeerTable::new(wanted), states }));
        }
    }

    fn reap_threads(&mut self, report: &mut Report) {
        let Some(t) = &mut self.threads else { return };
        if t.all_alive() {
            return;
        }
        for (name, exit) in t.stop_all() {
            let why = match exit {
                Some(Exit::Stopped) => continue,
                Some(Exit::Failed(e)) => e.to_string(),
                None => "panicked".into(),
            };
            warn!(thread = name, "wireguard thread ended: {why}; restarting the threads");
        }
        self.threads = None;
        self.tun = None;
        self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        report.repaired(ObjectKind::Thread, 1);
        self.restart.failed(Instant::now());
    }

    /// When a pass is due without any event: a restart of stopped
    /// threads, or the end of a new peer's grace period while it has no
    /// handshake (so that `/readyz` names it then, not at the next resync).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let restart = self.restart.next().filter(|_| self.threads.is_none());
        let now = Instant::now();
        let set = self.shared.peers.load();
        let grace_ends = set
            .states
            .values()
            .map(|s| s.added + HANDSHAKE_GRACE + Duration::from_millis(10))
            .filter(|at| *at > now)
            .min();
        match (restart, grace_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Problems visible without a pass: a thread that ended, peers whose
    /// handshake has not completed (beyond a grace period) or expired.
    pub(crate) fn live_problems(&self, out: &mut Vec<Problem>) {
        if let Some(t) = &self.threads {
            if !t.all_alive() {
                out.push(Problem::ThreadEnded);
            }
        }
        let set = self.shared.peers.load();
        let mut silent: Vec<String> = Vec::new();
        for s in set.states.values() {
            let age = s.tunn.lock().unwrap_or_else(|e| e.into_inner()).time_since_last_handshake();
            let since = s.added.elapsed();
            let why = match age {
                None if since > HANDSHAKE_GRACE => format!("none in {} s", since.as_secs()),
                Some(a) if a > SESSION_LIFETIME => format!("the last {} s ago", a.as_secs()),
                _ => continue,
            };
            silent.push(format!("{} at {} ({why})", s.subnet, s.peer.endpoint));
        }
        if !silent.is_empty() {
            silent.sort();
            out.push(Problem::NoHandshake { peers: silent.len(), of: set.states.len(), first: silent.swap_remove(0) });
        }
    }

    pub(crate) fn metrics(&self) -> Arc<dyn BackendMetrics> {
        Arc::new(WgMetrics(self.shared.clone()))
    }

    /// Stop and join the threads; the device stays (it is persistent).
    pub(crate) fn shutdown(&mut self) {
        self.stop_threads();
    }
}

/// The wireguard counters for `/metrics`.
struct WgMetrics(Arc<WgShared>);

impl std::fmt::Debug for WgMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WgMetrics")
    }
}

impl BackendMetrics for WgMetrics {
    fn render(&self, w: &mut Writer<'_>) {
        self.0.render(w);
    }
}
