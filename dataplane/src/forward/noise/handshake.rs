//! WireGuard's three handshake messages, made and opened as the paper
//! defines them (Noise_IKpsk2 over Curve25519, ChaCha20-Poly1305 and
//! BLAKE2s; mac1 and mac2; the cookie reply). Pure: no state beyond what
//! the caller keeps between the two halves ([`Initiated`]).
//!
//! | message    | bytes | layout                                                        |
//! |------------|-------|---------------------------------------------------------------|
//! | initiation | 148   | type 1, sender, ephemeral 32, static 32+16, timestamp 12+16, mac1, mac2 |
//! | response   | 92    | type 2, sender, receiver, ephemeral 32, empty 0+16, mac1, mac2 |
//! | cookie     | 64    | type 3, receiver, nonce 24, cookie 16+16                      |

use boringtun::x25519::{PublicKey, StaticSecret};

use super::crypto::{hash, kdf, mac, mac_by_cookie, open, seal, tai64n_now};
use super::transport::Transport;

pub(crate) const INITIATION: usize = 148;
pub(crate) const RESPONSE: usize = 92;
pub(crate) const COOKIE_REPLY: usize = 64;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// This node's static key pair and what is derived from it once.
pub struct Identity {
    pub(crate) private: StaticSecret,
    pub(crate) public: PublicKey,
    /// The key of mac1 on messages sent to this node.
    mac1_key: [u8; 32],
}

impl Identity {
    pub fn new(private: StaticSecret) -> Identity {
        let public = PublicKey::from(&private);
        Identity { mac1_key: hash(LABEL_MAC1, public.as_bytes()), private, public }
    }
}

/// A peer's static key and what is derived from it and this node's key.
pub(crate) struct PeerKeys {
    pub(crate) public: PublicKey,
    psk: [u8; 32],
    /// DH(this node's static, the peer's static): made once per peer.
    static_shared: [u8; 32],
    /// The key of mac1 on messages sent to the peer.
    mac1_key: [u8; 32],
    /// The key the peer's cookie replies are sealed with.
    cookie_key: [u8; 32],
}

impl PeerKeys {
    pub(crate) fn new(id: &Identity, public: PublicKey, psk: Option<[u8; 32]>) -> PeerKeys {
        PeerKeys {
            static_shared: id.private.diffie_hellman(&public).to_bytes(),
            mac1_key: hash(LABEL_MAC1, public.as_bytes()),
            cookie_key: hash(LABEL_COOKIE, public.as_bytes()),
            psk: psk.unwrap_or_default(),
            public,
        }
    }
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// mac1 does not verify.
    Mac,
    /// A seal does not open, or a Diffie-Hellman gave zero.
    Seal,
    /// An initiation from another key than this peer's.
    WrongKey,
}

/// The chaining key and hash every handshake with `responder` starts from.
fn start(responder: &PublicKey) -> ([u8; 32], [u8; 32]) {
    let ck = hash(CONSTRUCTION, &[]);
    let h = hash(&hash(&ck, IDENTIFIER), responder.as_bytes());
    (ck, h)
}

/// DH, refusing an all-zero result (a low-order point).
fn dh(private: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], Refused> {
    let shared = private.diffie_hellman(&PublicKey::from(*public)).to_bytes();
    if shared == [0u8; 32] {
        return Err(Refused::Seal);
    }
    Ok(shared)
}

fn verify_mac1(key: &[u8; 32], msg: &[u8]) -> Result<(), Refused> {
    let at = msg.len() - 32;
    let want = mac(key, &msg[..at]);
    // Compared in constant time: mac1 is checked before anything is trusted.
    let diff = want.iter().zip(&msg[at..at + 16]).fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff != 0 {
        return Err(Refused::Mac);
    }
    Ok(())
}

/// Write mac1 (and mac2 with a cookie) at the end of `msg`; returns mac1.
fn add_macs(key: &[u8; 32], cookie: Option<&[u8; 16]>, msg: &mut [u8]) -> [u8; 16] {
    let at = msg.len() - 32;
    let mac1 = mac(key, &msg[..at]);
    msg[at..at + 16].copy_from_slice(&mac1);
    let mac2 = cookie.map_or([0u8; 16], |c| mac_by_cookie(c, &msg[..at + 16]));
    msg[at + 16..].copy_from_slice(&mac2);
    mac1
}

/// What the initiator keeps until the response.
pub(crate) struct Initiated {
    pub(crate) local_index: u32,
    ck: [u8; 32],
    h: [u8; 32],
    ephemeral: StaticSecret,
    /// mac1 of the initiation: a cookie reply is sealed over it.
    pub(crate) mac1: [u8; 16],
}

