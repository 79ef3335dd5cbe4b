//! The wireguard backend's pure part (issue 20, not wired into a backend
//! yet): the peer table and the per-datagram decisions, with no I/O and
//! no clock of its own, tested like [`super::decide`].
//!
//! The protocol itself (handshakes, sessions, cookies, rekeying, the replay
//! window) is boringtun's `noise` module: one [`Tunn`] per peer, created
//! with the peer's index. What weft adds around it:
//!
//! - **sending**: the peer whose AllowedIPs hold a packet's destination, by
//!   longest prefix ([`PeerTable::route`]);
//! - **receiving**: which peer's [`Tunn`] a datagram is for
//!   ([`PeerTable::classify`]): a handshake initiation by the initiator's
//!   static key (decrypted with this node's private key), every other
//!   message by the receiver index this node gave out;
//! - **after decryption**: the inner packet's source must be inside the
//!   sender's AllowedIPs ([`PeerTable::admit`]), else it is dropped, as
//!   WireGuard's cryptokey routing requires;
//! - every drop has a [`WgDrop`] reason, the label of its metric.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

/// A WireGuard key (public, private or preshared): 32 bytes, written as
/// standard base64 (44 characters), as `wg` and flanneld write them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

/// Why a text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64: {0}")]
    NotBase64(String),
    #[error("{0} bytes, a WireGuard key is 32 (44 characters of base64, as `wg genkey` prints)")]
    WrongLength(usize),
}

impl Key {
    /// A new private key from the operating system's random source.
    pub fn generate() -> Key {
        Key(StaticSecret::random_from_rng(rand_core::OsRng).to_bytes())
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        Key(PublicKey::from(&StaticSecret::from(self.0)).to_bytes())
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|e| KeyError::NotBase64(e.to_string()))?;
        let n = bytes.len();
        bytes.try_into().map(Key).map_err(|_| KeyError::WrongLength(n))
    }
}

/// Keys are never printed whole: a private key must not reach a log.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Why a datagram or a decrypted packet was dropped; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WgDrop {
    /// Not a WireGuard message (wrong type or length).
    Malformed,
    /// A handshake from a key that holds no lease, or a message for an
    /// index this node never gave out.
    UnknownPeer,
    /// A MAC or AEAD tag that does not verify: tampered or forged.
    Authentication,
    /// A counter already seen or too old for the replay window.
    Replay,
    /// Data for a session that expired or does not exist (yet).
    NoSession,
    /// Under handshake load: answered with a cookie instead.
    UnderLoad,
    /// A handshake message that passed its checks, but the handshake
    /// thread's queue was full.
    InboxFull,
    /// A decrypted packet whose source is outside the sender's AllowedIPs.
    SpoofedSource,
    /// A decrypted packet that is neither IPv4 nor IPv6.
    NotIp,
    /// A packet from the TUN device for an address no peer's AllowedIPs hold.
    NoRoute,
    /// Anything else boringtun reports (a buffer too small, a timestamp).
    Other,
}

impl WgDrop {
    pub const ALL: [WgDrop; 11] = [
        WgDrop::Malformed,
        WgDrop::UnknownPeer,
        WgDrop::Authentication,
        WgDrop::Replay,
        WgDrop::NoSession,
        WgDrop::UnderLoad,
        WgDrop::InboxFull,
        WgDrop::SpoofedSource,
        WgDrop::NotIp,
        WgDrop::NoRoute,
        WgDrop::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            WgDrop::Malformed => "malformed",
            WgDrop::UnknownPeer => "unknown_peer",
            WgDrop::Authentication => "authentication",
            WgDrop::Replay => "replay",
            WgDrop::NoSession => "no_session",
            WgDrop::UnderLoad => "under_load",
            WgDrop::InboxFull => "inbox_full",
            WgDrop::SpoofedSource => "spoofed_source",
            WgDrop::NotIp => "not_ip",
            WgDrop::NoRoute => "no_route",
            WgDrop::Other => "other",
        }
    }

    /// The reason for one of boringtun's errors.
    pub fn from_error(e: &WireGuardError) -> WgDrop {
        use WireGuardError as E;
        match e {
            E::IncorrectPacketLength | E::WrongPacketType | E::InvalidPacket | E::UnexpectedPacket => WgDrop::Malformed,
            E::WrongIndex => WgDrop::UnknownPeer,
            E::WrongKey | E::InvalidMac | E::InvalidAeadTag => WgDrop::Authentication,
            E::InvalidCounter | E::DuplicateCounter | E::WrongTai64nTimestamp => WgDrop::Replay,
            E::NoCurrentSession | E::ConnectionExpired => WgDrop::NoSession,
            E::UnderLoad => WgDrop::UnderLoad,
            _ => WgDrop::Other,
        }
    }
}

