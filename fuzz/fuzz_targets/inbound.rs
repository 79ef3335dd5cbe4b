//! The udp backend's receive-path parser on arbitrary datagrams: it must
//! never panic, and whatever it accepts must be a packet it can describe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_dataplane::forward::packet::{build_icmp_error, check_inbound, decrement_ttl, dst_of, IcmpError, Ipv4Packet};
use weft_dataplane::forward::packet6;

fuzz_target!(|data: &[u8]| {
    let local: ipnet::Ipv4Net = "10.244.1.0/24".parse().unwrap();
    if check_inbound(data, &local).is_ok() {
        let p = Ipv4Packet::new_checked(data).expect("accepted packets parse");
        assert!(local.contains(&p.dst()));
        assert!(p.ttl() > 0);
    }
    let _ = dst_of(data);
    let mut out = [0u8; 128];
    if let Some(n) = build_icmp_error(IcmpError::NetUnreachable, "10.244.1.0".parse().unwrap(), data, &mut out) {
        assert!(Ipv4Packet::new_checked(&out[..n]).is_ok(), "ICMP errors weft builds are valid IPv4");
    }
    let mut copy = data.to_vec();
    let before = Ipv4Packet::new_checked(data).is_ok();
    if decrement_ttl(&mut copy) == weft_dataplane::forward::packet::Ttl::Forward && before {
        // A valid packet stays valid (checksum updated) unless TTL hit 0.
        let after = Ipv4Packet::new_checked(&copy);
        assert!(after.is_ok() || copy[8] == 0);
    }
    // The same for IPv6 (dual-stack networks).
    let local6: ipnet::Ipv6Net = "fd10:244:0:1::/64".parse().unwrap();
    if packet6::check_inbound(data, &local6).is_ok() {
        let (_, dst) = packet6::check(data).expect("accepted packets parse");
        assert!(local6.contains(&dst));
    }
    let mut out6 = [0u8; 1400];
    if let Some(n) = packet6::build_icmp6_error(IcmpError::TimeExceeded, "fd10:244:0:1::".parse().unwrap(), data, &mut out6) {
        let (src, dst) = packet6::check(&out6[..n]).expect("ICMPv6 errors weft builds are valid IPv6");
        assert_eq!(packet6::icmp6_checksum(&src, &dst, &out6[40..n]), 0, "and their checksum verifies");
    }
});
