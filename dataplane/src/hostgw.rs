//! The host-gw backend: `ip route replace <peer subnet> via <peer public IP>
//! dev <external interface> proto 87` per peer. Works when all nodes share
//! one L2 segment; the public IP must be an address of the external interface.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::converge::{self, Failures};
use crate::error::{Error, Result};
use crate::iface::ExternalInterface;
use crate::netlink::{Netlink, RouteSpec};
use crate::peer::Peer;

pub struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    network: Ipv4Net,
}

impl HostGwBackend {
    /// Check that host-gw can work here; changes nothing.
    pub fn prepare(nl: Netlink, ext: ExternalInterface, network: Ipv4Net) -> Result<HostGwBackend> {
        if !ext.addrs.iter().any(|a| a.addr() == ext.public_ip) {
            return Err(Error::HostGwPublicIpNotOnIface { ip: ext.public_ip, iface: ext.name.clone() });
        }
        Ok(HostGwBackend { nl, ext, network })
    }

    pub fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    pub async fn reconcile(&mut self, peers: &[Peer]) -> Result<usize> {
        let desired: BTreeMap<_, _> = peers
            .iter()
            .map(|p| (p.subnet, RouteSpec { gateway: p.public_ip, oif: self.ext.index, onlink: false }))
            .collect();
        let mut failures = Failures::default();
        let changes = converge::routes(&self.nl, self.network, &desired, &mut failures).await?;
        if let Some(first) = failures.0.first() {
            return Err(Error::PeersFailed { count: failures.0.len(), total: peers.len(), first: first.clone() });
        }
        Ok(changes)
    }
}
