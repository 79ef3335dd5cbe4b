//! The host-gw backend: `ip route replace <peer subnet> via <peer public IP>
//! dev <external interface> proto 87` per peer (through a nexthop object
//! per peer where the kernel has them, see [`crate::nexthop`]). Works when all nodes share
//! one L2 segment; the public IP must be an address of the external interface.
//! It owns no device: only the routes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;

use crate::converge::{self, Pass};
use crate::error::{chain, Error, Result};
use crate::events::{Interest, Picture};
use crate::iface::ExternalInterface;
use crate::netlink::{Netlink, RouteSpec};
use crate::nexthop;
use crate::peer::Peer;
use crate::report::{ObjectKind, Report};

pub(crate) struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    network: Ipv4Net,
    /// What the last pass left in place.
    routes: BTreeMap<Ipv4Net, RouteSpec>,
    /// Where the event watch learns what this backend puts in place.
    interest: Arc<RwLock<Interest>>,
}

impl HostGwBackend {
    /// Check that host-gw can work here; changes nothing.
    pub(crate) fn prepare(
        nl: Netlink,
        ext: ExternalInterface,
        network: Ipv4Net,
        interest: Arc<RwLock<Interest>>,
    ) -> Result<HostGwBackend> {
        if !ext.addrs.iter().any(|a| a.addr() == ext.public_ip) {
            return Err(Error::HostGwPublicIpNotOnIface { ip: ext.public_ip, iface: ext.name.clone() });
        }
        Ok(HostGwBackend { nl, ext, network, routes: BTreeMap::new(), interest })
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    pub(crate) async fn reconcile(&mut self, peers: &[Peer], report: &mut Report, pass: Pass) {
        report.peers_desired = peers.len();
        let nexthops = self.nl.use_nexthops().await;
        let desired: BTreeMap<_, _> = peers
            .iter()
            .map(|p| {
                let nhid = nexthops.then(|| nexthop::id_for(p.subnet));
                (p.subnet, RouteSpec { gateway: p.public_ip, oif: self.ext.index, onlink: false, nhid })
            })
            .collect();
        if let Ok(mut i) = self.interest.write() {
            i.picture = Some(Picture::of(&desired, &BTreeMap::new(), &BTreeMap::new()));
        }
        match converge::routes(&self.nl, self.network, &desired, &self.routes, pass).await {
            Ok(o) => {
                report.changes += o.changes;
                report.repaired(ObjectKind::Route, o.repairs);
                let failed = o.failed.iter().filter(|(dst, _)| desired.contains_key(dst)).count();
                report.peers_programmed = peers.len() - failed;
                if let Some((dst, e)) = o.failed.first() {
                    report.problem(format!(
                        "{failed} of {} peers not programmed, retrying (first: {dst}: {})",
                        peers.len(),
                        chain(e)
                    ));
                }
                self.routes = o.programmed(&desired);
            }
            Err(e) => report.problem(format!("cannot read the routes: {}", chain(&e))),
        }
    }
}
