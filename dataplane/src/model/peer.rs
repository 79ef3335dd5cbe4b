//! A peer: another node, as the backends need to know it. The daemon
//! derives the desired peer set from the leases.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_types::MacAddr;

/// Another node, as a backend needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// The peer's VTEP MAC (vxlan only).
    pub vtep_mac: Option<MacAddr>,
}
