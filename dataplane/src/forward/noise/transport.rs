//! One WireGuard session's transport: the two keys a handshake derived,
//! the send counter and the receive side's replay window. Data messages
//! are sealed with ring's ChaCha20-Poly1305 (the fastest of the three
//! measured in `benches/aead.rs`). The keys can be written out and read
//! back ([`Saved`]), which is what lets a restarted process open what a
//! peer sealed for the one before it.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::crypto::TAG;

/// After this many messages a session is used no more (the paper's
/// REJECT_AFTER_MESSAGES).
pub(crate) const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator starts a new handshake after this many (REKEY_AFTER_MESSAGES).
pub(crate) const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Counters this far behind the newest are still accepted once.
const WINDOW: u64 = 2048;
const WORDS: usize = (WINDOW / 64) as usize;

/// Which counters have been seen: the newest, and a bitmap of the
/// [`WINDOW`] before it.
#[derive(Clone)]
pub(crate) struct Replay {
    /// One past the newest counter accepted (0: none yet).
    next: u64,
    bits: [u64; WORDS],
}

impl Replay {
    pub(crate) fn new() -> Replay {
        Replay { next: 0, bits: [0; WORDS] }
    }

    /// Whether `counter` may still be accepted (not seen, not too old).
    pub(crate) fn fresh(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    /// Note `counter` as seen (after its message was authenticated).
    pub(crate) fn mark(&mut self, counter: u64) {
        if counter >= self.next {
            // Clear the bits of the counters skipped over (at most a window).
            let skipped = (counter - self.next).min(WINDOW);
            for c in self.next..self.next + skipped {
                let bit = c % WINDOW;
                self.bits[(bit / 64) as usize] &= !(1 << (bit % 64));
            }
            self.next = counter + 1;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    /// The newest counter accepted plus one.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }
}

/// A session's keys and counters, as written into the descriptor store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) send_key: [u8; 32],
    pub(crate) recv_key: [u8; 32],
    /// The next counter to send with.
    pub(crate) send_counter: u64,
    /// One past the newest counter received.
    pub(crate) recv_next: u64,
    /// Whether this side started the handshake.
    pub(crate) initiator: bool,
    /// Milliseconds since the handshake, when saved.
    pub(crate) age_ms: u64,
}

/// One session.
pub(crate) struct Transport {
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    keys: ([u8; 32], [u8; 32]),
    pub(crate) send_counter: u64,
    pub(crate) replay: Replay,
    pub(crate) initiator: bool,
}

/// A data message's header: type 4, the receiver's index, the counter.
pub(crate) const HEADER: usize = 16;

fn key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("a 32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl Transport {
    pub(crate) fn new(
        local_index: u32,
        remote_index: u32,
        send: [u8; 32],
        recv: [u8; 32],
        initiator: bool,
    ) -> Transport {
        Transport {
            local_index,
            remote_index,
            send: key(&send),
            recv: key(&recv),
            keys: (send, recv),
            send_counter: 0,
            replay: Replay::new(),
            initiator,
        }
    }

    /// A data message carrying `packet` into `out`; its length, or `None`
    /// when `out` is too small or the session has sent all it may.
    pub(crate) fn seal(&mut self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = HEADER + packet.len() + TAG;
        if out.len() < len || self.send_counter >= REJECT_AFTER_MESSAGES {
            return None;
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        out[..4].copy_from_slice(&4u32.to_le_bytes());
        out[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let body = &mut out[HEADER..HEADER + packet.len()];
        body.copy_from_slice(packet);
        let tag = self.send.seal_in_place_separate_tag(nonce(counter), Aad::empty(), body).ok()?;
        out[HEADER + packet.len()..len].copy_from_slice(tag.as_ref());
        Some(len)
    }

    /// Open a data message (`message`: the whole datagram) into `out`;
    /// the plaintext's length. `Err(true)` for a replayed or too old
    /// counter, `Err(false)` for a tag that does not verify.
    pub(crate) fn open(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, bool> {
        let counter = u64::from_le_bytes(message[8..16].try_into().expect("a 16-byte header"));
        if !self.replay.fresh(counter) {
            return Err(true);
        }
        let sealed = &message[HEADER..];
        let len = sealed.len() - TAG;
        if out.len() < sealed.len() {
            return Err(false);
        }
        out[..sealed.len()].copy_from_slice(sealed);
        self.recv.open_in_place(nonce(counter), Aad::empty(), &mut out[..sealed.len()]).map_err(|_| false)?;
        self.replay.mark(counter);
        Ok(len)
    }

    /// The session as [`Saved`] (`age_ms` filled in by the caller).
    pub(crate) fn save(&self) -> Saved {
        Saved {
            local_index: self.local_index,
            remote_index: self.remote_index,
            send_key: self.keys.0,
            recv_key: self.keys.1,
            send_counter: self.send_counter,
            recv_next: self.replay.next(),
            initiator: self.initiator,
            age_ms: 0,
        }
    }

    /// A session from what [`Transport::save`] wrote. The send counter
    /// starts `skip` past the saved one (the last process may have sent
    /// more after it saved, and a counter must never be used twice); the
    /// counters received before the saved `recv_next` are refused.
    pub(crate) fn restore(s: &Saved, skip: u64) -> Transport {
        let mut t = Transport::new(s.local_index, s.remote_index, s.send_key, s.recv_key, s.initiator);
        t.send_counter = s.send_counter.saturating_add(skip);
        if s.recv_next > 0 {
            // Everything up to it counts as seen.
            t.replay.next = s.recv_next;
            t.replay.bits = [u64::MAX; WORDS];
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_takes_each_counter_once_and_nothing_too_old() {
        let mut r = Replay::new();
        for c in [0, 5, 3, 4000, 3999, 4000 - 2047] {
            assert!(r.fresh(c), "{c}");
            r.mark(c);
            assert!(!r.fresh(c), "{c} twice");
        }
        assert!(!r.fresh(4000 - 2049), "older than the window");
        assert!(r.fresh(3998));
        assert!(!r.fresh(REJECT_AFTER_MESSAGES));
    }

    #[test]
    fn a_message_opens_once_and_a_changed_byte_does_not_open() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut tx = Transport::new(1, 2, a, b, true);
        let mut rx = Transport::new(2, 1, b, a, false);
        let mut m = [0u8; 64];
        let n = tx.seal(b"packet", &mut m).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(rx.open(&m[..n], &mut out), Ok(6));
        assert_eq!(&out[..6], b"packet");
        assert_eq!(rx.open(&m[..n], &mut out), Err(true), "replayed");
        let n2 = tx.seal(b"packet", &mut m).unwrap();
        m[20] ^= 1;
        assert_eq!(rx.open(&m[..n2], &mut out), Err(false), "tampered");
    }

    #[test]
    fn a_restored_session_opens_what_follows_and_never_reuses_a_counter() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut tx = Transport::new(1, 2, a, b, true);
        let mut rx = Transport::new(2, 1, b, a, false);
        let mut m = [0u8; 64];
        let mut out = [0u8; 64];
        let n = tx.seal(b"one", &mut m).unwrap();
        let first = m[..n].to_vec();
        rx.open(&first, &mut out).unwrap();
        let mut again = Transport::restore(&rx.save(), 0);
        assert_eq!(again.open(&first, &mut out), Err(true), "seen before the save");
        let n = tx.seal(b"two", &mut m).unwrap();
        assert_eq!(again.open(&m[..n], &mut out), Ok(3));
        let sent = Transport::restore(&tx.save(), 1 << 32);
        assert_eq!(sent.send_counter, 2 + (1 << 32));
    }
}
