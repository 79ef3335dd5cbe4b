//! Coalescing received TCP segments into one TUN write, straight from the
//! UDP receive buffer (pure: finds the runs and builds their header).
//!
//! A UDP GRO read returns up to 64 datagrams of one peer back to back; in
//! a bulk transfer they are consecutive segments of one TCP flow. Such a
//! run enters the TUN device as one TCP super-packet: a virtio-net header
//! asking the kernel to segment and checksum (`GSO_TCPV4` or, for IPv6
//! pods on dual-stack networks, `GSO_TCPV6`; `NEEDS_CSUM`),
//! the first segment's IP and TCP headers with the run's length, then the
//! payload of every segment, each written from where it lies in the
//! receive buffer (`writev`). Nothing is copied in userspace and no
//! payload checksum is computed: the kernel sums the super-packet once as
//! it delivers it.
//!
//! Segments join a run only as the kernel's own GRO would join them: same
//! addresses, ports, TOS, TTL, DF, ACK number, window and TCP options; no
//! IP options or fragments; only ACK set (PSH allowed on the last); next
//! sequence number; the same payload size, except a shorter last one. For
//! IPv6: same traffic class, flow label and hop limit, and no extension
//! headers.
//! Anything else is written as it came. The inner checksums are not
//! verified before merging: the datagram's UDP checksum, which the kernel
//! checked on receipt, covers every byte of the segments.

use super::packet::{fold, sum16};

/// The virtio-net header the TUN device expects before every packet
/// (`struct virtio_net_hdr`, 10 bytes, as tun-rs configures the device;
/// the udp backend checks that the two agree).
pub const VNET_HDR_LEN: usize = 10;
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_TCPV6: u8 = 4;
/// TCP flags.
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// The IPv4 total length field's limit.
const MAX_IP_LEN: usize = 65_535;
/// IPv6 (40, the longer IP header) plus TCP with the most options (60).
pub const MAX_HEADER: usize = VNET_HDR_LEN + 40 + 60;
/// The most segments in one run: a UDP GRO read holds at most 64.
pub const MAX_RUN: usize = 64;

/// What coalescing needs of one IPv4/TCP or IPv6/TCP segment.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    /// IP header length: 20 (IPv4 without options) or 40 (IPv6).
    ip: usize,
    /// IP plus TCP header length.
    hdr: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// The segment as TCP without IP options, extension headers or
/// fragmentation, if it is one.
fn tcp(seg: &[u8]) -> Option<Tcp> {
    let ip = match seg.first()? >> 4 {
        4 => {
            if seg.len() < 40 || seg[0] != 0x45 || seg[9] != 6 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([seg[2], seg[3]]));
            // More fragments, or a fragment offset.
            let fragment = u16::from_be_bytes([seg[6], seg[7]]) & 0x3fff != 0;
            if total != seg.len() || fragment {
                return None;
            }
            20
        }
        6 => {
            // Next header TCP: no extension headers (fragments among them).
            if seg.len() < 60 || seg[6] != 6 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
            if payload + 40 != seg.len() {
                return None;
            }
            40
        }
        _ => return None,
    };
    let thl = usize::from(seg[ip + 12] >> 4) * 4;
    if thl < 20 || ip + thl > seg.len() {
        return None;
    }
    Some(Tcp {
        ip,
        hdr: ip + thl,
        seq: u32::from_be_bytes([seg[ip + 4], seg[ip + 5], seg[ip + 6], seg[ip + 7]]),
        flags: seg[ip + 13],
        payload: seg.len() - ip - thl,
    })
}

/// Whether two segments' IP headers let them merge: IPv4: TOS, DF, TTL
/// and protocol, addresses; IPv6: version, traffic class and flow label,
/// next header and hop limit, addresses.
fn same_ip(f: &[u8], n: &[u8], ip: usize) -> bool {
    if ip == 20 {
        f[1] == n[1] && f[6] == n[6] && f[8..10] == n[8..10] && f[12..20] == n[12..20]
    } else {
        f[0..4] == n[0..4] && f[6..40] == n[6..40]
    }
}

/// Whether `next` can follow `pt` (the run's last) in a run whose first
/// segment is `first`, given the run's payload so far.
fn joins(first: (&[u8], Tcp), pt: Tcp, next: (&[u8], Tcp), run_payload: usize) -> bool {
    let (f, ft) = first;
    let (n, nt) = next;
    pt.flags == ACK
        && (nt.flags == ACK || nt.flags == ACK | PSH)
        && nt.hdr == ft.hdr
        && nt.payload > 0
        && pt.payload == ft.payload
        && nt.payload <= ft.payload
        && nt.seq == pt.seq.wrapping_add(pt.payload as u32)
        && ft.hdr + run_payload + nt.payload <= MAX_IP_LEN
        && nt.ip == ft.ip
        && same_ip(f, n, ft.ip)
        // Ports; ACK number; data offset; window; urgent pointer and options.
        && {
            let t = ft.ip;
            f[t..t + 4] == n[t..t + 4]
                && f[t + 8..t + 13] == n[t + 8..t + 13]
                && f[t + 14..t + 16] == n[t + 14..t + 16]
                && f[t + 18..ft.hdr] == n[t + 18..nt.hdr]
        }
}

