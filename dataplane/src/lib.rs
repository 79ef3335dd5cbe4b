//! weft-dataplane: the forwarding backends of weft and the netlink code
//! they stand on.
//!
//! | module       | what it holds                                                      |
//! |--------------|--------------------------------------------------------------------|
//! | [`peer`]     | the desired peer set, derived from leases (pure)                   |
//! | [`reconcile`]| the installed-vs-desired diff every backend converges with (pure) |
//! | [`converge`] | applying reconcile diffs to routes, neighbours and FDB over netlink |
//! | [`netlink`]  | thin rtnetlink wrappers: links, addresses, routes, neighbours, FDB |
//! | [`iface`]    | choosing the external interface and public IP                      |
//! | [`vxlan`]    | the vxlan backend: device, FDB, neighbour and route per peer        |
//! | [`hostgw`]   | the host-gw backend: one route per peer via its public IP           |
//! | [`udp`]      | the udp backend: TUN + UDP forwarding threads in userspace          |
//! | [`backend`]  | the backend enum the daemon drives                                  |
//! | [`masq`]     | IP masquerading rules for pod traffic leaving the overlay          |
//! | [`error`]    | the crate's error type                                              |
//!
//! Every backend is told the whole desired peer set and converges the host
//! to it: it reads what it installed (routes carry weft's own protocol
//! number [`WEFT_ROUTE_PROTO`]; FDB and neighbour entries live on weft's
//! own device), removes what is no longer wanted and replaces what is
//! missing or different. Running it twice changes nothing.

pub mod backend;
pub mod converge;
pub mod error;
pub mod hostgw;
pub mod iface;
pub mod masq;
pub mod netlink;
pub mod peer;
pub mod reconcile;
pub mod udp;
pub mod vxlan;

pub use backend::Backend;
pub use error::{Error, Result};
pub use peer::Peer;

/// The route protocol number on every route weft installs (`ip route show
/// proto 87`); routes with another protocol are never touched.
pub const WEFT_ROUTE_PROTO: u8 = 87;
