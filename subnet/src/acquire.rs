//! The acquire policy: which subnet a node ends up with.
//!
//! 0. A lease with this node's `PublicIP` held by another host (its
//!    `WeftNodeID` differs) is an error: two hosts with one address are
//!    told apart and said, never fought over.
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
use crate::registry::{Listing, Registry, RenewOutcome};

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

/// What to do with one listing: the policy, pure (the randomness passed in).
#[derive(Debug, PartialEq)]
pub(crate) enum Decision<'a> {
    /// Renew the node's own lease in place.
    Renew(&'a Lease),
    /// Replace the node's own key by one for these subnets, in one
    /// transaction (`why` says what changed).
    Replace { old: &'a Lease, subnet: Option<Ipv4Net>, subnet6: Option<Ipv6Net>, why: &'static str },
    /// Create a key for these subnets.
    Create { subnet: Option<Ipv4Net>, subnet6: Option<Ipv6Net>, previous: Previous },
}

/// What became of the previous `subnet.env`'s subnets in a [`Decision::Create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Previous {
    /// There were none.
    None,
    /// They are asked for again.
    Used,
    /// Someone holds one of them now.
    Taken,
    /// They do not fit the network config (said once, as a warning).
    Unfit,
}

/// The decision for `listing`; see the module doc for the policy.
pub(crate) fn decide<'a, R: rand::Rng + ?Sized>(
    listing: &'a Listing,
    config: &NetworkConfig,
    req: &AcquireRequest,
    rng: &mut R,
) -> Result<Decision<'a>> {
    let holder = req.attrs.holder();
    let free4 = |rng: &mut R| -> Result<Option<Ipv4Net>> {
        match &config.ipv4 {
            None => Ok(None),
            Some(v4) => choose_free_subnet(v4, &listing.taken, rng).map(Some).ok_or_else(|| out_of_v4(config)),
        }
    };
    let free6 = |rng: &mut R| -> Result<Option<Ipv6Net>> {
        match &config.ipv6 {
            None => Ok(None),
            Some(v6) => choose_free_subnet6(v6, &listing.taken6, rng).map(Some).ok_or_else(|| out_of_v6(config)),
        }
    };

    // A lease is this host's when it names no node (flanneld's, or an
    // older weft's) or this one.
    let this_host = |l: &Lease| match (&l.attrs.node_id, &req.attrs.node_id) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    };
    // Another host with this node's address holds a lease: said, never
    // fought over (each would take the other's lease in turn).
    if let Some(other) = listing.leases.iter().find(|l| l.holder() == holder && !this_host(l)) {
        return Err(Error::AddressInUse {
            subnet: other.id(),
            holder: holder.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            other: other.attrs.node_id.clone().unwrap_or_default(),
            own: req.attrs.node_id.clone().unwrap_or_default(),
        });
    }
    // The own lease: same holder, and the subnet that names it still one
    // this config hands out.
    let own = listing.leases.iter().find(|l| {
        l.holder() == holder
            && match &config.ipv4 {
                Some(_) => config.ipv4_fits(l.subnet.as_ref()),
                None => config.ipv6_fits(l.ipv6_subnet.as_ref()),
            }
    });
    if let Some(own) = own {
        if config.ipv6_fits(own.ipv6_subnet.as_ref()) {
            return Ok(Decision::Renew(own));
        }
        // Same IPv4 subnet, new IPv6 part (or none).
        let subnet6 = match (&config.ipv6, req.previous_ipv6_subnet) {
            (Some(v6), Some(p)) if v6.is_leasable(&p) && !listing.taken6.contains(&p) => Some(p),
            _ => free6(rng)?,
        };
        let why = "its IPv6 part did not fit the network config";
        return Ok(Decision::Replace { old: own, subnet: own.subnet, subnet6, why });
    }

    // The own key of the other form: IPv4 was turned off (a dual key on an
    // IPv6-only network) or on again. Keep what still fits of its subnets,
    // choose the rest. Its holder is named by the other family's address:
    // the same node has the same address of either family.
    let same_node = |l: &&Lease| {
        let a = &l.attrs;
        this_host(l)
            && ((a.public_ip.is_some() && a.public_ip == req.attrs.public_ip)
                || (a.public_ipv6.is_some() && a.public_ipv6 == req.attrs.public_ipv6))
    };
    if let Some(old) = listing.other_family.iter().find(same_node) {
        let subnet = match (&config.ipv4, old.subnet) {
            (Some(v4), Some(s)) if v4.is_leasable(&s) && !listing.leases.iter().any(|l| l.subnet == Some(s)) => Some(s),
            _ => free4(rng)?,
        };
        let subnet6 = match (&config.ipv6, old.ipv6_subnet) {
            (Some(v6), Some(s)) if v6.is_leasable(&s) && !listing.leases.iter().any(|l| l.ipv6_subnet == Some(s)) => {
                Some(s)
            }
            _ => free6(rng)?,
        };
        return Ok(Decision::Replace { old, subnet, subnet6, why: "EnableIPv4 changed" });
    }

    let (prev, prev6) = (req.previous_subnet, req.previous_ipv6_subnet);
    let previous = if prev.is_none() && prev6.is_none() {
        Previous::None
    } else if !config.ipv4_fits(prev.as_ref()) || !config.ipv6_fits(prev6.as_ref()) {
        Previous::Unfit
    } else if prev.is_some_and(|p| listing.taken.contains(&p)) || prev6.is_some_and(|p| listing.taken6.contains(&p)) {
        Previous::Taken
    } else {
        Previous::Used
    };
    let (subnet, subnet6) = match previous {
        Previous::Used => (prev, prev6),
        _ => (free4(rng)?, free6(rng)?),
    };
    Ok(Decision::Create { subnet, subnet6, previous })
}

