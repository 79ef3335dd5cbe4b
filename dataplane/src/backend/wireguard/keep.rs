//! Sessions kept across restarts. Under systemd each device keeps its
//! peers' WireGuard sessions (keys, indexes, counters) in a memory file
//! handed to systemd's descriptor store (`<device>.sessions`, beside the
//! sockets and TUN queues of `userspace::handover`). The handshake thread
//! rewrites it when a handshake completes and every second (the counters),
//! and once more when the threads stop; the next process reads it before it
//! programs a peer, gives each key the index it had, and goes on with the
//! same sessions: what a peer sealed for the last process opens in the
//! new one, and no handshake is needed.
//!
//! A send counter goes on [`SKIP`] past the one saved (the last process
//! may have sent after its last write; a counter is never used twice); a
//! received counter below the one saved is refused. What arrived between
//! the last write and a crash could be replayed once: on `systemctl
//! restart` the final write is exact. Only systemd and this process can
//! read the file (as they can read the private key). Outside systemd
//! nothing is kept.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::backend::userspace::{handover, sys};
use crate::forward::noise::crypto::hash;
use crate::forward::noise::Saved;
use crate::forward::wg::Key;

/// How far past a saved send counter a restored session goes on: more
/// messages than any node sends in a session's life (180 s).
pub(crate) const SKIP: u64 = 1 << 40;

const MAGIC: &[u8; 8] = b"WEFTWGS1";
/// key 32, index 4, slot 1, local 4, remote 4, keys 64, counters 16, initiator 1, age 8.
const ENTRY: usize = 134;
/// The file is rewritten at most this often.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// One peer's saved sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) index: u32,
    pub(crate) sessions: Vec<(u8, Saved)>,
}

