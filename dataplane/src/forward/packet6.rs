//! IPv6 packet views for the udp backend on dual-stack networks: checked
//! parsing of what arrives from peers, hop-limit handling of what leaves,
//! and the ICMPv6 errors weft sends back (RFC 4443). Pure, like
//! [`super::packet`], whose [`DropReason`]s it reuses.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::packet::{fold, sum16, DropReason, IcmpError};

/// The fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// Offsets of the IPv6 header fields used here.
mod field {
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC: usize = 8;
    pub(super) const DST: usize = 24;
}

/// ICMPv6's next-header number.
const ICMPV6: u8 = 58;

/// An ICMPv6 error may quote the original up to the minimum IPv6 MTU.
const MIN_MTU: usize = 1280;

fn addr_at(buf: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&buf[at..at + 16]);
    Ipv6Addr::from(o)
}

/// The source and destination of a datagram from a peer, once checked as
/// exactly one well-formed IPv6 packet with hops left.
pub fn check(buf: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr), DropReason> {
    if buf.len() < HEADER_LEN {
        return Err(DropReason::TooShort);
    }
    if buf[0] >> 4 != 6 {
        return Err(DropReason::NotIpv4);
    }
    let payload = usize::from(u16::from_be_bytes([buf[field::PAYLOAD_LEN], buf[field::PAYLOAD_LEN + 1]]));
    // A zero payload length means a jumbogram, which no peer sends over UDP.
    if payload + HEADER_LEN != buf.len() {
        return Err(DropReason::BadTotalLength);
    }
    if buf[field::HOP_LIMIT] == 0 {
        return Err(DropReason::TtlZero);
    }
    Ok((addr_at(buf, field::SRC), addr_at(buf, field::DST)))
}

/// Check a datagram from a peer before it goes into the TUN device: one
/// well-formed IPv6 packet for this node's IPv6 subnet; its source.
pub fn check_inbound(buf: &[u8], local: &Ipv6Net) -> Result<Ipv6Addr, DropReason> {
    let (src, dst) = check(buf)?;
    if !local.contains(&dst) {
        return Err(DropReason::NotForThisNode);
    }
    Ok(src)
}

/// The destination of an outbound IPv6 packet read from the TUN device.
pub fn dst_of(buf: &[u8]) -> Option<Ipv6Addr> {
    (buf.len() >= HEADER_LEN && buf[0] >> 4 == 6).then(|| addr_at(buf, field::DST))
}

/// Decrement the hop limit of an outbound packet (IPv6 has no header
/// checksum); `false` when it would reach zero.
pub fn decrement_hop_limit(buf: &mut [u8]) -> bool {
    if buf.len() < HEADER_LEN || buf[field::HOP_LIMIT] <= 1 {
        return false;
    }
    buf[field::HOP_LIMIT] -= 1;
    true
}

/// The ICMPv6 checksum of `msg` from `src` to `dst` (RFC 4443 2.3: over
/// the pseudo-header and the message).
pub fn icmp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc += msg.len() as u32;
    acc += u32::from(ICMPV6);
    !fold(sum16(msg, acc))
}

