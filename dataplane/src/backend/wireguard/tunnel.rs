//! One WireGuard device of the backend and everything that goes with it:
//! the TUN device (`flannel-wg`, or `flannel-wg-v6` for the IPv6 pods on a
//! dual-stack network, as flanneld's `separate` mode has them), its UDP
//! socket, its peers, its threads and their supervision.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use tokio::sync::Notify;
use tracing::info;
use weft_types::{BackendKind, WireguardOptions};

use super::keep::{Keeper, Kept, SKIP};
use super::plan::TunnelPeer;
use super::state::{lock, PeerSet, PeerState, Session, TunnSpec, WgShared};
use super::threads;
use crate::backend::userspace::{DeviceSpec, Forwarder, RouteBy, Running, Wire};
use crate::error::{Error, Result};
use crate::forward::wg::{Indexes, Key, PeerTable, WgPeer};
use crate::kernel::Netlink;
use crate::report::Report;

/// How long a new peer may take to complete its first handshake before
/// `/readyz` names it.
pub(crate) const HANDSHAKE_GRACE: Duration = Duration::from_secs(10);

/// Peers without a recent completed handshake: how many, and the one
/// with the lowest subnet, described.
#[derive(Debug, Default)]
pub(crate) struct Silent {
    pub(crate) count: usize,
    pub(crate) first: Option<(ipnet::IpNet, String)>,
}

/// One WireGuard device: its port, key and peers, and the forwarder that
/// carries its packets.
pub(crate) struct Tunnel {
    pub(crate) port: u16,
    pub(crate) shared: Arc<WgShared>,
    indexes: Indexes,
    /// Sessions the last process kept, by key, until the peer is programmed.
    kept: HashMap<Key, Kept>,
    /// The TUN device, its queues and sockets, the threads.
    pub(crate) fwd: Forwarder,
}

