//! A peer's protocol state and where its packets go ([`Session`]), behind
//! the peer's lock. The state (weft's [`Noise`], a few KB, made with a
//! Diffie-Hellman of the two static keys) exists only while the
//! peer is in use: it is made on the first packet for the peer, an
//! initiation from it, or a handshake weft starts, and put to rest once
//! the peer has been quiet long enough that the protocol holds nothing
//! (no session younger than the protocol keeps one, no handshake being
//! retried for the last 20 s, no keepalive to send). So thousands of leases of quiet or gone
//! nodes cost a few hundred bytes each, and programming them costs no
//! Diffie-Hellman.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::forward::noise::{Identity, Noise, Saved};
use crate::forward::wg::authenticated;

/// A state unused this long and without a live session rests: a
/// handshake unanswered after its first retries (every 5 s) is let go,
/// weft's next probe or the next packet tries again.
const REST_AFTER: Duration = Duration::from_secs(20);
/// The protocol drops a session's keys this long after it was made
/// (three times REJECT_AFTER_TIME); a younger one keeps the state awake.
const SESSION_KEPT: Duration = Duration::from_secs(540);

/// What a peer's protocol state is made from.
#[derive(Clone)]
pub(crate) struct TunnSpec {
    pub(crate) public: PublicKey,
    pub(crate) psk: Option<[u8; 32]>,
    /// Persistent keepalive, seconds; a peer with one never rests.
    pub(crate) keepalive: Option<u16>,
    /// The peer's index (the receiver indexes this side gives out are made from it).
    pub(crate) index: u32,
}

/// What every peer's protocol state of a device is made with, and how many
/// are awake.
pub(crate) struct TunnMaker {
    id: Arc<Identity>,
    /// Peers whose state is awake (a gauge).
    pub(crate) awake: AtomicU64,
}

impl TunnMaker {
    pub(crate) fn new(private: StaticSecret) -> TunnMaker {
        TunnMaker { id: Arc::new(Identity::new(private)), awake: AtomicU64::new(0) }
    }

    fn make(&self, spec: &TunnSpec) -> Noise {
        self.awake.fetch_add(1, Ordering::Relaxed);
        Noise::new(self.id.clone(), spec.public, spec.psk, spec.keepalive, spec.index)
    }
}

/// A peer's protocol state, made when needed, and where its packets go now.
pub(crate) struct Session {
    tunn: Option<Box<Noise>>,
    spec: TunnSpec,
    /// The lease's `PublicIP:Port` at first; then the source of the peer's
    /// latest authenticated message (WireGuard's roaming: how a peer
    /// behind NAT is reached at its NAT's address).
    pub(crate) endpoint: SocketAddr,
    /// When the last handshake completed, as last seen (kept while the
    /// state rests, and after the protocol let the session go).
    last_handshake: Option<Instant>,
    /// Bytes sent and received by the states put to rest so far.
    rested_tx: u64,
    rested_rx: u64,
    /// When the state was last seen in use, and its byte counts then.
    used: Instant,
    seen: (usize, usize),
    /// Whether the state is awake, readable without the peer's lock (the
    /// timer thread visits resting peers less often).
    awake: Arc<AtomicBool>,
}

impl Session {
    pub(crate) fn new(spec: TunnSpec, endpoint: SocketAddr) -> Session {
        let seen = (0, 0);
        Session {
            tunn: None,
            spec,
            endpoint,
            last_handshake: None,
            rested_tx: 0,
            rested_rx: 0,
            used: Instant::now(),
            seen,
            awake: Arc::default(),
        }
    }

    /// The flag that says whether the state is awake.
    pub(crate) fn awake_flag(&self) -> Arc<AtomicBool> {
        self.awake.clone()
    }

    /// The protocol state, made now if it rests.
    pub(crate) fn tunn(&mut self, maker: &TunnMaker) -> &mut Noise {
        if self.tunn.is_none() {
            self.used = Instant::now();
            self.seen = (0, 0);
            self.awake.store(true, Ordering::Relaxed);
        }
        self.tunn.get_or_insert_with(|| Box::new(maker.make(&self.spec)))
    }

