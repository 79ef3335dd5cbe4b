//! The acquire policy: which subnet a node ends up with.
//!
//! 1. The node's own lease (same `PublicIP`) if it still fits the config: it
//!    is renewed in place, so a restarted node keeps its subnet.
//! 2. Else the subnet of the previous `subnet.env`, if nobody holds it.
//! 3. Else a random free subnet in `[SubnetMin, SubnetMax]`.
//!
//! Creation is a transaction that succeeds only if the key does not exist.
//! A node that loses a race lists again and tries another subnet (flanneld
//! exits instead); a full range is [`Error::OutOfSubnets`].

use std::time::Duration;

use ipnet::Ipv4Net;
use rand::RngExt;
use tracing::{debug, info, warn};

use crate::choose::choose_free_subnet;
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
}

/// Acquire a lease for this node; see the module doc for the policy.
pub async fn acquire_lease(registry: &Registry, config: &NetworkConfig, req: &AcquireRequest) -> Result<Lease> {
    // Every failed attempt means another writer won a subnet or rewrote a
    // key, so the loop ends; the bound only guards against a pathological store.
    let max_attempts = (config.subnet_count() + 16).min(1000) as u32;
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

        if let Some(own) =
            listing.leases.iter().find(|l| l.attrs.public_ip == req.attrs.public_ip && config.is_leasable(&l.subnet))
        {
            match registry.renew_lease(own, &req.attrs, req.ttl).await? {
                RenewOutcome::Renewed(lease) => {
                    info!(subnet = %lease.subnet, "reusing this node's existing lease");
                    return Ok(lease);
                }
                RenewOutcome::Lost(why) => {
                    debug!("own lease changed while reusing it ({why}); retrying");
                    continue;
                }
            }
        }

        let candidate = match req.previous_subnet {
            Some(prev) if config.is_leasable(&prev) && !listing.taken.contains(&prev) => prev,
            prev => {
                if let Some(prev) = prev {
                    if !config.is_leasable(&prev) {
                        warn!(subnet = %prev, "previous subnet does not fit the network config; choosing another");
                    }
                }
                match choose_free_subnet(config, &listing.taken, &mut rand::rng()) {
                    Some(s) => s,
                    None => {
                        return Err(Error::OutOfSubnets {
                            min: config.subnet_min,
                            max: config.subnet_max,
                            len: config.subnet_len,
                        })
                    }
                }
            }
        };
        match registry.create_lease(candidate, &req.attrs, req.ttl).await? {
            Some(lease) => {
                info!(subnet = %lease.subnet, attempt, "acquired a new lease");
                return Ok(lease);
            }
            None => debug!(subnet = %candidate, "lost the race for a subnet; retrying"),
        }
    }
    Err(Error::TooManyConflicts { attempts: max_attempts })
}
