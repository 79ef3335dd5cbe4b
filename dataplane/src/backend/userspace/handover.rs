//! Restarts that lose nothing: systemd's file descriptor store. A userspace
//! backend hands its UDP sockets and TUN queues to systemd (`FDSTORE=1`,
//! named `<device>.udp.<i>` and `<device>.tun.<i>`) when it opens them, and
//! the process systemd starts next (after a crash, `systemctl restart`, an
//! upgrade) gets them back (`LISTEN_FDS`, `LISTEN_FDNAMES`). In between the
//! kernel keeps what arrives: datagrams wait in the sockets' buffers and pod
//! packets in the TUN queues, where without the store they would be dropped.
//!
//! The sockets are taken over as they are. The TUN queues cannot be
//! (tun-rs adopts no queue that carries virtio-net headers), so they are
//! read empty and closed, and what they held is written into the reopened
//! device: the kernel routes it out through the device again, to the new
//! queues. Outside systemd (`NOTIFY_SOCKET` unset) nothing is stored and
//! nothing is taken.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{info, warn};
use tun_rs::SyncDevice;

use super::sys;

/// Descriptors systemd handed over and nobody took yet, by name; `None`
/// until [`take_handed_over`].
static HANDED: Mutex<Option<HashMap<String, OwnedFd>>> = Mutex::new(None);

/// At most this many packets are kept from the TUN queues of the last run
/// (a queue holds 500 unless its length was raised).
const MAX_BACKLOG: usize = 4096;

/// How long a removal waits for systemd to close its copies.
const BARRIER_WAIT: Duration = Duration::from_secs(1);

/// Take what systemd handed this process, once, early at start (before
/// anything runs a child that could inherit the descriptors).
pub fn take_handed_over() {
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    if handed.is_some() {
        return;
    }
    let fds = sys::take_listen_fds().unwrap_or_else(|e| {
        warn!("cannot read the descriptors systemd handed over ({e}); opening everything anew");
        Vec::new()
    });
    if !fds.is_empty() {
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        info!(descriptors = %names.join(","), "took back {} descriptors from systemd's store", fds.len());
    }
    *handed = Some(fds.into_iter().collect());
}

/// The handed-over descriptors whose names start with `prefix`, sorted by
/// name.
fn take_named(prefix: &str) -> Vec<(String, OwnedFd)> {
    take_handed_over();
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(map) = handed.as_mut() else { return Vec::new() };
    let names: Vec<String> = map.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
    let mut taken: Vec<(String, OwnedFd)> =
        names.into_iter().filter_map(|n| map.remove(&n).map(|fd| (n, fd))).collect();
    taken.sort_by(|a, b| a.0.cmp(&b.0));
    taken
}

/// The handed-over descriptor named exactly `name`, if systemd kept one.
pub(crate) fn take_exact(name: &str) -> Option<OwnedFd> {
    take_handed_over();
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    handed.as_mut()?.remove(name)
}

pub(crate) fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The name of queue `i`'s socket or TUN queue of `device` in the store.
pub(crate) fn name(device: &str, kind: &str, i: usize) -> String {
    format!("{device}.{kind}.{i}")
}

/// Hand `fds` to systemd's store under `names` (a copy: ours stay open).
/// A refusal costs only the next restart's packets, so it is a warning.
pub(crate) fn store<'a>(entries: impl IntoIterator<Item = (String, BorrowedFd<'a>)>) {
    if !under_systemd() {
        return;
    }
    for (name, fd) in entries {
        if let Err(e) = sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(&name)], &[fd]) {
            warn!("cannot hand {name} to systemd's descriptor store ({e}); a restart drops what arrives meanwhile");
        }
    }
}

/// Hand a memory file to systemd's store under `name`. systemd watches a
/// stored descriptor for hang-ups unless told not to (`FDPOLL=0`), and a
/// file cannot be watched: without it the file is refused.
pub(crate) fn store_file(name: &str, fd: BorrowedFd<'_>) {
    if !under_systemd() {
        return;
    }
    let states = [NotifyState::FdStore, NotifyState::FdName(name), NotifyState::Custom("FDPOLL=0")];
    if let Err(e) = sd_notify::notify_with_fds(&states, &[fd]) {
        warn!("cannot hand {name} to systemd's descriptor store ({e}); a restart starts it anew");
    }
}

/// Take `names` out of systemd's store (systemd closes its copies), and
/// wait until it has.
pub(crate) fn remove(names: impl IntoIterator<Item = String>) {
    if !under_systemd() {
        return;
    }
    let mut any = false;
    for name in names {
        any = true;
        let _ = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(&name)]);
    }
    if any {
        barrier();
    }
}

