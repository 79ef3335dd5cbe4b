//! One WireGuard device of the backend and everything that goes with it:
//! the TUN device (`flannel-wg`, or `flannel-wg-v6` for the IPv6 pods on a
//! dual-stack network, as flanneld's `separate` mode has them), its UDP
//! socket, its peers, its threads and their supervision.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use ipnet::IpNet;
use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tracing::{info, warn};
use tun_rs::SyncDevice;
use weft_types::WireguardOptions;

use super::super::udp::restart::Restart;
use super::super::udp::shared::Exit;
use super::super::udp::socket;
use super::threads::{PeerSet, PeerState, Threads, WgQueue, WgShared};
use crate::error::{chain, Error, Result};
use crate::forward::wg::{Indexes, Key, PeerTable, WgPeer};
use crate::kernel::Netlink;
use crate::report::{ObjectKind, Problem, Report};
use crate::sync::device;

/// How long a new peer may take to complete its first handshake before
/// `/readyz` names it.
pub(crate) const HANDSHAKE_GRACE: Duration = Duration::from_secs(10);
/// A session older than this has expired (WireGuard's REJECT_AFTER_TIME);
/// weft renews it at 120 s, so a peer past it has stopped answering.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// A peer of one tunnel, from its lease.
pub(crate) struct TunnelPeer {
    pub(crate) key: Key,
    pub(crate) endpoint: SocketAddr,
    /// Its subnet of the tunnel's family: its name in metrics and
    /// `/readyz`, and its AllowedIPs with `more`.
    pub(crate) subnet: IpNet,
    /// Its IPv6 subnet when one device carries both families (`Mode`
    /// `auto`, `ipv4`, `ipv6`).
    pub(crate) more: Option<IpNet>,
}

pub(crate) struct Tunnel {
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    mtu: u32,
    pub(crate) shared: Arc<WgShared>,
    /// One socket per queue (`SO_REUSEPORT` when there are several).
    socks: Vec<Arc<UdpSocket>>,
    /// Each socket's GSO/GRO state (offload path).
    states: Vec<Option<Arc<UdpSocketState>>>,
    /// Whether the device carries virtio-net headers (offloads on).
    vnet_hdr: bool,
    indexes: Indexes,
    /// The attached TUN queues (empty: none attached).
    tun: Vec<Arc<SyncDevice>>,
    /// The device's index as last seen.
    pub(crate) index: Option<u32>,
    threads: Option<Threads>,
    restart: Restart,
}

