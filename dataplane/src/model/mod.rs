//! The pure model of what the dataplane wants: no sockets, no clock.
//!
//! | module      | what it holds                                                     |
//! |-------------|-------------------------------------------------------------------|
//! | [`peer`]    | a peer: another node, as the backends need to know it             |
//! | [`desired`] | [`Desired`]: the routes, nexthops, neighbour and FDB entries a backend wants |
//! | [`diff`]    | the installed-vs-desired diff every kernel object converges with |
//!
//! It also names the devices weft makes, so that every layer agrees on them
//! without importing the backends.

pub(crate) mod desired;
pub(crate) mod diff;
pub(crate) mod dual_stack;
pub(crate) mod peer;

pub(crate) use desired::{nexthop_id, Desired, NexthopSpec, RouteSpec};
pub use dual_stack::DualStack;
pub use peer::Peer;

/// flanneld's TUN device name (udp backend).
pub(crate) const TUN_NAME: &str = "flannel0";

/// flanneld's WireGuard device name (wireguard backend; a TUN device here).
pub(crate) const WG_NAME: &str = "flannel-wg";

/// flanneld's WireGuard device for the IPv6 pods (`Mode` `separate`).
pub(crate) const WG6_NAME: &str = "flannel-wg-v6";

/// The VXLAN device of `vni`, as flanneld names it: `flannel.<VNI>`.
pub(crate) fn vxlan_device(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The IPv6 VXLAN device of `vni`, as flanneld names it: `flannel-v6.<VNI>`.
pub(crate) fn vxlan6_device(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// Whether `name` is a VXLAN device name weft makes (`flannel.<digits>`
/// or `flannel-v6.<digits>`).
pub(crate) fn is_vxlan_device(name: &str) -> bool {
    name.strip_prefix("flannel.")
        .or_else(|| name.strip_prefix("flannel-v6."))
        .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()))
}
