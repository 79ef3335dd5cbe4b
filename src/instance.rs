//! One `weft run` per host (per network namespace): a second one would
//! attach to the first one's TUN queues and share its UDP port, its
//! routes and its lease, and each would undo what the other does. The
//! first holds an abstract Unix socket, which belongs to the network
//! namespace and is released by the kernel the moment the process ends
//! (however it ends), so a crash never leaves a stale lock behind.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use anyhow::{bail, Context, Result};

/// The abstract socket's name.
const NAME: &[u8] = b"weft-run";

/// Held for as long as this `weft run` lives.
pub(crate) struct Instance {
    _socket: UnixListener,
}

/// Claim this host for this process, or say that another `weft run` has it.
pub(crate) fn claim() -> Result<Instance> {
    let addr = SocketAddr::from_abstract_name(NAME).context("naming the instance socket")?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(Instance { _socket: socket }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "another weft run is already running on this host (in this network namespace); \
             stop it first (systemctl stop weft) or run this one elsewhere"
        ),
        Err(e) => Err(e).context("claiming the host for this weft run (an abstract Unix socket)"),
    }
}
