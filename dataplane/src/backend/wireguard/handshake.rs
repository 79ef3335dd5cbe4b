//! The handshake thread: every handshake message a peer sends (types 1 to
//! 3: initiation, response, cookie reply) is handed over by the RX thread,
//! so that the Diffie-Hellman they cost never holds up decryption, and the
//! protocol's timers run here too: retransmitted and new handshakes,
//! keepalives, the handshakes weft starts on its own (`probe.rs`), and the
//! handshake limiter's reset each second.
//!
//! What reaches the thread is checked first, on the RX thread, cheaply:
//! the exact size of its type, and for initiations and responses the mac1
//! that only a sender knowing this node's public key can compute
//! ([`admit`]). Under load (more handshake messages a second than the
//! limiter allows) an initiation or response must also carry a valid mac2,
//! proof that its sender receives at its source address; one without it is
//! answered with a cookie reply, as the protocol prescribes, and goes no
//! further. So a flood of junk costs a BLAKE2s each and never queues. What
//! passes waits in a bounded [`Inbox`] of fixed-size slots, where answers
//! to this node's own initiations (responses, cookie replies) go before
//! new initiations from peers.
//!
//! Data from a peer that finds no session to open it with (this node
//! restarted and lost its sessions, the peer has not noticed yet) asks the
//! thread for a handshake with that peer at once ([`no_session`]), at most
//! once per [`NUDGE_EVERY`] per peer: the peer switches to the new session
//! when it completes, instead of when its own timers give up on the old one
//! (15 s) or this node happens to send first. The peer is found by the
//! datagram's source, which must be its lease's endpoint; a forged source
//! costs that peer one initiation per 5 s.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use tokio::sync::Notify;

use super::probe::FIRST_PROBES_PER_TICK;
use super::state::{lock, roamed, PeerSet, PeerState, WgShared, NUDGE_EVERY};
use crate::backend::userspace::io::send_one;
use crate::backend::userspace::thread::{ErrorLog, Exit, StopSignal};
use crate::forward::wg::{received, Incoming, Received, WgDrop};

/// How often the timers run (boringtun's own device ticks every 250 ms).
const TICK: Duration = Duration::from_millis(250);
/// A resting peer is visited every this many ticks (2 s).
const RESTING_VISIT: u32 = 8;
/// The longest wait for a message, so that a stop is seen within it.
const POLL: Duration = Duration::from_millis(50);
/// A session this old is stale (WireGuard's REKEY_AFTER_TIME): weft may
/// start a handshake of its own then, as its [`Probe`](super::probe::Probe) decides.
const KEEP_SESSION: Duration = Duration::from_secs(120);
/// Initiations waiting for the thread, at most; more are dropped (counted
/// as `inbox_full`), as a flood must not grow memory.
const INITIATIONS: usize = 1024;
/// Responses and cookie replies waiting, at most.
const ANSWERS: usize = 256;
/// Peers waiting for a handshake asked for by data without a session, at
/// most (each peer asks once per [`NUDGE_EVERY`]).
const NUDGES: usize = 64;
/// Largest datagram.
const MAX_DATAGRAM: usize = 65535 + 256;
/// The largest handshake message: an initiation.
const MAX_HANDSHAKE: usize = 148;

/// One handshake message in a fixed-size slot.
#[derive(Clone, Copy)]
pub(crate) struct Message {
    buf: [u8; MAX_HANDSHAKE],
    len: usize,
    from: SocketAddr,
}

impl Message {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[derive(Default)]
struct Queues {
    /// Responses and cookie replies: answers to this node's initiations.
    answers: VecDeque<Message>,
    initiations: VecDeque<Message>,
    /// Peers (indexes) whose data found no session.
    nudges: VecDeque<u32>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.initiations.is_empty() && self.nudges.is_empty()
    }
}

/// What the handshake thread is handed.
pub(crate) enum Item {
    Message(Message),
    /// A handshake with this peer, now.
    Nudge(u32),
}

