//! Applying reconcile diffs to the kernel: read what is installed, diff it
//! against what is desired, remove the extra, install the missing. A failed
//! entry does not stop the others; the failures are returned together so
//! the caller can report them and try again at the next resync.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, info};
use weft_subnet::MacAddr;

use crate::error::Result;
use crate::netlink::{Netlink, RouteSpec};
use crate::reconcile::diff;

/// Failures collected while converging (one message per entry).
#[derive(Debug, Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    fn push(&mut self, e: crate::Error) {
        self.0.push(e.to_string());
    }
}

/// Converge weft's routes inside `network` to `desired`.
pub async fn routes(
    nl: &Netlink,
    network: Ipv4Net,
    desired: &BTreeMap<Ipv4Net, RouteSpec>,
    failures: &mut Failures,
) -> Result<usize> {
    let installed: BTreeMap<_, _> =
        nl.weft_routes().await?.into_iter().filter(|(dst, _)| network.contains(dst)).collect();
    let d = diff(&installed, desired);
    for (dst, spec) in &d.remove {
        // A route that only changes is replaced in place below.
        if desired.contains_key(dst) {
            continue;
        }
        match nl.delete_route(*dst, spec).await {
            Ok(()) => info!(%dst, via = %spec.gateway, "removed route"),
            Err(e) => failures.push(e),
        }
    }
    for (dst, spec) in &d.install {
        match nl.replace_route(*dst, spec).await {
            Ok(()) => info!(%dst, via = %spec.gateway, onlink = spec.onlink, "installed route"),
            Err(e) => failures.push(e),
        }
    }
    Ok(d.remove.len() + d.install.len())
}

/// Converge the permanent neighbour entries of device `index`.
pub async fn neighbours(
    nl: &Netlink,
    index: u32,
    desired: &BTreeMap<Ipv4Addr, MacAddr>,
    failures: &mut Failures,
) -> Result<usize> {
    let installed = nl.permanent_neighbours(index).await?;
    let d = diff(&installed, desired);
    for (ip, _) in &d.remove {
        if desired.contains_key(ip) {
            continue;
        }
        match nl.delete_neighbour(index, *ip).await {
            Ok(()) => debug!(%ip, "removed neighbour"),
            Err(e) => failures.push(e),
        }
    }
    for (ip, mac) in &d.install {
        match nl.replace_neighbour(index, *ip, *mac).await {
            Ok(()) => debug!(%ip, %mac, "installed neighbour"),
            Err(e) => failures.push(e),
        }
    }
    Ok(d.remove.len() + d.install.len())
}

/// Converge the FDB entries (MAC -> remote IP) of device `index`.
pub async fn fdb(
    nl: &Netlink,
    index: u32,
    desired: &BTreeMap<MacAddr, Ipv4Addr>,
    failures: &mut Failures,
) -> Result<usize> {
    let installed = nl.fdb(index).await?;
    let d = diff(&installed, desired);
    for (mac, dst) in &d.remove {
        // An FDB entry is keyed by (MAC, dst): a changed one is deleted first.
        match nl.delete_fdb(index, *mac, *dst).await {
            Ok(()) => debug!(%mac, %dst, "removed fdb entry"),
            Err(e) => failures.push(e),
        }
    }
    for (mac, dst) in &d.install {
        match nl.replace_fdb(index, *mac, *dst).await {
            Ok(()) => debug!(%mac, %dst, "installed fdb entry"),
            Err(e) => failures.push(e),
        }
    }
    Ok(d.remove.len() + d.install.len())
}
