//! weft's WireGuard protocol: one peer's handshakes, sessions and timers
//! ([`Noise`]), with the same face boringtun's `Tunn` has (its
//! [`TunnResult`] and [`WireGuardError`] are reused, so a caller reads the
//! two alike and boringtun's `Tunn` stays the reference peer of the
//! tests). It exists because a session's keys must outlive the process:
//! [`Noise::save`] writes them out and [`Noise::restore`] takes them back,
//! so a restarted node opens what its peers sealed for the one before
//! (boringtun keeps its sessions private).
//!
//! The protocol is the paper's: the handshake in [`handshake`], the
//! transport and replay window in [`transport`]; three session slots
//! (current, previous, and next: a responder's new session, used for
//! sending only once the initiator's first message arrives on it); the
//! timers below, run by [`Noise::update_timers`] every tick of the caller
//! (250 ms).

pub(crate) mod crypto;
pub(crate) mod handshake;
pub(crate) mod transport;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;
use boringtun::x25519::PublicKey;
use rand_core::RngCore;

pub use handshake::Identity;
use handshake::{Initiated, PeerKeys, Refused, COOKIE_REPLY, INITIATION, RESPONSE};
pub(crate) use transport::Saved;
use transport::{Transport, HEADER, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES};

/// The paper's timers.
const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A cookie is used this long after it came.
const COOKIE_LIFE: Duration = Duration::from_secs(120);
/// Packets kept while a handshake is made (as boringtun keeps).
const MAX_QUEUE: usize = 256;

/// A session and when its handshake completed.
struct Live {
    t: Transport,
    born: Instant,
}

impl Live {
    fn usable(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.born) < REJECT_AFTER_TIME && self.t.send_counter < REJECT_AFTER_MESSAGES
    }
}

/// A handshake this side started and is waiting on.
struct Pending {
    sent: Initiated,
    at: Instant,
    /// When the first attempt of this handshake went out.
    first: Instant,
    /// Extra wait before the next retry (up to 333 ms, as the paper says).
    jitter: Duration,
}

/// One peer's WireGuard state.
pub struct Noise {
    id: Arc<Identity>,
    peer: PeerKeys,
    /// The peer's index: the top 24 bits of every index this side gives out.
    index: u32,
    next_low: u8,
    keepalive: Option<Duration>,
    current: Option<Live>,
    previous: Option<Live>,
    next: Option<Live>,
    pending: Option<Pending>,
    /// The newest initiation timestamp taken from the peer.
    greatest_timestamp: [u8; 12],
    cookie: Option<([u8; 16], Instant)>,
    queue: VecDeque<Vec<u8>>,
    /// The clock as of the last tick or handshake (the data path reads no clock).
    now: Instant,
    last_sent: Instant,
    /// Data received and nothing sent since: a keepalive is due after 10 s.
    unanswered_rx: Option<Instant>,
    /// Data sent and nothing received since: a handshake is due after 15 s.
    unanswered_tx: Option<Instant>,
    /// A new handshake wanted by the data path (a session getting old).
    want_handshake: bool,
    tx_bytes: usize,
    rx_bytes: usize,
}