/// Segments to coalesce, by index: a slice of slices, or [`Spans`] of one
/// receive buffer (which needs no list of slices built per batch).
pub trait Segments {
    fn count(&self) -> usize;
    fn seg(&self, i: usize) -> &[u8];
}

impl Segments for [&[u8]] {
    fn count(&self) -> usize {
        self.len()
    }

    fn seg(&self, i: usize) -> &[u8] {
        self[i]
    }
}

/// Segments lying in one buffer, each at `(offset, length)`.
pub struct Spans<'a> {
    pub buf: &'a [u8],
    pub spans: &'a [(usize, usize)],
}

impl Segments for Spans<'_> {
    fn count(&self) -> usize {
        self.spans.len()
    }

    fn seg(&self, i: usize) -> &[u8] {
        let (at, len) = self.spans[i];
        &self.buf[at..at + len]
    }
}

/// Split `segs` into runs: `(first index, count)`, in order. A run of one
/// is a packet written as it came. Allocates nothing.
pub fn runs<S: Segments + ?Sized>(segs: &S) -> Runs<'_, S> {
    Runs { segs, i: 0 }
}

/// The runs of [`runs`], one at a time.
pub struct Runs<'a, S: ?Sized> {
    segs: &'a S,
    i: usize,
}

impl<S: Segments + ?Sized> Iterator for Runs<'_, S> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let (segs, i) = (self.segs, self.i);
        if i >= segs.count() {
            return None;
        }
        let mut count = 1;
        if let Some(ft) = tcp(segs.seg(i)).filter(|t| t.payload > 0) {
            let mut prev = ft;
            let mut payload = ft.payload;
            while i + count < segs.count() && count < MAX_RUN {
                let next = segs.seg(i + count);
                let Some(nt) = tcp(next) else { break };
                if !joins((segs.seg(i), ft), prev, (next, nt), payload) {
                    break;
                }
                payload += nt.payload;
                prev = nt;
                count += 1;
            }
        }
        self.i += count;
        Some((i, count))
    }
}

