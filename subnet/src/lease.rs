//! The lease model: which node holds which subnet, in flanneld's format.
//!
//! A lease lives at `<prefix>/subnets/<key>`, where `<key>` is the subnet with
//! `/` replaced by `-` (`10.244.3.0-24`), followed by `&<v6 subnet>` on
//! dual-stack networks (`10.244.3.0-24&fd00:10:244:3::-64`). On IPv6-only
//! networks (`EnableIPv4` false, which flanneld's etcd mode cannot run) the
//! key is the IPv6 subnet alone (`fd00:10:244:3::-64`): flanneld's key
//! pattern needs a dotted IPv4 address, so a flanneld sharing the prefix
//! skips such keys. The value is flanneld's `LeaseAttrs` JSON:
//!
//! ```json
//! {"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5f:..."}}
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use weft_types::BackendKind;

use crate::config::NetworkConfig;

/// What a node publishes about itself in its lease (flanneld's `LeaseAttrs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// Always written on networks with IPv4; absent on IPv6-only networks.
    #[serde(rename = "PublicIP", default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default, skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default, skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<BackendData>,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<BackendData>,
    /// The host that holds the lease (weft's own field, from
    /// `/etc/machine-id` or `--node-id`; flanneld ignores it and writes
    /// none). Two hosts with one public address are told apart by it.
    #[serde(rename = "WeftNodeID", default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// A lease's `BackendData`, kept as the JSON text it was read as. Every
/// node holds every other node's lease, so this matters: as a parsed
/// `serde_json::Value` the two-field object of a vxlan lease costs about
/// 700 bytes (a whole B-tree node plus three strings), as text about 50;
/// at 65,000 leases that is 45 MB against 3. It also goes back out
/// byte for byte as it came in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendData(Box<RawValue>);

impl BackendData {
    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The value of field `key` of the object, if it is one and has it.
    pub fn field(&self, key: &str) -> Option<Value> {
        let map: serde_json::Map<String, Value> = serde_json::from_str(self.json()).ok()?;
        map.get(key).cloned()
    }
}

impl From<Value> for BackendData {
    fn from(v: Value) -> BackendData {
        // A Value always prints as valid JSON.
        BackendData(RawValue::from_string(v.to_string()).expect("serde_json prints valid JSON"))
    }
}

/// Equal as JSON values: the same text, or the same value written
/// differently (key order, spacing).
impl PartialEq for BackendData {
    fn eq(&self, other: &BackendData) -> bool {
        self.json() == other.json()
            || serde_json::from_str::<Value>(self.json()).ok() == serde_json::from_str::<Value>(other.json()).ok()
    }
}

impl std::fmt::Debug for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json())
    }
}

impl LeaseAttrs {
    /// The address that names the node: `PublicIP`, or `PublicIPv6` on
    /// IPv6-only networks (whose leases have no `PublicIP`).
    pub fn holder(&self) -> Option<IpAddr> {
        self.public_ip.map(IpAddr::V4).or(self.public_ipv6.map(IpAddr::V6))
    }

    /// The backend the lease is for. flanneld's udp backend writes no
    /// `BackendType` at all, so none means `udp`.
    pub fn backend_kind(&self) -> &str {
        if self.backend_type.is_empty() {
            "udp"
        } else {
            &self.backend_type
        }
    }

    /// The backend the lease is for, if weft has it (`None`: a type only
    /// flanneld has, such as `wireguard` or `ipip`).
    pub fn backend(&self) -> Option<BackendKind> {
        self.backend_kind().parse().ok()
    }

    /// `BackendType` as written for `kind`: nothing for udp (as flanneld
    /// writes it, so the values are byte for byte the same), else the name.
    pub fn backend_type_for(kind: BackendKind) -> String {
        match kind {
            BackendKind::Udp => String::new(),
            other => other.as_str().to_string(),
        }
    }