/// Where the RX threads hand handshake messages to the handshake thread:
/// two bounded queues of fixed-size slots, allocated once.
pub(crate) struct Inbox {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Inbox {
    pub(crate) fn new() -> Arc<Inbox> {
        Arc::new(Inbox {
            queues: Mutex::new(Queues {
                answers: VecDeque::with_capacity(ANSWERS),
                initiations: VecDeque::with_capacity(INITIATIONS),
                nudges: VecDeque::with_capacity(NUDGES),
            }),
            ready: Condvar::new(),
        })
    }

    /// Queue `datagram` (at most [`MAX_HANDSHAKE`] bytes, checked by
    /// [`admit`]); `false` when its queue is full.
    fn post(&self, datagram: &[u8], from: SocketAddr) -> bool {
        let mut m = Message { buf: [0; MAX_HANDSHAKE], len: datagram.len().min(MAX_HANDSHAKE), from };
        m.buf[..m.len].copy_from_slice(&datagram[..m.len]);
        let Ok(mut q) = self.queues.lock() else { return false };
        let (queue, cap) =
            if datagram.first() == Some(&1) { (&mut q.initiations, INITIATIONS) } else { (&mut q.answers, ANSWERS) };
        if queue.len() >= cap {
            return false;
        }
        queue.push_back(m);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Ask for a handshake with peer `index`; `false` when the queue is full.
    fn nudge(&self, index: u32) -> bool {
        let Ok(mut q) = self.queues.lock() else { return false };
        if q.nudges.len() >= NUDGES {
            return false;
        }
        q.nudges.push_back(index);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// The next item: answers first, then asked-for handshakes, then
    /// initiations; `None` after `wait` without one.
    fn next(&self, wait: Duration) -> Option<Item> {
        let q = self.queues.lock().ok()?;
        let (mut q, _) = self.ready.wait_timeout_while(q, wait, |q| q.is_empty()).ok()?;
        if let Some(m) = q.answers.pop_front() {
            return Some(Item::Message(m));
        }
        if let Some(i) = q.nudges.pop_front() {
            return Some(Item::Nudge(i));
        }
        q.initiations.pop_front().map(Item::Message)
    }
}

/// How an RX thread answers with a cookie reply: its socket, a buffer for
/// the reply, its send error log.
pub(crate) struct Replies<'a> {
    pub(crate) sock: &'a UdpSocket,
    pub(crate) buf: &'a mut [u8; 64],
    pub(crate) sends: &'a mut ErrorLog,
}

/// The first look at a datagram from the network, on either receive path:
/// a handshake message of the right size (and, for initiations and
/// responses, a valid mac1, and a valid mac2 under load) goes to the
/// handshake thread; under load one without mac2 is answered with a cookie
/// reply (`cookie`: a buffer for it); a data message from a known peer
/// returns that peer (its receiver index and state); anything else is
/// counted as dropped.
pub(crate) fn admit<'s>(
    datagram: &[u8],
    from: SocketAddr,
    set: &'s PeerSet,
    shared: &WgShared,
    inbox: &Inbox,
    replies: &mut Replies<'_>,
) -> Option<(u32, &'s Arc<PeerState>)> {
    match datagram.first() {
        Some(1..=2) => {
            match shared.limiter.load().verify_packet(Some(from.ip()), datagram, replies.buf) {
                Ok(_) => {
                    if !inbox.post(datagram, from) {
                        shared.stats.drop(WgDrop::InboxFull);
                    }
                }
                Err(TunnResult::WriteToNetwork(reply)) => {
                    shared.stats.drop(WgDrop::UnderLoad);
                    send_one(replies.sock, reply, from, replies.sends);
                }
                Err(TunnResult::Err(e)) => shared.stats.drop(WgDrop::from_error(&e)),
                Err(_) => shared.stats.drop(WgDrop::Other),
            }
            None
        }
        Some(3) => {
            match Tunn::parse_incoming_packet(datagram) {
                Ok(_) if inbox.post(datagram, from) => {}
                Ok(_) => shared.stats.drop(WgDrop::InboxFull),
                Err(e) => shared.stats.drop(WgDrop::from_error(&e)),
            }
            None
        }
        _ => match set.table.classify(datagram, &shared.private, &shared.public) {
            Incoming::Peer(i) => set.states.get(&i).map(|s| (i, s)),
            Incoming::Drop(reason) => {
                shared.stats.drop(reason);
                // A receiver index this run never gave out: the last run's.
                if reason == WgDrop::UnknownPeer {
                    no_session(datagram, from, set, inbox);
                }
                None
            }
        },
    }
}

/// Data from `from` (a data message) found no session: if `from` is a
/// peer's lease endpoint and that peer has not asked within
/// [`NUDGE_EVERY`], the handshake thread starts a handshake with it now.
/// Called on the RX threads, after the drop is counted.
pub(crate) fn no_session(datagram: &[u8], from: SocketAddr, set: &PeerSet, inbox: &Inbox) {
    if datagram.first() != Some(&4) {
        return;
    }
    let Some(index) = set.table.at_endpoint(from) else { return };
    let Some(state) = set.states.get(&index) else { return };
    if state.claim_nudge(Instant::now()) {
        inbox.nudge(index);
    }
}

/// The thread's body: handshake messages as they come, the timers every
/// [`TICK`].
pub(crate) fn run(sock: &UdpSocket, shared: &WgShared, inbox: &Inbox, wake: &Notify, stop: &StopSignal) -> Exit {
    let mut h = Handshaker {
        sock,
        shared,
        wake,
        out: vec![0u8; MAX_DATAGRAM],
        sends: ErrorLog::new("sending WireGuard handshakes"),
        ticks: 0,
    };
    let (mut ticked, mut reset, mut kept) = (Instant::now(), Instant::now(), Instant::now());
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        match inbox.next(POLL) {
            Some(Item::Message(m)) => h.handle(m.bytes(), m.from),
            Some(Item::Nudge(index)) => h.nudged(index),
            None => {}
        }
        if reset.elapsed() >= Duration::from_secs(1) {
            shared.limiter.load().reset_count();
            reset = Instant::now();
        }
        if ticked.elapsed() >= TICK {
            h.tick();
            ticked = Instant::now();
        }
        if shared.keeper.due(kept.elapsed()) {
            shared.keep_sessions();
            kept = Instant::now();
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
    sends: ErrorLog,
    /// Timer ticks so far.
    ticks: u32,
}

impl Handshaker<'_> {
    /// One handshake message from `from`.
    fn handle(&mut self, datagram: &[u8], from: SocketAddr) {
        let Handshaker { sock, shared, wake, out, sends, .. } = self;
        let (sock, shared, wake) = (*sock, *shared, *wake);
        shared.stats.handshake_messages.fetch_add(1, Ordering::Relaxed);
        let kind = datagram[0];
        let set = shared.peers.load();
        let index = match set.table.classify(datagram, &shared.private, &shared.public) {
            Incoming::Peer(i) => i,
            Incoming::Drop(reason) => return shared.stats.drop(reason),
        };
        let Some(state) = set.states.get(&index) else { return };
        let mut session = lock(&state.session);
        let mut first = true;
        loop {
            let verdict = {
                // An initiation wakes a resting peer; a response or a
                // cookie for a resting one answers nothing weft sent.
                let Some(tunn) = session.tunn_for(kind, &shared.maker) else {
                    return shared.stats.drop(WgDrop::NoSession);
                };
                let result = if first {
                    let result = tunn.decapsulate(Some(from.ip()), datagram, out);
                    if let Some(was) = session.roam(kind, from, &result) {
                        roamed(shared, &state.subnet, was, from);
                    }
                    result
                } else {
                    tunn.decapsulate(None, &[], out)
                };
                received(&set.table, index, &result)
            };
            if first && kind != 3 && !matches!(verdict, Received::Drop(_)) {
                shared.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                shared.keeper.changed();
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

    /// A handshake with peer `index`, whose data found no session, unless
    /// one completed within [`NUDGE_EVERY`] (the data was sent for the
    /// session just replaced).
    fn nudged(&mut self, index: u32) {
        let Handshaker { sock, shared, out, sends, .. } = self;
        let set = shared.peers.load();
        let Some(state) = set.states.get(&index) else { return };
        let mut session = lock(&state.session);
        let (age, _, _) = session.stats();
        if age.is_some_and(|a| a < NUDGE_EVERY) {
            return;
        }
        let endpoint = session.endpoint;
        session.touch(Instant::now());
        let tunn = session.tunn(&shared.maker);
        if let TunnResult::WriteToNetwork(b) = tunn.format_handshake_initiation(out, false) {
            tracing::debug!(peer = %state.subnet, "data without a session: a handshake now");
            send_one(sock, b, endpoint, sends);
        }
    }

    /// The timers of every peer, and a handshake for each one without a
    /// fresh session when its [`Probe`](super::probe::Probe) says so.
    fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        let Handshaker { sock, shared, out, sends, ticks, .. } = self;
        let set = shared.peers.load();
        let now = Instant::now();
        let mut first_probes = 0;
        for state in set.states.values() {
            // A resting peer only needs its probe looked at: once every
            // RESTING_VISIT ticks, spread over the ticks by its index.
            let awake = state.awake.load(Ordering::Relaxed);
            if !awake && ticks.wrapping_add(state.peer.index) % RESTING_VISIT != 0 {
                continue;
            }
            let mut session = lock(&state.session);
            let endpoint = session.endpoint;
            if let Some(tunn) = session.awake() {
                if let TunnResult::WriteToNetwork(b) = tunn.update_timers(out) {
                    send_one(sock, b, endpoint, sends);
                }
            }
            let (age, sent, _) = session.stats();
            let due = age.is_none_or(|age| age >= KEEP_SESSION) && {
                let mut probe = lock(&state.probe);
                let first = probe.never_started();
                let paced = first && first_probes >= FIRST_PROBES_PER_TICK;
                let start = !paced && probe.start(now, state.handshakes.load(Ordering::Relaxed), sent);
                first_probes += usize::from(start && first);
                start
            };
            if due {
                session.touch(now);
                let tunn = session.tunn(&shared.maker);
                if let TunnResult::WriteToNetwork(b) = tunn.format_handshake_initiation(out, false) {
                    send_one(sock, b, endpoint, sends);
                }
            }
            session.rest_if_idle(now, &shared.maker);
        }
    }
}

#[cfg(test)]
mod tests {
    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;

    fn from(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 51820))
    }

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m
    }