impl Noise {
    pub fn new(
        id: Arc<Identity>,
        public: PublicKey,
        psk: Option<[u8; 32]>,
        keepalive: Option<u16>,
        index: u32,
    ) -> Noise {
        let now = Instant::now();
        Noise {
            peer: PeerKeys::new(&id, public, psk),
            id,
            index,
            next_low: 0,
            keepalive: keepalive.filter(|k| *k > 0).map(|k| Duration::from_secs(k.into())),
            current: None,
            previous: None,
            next: None,
            pending: None,
            greatest_timestamp: [0; 12],
            cookie: None,
            queue: VecDeque::new(),
            now,
            last_sent: now,
            unanswered_rx: None,
            unanswered_tx: None,
            want_handshake: false,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    fn local_index(&mut self) -> u32 {
        let taken = |i: u32, s: &Option<Live>| s.as_ref().is_some_and(|l| l.t.local_index == i);
        loop {
            self.next_low = self.next_low.wrapping_add(1);
            let i = (self.index << 8) | u32::from(self.next_low);
            if !taken(i, &self.current) && !taken(i, &self.previous) && !taken(i, &self.next) {
                return i;
            }
        }
    }

    /// The peer's cookie, while it may still be used.
    fn live_cookie(&self, now: Instant) -> Option<[u8; 16]> {
        self.cookie.filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFE).map(|(c, _)| c)
    }

    fn sent(&mut self, len: usize, data: bool) {
        self.last_sent = self.now;
        self.unanswered_rx = None;
        self.tx_bytes += len;
        if data && self.unanswered_tx.is_none() {
            self.unanswered_tx = Some(self.now);
        }
    }

    fn authenticated(&mut self, len: usize) {
        self.unanswered_tx = None;
        self.rx_bytes += len;
    }

    /// Seal `src` (an IP packet, or nothing: a keepalive) for the peer into
    /// `dst`. Without a session the packet waits and a handshake starts.
    pub fn encapsulate<'a>(&mut self, src: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let now = self.now;
        let Some(cur) = self.current.as_mut().filter(|c| c.usable(now)) else {
            if !src.is_empty() && self.queue.len() < MAX_QUEUE {
                self.queue.push_back(src.to_vec());
            }
            // Just answered the peer's initiation: its first message on
            // the new session is due, a handshake of our own would race it.
            if self.next.as_ref().is_some_and(|n| now.saturating_duration_since(n.born) < REKEY_TIMEOUT) {
                return TunnResult::Done;
            }
            return self.format_handshake_initiation(dst, false);
        };
        if cur.t.initiator
            && (now.saturating_duration_since(cur.born) >= REKEY_AFTER_TIME
                || cur.t.send_counter >= REKEY_AFTER_MESSAGES)
        {
            self.want_handshake = true;
        }
        match cur.t.seal(src, dst) {
            Some(n) => {
                self.sent(n, !src.is_empty());
                TunnResult::WriteToNetwork(&mut dst[..n])
            }
            None => TunnResult::Err(WireGuardError::DestinationBufferTooSmall),
        }
    }