    /// The VXLAN tunnel endpoint MAC published in `BackendData.VtepMAC`.
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        Self::mac_in(self.backend_data.as_ref())
    }

    /// The IPv6 VTEP's MAC, published in `BackendV6Data.VtepMAC`.
    pub fn vtep_mac6(&self) -> Option<MacAddr> {
        Self::mac_in(self.backend_v6_data.as_ref())
    }

    /// The WireGuard public key a `wireguard` lease publishes in
    /// `BackendData.PublicKey` (flanneld's; base64), as written.
    pub fn wireguard_key(&self) -> Option<String> {
        Self::key_in(self.backend_data.as_ref())
    }

    /// The same for the IPv6 device (`BackendV6Data.PublicKey`).
    pub fn wireguard_key6(&self) -> Option<String> {
        Self::key_in(self.backend_v6_data.as_ref())
    }

    /// The public key of a `wireguard` lease, decoded: `None` when absent
    /// or not 32 bytes of base64.
    pub fn wireguard_public_key(&self) -> Option<[u8; 32]> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.wireguard_key()?).ok()?;
        bytes.try_into().ok()
    }

    /// The port a `wireguard` lease publishes in `BackendData.Port`
    /// (flanneld 0.26 and later; before, peers listen on the same port).
    pub fn wireguard_port(&self) -> Option<u16> {
        Self::port_in(self.backend_data.as_ref())
    }

    /// The IPv6 device's public key (`BackendV6Data.PublicKey`), decoded.
    pub fn wireguard_public_key6(&self) -> Option<[u8; 32]> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.wireguard_key6()?).ok()?;
        bytes.try_into().ok()
    }

    /// The IPv6 device's port (`BackendV6Data.Port`).
    pub fn wireguard_port6(&self) -> Option<u16> {
        Self::port_in(self.backend_v6_data.as_ref())
    }

    fn port_in(data: Option<&BackendData>) -> Option<u16> {
        data?.field("Port")?.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
    }

    fn key_in(data: Option<&BackendData>) -> Option<String> {
        match data?.field("PublicKey")? {
            Value::String(k) if !k.is_empty() => Some(k),
            _ => None,
        }
    }

    fn mac_in(data: Option<&BackendData>) -> Option<MacAddr> {
        /// Only the field needed, without building the whole value.
        #[derive(Deserialize)]
        struct Vtep<'a> {
            #[serde(rename = "VtepMAC", borrow)]
            vtep_mac: Option<&'a str>,
        }
        serde_json::from_str::<Vtep>(data?.json()).ok()?.vtep_mac?.parse().ok()
    }
}

/// A subnet held by a node, as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The IPv4 subnet (none on IPv6-only networks).
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet (dual-stack and IPv6-only networks).
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to (0: none).
    pub etcd_lease: i64,
    /// The key's last modification revision, for compare-and-swap.
    pub mod_revision: i64,
    /// The revision the key was created at (0: not known): of two leases
    /// that claim one identity, the older wins.
    pub create_revision: i64,
    /// Time left before the lease expires, as of when it was read.
    pub ttl: Option<Duration>,
}

/// Why an entry under `<prefix>/subnets/` is not a usable lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseParseError {
    #[error("key {key:?} is not a subnet key such as 10.244.3.0-24: {reason}")]
    BadKey { key: String, reason: String },
    #[error("value of {key} is not lease JSON: {reason}")]
    BadValue { key: String, reason: String },
    #[error("{subnet} is not a /{len} subnet of the network {network}")]
    OutsideNetwork { subnet: Ipv4Net, network: Ipv4Net, len: u8 },
    #[error("{subnet} is not a /{len} subnet of the IPv6 network {network}")]
    OutsideNetwork6 { subnet: Ipv6Net, network: Ipv6Net, len: u8 },
    #[error("key {key:?} is of the wrong form for this network: {reason}")]
    WrongFamily { key: String, reason: &'static str },
    #[error("value of {key} is {len} bytes, more than a lease ever needs ({MAX_LEASE_VALUE})")]
    TooLarge { key: String, len: usize },
}

