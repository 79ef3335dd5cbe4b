//! Applying reconcile diffs to the kernel: read what is installed, diff it
//! against what is desired, remove the extra, install the missing. A failed
//! entry does not stop the others; each failure is returned with its key so
//! the backend can say which peers are not programmed.
//!
//! `previous` is what the last pass left in place: an entry that was
//! programmed then, is still desired unchanged, and is missing now was
//! removed behind weft's back, and putting it back counts as a repair.
//!
//! A pass is [`Pass::Full`] (dump the kernel, on a connection of its own
//! ([`Netlink::for_dumps`]), and diff against it: start-up, kernel events,
//! the periodic resync) or [`Pass::Delta`] (take `previous`
//! as what is installed and change only what the leases changed: a few
//! peers joining a cluster of 65,000 then costs a few requests, not four
//! dumps of 65,000 objects). Anything changed behind weft's back raises a
//! kernel event, and the full pass that follows finds it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::{stream, FutureExt, StreamExt};
use ipnet::IpNet;
use std::future::Future;
use tracing::{debug, info};
use weft_types::MacAddr;

use super::nexthops::{self, Put};
use crate::error::{Error, Result};
use crate::kernel::Netlink;
use crate::model::diff::{diff, Diff};
use crate::model::RouteSpec;

/// Netlink requests kept in flight at once. The kernel answers each in
/// order as it is sent; keeping a window open instead of waiting for every
/// answer before the next request removes a scheduler round trip per
/// object (tens of thousands at start-up on a large cluster).
const IN_FLIGHT: usize = 64;

/// Changes logged one line each up to this many per kind and pass; beyond
/// it, one summary line (a cluster's worth of routes at start-up would
/// flood the journal).
const LOG_EACH_UP_TO: usize = 16;

/// Run `op` on every entry, [`IN_FLIGHT`] at a time; the failures, by key.
async fn each<K, V, F, Fut>(entries: &[(K, V)], op: F) -> Vec<(K, Error)>
where
    K: Copy,
    V: Copy,
    F: Fn(K, V) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    stream::iter(entries.iter().copied())
        .map(|(k, v)| op(k, v).map(move |r| r.err().map(|e| (k, e))))
        .buffer_unordered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// One info line per change for a few, one summary line for many; the
/// entries that failed are left out (they are reported as problems).
fn log_changes<K: Ord, V>(
    verb: &str,
    what: &str,
    entries: &[(K, V)],
    failed: &[(K, Error)],
    show: impl Fn(&K, &V) -> String,
) {
    let failed: std::collections::BTreeSet<&K> = failed.iter().map(|(k, _)| k).collect();
    let done = entries.len().saturating_sub(failed.len());
    if done == 0 {
        return;
    }
    if done <= LOG_EACH_UP_TO {
        for (k, v) in entries.iter().filter(|(k, _)| !failed.contains(k)) {
            info!("{verb} {what} {}", show(k, v));
        }
    } else {
        info!(count = done, "{verb} {done} {what}s");
    }
}

/// How a pass learns what is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Read the kernel.
    Full,
    /// Trust what the last pass left in place.
    Delta,
}

/// What is installed: the kernel's dump, or for a delta pass what
/// the last pass left.
async fn installed<K: Ord + Clone, V: Clone, F: Future<Output = Result<BTreeMap<K, V>>>>(
    pass: Pass,
    previous: &BTreeMap<K, V>,
    dump: F,
) -> Result<BTreeMap<K, V>> {
    match pass {
        Pass::Full => dump.await,
        Pass::Delta => Ok(previous.clone()),
    }
}

/// What one converge pass did.
#[derive(Debug)]
pub(crate) struct Outcome<K> {
    /// Entries removed or installed.
    pub(crate) changes: usize,
    /// Installed entries that had been programmed before and went missing.
    pub(crate) repairs: usize,
    /// Entries that could not be removed or installed, with the kernel's error.
    pub(crate) failed: Vec<(K, Error)>,
}

impl<K: Ord + Clone> Outcome<K> {
    fn new<V: PartialEq>(d: &Diff<K, V>, previous: &BTreeMap<K, V>) -> Outcome<K> {
        let repairs = d.install.iter().filter(|(k, v)| previous.get(k) == Some(v)).count();
        Outcome { changes: d.remove.len() + d.install.len(), repairs, failed: Vec::new() }
    }

    /// The desired entries that are in place after this pass.
    pub(crate) fn programmed<V: Clone>(&self, desired: &BTreeMap<K, V>) -> BTreeMap<K, V> {
        let mut out = desired.clone();
        for (k, _) in &self.failed {
            out.remove(k);
        }
        out
    }
}