/// Write into `out` what goes before the payloads of run `segs` (two or
/// more segments that [`runs`] joined): the virtio-net header and the
/// first segment's IP and TCP headers, fixed up for the whole run.
/// Returns its length.
pub fn super_header(segs: &[&[u8]], out: &mut [u8; MAX_HEADER]) -> usize {
    let first = segs[0];
    let ip = if first[0] >> 4 == 6 { 40 } else { 20 };
    let hdr = ip + usize::from(first[ip + 12] >> 4) * 4;
    let payload: usize = segs.iter().map(|s| s.len() - hdr).sum();
    let total = hdr + payload;
    let gso_size = first.len() - hdr;
    let vnet = &mut out[..VNET_HDR_LEN];
    vnet.fill(0);
    vnet[0] = VNET_F_NEEDS_CSUM;
    vnet[1] = if ip == 40 { VNET_GSO_TCPV6 } else { VNET_GSO_TCPV4 };
    vnet[2..4].copy_from_slice(&(hdr as u16).to_ne_bytes());
    vnet[4..6].copy_from_slice(&(gso_size as u16).to_ne_bytes());
    vnet[6..8].copy_from_slice(&(ip as u16).to_ne_bytes());
    vnet[8..10].copy_from_slice(&16u16.to_ne_bytes());
    let h = &mut out[VNET_HDR_LEN..VNET_HDR_LEN + hdr];
    h.copy_from_slice(&first[..hdr]);
    let tcp_len = (total - ip) as u32;
    let pseudo = if ip == 40 {
        // Payload length; no header checksum in IPv6.
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        sum16(&h[8..40], 6 + tcp_len)
    } else {
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[10..12].fill(0);
        let ip_check = !fold(sum16(&h[..20], 0));
        h[10..12].copy_from_slice(&ip_check.to_be_bytes());
        sum16(&h[12..20], 6 + tcp_len)
    };
    // The last segment's flags (a PSH there stays on the super-packet).
    h[ip + 13] = segs[segs.len() - 1][ip + 13];
    // With NEEDS_CSUM the checksum field holds the pseudo-header sum,
    // not complemented; the kernel adds header and payload.
    h[ip + 16..ip + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    VNET_HDR_LEN + hdr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP segment of flow (ports 5201 -> 40000) with `len` payload bytes.
    fn seg(seq: u32, len: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 32 + len;
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 63, 6, 0, 0, 10, 244, 2, 7, 10, 244, 1, 9];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&5201u16.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&77u32.to_be_bytes());
        p.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        // Timestamp option, padded.
        p.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        p.extend((0..len).map(|i| (seq as usize + i) as u8));
        p
    }

    /// The same segment over IPv6 (fd10:244:0:2::7 -> fd10:244:0:1::9).
    fn seg6(seq: u32, len: usize, flags: u8) -> Vec<u8> {
        let v4 = seg(seq, len, flags);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((v4.len() - 20) as u16).to_be_bytes());
        p.extend_from_slice(&[6, 63]);
        p.extend_from_slice(&"fd10:244:0:2::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd10:244:0:1::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&v4[20..]);
        p
    }

    #[test]
    fn ipv6_segments_coalesce_like_ipv4() {
        let segs = vec![seg6(1000, 100, ACK), seg6(1100, 100, ACK), seg6(1200, 60, ACK | PSH)];
        assert_eq!(plan(&segs), vec![(0, 3)]);
        let mut hops = seg6(1200, 100, ACK);
        hops[7] = 62;
        let mut flow_label = seg6(1200, 100, ACK);
        flow_label[3] = 1;
        let mut ext = seg6(1100, 100, ACK);
        ext[6] = 0; // a hop-by-hop options header first
        let mut port = seg6(1200, 100, ACK);
        port[42] = 0x11;
        type Case = (&'static str, Vec<Vec<u8>>, Vec<(usize, usize)>);
        let cases: Vec<Case> = vec![
            ("another hop limit", vec![seg6(1000, 100, ACK), seg6(1100, 100, ACK), hops], vec![(0, 2), (2, 1)]),
            ("another flow label", vec![seg6(1000, 100, ACK), seg6(1100, 100, ACK), flow_label], vec![(0, 2), (2, 1)]),
            ("an extension header", vec![seg6(1000, 100, ACK), ext], vec![(0, 1), (1, 1)]),
            ("another flow", vec![seg6(1000, 100, ACK), seg6(1100, 100, ACK), port], vec![(0, 2), (2, 1)]),
            ("IPv4 then IPv6", vec![seg(1000, 100, ACK), seg6(1100, 100, ACK)], vec![(0, 1), (1, 1)]),
            ("a gap", vec![seg6(1000, 100, ACK), seg6(1150, 100, ACK)], vec![(0, 1), (1, 1)]),
        ];
        for (what, segs, want) in cases {
            assert_eq!(plan(&segs), want, "{what}");
        }
    }

    #[test]
    fn the_ipv6_super_header_is_what_the_kernel_expects() {
        let segs = [seg6(1000, 100, ACK), seg6(1100, 100, ACK), seg6(1200, 60, ACK | PSH)];
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        let mut out = [0u8; MAX_HEADER];
        let n = super_header(&refs, &mut out);
        assert_eq!(n, VNET_HDR_LEN + 72);
        let vnet = &out[..VNET_HDR_LEN];
        assert_eq!((vnet[0], vnet[1]), (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6));
        assert_eq!(u16::from_ne_bytes([vnet[2], vnet[3]]), 72, "hdr_len");
        assert_eq!(u16::from_ne_bytes([vnet[6], vnet[7]]), 40, "csum_start");
        let h = &out[VNET_HDR_LEN..n];
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 32 + 260, "payload length");
        assert_eq!(h[53], ACK | PSH);
        let mut tcp = h[40..].to_vec();
        for s in &segs {
            tcp.extend_from_slice(&s[72..]);
        }
        let with_data = sum16(&tcp[..16], 0) + sum16(&tcp[18..], 0) + u32::from(u16::from_be_bytes([h[56], h[57]]));
        let mut check = tcp.clone();
        check[16..18].copy_from_slice(&(!fold(with_data)).to_be_bytes());
        let pseudo = sum16(&h[8..40], 6 + check.len() as u32);
        assert_eq!(fold(sum16(&check, pseudo)), 0xffff, "the finished TCP checksum verifies");
    }

    fn plan(segs: &[Vec<u8>]) -> Vec<(usize, usize)> {
        let slices: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        let by_slices: Vec<_> = runs(&slices[..]).collect();
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for s in segs {
            spans.push((buf.len(), s.len()));
            buf.extend_from_slice(s);
        }
        let by_spans: Vec<_> = runs(&Spans { buf: &buf, spans: &spans }).collect();
        assert_eq!(by_slices, by_spans, "slices and spans of one buffer make the same runs");
        by_slices
    }

    #[test]
    fn consecutive_segments_of_one_flow_make_one_run() {
        let segs = vec![seg(1000, 100, ACK), seg(1100, 100, ACK), seg(1200, 60, ACK | PSH)];
        assert_eq!(plan(&segs), vec![(0, 3)]);
    }

    #[test]
    fn runs_break_where_the_kernel_would_not_merge() {
        let mut other_flow = seg(1200, 100, ACK);
        other_flow[22] = 0x11;
        let mut ttl = seg(1200, 100, ACK);
        ttl[8] = 62;
        let mut options = seg(1200, 100, ACK);
        options[47] = 9; // another TSval
        let mut fragment = seg(1100, 100, ACK);
        fragment[6] = 0x20; // more fragments
        type Case = (&'static str, Vec<Vec<u8>>, Vec<(usize, usize)>);
        let cases: Vec<Case> = vec![
            ("a gap in sequence", vec![seg(1000, 100, ACK), seg(1150, 100, ACK)], vec![(0, 1), (1, 1)]),
            ("PSH only last", vec![seg(1000, 100, ACK | PSH), seg(1100, 100, ACK)], vec![(0, 1), (1, 1)]),
            ("a short one ends it", vec![seg(1000, 50, ACK), seg(1050, 100, ACK)], vec![(0, 1), (1, 1)]),
            ("a bigger one", vec![seg(1000, 100, ACK), seg(1100, 120, ACK)], vec![(0, 1), (1, 1)]),
            ("FIN", vec![seg(1000, 100, ACK), seg(1100, 100, ACK | 1)], vec![(0, 1), (1, 1)]),
            ("pure ACKs", vec![seg(1000, 0, ACK), seg(1000, 0, ACK)], vec![(0, 1), (1, 1)]),
            ("another flow", vec![seg(1000, 100, ACK), seg(1100, 100, ACK), other_flow], vec![(0, 2), (2, 1)]),
            ("another TTL", vec![seg(1000, 100, ACK), seg(1100, 100, ACK), ttl], vec![(0, 2), (2, 1)]),
            ("other options", vec![seg(1000, 100, ACK), seg(1100, 100, ACK), options], vec![(0, 2), (2, 1)]),
            ("a fragment", vec![seg(1000, 100, ACK), fragment], vec![(0, 1), (1, 1)]),
            ("not TCP", vec![vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]], vec![(0, 1)]),
        ];
        for (what, segs, want) in cases {
            assert_eq!(plan(&segs), want, "{what}");
        }
    }

    #[test]
    fn a_run_stops_below_the_ip_length_limit() {
        let segs: Vec<Vec<u8>> = (0..50).map(|i| seg(1448 * i, 1448, ACK)).collect();
        let runs = plan(&segs);
        // (65535 - 52) / 1448 = 45 segments fit.
        assert_eq!(runs[0], (0, 45));
        assert_eq!(runs[1], (45, 5));
    }

    #[test]
    fn the_super_header_is_what_the_kernel_expects() {
        let segs = [seg(1000, 100, ACK), seg(1100, 100, ACK), seg(1200, 60, ACK | PSH)];
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        let mut out = [0u8; MAX_HEADER];
        let n = super_header(&refs, &mut out);
        assert_eq!(VNET_HDR_LEN, 10, "struct virtio_net_hdr");
        assert_eq!(n, VNET_HDR_LEN + 52);
        let vnet = &out[..VNET_HDR_LEN];
        assert_eq!((vnet[0], vnet[1]), (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4));
        assert_eq!(u16::from_ne_bytes([vnet[2], vnet[3]]), 52, "hdr_len");
        assert_eq!(u16::from_ne_bytes([vnet[4], vnet[5]]), 100, "gso_size");
        assert_eq!(u16::from_ne_bytes([vnet[6], vnet[7]]), 20, "csum_start");
        assert_eq!(u16::from_ne_bytes([vnet[8], vnet[9]]), 16, "csum_offset");
        let h = &out[VNET_HDR_LEN..n];
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 52 + 260, "total length");
        assert_eq!(fold(sum16(&h[..20], 0)), 0xffff, "a valid IP header checksum");
        assert_eq!(h[33], ACK | PSH, "the last segment's PSH");
        assert_eq!(&h[24..28], &1000u32.to_be_bytes(), "the first sequence number");
        // The partial checksum plus the TCP header and payload sum to a valid checksum.
        let mut tcp = h[20..].to_vec();
        for s in &segs {
            tcp.extend_from_slice(&s[52..]);
        }
        let with_data = sum16(&tcp[..16], 0) + sum16(&tcp[18..], 0) + u32::from(u16::from_be_bytes([h[36], h[37]]));
        let full = !fold(with_data);
        let mut check = tcp.clone();
        check[16..18].copy_from_slice(&full.to_be_bytes());
        let pseudo = sum16(&h[12..20], 6 + check.len() as u32);
        assert_eq!(fold(sum16(&check, pseudo)), 0xffff, "the finished TCP checksum verifies");
    }
}
