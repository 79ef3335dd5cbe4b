//! What the wireguard backend's threads share: the peers, the node's key,
//! the handshake limiter and the counters (rendered for `/metrics`).
//!
//! The peers are one immutable [`PeerSet`] swapped whole when the leases
//! change; each peer's protocol state (weft's `Noise`) and current endpoint (a
//! [`Session`]) sit behind its own lock, taken for one packet at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_types::metrics::{Kind, Writer};

use super::keep::Keeper;
pub(crate) use super::session::{Session, TunnMaker, TunnSpec};
use crate::forward::wg::{PeerTable, WgDrop, WgPeer};

/// Handshake messages a second before cookies are asked for, with few
/// peers (boringtun's own device uses the same limit).
const HANDSHAKES_PER_SECOND: u64 = 100;
/// The most, however many peers: about what one core's Diffie-Hellman
/// keeps up with; past it, cookies are due whoever sends.
const MAX_HANDSHAKES_PER_SECOND: u64 = 4000;

/// The handshake limit for `peers` peers: each may start one handshake
/// in each direction per REKEY_AFTER_TIME (120 s), so on average
/// `peers / 60` a second; four times that leaves room for bursts (a
/// restarted node's peers all at once, spread by their retries). Pure.
pub(crate) fn handshake_limit(peers: usize) -> u64 {
    (peers as u64 / 15).clamp(HANDSHAKES_PER_SECOND, MAX_HANDSHAKES_PER_SECOND)
}

/// Counted and said once per move of a peer's endpoint.
pub(crate) fn roamed(shared: &WgShared, subnet: &ipnet::IpNet, was: SocketAddr, now: SocketAddr) {
    shared.stats.roams.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %subnet, from = %was, to = %now, "wireguard peer roamed: its authenticated messages come from a new address, its packets go there now");
}

/// One peer: its lease's data and its protocol state.
pub(crate) struct PeerState {
    pub(crate) peer: WgPeer,
    /// Its subnet of the device's family (its name in metrics).
    pub(crate) subnet: ipnet::IpNet,
    pub(crate) session: Mutex<Session>,
    /// Whether its protocol state is awake (the session's flag).
    pub(crate) awake: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) added: Instant,
    pub(crate) handshakes: AtomicU64,
    /// When the handshake thread starts a handshake of its own with this
    /// peer (see `probe::Probe`); the health check reads it.
    pub(crate) probe: Mutex<super::probe::Probe>,
    /// When data from the peer last found no session to open it with
    /// (milliseconds after `added`, plus one; 0: never), so that such data
    /// asks for a handshake at most once per [`NUDGE_EVERY`].
    pub(crate) nudged: AtomicU64,
}

