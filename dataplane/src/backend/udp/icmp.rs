//! ICMP errors written back into the TUN device (TTL exceeded, no route,
//! too big), at most 100 per second per thread.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use super::shared::Shared;
use crate::forward::packet::{build_icmp_error, IcmpError};
use crate::forward::packet6::build_icmp6_error;

/// Token bucket for ICMP errors: at most 100 per second per thread.
struct IcmpLimit {
    tokens: f64,
    last: Instant,
}

impl IcmpLimit {
    fn new() -> IcmpLimit {
        IcmpLimit { tokens: 100.0, last: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * 100.0).min(100.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sends ICMP errors back into the TUN device.
pub(crate) struct Icmp {
    limit: IcmpLimit,
    buf: Vec<u8>,
}

impl Icmp {
    pub(crate) fn new() -> Icmp {
        // Room for an ICMPv6 error quoting up to the minimum IPv6 MTU.
        Icmp { limit: IcmpLimit::new(), buf: vec![0u8; VIRTIO_NET_HDR_LEN + 1280] }
    }

    pub(crate) fn send(&mut self, dev: &SyncDevice, shared: &Shared, kind: IcmpError, original: &[u8]) {
        if !self.limit.allow() {
            return;
        }
        let hdr = if shared.vnet_hdr { VIRTIO_NET_HDR_LEN } else { 0 };
        // A zeroed virtio-net header means: no GSO, checksums complete.
        self.buf[..hdr].fill(0);
        let built = match (original.first().map(|b| b >> 4), shared.icmp_from6, shared.icmp_from) {
            (Some(6), Some(from6), _) => build_icmp6_error(kind, from6, original, &mut self.buf[hdr..]),
            (Some(6), None, _) | (_, _, None) => None,
            (_, _, Some(from)) => build_icmp_error(kind, from, original, &mut self.buf[hdr..]),
        };
        if let Some(n) = built {
            if dev.send(&self.buf[..hdr + n]).is_ok() {
                shared.stats.icmp_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
