//! The wireguard backend's threads and what they share: one thread
//! encrypts what the TUN device gives (TUN -> UDP, `fast` or `plain`), one
//! decrypts what the socket receives (UDP -> TUN), and one does the
//! handshakes and the protocol's timers (`handshake`), so that handshake
//! work never holds up forwarding, nor forwarding it. The forwarding
//! threads sleep in `poll(2)` beside the stop signal.
//!
//! The peers are one immutable [`PeerSet`] swapped whole when the leases
//! change; each peer's boringtun [`Tunn`] sits behind its own lock, taken
//! for one packet at a time.

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use quinn_udp::UdpSocketState;
use tokio::sync::Notify;
use tun_rs::SyncDevice;
use weft_types::metrics::{Kind, Writer};

use super::fast::{FastRx, FastTx};
use super::handshake::{self, Inbox, INBOX};
use super::plain;

use super::super::udp::duty::{Duty, BULK_QUIET};
use super::super::udp::shared::{Exit, StopSignal, WakeOnExit};
use super::super::udp::workers::{run_receiver, run_sender};
use crate::forward::stats::Stats;
use crate::forward::wg::{PeerTable, WgDrop, WgPeer};

/// Handshakes each peer may start per second before cookies are asked
/// for (boringtun's own device uses the same limit).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// One peer: its lease's data and its protocol state.
pub(crate) struct PeerState {
    pub(crate) peer: WgPeer,
    /// Its subnet of the device's family (its name in metrics).
    pub(crate) subnet: ipnet::IpNet,
    pub(crate) tunn: Mutex<Tunn>,
    pub(crate) added: Instant,
    pub(crate) handshakes: AtomicU64,
}

/// The peers as the threads see them.
#[derive(Default)]
pub(crate) struct PeerSet {
    pub(crate) table: PeerTable,
    pub(crate) states: HashMap<u32, Arc<PeerState>>,
}

/// Counters of the wireguard backend.
#[derive(Debug, Default)]
pub(crate) struct WgStats {
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) handshakes: AtomicU64,
    pub(crate) restarts: AtomicU64,
    drops: [AtomicU64; WgDrop::ALL.len()],
}

impl WgStats {
    pub(crate) fn drop(&self, reason: WgDrop) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the threads share.
pub(crate) struct WgShared {
    pub(crate) peers: ArcSwap<PeerSet>,
    pub(crate) private: StaticSecret,
    pub(crate) public: PublicKey,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) stats: WgStats,
}

impl WgShared {
    pub(crate) fn new(private: StaticSecret) -> WgShared {
        let public = PublicKey::from(&private);
        WgShared {
            peers: ArcSwap::default(),
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            private,
            public,
            stats: WgStats::default(),
        }
    }

    /// A new protocol state for `peer`, sharing this node's limiter.
    pub(crate) fn tunn(&self, peer: &WgPeer, psk: Option<[u8; 32]>, keepalive: u16) -> Tunn {
        Tunn::new(
            self.private.clone(),
            PublicKey::from(peer.public_key.0),
            psk,
            (keepalive > 0).then_some(keepalive),
            peer.index,
            Some(self.limiter.clone()),
        )
    }
}

/// The counters of every device as Prometheus families (summed), with
/// each peer's handshake age.
pub(crate) fn render(shared: &[Arc<WgShared>], w: &mut Writer<'_>) {
    let sum = |f: &dyn Fn(&WgStats) -> &AtomicU64| {
        shared.iter().map(|s| f(&s.stats).load(Ordering::Relaxed) as f64).sum::<f64>()
    };
    w.family("weft_wireguard_packets_total", Kind::Counter, "Packets carried by the wireguard backend, by direction.")
        .sample("weft_wireguard_packets_total", &[("direction", "tx")], sum(&|s| &s.tx_packets))
        .sample("weft_wireguard_packets_total", &[("direction", "rx")], sum(&|s| &s.rx_packets))
        .family(
            "weft_wireguard_bytes_total",
            Kind::Counter,
            "Pod bytes carried by the wireguard backend, by direction.",
        )
        .sample("weft_wireguard_bytes_total", &[("direction", "tx")], sum(&|s| &s.tx_bytes))
        .sample("weft_wireguard_bytes_total", &[("direction", "rx")], sum(&|s| &s.rx_bytes))
        .family("weft_wireguard_handshakes_total", Kind::Counter, "Handshake messages from peers that were accepted.")
        .sample("weft_wireguard_handshakes_total", &[], sum(&|s| &s.handshakes))
        .family("weft_wireguard_thread_restarts_total", Kind::Counter, "Restarts of the wireguard threads.")
        .sample("weft_wireguard_thread_restarts_total", &[], sum(&|s| &s.restarts))
        .family(
            "weft_wireguard_dropped_total",
            Kind::Counter,
            "Datagrams and packets the wireguard backend dropped, by reason; none of them reached the TUN device.",
        );
    for r in WgDrop::ALL {
        w.sample("weft_wireguard_dropped_total", &[("reason", r.as_str())], sum(&|s| &s.drops[r as usize]));
    }
    w.family(
        "weft_wireguard_peer_last_handshake_seconds",
        Kind::Gauge,
        "Seconds since each peer's last completed handshake (absent: none yet).",
    );
    let sets: Vec<_> = shared.iter().map(|s| s.peers.load_full()).collect();
    let mut peers: Vec<_> = sets.iter().flat_map(|set| set.states.values()).collect();
    peers.sort_by_key(|p| p.subnet);
    for p in peers {
        if let Some(age) = lock(&p.tunn).time_since_last_handshake() {
            w.sample(
                "weft_wireguard_peer_last_handshake_seconds",
                &[("peer", &p.subnet.to_string())],
                age.as_secs_f64(),
            );
        }
    }
}