/// One peer as the table knows it: from its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: Key,
    /// `PublicIP:Port` from the lease.
    pub endpoint: SocketAddr,
    /// The peer's subnet(s).
    pub allowed_ips: Vec<IpNet>,
    /// The index its [`Tunn`] was created with (24 bits; boringtun puts
    /// it in the top bits of every receiver index it gives out). Stable
    /// for as long as the peer's key holds a lease, so that its sessions
    /// survive table rebuilds.
    pub index: u32,
}

/// Which peer a received datagram is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Hand it to this peer's [`Tunn::decapsulate`] (by its index).
    Peer(u32),
    Drop(WgDrop),
}

/// The peer table: by AllowedIPs (longest prefix), by index, by public key.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<u32, WgPeer>,
    by_key: HashMap<Key, u32>,
    /// The lease's endpoint -> index (the first peer, if two share one).
    by_endpoint: HashMap<SocketAddr, u32>,
    /// (prefix length, network -> index), longest prefix first, per family.
    v4: Vec<(u8, HashMap<u32, u32>)>,
    v6: Vec<(u8, HashMap<u128, u32>)>,
}

/// Longest prefix first.
fn longest_first<K>(m: HashMap<u8, HashMap<K, u32>>) -> Vec<(u8, HashMap<K, u32>)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    v
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl PeerTable {
    pub fn new(peers: Vec<WgPeer>) -> PeerTable {
        let mut v4: HashMap<u8, HashMap<u32, u32>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, u32>> = HashMap::new();
        let mut table = PeerTable::default();
        for p in peers {
            for net in &p.allowed_ips {
                match net {
                    IpNet::V4(n) => {
                        v4.entry(n.prefix_len()).or_default().insert(u32::from(n.network()), p.index);
                    }
                    IpNet::V6(n) => {
                        v6.entry(n.prefix_len()).or_default().insert(u128::from(n.network()), p.index);
                    }
                }
            }
            table.by_key.insert(p.public_key, p.index);
            table.by_endpoint.entry(p.endpoint).or_insert(p.index);
            table.peers.insert(p.index, p);
        }
        table.v4 = longest_first(v4);
        table.v6 = longest_first(v6);
        table
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// The peer whose lease names `endpoint` (`PublicIP:Port`).
    pub fn at_endpoint(&self, endpoint: SocketAddr) -> Option<u32> {
        self.by_endpoint.get(&endpoint).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn peer(&self, index: u32) -> Option<&WgPeer> {
        self.peers.get(&index)
    }

    pub fn by_key(&self, key: &Key) -> Option<&WgPeer> {
        self.by_key.get(key).and_then(|i| self.peers.get(i))
    }

    /// The peer whose AllowedIPs hold `dst`, by longest prefix.
    pub fn route(&self, dst: IpAddr) -> Option<&WgPeer> {
        let index = match dst {
            IpAddr::V4(d) => {
                let d = u32::from(d);
                self.v4.iter().find_map(|(len, nets)| nets.get(&(d & mask4(*len))))
            }
            IpAddr::V6(d) => {
                let d = u128::from(d);
                self.v6.iter().find_map(|(len, nets)| nets.get(&(d & mask6(*len))))
            }
        }?;
        self.peers.get(index)
    }

    /// Which peer's session a received datagram belongs to. A handshake
    /// initiation is opened with this node's keys to learn the initiator's
    /// static key (nothing else is trusted before that); the other
    /// messages name the receiver index this node gave out.
    pub fn classify(&self, datagram: &[u8], own_private: &StaticSecret, own_public: &PublicKey) -> Incoming {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(e) => return Incoming::Drop(WgDrop::from_error(&e)),
        };
        let index = match packet {
            Packet::HandshakeInit(init) => match parse_handshake_anon(own_private, own_public, &init) {
                Ok(half) => match self.by_key(&Key(half.peer_static_public)) {
                    Some(p) => return Incoming::Peer(p.index),
                    None => return Incoming::Drop(WgDrop::UnknownPeer),
                },
                Err(e) => return Incoming::Drop(WgDrop::from_error(&e)),
            },
            Packet::HandshakeResponse(r) => r.receiver_idx,
            Packet::PacketCookieReply(c) => c.receiver_idx,
            Packet::PacketData(d) => d.receiver_idx,
        };
        let index = index >> 8;
        if self.peers.contains_key(&index) {
            Incoming::Peer(index)
        } else {
            Incoming::Drop(WgDrop::UnknownPeer)
        }
    }

    /// Whether peer `index` may have sent a packet from `src` (its
    /// AllowedIPs hold it).
    pub fn admit(&self, index: u32, src: IpAddr) -> Result<(), WgDrop> {
        let peer = self.peers.get(&index).ok_or(WgDrop::UnknownPeer)?;
        if peer.allowed_ips.iter().any(|n| n.contains(&src)) {
            Ok(())
        } else {
            Err(WgDrop::SpoofedSource)
        }
    }
}

/// What to do with the result of one [`Tunn::decapsulate`] from peer
/// `index`.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Write these bytes (a handshake response, a cookie, a keepalive or
    /// queued data) to the peer's endpoint, then call `decapsulate` again
    /// with an empty datagram until it is [`Received::Nothing`].
    ToNetwork(usize),
    /// Write the first `n` bytes of the buffer into the TUN device.
    ToTunnel(usize),
    /// Nothing more (a keepalive, a completed handshake).
    Nothing,
    Drop(WgDrop),
}

