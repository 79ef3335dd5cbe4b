//! What a wake-up costs on this machine, measured on the underlay: a UDP
//! echo between the two node namespaces, where each round trip wakes a
//! blocked receiver on each side, next to the kernel's ping over the same
//! path (no wake-up: the kernel answers). A userspace forwarder's round
//! trip wakes a sleeping thread four times (the forwarding thread of each
//! node on the way there and back, the last one waking the pinging
//! program), the kernel backends' none; so twice the echo's overhead over
//! ping is what wake-ups alone add to a udp-backend round trip here.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use weft_lab::netns;

const STOP: &[u8] = b"stop";

/// Round-trip times (µs, sorted) of `count` 56-byte UDP echoes, 2 ms apart,
/// from `client_ns` to an echo server at `server_ip` in `server_ns`.
pub(crate) fn udp_echo_rtts_us(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    count: usize,
) -> Result<Vec<f64>> {
    // Sockets stay in the namespace they were created in.
    let server = netns::in_netns(server_ns, move || UdpSocket::bind((server_ip, 0)))??;
    let addr = server.local_addr()?;
    server.set_read_timeout(Some(Duration::from_secs(5)))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            if &buf[..n] == STOP || server.send_to(&buf[..n], from).is_err() {
                break;
            }
        }
    });
    let client = netns::in_netns(client_ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    client.connect(addr)?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let payload = [0x5au8; 56];
    let mut buf = [0u8; 2048];
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        client.send(&payload)?;
        if client.recv(&mut buf).is_ok() {
            rtts.push(start.elapsed().as_secs_f64() * 1e6);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    client.send(STOP)?;
    let _ = echo.join();
    if rtts.len() < count / 2 {
        bail!("UDP echo to {addr}: only {} of {count} answered", rtts.len());
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    Ok(rtts)
}
