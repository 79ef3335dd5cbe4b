//! weft-types: the few types that weft's control plane (`weft-subnet`) and
//! dataplane (`weft-dataplane`) both need, kept here so that neither crate
//! depends on the other: the dataplane, its fuzz targets and its benchmarks
//! build without etcd or protoc.
//!
//! - [`MacAddr`]: an Ethernet address, as published in vxlan leases (`VtepMAC`);
//! - [`BackendKind`]: a backend type, parsed once from `Backend.Type` or a
//!   lease's `BackendType`;
//! - [`BackendConfig`], [`UdpOptions`], [`VxlanOptions`], [`WireguardOptions`]: the `Backend` part of
//!   the network config, after validation (parsing lives in `weft-subnet`).

pub mod metrics;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default UDP port of the udp backend (flanneld's).
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// Default UDP port of the vxlan backend (the Linux kernel's, as flanneld uses it).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

/// `Backend` of the config: its `Type` and that type's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Udp(UdpOptions),
    Vxlan(VxlanOptions),
    HostGw,
    Wireguard(WireguardOptions),
}

/// Options of the udp backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    /// `Port`, default 8285.
    pub port: u16,
    /// `MTU` of the TUN device; default: the external MTU − 28.
    pub mtu: Option<u32>,
    /// `Offload` (weft's own): use TUN/UDP segmentation offloads, default true.
    pub offload: bool,
    /// `Queues` (weft's own): forwarding queues; default one per two cores
    /// with offloads (at most 4), else one.
    pub queues: Option<u32>,
    /// `RealtimeThreads` (weft's own): run the forwarding threads at
    /// `SCHED_FIFO` priority 10, default false. Short latency under load
    /// for some throughput (docs/backends.md).
    pub realtime_threads: bool,
    /// `LatencyLane` (weft's own): one extra queue that carries only small
    /// packets (ping, requests, DNS; not a bulk flow's segments or ACKs),
    /// chosen by an eBPF classifier on both the TUN device and the UDP
    /// sockets, its two threads at `SCHED_FIFO` while bulk flows. Short
    /// latency beside a bulk stream, default true; where the kernel refuses
    /// the classifier (no `CAP_BPF`), weft says so once and forwards
    /// without it (docs/backends.md).
    pub latency_lane: bool,
}

/// Options of the vxlan backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    /// `VNI`, default 1.
    pub vni: u32,
    /// `Port`, default 8472.
    pub port: u16,
    /// `GBP`: group based policy extension.
    pub gbp: bool,
    /// `DirectRouting`: route directly to peers on the same subnet.
    pub direct_routing: bool,
    /// `Learning`: let the kernel learn FDB entries (default false).
    pub learning: bool,
    /// `MTU` of the VXLAN device; default: the external MTU − 50.
    pub mtu: Option<u32>,
}

/// Default `ListenPort` of the wireguard backend (flanneld's).
pub const WIREGUARD_DEFAULT_PORT: u16 = 51820;
/// Default `ListenPortV6` of the wireguard backend (flanneld's).
pub const WIREGUARD_DEFAULT_PORT_V6: u16 = 51821;

/// Options of the wireguard backend, with flanneld's names and defaults.
#[derive(Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    /// `ListenPort`, default 51820.
    pub listen_port: u16,
    /// `ListenPortV6`, default 51821 (the IPv6 peers' port in `separate` mode).
    pub listen_port_v6: u16,
    /// `PSK`: a preshared key applied to every peer (32 bytes, base64 in
    /// the config).
    pub psk: Option<[u8; 32]>,
    /// `PersistentKeepaliveInterval` in seconds; 0 = off.
    pub persistent_keepalive: u16,
    /// `Mode`, default `separate`.
    pub mode: WireguardMode,
    /// `MTU`; default: the external MTU − 80.
    pub mtu: Option<u32>,
    /// `Queues` (weft's own, as the udp backend's): TUN queues and sockets
    /// per device, each with its threads; default one per two cores (at
    /// most 4).
    pub queues: Option<u32>,
    /// `LatencyLane` (weft's own, as the udp backend's): one extra queue
    /// for small packets, default true.
    pub latency_lane: bool,
}

/// The preshared key is a secret: never printed.
impl fmt::Debug for WireguardOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireguardOptions")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("psk", &self.psk.map(|_| "(set)"))
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("mode", &self.mode)
            .field("mtu", &self.mtu)
            .field("queues", &self.queues)
            .field("latency_lane", &self.latency_lane)
            .finish()
    }
}

/// How a dual-stack wireguard network carries the two families
/// (flanneld's `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireguardMode {
    /// One device and port per family (`flannel-wg`, `flannel-wg-v6`).
    Separate,
    /// One device; each peer reached over IPv6 if it has a `PublicIPv6`, else IPv4.
    Auto,
    /// One device; every peer reached over IPv4.
    Ipv4,
    /// One device; every peer reached over IPv6.
    Ipv6,
}

impl WireguardMode {
    pub const ALL: [WireguardMode; 4] =
        [WireguardMode::Separate, WireguardMode::Auto, WireguardMode::Ipv4, WireguardMode::Ipv6];

    pub fn as_str(self) -> &'static str {
        match self {
            WireguardMode::Separate => "separate",
            WireguardMode::Auto => "auto",
            WireguardMode::Ipv4 => "ipv4",
            WireguardMode::Ipv6 => "ipv6",
        }
    }
}

/// Error for a `Mode` flanneld does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a wireguard mode (separate, auto, ipv4 or ipv6)")]
pub struct UnknownMode(pub String);

impl FromStr for WireguardMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WireguardMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// A backend type, as `Backend.Type` and a lease's `BackendType` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    Udp,
    Vxlan,
    HostGw,
    Wireguard,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] =
        [BackendKind::Udp, BackendKind::Vxlan, BackendKind::HostGw, BackendKind::Wireguard];

    /// The name as written in the config and in leases.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Udp => "udp",
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::Wireguard => "wireguard",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a backend type weft does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend type {0:?} (weft has udp, vxlan, host-gw and wireguard)")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

impl BackendConfig {
    /// The backend's type.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Udp(_) => BackendKind::Udp,
            BackendConfig::Vxlan(_) => BackendKind::Vxlan,
            BackendConfig::HostGw => BackendKind::HostGw,
            BackendConfig::Wireguard(_) => BackendKind::Wireguard,
        }
    }

    /// The backend type as written in `Backend.Type` and in leases.
    pub fn type_name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// An Ethernet MAC address, written `0e:5f:aa:01:02:03`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error for a malformed MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address such as 0e:5f:aa:01:02:03")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kinds_round_trip_and_unknown_ones_are_errors() {
        for k in BackendKind::ALL {
            assert_eq!(k.as_str().parse::<BackendKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!("hostgw".parse::<BackendKind>(), Err(UnknownBackend("hostgw".into())));
        assert_eq!("".parse::<BackendKind>(), Err(UnknownBackend(String::new())));
    }
}