    #[test]
    fn asked_for_handshakes_are_bounded() {
        let inbox = Inbox::new();
        for i in 0..NUDGES as u32 {
            assert!(inbox.nudge(i));
        }
        assert!(!inbox.nudge(99), "beyond the bound: refused");
        assert!(inbox.post(&message(2, 92), from(2)), "and answers still go in");
    }

    #[test]
    fn answers_go_before_initiations_and_a_full_queue_refuses() {
        let inbox = Inbox::new();
        assert!(inbox.post(&message(1, 148), from(1)));
        assert!(inbox.post(&message(2, 92), from(2)));
        assert!(inbox.post(&message(3, 64), from(3)));
        assert!(inbox.nudge(7));
        let order: Vec<u8> = (0..4)
            .map(|_| match inbox.next(POLL).unwrap() {
                Item::Message(m) => m.bytes()[0],
                Item::Nudge(i) => i as u8 + 100,
            })
            .collect();
        assert_eq!(order, [2, 3, 107, 1], "responses and cookie replies first, then asked-for handshakes");
        assert!(inbox.next(Duration::from_millis(1)).is_none());
        for _ in 0..INITIATIONS {
            assert!(inbox.post(&message(1, 148), from(1)));
        }
        assert!(!inbox.post(&message(1, 148), from(1)), "initiations beyond the bound are refused");
        assert!(inbox.post(&message(2, 92), from(2)), "and do not crowd out answers");
    }

