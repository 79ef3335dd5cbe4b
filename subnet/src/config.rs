//! The network config stored at `<prefix>/config`, with flanneld's field
//! names, defaults and rules.
//!
//! ```json
//! {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
//! ```
//!
//! Defaults, as flanneld applies them: `SubnetLen` is 24 when `Network` is a
//! /22 or shorter, else the network prefix + 2; `SubnetMin` is the second
//! subnet and `SubnetMax` the last one; `EnableIPv4` is true; a missing
//! `Backend` means `udp`. Unknown top-level or backend fields are ignored, as
//! flanneld ignores them.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use weft_types::BackendKind;

use crate::error::ConfigError;

pub use weft_types::BackendConfig;
pub(crate) use weft_types::{UdpOptions, VxlanOptions, UDP_DEFAULT_PORT, VXLAN_DEFAULT_PORT};
pub(crate) use weft_types::{WireguardMode, WireguardOptions, WIREGUARD_DEFAULT_PORT, WIREGUARD_DEFAULT_PORT_V6};

/// A validated network config, defaults applied. At least one family is on.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The IPv4 network, unless `EnableIPv4` is false: every lease then
    /// holds an IPv4 subnet.
    pub ipv4: Option<Ipv4Settings>,
    /// The IPv6 network, when `EnableIPv6` is set: every lease then holds
    /// an IPv6 subnet as well (or only that, on an IPv6-only network).
    pub ipv6: Option<Ipv6Settings>,
    /// The backend and its options.
    pub backend: BackendConfig,
    /// `EnableNFTables`: the forwarding and masquerade rules go into
    /// nftables (flannel's `flannel-ipv4`/`flannel-ipv6` tables) instead
    /// of iptables chains.
    pub enable_nftables: bool,
}

