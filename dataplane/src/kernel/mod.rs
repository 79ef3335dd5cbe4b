//! The kernel objects weft programs, one file per object, one function per
//! operation, each named after the object and the verb and saying its
//! `ip`/`bridge` equivalent. Errors carry the operation and the kernel's
//! message. Nothing here decides what should be installed: that is
//! `sync/` and `backend/`, which this layer never imports.
//!
//! | module      | object                                                      |
//! |-------------|-------------------------------------------------------------|
//! | [`link`]    | devices (`ip link`), VXLAN attributes                       |
//! | [`addr`]    | addresses (`ip addr`)                                       |
//! | [`route`]   | routes (`ip route`), weft's own by protocol number          |
//! | [`neigh`]   | neighbour (`ip neigh`) and FDB (`bridge fdb`) entries       |
//! | [`nexthop`] | nexthop objects (`ip nexthop`), with their own messages     |
//! | [`monitor`] | multicast events (`ip monitor`), parsed into [`monitor::Event`] |
//! | [`iptables`]| running `iptables-restore`/`iptables-save`                  |
//! | [`nft`]     | running `nft`: one transaction per change, a table read back |

pub(crate) mod addr;
pub(crate) mod iptables;
pub(crate) mod link;
pub(crate) mod monitor;
pub(crate) mod neigh;
pub(crate) mod nexthop;
pub(crate) mod nft;
pub(crate) mod route;

use std::sync::Arc;

use rtnetlink::Handle;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
pub(crate) use link::{Link, VxlanSpec};
use nexthop::Nexthops;

/// A netlink connection (one per daemon).
#[derive(Clone)]
pub(crate) struct Netlink {
    handle: Handle,
    nexthops: Nexthops,
    /// Whether the kernel has nexthop objects, found out on first use.
    nexthops_supported: Arc<OnceCell<bool>>,
    /// Whether routes may point at them (`--no-nexthop-objects`).
    nexthops_allowed: bool,
}

impl Netlink {
    /// Open the socket; must run inside a tokio runtime.
    pub(crate) fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            nexthops: Nexthops::connect()?,
            nexthops_supported: Arc::default(),
            nexthops_allowed: true,
        })
    }

    /// A fresh connection for one pass's dumps, closed when dropped.
    /// netlink-proto reads a whole dump into a queue before handing it on,
    /// and a queue keeps its largest size: dumping a cluster's routes,
    /// neighbours, FDB and nexthops on the long-lived connection would
    /// keep about 10 MB at 65,000 peers for the life of the daemon.
    /// `with_nexthops`: the nexthop dump gets a fresh connection too (only
    /// the routes' pass reads it; the others share the long-lived one).
    pub(crate) fn for_dumps(&self, with_nexthops: bool) -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        let nexthops = if with_nexthops { Nexthops::connect()? } else { self.nexthops.clone() };
        Ok(Netlink { handle, nexthops, ..self.clone() })
    }

    /// Whether new routes may point at nexthop objects; weft's existing
    /// nexthops are still cleaned up when they may not.
    pub(crate) fn nexthop_objects(mut self, allowed: bool) -> Netlink {
        self.nexthops_allowed = allowed;
        self
    }

    /// Whether routes point at nexthop objects: allowed and supported.
    pub(crate) async fn use_nexthops(&self) -> bool {
        self.nexthops_allowed && self.nexthops_supported().await
    }

    /// The nexthop objects (`ip nexthop`).
    pub(crate) fn nexthops(&self) -> &Nexthops {
        &self.nexthops
    }

    /// Whether routes can point at nexthop objects here (Linux 5.3 and
    /// later). Asked once; a kernel without them is logged once, and
    /// routes then carry their gateway themselves.
    pub(crate) async fn nexthops_supported(&self) -> bool {
        *self
            .nexthops_supported
            .get_or_init(|| async {
                match self.nexthops.supported().await {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::warn!("this kernel has no nexthop objects (Linux 5.3+); routes carry their gateway, which the kernel programs in quadratic time with many peers");
                        false
                    }
                    Err(e) => {
                        tracing::warn!("cannot list nexthop objects ({}); routes carry their gateway", crate::error::chain(&e));
                        false
                    }
                }
            })
            .await
    }
}
