//! IPv4 packet views for the udp backend: checked parsing of what arrives
//! from the network, TTL handling of what leaves, and the ICMP errors weft
//! sends back. Pure: no I/O, no allocation; the caller owns the buffers.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Offsets of the IPv4 header fields used here.
mod field {
    pub(super) const VER_IHL: usize = 0;
    pub(super) const TOTAL_LEN: usize = 2;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
}

/// Minimum IPv4 header length.
pub const HEADER_LEN: usize = 20;

/// Why an inbound datagram was dropped. The discriminant indexes the
/// drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// The sender's address holds no lease.
    UnknownSource = 0,
    /// Shorter than an IPv4 header.
    TooShort,
    /// IP version is not 4.
    NotIpv4,
    /// Header length field below 5 words or beyond the datagram.
    BadHeaderLength,
    /// Total length field differs from the datagram's length.
    BadTotalLength,
    /// Header checksum does not verify.
    BadChecksum,
    /// TTL is zero.
    TtlZero,
    /// Destination is not in this node's subnet.
    NotForThisNode,
    /// Outbound: no lease covers the destination (ICMP net unreachable sent).
    NoRoute,
    /// Outbound: TTL ran out (ICMP time exceeded sent).
    TtlExceeded,
    /// Outbound: not an IPv4 packet (e.g. IPv6 from the TUN device).
    NotIpv4Outbound,
    /// A send or write to the kernel failed.
    IoError,
    /// The inner source is outside every subnet leased to the sender.
    SpoofedSource,
    /// The datagram did not come in on the external interface addressed to
    /// the node's public address (a pod or a local process sending to the
    /// port, perhaps with a forged source).
    WrongPath,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::UnknownSource,
        DropReason::TooShort,
        DropReason::NotIpv4,
        DropReason::BadHeaderLength,
        DropReason::BadTotalLength,
        DropReason::BadChecksum,
        DropReason::TtlZero,
        DropReason::NotForThisNode,
        DropReason::NoRoute,
        DropReason::TtlExceeded,
        DropReason::NotIpv4Outbound,
        DropReason::IoError,
        DropReason::SpoofedSource,
        DropReason::WrongPath,
    ];

    /// The reason as it appears in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::TooShort => "too_short",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::BadTotalLength => "bad_total_length",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::TtlZero => "ttl_zero",
            DropReason::NotForThisNode => "not_for_this_node",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NotIpv4Outbound => "not_ipv4_outbound",
            DropReason::IoError => "io_error",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::WrongPath => "wrong_path",
        }
    }
}

