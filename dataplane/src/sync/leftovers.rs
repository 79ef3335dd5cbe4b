//! What an earlier run with another config left on the host, removed when
//! the dataplane starts: the device of another backend (`flannel0` after
//! udp, `flannel-wg` after wireguard, `flannel.<VNI>` after vxlan or another VNI, `flannel-v6.<VNI>`
//! after IPv6 was turned off) and weft's routes outside the current
//! networks. Without this, switching a node from udp to
//! vxlan would leave the persistent `flannel0` holding the network's route
//! with nobody reading it.

use ipnet::IpNet;
use tracing::{info, warn};

use crate::error::Result;
use crate::kernel::Netlink;
use crate::model::{is_vxlan_device, TUN_NAME, WG6_NAME, WG_NAME};

/// Whether `name` of kind `kind` is a device weft makes and not in `keep`.
fn is_leftover(name: &str, kind: Option<&str>, keep: &[&str]) -> bool {
    if keep.contains(&name) {
        return false;
    }
    let tun = [TUN_NAME, WG_NAME, WG6_NAME].contains(&name) && kind == Some("tun");
    let vxlan = kind == Some("vxlan") && is_vxlan_device(name);
    tun || vxlan
}

/// Remove the devices weft makes other than `keep`, and weft's routes
/// outside `networks`. Failures are logged; the backend's own start decides
/// whether the node can work.
pub(crate) async fn remove(nl: &Netlink, keep: &[&str], networks: &[IpNet]) -> Result<()> {
    for link in nl.links().await? {
        if !is_leftover(&link.name, link.kind.as_deref(), keep) {
            continue;
        }
        match nl.delete_link(link.index).await {
            Ok(()) => info!(device = %link.name, "removed a device an earlier run with another backend config left"),
            Err(e) => warn!(device = %link.name, "could not remove a device an earlier config left: {e}"),
        }
    }
    let outside = |dst: &IpNet| !networks.iter().any(|n| n.contains(dst));
    for (dst, spec) in nl.weft_routes().await?.into_iter().filter(|(dst, _)| outside(dst)) {
        match nl.delete_route(dst, &spec).await {
            Ok(()) => info!(%dst, "removed a route outside the network (an earlier network config)"),
            Err(e) => warn!(%dst, "could not remove a route outside the network: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_leftover;

    #[test]
    fn only_weft_devices_other_than_the_kept_one() {
        assert!(is_leftover("flannel0", Some("tun"), &["flannel.1"]));
        assert!(is_leftover("flannel0", Some("tun"), &[]));
        assert!(!is_leftover("flannel0", Some("tun"), &["flannel0"]));
        assert!(is_leftover("flannel-wg", Some("tun"), &["flannel0"]));
        assert!(!is_leftover("flannel-wg", Some("tun"), &["flannel-wg"]));
        // A kernel WireGuard device of flanneld's is not weft's to remove.
        assert!(!is_leftover("flannel-wg", Some("wireguard"), &[]));
        assert!(is_leftover("flannel.1", Some("vxlan"), &["flannel.2"]));
        assert!(!is_leftover("flannel.1", Some("vxlan"), &["flannel.1"]));
        // IPv6 turned off: the IPv6 device goes, the IPv4 one stays.
        assert!(is_leftover("flannel-v6.1", Some("vxlan"), &["flannel.1"]));
        assert!(!is_leftover("flannel-v6.1", Some("vxlan"), &["flannel.1", "flannel-v6.1"]));
        // Someone else's devices.
        assert!(!is_leftover("flannel0", Some("bridge"), &[]));
        assert!(!is_leftover("flannel.1", Some("bridge"), &[]));
        assert!(!is_leftover("flannel.x", Some("vxlan"), &[]));
        assert!(!is_leftover("flannel.", Some("vxlan"), &[]));
        assert!(!is_leftover("flannel-v6.", Some("vxlan"), &[]));
        assert!(!is_leftover("vxlan0", Some("vxlan"), &[]));
    }
}
