//! Forwarding counters: packets and bytes each way, drops per reason.
//! Threads add to them with relaxed atomics, batched per wake-up.

use std::sync::atomic::{AtomicU64, Ordering};

use weft_types::metrics::{Kind, Writer};

use super::packet::DropReason;

#[derive(Debug, Default)]
pub struct Stats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub icmp_sent: AtomicU64,
    /// A queue's TUN device changed reader (see `duty`).
    pub handovers: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Stats {
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// The counters as Prometheus metric families.
    pub fn render(&self, w: &mut Writer<'_>) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        w.family("weft_udp_packets_total", Kind::Counter, "Packets forwarded by the udp backend, by direction.")
            .sample("weft_udp_packets_total", &[("direction", "tx")], g(&self.tx_packets))
            .sample("weft_udp_packets_total", &[("direction", "rx")], g(&self.rx_packets))
            .family("weft_udp_bytes_total", Kind::Counter, "Bytes forwarded by the udp backend, by direction.")
            .sample("weft_udp_bytes_total", &[("direction", "tx")], g(&self.tx_bytes))
            .sample("weft_udp_bytes_total", &[("direction", "rx")], g(&self.rx_bytes))
            .family("weft_udp_icmp_sent_total", Kind::Counter, "ICMP errors the udp backend sent back to pods.")
            .sample("weft_udp_icmp_sent_total", &[], g(&self.icmp_sent))
            .family(
                "weft_udp_tun_handovers_total",
                Kind::Counter,
                "Times a queue's TUN device changed reader: to the send thread when bulk traffic starts, back to the receive thread when it stops.",
            )
            .sample("weft_udp_tun_handovers_total", &[], g(&self.handovers))
            .family("weft_udp_dropped_total", Kind::Counter, "Packets dropped by the udp backend, by reason.");
        for r in DropReason::ALL {
            w.sample("weft_udp_dropped_total", &[("reason", r.name())], self.drops(r) as f64);
        }
    }
}