    /// An initiation into `dst`, unless one is waiting for its answer
    /// (`force`: send a new one anyway).
    pub fn format_handshake_initiation<'a>(&mut self, dst: &'a mut [u8], force: bool) -> TunnResult<'a> {
        if self.pending.is_some() && !force {
            return TunnResult::Done;
        }
        let Some(out) = dst.get_mut(..INITIATION) else {
            return TunnResult::Err(WireGuardError::DestinationBufferTooSmall);
        };
        let out: &mut [u8; INITIATION] = out.try_into().expect("the length was taken");
        let now = Instant::now();
        self.now = now;
        let cookie = self.live_cookie(now);
        let local = self.local_index();
        let sent = handshake::initiate(&self.id, &self.peer, local, cookie.as_ref(), out);
        let first = self.pending.as_ref().map_or(now, |p| p.first);
        let jitter = Duration::from_millis(u64::from(rand_core::OsRng.next_u32() % 334));
        self.pending = Some(Pending { sent, at: now, first, jitter });
        self.sent(0, false);
        TunnResult::WriteToNetwork(out)
    }

    /// Open a datagram from the peer (`src_addr` unused: roaming is the
    /// caller's), or with an empty `datagram` the next packet that waited
    /// for a session.
    pub fn decapsulate<'a>(&mut self, _src_addr: Option<IpAddr>, datagram: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        if datagram.is_empty() {
            return self.send_queued(dst);
        }
        let kind = u32::from_le_bytes(match datagram.get(..4) {
            Some(b) => b.try_into().expect("4 bytes"),
            None => return TunnResult::Err(WireGuardError::InvalidPacket),
        });
        match (kind, datagram.len()) {
            (1, INITIATION) => self.on_initiation(datagram, dst),
            (2, RESPONSE) => self.on_response(datagram, dst),
            (3, COOKIE_REPLY) => self.on_cookie(datagram),
            (4, n) if n >= HEADER + crypto::TAG => self.on_data(datagram, dst),
            (1..=4, _) => TunnResult::Err(WireGuardError::IncorrectPacketLength),
            _ => TunnResult::Err(WireGuardError::WrongPacketType),
        }
    }

    fn refused<'a>(r: Refused) -> TunnResult<'a> {
        TunnResult::Err(match r {
            Refused::Mac => WireGuardError::InvalidMac,
            Refused::Seal => WireGuardError::InvalidAeadTag,
            Refused::WrongKey => WireGuardError::WrongKey,
        })
    }

    fn on_initiation<'a>(&mut self, msg: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let opened = match handshake::open_initiation(&self.id, msg) {
            Ok(o) => o,
            Err(r) => return Self::refused(r),
        };
        if opened.initiator != self.peer.public {
            return TunnResult::Err(WireGuardError::WrongKey);
        }
        // A replayed initiation carries an old timestamp.
        if opened.timestamp <= self.greatest_timestamp {
            return TunnResult::Err(WireGuardError::WrongTai64nTimestamp);
        }
        let Some(out) = dst.get_mut(..RESPONSE) else {
            return TunnResult::Err(WireGuardError::DestinationBufferTooSmall);
        };
        let out: &mut [u8; RESPONSE] = out.try_into().expect("the length was taken");
        let local = self.local_index();
        let now = Instant::now();
        self.now = now;
        let cookie = self.live_cookie(now);
        let t = match handshake::respond(&self.peer, &opened, local, cookie.as_ref(), out) {
            Ok(t) => t,
            Err(r) => return Self::refused(r),
        };
        self.greatest_timestamp = opened.timestamp;
        self.next = Some(Live { t, born: now });
        self.authenticated(0);
        self.sent(0, false);
        TunnResult::WriteToNetwork(out)
    }

    fn on_response<'a>(&mut self, msg: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let receiver = u32::from_le_bytes(msg[8..12].try_into().expect("92 bytes"));
        let Some(p) = self.pending.as_ref().filter(|p| p.sent.local_index == receiver) else {
            return TunnResult::Err(WireGuardError::WrongIndex);
        };
        let t = match handshake::complete(&self.id, &self.peer, &p.sent, msg) {
            Ok(t) => t,
            Err(r) => return Self::refused(r),
        };
        let now = Instant::now();
        self.now = now;
        self.pending = None;
        self.want_handshake = false;
        self.previous = self.current.take();
        self.current = Some(Live { t, born: now });
        self.authenticated(0);
        // What waited goes now; with nothing waiting a keepalive confirms
        // the session to the responder.
        match self.queue.is_empty() {
            true => self.encapsulate(&[], dst),
            false => self.send_queued(dst),
        }
    }

    fn on_cookie<'a>(&mut self, msg: &[u8]) -> TunnResult<'a> {
        let receiver = u32::from_le_bytes(msg[4..8].try_into().expect("64 bytes"));
        let Some(p) = self.pending.as_ref().filter(|p| p.sent.local_index == receiver) else {
            return TunnResult::Err(WireGuardError::WrongIndex);
        };
        match handshake::open_cookie(&self.peer, &p.sent, msg) {
            Some(c) => {
                self.cookie = Some((c, self.now));
                TunnResult::Done
            }
            None => TunnResult::Err(WireGuardError::InvalidAeadTag),
        }
    }

    fn on_data<'a>(&mut self, msg: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        let receiver = u32::from_le_bytes(msg[4..8].try_into().expect("a header"));
        let now = self.now;
        let slot = [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .position(|s| s.as_ref().is_some_and(|l| l.t.local_index == receiver));
        let live = match slot {
            Some(0) => self.current.as_mut(),
            Some(1) => self.previous.as_mut(),
            Some(_) => self.next.as_mut(),
            None => return TunnResult::Err(WireGuardError::NoCurrentSession),
        }
        .expect("the slot was found");
        if now.saturating_duration_since(live.born) >= REJECT_AFTER_TIME {
            return TunnResult::Err(WireGuardError::ConnectionExpired);
        }
        let len = match live.t.open(msg, dst) {
            Ok(len) => len,
            Err(true) => return TunnResult::Err(WireGuardError::DuplicateCounter),
            Err(false) => return TunnResult::Err(WireGuardError::InvalidAeadTag),
        };
        let (initiator, born) = (live.t.initiator, live.born);
        if slot == Some(2) {
            // The initiator used the new session: it becomes ours to send with.
            self.previous = self.current.take();
            self.current = self.next.take();
        }
        self.authenticated(msg.len());
        if initiator && now.saturating_duration_since(born) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT {
            self.want_handshake = true;
        }
        if len == 0 {
            return TunnResult::Done;
        }
        if self.unanswered_rx.is_none() {
            self.unanswered_rx = Some(now);
        }
        inner(&mut dst[..len])
    }

    fn send_queued<'a>(&mut self, dst: &'a mut [u8]) -> TunnResult<'a> {
        let now = self.now;
        if !self.current.as_ref().is_some_and(|c| c.usable(now)) {
            return TunnResult::Done;
        }
        match self.queue.pop_front() {
            Some(p) => self.encapsulate(&p, dst),
            None => TunnResult::Done,
        }
    }

    /// The timers: what is due now (at most one message; the caller ticks
    /// every 250 ms).
    pub fn update_timers<'a>(&mut self, dst: &'a mut [u8]) -> TunnResult<'a> {
        let now = Instant::now();
        self.now = now;
        // Keys are let go three REJECT_AFTER_TIMEs after the newest session.
        let newest = [&self.current, &self.next].into_iter().flatten().map(|l| l.born).max();
        if newest.is_some_and(|b| now.saturating_duration_since(b) >= REJECT_AFTER_TIME * 3) {
            (self.current, self.previous, self.next) = (None, None, None);
            self.queue.clear();
        }
        if let Some(p) = &self.pending {
            if now.saturating_duration_since(p.first) >= REKEY_ATTEMPT_TIME {
                // Given up: what waited is dropped, the next packet tries again.
                self.pending = None;
                self.queue.clear();
                self.unanswered_tx = None;
                return TunnResult::Done;
            }
            if now.saturating_duration_since(p.at) >= REKEY_TIMEOUT + p.jitter {
                return self.format_handshake_initiation(dst, true);
            }
        } else {
            let stale = self
                .unanswered_tx
                .is_some_and(|t| now.saturating_duration_since(t) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
            if std::mem::take(&mut self.want_handshake) || stale {
                self.unanswered_tx = None;
                return self.format_handshake_initiation(dst, false);
            }
        }
        let live = self.current.as_ref().is_some_and(|c| c.usable(now));
        if live && !self.queue.is_empty() {
            // Waited for a session that came as the responder's.
            return self.send_queued(dst);
        }
        if live && self.unanswered_rx.is_some_and(|t| now.saturating_duration_since(t) >= KEEPALIVE_TIMEOUT) {
            return self.encapsulate(&[], dst);
        }
        if let Some(every) = self.keepalive {
            if now.saturating_duration_since(self.last_sent) >= every {
                return match live {
                    true => self.encapsulate(&[], dst),
                    false => self.format_handshake_initiation(dst, false),
                };
            }
        }
        TunnResult::Done
    }

    /// How long ago the newest session's handshake completed, while the
    /// state holds one.
    pub fn time_since_last_handshake(&self) -> Option<Duration> {
        let newest = [&self.current, &self.next].into_iter().flatten().map(|l| l.born).max()?;
        Some(Instant::now().saturating_duration_since(newest))
    }

    /// (time since the last handshake, bytes of data messages sent and
    /// received: handshakes are not counted, as boringtun counts).
    pub fn stats(&self) -> (Option<Duration>, usize, usize) {
        (self.time_since_last_handshake(), self.tx_bytes, self.rx_bytes)
    }

    /// The sessions, to be taken back by [`Noise::restore`] in another
    /// process: (slot, keys and counters) for current (0), previous (1)
    /// and next (2).
    pub(crate) fn save(&self) -> Vec<(u8, Saved)> {
        let now = Instant::now();
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .enumerate()
            .filter_map(|(slot, l)| {
                let l = l.as_ref().filter(|l| now.saturating_duration_since(l.born) < REJECT_AFTER_TIME)?;
                let mut s = l.t.save();
                s.age_ms = now.saturating_duration_since(l.born).as_millis() as u64;
                Some((slot as u8, s))
            })
            .collect()
    }

    /// Take back what [`Noise::save`] wrote (`skip`: how far past a saved
    /// send counter to go on, see [`Transport::restore`]). Sessions whose
    /// index is not this peer's are ignored.
    pub(crate) fn restore(&mut self, saved: &[(u8, Saved)], skip: u64) {
        let now = Instant::now();
        for (slot, s) in saved {
            if s.local_index >> 8 != self.index {
                continue;
            }
            let Some(born) = now.checked_sub(Duration::from_millis(s.age_ms)) else { continue };
            let live = Some(Live { t: Transport::restore(s, skip), born });
            match slot {
                0 => self.current = live,
                1 => self.previous = live,
                _ => self.next = live,
            }
            self.next_low = self.next_low.max(s.local_index as u8);
        }
        self.now = now;
    }
}

/// An opened packet: cut to its IP length (the sender may have padded).
fn inner(p: &mut [u8]) -> TunnResult<'_> {
    match p[0] >> 4 {
        4 if p.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            match p.get_mut(..total) {
                Some(p) if total >= 20 => TunnResult::WriteToTunnelV4(p, src),
                _ => TunnResult::Err(WireGuardError::InvalidPacket),
            }
        }
        6 if p.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            let src: [u8; 16] = p[8..24].try_into().expect("a 40-byte header");
            match p.get_mut(..total) {
                Some(p) => TunnResult::WriteToTunnelV6(p, Ipv6Addr::from(src)),
                None => TunnResult::Err(WireGuardError::InvalidPacket),
            }
        }
        _ => TunnResult::Err(WireGuardError::InvalidPacket),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
