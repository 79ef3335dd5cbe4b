//! The backend the daemon drives: one of the kernel backends (and, later,
//! udp), behind one small interface.

use ipnet::Ipv4Net;

use crate::error::Result;
use crate::hostgw::HostGwBackend;
use crate::peer::Peer;
use crate::udp::UdpBackend;
use crate::vxlan::VxlanBackend;

pub enum Backend {
    Vxlan(VxlanBackend),
    HostGw(HostGwBackend),
    Udp(UdpBackend),
}

impl Backend {
    /// The `BackendType` written in leases.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw(_) => "host-gw",
            Backend::Udp(_) => "udp",
        }
    }

    /// The `BackendData` written in leases.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        match self {
            Backend::Vxlan(b) => Some(b.backend_data()),
            Backend::HostGw(_) | Backend::Udp(_) => None,
        }
    }

    /// The MTU pods should use (`FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        match self {
            Backend::Vxlan(b) => b.mtu(),
            Backend::HostGw(b) => b.mtu(),
            Backend::Udp(b) => b.mtu(),
        }
    }

    /// Program what depends on the node's own subnet.
    pub async fn setup(&mut self, subnet: Ipv4Net) -> Result<()> {
        match self {
            Backend::Vxlan(b) => b.setup(subnet).await,
            Backend::HostGw(_) => Ok(()),
            Backend::Udp(b) => b.setup(subnet).await,
        }
    }

    /// Converge the host to `peers`; returns how many entries changed.
    pub async fn reconcile(&mut self, peers: &[Peer]) -> Result<usize> {
        match self {
            Backend::Vxlan(b) => b.reconcile(peers).await,
            Backend::HostGw(b) => b.reconcile(peers).await,
            Backend::Udp(b) => b.reconcile(peers),
        }
    }
}

impl Backend {
    /// The udp backend's counters, for `/metrics`.
    pub fn udp_stats(&self) -> Option<std::sync::Arc<crate::udp::stats::Stats>> {
        match self {
            Backend::Udp(b) => Some(b.stats()),
            _ => None,
        }
    }
}
