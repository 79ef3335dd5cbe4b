//! Converging the host: what the dataplane does with the kernel objects of
//! `kernel/` to make them match what `model/` says is desired.
//!
//! | module        | what it holds                                                 |
//! |---------------|---------------------------------------------------------------|
//! | [`converge`]  | applying diffs to routes, nexthops, neighbours and FDB        |
//! | [`nexthops`]  | which nexthop objects a routes pass puts, refuses, removes (pure) |
//! | [`device`]    | a device weft made: up, MTU, its one address                  |
//! | [`watch`]     | matching kernel events against what weft owns and wants       |
//! | [`rules`]     | flanneld's forwarding and masquerade rules, kept in place     |
//! | [`nft_rules`] | the same in flannel's nftables tables (`EnableNFTables`)      |
//! | [`iface`]     | choosing the external interface and public IP                 |
//! | [`leftovers`] | devices and routes an earlier run with another config left    |
//!
//! It imports `model/` and `kernel/`, never `backend/`.

pub(crate) mod converge;
pub(crate) mod device;
pub(crate) mod iface;
pub(crate) mod leftovers;
pub(crate) mod nexthops;
pub(crate) mod nft_rules;
pub(crate) mod rules;
pub(crate) mod watch;