impl Tunnel {
    /// Bind the tunnel's UDP port on `bind` (a socket per queue: `bulk`
    /// and, with `lane`, the lane's) and re-attach its device if an earlier
    /// run left it; nothing on the host changes.
    pub(crate) async fn prepare(
        nl: &Netlink,
        name: &'static str,
        bind: SocketAddr,
        mtu: u32,
        (bulk, lane): (usize, bool),
        private: &Key,
    ) -> Result<Tunnel> {
        let spec = DeviceSpec {
            name,
            backend: BackendKind::Wireguard,
            mtu,
            offload: true,
            route_by: RouteBy::DeviceRoute,
            accept_local: false,
            not_tun_hint: " (a kernel WireGuard device left by flanneld?)",
        };
        let fwd = Forwarder::prepare(nl, spec, bind, bulk, lane.then_some(Wire::WireGuard)).await?;
        let (keeper, kept) = Keeper::open(name, &private.public());
        Ok(Tunnel {
            port: bind.port(),
            shared: Arc::new(WgShared::new(StaticSecret::from(private.0)).with_keeper(keeper)),
            indexes: Indexes::default(),
            kept,
            fwd,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.fwd.name()
    }

    /// The new peer set: a peer whose key and endpoint stay keeps its
    /// session; a new key gets a new protocol state; a gone lease takes its
    /// peer with it.
    pub(crate) fn set_peers(&mut self, peers: Vec<TunnelPeer>, opts: &WireguardOptions, report: &mut Report) {
        let old = self.shared.peers.load_full();
        let keys: HashSet<Key> = peers.iter().map(|p| p.key).collect();
        self.indexes.retain(&keys);
        // Peers whose sessions were kept get their old indexes first.
        for (key, k) in &self.kept {
            if keys.contains(key) {
                self.indexes.reserve(*key, k.index);
            }
        }
        let mut wanted = Vec::new();
        let mut states = HashMap::new();
        for p in peers {
            let Some(index) = self.indexes.of(p.key) else { continue };
            let allowed_ips = std::iter::once(p.subnet).chain(p.more).collect();
            let peer = WgPeer { public_key: p.key, endpoint: p.endpoint, allowed_ips, index };
            let state = match old.states.get(&index) {
                Some(s) if s.peer == peer => s.clone(),
                _ => {
                    let spec = TunnSpec {
                        public: PublicKey::from(peer.public_key.0),
                        psk: opts.psk,
                        keepalive: (opts.persistent_keepalive > 0).then_some(opts.persistent_keepalive),
                        index: peer.index,
                    };
                    let mut session = Session::new(spec, peer.endpoint);
                    if let Some(k) = self.kept.remove(&peer.public_key).filter(|k| k.index == index) {
                        session.restore(&self.shared.maker, &k.sessions, SKIP);
                    }
                    Arc::new(PeerState {
                        awake: session.awake_flag(),
                        session: std::sync::Mutex::new(session),
                        peer: peer.clone(),
                        subnet: p.subnet,
                        added: Instant::now(),
                        handshakes: Default::default(),
                        probe: Default::default(),
                        nudged: Default::default(),
                    })
                }
            };
            states.insert(index, state);
            wanted.push(peer);
        }
        let changed = states.len() != old.states.len()
            || states.iter().any(|(i, s)| old.states.get(i).is_none_or(|o| !Arc::ptr_eq(o, s)));
        if changed {
            report.changes += 1;
            self.shared.fit_limiter(states.len());
            self.shared.peers.store(Arc::new(PeerSet { table: PeerTable::new(wanted), states }));
        }
    }

    /// Start the threads when there are none and the backoff allows;
    /// `false` (with the problem reported) when they are not running.
    pub(crate) fn keep_running(&mut self, opts: &WireguardOptions, wake: &Arc<Notify>, report: &mut Report) -> bool {
        let (mtu, shared, lane) = (self.fwd.mtu() as usize, self.shared.clone(), self.fwd.has_lane());
        let running = self.fwd.keep_running(report, |queues| {
            let lane = lane.then(|| queues.len() - 1);
            threads::start(queues, mtu, &shared, lane, wake)
                .map_err(|e| Error::tun("starting the wireguard threads", e))
        });
        if running == Running::Started {
            let (gso, gro) = self.fwd.segments();
            info!(
                device = self.name(),
                mtu = self.fwd.mtu(),
                port = self.port,
                public_key = %Key(self.shared.public.to_bytes()).to_base64(),
                keepalive_s = opts.persistent_keepalive,
                psk = opts.psk.is_some(),
                queues = self.fwd.queue_count(),
                latency_lane = self.fwd.has_lane(),
                offload = self.fwd.vnet_hdr(),
                udp_gso_segments = gso,
                udp_gro_segments = gro,
                "wireguard backend forwarding"
            );
        }
        running != Running::No
    }

    /// When a pass is due without any event: a restart of stopped threads,
    /// or the end of a new peer's grace period.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let restart = self.fwd.next_wake();
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

    /// Whether a thread ended since the last pass, and how many peers the
    /// tunnel has; counts each peer without a recent completed handshake
    /// in `silent`, which keeps the one with the lowest subnet (as `subnet
    /// at endpoint (why)`). No string is made for the others: with
    /// thousands of gone peers this runs on every pass.
    pub(crate) fn live_problems(&self, silent: &mut Silent) -> (bool, usize) {
        let ended = self.fwd.thread_ended();
        let set = self.shared.peers.load();
        let now = Instant::now();
        for s in set.states.values() {
            let (age, endpoint) = {
                let session = lock(&s.session);
                (session.time_since_last_handshake(), session.endpoint)
            };
            let unanswered = lock(&s.probe).unanswered(now, s.handshakes.load(Ordering::Relaxed));
            let since = now.saturating_duration_since(s.added);
            let is_silent = match (age, unanswered) {
                (None, _) => since > HANDSHAKE_GRACE,
                (Some(_), Some(u)) => u > HANDSHAKE_GRACE,
                _ => false,
            };
            if !is_silent {
                continue;
            }
            silent.count += 1;
            if silent.first.as_ref().is_some_and(|(first, _)| *first <= s.subnet) {
                continue;
            }
            let why = match (age, unanswered) {
                (Some(a), Some(u)) => {
                    format!("the last {} s ago, none since weft asked {} s ago", a.as_secs(), u.as_secs())
                }
                _ => format!("none in {} s", since.as_secs()),
            };
            silent.first = Some((s.subnet, format!("{} at {endpoint} ({why})", s.subnet)));
        }
        (ended, set.states.len())
    }

    /// Stop and join the threads, then keep the sessions as they are now
    /// for the next process; the device stays (it is persistent).
    pub(crate) fn shutdown(&mut self) {
        self.fwd.shutdown();
        self.shared.keep_sessions();
    }
}
