//! Choosing a free subnet. Pure: the caller passes the taken set and a
//! source of randomness.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use rand::RngExt;

use crate::config::NetworkConfig;

/// Pick a random subnet in `[SubnetMin, SubnetMax]` that is not in `taken`,
/// or `None` when the range is full.
///
/// Random probes first (cheap when the range is mostly free, and it spreads
/// concurrent acquirers over the range so they rarely collide); then a scan
/// from a random start, so a nearly full range is still found to have a hole.
pub fn choose_free_subnet<R: rand::Rng + ?Sized>(
    config: &NetworkConfig,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn config(min: &str, max: &str) -> NetworkConfig {
        NetworkConfig::parse(&format!(r#"{{"Network":"10.244.0.0/16","SubnetMin":"{min}","SubnetMax":"{max}"}}"#))
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
    fn ignores_taken_subnets_outside_the_range() {
        let c = config("10.244.1.0", "10.244.1.0");
        let taken: BTreeSet<Ipv4Net> = ["10.244.2.0/24".parse().unwrap()].into();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose_free_subnet(&c, &taken, &mut rng), Some("10.244.1.0/24".parse().unwrap()));
    }
}