/// Whether a message of type `kind` that boringtun opened with `result`
/// proves its sender holds the peer's key, so that its source may become
/// the peer's endpoint: an initiation or response that completed its part
/// of the handshake (a replayed one fails its timestamp or its state), or
/// a data message that decrypted (a replayed one fails the replay
/// window). A cookie reply proves nothing of the kind.
pub fn authenticated(kind: u8, result: &TunnResult<'_>) -> bool {
    matches!(kind, 1 | 2 | 4) && !matches!(result, TunnResult::Err(_))
}

/// Judge one decapsulation: an inner packet is admitted only from the
/// sender's AllowedIPs.
pub fn received(table: &PeerTable, index: u32, result: &TunnResult<'_>) -> Received {
    let (len, src) = match result {
        TunnResult::Done => return Received::Nothing,
        TunnResult::Err(e) => return Received::Drop(WgDrop::from_error(e)),
        TunnResult::WriteToNetwork(b) => return Received::ToNetwork(b.len()),
        TunnResult::WriteToTunnelV4(b, src) => (b.len(), IpAddr::V4(*src)),
        TunnResult::WriteToTunnelV6(b, src) => (b.len(), IpAddr::V6(*src)),
    };
    match table.admit(index, src) {
        Ok(()) => Received::ToTunnel(len),
        Err(reason) => Received::Drop(reason),
    }
}

/// Indexes for peers: stable per key, reused only after the key is gone.
/// Giving one out costs O(1) on average: the indexes in use are a set
/// kept beside the map, not rebuilt per call (which made programming N
/// peers O(N²)).
#[derive(Debug, Default)]
pub struct Indexes {
    by_key: HashMap<Key, u32>,
    used: std::collections::HashSet<u32>,
    next: u32,
}

/// boringtun keeps 24 bits of a peer index.
const MAX_INDEX: u32 = (1 << 24) - 1;

impl Indexes {
    /// The index of `key`, given out now if it has none. `None` when all
    /// 2^24 are in use.
    pub fn of(&mut self, key: Key) -> Option<u32> {
        if let Some(i) = self.by_key.get(&key) {
            return Some(*i);
        }
        if self.used.len() >= MAX_INDEX as usize {
            return None;
        }
        loop {
            let candidate = self.next;
            self.next = if self.next >= MAX_INDEX { 1 } else { self.next + 1 };
            if candidate != 0 && self.used.insert(candidate) {
                self.by_key.insert(key, candidate);
                return Some(candidate);
            }
        }
    }

    /// Give `key` the index `index` (the one it had in the last process),
    /// if the key has none yet and the index is free; whether it has it now.
    pub fn reserve(&mut self, key: Key, index: u32) -> bool {
        if let Some(i) = self.by_key.get(&key) {
            return *i == index;
        }
        if index == 0 || index > MAX_INDEX || !self.used.insert(index) {
            return false;
        }
        self.by_key.insert(key, index);
        true
    }

    /// Forget the keys not in `keep` (their leases are gone).
    pub fn retain(&mut self, keep: &std::collections::HashSet<Key>) {
        let used = &mut self.used;
        self.by_key.retain(|k, i| {
            let kept = keep.contains(k);
            if !kept {
                used.remove(i);
            }
            kept
        });
    }
}

#[cfg(test)]
#[path = "wg_tests.rs"]
mod tests;