/// The IPv4 part of a config (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Settings {
    /// The overlay network all pod subnets are carved from.
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// Lowest subnet that may be leased (network address).
    pub subnet_min: Ipv4Addr,
    /// Highest subnet that may be leased (network address).
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 part of a dual-stack config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Settings {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

impl NetworkConfig {
    /// Parse and validate a config as stored in etcd.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Validate an already-decoded JSON value.
    pub fn from_value(value: &Value) -> Result<NetworkConfig, ConfigError> {
        let obj = value.as_object().ok_or(ConfigError::NotAnObject)?;
        let enable_v4 = get_bool(obj, "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = get_bool(obj, "EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return Err(ConfigError::NothingEnabled);
        }
        let ipv4 = if enable_v4 { Some(parse_v4(obj)?) } else { None };
        let ipv6 = if enable_v6 { Some(parse_v6(obj)?) } else { None };
        let backend = parse_backend(obj.get("Backend"))?;
        if let BackendConfig::Wireguard(wg) = &backend {
            // Mode ipv6 reaches every peer over IPv6: a dual-stack network's
            // leases carry the PublicIPv6 it needs.
            if wg.mode == weft_types::WireguardMode::Ipv6 && ipv6.is_none() {
                return Err(ConfigError::BadBackendOption {
                    field: "Mode",
                    reason: "\"ipv6\" reaches every peer over IPv6 and needs EnableIPv6 (and IPv6Network)".into(),
                });
            }
            if ipv4.is_none() {
                return Err(ConfigError::BadBackendOption {
                    field: "Type",
                    reason: "the wireguard backend does not run IPv6-only networks (EnableIPv4 false) yet; \
                             use udp, vxlan or host-gw there"
                        .into(),
                });
            }
        }
        let enable_nftables = get_bool(obj, "EnableNFTables")?.unwrap_or(false);
        Ok(NetworkConfig { ipv4, ipv6, backend, enable_nftables })
    }

    /// The IPv4 network, if IPv4 is on.
    pub fn network(&self) -> Option<Ipv4Net> {
        self.ipv4.as_ref().map(|v4| v4.network)
    }

    /// The IPv6 network, if IPv6 is on.
    pub fn network6(&self) -> Option<Ipv6Net> {
        self.ipv6.as_ref().map(|v6| v6.network)
    }

    /// Whether this is an IPv6-only network (`EnableIPv4` false): its
    /// leases are keyed by their IPv6 subnet alone.
    pub fn ipv6_only(&self) -> bool {
        self.ipv4.is_none()
    }

    /// Whether a lease's IPv4 subnet fits this config: with IPv4 on, a
    /// subnet it hands out; with IPv4 off, none at all.
    pub fn ipv4_fits(&self, subnet: Option<&Ipv4Net>) -> bool {
        match (&self.ipv4, subnet) {
            (None, None) => true,
            (Some(v4), Some(s)) => v4.is_leasable(s),
            _ => false,
        }
    }

    /// Whether a lease's IPv6 subnet fits this config, as flanneld judges
    /// it: with IPv6 on, a subnet of `IPv6SubnetLen` in `[IPv6SubnetMin,
    /// IPv6SubnetMax]`; with IPv6 off, none at all. A node whose own lease
    /// does not fit (IPv6 turned on or off since) gets a new key.
    pub fn ipv6_fits(&self, subnet: Option<&Ipv6Net>) -> bool {
        match (&self.ipv6, subnet) {
            (None, None) => true,
            (Some(v6), Some(s)) => v6.is_leasable(s),
            _ => false,
        }
    }
}

/// `Network`, `SubnetLen`, `SubnetMin` and `SubnetMax`, validated.
fn parse_v4(obj: &Map<String, Value>) -> Result<Ipv4Settings, ConfigError> {
    let network = match get_str(obj, "Network")? {
        None => return Err(ConfigError::MissingNetwork),
        Some(s) => parse_v4_cidr("Network", s)?,
    };
    let subnet_len = get_u32(obj, "SubnetLen")?.unwrap_or(0);
    let subnet_len = v4_subnet_len(network, subnet_len)?;
    let size = 1u32 << (32 - subnet_len);
    let net_start = u32::from(network.network());
    let net_end = u32::from(network.broadcast());
    let subnet_min = match get_str(obj, "SubnetMin")? {
        None => Ipv4Addr::from(net_start + size),
        Some(s) => check_bound("SubnetMin", s, network, subnet_len)?,
    };
    let subnet_max = match get_str(obj, "SubnetMax")? {
        None => Ipv4Addr::from(net_end - size + 1),
        Some(s) => check_bound("SubnetMax", s, network, subnet_len)?,
    };
    if subnet_min > subnet_max {
        return Err(ConfigError::EmptyRange { min: subnet_min, max: subnet_max });
    }
    Ok(Ipv4Settings { network, subnet_len, subnet_min, subnet_max })
}

impl Ipv4Settings {
    /// How many subnets `[SubnetMin, SubnetMax]` holds.
    pub fn subnet_count(&self) -> u64 {
        let size = 1u64 << (32 - self.subnet_len);
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / size + 1
    }

    /// Whether `subnet` is one this config hands out: inside the network,
    /// of length `SubnetLen`, within `[SubnetMin, SubnetMax]`.
    pub fn is_leasable(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.contains(subnet)
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// The subnet of the given index in `[SubnetMin, SubnetMax]`.
    pub fn nth_subnet(&self, index: u64) -> Option<Ipv4Net> {
        if index >= self.subnet_count() {
            return None;
        }
        let size = 1u64 << (32 - self.subnet_len);
        let addr = u64::from(u32::from(self.subnet_min)) + index * size;
        Ipv4Net::new(Ipv4Addr::from(addr as u32), self.subnet_len).ok()
    }
}

impl Ipv6Settings {
    /// Whether `subnet` is one this config hands out.
    pub fn is_leasable(&self, subnet: &Ipv6Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.contains(subnet)
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// The subnet after `subnet`, or `None` past `IPv6SubnetMax`.
    pub fn next_subnet(&self, subnet: Ipv6Net) -> Option<Ipv6Net> {
        let size = 1u128.checked_shl(128 - u32::from(self.subnet_len))?;
        let next = u128::from(subnet.network()).checked_add(size)?;
        (next <= u128::from(self.subnet_max)).then(|| Ipv6Net::new(Ipv6Addr::from(next), self.subnet_len).ok())?
    }

    /// The first subnet of `[IPv6SubnetMin, IPv6SubnetMax]`.
    pub fn first_subnet(&self) -> Ipv6Net {
        Ipv6Net::new(self.subnet_min, self.subnet_len).expect("subnet_len was validated")
    }
}

fn v4_subnet_len(network: Ipv4Net, len: u32) -> Result<u8, ConfigError> {
    let prefix = network.prefix_len();
    if len == 0 {
        if prefix > 28 {
            return Err(ConfigError::NetworkTooSmall { network });
        }
        return Ok(if prefix <= 22 { 24 } else { prefix + 2 });
    }
    if len > 30 {
        return Err(ConfigError::SubnetLenTooLong { len });
    }
    if len < u32::from(prefix) + 2 {
        return Err(ConfigError::SubnetLenTooShort { len, network, min: prefix + 2 });
    }
    Ok(len as u8)
}

fn check_bound(field: &'static str, value: &str, network: Ipv4Net, len: u8) -> Result<Ipv4Addr, ConfigError> {
    let addr: Ipv4Addr = value.parse().map_err(|_| ConfigError::BadAddress { field, value: value.to_string() })?;
    if !network.contains(&addr) {
        return Err(ConfigError::OutsideNetwork { field, addr, network });
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & mask != u32::from(addr) {
        return Err(ConfigError::NotAligned { field, addr, len });
    }
    Ok(addr)
}

fn parse_v4_cidr(field: &'static str, value: &str) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = value.parse().map_err(|e: ipnet::AddrParseError| ConfigError::BadCidr {
        field,
        value: value.to_string(),
        kind: "IPv4",
        example: "10.244.0.0/16",
        reason: e.to_string(),
    })?;
    // flanneld masks host bits away; so do we.
    Ok(net.trunc())
}

fn parse_v6(obj: &Map<String, Value>) -> Result<Ipv6Settings, ConfigError> {
    let text = get_str(obj, "IPv6Network")?.ok_or(ConfigError::MissingIpv6Network)?;
    let network: Ipv6Net = text.parse().map_err(|e: ipnet::AddrParseError| ConfigError::BadCidr {
        field: "IPv6Network",
        value: text.to_string(),
        kind: "IPv6",
        example: "fd00:10:244::/56",
        reason: e.to_string(),
    })?;
    let network = network.trunc();
    let prefix = network.prefix_len();
    let len = match get_u32(obj, "IPv6SubnetLen")?.unwrap_or(0) {
        0 if prefix > 124 => return Err(ConfigError::Ipv6NetworkTooSmall { network: network.to_string() }),
        0 if prefix <= 62 => 64,
        0 => prefix + 2,
        n if n > 126 || n < u32::from(prefix) + 2 => {
            return Err(ConfigError::BadIpv6SubnetLen { len: n, network: network.to_string(), min: prefix + 2 })
        }
        n => n as u8,
    };
    let size = 1u128 << (128 - len);
    let start = u128::from(network.network());
    let end = u128::from(network.broadcast());
    let bound = |field: &'static str, default: u128| -> Result<Ipv6Addr, ConfigError> {
        match get_str(obj, field)? {
            None => Ok(Ipv6Addr::from(default)),
            Some(s) => {
                let addr: Ipv6Addr = s.parse().map_err(|_| ConfigError::BadAddress { field, value: s.to_string() })?;
                let raw = u128::from(addr);
                if raw < start || raw > end || raw % size != 0 {
                    return Err(ConfigError::BadIpv6Bound {
                        field,
                        reason: format!("{addr} is outside {network} or not on a /{len} boundary"),
                    });
                }
                Ok(addr)
            }
        }
    };
    Ok(Ipv6Settings {
        network,
        subnet_len: len,
        subnet_min: bound("IPv6SubnetMin", start + size)?,
        subnet_max: bound("IPv6SubnetMax", end - size + 1)?,
    })
}

fn parse_backend(value: Option<&Value>) -> Result<BackendConfig, ConfigError> {
    let obj = match value {
        None | Some(Value::Null) => {
            return Ok(BackendConfig::Udp(UdpOptions {
                port: UDP_DEFAULT_PORT,
                mtu: None,
                offload: true,
                queues: None,
                realtime_threads: false,
                latency_lane: true,
            }))
        }
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(ConfigError::WrongType {
                field: "Backend",
                expected: "an object such as {\"Type\": \"vxlan\"}",
                found: type_name(other),
            })
        }
    };
    let name = get_str(obj, "Type")?.unwrap_or("udp");
    let kind: BackendKind = name.parse().map_err(|_| ConfigError::UnknownBackend(name.to_string()))?;
    match kind {
        BackendKind::Udp => Ok(BackendConfig::Udp(UdpOptions {
            port: get_port(obj, "Port")?.unwrap_or(UDP_DEFAULT_PORT),
            mtu: get_mtu(obj)?,
            offload: get_bool(obj, "Offload")?.unwrap_or(true),
            queues: get_queues(obj)?,
            realtime_threads: get_bool(obj, "RealtimeThreads")?.unwrap_or(false),
            latency_lane: get_bool(obj, "LatencyLane")?.unwrap_or(true),
        })),
        BackendKind::Vxlan => {
            let vni = get_u32(obj, "VNI")?.unwrap_or(1);
            if vni >= 1 << 24 {
                return Err(ConfigError::BadBackendOption {
                    field: "VNI",
                    reason: format!("{vni} does not fit in 24 bits (0 - 16777215)"),
                });
            }
            Ok(BackendConfig::Vxlan(VxlanOptions {
                vni,
                port: get_port(obj, "Port")?.unwrap_or(VXLAN_DEFAULT_PORT),
                gbp: get_bool(obj, "GBP")?.unwrap_or(false),
                direct_routing: get_bool(obj, "DirectRouting")?.unwrap_or(false),
                learning: get_bool(obj, "Learning")?.unwrap_or(false),
                mtu: get_mtu(obj)?,
            }))
        }
        BackendKind::HostGw => Ok(BackendConfig::HostGw),
        BackendKind::Wireguard => Ok(BackendConfig::Wireguard(parse_wireguard_options(&Value::Object(obj.clone()))?)),
    }
}

