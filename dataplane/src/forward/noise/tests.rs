//! weft's protocol against boringtun's `Tunn` (the reference peer): each
//! side as initiator and as responder, data both ways, replays, cookies
//! under load, and a session carried over into a new state.

use std::net::{IpAddr, Ipv4Addr};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::StaticSecret;

use super::*;

fn secret() -> StaticSecret {
    StaticSecret::random_from_rng(rand_core::OsRng)
}

/// An IPv4 packet from `src` with `body`.
fn packet(src: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + body.len()];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 244, 1, 2]);
    p[20..].copy_from_slice(body);
    p
}

fn bytes(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("expected a message, got {other:?}"),
    }
}

const FROM: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)));

struct Pair {
    weft: Noise,
    reference: Tunn,
}

fn pair() -> Pair {
    let (w, b) = (secret(), secret());
    let id = Arc::new(Identity::new(w.clone()));
    Pair {
        weft: Noise::new(id, PublicKey::from(&b), None, None, 7),
        reference: Tunn::new(b, PublicKey::from(&w), None, None, 9, None),
    }
}

/// A handshake weft starts, completed with the reference's response and
/// weft's keepalive.
fn established(p: &mut Pair) {
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = bytes(p.weft.format_handshake_initiation(&mut buf, false));
    let resp = bytes(p.reference.decapsulate(FROM, &init, &mut out));
    let keepalive = bytes(p.weft.decapsulate(FROM, &resp, &mut buf));
    let _ = p.reference.decapsulate(FROM, &keepalive, &mut out);
}

/// Data from the reference to weft and back.
fn talk(p: &mut Pair) {
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let m = bytes(p.reference.encapsulate(&packet([10, 244, 2, 1], b"ping"), &mut buf));
    match p.weft.decapsulate(FROM, &m, &mut out) {
        TunnResult::WriteToTunnelV4(b, src) => {
            assert_eq!(src, Ipv4Addr::new(10, 244, 2, 1));
            assert_eq!(&b[20..], b"ping");
        }
        other => panic!("weft did not open the reference's data: {other:?}"),
    }
    let m = bytes(p.weft.encapsulate(&packet([10, 244, 1, 1], b"pong"), &mut buf));
    match p.reference.decapsulate(FROM, &m, &mut out) {
        TunnResult::WriteToTunnelV4(b, _) => assert_eq!(&b[20..], b"pong"),
        other => panic!("the reference did not open weft's data: {other:?}"),
    }
}

#[test]
fn weft_initiates_and_the_reference_answers() {
    let mut p = pair();
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    // A packet with no session waits and starts the handshake.
    let init = bytes(p.weft.encapsulate(&packet([10, 244, 1, 1], b"first"), &mut buf));
    assert_eq!(init.len(), INITIATION);
    let resp = bytes(p.reference.decapsulate(FROM, &init, &mut out));
    // The response completes it; the packet that waited goes first.
    let waited = bytes(p.weft.decapsulate(FROM, &resp, &mut buf));
    match p.reference.decapsulate(FROM, &waited, &mut out) {
        TunnResult::WriteToTunnelV4(b, _) => assert_eq!(&b[20..], b"first"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.weft.decapsulate(None, &[], &mut buf), TunnResult::Done));
    talk(&mut p);
    assert!(p.weft.time_since_last_handshake().is_some());
}

#[test]
fn the_reference_initiates_and_weft_answers() {
    let mut p = pair();
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = bytes(p.reference.format_handshake_initiation(&mut buf, false));
    let resp = bytes(p.weft.decapsulate(FROM, &init, &mut out));
    assert_eq!(resp.len(), RESPONSE);
    let keepalive = bytes(p.reference.decapsulate(FROM, &resp, &mut buf));
    assert!(matches!(p.weft.decapsulate(FROM, &keepalive, &mut out), TunnResult::Done));
    talk(&mut p);
    // The same initiation again is a replay.
    assert!(matches!(p.weft.decapsulate(FROM, &init, &mut out), TunnResult::Err(WireGuardError::WrongTai64nTimestamp)));
}