/// The one's complement sum of `data` as 16-bit big-endian words, added
/// to `acc` and left unfolded (also used for IPv6 and TCP pseudo-headers).
pub(crate) fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Fold a [`sum16`] into 16 bits.
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// A checked view of an IPv4 packet: the constructor validates everything
/// the accessors rely on, so they cannot panic.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    buf: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// Validate `buf` as exactly one well-formed IPv4 packet.
    pub fn new_checked(buf: &'a [u8]) -> Result<Ipv4Packet<'a>, DropReason> {
        if buf.len() < HEADER_LEN {
            return Err(DropReason::TooShort);
        }
        if buf[field::VER_IHL] >> 4 != 4 {
            return Err(DropReason::NotIpv4);
        }
        let ihl = usize::from(buf[field::VER_IHL] & 0x0f) * 4;
        if ihl < HEADER_LEN || ihl > buf.len() {
            return Err(DropReason::BadHeaderLength);
        }
        let total = usize::from(u16::from_be_bytes([buf[field::TOTAL_LEN], buf[field::TOTAL_LEN + 1]]));
        if total != buf.len() {
            return Err(DropReason::BadTotalLength);
        }
        if fold(sum16(&buf[..ihl], 0)) != 0xffff {
            return Err(DropReason::BadChecksum);
        }
        if buf[field::TTL] == 0 {
            return Err(DropReason::TtlZero);
        }
        Ok(Ipv4Packet { buf })
    }

    pub fn src(&self) -> Ipv4Addr {
        let s = &self.buf[field::SRC..field::SRC + 4];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }

    pub fn dst(&self) -> Ipv4Addr {
        dst_of(self.buf).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    pub fn ttl(&self) -> u8 {
        self.buf[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buf[field::PROTOCOL]
    }
}

/// Check a datagram received from a peer before it goes into the TUN
/// device: one well-formed IPv4 packet for this node's subnet.
pub fn check_inbound(buf: &[u8], local: &Ipv4Net) -> Result<(), DropReason> {
    let p = Ipv4Packet::new_checked(buf)?;
    if !local.contains(&p.dst()) {
        return Err(DropReason::NotForThisNode);
    }
    Ok(())
}

/// The destination of an outbound packet read from the TUN device, after a
/// cheap sanity check (the kernel wrote it).
pub fn dst_of(buf: &[u8]) -> Option<Ipv4Addr> {
    if buf.len() < HEADER_LEN || buf[0] >> 4 != 4 {
        return None;
    }
    let d = &buf[field::DST..field::DST + 4];
    Some(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
}

/// What to do with an outbound packet's TTL.
#[derive(Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Decremented in place (checksum updated); forward it.
    Forward,
    /// It would reach zero: drop it and send ICMP time exceeded.
    Expired,
}

/// Decrement the TTL of an outbound packet, updating the header checksum
/// incrementally (RFC 1624).
pub fn decrement_ttl(buf: &mut [u8]) -> Ttl {
    if buf.len() < HEADER_LEN || buf[field::TTL] <= 1 {
        return Ttl::Expired;
    }
    buf[field::TTL] -= 1;
    // TTL is the high byte of its 16-bit word: the word dropped by 0x0100,
    // so the complemented checksum grows by 0x0100.
    let old = u16::from_be_bytes([buf[field::CHECKSUM], buf[field::CHECKSUM + 1]]);
    let sum = u32::from(old) + 0x0100;
    let new = fold(sum);
    buf[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&new.to_be_bytes());
    Ttl::Forward
}

/// ICMP types weft sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Type 3 code 0: destination net unreachable.
    NetUnreachable,
    /// Type 11 code 0: time exceeded in transit.
    TimeExceeded,
}

/// Write an ICMP error about `original` into `out`, from `from` to the
/// original sender; returns its length, or `None` if `original` is not a
/// packet one may answer (too short, or itself an ICMP error).
pub fn build_icmp_error(kind: IcmpError, from: Ipv4Addr, original: &[u8], out: &mut [u8]) -> Option<usize> {
    if original.len() < HEADER_LEN || original[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(original[0] & 0x0f) * 4;
    if ihl < HEADER_LEN || ihl > original.len() {
        return None;
    }
    // Never answer an ICMP error with an ICMP error (RFC 1122 3.2.2).
    if original[field::PROTOCOL] == 1 && original.len() > ihl && !matches!(original[ihl], 0 | 8 | 13 | 15 | 17) {
        return None;
    }
    let quoted = original.len().min(ihl + 8);
    let len = HEADER_LEN + 8 + quoted;
    if out.len() < len {
        return None;
    }
    let (ty, code) = match kind {
        IcmpError::NetUnreachable => (3u8, 0u8),
        IcmpError::TimeExceeded => (11, 0),
    };
    let to = &original[field::SRC..field::SRC + 4];
    let out = &mut out[..len];
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64; // TTL
    out[9] = 1; // ICMP
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(to);
    let ip_sum = checksum(&out[..HEADER_LEN]);
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out[20] = ty;
    out[21] = code;
    out[28..28 + quoted].copy_from_slice(&original[..quoted]);
    let icmp_sum = checksum(&out[20..]);
    out[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid IPv4/UDP packet of `len` bytes from `src` to `dst`.
    pub(crate) fn packet(src: [u8; 4], dst: [u8; 4], ttl: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = ttl;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn local() -> Ipv4Net {
        "10.244.1.0/24".parse().unwrap()
    }

    #[test]
    fn inbound_validation_table() {
        let good = packet([10, 244, 2, 2], [10, 244, 1, 2], 64, 84);
        assert_eq!(check_inbound(&good, &local()), Ok(()));

        let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
            (vec![], DropReason::TooShort),
            (vec![0x45], DropReason::TooShort),
            (vec![0x45; 19], DropReason::TooShort),
        ];
        let mut v6 = good.clone();
        v6[0] = 0x65;
        cases.push((v6, DropReason::NotIpv4));
        let mut ihl_small = good.clone();
        ihl_small[0] = 0x44;
        cases.push((ihl_small, DropReason::BadHeaderLength));
        let mut ihl_big = packet([10, 244, 2, 2], [10, 244, 1, 2], 64, 20);
        ihl_big[0] = 0x4f;
        cases.push((ihl_big, DropReason::BadHeaderLength));
        let mut total = good.clone();
        total.push(0);
        cases.push((total, DropReason::BadTotalLength));
        let mut sum = good.clone();
        sum[10] ^= 0xff;
        cases.push((sum, DropReason::BadChecksum));
        cases.push((packet([10, 244, 2, 2], [10, 244, 1, 2], 0, 84), DropReason::TtlZero));
        cases.push((packet([10, 244, 2, 2], [10, 244, 9, 2], 64, 84), DropReason::NotForThisNode));
        cases.push((packet([10, 244, 2, 2], [8, 8, 8, 8], 64, 84), DropReason::NotForThisNode));
        for (buf, want) in cases {
            assert_eq!(check_inbound(&buf, &local()), Err(want), "{buf:02x?}");
        }
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid() {
        for ttl in [2u8, 64, 255] {
            let mut p = packet([10, 244, 2, 2], [10, 244, 1, 2], ttl, 60);
            assert_eq!(decrement_ttl(&mut p), Ttl::Forward);
            assert_eq!(p[8], ttl - 1);
            assert_eq!(checksum(&p[..20]), 0, "checksum verifies after decrement from {ttl}");
        }
        // Checksums near the wrap-around.
        for word in [0xfeffu16, 0xff00, 0x0000, 0xffff] {
            let mut p = packet([10, 244, 2, 2], [10, 244, 1, 2], 9, 60);
            // Force a particular checksum by tweaking the identification field.
            let cur = u16::from_be_bytes([p[10], p[11]]);
            let delta = word.wrapping_sub(cur);
            let id = 0u16.wrapping_sub(delta);
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(decrement_ttl(&mut p), Ttl::Forward);
            assert_eq!(checksum(&p[..20]), 0, "word {word:#06x}");
        }
        let mut one = packet([10, 244, 2, 2], [10, 244, 1, 2], 1, 60);
        assert_eq!(decrement_ttl(&mut one), Ttl::Expired);
        assert_eq!(one[8], 1, "an expired packet is left alone");
    }

    #[test]
    fn icmp_errors_quote_the_original_and_verify() {
        let orig = packet([10, 244, 1, 2], [10, 244, 77, 2], 64, 100);
        let mut out = [0u8; 128];
        let n = build_icmp_error(IcmpError::NetUnreachable, Ipv4Addr::new(10, 244, 1, 0), &orig, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let p = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(p.protocol(), 1);
        assert_eq!((out[20], out[21]), (3, 0));
        assert_eq!(checksum(&out[20..n]), 0, "ICMP checksum verifies");
        assert_eq!(&out[28..n], &orig[..28]);

        let n = build_icmp_error(IcmpError::TimeExceeded, Ipv4Addr::new(10, 244, 1, 0), &orig, &mut out).unwrap();
        assert_eq!((out[20], out[21]), (11, 0));
        assert_eq!(checksum(&out[20..n]), 0);

        // No ICMP error about an ICMP error; nothing for garbage.
        let mut icmp_err = packet([10, 244, 1, 2], [10, 244, 77, 2], 64, 56);
        icmp_err[9] = 1;
        icmp_err[20] = 3;
        assert_eq!(
            build_icmp_error(IcmpError::NetUnreachable, Ipv4Addr::new(10, 244, 1, 0), &icmp_err, &mut out),
            None
        );
        assert_eq!(
            build_icmp_error(IcmpError::NetUnreachable, Ipv4Addr::new(10, 244, 1, 0), &[0x45; 10], &mut out),
            None
        );
    }
}
