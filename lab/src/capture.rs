//! A packet capture on one interface of a lab namespace (an `AF_PACKET`
//! socket on a thread of its own), for tests that check what travels on
//! the underlay: that it is encrypted, and to replay what was sent.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use crate::netns;

/// A running capture; [`stop`](Capture::stop) returns the frames.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<Vec<u8>>>>,
}

fn open(ifname: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("binding the capture to {ifname}: {}", std::io::Error::last_os_error());
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    let size = 16 << 20;
    // SAFETY: setsockopt with valid pointers to values of the sizes given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

impl Capture {
    /// Start capturing every frame on `ifname` in namespace `ns`; returns
    /// once the socket is bound, so nothing sent after it is missed.
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
            let fd = match netns::enter(&ns).and_then(|()| open(&ifname)) {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536 + 256];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            Ok(frames)
        });
        ready_rx.recv().context("capture thread ended")??;
        Ok(Capture { stop, handle })
    }

    /// Stop and return the Ethernet frames seen, in order.
    pub fn stop(self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("capture thread panicked"))?
    }
}

/// The UDP payloads to `dst`:`port` in Ethernet frames carrying IPv4.
pub fn udp_payloads(frames: &[Vec<u8>], dst: std::net::Ipv4Addr, port: u16) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| {
            if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
                return None;
            }
            let ip = &f[14..];
            if ip[16..20] != dst.octets() {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let udp = ip.get(ihl..)?;
            (udp.len() >= 8 && u16::from_be_bytes([udp[2], udp[3]]) == port).then(|| udp[8..].to_vec())
        })
        .collect()
}