/// Acquire a lease for this node: list, [`decide`], carry it out; a lost
/// race (another writer changed a key since the listing) lists again.
pub async fn acquire_lease(registry: &Registry, config: &NetworkConfig, req: &AcquireRequest) -> Result<Lease> {
    // Every failed attempt means another writer won a subnet or rewrote a
    // key, so the loop ends; the bound only guards against a pathological store.
    let range = config.ipv4.as_ref().map_or(1000, |v4| v4.subnet_count());
    let max_attempts = (range + 16).min(1000) as u32;
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
        // The thread's RNG is not kept across the awaits below.
        let decision = decide(&listing, config, req, &mut rand::rng())?;
        match decision {
            Decision::Renew(own) => match registry.renew_lease(own, &req.attrs, req.ttl).await? {
                RenewOutcome::Renewed(lease) => {
                    info!(subnet = ?lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, "reusing this node's existing lease");
                    return Ok(lease);
                }
                RenewOutcome::Lost(why) => debug!("own lease changed while reusing it ({why}); retrying"),
            },
            Decision::Replace { old, subnet, subnet6, why } => {
                match registry.replace_lease(old, subnet, subnet6, &req.attrs, req.ttl, listing.revision).await? {
                    Some(lease) => {
                        info!(old = %old.key(), new = %lease.key(), "replaced this node's lease: {why}");
                        return Ok(lease);
                    }
                    None => debug!("own lease changed while replacing it; retrying"),
                }
            }
            Decision::Create { subnet, subnet6, previous } => {
                if previous == Previous::Unfit {
                    warn!(subnet = ?req.previous_subnet, ipv6_subnet = ?req.previous_ipv6_subnet, "previous subnet does not fit the network config; choosing another");
                }
                match registry.create_lease(subnet, subnet6, &req.attrs, req.ttl, listing.revision).await? {
                    Some(lease) => {
                        info!(subnet = ?lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, attempt, "acquired a new lease");
                        return Ok(lease);
                    }
                    None => debug!(subnet = ?subnet, ipv6_subnet = ?subnet6, "lost the race for a subnet; retrying"),
                }
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use rand::SeedableRng;

    use super::*;

    const V4: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.3.0"}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.3.0","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64}"#;

    fn lease(config: &NetworkConfig, key: &str, ip: u8) -> Lease {
        let value = format!(r#"{{"PublicIP":"198.18.0.{ip}"}}"#);
        Lease::from_entry(key, value.as_bytes(), config, 0, 1).unwrap()
    }

    fn listing(leases: Vec<Lease>) -> Listing {
        Listing {
            taken: leases.iter().filter_map(|l| l.subnet).collect(),
            taken6: leases.iter().filter_map(|l| l.ipv6_subnet).collect(),
            leases,
            skipped: Vec::new(),
            other_family: Vec::new(),
            revision: 7,
        }
    }

    fn req(ip: u8, prev: Option<&str>, prev6: Option<&str>) -> AcquireRequest {
        AcquireRequest {
            attrs: LeaseAttrs {
                public_ip: Some(Ipv4Addr::new(198, 18, 0, ip)),
                public_ipv6: None,
                backend_type: String::new(),
                backend_data: None,
                backend_v6_data: None,
                node_id: None,
            },
            ttl: Duration::from_secs(60),
            previous_subnet: prev.map(|p| p.parse().unwrap()),
            previous_ipv6_subnet: prev6.map(|p| p.parse().unwrap()),
        }
    }

    fn decide_seeded<'a>(l: &'a Listing, c: &NetworkConfig, r: &AcquireRequest) -> Result<Decision<'a>> {
        decide(l, c, r, &mut rand::rngs::StdRng::seed_from_u64(1))
    }

    #[test]
    fn the_own_lease_is_renewed_and_an_unfit_ipv6_part_replaced() {
        let v4 = NetworkConfig::parse(V4).unwrap();
        let l = listing(vec![lease(&v4, "10.244.2.0-24", 2), lease(&v4, "10.244.3.0-24", 3)]);
        assert_eq!(decide_seeded(&l, &v4, &req(3, None, None)).unwrap(), Decision::Renew(&l.leases[1]));

        // IPv6 turned on since: same IPv4 subnet, a free IPv6 one (the
        // previous subnet.env's when it is free).
        let dual = NetworkConfig::parse(DUAL).unwrap();
        let l = listing(vec![lease(&dual, "10.244.2.0-24", 2)]);
        match decide_seeded(&l, &dual, &req(2, None, Some("fd00:0:0:5::/64"))).unwrap() {
            Decision::Replace { old, subnet, subnet6, .. } => {
                assert_eq!(old, &l.leases[0]);
                assert_eq!(subnet, Some("10.244.2.0/24".parse().unwrap()));
                assert_eq!(subnet6, Some("fd00:0:0:5::/64".parse().unwrap()));
            }
            d => panic!("expected a replacement, got {d:?}"),
        }
    }

    #[test]
    fn without_an_own_lease_the_previous_subnet_then_a_free_one_is_created() {
        let v4 = NetworkConfig::parse(V4).unwrap();
        let l = listing(vec![lease(&v4, "10.244.2.0-24", 2)]);
        let free: BTreeSet<Ipv4Net> = ["10.244.1.0/24", "10.244.3.0/24"].iter().map(|s| s.parse().unwrap()).collect();
        // (previous subnet.env subnet, what becomes of it, the subnet asked for: None = any free one)
        let cases = [
            (None, Previous::None, None),
            (Some("10.244.3.0/24"), Previous::Used, Some("10.244.3.0/24")),
            (Some("10.244.2.0/24"), Previous::Taken, None),
            (Some("10.245.0.0/24"), Previous::Unfit, None),
        ];
        for (prev, want_previous, want_subnet) in cases {
            match decide_seeded(&l, &v4, &req(9, prev, None)).unwrap() {
                Decision::Create { subnet, subnet6, previous } => {
                    assert_eq!(previous, want_previous, "{prev:?}");
                    assert_eq!(subnet6, None);
                    let subnet = subnet.unwrap();
                    match want_subnet {
                        Some(w) => assert_eq!(subnet, w.parse().unwrap(), "{prev:?}"),
                        None => assert!(free.contains(&subnet), "{prev:?}: {subnet} is not free"),
                    }
                }
                d => panic!("{prev:?}: expected a creation, got {d:?}"),
            }
        }
    }

    #[test]
    fn a_full_range_is_out_of_subnets_naming_it() {
        let v4 = NetworkConfig::parse(V4).unwrap();
        let l = listing((1..=3).map(|n| lease(&v4, &format!("10.244.{n}.0-24"), n)).collect());
        let e = decide_seeded(&l, &v4, &req(9, None, None)).unwrap_err();
        assert!(matches!(e, Error::OutOfSubnets { .. }), "{e}");
        assert!(e.to_string().contains("10.244.1.0"), "{e}");
    }

    #[test]
    fn the_own_key_of_the_other_form_is_replaced_keeping_what_fits() {
        // A dual-stack key on what is now an IPv6-only network's listing is
        // the other form; here, the reverse: IPv4 turned on again.
        let dual = NetworkConfig::parse(DUAL).unwrap();
        let old = lease(&dual, "10.244.2.0-24&fd00:0:0:2::-64", 2);
        let mut l = listing(vec![]);
        l.other_family.push(old);
        match decide_seeded(&l, &dual, &req(2, None, None)).unwrap() {
            Decision::Replace { subnet, subnet6, why, .. } => {
                assert_eq!(subnet, Some("10.244.2.0/24".parse().unwrap()));
                assert_eq!(subnet6, Some("fd00:0:0:2::/64".parse().unwrap()));
                assert_eq!(why, "EnableIPv4 changed");
            }
            d => panic!("expected a replacement, got {d:?}"),
        }
    }

    #[test]
    fn a_lease_with_this_address_held_by_another_host_is_an_error_not_taken_over() {
        let v4 = NetworkConfig::parse(V4).unwrap();
        let held = |node: Option<&str>| {
            let mut l = lease(&v4, "10.244.2.0-24", 2);
            l.attrs.node_id = node.map(str::to_owned);
            l
        };
        let mine = |node: Option<&str>| {
            let mut r = req(2, None, None);
            r.attrs.node_id = node.map(str::to_owned);
            r
        };
        // (the lease's node, this node's) -> renewed as this node's own?
        let table = [(Some("aaa"), Some("aaa"), true), (None, Some("aaa"), true), (Some("aaa"), None, true)];
        for (theirs, ours, renewed) in table {
            let l = listing(vec![held(theirs)]);
            let d = decide_seeded(&l, &v4, &mine(ours)).unwrap();
            assert_eq!(d == Decision::Renew(&l.leases[0]), renewed, "{theirs:?} {ours:?}: {d:?}");
        }
        let l = listing(vec![held(Some("aaa"))]);
        let e = decide_seeded(&l, &v4, &mine(Some("bbb"))).unwrap_err().to_string();
        assert!(
            e.contains("another host holds the lease of 10.244.2.0/24 with this node's public address 198.18.0.2"),
            "{e}"
        );
        assert!(e.contains("--public-ip"), "{e}");
    }
}
