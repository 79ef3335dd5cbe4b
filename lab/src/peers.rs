//! Numbered fake vxlan peers for scale tests and the benchmark, in the
//! network `10.0.0.0/8` of /24s: peer `i` (from 1) holds `10.a.b.0/24`
//! where `a.b` is `i`, has public IP `198.18.1.0 + i` and VTEP MAC
//! `0e:00:00:` + the low three bytes of `i`. Nothing answers at them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The network config the peers fit in.
pub const PEERS_CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;

pub fn peer_subnet(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + (i << 8))
}

pub fn peer_public_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i)
}

pub fn peer_mac(i: u32) -> String {
    let [_, b, c, d] = i.to_be_bytes();
    format!("0e:00:00:{b:02x}:{c:02x}:{d:02x}")
}

/// The number of the peer holding `subnet` (e.g. a real node's, to skip).
pub fn peer_index(subnet: Ipv4Net) -> u32 {
    (u32::from(subnet.network()) - 0x0a00_0000) >> 8
}

/// Peer `i`'s lease as etcd holds it: (key, value).
pub fn peer_lease(i: u32) -> (String, String) {
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        peer_public_ip(i),
        peer_mac(i)
    );
    (format!("/coreos.com/network/subnets/{}-24", peer_subnet(i)), value)
}