impl Tunnel {
    /// Bind the tunnel's UDP port on `bind` and re-attach its device if an
    /// earlier run left it; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: &Netlink,
        name: &'static str,
        bind: SocketAddr,
        mtu: u32,
        queues: usize,
        private: &Key,
    ) -> Result<Tunnel> {
        let socks = (0..queues).map(|_| socket::bind(bind, queues > 1).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        // Without GSO/GRO state the backend still works, a packet a call.
        let states = socks.iter().map(|s| UdpSocketState::new((&**s).into()).ok().map(Arc::new)).collect();
        let mut t = Tunnel {
            name,
            port: bind.port(),
            mtu,
            shared: Arc::new(WgShared::new(StaticSecret::from(private.0))),
            socks,
            states,
            vnet_hdr: false,
            indexes: Indexes::default(),
            tun: Vec::new(),
            index: None,
            threads: None,
            restart: Restart::new(Instant::now()),
        };
        if let Some(link) = nl.link_by_name(name).await? {
            if link.kind.as_deref() == Some("tun") {
                match t.open_device() {
                    Ok(()) => info!(device = name, "re-attached to the TUN device left by the last run"),
                    Err(e) => warn!("cannot re-attach to the existing {name} ({}); recreating it later", chain(&e)),
                }
            }
        }
        Ok(t)
    }

    /// Create the TUN device (or attach to it), persistent, one file
    /// descriptor per queue, non-blocking.
    fn open_device(&mut self) -> Result<()> {
        let name = self.name;
        let n = self.socks.len();
        let first = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(self.mtu.min(u32::from(u16::MAX)) as u16)
            .offload(true)
            .multi_queue(n > 1)
            .build_sync()
            .map_err(|e| Error::tun(format!("creating or attaching {name}"), e))?;
        self.vnet_hdr = first.tcp_gso() || first.udp_gso();
        first.persist().map_err(|e| Error::tun(format!("making {name} persistent"), e))?;
        let mut devices = vec![Arc::new(first)];
        for _ in 1..n {
            let q = devices[0].try_clone().map_err(|e| Error::tun(format!("opening another queue of {name}"), e))?;
            devices.push(Arc::new(q));
        }
        for d in &devices {
            d.set_nonblocking(true).map_err(|e| Error::tun(format!("making {name} non-blocking"), e))?;
        }
        self.tun = devices;
        Ok(())
    }

    fn stop_threads(&mut self) {
        if let Some(mut t) = self.threads.take() {
            t.stop_all();
        }
    }

    /// Make the device exist and be attached, up, with its MTU, `addrs`
    /// and a route to each of `networks` through it.
    pub(crate) async fn ensure_device(
        &mut self,
        nl: &Netlink,
        addrs: &[IpNet],
        networks: &[IpNet],
        report: &mut Report,
    ) -> Result<u32> {
        let name = self.name;
        let known = self.index.is_some();
        let link = nl.link_by_name(name).await?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("tun") {
                return Err(Error::Unsupported {
                    backend: "wireguard",
                    reason: format!(
                        "{name} exists but is not weft's TUN device (a kernel WireGuard device left by flanneld?); remove it"
                    ),
                });
            }
        }
        let replaced = device::replaced(link.as_ref(), self.index);
        if replaced {
            if known {
                warn!(device = name, "TUN device is missing or was replaced; recreating it");
                report.repaired(ObjectKind::Device, 1);
                if self.threads.is_some() {
                    self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    report.repaired(ObjectKind::Thread, 1);
                }
            }
            self.stop_threads();
            self.tun.clear();
        }
        if self.tun.is_empty() {
            self.open_device()?;
        }
        let link = nl.link_by_name(name).await?.ok_or(Error::Vanished { device: name.into() })?;
        let same = known && !replaced;
        device::configure(nl, &link, self.mtu, addrs, same, "TUN device", report).await?;
        for network in networks {
            if !nl.has_route(*network, link.index).await? {
                if same {
                    warn!(device = name, %network, "the route of the network was removed; restoring it");
                    report.repaired(ObjectKind::Route, 1);
                }
                nl.replace_device_route(*network, link.index).await?;
            }
        }
        self.index = Some(link.index);
        Ok(link.index)
    }

    /// The new peer set: a peer whose key and endpoint stay keeps its
    /// session; a new key gets a new protocol state; a gone lease takes its
    /// peer with it.
    pub(crate) fn set_peers(&mut self, peers: Vec<TunnelPeer>, opts: &WireguardOptions, report: &mut Report) {
        let old = self.shared.peers.load_full();
        let keys: HashSet<Key> = peers.iter().map(|p| p.key).collect();
        self.indexes.retain(&keys);
        let mut wanted = Vec::new();
        let mut states = HashMap::new();
        for p in peers {
            let Some(index) = self.indexes.of(p.key) else { continue };
            let allowed_ips = std::iter::once(p.subnet).chain(p.more).collect();
            let peer = WgPeer { public_key: p.key, endpoint: p.endpoint, allowed_ips, index };
            let state = match old.states.get(&index) {
                Some(s) if s.peer == peer => s.clone(),
                _ => Arc::new(PeerState {
                    tunn: std::sync::Mutex::new(self.shared.tunn(&peer, opts.psk, opts.persistent_keepalive)),
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

    /// Collect threads that ended; they are restarted after a backoff.
    pub(crate) fn reap_threads(&mut self, report: &mut Report) {
        let Some(t) = &mut self.threads else { return };
        if t.all_alive() {
            return;
        }
        for (thread, exit) in t.stop_all() {
            let why = match exit {
                Some(Exit::Stopped) => continue,
                Some(Exit::Failed(e)) => e.to_string(),
                None => "panicked".into(),
            };
            warn!(device = self.name, thread, "wireguard thread ended: {why}; restarting the threads");
        }
        self.threads = None;
        self.tun.clear();
        self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        report.repaired(ObjectKind::Thread, 1);
        self.restart.failed(Instant::now());
    }

    /// Start the threads when there are none and the backoff allows;
    /// `false` (with the problem reported) when they are not running.
    pub(crate) fn keep_running(&mut self, opts: &WireguardOptions, wake: &Arc<Notify>, report: &mut Report) -> bool {
        if self.threads.is_some() {
            return true;
        }
        if !self.restart.due(Instant::now()) {
            report.problem(Problem::ThreadsBackingOff);
            return false;
        }
        let queues: Vec<WgQueue> = self
            .tun
            .iter()
            .zip(&self.socks)
            .zip(&self.states)
            .map(|((dev, sock), state)| WgQueue {
                dev: dev.clone(),
                sock: sock.clone(),
                state: state.clone().filter(|_| self.vnet_hdr),
            })
            .collect();
        let fast = queues.first().is_some_and(|q| q.state.is_some());
        let first_state = self.states.first().and_then(|s| s.as_ref());
        match Threads::start(&queues, self.mtu as usize, self.shared.clone(), wake) {
            Ok(t) => {
                self.threads = Some(t);
                self.restart.started(Instant::now());
                info!(
                    device = self.name,
                    mtu = self.mtu,
                    port = self.port,
                    public_key = %Key(self.shared.public.to_bytes()).to_base64(),
                    keepalive_s = opts.persistent_keepalive,
                    psk = opts.psk.is_some(),
                    queues = queues.len(),
                    offload = fast,
                    udp_gso_segments = first_state.map_or(1, |s| s.max_gso_segments()),
                    udp_gro_segments = first_state.map_or(1, |s| s.gro_segments()),
                    "wireguard backend forwarding"
                );
                true
            }
            Err(e) => {
                report.problem(Problem::ThreadsCannotStart { error: e.to_string() });
                self.restart.failed(Instant::now());
                false
            }
        }
    }

    /// When a pass is due without any event: a restart of stopped threads,
    /// or the end of a new peer's grace period.
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
        restart.into_iter().chain(grace_ends).min()
    }

    /// Whether a thread ended since the last pass; adds each peer without
    /// a recent completed handshake to `silent` (as `subnet at endpoint
    /// (why)`) and returns how many peers the tunnel has.
    pub(crate) fn live_problems(&self, silent: &mut Vec<String>) -> (bool, usize) {
        let ended = self.threads.as_ref().is_some_and(|t| !t.all_alive());
        let set = self.shared.peers.load();
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
        (ended, set.states.len())
    }

    /// Stop and join the threads; the device stays (it is persistent).
    pub(crate) fn shutdown(&mut self) {
        self.stop_threads();
    }
}