/// The device's memory file in systemd's store (none outside systemd).
pub(crate) struct Keeper {
    file: Mutex<Option<File>>,
    /// This node's public key: the checksum covers it, so that sessions
    /// kept under another key are not taken.
    own: [u8; 32],
    /// A handshake completed since the last write: write now.
    changed: AtomicBool,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Keeper {
    /// A keeper that keeps nothing.
    pub(crate) fn none() -> Keeper {
        Keeper { file: Mutex::new(None), own: [0; 32], changed: AtomicBool::new(false) }
    }

    fn with(file: File, own: &Key) -> Keeper {
        Keeper { file: Mutex::new(Some(file)), own: own.0, changed: AtomicBool::new(false) }
    }

    /// Note that a session was made: the next look writes at once.
    pub(crate) fn changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Whether a write is due: a session was made, or `since` the last
    /// write is [`EVERY`] (the counters moved).
    pub(crate) fn due(&self, since: Duration) -> bool {
        self.keeps() && (self.changed.swap(false, Ordering::Relaxed) || since >= EVERY)
    }

    /// The keeper of `device`'s sessions, and what the last process kept:
    /// its file taken back from systemd's store, or a new one handed to it.
    pub(crate) fn open(device: &str, own: &Key) -> (Keeper, HashMap<Key, Kept>) {
        let name = format!("{device}.sessions");
        let none = || (Keeper::none(), HashMap::new());
        if let Some(fd) = handover::take_exact(&name) {
            let file = File::from(fd);
            let kept = read(&file, own).unwrap_or_else(|why| {
                warn!(device, "the sessions kept by the last run cannot be read ({why}); handshakes start anew");
                HashMap::new()
            });
            let n: usize = kept.values().map(|k| k.sessions.len()).sum();
            info!(device, peers = kept.len(), sessions = n, "took back the last run's WireGuard sessions");
            return (Keeper::with(file, own), kept);
        }
        if !handover::under_systemd() {
            return none();
        }
        let cname = std::ffi::CString::new(name.clone()).expect("a device name has no NUL");
        match sys::memfd(&cname) {
            Ok(file) => {
                handover::store_file(&name, file.as_fd());
                info!(device, "WireGuard sessions are kept in systemd's descriptor store: a restart goes on with them");
                (Keeper::with(file, own), HashMap::new())
            }
            Err(e) => {
                warn!(device, "cannot make a file for the sessions ({e}); a restart re-handshakes with every peer");
                none()
            }
        }
    }

    /// Write the sessions `each` gives: it is called with a function
    /// that takes one peer's (key, index, sessions).
    pub(crate) fn write(&self, each: impl FnOnce(&mut dyn FnMut(&Key, u32, Vec<(u8, Saved)>))) {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = file.as_ref() else { return };
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&wall_ms().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        each(&mut |key, index, sessions| {
            for (slot, s) in sessions {
                encode(key, index, slot, &s, &mut out);
                count += 1;
            }
        });
        out[16..20].copy_from_slice(&count.to_le_bytes());
        let sum = hash(&out, &self.own);
        out.extend_from_slice(&sum);
        if let Err(e) = file.write_at(&out, 0).and_then(|_| file.set_len(out.len() as u64)) {
            warn!("cannot keep the WireGuard sessions for a restart ({e})");
        }
    }

    /// Whether there is a file to write.
    pub(crate) fn keeps(&self) -> bool {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

fn encode(key: &Key, index: u32, slot: u8, s: &Saved, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&index.to_le_bytes());
    out.push(slot);
    out.extend_from_slice(&s.local_index.to_le_bytes());
    out.extend_from_slice(&s.remote_index.to_le_bytes());
    out.extend_from_slice(&s.send_key);
    out.extend_from_slice(&s.recv_key);
    out.extend_from_slice(&s.send_counter.to_le_bytes());
    out.extend_from_slice(&s.recv_next.to_le_bytes());
    out.push(u8::from(s.initiator));
    out.extend_from_slice(&s.age_ms.to_le_bytes());
}

/// What a keeper's file holds, by key; the time since it was written is
/// added to each session's age.
fn read(file: &File, own: &Key) -> Result<HashMap<Key, Kept>, &'static str> {
    let len = file.metadata().map_err(|_| "not readable")?.len() as usize;
    if len == 0 {
        return Ok(HashMap::new());
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).map_err(|_| "not readable")?;
    decode(&buf, own, wall_ms())
}

fn decode(buf: &[u8], own: &Key, now_ms: u64) -> Result<HashMap<Key, Kept>, &'static str> {
    if buf.len() < 20 + 32 || &buf[..8] != MAGIC {
        return Err("not a sessions file of this version");
    }
    let (body, sum) = buf.split_at(buf.len() - 32);
    if hash(body, &own.0) != sum {
        return Err("its checksum does not match, or it was kept under another private key");
    }
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let written = u64_at(body, 8);
    let count = u32_at(body, 16) as usize;
    if body.len() != 20 + count * ENTRY {
        return Err("its length does not match its count");
    }
    let since = now_ms.saturating_sub(written);
    let mut kept: HashMap<Key, Kept> = HashMap::new();
    for e in body[20..].chunks_exact(ENTRY) {
        let key = Key(e[..32].try_into().expect("32 bytes"));
        let index = u32_at(e, 32);
        let s = Saved {
            local_index: u32_at(e, 37),
            remote_index: u32_at(e, 41),
            send_key: e[45..77].try_into().expect("32 bytes"),
            recv_key: e[77..109].try_into().expect("32 bytes"),
            send_counter: u64_at(e, 109),
            recv_next: u64_at(e, 117),
            initiator: e[125] != 0,
            age_ms: u64_at(e, 126).saturating_add(since),
        };
        let k = kept.entry(key).or_insert(Kept { index, sessions: Vec::new() });
        if k.index == index {
            k.sessions.push((e[36], s));
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(i: u32) -> Saved {
        Saved {
            local_index: (5 << 8) | i,
            remote_index: 77,
            send_key: [1; 32],
            recv_key: [2; 32],
            send_counter: 10,
            recv_next: 20,
            initiator: i.is_multiple_of(2),
            age_ms: 1000,
        }
    }

    fn file_of(entries: &[(Key, u32, u8, Saved)], written: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&written.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (k, i, slot, s) in entries {
            encode(k, *i, *slot, s, &mut out);
        }
        let sum = hash(&out, &OWN.0);
        out.extend_from_slice(&sum);
        out
    }

    const OWN: Key = Key([3; 32]);

    #[test]
    fn what_is_written_reads_back_older_by_the_time_between() {
        let key = Key([9; 32]);
        let buf = file_of(&[(key, 5, 0, saved(1)), (key, 5, 1, saved(2))], 1_000_000);
        let kept = decode(&buf, &OWN, 1_000_500).unwrap();
        let k = &kept[&key];
        assert_eq!(k.index, 5);
        assert_eq!(k.sessions.len(), 2);
        assert_eq!(k.sessions[0].1.age_ms, 1500);
        assert_eq!(k.sessions[1].0, 1);
        assert_eq!(k.sessions[1].1.send_key, [1; 32]);
    }

    #[test]
    fn a_torn_changed_or_foreign_file_is_refused_whole() {
        let buf = file_of(&[(Key([9; 32]), 5, 0, saved(1))], 1);
        for bad in [&buf[..buf.len() - 1], &buf[..40]] {
            assert!(decode(bad, &OWN, 2).is_err());
        }
        let mut changed = buf.clone();
        changed[60] ^= 1;
        let refused = Some("its checksum does not match, or it was kept under another private key");
        assert_eq!(decode(&changed, &OWN, 2).err(), refused);
        assert_eq!(decode(&buf, &Key([4; 32]), 2).err(), refused, "kept under another key");
        let mut other = buf;
        other[0] = b'X';
        assert!(decode(&other, &OWN, 2).is_err());
        assert!(decode(&[], &OWN, 2).is_err());
    }
}
