//! Forwarding counters: packets and bytes each way, drops per reason.
//! Threads add to them with relaxed atomics, batched per wake-up.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::DropReason;

#[derive(Debug, Default)]
pub struct Stats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub icmp_sent: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Stats {
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(s, "# HELP weft_udp_packets_total Packets forwarded by the udp backend.");
        let _ = writeln!(s, "# TYPE weft_udp_packets_total counter");
        let _ = writeln!(s, "weft_udp_packets_total{{direction=\"tx\"}} {}", g(&self.tx_packets));
        let _ = writeln!(s, "weft_udp_packets_total{{direction=\"rx\"}} {}", g(&self.rx_packets));
        let _ = writeln!(s, "# TYPE weft_udp_bytes_total counter");
        let _ = writeln!(s, "weft_udp_bytes_total{{direction=\"tx\"}} {}", g(&self.tx_bytes));
        let _ = writeln!(s, "weft_udp_bytes_total{{direction=\"rx\"}} {}", g(&self.rx_bytes));
        let _ = writeln!(s, "# TYPE weft_udp_icmp_sent_total counter");
        let _ = writeln!(s, "weft_udp_icmp_sent_total {}", g(&self.icmp_sent));
        let _ = writeln!(s, "# HELP weft_udp_dropped_total Packets dropped by the udp backend, by reason.");
        let _ = writeln!(s, "# TYPE weft_udp_dropped_total counter");
        for r in DropReason::ALL {
            let _ = writeln!(s, "weft_udp_dropped_total{{reason=\"{}\"}} {}", r.name(), self.drops(r));
        }
        s
    }
}
