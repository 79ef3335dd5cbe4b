//! Forged packets for the adversary tests: IPv4/UDP packets built byte by
//! byte (any source a raw socket may claim) and sent from inside a
//! namespace through a raw socket (`IPPROTO_RAW`: the header is ours), as
//! root in a pod can (containerd and Docker grant `CAP_NET_RAW`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};

/// The ones' complement sum of `data` folded to 16 bits, starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying a UDP datagram from `src` to `dst` (TTL 64,
/// header checksum set, UDP checksum 0: none, as IPv4 allows).
pub fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Send each of `packets` (whole IPv4 packets) from namespace `ns` through
/// a raw socket, to the destination in its header.
pub fn send_ipv4(ns: &str, packets: Vec<Vec<u8>>) -> Result<()> {
    crate::netns::in_netns(ns, move || -> Result<()> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("socket(AF_INET, SOCK_RAW): {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for p in &packets {
            if p.len() < 20 {
                bail!("not an IPv4 packet: {} bytes", p.len());
            }
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
            let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            // SAFETY: `p` and `to` are live for the call, with the lengths passed.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if rc < 0 {
                bail!("sendto {dst}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_checksum_verifies() {
        let p = ipv4_udp("198.18.0.2:8285".parse().unwrap(), "198.18.0.1:8285".parse().unwrap(), b"x");
        assert_eq!(p.len(), 29);
        assert_eq!(checksum(&p[..20], 0), 0, "a header with its checksum sums to zero");
    }
}
