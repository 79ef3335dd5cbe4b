//! Numbered fake vxlan peers for scale tests and the benchmark, in the
//! network `10.0.0.0/8` of /24s: peer `i` (from 1) holds `10.a.b.0/24`
//! where `a.b` is `i`, has public IP `198.18.1.0 + i` and VTEP MAC
//! `0e:00:00:` + the low three bytes of `i`; as wireguard peers, a
//! WireGuard public key of its own made from `i`. Nothing answers at them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The network config the peers fit in.
pub const PEERS_CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;

/// The same network on the wireguard backend.
pub const WG_PEERS_CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"wireguard"}}"#;

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

/// Peer `i`'s WireGuard public key, base64: 32 bytes spread from `i` (a
/// point of large order in practice; nothing holds its private key).
pub fn peer_wg_key(i: u32) -> String {
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    key[31] &= 0x7f;
    base64_encode(&key)
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if k <= c.len() { char::from(ABC[(n >> shift & 63) as usize]) } else { '=' });
        }
    }
    out
}

/// Peer `i`'s wireguard lease as etcd holds it: (key, value).
pub fn peer_wg_lease(i: u32) -> (String, String) {
    let value = format!(
        r#"{{"PublicIP":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
        peer_public_ip(i),
        peer_wg_key(i)
    );
    (format!("/coreos.com/network/subnets/{}-24", peer_subnet(i)), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_keys_are_base64_of_32_bytes_and_differ() {
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
        let (a, b) = (peer_wg_key(1), peer_wg_key(2));
        assert_eq!(a.len(), 44);
        assert!(a.ends_with('='));
        assert_ne!(a, b);
    }
}
