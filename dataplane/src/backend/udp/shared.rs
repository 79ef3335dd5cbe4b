//! What the udp backend's forwarding threads share: the route table, the
//! counters, this node's subnets and the addresses it answers from.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::forward::decide::Arrival;
use crate::forward::stats::Stats;
use crate::forward::table::RouteTable;
use crate::model::DualStack;

/// What every forwarding thread shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) stats: Arc<Stats>,
    /// This node's subnets: the only destinations accepted from peers.
    pub(crate) local: DualStack,
    /// Source address of the ICMP errors weft sends (the TUN address).
    pub(crate) icmp_from: Option<Ipv4Addr>,
    /// Source address of the ICMPv6 errors (the TUN's IPv6 address).
    pub(crate) icmp_from6: Option<std::net::Ipv6Addr>,
    /// The public addresses (IPv4, IPv6) to send from when the socket is
    /// bound to `[::]` for an IPv6 underlay; `None`: bound to the IPv4
    /// public address, which the kernel sends from.
    pub(crate) send_from: Option<(Option<Ipv4Addr>, std::net::Ipv6Addr)>,
    /// How a datagram from a peer must arrive (interface, destination).
    pub(crate) arrival: Arrival,
    /// Whether the TUN device carries virtio-net headers (offload on).
    pub(crate) vnet_hdr: bool,
}
