//! Applying reconcile diffs to the kernel: read what is installed, diff it
//! against what is desired, remove the extra, install the missing. A failed
//! entry does not stop the others; each failure is returned with its key so
//! the backend can say which peers are not programmed.
//!
//! `previous` is what the last pass left in place: an entry that was
//! programmed then, is still desired unchanged, and is missing now was
//! removed behind weft's back, and putting it back counts as a repair.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, info};
use weft_types::MacAddr;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, RouteSpec};
use crate::reconcile::{diff, Diff};

/// What one converge pass did.
#[derive(Debug)]
pub struct Outcome<K> {
    /// Entries removed or installed.
    pub changes: usize,
    /// Installed entries that had been programmed before and went missing.
    pub repairs: usize,
    /// Entries that could not be removed or installed, with the kernel's error.
    pub failed: Vec<(K, Error)>,
}

impl<K: Ord + Clone> Outcome<K> {
    fn new<V: PartialEq>(d: &Diff<K, V>, previous: &BTreeMap<K, V>) -> Outcome<K> {
        let repairs = d.install.iter().filter(|(k, v)| previous.get(k) == Some(v)).count();
        Outcome { changes: d.remove.len() + d.install.len(), repairs, failed: Vec::new() }
    }

    /// The desired entries that are in place after this pass.
    pub fn programmed<V: Clone>(&self, desired: &BTreeMap<K, V>) -> BTreeMap<K, V> {
        let mut out = desired.clone();
        for (k, _) in &self.failed {
            out.remove(k);
        }
        out
    }
}

/// Converge weft's routes inside `network` to `desired`.
pub async fn routes(
    nl: &Netlink,
    network: Ipv4Net,
    desired: &BTreeMap<Ipv4Net, RouteSpec>,
    previous: &BTreeMap<Ipv4Net, RouteSpec>,
) -> Result<Outcome<Ipv4Net>> {
    let installed: BTreeMap<_, _> =
        nl.weft_routes().await?.into_iter().filter(|(dst, _)| network.contains(dst)).collect();
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    for (dst, spec) in &d.remove {
        // A route that only changes is replaced in place below.
        if desired.contains_key(dst) {
            continue;
        }
        match nl.delete_route(*dst, spec).await {
            Ok(()) => info!(%dst, via = %spec.gateway, "removed route"),
            Err(e) => out.failed.push((*dst, e)),
        }
    }
    for (dst, spec) in &d.install {
        match nl.replace_route(*dst, spec).await {
            Ok(()) => info!(%dst, via = %spec.gateway, onlink = spec.onlink, "installed route"),
            Err(e) => out.failed.push((*dst, e)),
        }
    }
    Ok(out)
}

/// Converge the permanent neighbour entries of device `index`.
pub async fn neighbours(
    nl: &Netlink,
    index: u32,
    desired: &BTreeMap<Ipv4Addr, MacAddr>,
    previous: &BTreeMap<Ipv4Addr, MacAddr>,
) -> Result<Outcome<Ipv4Addr>> {
    let installed = nl.permanent_neighbours(index).await?;
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    for (ip, _) in &d.remove {
        if desired.contains_key(ip) {
            continue;
        }
        match nl.delete_neighbour(index, *ip).await {
            Ok(()) => debug!(%ip, "removed neighbour"),
            Err(e) => out.failed.push((*ip, e)),
        }
    }
    for (ip, mac) in &d.install {
        match nl.replace_neighbour(index, *ip, *mac).await {
            Ok(()) => debug!(%ip, %mac, "installed neighbour"),
            Err(e) => out.failed.push((*ip, e)),
        }
    }
    Ok(out)
}

/// Converge the FDB entries (MAC -> remote IP) of device `index`.
pub async fn fdb(
    nl: &Netlink,
    index: u32,
    desired: &BTreeMap<MacAddr, Ipv4Addr>,
    previous: &BTreeMap<MacAddr, Ipv4Addr>,
) -> Result<Outcome<MacAddr>> {
    let installed = nl.fdb(index).await?;
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    for (mac, dst) in &d.remove {
        // An FDB entry is keyed by (MAC, dst): a changed one is deleted first.
        match nl.delete_fdb(index, *mac, *dst).await {
            Ok(()) => debug!(%mac, %dst, "removed fdb entry"),
            Err(e) => out.failed.push((*mac, e)),
        }
    }
    for (mac, dst) in &d.install {
        match nl.replace_fdb(index, *mac, *dst).await {
            Ok(()) => debug!(%mac, %dst, "installed fdb entry"),
            Err(e) => out.failed.push((*mac, e)),
        }
    }
    Ok(out)
}