/// Write an initiation to `peer` into `out`.
pub(crate) fn initiate(
    id: &Identity,
    peer: &PeerKeys,
    local_index: u32,
    cookie: Option<&[u8; 16]>,
    out: &mut [u8; INITIATION],
) -> Initiated {
    let (mut ck, mut h) = start(&peer.public);
    let ephemeral = StaticSecret::random_from_rng(rand_core::OsRng);
    let e_pub = PublicKey::from(&ephemeral);
    out[..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..8].copy_from_slice(&local_index.to_le_bytes());
    out[8..40].copy_from_slice(e_pub.as_bytes());
    [ck] = kdf::<1>(&ck, e_pub.as_bytes());
    h = hash(&h, e_pub.as_bytes());
    let [c, k] = kdf::<2>(&ck, &ephemeral.diffie_hellman(&peer.public).to_bytes());
    ck = c;
    seal(&k, 0, id.public.as_bytes(), &h, &mut out[40..88]);
    h = hash(&h, &out[40..88]);
    let [c, k] = kdf::<2>(&ck, &peer.static_shared);
    ck = c;
    seal(&k, 0, &tai64n_now(), &h, &mut out[88..116]);
    h = hash(&h, &out[88..116]);
    let mac1 = add_macs(&peer.mac1_key, cookie, out);
    Initiated { local_index, ck, h, ephemeral, mac1 }
}

/// An initiation opened: who sent it and what the response needs.
pub(crate) struct Opened {
    pub(crate) sender_index: u32,
    pub(crate) initiator: PublicKey,
    pub(crate) timestamp: [u8; 12],
    ephemeral: [u8; 32],
    ck: [u8; 32],
    h: [u8; 32],
}

/// Open an initiation sent to this node (`msg`: 148 bytes).
pub(crate) fn open_initiation(id: &Identity, msg: &[u8]) -> Result<Opened, Refused> {
    verify_mac1(&id.mac1_key, msg)?;
    let (mut ck, mut h) = start(&id.public);
    let ephemeral: [u8; 32] = msg[8..40].try_into().expect("148 bytes");
    [ck] = kdf::<1>(&ck, &ephemeral);
    h = hash(&h, &ephemeral);
    let [c, k] = kdf::<2>(&ck, &dh(&id.private, &ephemeral)?);
    ck = c;
    let mut initiator = [0u8; 32];
    open(&k, 0, &msg[40..88], &h, &mut initiator).ok_or(Refused::Seal)?;
    h = hash(&h, &msg[40..88]);
    let [c, k] = kdf::<2>(&ck, &dh(&id.private, &initiator)?);
    ck = c;
    let mut timestamp = [0u8; 12];
    open(&k, 0, &msg[88..116], &h, &mut timestamp).ok_or(Refused::Seal)?;
    h = hash(&h, &msg[88..116]);
    let sender_index = u32::from_le_bytes(msg[4..8].try_into().expect("148 bytes"));
    Ok(Opened { sender_index, initiator: PublicKey::from(initiator), timestamp, ephemeral, ck, h })
}

/// Answer an opened initiation from `peer` (whose key it must be): the
/// response into `out` and the new session (this side the responder).
pub(crate) fn respond(
    peer: &PeerKeys,
    opened: &Opened,
    local_index: u32,
    cookie: Option<&[u8; 16]>,
    out: &mut [u8; RESPONSE],
) -> Result<Transport, Refused> {
    if opened.initiator != peer.public {
        return Err(Refused::WrongKey);
    }
    let (mut ck, mut h) = (opened.ck, opened.h);
    let ephemeral = StaticSecret::random_from_rng(rand_core::OsRng);
    let e_pub = PublicKey::from(&ephemeral);
    out[..4].copy_from_slice(&2u32.to_le_bytes());
    out[4..8].copy_from_slice(&local_index.to_le_bytes());
    out[8..12].copy_from_slice(&opened.sender_index.to_le_bytes());
    out[12..44].copy_from_slice(e_pub.as_bytes());
    [ck] = kdf::<1>(&ck, e_pub.as_bytes());
    h = hash(&h, e_pub.as_bytes());
    [ck] = kdf::<1>(&ck, &dh(&ephemeral, &opened.ephemeral)?);
    [ck] = kdf::<1>(&ck, &dh(&ephemeral, peer.public.as_bytes())?);
    let [c, t, k] = kdf::<3>(&ck, &peer.psk);
    ck = c;
    h = hash(&h, &t);
    seal(&k, 0, &[], &h, &mut out[44..60]);
    add_macs(&peer.mac1_key, cookie, out);
    let [recv, send] = kdf::<2>(&ck, &[]);
    Ok(Transport::new(local_index, opened.sender_index, send, recv, false))
}

