//! Every libc call of the userspace backends, each in one checked helper
//! with its `// SAFETY:` reasoning: eventfd doorbells, poll, setsockopt,
//! writev, the scheduling policy, bpf(2), the TUN ioctls, and the
//! descriptors systemd hands over.
//! The rest of `backend/` calls these and holds no `unsafe` of its own
//! (`dataplane/tests/layers.rs` checks it).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking eventfd: rung by one thread, it wakes another out of
/// `poll` until cleared.
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd(2) takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Doorbell { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Make the descriptor readable. Fails only when the counter is near
    /// overflow, that is, rung already.
    pub(crate) fn ring(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let rc = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reset it after a wake-up.
    pub(crate) fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN when not rung.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether it is rung now (without clearing it).
    #[cfg(test)]
    pub(crate) fn rung(&self) -> bool {
        let mut p = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }
}

/// What a wait ended with.
#[derive(Debug)]
pub(crate) enum Wake {
    /// Bit `i` set: the `i`-th descriptor waited on is ready (all clear
    /// after a timeout).
    Ready(u8),
    Stop,
}

/// `poll(2)` on `stop` and up to three of `fds` for `events`, or until
/// `timeout`: [`Wake::Stop`] when `stop` is readable, else the ready mask
/// (bit `i` is `fds[i]`; a negative descriptor is skipped, as poll(2)
/// skips it, and never marked). An error of a descriptor (POLLERR,
/// POLLHUP) counts as ready: the next read or write reports it; a closed
/// one (POLLNVAL) is `EBADF`.
pub(crate) fn poll(fds: &[RawFd], events: i16, stop: RawFd, timeout: Option<Duration>) -> io::Result<Wake> {
    let mut polled = [libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 }; 4];
    let n = fds.len().min(3);
    for (p, fd) in polled[1..].iter_mut().zip(&fds[..n]) {
        *p = libc::pollfd { fd: *fd, events, revents: 0 };
    }
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int);
    loop {
        // SAFETY: `polled` is a valid array of pollfds that outlives the
        // call, and its first `n + 1` are initialised.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), (n + 1) as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if polled[0].revents != 0 {
            return Ok(Wake::Stop);
        }
        if polled[1..=n].iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let ready = polled[1..=n].iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0u8, |m, (i, _)| m | 1 << i);
        return Ok(Wake::Ready(ready));
    }
}

/// `setsockopt(fd, SOL_SOCKET, opt, &value)` for an int option.
pub(crate) fn set_socket_int(fd: &impl AsRawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_sockopt_int(fd, libc::SOL_SOCKET, opt, value)
}

/// `setsockopt(fd, level, opt, &value)` for an int option.
pub(crate) fn set_sockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt on a valid fd with a pointer to a c_int that
    // outlives the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's kernel id.
pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() }
}

/// `sched_setscheduler(2)`: thread `tid` (0: the calling thread) to
/// `SCHED_FIFO` at `priority`, or with `None` back to `SCHED_OTHER` (at the
/// nice value it had).
pub(crate) fn set_policy(tid: libc::pid_t, fifo: Option<i32>) -> io::Result<()> {
    let (policy, priority) = match fifo {
        Some(p) => (libc::SCHED_FIFO, p),
        None => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `tid` is a plain id (the kernel checks it names a thread we
    // may change); `param` is a live sched_param the kernel only reads.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setpriority(2)` of the calling thread (Linux: a thread id names one
/// thread) to nice value `nice`.
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    let tid = gettid();
    // SAFETY: setpriority takes plain integers; it changes only the
    // scheduling weight of thread `tid`, our own.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `writev(2)` of all of `bufs` to `fd`, retried when interrupted.
pub(crate) fn writev(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix;
        // every slice is borrowed for the duration of the call, and the
        // kernel only reads `bufs.len()` of them.
        let written = unsafe { libc::writev(fd, bufs.as_ptr().cast(), bufs.len() as libc::c_int) };
        if written >= 0 {
            return Ok(written as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// bpf(2) with `cmd` and `attr` (a `union bpf_attr` prefix): the kernel's
/// non-negative answer.
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialised `union bpf_attr` prefix of the
    // size passed; the callers' pointers inside it point at buffers that
    // outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_PROG_LOAD` with `attr`: the new program's descriptor.
pub(crate) fn bpf_load<T>(attr: &mut T) -> io::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    let fd = bpf(BPF_PROG_LOAD, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `TUNSETSTEERINGEBPF` on a TUN queue with `prog` (-1: none).
pub(crate) fn set_tun_steering(tun: &impl AsRawFd, prog: RawFd) -> io::Result<()> {
    const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
    let value: libc::c_int = prog;
    // SAFETY: the ioctl reads one int from the pointer, which is live.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETSTEERINGEBPF, &value as *const libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The descriptors systemd handed this process (`LISTEN_FDS` for our
/// pid), each with its `FDNAME`; close-on-exec. Taken at most once: a
/// second call finds none.
pub(crate) fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let fds = sd_notify::listen_fds_with_names()?;
    // SAFETY: systemd passed these descriptors to this process (LISTEN_PID
    // is ours), and the flag above lets only this one call take them, so
    // nothing else owns them.
    Ok(fds.map(|(fd, name)| (name, unsafe { OwnedFd::from_raw_fd(fd) })).collect())
}

/// The `TUNGETIFF` flags of a TUN queue (`IFF_VNET_HDR`, `IFF_MULTI_QUEUE`,
/// ...); an error when the descriptor is not an attached TUN queue.
pub(crate) fn tun_flags(tun: &impl AsRawFd) -> io::Result<libc::c_short> {
    const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
    // SAFETY: `ifreq` is plain C data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `struct ifreq` through the pointer,
    // which points at a live one.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNGETIFF, &mut req as *mut libc::ifreq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF filled in the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// `read(2)` of one packet from a non-blocking descriptor (`EAGAIN` when
/// none is waiting).
pub(crate) fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`,
    // which is live and writable for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Set `O_NONBLOCK` on a descriptor.
pub(crate) fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl(2) with F_GETFL/F_SETFL takes no pointers.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new anonymous memory file (`memfd_create`, close-on-exec) named
/// `name` for `/proc/<pid>/fd`.
pub(crate) fn memfd(name: &std::ffi::CStr) -> io::Result<std::fs::File> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of
    // the call; the flags are a valid combination.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by no one else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