/// A peer's lock; a thread that panicked holding it left the state usable
/// (every call on it is one whole message).
pub(crate) fn lock(t: &Mutex<Tunn>) -> std::sync::MutexGuard<'_, Tunn> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The three running threads.
pub(crate) struct Threads {
    stop: Arc<StopSignal>,
    handles: Vec<(String, JoinHandle<Exit>)>,
}

/// One queue of a device: a TUN queue and the UDP socket that pairs with it.
pub(crate) struct WgQueue {
    pub(crate) dev: Arc<SyncDevice>,
    pub(crate) sock: Arc<UdpSocket>,
    /// The socket's GSO/GRO state; `None` on the plain path.
    pub(crate) state: Option<Arc<UdpSocketState>>,
}

type Body = Box<dyn FnOnce(&StopSignal) -> Exit + Send>;

/// The TX and RX bodies of one queue; with the socket's GSO/GRO state (on
/// a TUN device with virtio-net headers) on the offload path
/// ([`super::fast`]), else one packet per system call.
fn queue_bodies(q: &WgQueue, mtu: usize, shared: &Arc<WgShared>, inbox: &Inbox) -> io::Result<(Body, Body)> {
    let (dev, sock) = (q.dev.clone(), q.sock.clone());
    Ok(match q.state.clone() {
        Some(state) => {
            // As the udp backend's queues: the RX thread serves both
            // directions while the traffic is light, the TX thread takes
            // the TUN device when bulk starts (see `udp::duty`).
            let duty = Arc::new(Duty::new(BULK_QUIET, Arc::new(Stats::default()))?);
            let tx_path = Arc::new(Mutex::new(FastTx::new(&state, mtu)));
            let tx: Body = {
                let (dev, sock, shared, state) = (dev.clone(), sock.clone(), shared.clone(), state.clone());
                let (path, duty) = (tx_path.clone(), duty.clone());
                Box::new(move |stop| {
                    let step = |p: &mut FastTx| p.step(&dev, &sock, &state, &shared, stop);
                    run_sender(&path, step, &duty, dev.as_raw_fd(), stop)
                })
            };
            let rx: Body = {
                let (shared, inbox) = (shared.clone(), inbox.clone());
                let mut path = FastRx::new(mtu);
                Box::new(move |stop| {
                    let receive = || {
                        let step = path.step(&dev, &sock, &state, &shared, &inbox);
                        (step, path.bulk())
                    };
                    let send = |p: &mut FastTx| p.step(&dev, &sock, &state, &shared, stop);
                    let fds = [sock.as_raw_fd(), dev.as_raw_fd()];
                    run_receiver(receive, &tx_path, send, &duty, fds, stop)
                })
            };
            (tx, rx)
        }
        None => {
            let tx: Body = {
                let (dev, sock, shared) = (dev.clone(), sock.clone(), shared.clone());
                Box::new(move |stop| plain::tx(&dev, &sock, &shared, stop))
            };
            let rx: Body = {
                let (shared, inbox) = (shared.clone(), inbox.clone());
                Box::new(move |stop| plain::rx(&dev, &sock, &shared, &inbox, stop))
            };
            (tx, rx)
        }
    })
}

impl Threads {
    /// Start two threads per queue and the handshake thread (which sends
    /// from the first queue's socket).
    pub(crate) fn start(
        queues: &[WgQueue],
        mtu: usize,
        shared: Arc<WgShared>,
        wake: &Arc<Notify>,
    ) -> io::Result<Threads> {
        let stop = Arc::new(StopSignal::new()?);
        let mut t = Threads { stop: stop.clone(), handles: Vec::new() };
        let (inbox, handshakes) = std::sync::mpsc::sync_channel(INBOX);
        let mut bodies: Vec<(String, Body)> = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let (tx, rx) = queue_bodies(q, mtu, &shared, &inbox)?;
            bodies.push((format!("weft-wg-tx-{i}"), tx));
            bodies.push((format!("weft-wg-rx-{i}"), rx));
        }
        drop(inbox);
        let sock = queues.first().map(|q| q.sock.clone()).ok_or_else(|| io::Error::other("no queue"))?;
        bodies.push(("weft-wg-handshake".into(), {
            let wake = wake.clone();
            Box::new(move |stop| handshake::run(&sock, &shared, &handshakes, &wake, stop))
        }));
        for (name, body) in bodies {
            let (stop, wake) = (stop.clone(), WakeOnExit(wake.clone()));
            let handle = std::thread::Builder::new().name(name.clone()).spawn(move || {
                let _wake = wake;
                body(&stop)
            });
            match handle {
                Ok(h) => t.handles.push((name, h)),
                Err(e) => {
                    t.stop_all();
                    return Err(e);
                }
            }
        }
        Ok(t)
    }

    pub(crate) fn all_alive(&self) -> bool {
        self.handles.iter().all(|(_, h)| !h.is_finished())
    }

    /// Stop and join every thread; how each ended (`None`: it panicked).
    pub(crate) fn stop_all(&mut self) -> Vec<(String, Option<Exit>)> {
        self.stop.fire();
        self.handles.drain(..).map(|(name, h)| (name, h.join().ok())).collect()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop_all();
    }
}