    /// What `admit` does with one datagram: whether it was queued, and the
    /// drops it counted.
    fn admit_one(shared: &WgShared, inbox: &Inbox, datagram: &[u8]) -> (bool, Vec<(&'static str, u64)>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (mut buf, mut sends) = ([0u8; 64], ErrorLog::new("test"));
        let queued = || {
            let q = inbox.queues.lock().unwrap();
            q.initiations.len() + q.answers.len()
        };
        let before = queued();
        let set = PeerSet::default();
        let mut replies = Replies { sock: &sock, buf: &mut buf, sends: &mut sends };
        assert!(admit(datagram, from(9), &set, shared, inbox, &mut replies).is_none());
        (queued() > before, shared.stats.counts())
    }

    fn initiation_to(node: &StaticSecret) -> Vec<u8> {
        let mut t =
            Tunn::new(StaticSecret::random_from_rng(rand_core::OsRng), PublicKey::from(node), None, None, 7, None);
        let mut out = [0u8; 256];
        match t.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn junk_never_queues_and_a_real_initiation_does() {
        let node = StaticSecret::random_from_rng(rand_core::OsRng);
        let shared = WgShared::new(node.clone());
        let inbox = Inbox::new();
        // An initiation's type and size, made-up content: no valid mac1.
        let mut junk = message(1, 148);
        junk[4..].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7) as u8);
        let (queued, drops) = admit_one(&shared, &inbox, &junk);
        assert!(!queued);
        assert!(drops.contains(&("authentication", 1)), "{drops:?}");
        // Sizes no handshake message has.
        for (kind, len) in [(1, 147), (1, 1400), (2, 148), (3, 65)] {
            assert!(!admit_one(&shared, &inbox, &message(kind, len)).0, "type {kind}, {len} bytes");
        }
        let (_, drops) = admit_one(&shared, &inbox, &[]);
        assert!(drops.contains(&("malformed", 5)), "{drops:?}");
        // An initiation made for this node's key passes (whoever made it:
        // the handshake thread decides who may).
        let (queued, drops) = admit_one(&shared, &inbox, &initiation_to(&node));
        assert!(queued, "{drops:?}");
        assert!(drops.iter().all(|(r, _)| *r != "under_load" && *r != "inbox_full"), "{drops:?}");
    }

