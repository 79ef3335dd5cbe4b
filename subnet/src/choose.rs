//! Choosing a free subnet. Pure: the caller passes the taken set and a
//! source of randomness.

use std::collections::BTreeSet;

use ipnet::{Ipv4Net, Ipv6Net};
use rand::RngExt;

use crate::config::{Ipv4Settings, Ipv6Settings};

/// How many free IPv6 subnets, counted from `IPv6SubnetMin`, the random
/// choice is made among (flanneld's number).
const V6_CANDIDATES: usize = 100;

/// Pick a random subnet in `[SubnetMin, SubnetMax]` that is not in `taken`,
/// or `None` when the range is full.
///
/// Random probes first (cheap when the range is mostly free, and it spreads
/// concurrent acquirers over the range so they rarely collide); then a scan
/// from a random start, so a nearly full range is still found to have a hole.
pub(crate) fn choose_free_subnet<R: rand::Rng + ?Sized>(
    config: &Ipv4Settings,
    taken: &BTreeSet<Ipv4Net>,
    rng: &mut R,
) -> Option<Ipv4Net> {
    let count = config.subnet_count();
    if count == 0 {
        return None;
    }
    for _ in 0..32 {
        let candidate = config.nth_subnet(rng.random_range(0..count))?;
        if !taken.contains(&candidate) {
            return Some(candidate);
        }
    }
    // Scanning is bounded by the taken set: at most taken.len() + 1 probes
    // until a hole, and the range cannot have more taken subnets than that.
    let start = rng.random_range(0..count);
    let limit = count.min(taken.len() as u64 + 1);
    (0..limit).map(|i| (start + i) % count).filter_map(|i| config.nth_subnet(i)).find(|s| !taken.contains(s))
}

/// Pick an IPv6 subnet that is not in `taken`, as flanneld does: at random
/// among the first [`V6_CANDIDATES`] free ones from `IPv6SubnetMin`, or
/// `None` when the range is full. The walk is bounded by the taken set, so
/// it stays short even in a range of 2^64 subnets.
pub(crate) fn choose_free_subnet6<R: rand::Rng + ?Sized>(
    v6: &Ipv6Settings,
    taken: &BTreeSet<Ipv6Net>,
    rng: &mut R,
) -> Option<Ipv6Net> {
    let mut free = Vec::with_capacity(V6_CANDIDATES);
    let mut next = Some(v6.first_subnet());
    while let Some(subnet) = next {
        if free.len() == V6_CANDIDATES {
            break;
        }
        if !taken.contains(&subnet) {
            free.push(subnet);
        }
        next = v6.next_subnet(subnet);
    }
    if free.is_empty() {
        return None;
    }
    Some(free[rng.random_range(0..free.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::config::NetworkConfig;

    fn config(min: &str, max: &str) -> Ipv4Settings {
        NetworkConfig::parse(&format!(r#"{{"Network":"10.244.0.0/16","SubnetMin":"{min}","SubnetMax":"{max}"}}"#))
            .unwrap()
            .ipv4
            .unwrap()
    }

    #[test]
    fn fills_the_range_without_duplicates_then_reports_full() {
        let c = config("10.244.1.0", "10.244.16.0");
        let mut rng = StdRng::seed_from_u64(1);
        let mut taken = BTreeSet::new();
        for _ in 0..16 {
            let s = choose_free_subnet(&c, &taken, &mut rng).expect("range has room");
            assert!(c.is_leasable(&s));
            assert!(taken.insert(s), "{s} chosen twice");
        }
        assert_eq!(choose_free_subnet(&c, &taken, &mut rng), None);
    }

    #[test]
    fn finds_the_last_hole() {
        let c = config("10.244.1.0", "10.244.255.0");
        let mut taken: BTreeSet<_> = (0..c.subnet_count()).filter_map(|i| c.nth_subnet(i)).collect();
        let hole: Ipv4Net = "10.244.77.0/24".parse().unwrap();
        taken.remove(&hole);
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            assert_eq!(choose_free_subnet(&c, &taken, &mut rng), Some(hole));
        }
    }

    #[test]
    fn v6_choice_is_among_the_first_free_and_ends_when_full() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","IPv6SubnetMax":"fd10:244:0:4::"}"#,
        )
        .unwrap();
        let v6 = c.ipv6.unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut taken = BTreeSet::new();
        for _ in 0..4 {
            let s = choose_free_subnet6(&v6, &taken, &mut rng).expect("range has room");
            assert!(v6.is_leasable(&s), "{s}");
            assert!(taken.insert(s), "{s} chosen twice");
        }
        let all: Vec<String> = taken.iter().map(ToString::to_string).collect();
        assert_eq!(all, ["fd10:244:0:1::/64", "fd10:244:0:2::/64", "fd10:244:0:3::/64", "fd10:244:0:4::/64"]);
        assert_eq!(choose_free_subnet6(&v6, &taken, &mut rng), None);

        // A range of 2^64 subnets: the walk stops after the first 100 free.
        let big = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/32","IPv6SubnetLen":96}"#,
        )
        .unwrap()
        .ipv6
        .unwrap();
        let s = choose_free_subnet6(&big, &BTreeSet::new(), &mut rng).unwrap();
        assert!(u128::from(s.network()) - u128::from(big.subnet_min) < 100 << 32, "{s}");
    }

    #[test]
    fn ignores_taken_subnets_outside_the_range() {
        let c = config("10.244.1.0", "10.244.1.0");
        let taken: BTreeSet<Ipv4Net> = ["10.244.2.0/24".parse().unwrap()].into();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose_free_subnet(&c, &taken, &mut rng), Some("10.244.1.0/24".parse().unwrap()));
    }
}
