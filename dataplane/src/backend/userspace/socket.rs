//! The userspace backends' UDP sockets: one per forwarding queue on the node's
//! public IP and port (`SO_REUSEPORT` when there are several), with large
//! buffers. Over an IPv6 underlay each is one socket for both families,
//! bound to `[::]` (IPv4 peers arrive as mapped addresses).

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use super::sys;
use crate::error::{Error, Result};

/// Socket buffer size asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root).
const SOCKET_BUFFER: usize = 8 << 20;

/// Forwarding queues: `Queues` if set, else one per two cores with
/// offloads (at most 4), else one.
pub(crate) fn queue_count(offload: bool, configured: Option<u32>) -> usize {
    if let Some(q) = configured {
        return q.max(1) as usize;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if offload && cores >= 4 {
        (cores / 2).min(4)
    } else {
        1
    }
}

/// Ask for a large socket buffer: `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` as root,
/// else within the sysctl limits. A smaller buffer only costs speed, so a
/// refusal is logged, not fatal.
fn force_buffer(sock: &Socket, opt: libc::c_int) {
    let Err(forced) = sys::set_socket_int(sock, opt, SOCKET_BUFFER as libc::c_int) else { return };
    let fallback = if opt == libc::SO_RCVBUFFORCE {
        sock.set_recv_buffer_size(SOCKET_BUFFER)
    } else {
        sock.set_send_buffer_size(SOCKET_BUFFER)
    };
    if let Err(e) = fallback {
        warn!("cannot enlarge the UDP socket buffer ({forced}; then {e}); forwarding may be slower");
    }
}

/// A non-blocking UDP socket bound to `addr`, with large buffers; an IPv6
/// `addr` takes IPv4 too.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket> {
    let fail = |source: std::io::Error| Error::UdpSocket { addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).map_err(fail)?;
    }
    if reuse_port {
        sock.set_reuse_port(true).map_err(fail)?;
    }
    force_buffer(&sock, libc::SO_RCVBUFFORCE);
    force_buffer(&sock, libc::SO_SNDBUFFORCE);
    sock.bind(&addr.into()).map_err(fail)?;
    sock.set_nonblocking(true).map_err(fail)?;
    Ok(sock.into())
}

/// Turn UDP GRO on or off: on only where the receiving path reads its
/// segment size (the offload path); a path that reads one datagram at a
/// time must not be handed several glued together.
pub(crate) fn set_gro(sock: &UdpSocket, on: bool) -> std::io::Result<()> {
    sys::set_sockopt_int(sock, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}