/// Converge weft's routes inside `networks` (the IPv4 network and, on
/// dual-stack networks, the IPv6 one) to `desired`, and the nexthop
/// objects those routes name, as [`nexthops::plan`] decides. Nexthops are
/// put in place before the routes that use them and removed after
/// (removing one takes its routes along).
pub(crate) async fn routes(
    nl: &Netlink,
    networks: &[IpNet],
    desired: &BTreeMap<IpNet, RouteSpec>,
    previous: &BTreeMap<IpNet, RouteSpec>,
    pass: Pass,
) -> Result<Outcome<IpNet>> {
    let dumps = match pass {
        Pass::Full => Some(nl.for_dumps(true)?),
        Pass::Delta => None,
    };
    let nexthops = match (nl.nexthops_supported().await, &dumps) {
        (false, _) => None,
        (true, Some(d)) => Some(d.nexthops().dump().await?),
        // weft's own nexthops are those of the routes it left in place.
        (true, None) => Some(nexthops::of_routes(previous)),
    };
    let mut installed: BTreeMap<_, _> = installed(pass, previous, async {
        let d = dumps.as_ref().unwrap_or(nl);
        Ok(d.weft_routes().await?.into_iter().filter(|(dst, _)| networks.iter().any(|n| n.contains(dst))).collect())
    })
    .await?;
    drop(dumps);
    if let Some(all) = &nexthops {
        nexthops::resolve(&mut installed, all);
    }
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    let mut install: Vec<(IpNet, RouteSpec)> = d.install;
    let plan = nexthops.as_ref().map(|all| nexthops::plan(all, desired)).unwrap_or_default();

    // Nexthops first: weft's (protocol 87) that differ are replaced; an id
    // held by another program's nexthop is left alone and its route fails.
    out.failed.extend(plan.refused.into_iter().map(|(dst, why)| (dst, Error::Conflict(why))));
    let put: Vec<(u32, Put)> = plan.put.into_iter().collect();
    let nh = nl.nexthops();
    let failed = each(&put, |id, p| async move {
        match nh.replace(id, p.spec, p.replace).await {
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                Err(Error::Conflict(format!("nexthop id {id} exists already, not made by weft")))
            }
            other => other,
        }
    })
    .await;
    debug!(installed = put.len() - failed.len(), "nexthops converged");
    let dst_of: BTreeMap<u32, IpNet> = put.iter().map(|(id, p)| (*id, p.dst)).collect();
    for (id, e) in failed {
        out.failed.push((dst_of[&id], e));
    }
    let failed_dst: std::collections::BTreeSet<IpNet> = out.failed.iter().map(|(d, _)| *d).collect();
    install.retain(|(dst, _)| !failed_dst.contains(dst));

    // A route that only changes is replaced in place below.
    let stale: Vec<(IpNet, RouteSpec)> = d.remove.into_iter().filter(|(dst, _)| !desired.contains_key(dst)).collect();
    let failed = each(&stale, |dst, spec| async move { nl.delete_route(dst, &spec).await }).await;
    log_changes("removed", "route", &stale, &failed, |dst, s| format!("{dst} via {}", s.gateway));
    out.failed.extend(failed);
    let failed = each(&install, |dst, spec| async move { nl.replace_route(dst, &spec).await }).await;
    log_changes("installed", "route", &install, &failed, |dst, s| {
        format!("{dst} via {}{}", s.gateway, if s.onlink { " onlink" } else { "" })
    });
    out.failed.extend(failed);

    // Then weft's nexthops no route wants any more.
    let failed = each(&plan.unused, |id, _| nh.delete(id)).await;
    debug!(removed = plan.unused.len() - failed.len(), "unused nexthops removed");
    for (id, e) in failed {
        debug!(id, "could not remove an unused nexthop: {}", crate::error::chain(&e));
    }
    Ok(out)
}

/// Converge the permanent neighbour entries of device `index`, of one
/// family (`v6`).
pub(crate) async fn neighbours(
    nl: &Netlink,
    index: u32,
    v6: bool,
    desired: &BTreeMap<IpAddr, MacAddr>,
    previous: &BTreeMap<IpAddr, MacAddr>,
    pass: Pass,
) -> Result<Outcome<IpAddr>> {
    let installed =
        installed(pass, previous, async { nl.for_dumps(false)?.permanent_neighbours(index, v6).await }).await?;
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    let stale: Vec<_> = d.remove.iter().filter(|(ip, _)| !desired.contains_key(ip)).cloned().collect();
    out.failed.extend(each(&stale, |ip, _| nl.delete_neighbour(index, ip)).await);
    out.failed.extend(each(&d.install, |ip, mac| nl.replace_neighbour(index, ip, mac)).await);
    debug!(removed = stale.len(), installed = d.install.len(), failed = out.failed.len(), "neighbours converged");
    Ok(out)
}

/// Converge the FDB entries (MAC -> remote IP) of device `index`.
pub(crate) async fn fdb(
    nl: &Netlink,
    index: u32,
    desired: &BTreeMap<MacAddr, IpAddr>,
    previous: &BTreeMap<MacAddr, IpAddr>,
    pass: Pass,
) -> Result<Outcome<MacAddr>> {
    let installed = installed(pass, previous, async { nl.for_dumps(false)?.fdb(index).await }).await?;
    let d = diff(&installed, desired);
    let mut out = Outcome::new(&d, previous);
    // An FDB entry is keyed by (MAC, dst): a changed one is deleted first.
    out.failed.extend(each(&d.remove, |mac, dst| nl.delete_fdb(index, mac, dst)).await);
    out.failed.extend(each(&d.install, |mac, dst| nl.replace_fdb(index, mac, dst)).await);
    debug!(removed = d.remove.len(), installed = d.install.len(), failed = out.failed.len(), "fdb converged");
    Ok(out)
}