    /// The protocol state for a message of type `kind` from the peer: made
    /// for an initiation (it starts a session); for anything else a
    /// resting state has nothing to open it with.
    pub(crate) fn tunn_for(&mut self, kind: u8, maker: &TunnMaker) -> Option<&mut Noise> {
        if kind == 1 {
            return Some(self.tunn(maker));
        }
        self.tunn.as_deref_mut()
    }

    /// The protocol state if it is awake.
    pub(crate) fn awake(&mut self) -> Option<&mut Noise> {
        self.tunn.as_deref_mut()
    }

    /// How long ago the last handshake with the peer completed, if ever.
    pub(crate) fn time_since_last_handshake(&self) -> Option<Duration> {
        match self.tunn.as_deref().and_then(Noise::time_since_last_handshake) {
            Some(age) => Some(age),
            None => self.last_handshake.map(|t| t.elapsed()),
        }
    }

    /// (last handshake age, bytes sent, bytes received), over every state
    /// the peer had.
    pub(crate) fn stats(&self) -> (Option<Duration>, u64, u64) {
        let (tx, rx) = self.tunn.as_deref().map_or((0, 0), |t| {
            let (_, tx, rx, ..) = t.stats();
            (tx as u64, rx as u64)
        });
        (self.time_since_last_handshake(), self.rested_tx + tx, self.rested_rx + rx)
    }

