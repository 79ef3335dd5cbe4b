//! The acquire policy: which subnet a node ends up with.
//!
//! 1. The node's own lease (same `PublicIP`) if it still fits the config: it
//!    is renewed in place, so a restarted node keeps its subnet. If only its
//!    IPv6 part no longer fits (IPv6 turned on or off since), the key is
//!    replaced by one with the same IPv4 subnet, as flanneld does.
//!    Its key of the other form (`EnableIPv4` turned off or on since) is
//!    replaced the same way, keeping the subnet that still fits.
//! 2. Else the subnets of the previous `subnet.env`, if nobody holds them.
//! 3. Else a random free subnet in `[SubnetMin, SubnetMax]`, and on
//!    dual-stack networks one of the first free IPv6 subnets (only that on
//!    IPv6-only networks, where the own lease is the one with the same
//!    `PublicIPv6`).
//!
//! Creation is a transaction that succeeds only if no key leases the IPv4
//! subnet (the IPv6 subnet on IPv6-only networks) and, for an IPv6 part,
//! no key was created since the listing it was chosen from (flanneld checks
//! only its own key, so two of its nodes can end up with one IPv6 subnet).
//! A node that loses a race lists again and tries another subnet (flanneld
//! exits instead); a full range is [`Error::OutOfSubnets`].

use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use rand::RngExt;
use tracing::{debug, info, warn};

use crate::choose::{choose_free_subnet, choose_free_subnet6};
use crate::config::NetworkConfig;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseAttrs};
use crate::registry::{Registry, RenewOutcome};

/// What the node asks for.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// What the node publishes: its public IP and backend data.
    pub attrs: LeaseAttrs,
    /// TTL of the etcd lease the key is attached to.
    pub ttl: Duration,
    /// The subnet of a previous `subnet.env`, if any.
    pub previous_subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of a previous `subnet.env`, if any.
    pub previous_ipv6_subnet: Option<Ipv6Net>,
}