/// The largest lease value read: flanneld's are about 200 bytes, a
/// dual-stack wireguard one under 400. A larger one is not a lease (and
/// every node would hold it in memory).
pub(crate) const MAX_LEASE_VALUE: usize = 4096;

/// The key name (without prefix) of a lease: `10.244.3.0-24[&fd00::-64]`,
/// or `fd00::-64` on IPv6-only networks. At least one subnet is given.
pub fn subnet_key(subnet: Option<&Ipv4Net>, ipv6: Option<&Ipv6Net>) -> String {
    let v6 = ipv6.map(|v6| format!("{}-{}", v6.network(), v6.prefix_len()));
    match (subnet, v6) {
        (Some(v4), Some(v6)) => format!("{}-{}&{v6}", v4.network(), v4.prefix_len()),
        (Some(v4), None) => format!("{}-{}", v4.network(), v4.prefix_len()),
        (None, Some(v6)) => v6,
        (None, None) => String::new(),
    }
}

/// Parse a key name (without prefix) back into its subnets: IPv4, IPv4 and
/// IPv6, or IPv6 alone. Each subnet must be written in canonical form (no
/// host bits set).
pub fn parse_subnet_key(key: &str) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), LeaseParseError> {
    let bad = |reason: &str| LeaseParseError::BadKey { key: key.to_string(), reason: reason.to_string() };
    let (v4, v6) = match key.split_once('&') {
        Some((a, b)) => (Some(a), Some(b)),
        // An IPv6-only network's key: no dotted quad, a colon.
        None if key.contains(':') => (None, Some(key)),
        None => (Some(key), None),
    };
    let subnet = match v4 {
        None => None,
        Some(v4) => {
            let (addr, len) = v4.rsplit_once('-').ok_or_else(|| bad("no '-' before the prefix length"))?;
            let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
            let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
            let subnet = Ipv4Net::new(addr, len).map_err(|_| bad("prefix length above 32"))?;
            if subnet.network() != addr {
                return Err(bad("host bits are set"));
            }
            Some(subnet)
        }
    };
    let ipv6 = match v6 {
        None => None,
        Some(v6) => {
            let (addr, len) = v6.rsplit_once('-').ok_or_else(|| bad("IPv6 part has no prefix length"))?;
            let addr: Ipv6Addr = addr.parse().map_err(|_| bad("IPv6 part is not an address"))?;
            let len: u8 = len.parse().map_err(|_| bad("bad IPv6 prefix length"))?;
            let net = Ipv6Net::new(addr, len).map_err(|_| bad("IPv6 prefix length above 128"))?;
            if net.network() != addr {
                return Err(bad("IPv6 host bits are set"));
            }
            Some(net)
        }
    };
    Ok((subnet, ipv6))
}

/// The subnet that names a lease: its IPv4 subnet, or its IPv6 subnet on
/// IPv6-only networks. `None` only for a key of neither.
pub(crate) fn lease_id(subnet: Option<Ipv4Net>, ipv6: Option<Ipv6Net>) -> Option<IpNet> {
    subnet.map(IpNet::V4).or(ipv6.map(IpNet::V6))
}

impl Lease {
    /// Build a lease from an etcd entry (key without the `subnets/` prefix),
    /// checking it against the network config.
    pub fn from_entry(
        key: &str,
        value: &[u8],
        config: &NetworkConfig,
        etcd_lease: i64,
        mod_revision: i64,
    ) -> Result<Lease, LeaseParseError> {
        let (subnet, ipv6_subnet) = parse_subnet_key(key)?;
        let wrong = |reason| LeaseParseError::WrongFamily { key: key.to_string(), reason };
        match (&config.ipv4, subnet) {
            (Some(v4), Some(subnet)) => {
                if subnet.prefix_len() != v4.subnet_len || !v4.network.contains(&subnet) {
                    return Err(LeaseParseError::OutsideNetwork { subnet, network: v4.network, len: v4.subnet_len });
                }
            }
            (Some(_), None) => return Err(wrong("an IPv6-only lease, and this network has IPv4 (EnableIPv4)")),
            (None, Some(_)) => return Err(wrong("an IPv4 lease, and this network is IPv6-only (EnableIPv4 false)")),
            // An IPv6-only network's key (the key has its IPv6 subnet).
            (None, None) => {}
        }
        // A v4-only key in a dual-stack network is a node without IPv6 (or
        // one not restarted since IPv6 was turned on): still a peer for IPv4.
        if let (Some(v6), Some(sub6)) = (&config.ipv6, ipv6_subnet) {
            if sub6.prefix_len() != v6.subnet_len || !v6.network.contains(&sub6) {
                return Err(LeaseParseError::OutsideNetwork6 { subnet: sub6, network: v6.network, len: v6.subnet_len });
            }
        }
        Lease::read_entry(key, value, etcd_lease, mod_revision)
    }