/// Complete the handshake `sent` with the peer's response `msg` (92
/// bytes, its receiver index already matched): the new session (this
/// side the initiator).
pub(crate) fn complete(id: &Identity, peer: &PeerKeys, sent: &Initiated, msg: &[u8]) -> Result<Transport, Refused> {
    verify_mac1(&id.mac1_key, msg)?;
    let (mut ck, mut h) = (sent.ck, sent.h);
    let e_r: [u8; 32] = msg[12..44].try_into().expect("92 bytes");
    [ck] = kdf::<1>(&ck, &e_r);
    h = hash(&h, &e_r);
    [ck] = kdf::<1>(&ck, &dh(&sent.ephemeral, &e_r)?);
    [ck] = kdf::<1>(&ck, &dh(&id.private, &e_r)?);
    let [c, t, k] = kdf::<3>(&ck, &peer.psk);
    ck = c;
    h = hash(&h, &t);
    open(&k, 0, &msg[44..60], &h, &mut []).ok_or(Refused::Seal)?;
    let [send, recv] = kdf::<2>(&ck, &[]);
    let remote = u32::from_le_bytes(msg[4..8].try_into().expect("92 bytes"));
    Ok(Transport::new(sent.local_index, remote, send, recv, true))
}

/// The cookie in a cookie reply from `peer` to the handshake `sent`.
pub(crate) fn open_cookie(peer: &PeerKeys, sent: &Initiated, msg: &[u8]) -> Option<[u8; 16]> {
    let nonce: [u8; 24] = msg[8..32].try_into().ok()?;
    super::crypto::xopen(&peer.cookie_key, &nonce, &msg[32..64], &sent.mac1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Identity, Identity) {
        let a = Identity::new(StaticSecret::random_from_rng(rand_core::OsRng));
        let b = Identity::new(StaticSecret::random_from_rng(rand_core::OsRng));
        (a, b)
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_a_wrong_psk_fails() {
        let (a, b) = pair();
        for (psk_a, psk_b, ok) in
            [(None, None, true), (Some([9; 32]), Some([9; 32]), true), (Some([9; 32]), None, false)]
        {
            let (a_b, b_a) = (PeerKeys::new(&a, b.public, psk_a), PeerKeys::new(&b, a.public, psk_b));
            let mut init = [0u8; INITIATION];
            let sent = initiate(&a, &a_b, 0x100, None, &mut init);
            let opened = open_initiation(&b, &init).unwrap();
            assert_eq!(opened.initiator, a.public);
            let mut resp = [0u8; RESPONSE];
            let mut r = respond(&b_a, &opened, 0x200, None, &mut resp).unwrap();
            match complete(&a, &a_b, &sent, &resp) {
                Ok(mut i) => {
                    assert!(ok);
                    let (mut m, mut out) = ([0u8; 64], [0u8; 64]);
                    let n = i.seal(b"ping", &mut m).unwrap();
                    assert_eq!(r.open(&m[..n], &mut out), Ok(4));
                    let n = r.seal(b"pong", &mut m).unwrap();
                    assert_eq!(i.open(&m[..n], &mut out), Ok(4));
                }
                Err(e) => assert!(!ok, "{e:?}"),
            }
        }
    }

    #[test]
    fn a_changed_byte_or_a_wrong_receiver_is_refused() {
        let (a, b) = pair();
        let a_b = PeerKeys::new(&a, b.public, None);
        let mut init = [0u8; INITIATION];
        initiate(&a, &a_b, 1, None, &mut init);
        for at in [0usize, 9, 50, 100, 120] {
            let mut bad = init;
            bad[at] ^= 1;
            assert!(open_initiation(&b, &bad).is_err(), "byte {at}");
        }
        let (c, _) = pair();
        assert_eq!(open_initiation(&c, &init).err(), Some(Refused::Mac), "sent to another node");
        let opened = open_initiation(&b, &init).unwrap();
        let c_peer = PeerKeys::new(&b, c.public, None);
        let mut resp = [0u8; RESPONSE];
        assert_eq!(respond(&c_peer, &opened, 2, None, &mut resp).err(), Some(Refused::WrongKey));
    }
}
