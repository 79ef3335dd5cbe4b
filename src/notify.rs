//! systemd readiness notification: `READY=1` to `$NOTIFY_SOCKET`, when set.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tell the service manager we are ready. Does nothing outside systemd.
pub(crate) fn ready() -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(b"READY=1\nSTATUS=weft is forwarding\n", &addr)?;
    Ok(())
}
