//! The route table against a naive longest-prefix match, on arbitrary
//! peer sets and lookups.
#![no_main]

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use weft_dataplane::forward::table::Snapshot;
use weft_dataplane::Peer;

fuzz_target!(|data: &[u8]| {
    // 6 bytes per peer: 4 address bytes, 1 prefix length, 1 peer host byte;
    // the rest are 4-byte lookups.
    let n = (data.first().copied().unwrap_or(0) % 16) as usize;
    let body = data.get(1..).unwrap_or(&[]);
    let mut peers = Vec::new();
    for chunk in body.chunks_exact(6).take(n) {
        let addr = Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3]);
        let Ok(net) = Ipv4Net::new(addr, chunk[4] % 33) else { continue };
        let net = net.trunc();
        if peers.iter().any(|p: &Peer| p.subnet == Some(net)) {
            continue;
        }
        peers.push(Peer::v4(net, Ipv4Addr::new(198, 18, 0, chunk[5]), None));
    }
    let table = Snapshot::new(&peers, 8285);
    for q in body.get(n * 6..).unwrap_or(&[]).chunks_exact(4) {
        let dst = Ipv4Addr::new(q[0], q[1], q[2], q[3]);
        let naive = peers
            .iter()
            .filter_map(|p| Some((p.subnet?, p.public_ip?)))
            .filter(|(subnet, _)| subnet.contains(&dst))
            .max_by_key(|(subnet, _)| subnet.prefix_len())
            .map(|(_, ip)| ip);
        assert_eq!(table.lookup(dst).map(|s| *s.ip()), naive, "lookup of {dst} in {peers:?}");
    }
});