    /// Build a lease from an etcd entry without checking it against a
    /// config (a key of the other family's form, say): its key and value
    /// must still be well formed and name its holder.
    pub fn read_entry(key: &str, value: &[u8], etcd_lease: i64, mod_revision: i64) -> Result<Lease, LeaseParseError> {
        let (subnet, ipv6_subnet) = parse_subnet_key(key)?;
        if value.len() > MAX_LEASE_VALUE {
            return Err(LeaseParseError::TooLarge { key: key.to_string(), len: value.len() });
        }
        let attrs: LeaseAttrs = serde_json::from_slice(value)
            .map_err(|e| LeaseParseError::BadValue { key: key.to_string(), reason: e.to_string() })?;
        if subnet.is_none() && attrs.public_ipv6.is_none() {
            return Err(LeaseParseError::BadValue {
                key: key.to_string(),
                reason: "an IPv6-only lease needs a PublicIPv6".into(),
            });
        }
        if subnet.is_some() && attrs.public_ip.is_none() {
            return Err(LeaseParseError::BadValue { key: key.to_string(), reason: "no PublicIP".into() });
        }
        Ok(Lease { subnet, ipv6_subnet, attrs, etcd_lease, mod_revision, create_revision: 0, ttl: None })
    }

    /// This lease's key name (without prefix).
    pub fn key(&self) -> String {
        subnet_key(self.subnet.as_ref(), self.ipv6_subnet.as_ref())
    }

    /// The subnet that names this lease: the IPv4 subnet, or the IPv6
    /// subnet on IPv6-only networks.
    pub fn id(&self) -> IpNet {
        lease_id(self.subnet, self.ipv6_subnet).expect("a lease has a subnet")
    }

    /// The address that names the holder: `PublicIP`, or `PublicIPv6` on
    /// IPv6-only networks.
    pub fn holder(&self) -> Option<IpAddr> {
        self.attrs.holder()
    }
}

