//! The handshake thread: every handshake message a peer sends (types 1 to
//! 3: initiation, response, cookie reply) is handed over by the RX thread,
//! so that the Diffie-Hellman they cost never holds up decryption, and the
//! protocol's timers run here too: retransmitted and new handshakes,
//! keepalives, a handshake with every peer without a fresh session, and the
//! handshake limiter's reset each second.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use tokio::sync::Notify;

use super::state::{lock, PeerSet, PeerState, WgShared};
use crate::backend::userspace::io::send_one;
use crate::backend::userspace::thread::{ErrorLog, Exit, StopSignal};
use crate::forward::wg::{received, Incoming, Received, WgDrop};

/// How often the timers run (boringtun's own device ticks every 250 ms).
const TICK: Duration = Duration::from_millis(250);
/// The longest wait for a message, so that a stop is seen within it.
const POLL: Duration = Duration::from_millis(50);
/// A new handshake once the last completed one is this old, so a session
/// is always ready and a peer that stops answering is noticed
/// (WireGuard's REKEY_AFTER_TIME).
const KEEP_SESSION: Duration = Duration::from_secs(120);
/// Handshake messages waiting for the thread, at most; more are dropped
/// (counted as `under_load`), as a flood must not grow memory.
pub(crate) const INBOX: usize = 1024;
/// Largest datagram.
const MAX_DATAGRAM: usize = 65535 + 256;

/// Where the RX thread hands handshake messages.
pub(crate) type Inbox = SyncSender<(Vec<u8>, SocketAddr)>;

/// Whether a message type is a handshake message (for this thread).
pub(crate) fn is_handshake(kind: u8) -> bool {
    matches!(kind, 1..=3)
}

/// Hand a handshake message over; a full inbox drops it.
pub(crate) fn post(inbox: &Inbox, shared: &WgShared, datagram: &[u8], from: SocketAddr) {
    if inbox.try_send((datagram.to_vec(), from)).is_err() {
        shared.stats.drop(WgDrop::UnderLoad);
    }
}

/// The first look at a datagram from the network, on either receive path:
/// a handshake message goes to the handshake thread; a data message from a
/// known peer returns that peer (its receiver index and state); anything
/// else is counted as dropped.
pub(crate) fn admit<'s>(
    datagram: &[u8],
    from: SocketAddr,
    set: &'s PeerSet,
    shared: &WgShared,
    inbox: &Inbox,
) -> Option<(u32, &'s Arc<PeerState>)> {
    if is_handshake(datagram.first().copied().unwrap_or(0)) {
        post(inbox, shared, datagram, from);
        return None;
    }
    match set.table.classify(datagram, &shared.private, &shared.public) {
        Incoming::Peer(i) => set.states.get(&i).map(|s| (i, s)),
        Incoming::Drop(reason) => {
            shared.stats.drop(reason);
            None
        }
    }
}

/// The thread's body: handshake messages as they come, the timers every
/// [`TICK`].
pub(crate) fn run(
    sock: &UdpSocket,
    shared: &WgShared,
    inbox: &Receiver<(Vec<u8>, SocketAddr)>,
    wake: &Notify,
    stop: &StopSignal,
) -> Exit {
    let mut h = Handshaker {
        sock,
        shared,
        wake,
        out: vec![0u8; MAX_DATAGRAM],
        cookie: [0u8; 64],
        sends: ErrorLog::new("sending WireGuard handshakes"),
    };
    let (mut ticked, mut reset) = (Instant::now(), Instant::now());
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        match inbox.recv_timeout(POLL) {
            Ok((datagram, from)) => h.handle(&datagram, from),
            Err(RecvTimeoutError::Timeout) => {}
            // The RX thread ended: its own exit says why.
            Err(RecvTimeoutError::Disconnected) => return Exit::Stopped,
        }
        if reset.elapsed() >= Duration::from_secs(1) {
            shared.limiter.reset_count();
            reset = Instant::now();
        }
        if ticked.elapsed() >= TICK {
            h.tick();
            ticked = Instant::now();
        }
    }
}

/// The handshake thread's socket, shared state and buffers.
struct Handshaker<'a> {
    sock: &'a UdpSocket,
    shared: &'a WgShared,
    /// Rung when a peer's first handshake completes (it may make the node ready).
    wake: &'a Notify,
    out: Vec<u8>,
    cookie: [u8; 64],
    sends: ErrorLog,
}

impl Handshaker<'_> {
    /// One handshake message from `from`.
    fn handle(&mut self, datagram: &[u8], from: SocketAddr) {
        let Handshaker { sock, shared, wake, out, cookie, sends } = self;
        let (sock, shared, wake) = (*sock, *shared, *wake);
        let kind = datagram[0];
        // An initiation costs Diffie-Hellman to open: its MAC (and, under
        // load, its cookie) is checked first, cheaply.
        if kind == 1 {
            match shared.limiter.verify_packet(Some(from.ip()), datagram, cookie) {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(reply)) => {
                    shared.stats.drop(WgDrop::UnderLoad);
                    send_one(sock, reply, from, sends);
                    return;
                }
                Err(TunnResult::Err(e)) => return shared.stats.drop(WgDrop::from_error(&e)),
                Err(_) => return,
            }
        }
        let set = shared.peers.load();
        let index = match set.table.classify(datagram, &shared.private, &shared.public) {
            Incoming::Peer(i) => i,
            Incoming::Drop(reason) => return shared.stats.drop(reason),
        };
        let Some(state) = set.states.get(&index) else { return };
        let mut tunn = lock(&state.tunn);
        let mut first = true;
        loop {
            let verdict = {
                let result = if first {
                    tunn.decapsulate(Some(from.ip()), datagram, out)
                } else {
                    tunn.decapsulate(None, &[], out)
                };
                received(&set.table, index, &result)
            };
            if first && kind != 3 && !matches!(verdict, Received::Drop(_)) {
                shared.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                // A peer's first handshake may make the node ready: a pass now
                // says so.
                if state.handshakes.fetch_add(1, Ordering::Relaxed) == 0 {
                    wake.notify_one();
                }
            }
            first = false;
            match verdict {
                // The response to an initiation, then what waited for the session.
                Received::ToNetwork(len) => send_one(sock, &out[..len], from, sends),
                Received::Drop(reason) => return shared.stats.drop(reason),
                Received::ToTunnel(_) | Received::Nothing => return,
            }
        }
    }

    /// The timers of every peer, and a handshake for each one without a
    /// fresh session.
    fn tick(&mut self) {
        let Handshaker { sock, shared, out, sends, .. } = self;
        let set = shared.peers.load();
        for state in set.states.values() {
            let mut tunn = lock(&state.tunn);
            if let TunnResult::WriteToNetwork(b) = tunn.update_timers(out) {
                send_one(sock, b, state.peer.endpoint, sends);
            }
            if tunn.time_since_last_handshake().is_none_or(|age| age >= KEEP_SESSION) {
                if let TunnResult::WriteToNetwork(b) = tunn.format_handshake_initiation(out, false) {
                    send_one(sock, b, state.peer.endpoint, sends);
                }
            }
        }
    }
}
