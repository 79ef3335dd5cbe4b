//! The backend the daemon drives: one of the kernel backends (and, later,
//! udp), behind one small interface.

use ipnet::Ipv4Net;

use crate::error::Result;
use crate::hostgw::HostGwBackend;
use crate::peer::Peer;
use crate::vxlan::VxlanBackend;

pub enum Backend {
    Vxlan(VxlanBackend),
    HostGw(HostGwBackend),
}

impl Backend {
    /// The `BackendType` written in leases.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw(_) => "host-gw",
        }
    }

    /// The `BackendData` written in leases.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        match self {
            Backend::Vxlan(b) => Some(b.backend_data()),
            Backend::HostGw(_) => None,
        }
    }

    /// The MTU pods should use (`FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        match self {
            Backend::Vxlan(b) => b.mtu(),
            Backend::HostGw(b) => b.mtu(),
        }
    }

    /// Program what depends on the node's own subnet.
    pub async fn setup(&mut self, subnet: Ipv4Net) -> Result<()> {
        match self {
            Backend::Vxlan(b) => b.setup(subnet).await,
            Backend::HostGw(_) => Ok(()),
        }
    }

    /// Converge the host to `peers`; returns how many entries changed.
    pub async fn reconcile(&mut self, peers: &[Peer]) -> Result<usize> {
        match self {
            Backend::Vxlan(b) => b.reconcile(peers).await,
            Backend::HostGw(b) => b.reconcile(peers).await,
        }
    }
}