/// Data that finds no session asks for a handshake at most this often per
/// peer (WireGuard's REKEY_TIMEOUT, the wait before an initiation is sent
/// again).
pub(crate) const NUDGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl PeerState {
    /// Whether data from this peer that found no session may ask for a
    /// handshake now (and, if so, the ask is counted as made).
    pub(crate) fn claim_nudge(&self, now: Instant) -> bool {
        let t = now.saturating_duration_since(self.added).as_millis() as u64 + 1;
        let last = self.nudged.load(Ordering::Relaxed);
        if last != 0 && t < last + NUDGE_EVERY.as_millis() as u64 {
            return false;
        }
        self.nudged.compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
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
    /// Handshake messages that passed the RX thread's checks and reached
    /// the handshake thread.
    pub(crate) handshake_messages: AtomicU64,
    /// Peers' endpoints moved by their authenticated messages.
    pub(crate) roams: AtomicU64,
    /// Leases whose key is refused now (a gauge, on the first device).
    pub(crate) refused_peers: AtomicU64,
    drops: [AtomicU64; WgDrop::ALL.len()],
}

impl WgStats {
    pub(crate) fn drop(&self, reason: WgDrop) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The drops counted so far, by reason (those not zero).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> Vec<(&'static str, u64)> {
        WgDrop::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops[*r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What the threads share.
pub(crate) struct WgShared {
    pub(crate) peers: ArcSwap<PeerSet>,
    pub(crate) private: StaticSecret,
    pub(crate) public: PublicKey,
    /// Handshake messages a second before cookies are asked for; the RX
    /// threads check every one against it ([`super::handshake::admit`]).
    /// Replaced when the peer count moves its [`handshake_limit`].
    pub(crate) limiter: ArcSwap<RateLimiter>,
    /// What the peers' protocol states are made with.
    pub(crate) maker: TunnMaker,
    /// The limit `limiter` was made with.
    limit: AtomicU64,
    pub(crate) stats: WgStats,
    /// Where the sessions are kept for the next process (`keep`).
    pub(crate) keeper: Keeper,
}

impl WgShared {
    pub(crate) fn new(private: StaticSecret) -> WgShared {
        let public = PublicKey::from(&private);
        WgShared {
            peers: ArcSwap::default(),
            limiter: ArcSwap::from_pointee(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            limit: AtomicU64::new(HANDSHAKES_PER_SECOND),
            maker: TunnMaker::new(private.clone()),
            private,
            public,
            stats: WgStats::default(),
            keeper: Keeper::none(),
        }
    }

    /// The same, keeping its sessions with `keeper`.
    pub(crate) fn with_keeper(self, keeper: Keeper) -> WgShared {
        WgShared { keeper, ..self }
    }

    /// Write every awake peer's sessions where the next process finds
    /// them (`keep`).
    pub(crate) fn keep_sessions(&self) {
        self.keeper.write(|put| {
            for state in self.peers.load().states.values() {
                let mut session = lock(&state.session);
                if let Some(noise) = session.awake() {
                    put(&state.peer.public_key, state.peer.index, noise.save());
                }
            }
        });
    }

    /// Fits the handshake limit to `peers` peers (a new limiter, with a
    /// new cookie secret, only when the limit changes).
    pub(crate) fn fit_limiter(&self, peers: usize) {
        let limit = handshake_limit(peers);
        if self.limit.swap(limit, Ordering::Relaxed) != limit {
            self.limiter.store(Arc::new(RateLimiter::new(&self.public, limit)));
        }
    }
}

/// A device's thread restarts per queue (the substrate counts them).
pub(crate) type Restarts = Arc<Vec<AtomicU64>>;

/// The counters of every device as Prometheus families (summed), with
/// each peer's handshake age.
pub(crate) fn render(devices: &[(Arc<WgShared>, Restarts)], w: &mut Writer<'_>) {
    let sum = |f: &dyn Fn(&WgStats) -> &AtomicU64| {
        devices.iter().map(|(s, _)| f(&s.stats).load(Ordering::Relaxed) as f64).sum::<f64>()
    };
    let restarts: f64 = devices.iter().flat_map(|(_, r)| r.iter()).map(|n| n.load(Ordering::Relaxed) as f64).sum();
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
        .family(
            "weft_wireguard_handshake_messages_total",
            Kind::Counter,
            "Handshake messages that passed the receive checks (size, mac1, mac2 under load) and reached the handshake thread.",
        )
        .sample("weft_wireguard_handshake_messages_total", &[], sum(&|s| &s.handshake_messages))
        .family(
            "weft_wireguard_endpoint_roams_total",
            Kind::Counter,
            "Peers' endpoints moved to the source of an authenticated message (a peer behind NAT, a new address).",
        )
        .sample("weft_wireguard_endpoint_roams_total", &[], sum(&|s| &s.roams))
        .family("weft_wireguard_thread_restarts_total", Kind::Counter, "Restarts of the wireguard threads.")
        .sample("weft_wireguard_thread_restarts_total", &[], restarts)
        .family(
            "weft_wireguard_dropped_total",
            Kind::Counter,
            "Datagrams and packets the wireguard backend dropped, by reason; none of them reached the TUN device.",
        );
    for r in WgDrop::ALL {
        w.sample("weft_wireguard_dropped_total", &[("reason", r.as_str())], sum(&|s| &s.drops[r as usize]));
    }
    w.family(
        "weft_wireguard_peers_refused",
        Kind::Gauge,
        "Wireguard leases whose PublicKey is refused (this node's own, or a weak key); the log names them.",
    )
    .sample("weft_wireguard_peers_refused", &[], sum(&|s| &s.refused_peers));
    w.family(
        "weft_wireguard_peers_awake",
        Kind::Gauge,
        "Peers whose protocol state is in memory now (in use, or quiet for less than 100 s); the others rest.",
    )
    .sample(
        "weft_wireguard_peers_awake",
        &[],
        devices.iter().map(|(s, _)| s.maker.awake.load(Ordering::Relaxed) as f64).sum(),
    );
    w.family(
        "weft_wireguard_peer_last_handshake_seconds",
        Kind::Gauge,
        "Seconds since each peer's last completed handshake (absent: none yet).",
    );
    let sets: Vec<_> = devices.iter().map(|(s, _)| s.peers.load_full()).collect();
    let mut peers: Vec<_> = sets.iter().flat_map(|set| set.states.values()).collect();
    peers.sort_by_key(|p| p.subnet);
    let mut endpoints = Vec::with_capacity(peers.len());
    for p in peers {
        let session = lock(&p.session);
        if let Some(age) = session.time_since_last_handshake() {
            w.sample(
                "weft_wireguard_peer_last_handshake_seconds",
                &[("peer", &p.subnet.to_string())],
                age.as_secs_f64(),
            );
        }
        endpoints.push((p.subnet, session.endpoint));
    }
    w.family(
        "weft_wireguard_peer_endpoint",
        Kind::Gauge,
        "Where each peer's packets go now (1): its lease's address, or where it roamed to.",
    );
    for (subnet, endpoint) in endpoints {
        w.sample(
            "weft_wireguard_peer_endpoint",
            &[("peer", &subnet.to_string()), ("endpoint", &endpoint.to_string())],
            1.0,
        );
    }
}

/// A peer's lock; a thread that panicked holding it left the state usable
/// (every call on it is one whole message).
pub(crate) fn lock<T>(t: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}
