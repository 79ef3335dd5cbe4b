//! Dataplane errors: which kernel object, which operation, and the kernel's
//! own error kept as the source (`{:#}` in anyhow, or [`chain`], prints both).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("netlink: {op} failed")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0:?} does not exist; check --iface")]
    NoSuchInterface(String),
    #[error("no interface has address {0}; check --iface")]
    NoInterfaceWithAddress(std::net::IpAddr),
    #[error("no interface matches --iface-regex {0:?}")]
    NoInterfaceMatches(String),
    #[error("invalid --iface-regex {pattern:?}: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("no default route to pick the external interface from; pass --iface")]
    NoDefaultInterface,
    #[error("interface {iface} has no IPv4 address; give it one or pass --public-ip")]
    NoAddress { iface: String },
    #[error("interface {iface} has no global IPv6 address, and this network has EnableIPv6; give it one, pass --public-ipv6, or choose the interface with --iface")]
    NoAddress6 { iface: String },
    #[error("host-gw needs the public IP on the external interface, but {ip} is not an address of {iface}; use --public-ip (--public-ipv6) with an address of {iface} or choose the interface with --iface")]
    HostGwPublicIpNotOnIface { ip: std::net::IpAddr, iface: String },
    #[error("{device} exists but is not a VXLAN device; remove it or change the VNI")]
    NotVxlan { device: String },
    #[error("{device} vanished right after it was created")]
    Vanished { device: String },
    #[error("the {backend} backend cannot serve this network: {reason}")]
    Unsupported { backend: &'static str, reason: String },
    #[error("cannot use UDP port {addr}; is another flanneld or weft running on this node?")]
    UdpSocket {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TUN device: {what}")]
    Tun {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WireGuard key file {path}: {what} failed")]
    KeyFile {
        path: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a WireGuard private key ({reason}); put the node's key there (`wg genkey`), or remove the file to have a new one made (the node's public key then changes)")]
    BadKeyFile { path: String, reason: String },
    #[error("ip masquerading: {0}")]
    Masq(String),
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Error {
        Error::Netlink { op: op.into(), source }
    }

    pub(crate) fn tun(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Tun { what: what.into(), source }
    }

    /// The errno of the kernel error behind this one, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno(source),
            Error::Tun { source, .. } | Error::UdpSocket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The errno of a netlink error (positive), if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// An error and its sources on one line: `what failed: why: deeper why`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = match c.downcast_ref::<rtnetlink::Error>() {
            // The kernel's message reads better than the wrapper's.
            Some(rtnetlink::Error::NetlinkError(m)) => m.to_io().to_string(),
            _ => c.to_string(),
        };
        s.push_str(": ");
        s.push_str(&text);
        cur = c.source();
    }
    s
}