pub use weft_types::MacAddr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_data_keeps_its_text_and_compares_as_json() {
        let text =
            r#"{"PublicIP":"198.18.0.2","BackendType":"vxlan","BackendData":{"VtepMAC":"0e:5f:aa:01:02:03", "VNI":1}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(text).unwrap();
        let data = attrs.backend_data.as_ref().unwrap();
        assert_eq!(data.json(), r#"{"VtepMAC":"0e:5f:aa:01:02:03", "VNI":1}"#, "kept as written");
        assert_eq!(attrs.vtep_mac(), Some("0e:5f:aa:01:02:03".parse().unwrap()));
        assert_eq!(data.field("VNI"), Some(serde_json::json!(1)));
        let same: BackendData = serde_json::json!({"VNI": 1, "VtepMAC": "0e:5f:aa:01:02:03"}).into();
        assert_eq!(*data, same, "same value, other key order and spacing");
        let other: BackendData = serde_json::json!({"VNI": 2, "VtepMAC": "0e:5f:aa:01:02:03"}).into();
        assert_ne!(*data, other);
        let back = serde_json::to_string(&attrs).unwrap();
        assert!(back.contains(r#""BackendData":{"VtepMAC":"0e:5f:aa:01:02:03", "VNI":1}"#), "{back}");
        let no_mac: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"198.18.0.2","BackendData":{"VNI":1}}"#).unwrap();
        assert_eq!(no_mac.vtep_mac(), None);
        let not_object: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"198.18.0.2","BackendData":[1]}"#).unwrap();
        assert_eq!(not_object.vtep_mac(), None);
    }

    #[test]
    fn key_round_trip() {
        let table = [
            ("10.244.3.0-24", "10.244.3.0/24", None),
            ("10.0.0.0-8", "10.0.0.0/8", None),
            ("10.244.0.4-30", "10.244.0.4/30", None),
            ("10.244.3.0-24&fd00:10:244:3::-64", "10.244.3.0/24", Some("fd00:10:244:3::/64")),
            // IPv6-only networks: the IPv6 subnet alone.
            ("fd00:10:244:3::-64", "", Some("fd00:10:244:3::/64")),
            ("fd00::-126", "", Some("fd00::/126")),
        ];
        for (key, v4, v6) in table {
            let (a, b) = parse_subnet_key(key).unwrap();
            assert_eq!(a.map(|n| n.to_string()).unwrap_or_default(), v4);
            assert_eq!(b.map(|n| n.to_string()).as_deref(), v6);
            assert_eq!(subnet_key(a.as_ref(), b.as_ref()), key);
            let id = lease_id(a, b).unwrap().to_string();
            assert_eq!(id, if v4.is_empty() { v6.unwrap() } else { v4 }, "a lease is named by its IPv4 subnet if any");
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for key in [
            "",
            "config",
            "10.244.3.0",
            "10.244.3.0/24",
            "10.244.3.0-",
            "10.244.3.0-33",
            "10.244.3.1-24",
            "10.244.3-24",
            "300.1.1.0-24",
            "10.244.3.0-24&",
            "10.244.3.0-24&fd00::",
            "10.244.3.0-24&zz::-64",
            "10.244.3.0-24x",
            "fd00:10:244:3::",
            "fd00:10:244:3::1-64",
            "fd00:10:244:3::-129",
        ] {
            assert!(parse_subnet_key(key).is_err(), "{key:?} should not parse");
        }
    }

    #[test]
    fn attrs_json_matches_flanneld() {
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:5f:aa:01:02:03"}).into()),
            backend_v6_data: None,
            node_id: None,
        };
        let text = serde_json::to_string(&attrs).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5f:aa:01:02:03"}}"#
        );
        assert_eq!(attrs.vtep_mac().unwrap().to_string(), "0e:5f:aa:01:02:03");
        // A value written by flanneld for the udp backend (no BackendData).
        let flannel: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"udp"}"#).unwrap();
        assert_eq!(flannel.public_ip, Some(Ipv4Addr::new(198, 18, 0, 3)));
        assert_eq!(flannel.vtep_mac(), None);
    }

    #[test]
    fn ipv6_only_entries_fit_only_ipv6_only_networks() {
        let only6 =
            NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#).unwrap();
        let dual =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#)
                .unwrap();
        let value = br#"{"PublicIPv6":"fd00:198:18::2","BackendType":"host-gw"}"#;
        let l = Lease::from_entry("fd10:244:0:2::-64", value, &only6, 0, 0).unwrap();
        assert_eq!((l.subnet, l.id().to_string()), (None, "fd10:244:0:2::/64".to_string()));
        assert_eq!(l.holder(), Some("fd00:198:18::2".parse().unwrap()));
        assert_eq!(l.key(), "fd10:244:0:2::-64");
        assert_eq!(
            serde_json::to_string(&l.attrs).unwrap(),
            std::str::from_utf8(value).unwrap(),
            "no PublicIP written"
        );
        // The wrong family for the network, either way: skipped with the reason.
        let e = Lease::from_entry("fd10:244:0:2::-64", value, &dual, 0, 0).unwrap_err().to_string();
        assert!(e.contains("an IPv6-only lease, and this network has IPv4"), "{e}");
        let v4 = br#"{"PublicIP":"198.18.0.2","BackendType":"host-gw"}"#;
        let e = Lease::from_entry("10.244.2.0-24", v4, &only6, 0, 0).unwrap_err().to_string();
        assert!(e.contains("this network is IPv6-only"), "{e}");
        // Outside the IPv6 network, or without the address that names the holder.
        assert!(Lease::from_entry("fd99::-64", value, &only6, 0, 0).is_err());
        let e = Lease::from_entry("fd10:244:0:2::-64", br#"{"BackendType":"udp"}"#, &only6, 0, 0).unwrap_err();
        assert!(e.to_string().contains("needs a PublicIPv6"), "{e}");
    }

    #[test]
    fn dual_stack_attrs_json_matches_flanneld() {
        // flanneld's LeaseAttrs field order: PublicIP, PublicIPv6,
        // BackendType, BackendData, BackendV6Data.
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            public_ipv6: Some("fd00:198:18::2".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:5f:aa:01:02:03"}).into()),
            backend_v6_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:5f:aa:06:02:03"}).into()),
            node_id: None,
        };
        assert_eq!(
            serde_json::to_string(&attrs).unwrap(),
            r#"{"PublicIP":"198.18.0.2","PublicIPv6":"fd00:198:18::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5f:aa:01:02:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:5f:aa:06:02:03"}}"#
        );
        assert_eq!(attrs.vtep_mac6().unwrap().to_string(), "0e:5f:aa:06:02:03");
        // The key's IPv6 part as Go prints it: lowercase, compressed.
        assert_eq!(
            subnet_key(Some(&"10.244.1.0/24".parse().unwrap()), Some(&"FD10:244:0:1:0::/64".parse().unwrap())),
            "10.244.1.0-24&fd10:244:0:1::-64"
        );
    }

    #[test]
    fn entries_are_checked_against_the_config() {
        let config = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let good = br#"{"PublicIP":"198.18.0.2","BackendType":"udp"}"#;
        assert!(Lease::from_entry("10.244.3.0-24", good, &config, 7, 9).is_ok());
        let outside = Lease::from_entry("10.245.3.0-24", good, &config, 7, 9).unwrap_err();
        assert!(outside.to_string().contains("not a /24 subnet of the network 10.244.0.0/16"));
        assert!(Lease::from_entry("10.244.3.0-25", good, &config, 7, 9).is_err());
        let bad = Lease::from_entry("10.244.3.0-24", b"{not json", &config, 7, 9).unwrap_err();
        assert!(matches!(bad, LeaseParseError::BadValue { .. }));
        let bad_ip = Lease::from_entry("10.244.3.0-24", br#"{"PublicIP":"banana"}"#, &config, 7, 9);
        assert!(bad_ip.is_err());

        let dual =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#)
                .unwrap();
        let l = Lease::from_entry("10.244.3.0-24&fd10:244:0:3::-64", good, &dual, 7, 9).unwrap();
        assert_eq!(l.ipv6_subnet.unwrap().to_string(), "fd10:244:0:3::/64");
        assert_eq!(l.key(), "10.244.3.0-24&fd10:244:0:3::-64");
        let v4_only = Lease::from_entry("10.244.3.0-24", good, &dual, 7, 9).unwrap();
        assert_eq!(v4_only.ipv6_subnet, None, "a v4-only node in a dual-stack network");
        for key in ["10.244.3.0-24&fd11:244:0:3::-64", "10.244.3.0-24&fd10:244:0:3::-80"] {
            let e = Lease::from_entry(key, good, &dual, 7, 9).unwrap_err();
            assert!(e.to_string().contains("subnet of the IPv6 network fd10:244::/56"), "{key}: {e}");
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!("0E:5f:aa:01:02:03".parse::<MacAddr>().unwrap().0, [0x0e, 0x5f, 0xaa, 1, 2, 3]);
        for bad in
            ["", "0e:5f:aa:01:02", "0e:5f:aa:01:02:03:04", "0e-5f-aa-01-02-03", "0e:5f:aa:01:02:zz", "e:5f:aa:01:02:03"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
