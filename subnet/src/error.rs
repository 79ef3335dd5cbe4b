//! Errors of the subnet manager. Each variant says what failed and, where the
//! user can do something about it, what to do.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An invalid network config. The message names the field and the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config must be a JSON object, e.g. {{\"Network\": \"10.244.0.0/16\"}}")]
    NotAnObject,
    #[error("field {field}: expected {expected}, found {found}")]
    WrongType { field: &'static str, expected: &'static str, found: String },
    #[error("field {field}: {value:?} is not a valid {kind} CIDR (e.g. {example}): {reason}")]
    BadCidr { field: &'static str, value: String, kind: &'static str, example: &'static str, reason: String },
    #[error("field {field}: {value:?} is not a valid IPv4 address")]
    BadAddress { field: &'static str, value: String },
    #[error("field Network is required when EnableIPv4 is true (e.g. \"Network\": \"10.244.0.0/16\")")]
    MissingNetwork,
    #[error("field IPv6Network is required when EnableIPv6 is true (e.g. \"IPv6Network\": \"fd00:10:244::/56\")")]
    MissingIpv6Network,
    #[error("EnableIPv4 and EnableIPv6 are both false: enable at least one")]
    NothingEnabled,
    #[error("field SubnetLen: {len} is too long; it must be at most 30 so that each subnet holds a gateway and pods")]
    SubnetLenTooLong { len: u32 },
    #[error("field SubnetLen: {len} is too short for Network {network}; it must be at least {min} so that the network holds at least four subnets")]
    SubnetLenTooShort { len: u32, network: Ipv4Net, min: u8 },
    #[error("field Network: {network} is too small; the prefix must be /28 or shorter")]
    NetworkTooSmall { network: Ipv4Net },
    #[error("field {field}: {addr} is outside Network {network}")]
    OutsideNetwork { field: &'static str, addr: Ipv4Addr, network: Ipv4Net },
    #[error("field {field}: {addr} is not on a /{len} boundary (SubnetLen)")]
    NotAligned { field: &'static str, addr: Ipv4Addr, len: u8 },
    #[error("fields SubnetMin/SubnetMax: SubnetMin {min} is above SubnetMax {max}")]
    EmptyRange { min: Ipv4Addr, max: Ipv4Addr },
    #[error("field IPv6SubnetLen: {len} is invalid for IPv6Network {network}; it must be between {min} and 126")]
    BadIpv6SubnetLen { len: u32, network: String, min: u8 },
    #[error("field IPv6Network: {network} is too small; the prefix must be /124 or shorter")]
    Ipv6NetworkTooSmall { network: String },
    #[error("field {field}: {reason}")]
    BadIpv6Bound { field: &'static str, reason: String },
    #[error("field Backend.Type: unknown backend type {0:?}; use one of udp, vxlan, host-gw, wireguard")]
    UnknownBackend(String),
    #[error("field Backend.{field}: {reason}")]
    BadBackendOption { field: &'static str, reason: String },
}

/// Any failure of the subnet manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no network config at {key} in etcd; write one with `weft config put FILE`")]
    ConfigNotFound { key: String },
    #[error("invalid etcd option: {0}")]
    EtcdOptions(String),
    #[error("cannot read {what} {path}: {source}")]
    ReadFile { what: &'static str, path: String, source: std::io::Error },
    #[error("cannot reach etcd at {endpoints} within {secs} s; check --etcd-endpoints and that etcd is running")]
    Unreachable { endpoints: String, secs: u64 },
    #[error("cannot reach etcd at {endpoints}: {detail}; check --etcd-endpoints and that etcd is running")]
    Unavailable { endpoints: String, detail: String },
    #[error("etcd request {op} failed: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "out of subnets: every /{len} subnet in {min} - {max} is leased; widen SubnetMin/SubnetMax (or IPv6SubnetMin/IPv6SubnetMax) or free a lease"
    )]
    OutOfSubnets { min: String, max: String, len: u8 },
    #[error(
        "another host holds the lease of {subnet} with this node's public address {holder} (its node ID {other}, this node's {own}): \
         two hosts with one address (a cloned VM, a leftover node?); give this node its own address (--public-ip) or stop the other"
    )]
    AddressInUse { subnet: ipnet::IpNet, holder: std::net::IpAddr, other: String, own: String },
    #[error("gave up acquiring a subnet after {attempts} attempts lost to concurrent writers")]
    TooManyConflicts { attempts: u32 },
    #[error("cannot write {path}: {source}")]
    WriteFile { path: String, source: std::io::Error },
    #[error("cannot encode lease for {subnet}: {source}")]
    Encode { subnet: ipnet::IpNet, source: serde_json::Error },
    #[error("a lease needs an IPv4 or an IPv6 subnet")]
    NoSubnet,
}

impl Error {
    pub(crate) fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
        move |source| Error::Etcd { op, source }
    }
}