/// Wait (at most [`BARRIER_WAIT`]) until systemd has handled every message
/// sent before: `BARRIER=1` carries a pipe's writing end, which systemd
/// closes once it got there.
fn barrier() {
    let Ok((reader, writer)) = std::io::pipe() else { return };
    let sent = sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[writer.as_fd()]);
    drop(writer);
    if sent.is_ok() {
        let _ = sys::poll(&[reader.as_raw_fd()], libc::POLLIN, -1, Some(BARRIER_WAIT));
    }
}

/// The UDP sockets of the last run for `device` (non-blocking, as
/// `socket::bind` makes them), when systemd kept exactly `count` of them
/// bound to `bind`; else none (any kept are let go, so that new ones can
/// bind).
pub(crate) fn take_sockets(device: &str, bind: SocketAddr, count: usize) -> Option<Vec<UdpSocket>> {
    let kept = take_named(&format!("{device}.udp."));
    if kept.is_empty() {
        return None;
    }
    let sockets: Vec<(String, UdpSocket)> = kept.into_iter().map(|(n, fd)| (n, UdpSocket::from(fd))).collect();
    let fits = sockets.len() == count
        && sockets.iter().enumerate().all(|(i, (n, s))| {
            *n == name(device, "udp", i) && s.local_addr().ok() == Some(bind) && s.set_nonblocking(true).is_ok()
        });
    if !fits {
        let found: Vec<String> = sockets
            .iter()
            .map(|(n, s)| format!("{n} on {}", s.local_addr().map_or("?".into(), |a| a.to_string())))
            .collect();
        warn!(device, "the sockets kept by systemd ({}) are not {count} on {bind}; binding new ones", found.join(", "));
        remove(sockets.iter().map(|(n, _)| n.clone()));
        return None;
    }
    Some(sockets.into_iter().map(|(_, s)| s).collect())
}

/// What the TUN queues of the last run held.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    packets: Vec<Vec<u8>>,
    /// Whether they carry virtio-net headers.
    vnet_hdr: bool,
}

/// Read the TUN queues systemd kept for `device` empty, then close them
/// (ours and systemd's), so that the device can be attached anew.
pub(crate) fn drain_tun(device: &str) -> Backlog {
    let kept = take_named(&format!("{device}.tun."));
    let mut backlog = Backlog::default();
    let mut buf = vec![0u8; 1 << 16];
    for (_, fd) in &kept {
        // A queue of a device deleted meanwhile is no longer attached.
        let Ok(flags) = sys::tun_flags(fd) else { continue };
        backlog.vnet_hdr = flags & libc::IFF_VNET_HDR as libc::c_short != 0;
        if sys::set_nonblocking(fd).is_err() {
            continue;
        }
        while backlog.packets.len() < MAX_BACKLOG {
            match sys::read(fd, &mut buf) {
                Ok(n) if n > 0 => backlog.packets.push(buf[..n].to_vec()),
                _ => break,
            }
        }
    }
    remove(kept.iter().map(|(n, _)| n.clone()));
    backlog
}

/// Write what the last run's queues held into the reopened device (whose
/// virtio-net headers are `vnet_hdr`), for the kernel to route out
/// through it again.
pub(crate) fn pass_on(device: &str, dev: &SyncDevice, backlog: Backlog, vnet_hdr: bool) {
    let total = backlog.packets.len();
    if total == 0 {
        return;
    }
    if backlog.vnet_hdr != vnet_hdr {
        warn!(device, "dropped {total} packets that waited in the TUN queues: the device's offloads changed");
        return;
    }
    let passed = backlog.packets.iter().filter(|p| sys::writev(dev.as_raw_fd(), &[IoSlice::new(p)]).is_ok()).count();
    info!(device, "passed on {passed} of {total} packets that waited in the TUN queues while weft was away");
}

/// Let go of whatever systemd handed over that this run did not take (the
/// backend or its devices changed): closed here and in the store.
pub fn release_unclaimed() {
    let left: Vec<(String, OwnedFd)> = {
        let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
        handed.as_mut().map(|m| m.drain().collect()).unwrap_or_default()
    };
    if left.is_empty() {
        return;
    }
    let names: Vec<String> = left.iter().map(|(n, _)| n.clone()).collect();
    info!(descriptors = %names.join(","), "let go of descriptors from systemd's store that this run does not use");
    remove(names);
}
