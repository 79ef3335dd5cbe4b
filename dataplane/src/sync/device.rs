//! What every device weft makes needs after it exists: up, with its MTU,
//! and one address per family. One helper for the VXLAN and TUN devices, so that both
//! decide the same way what counts as a repair.

use ipnet::IpNet;
use tracing::warn;

use crate::error::Result;
use crate::kernel::{Link, Netlink};
use crate::report::{ObjectKind, Report};

/// Bring `link` up with `mtu` (`ip link set dev D mtu M up`) and make
/// each of `addrs` (at most one per family) the only address of its family. `same`: this is the device the last pass
/// configured (not new, not recreated), so anything put back is a repair,
/// logged and counted; `what` names it in the log ("VXLAN device").
pub(crate) async fn configure(
    nl: &Netlink,
    link: &Link,
    mtu: u32,
    addrs: &[IpNet],
    same: bool,
    what: &str,
    report: &mut Report,
) -> Result<()> {
    if !link.up || link.mtu != mtu {
        if same {
            warn!(device = %link.name, up = link.up, mtu = link.mtu, "{what} was set down or its MTU changed; restoring it");
            report.repaired(ObjectKind::Device, 1);
        }
        nl.set_up_with_mtu(link.index, mtu).await?;
    }
    for addr in addrs {
        if nl.ensure_only_address(link.index, *addr).await? && same {
            warn!(device = %link.name, address = %addr, "{what} lost its address; restoring it");
            report.repaired(ObjectKind::Address, 1);
        }
    }
    Ok(())
}

/// Whether a device weft keeps is to be made anew: it is gone (`link`
/// none), or it was replaced since weft last saw it at index `known`.
pub(crate) fn replaced(link: Option<&Link>, known: Option<u32>) -> bool {
    match (link, known) {
        (None, _) => true,
        (Some(l), Some(i)) => l.index != i,
        (Some(_), None) => false,
    }
}