/// Write an ICMPv6 error about `original` into `out`, from `from` to the
/// original sender; returns its length, or `None` if `original` may not be
/// answered (too short, from an unspecified or multicast source, or itself
/// an ICMPv6 error, RFC 4443 2.4).
pub fn build_icmp6_error(kind: IcmpError, from: Ipv6Addr, original: &[u8], out: &mut [u8]) -> Option<usize> {
    if original.len() < HEADER_LEN || original[0] >> 4 != 6 {
        return None;
    }
    let to = addr_at(original, field::SRC);
    if to.is_unspecified() || to.is_multicast() {
        return None;
    }
    // Errors (types below 128) are never answered; with extension headers
    // in between weft cannot tell, so it does not answer those either.
    if original[field::NEXT_HEADER] == ICMPV6 && original.get(HEADER_LEN).is_none_or(|t| *t < 128) {
        return None;
    }
    let quoted = original.len().min(MIN_MTU - HEADER_LEN - 8).min(out.len().saturating_sub(HEADER_LEN + 8));
    let len = HEADER_LEN + 8 + quoted;
    if out.len() < len {
        return None;
    }
    let (ty, code) = match kind {
        // Destination unreachable, "no route to destination".
        IcmpError::NetUnreachable => (1u8, 0u8),
        // Time exceeded, "hop limit exceeded in transit".
        IcmpError::TimeExceeded => (3, 0),
    };
    let out = &mut out[..len];
    out.fill(0);
    out[0] = 0x60;
    out[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 2].copy_from_slice(&((8 + quoted) as u16).to_be_bytes());
    out[field::NEXT_HEADER] = ICMPV6;
    out[field::HOP_LIMIT] = 64;
    out[field::SRC..field::SRC + 16].copy_from_slice(&from.octets());
    out[field::DST..field::DST + 16].copy_from_slice(&to.octets());
    out[HEADER_LEN] = ty;
    out[HEADER_LEN + 1] = code;
    out[HEADER_LEN + 8..].copy_from_slice(&original[..quoted]);
    let sum = icmp6_checksum(&from, &to, &out[HEADER_LEN..]);
    out[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&sum.to_be_bytes());
    Some(len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv6/UDP packet of `len` bytes (at least 48) from `src` to `dst`.
    pub(crate) fn packet6(src: &str, dst: &str, hops: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - HEADER_LEN) as u16).to_be_bytes());
        p[6] = 17;
        p[7] = hops;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    #[test]
    fn inbound_validation_table() {
        let local: Ipv6Net = "fd10:244:0:1::/64".parse().unwrap();
        let good = packet6("fd10:244:0:2::7", "fd10:244:0:1::9", 64, 80);
        assert_eq!(check_inbound(&good, &local), Ok("fd10:244:0:2::7".parse().unwrap()));
        let mut long = good.clone();
        long.push(0);
        let mut v5 = good.clone();
        v5[0] = 0x50;
        let cases = [
            (vec![0x60; 39], DropReason::TooShort),
            (v5, DropReason::NotIpv4),
            (long, DropReason::BadTotalLength),
            (packet6("fd10:244:0:2::7", "fd10:244:0:1::9", 0, 80), DropReason::TtlZero),
            (packet6("fd10:244:0:2::7", "fd10:244:0:3::9", 64, 80), DropReason::NotForThisNode),
        ];
        for (n, (p, want)) in cases.iter().enumerate() {
            assert_eq!(check_inbound(p, &local), Err(*want), "case {n}");
        }
    }

    #[test]
    fn hop_limit_and_destination() {
        let mut p = packet6("fd10:244:0:1::2", "fd10:244:0:2::5", 2, 60);
        assert_eq!(dst_of(&p), Some("fd10:244:0:2::5".parse().unwrap()));
        assert!(decrement_hop_limit(&mut p));
        assert_eq!(p[7], 1);
        assert!(!decrement_hop_limit(&mut p), "one hop left: it would reach zero");
        assert_eq!(dst_of(&[0x45; 40]), None);
    }

    #[test]
    fn icmp6_errors_verify_and_are_not_sent_about_errors() {
        let from: Ipv6Addr = "fd10:244:0:1::".parse().unwrap();
        let original = packet6("fd10:244:0:1::2", "fd10:244:9::5", 64, 1400);
        let mut out = vec![0u8; 1500];
        let n = build_icmp6_error(IcmpError::NetUnreachable, from, &original, &mut out).unwrap();
        assert_eq!(n, 1280, "quoted up to the minimum MTU");
        let (src, dst) = check(&out[..n]).unwrap();
        assert_eq!((src, dst), (from, "fd10:244:0:1::2".parse().unwrap()));
        assert_eq!((out[40], out[41]), (1, 0));
        // The checksum verifies: summing with it gives all ones.
        assert_eq!(icmp6_checksum(&src, &dst, &out[40..n]), 0);
        let n = build_icmp6_error(IcmpError::TimeExceeded, from, &original[..48], &mut out).unwrap();
        assert_eq!((n, out[40]), (96, 3));

        let mut error = packet6("fd10:244:0:1::2", "fd10:244:9::5", 64, 48);
        error[6] = ICMPV6;
        error[40] = 1;
        assert_eq!(build_icmp6_error(IcmpError::TimeExceeded, from, &error, &mut out), None);
        error[40] = 128; // an echo request may be answered
        assert!(build_icmp6_error(IcmpError::TimeExceeded, from, &error, &mut out).is_some());
        let multicast = packet6("ff02::1", "fd10:244:9::5", 64, 48);
        assert_eq!(build_icmp6_error(IcmpError::NetUnreachable, from, &multicast, &mut out), None);
    }
}
