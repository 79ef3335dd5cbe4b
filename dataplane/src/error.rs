//! Dataplane errors: which kernel object, which operation, what the kernel said.

use std::net::Ipv4Addr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket: {0}")]
    NetlinkSocket(std::io::Error),
    #[error("netlink: {op} failed: {detail}")]
    Netlink { op: String, detail: String },
    #[error("interface {0:?} does not exist; check --iface")]
    NoSuchInterface(String),
    #[error("no interface has address {0}; check --iface")]
    NoInterfaceWithAddress(Ipv4Addr),
    #[error("no interface matches --iface-regex {0:?}")]
    NoInterfaceMatches(String),
    #[error("invalid --iface-regex {pattern:?}: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("no default route to pick the external interface from; pass --iface")]
    NoDefaultInterface,
    #[error("interface {iface} has no IPv4 address; give it one or pass --public-ip")]
    NoAddress { iface: String },
    #[error("public IP {ip} is not an address of this host; check --public-ip")]
    PublicIpNotLocal { ip: Ipv4Addr },
    #[error("host-gw needs the public IP on the external interface, but {ip} is not an address of {iface}; use --public-ip with an address of {iface} or choose the interface with --iface")]
    HostGwPublicIpNotOnIface { ip: Ipv4Addr, iface: String },
    #[error("{device} exists but is not a VXLAN device; remove it or change the VNI")]
    NotVxlan { device: String },
    #[error("the {backend} backend cannot serve this network: {reason}")]
    Unsupported { backend: &'static str, reason: String },
    #[error("{count} of {total} peers could not be programmed (first: {first}); will retry")]
    PeersFailed { count: usize, total: usize, first: String },
    #[error("cannot use UDP port {addr}: {reason}; is another flanneld or weft running on this node?")]
    UdpSocket { addr: std::net::SocketAddrV4, reason: String },
    #[error("TUN device: {0}")]
    Tun(String),
    #[error("ip masquerading: {0}")]
    Masq(String),
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>, e: rtnetlink::Error) -> Error {
        Error::Netlink { op: op.into(), detail: describe(&e) }
    }
}

/// The errno of a netlink error (positive), if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}