    /// Note use and the last handshake; put the state to rest when it has
    /// been idle [`REST_AFTER`] with no session younger than
    /// [`SESSION_KEPT`] and no keepalive to send. Returns whether it rests
    /// now.
    pub(crate) fn rest_if_idle(&mut self, now: Instant, maker: &TunnMaker) -> bool {
        let Some(t) = self.tunn.as_deref() else { return false };
        let (age, tx, rx, ..) = t.stats();
        if let Some(age) = age {
            self.last_handshake = now.checked_sub(age);
        }
        if (tx, rx) != self.seen {
            self.seen = (tx, rx);
            self.used = now;
        }
        let fresh = age.is_some_and(|a| a < SESSION_KEPT);
        if fresh || self.spec.keepalive.is_some() || now.saturating_duration_since(self.used) < REST_AFTER {
            return false;
        }
        self.rested_tx += tx as u64;
        self.rested_rx += rx as u64;
        self.tunn = None;
        self.awake.store(false, Ordering::Relaxed);
        maker.awake.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Go on with the sessions a previous process saved (`skip`: see
    /// `keep::SKIP`).
    pub(crate) fn restore(&mut self, maker: &TunnMaker, saved: &[(u8, Saved)], skip: u64) {
        self.tunn(maker).restore(saved, skip);
    }

    /// Note that weft started a handshake: the state is in use.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.used = now;
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

    /// A session already awake with `tunn` (tests).
    #[cfg(test)]
    pub(crate) fn with_tunn(tunn: Noise, spec: TunnSpec, endpoint: SocketAddr) -> Session {
        let mut s = Session::new(spec, endpoint);
        s.tunn = Some(Box::new(tunn));
        s
    }
}

#[cfg(test)]
mod tests {
    use boringtun::noise::Tunn;
    use boringtun::x25519::StaticSecret;

    use super::*;

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], port))
    }

    /// Two protocol states that know each other's keys: weft's here,
    /// boringtun's (the reference) there.
    fn pair() -> (Noise, Tunn) {
        let (a, b) = (StaticSecret::random_from_rng(rand_core::OsRng), StaticSecret::random_from_rng(rand_core::OsRng));
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        (Noise::new(Arc::new(Identity::new(a)), pb, None, None, 1), Tunn::new(b, pa, None, None, 2, None))
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
        let spec = TunnSpec { public: PublicKey::from([0; 32]), psk: None, keepalive: None, index: 1 };
        let mut s = Session::with_tunn(here, spec, lease);
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);

        // The peer's initiation, through its NAT: authenticated, it moves.
        let init = message(there.format_handshake_initiation(&mut buf, false));
        let r = s.awake().unwrap().decapsulate(Some(nat.ip()), &init, &mut out);
        assert_eq!(s.roam(1, nat, &r), Some(lease));
        let response = message(r);
        assert_eq!(s.endpoint, nat);
        // The same initiation replayed from elsewhere: refused, no move.
        let r = s.awake().unwrap().decapsulate(Some(forger.ip()), &init, &mut out);
        assert!(matches!(r, TunnResult::Err(_)), "{r:?}");
        assert_eq!(s.roam(1, forger, &r), None);
        assert_eq!(s.endpoint, nat);

        // The peer completes the handshake and sends data from a new port.
        let _ = there.decapsulate(None, &response, &mut buf);
        let data = message(there.encapsulate(&packet([10, 244, 2, 9]), &mut buf));
        let moved = addr(30, 40001);
        let r = s.awake().unwrap().decapsulate(Some(moved.ip()), &data, &mut out);
        assert!(matches!(r, TunnResult::WriteToTunnelV4(..)), "{r:?}");
        assert_eq!(s.roam(4, moved, &r), Some(nat));
        // That data replayed, junk of its type, a cookie reply's type: none moves it.
        let r = s.awake().unwrap().decapsulate(Some(forger.ip()), &data, &mut out);
        assert_eq!(s.roam(4, forger, &r), None, "{r:?}");
        let mut junk = data.clone();
        junk[40] ^= 1;
        let r = s.awake().unwrap().decapsulate(Some(forger.ip()), &junk, &mut out);
        assert_eq!(s.roam(4, forger, &r), None, "{r:?}");
        assert_eq!(s.roam(3, forger, &TunnResult::Done), None);
        assert_eq!(s.endpoint, moved);
    }

    fn spec(keepalive: Option<u16>) -> TunnSpec {
        let public = PublicKey::from(&StaticSecret::random_from_rng(rand_core::OsRng));
        TunnSpec { public, psk: None, keepalive, index: 3 }
    }

    /// A peer's state is made when used and rests once quiet past
    /// REST_AFTER with no session; data cannot wake it, an initiation can;
    /// a peer with a keepalive never rests.
    #[test]
    fn a_quiet_peer_s_state_rests_and_wakes_when_needed() {
        let maker = TunnMaker::new(StaticSecret::random_from_rng(rand_core::OsRng));
        let mut s = Session::new(spec(None), addr(2, 51820));
        assert!(s.awake().is_none(), "made when needed, not when programmed");
        assert!(s.tunn_for(4, &maker).is_none(), "data cannot wake it");
        assert!(s.tunn_for(2, &maker).is_none(), "nor a response to nothing");
        let mut buf = vec![0u8; 256];
        let t0 = Instant::now();
        let _ = s.tunn(&maker).format_handshake_initiation(&mut buf, false);
        assert_eq!(maker.awake.load(Ordering::Relaxed), 1);
        assert!(!s.rest_if_idle(t0 + Duration::from_secs(10), &maker), "a handshake is being retried");
        assert!(s.rest_if_idle(t0 + REST_AFTER + Duration::from_secs(1), &maker));
        assert!(s.awake().is_none() && !s.awake_flag().load(Ordering::Relaxed));
        assert_eq!(maker.awake.load(Ordering::Relaxed), 0);
        assert!(s.tunn_for(1, &maker).is_some(), "an initiation wakes it");
        assert_eq!(maker.awake.load(Ordering::Relaxed), 1);

        let mut k = Session::new(spec(Some(25)), addr(3, 51820));
        let _ = k.tunn(&maker);
        assert!(!k.rest_if_idle(t0 + Duration::from_secs(3600), &maker), "its keepalive must go out");
    }
}