/// The wireguard backend's options from a `Backend` object, validated.
/// Each wrong option is an error naming the field.
pub(crate) fn parse_wireguard_options(backend: &Value) -> Result<WireguardOptions, ConfigError> {
    let empty = Map::new();
    let obj = match backend {
        Value::Null => &empty,
        Value::Object(obj) => obj,
        other => {
            return Err(ConfigError::WrongType {
                field: "Backend",
                expected: "an object such as {\"Type\": \"wireguard\"}",
                found: type_name(other),
            })
        }
    };
    let mode = match get_str(obj, "Mode")? {
        None => WireguardMode::Separate,
        Some(m) => m.parse().map_err(|e: weft_types::UnknownMode| ConfigError::BadBackendOption {
            field: "Mode",
            reason: e.to_string(),
        })?,
    };
    let psk = match get_str(obj, "PSK")? {
        None => None,
        Some(text) => {
            use base64::Engine as _;
            let bad = |why: String| ConfigError::BadBackendOption {
                field: "PSK",
                reason: format!("{why}; it must be 32 bytes in base64 (44 characters), as `wg genpsk` prints"),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| bad(format!("not base64 ({e})")))?;
            let n = bytes.len();
            Some(<[u8; 32]>::try_from(bytes).map_err(|_| bad(format!("{n} bytes")))?)
        }
    };
    let keepalive = get_u32(obj, "PersistentKeepaliveInterval")?.unwrap_or(0);
    let persistent_keepalive = u16::try_from(keepalive).map_err(|_| ConfigError::BadBackendOption {
        field: "PersistentKeepaliveInterval",
        reason: format!("{keepalive} seconds is more than 65535"),
    })?;
    Ok(WireguardOptions {
        listen_port: get_port(obj, "ListenPort")?.unwrap_or(WIREGUARD_DEFAULT_PORT),
        listen_port_v6: get_port(obj, "ListenPortV6")?.unwrap_or(WIREGUARD_DEFAULT_PORT_V6),
        psk,
        persistent_keepalive,
        mode,
        mtu: get_mtu(obj)?,
        queues: get_queues(obj)?,
        latency_lane: get_bool(obj, "LatencyLane")?.unwrap_or(true),
    })
}

