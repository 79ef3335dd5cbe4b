//! systemd readiness notification: `READY=1` to `$NOTIFY_SOCKET`, when set;
//! and the hold-off that keeps a failing start from becoming a tight
//! restart loop under the unit's short `RestartSec`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Under systemd, `weft run` that fails lives at least this long. The unit
/// restarts weft 100 ms after it dies, so that a crash of the udp backend
/// costs pods a fraction of a second; a failure weft reports itself (an
/// invalid config, a missing interface, a lost lease) is held off to
/// this, so that it restarts at most every 5 s, as with flanneld's unit.
pub(crate) const MIN_FAILED_LIFETIME: Duration = Duration::from_secs(5);

/// Whether a service manager started us (`$NOTIFY_SOCKET` is set).
fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// After a failure of `weft run` that began at `started`: under systemd,
/// wait out the rest of [`MIN_FAILED_LIFETIME`], saying so. Outside
/// systemd, return at once.
pub(crate) fn hold_off_restart(started: Instant) {
    if !under_systemd() {
        return;
    }
    let left = MIN_FAILED_LIFETIME.saturating_sub(started.elapsed());
    if !left.is_zero() {
        eprintln!("weft: exiting in {:.1} s, so that systemd does not restart it in a tight loop", left.as_secs_f64());
        std::thread::sleep(left);
    }
}

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
