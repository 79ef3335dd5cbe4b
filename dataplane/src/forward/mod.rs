//! The hot path's pure part: what the udp backend's forwarding threads
//! (and the wireguard backend's) decide per packet, with no
//! I/O at all (no sockets, no TUN, no clock), so
//! that fuzz targets and benches can drive it directly.
//!
//! | module       | what it holds                                                   |
//! |--------------|-----------------------------------------------------------------|
//! | [`packet`]   | checked IPv4 views, TTL handling, ICMP errors                   |
//! | [`packet6`]  | the same for IPv6: checked views, hop limit, ICMPv6 errors      |
//! | [`decide`]   | the per-packet decisions: forward, answer with ICMP, drop       |
//! | [`table`]    | the LPM route table, swapped lock-free under the threads        |
//! | [`coalesce`] | received TCP segments joined into one TUN write                 |
//! | [`stats`]    | packet, byte and per-reason drop counters                       |
//! | [`wg`]       | the wireguard backend's peer table and datagram decisions       |
//! | [`noise`]    | the WireGuard protocol of one peer: handshakes, sessions, timers (it reads the clock at its ticks and handshakes, never per packet) |

pub mod coalesce;
pub mod decide;
pub mod noise;
pub mod packet;
pub mod packet6;
pub mod stats;
pub mod table;
pub mod wg;