    #[test]
    fn under_load_an_initiation_without_a_cookie_is_answered_with_one() {
        let node = StaticSecret::random_from_rng(rand_core::OsRng);
        let shared = WgShared::new(node.clone());
        let inbox = Inbox::new();
        let init = initiation_to(&node);
        let answered = (0..300).filter(|_| !admit_one(&shared, &inbox, &init).0).count();
        let drops = shared.stats.counts();
        assert!(answered > 0, "past the limit some are answered with a cookie: {drops:?}");
        let under_load = drops.iter().find(|(r, _)| *r == "under_load").map_or(0, |(_, n)| *n);
        assert_eq!(under_load as usize, answered, "each counted as under_load: {drops:?}");
        assert!(answered < 300, "the first ones under the limit are queued");
    }

    #[test]
    fn the_limit_grows_with_the_peers_so_their_rekeys_ask_for_no_cookies() {
        use super::super::state::handshake_limit;
        let table: Vec<u64> = [0, 1_500, 6_000, 20_000, 65_000, 1_000_000].map(handshake_limit).to_vec();
        assert_eq!(table, [100, 100, 400, 1_333, 4_000, 4_000]);
        let node = StaticSecret::random_from_rng(rand_core::OsRng);
        let shared = WgShared::new(node.clone());
        shared.fit_limiter(20_000);
        let (inbox, init) = (Inbox::new(), initiation_to(&node));
        // 300 in one second from 20,000 peers is no load: all are queued
        // (up to the inbox's bound), none asked for a cookie.
        for _ in 0..300 {
            admit_one(&shared, &inbox, &init);
        }
        let drops = shared.stats.counts();
        assert!(drops.iter().all(|(r, _)| *r != "under_load"), "{drops:?}");
    }
}