/// `Queues` (weft's own): 1 to 16; absent or 0 means the default.
fn get_queues(obj: &Map<String, Value>) -> Result<Option<u32>, ConfigError> {
    match get_u32(obj, "Queues")? {
        None | Some(0) => Ok(None),
        Some(q) if q > 16 => {
            Err(ConfigError::BadBackendOption { field: "Queues", reason: format!("{q} is more than 16") })
        }
        Some(q) => Ok(Some(q)),
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn get_str<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ConfigError::WrongType { field, expected: "a string", found: type_name(other) }),
    }
}

fn get_bool(obj: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ConfigError::WrongType { field, expected: "true or false", found: type_name(other) }),
    }
}

fn get_u32(obj: &Map<String, Value>, field: &'static str) -> Result<Option<u32>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) => Ok(Some(v)),
            None => {
                Err(ConfigError::WrongType { field, expected: "a non-negative integer", found: format!("number {n}") })
            }
        },
        Some(other) => {
            Err(ConfigError::WrongType { field, expected: "a non-negative integer", found: type_name(other) })
        }
    }
}

fn get_port(obj: &Map<String, Value>, field: &'static str) -> Result<Option<u16>, ConfigError> {
    match get_u32(obj, field)? {
        None | Some(0) => Ok(None),
        Some(p) => u16::try_from(p)
            .map(Some)
            .map_err(|_| ConfigError::BadBackendOption { field, reason: format!("{p} is not a UDP port (1 - 65535)") }),
    }
}

fn get_mtu(obj: &Map<String, Value>) -> Result<Option<u32>, ConfigError> {
    match get_u32(obj, "MTU")? {
        None | Some(0) => Ok(None),
        Some(m) if !(576..=65535).contains(&m) => {
            Err(ConfigError::BadBackendOption { field: "MTU", reason: format!("{m} is outside 576 - 65535") })
        }
        Some(m) => Ok(Some(m)),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
