//! What the wireguard backend's threads share: the peers, the node's key,
//! the handshake limiter and the counters (rendered for `/metrics`).
//!
//! The peers are one immutable [`PeerSet`] swapped whole when the leases
//! change; each peer's boringtun [`Tunn`] and current endpoint (a
//! [`Session`]) sit behind its own lock, taken for one packet at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_types::metrics::{Kind, Writer};

use crate::forward::wg::{authenticated, PeerTable, WgDrop, WgPeer};

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

/// A peer's protocol state and where its packets go now, behind one lock
/// taken for one message at a time.
pub(crate) struct Session {
    pub(crate) tunn: Tunn,
    /// The lease's `PublicIP:Port` at first; then the source of the peer's
    /// latest authenticated message (WireGuard's roaming: how a peer
    /// behind NAT is reached at its NAT's address).
    pub(crate) endpoint: SocketAddr,
}

impl Session {
    pub(crate) fn new(tunn: Tunn, endpoint: SocketAddr) -> Session {
        Session { tunn, endpoint }
    }

    /// After a message of type `kind` from `from` was opened with
    /// `result`: if it was authenticated (`forward::wg::authenticated`),
    /// the peer's endpoint moves there. Returns the endpoint it left.
    pub(crate) fn roam(&mut self, kind: u8, from: SocketAddr, result: &TunnResult<'_>) -> Option<SocketAddr> {
        if from == self.endpoint || !authenticated(kind, result) {
            return None;
        }
        Some(std::mem::replace(&mut self.endpoint, from))
    }
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
    pub(crate) added: Instant,
    pub(crate) handshakes: AtomicU64,
    /// When the handshake thread starts a handshake of its own with this
    /// peer (see `probe::Probe`); the health check reads it.
    pub(crate) probe: Mutex<super::probe::Probe>,
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
    /// The limiter each peer's protocol state checks again when it opens a
    /// message: it never reports load (the RX thread did the limiting),
    /// so a message is counted once.
    checked: Arc<RateLimiter>,
    /// The limit `limiter` was made with.
    limit: AtomicU64,
    pub(crate) stats: WgStats,
}

impl WgShared {
    pub(crate) fn new(private: StaticSecret) -> WgShared {
        let public = PublicKey::from(&private);
        WgShared {
            peers: ArcSwap::default(),
            limiter: ArcSwap::from_pointee(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            limit: AtomicU64::new(HANDSHAKES_PER_SECOND),
            checked: Arc::new(RateLimiter::new(&public, u64::MAX)),
            private,
            public,
            stats: WgStats::default(),
        }
    }

    /// Fits the handshake limit to `peers` peers (a new limiter, with a
    /// new cookie secret, only when the limit changes).
    pub(crate) fn fit_limiter(&self, peers: usize) {
        let limit = handshake_limit(peers);
        if self.limit.swap(limit, Ordering::Relaxed) != limit {
            self.limiter.store(Arc::new(RateLimiter::new(&self.public, limit)));
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
            Some(self.checked.clone()),
        )
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
        if let Some(age) = session.tunn.time_since_last_handshake() {
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

#[cfg(test)]
mod tests {
    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], port))
    }

    /// Two protocol states that know each other's keys.
    fn pair() -> (Tunn, Tunn) {
        let (a, b) = (StaticSecret::random_from_rng(rand_core::OsRng), StaticSecret::random_from_rng(rand_core::OsRng));
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        (Tunn::new(a, pb, None, None, 1, None), Tunn::new(b, pa, None, None, 2, None))
    }

    fn message(r: TunnResult<'_>) -> Vec<u8> {
        match r {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// A minimal IPv4 packet from `src` (UDP, no payload).
    fn packet(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[10, 244, 1, 2]);
        p
    }

    /// Only what proves the peer's key moves its endpoint: its handshake
    /// and its data, from wherever they come; not a replay of either from
    /// a new address, not junk, not a message of another type.
    #[test]
    fn only_authenticated_messages_move_an_endpoint() {
        let (here, mut there) = pair();
        let lease = addr(2, 51820);
        let (nat, forger) = (addr(30, 40000), addr(66, 51820));
        let mut s = Session::new(here, lease);
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);

        // The peer's initiation, through its NAT: authenticated, it moves.
        let init = message(there.format_handshake_initiation(&mut buf, false));
        let r = s.tunn.decapsulate(Some(nat.ip()), &init, &mut out);
        assert_eq!(s.roam(1, nat, &r), Some(lease));
        let response = message(r);
        assert_eq!(s.endpoint, nat);
        // The same initiation replayed from elsewhere: refused, no move.
        let r = s.tunn.decapsulate(Some(forger.ip()), &init, &mut out);
        assert!(matches!(r, TunnResult::Err(_)), "{r:?}");
        assert_eq!(s.roam(1, forger, &r), None);
        assert_eq!(s.endpoint, nat);

        // The peer completes the handshake and sends data from a new port.
        let _ = there.decapsulate(None, &response, &mut buf);
        let data = message(there.encapsulate(&packet([10, 244, 2, 9]), &mut buf));
        let moved = addr(30, 40001);
        let r = s.tunn.decapsulate(Some(moved.ip()), &data, &mut out);
        assert!(matches!(r, TunnResult::WriteToTunnelV4(..)), "{r:?}");
        assert_eq!(s.roam(4, moved, &r), Some(nat));
        // That data replayed, junk of its type, a cookie reply's type: none moves it.
        let r = s.tunn.decapsulate(Some(forger.ip()), &data, &mut out);
        assert_eq!(s.roam(4, forger, &r), None, "{r:?}");
        let mut junk = data.clone();
        junk[40] ^= 1;
        let r = s.tunn.decapsulate(Some(forger.ip()), &junk, &mut out);
        assert_eq!(s.roam(4, forger, &r), None, "{r:?}");
        assert_eq!(s.roam(3, forger, &TunnResult::Done), None);
        assert_eq!(s.endpoint, moved);
    }
}