#[test]
fn replayed_or_changed_data_is_refused() {
    let mut p = pair();
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    established(&mut p);
    let m = bytes(p.reference.encapsulate(&packet([10, 244, 2, 1], b"once"), &mut buf));
    assert!(matches!(p.weft.decapsulate(FROM, &m, &mut out), TunnResult::WriteToTunnelV4(..)));
    assert!(matches!(p.weft.decapsulate(FROM, &m, &mut out), TunnResult::Err(WireGuardError::DuplicateCounter)));
    let mut changed = m.clone();
    changed[5] ^= 1;
    assert!(matches!(p.weft.decapsulate(FROM, &changed, &mut out), TunnResult::Err(WireGuardError::NoCurrentSession)));
    let mut changed = bytes(p.reference.encapsulate(&packet([10, 244, 2, 1], b"twice"), &mut buf));
    let last = changed.len() - 1;
    changed[last] ^= 1;
    assert!(matches!(p.weft.decapsulate(FROM, &changed, &mut out), TunnResult::Err(WireGuardError::InvalidAeadTag)));
}

#[test]
fn a_cookie_under_load_is_taken_and_the_next_initiation_carries_it() {
    let mut p = pair();
    let reference_key = p.weft.peer.public;
    let limiter = RateLimiter::new(&reference_key, 0);
    let (mut buf, mut reply) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = bytes(p.weft.format_handshake_initiation(&mut buf, false));
    let cookie = match limiter.verify_packet(FROM, &init, &mut reply) {
        Err(TunnResult::WriteToNetwork(c)) => c.to_vec(),
        other => panic!("expected a cookie reply under load, got {other:?}"),
    };
    assert!(matches!(p.weft.decapsulate(FROM, &cookie, &mut buf), TunnResult::Done));
    let again = bytes(p.weft.format_handshake_initiation(&mut buf, true));
    assert!(limiter.verify_packet(FROM, &again, &mut reply).is_ok(), "mac2 made with the cookie passes under load");
}

#[test]
fn a_restored_state_goes_on_with_the_peer_without_a_handshake() {
    let mut p = pair();
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    established(&mut p);
    talk(&mut p);
    // What the reference sealed before the restart, read after it.
    let in_flight = bytes(p.reference.encapsulate(&packet([10, 244, 2, 1], b"late"), &mut buf));
    let saved = p.weft.save();
    assert_eq!(saved.len(), 1);
    let id = p.weft.id.clone();
    p.weft = Noise::new(id, p.weft.peer.public, None, None, 7);
    p.weft.restore(&saved, 1 << 32);
    assert!(matches!(p.weft.decapsulate(FROM, &in_flight, &mut out), TunnResult::WriteToTunnelV4(..)));
    talk(&mut p);
    // A state of another peer index takes nothing.
    let mut other = Noise::new(p.weft.id.clone(), p.weft.peer.public, None, None, 8);
    other.restore(&saved, 1 << 32);
    assert!(other.time_since_last_handshake().is_none());
}

#[test]
fn a_forged_initiation_changes_nothing() {
    let mut p = pair();
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut init = bytes(p.reference.format_handshake_initiation(&mut buf, false));
    init[60] ^= 1;
    assert!(matches!(p.weft.decapsulate(FROM, &init, &mut out), TunnResult::Err(_)));
    assert!(p.weft.next.is_none() && p.weft.time_since_last_handshake().is_none());
    // An initiation from a key that is not the peer's.
    let mut stranger = Tunn::new(secret(), p.weft.id.public, None, None, 3, None);
    let init = bytes(stranger.format_handshake_initiation(&mut buf, false));
    assert!(matches!(p.weft.decapsulate(FROM, &init, &mut out), TunnResult::Err(WireGuardError::WrongKey)));
}
