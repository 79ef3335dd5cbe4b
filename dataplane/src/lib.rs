//! weft-dataplane: the forwarding backends of weft, behind one face.
//!
//! The crate is layered; a module imports only from its own layer and the
//! ones below it (`tests/layers.rs` checks it; see `docs/architecture.md`):
//!
//! | layer        | what it holds                                                        |
//! |--------------|----------------------------------------------------------------------|
//! | [`Dataplane`] | the face the daemon drives (`dataplane.rs`): prepare, start, update, health, metrics, shutdown; owns the timing (settling, resync, full or delta pass) |
//! | `backend/`   | two families: kernel (vxlan, host-gw: a pure `plan(peers) -> Desired`, then converge) and userspace (udp, wireguard: a pure plan, then supervised threads on the shared `backend/userspace/` substrate) |
//! | `sync/`      | converging the host: applying diffs, the kernel watch, flanneld's iptables rules, interface choice, leftovers |
//! | `kernel/`    | one file per kernel object (link, addr, route, neigh, nexthop, monitor, iptables), one function per operation |
//! | [`forward`]  | the userspace hot paths' pure part: packet views, decisions, route table, coalescing, counters; the wireguard peer table |
//! | `model/`     | pure: [`Peer`], `Desired`, the installed-vs-desired diff, device names |
//! | [`report`], [`error`] | what a pass found (typed [`Problem`]s), the counters, the error type |
//!
//! Every kernel backend is told the whole desired peer set and converges
//! the host to it: it reads what it installed (routes carry weft's own
//! protocol number [`WEFT_ROUTE_PROTO`]; FDB and neighbour entries live on
//! weft's own device), removes what is no longer wanted and replaces what
//! is missing or different. Running it twice changes nothing. The same
//! pass checks the devices weft owns (present, configured, up, addressed)
//! and puts back whatever was removed or changed; netlink events start a
//! pass at once, the periodic resync is the safety net.
//!
//! This crate does not depend on etcd: the few types it shares with the
//! control plane live in `weft-types`.

mod backend;
mod dataplane;
pub mod error;
pub mod forward;
mod kernel;
mod model;
pub mod report;
mod sync;

pub use backend::userspace::handover::{
    release_unclaimed as release_unclaimed_descriptors, take_handed_over as take_handed_over_descriptors,
};
pub use dataplane::{Dataplane, DataplaneConfig};
pub use error::{Error, Result};
pub use model::{DualStack, Peer};
pub use report::{DataplaneMetrics, ObjectKind, Problem, Report};
pub use sync::iface::{ExternalInterface, IfaceRequest};
pub use sync::nft_rules::nft_script;
pub use sync::rules::{forward_rules, masq_rules};

/// The route protocol number on every route weft installs (`ip route show
/// proto 87`); routes with another protocol are never touched.
pub const WEFT_ROUTE_PROTO: u8 = 87;
