//! weft-dataplane: the forwarding backends of weft, behind one face.
//!
//! | module        | what it holds                                                      |
//! |---------------|--------------------------------------------------------------------|
//! | [`dataplane`] | [`Dataplane`], the face the daemon drives: prepare, start, reconcile, health, metrics, shutdown |
//! | [`report`]    | what a reconcile pass found and repaired; the counters behind `/metrics` |
//! | [`peer`]      | a peer: another node as the backends need to know it               |
//! | [`reconcile`] | the installed-vs-desired diff every backend converges with (pure) |
//! | [`converge`]  | applying reconcile diffs to routes, neighbours and FDB over netlink |
//! | [`netlink`]   | thin rtnetlink wrappers: links, addresses, routes, neighbours, FDB |
//! | [`nexthop`]   | nexthop objects (`ip nexthop`), which keep route programming linear |
//! | `events`      | netlink multicast events that trigger repair at once               |
//! | [`iface`]     | choosing the external interface and public IP                      |
//! | `leftovers`   | devices and routes an earlier run with another config left, removed |
//! | `vxlan`       | the vxlan backend: device, FDB, neighbour and route per peer        |
//! | `hostgw`      | the host-gw backend: one route per peer via its public IP           |
//! | [`udp`]       | the udp backend: persistent TUN + UDP, supervised forwarding threads |
//! | [`masq`]      | forwarding and masquerade rules (iptables), kept in place          |
//! | [`error`]     | the crate's error type                                              |
//!
//! Every backend is told the whole desired peer set and converges the host
//! to it: it reads what it installed (routes carry weft's own protocol
//! number [`WEFT_ROUTE_PROTO`]; FDB and neighbour entries live on weft's
//! own device), removes what is no longer wanted and replaces what is
//! missing or different. Running it twice changes nothing. The same pass
//! checks the devices weft owns (present, configured, up, addressed) and
//! puts back whatever was removed or changed; netlink events start a pass
//! at once, the periodic resync is the safety net.
//!
//! This crate does not depend on etcd: the few types it shares with the
//! control plane live in `weft-types`.

pub mod converge;
pub mod dataplane;
pub mod error;
mod events;
mod hostgw;
pub mod iface;
mod leftovers;
pub mod masq;
pub mod netlink;
pub mod nexthop;
pub mod peer;
pub mod reconcile;
pub mod report;
pub mod udp;
mod vxlan;

pub use dataplane::{Dataplane, DataplaneConfig};
pub use error::{Error, Result};
pub use peer::Peer;
pub use report::{DataplaneMetrics, ObjectKind, Report};
pub use vxlan::{derive_vtep_mac, VXLAN_OVERHEAD};

/// The route protocol number on every route weft installs (`ip route show
/// proto 87`); routes with another protocol are never touched.
pub const WEFT_ROUTE_PROTO: u8 = 87;