/// Acquire a lease for this node; see the module doc for the policy.
pub async fn acquire_lease(registry: &Registry, config: &NetworkConfig, req: &AcquireRequest) -> Result<Lease> {
    // Every failed attempt means another writer won a subnet or rewrote a
    // key, so the loop ends; the bound only guards against a pathological store.
    let range = config.ipv4.as_ref().map_or(1000, |v4| v4.subnet_count());
    let max_attempts = (range + 16).min(1000) as u32;
    let holder = req.attrs.holder();
    for attempt in 1..=max_attempts {
        if attempt > 1 {
            // Spread retrying racers apart a little.
            let jitter = rand::rng().random_range(0..20u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let listing = registry.list(config).await?;
        for (key, why) in &listing.skipped {
            debug!("ignoring entry {key}: {why}");
        }

        // The own lease: same holder, and the subnet that names it still
        // one this config hands out.
        let own = listing.leases.iter().find(|l| {
            l.holder() == holder
                && match &config.ipv4 {
                    Some(_) => config.ipv4_fits(l.subnet.as_ref()),
                    None => config.ipv6_fits(l.ipv6_subnet.as_ref()),
                }
        });
        if let Some(own) = own {
            if config.ipv6_fits(own.ipv6_subnet.as_ref()) {
                match registry.renew_lease(own, &req.attrs, req.ttl).await? {
                    RenewOutcome::Renewed(lease) => {
                        info!(subnet = ?lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, "reusing this node's existing lease");
                        return Ok(lease);
                    }
                    RenewOutcome::Lost(why) => {
                        debug!("own lease changed while reusing it ({why}); retrying");
                        continue;
                    }
                }
            }
            // Same IPv4 subnet, new IPv6 part (or none).
            let subnet6 = match &config.ipv6 {
                None => None,
                Some(v6) => match req.previous_ipv6_subnet {
                    Some(p) if v6.is_leasable(&p) && !listing.taken6.contains(&p) => Some(p),
                    _ => Some(
                        choose_free_subnet6(v6, &listing.taken6, &mut rand::rng()).ok_or_else(|| out_of_v6(config))?,
                    ),
                },
            };
            match registry.replace_lease(own, own.subnet, subnet6, &req.attrs, req.ttl, listing.revision).await? {
                Some(lease) => {
                    info!(
                        old = %own.key(),
                        new = %lease.key(),
                        "replaced this node's lease: its IPv6 part did not fit the network config"
                    );
                    return Ok(lease);
                }
                None => {
                    debug!("own lease changed while replacing it; retrying");
                    continue;
                }
            }
        }

        // The own key of the other form: IPv4 was turned off (a dual key on
        // an IPv6-only network) or on again. Keep what still fits of its
        // subnets, choose the rest, and replace it in one transaction.
        // Its holder is named by the other family's address: the same
        // node has the same address of either family.
        let same_node = |l: &&Lease| {
            let a = &l.attrs;
            (a.public_ip.is_some() && a.public_ip == req.attrs.public_ip)
                || (a.public_ipv6.is_some() && a.public_ipv6 == req.attrs.public_ipv6)
        };
        if let Some(old) = listing.other_family.iter().find(same_node) {
            let v4 = match &config.ipv4 {
                None => None,
                Some(v4) => Some(match old.subnet {
                    Some(s) if v4.is_leasable(&s) && !listing.leases.iter().any(|l| l.subnet == Some(s)) => s,
                    _ => choose_free_subnet(v4, &listing.taken, &mut rand::rng()).ok_or_else(|| out_of_v4(config))?,
                }),
            };
            let v6 = match &config.ipv6 {
                None => None,
                Some(v6) => Some(match old.ipv6_subnet {
                    Some(s) if v6.is_leasable(&s) && !listing.leases.iter().any(|l| l.ipv6_subnet == Some(s)) => s,
                    _ => choose_free_subnet6(v6, &listing.taken6, &mut rand::rng()).ok_or_else(|| out_of_v6(config))?,
                }),
            };
            match registry.replace_lease(old, v4, v6, &req.attrs, req.ttl, listing.revision).await? {
                Some(lease) => {
                    info!(old = %old.key(), new = %lease.key(), "replaced this node's lease: EnableIPv4 changed");
                    return Ok(lease);
                }
                None => {
                    debug!("own lease changed while replacing it; retrying");
                    continue;
                }
            }
        }

        let (prev, prev6) = (req.previous_subnet, req.previous_ipv6_subnet);
        let previous = if prev.is_none() && prev6.is_none() {
            None
        } else if !config.ipv4_fits(prev.as_ref()) || !config.ipv6_fits(prev6.as_ref()) {
            warn!(subnet = ?prev, ipv6_subnet = ?prev6, "previous subnet does not fit the network config; choosing another");
            None
        } else if prev.is_some_and(|p| listing.taken.contains(&p)) || prev6.is_some_and(|p| listing.taken6.contains(&p))
        {
            None
        } else {
            Some((prev, prev6))
        };
        let (candidate, candidate6) = match previous {
            Some(p) => p,
            None => {
                let v4 = match &config.ipv4 {
                    None => None,
                    Some(v4) => Some(
                        choose_free_subnet(v4, &listing.taken, &mut rand::rng()).ok_or_else(|| out_of_v4(config))?,
                    ),
                };
                let v6 = match &config.ipv6 {
                    None => None,
                    Some(v6) => Some(
                        choose_free_subnet6(v6, &listing.taken6, &mut rand::rng()).ok_or_else(|| out_of_v6(config))?,
                    ),
                };
                (v4, v6)
            }
        };
        match registry.create_lease(candidate, candidate6, &req.attrs, req.ttl, listing.revision).await? {
            Some(lease) => {
                info!(subnet = ?lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, attempt, "acquired a new lease");
                return Ok(lease);
            }
            None => debug!(subnet = ?candidate, ipv6_subnet = ?candidate6, "lost the race for a subnet; retrying"),
        }
    }
    Err(Error::TooManyConflicts { attempts: max_attempts })
}

/// The IPv4 range is full.
fn out_of_v4(config: &NetworkConfig) -> Error {
    let v4 = config.ipv4.as_ref().expect("only called on networks with IPv4");
    Error::OutOfSubnets { min: v4.subnet_min.to_string(), max: v4.subnet_max.to_string(), len: v4.subnet_len }
}

/// The IPv6 range is full.
fn out_of_v6(config: &NetworkConfig) -> Error {
    let v6 = config.ipv6.as_ref().expect("only called on networks with IPv6");
    Error::OutOfSubnets { min: v6.subnet_min.to_string(), max: v6.subnet_max.to_string(), len: v6.subnet_len }
}
