//! The userspace substrate: what the two userspace backends (udp and
//! wireguard) run on, and nothing of either one's own. A backend brings
//! its wire format and decisions (udp: flannel's framing and the route
//! table; wireguard: keys, peers, handshakes, encryption) and imports this;
//! the two never import each other (`dataplane/tests/layers.rs`).
//!
//! | module      | what it holds                                                      |
//! |-------------|--------------------------------------------------------------------|
//! | `forwarder` | [`Forwarder`]: one device's queues, sockets, threads, supervision   |
//! | `handover`  | systemd's descriptor store: sockets and queues kept over a restart |
//! | `device`    | the persistent multi-queue TUN device: open, check, repair, re-attach |
//! | `socket`    | the UDP sockets, one per queue, with large buffers                  |
//! | `threads`   | [`ThreadSet`]: owned threads, started, stopped and joined together |
//! | `thread`    | a thread's life: stop signal, waits, error log, why it ended        |
//! | `loops`     | the loops the threads run, and the TUN hand-over between two        |
//! | `duty`      | which thread of a queue reads the TUN device: light or bulk        |
//! | `io`        | batched TUN reads, `recvmmsg` with GRO, super-packet TUN writes    |
//! | `priority`  | how the threads are scheduled; when the lane's are real-time       |
//! | `lane`      | `LatencyLane`: the eBPF classifiers of small packets (pods, wire)   |
//! | `restart`   | the restart backoff (pure, the clock passed in)                    |
//! | `sys`       | every libc call of the userspace backends, one checked helper each |

pub(crate) mod device;
pub(crate) mod duty;
pub(crate) mod forwarder;
pub(crate) mod handover;
pub(crate) mod io;
pub(crate) mod lane;
pub(crate) mod loops;
pub(crate) mod priority;
pub(crate) mod restart;
pub(crate) mod socket;
pub(crate) mod sys;
pub(crate) mod thread;
pub(crate) mod threads;

pub(crate) use forwarder::{DeviceSpec, Forwarder, Queue, RouteBy, Running};
pub(crate) use lane::Wire;
pub(crate) use threads::ThreadSet;
