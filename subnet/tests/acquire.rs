//! Acquiring and renewing leases against a real etcd.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weft_subnet::Renewer;
use weft_subnet::{acquire_lease, AcquireRequest, Error, EtcdOptions, Lease, LeaseAttrs, NetworkConfig, Registry};
use weft_subnet::{LostReason, RenewOutcome};

const RANGE_16: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","Backend":{"Type":"vxlan"}}"#;

/// Twenty racers acquire at once, each with its own connection as separate
/// nodes would: the winners with their leases, and the errors of those
/// told the range is full (any other error fails the test).
async fn twenty_racers(endpoint: &str, config: &NetworkConfig) -> (Vec<(Ipv4Addr, Lease)>, Vec<String>) {
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let endpoint = endpoint.to_string();
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let reg = registry(&endpoint).await;
            let ip = Ipv4Addr::new(198, 18, 0, 10 + i);
            let req = AcquireRequest { attrs: attrs(ip), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
            (ip, acquire_lease(&reg, &config, &req).await)
        }));
    }
    let mut won = Vec::new();
    let mut out_of_subnets = Vec::new();
    for t in tasks {
        let (ip, res) = t.await.unwrap();
        match res {
            Ok(lease) => won.push((ip, lease)),
            Err(e @ Error::OutOfSubnets { .. }) => out_of_subnets.push(e.to_string()),
            Err(e) => panic!("racer {ip} failed unexpectedly: {e}"),
        }
    }
    (won, out_of_subnets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racers_on_sixteen_subnets() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let (won, out_of_subnets) = twenty_racers(&etcd.endpoint(), &config).await;
    assert_eq!(won.len(), 16, "16 racers get a lease");
    assert_eq!(out_of_subnets.len(), 4, "4 racers are told the range is full");
    for msg in &out_of_subnets {
        assert!(msg.contains("out of subnets") && msg.contains("10.244.1.0 - 10.244.16.0"), "{msg}");
    }
    let distinct: BTreeSet<_> = won.iter().map(|(_, l)| l.subnet).collect();
    assert_eq!(distinct.len(), 16, "no subnet handed out twice");

    // etcd agrees: 16 keys, each held by the racer that was told it won.
    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), 16);
    for (ip, lease) in &won {
        let stored = listing.leases.iter().find(|l| l.subnet == lease.subnet).unwrap();
        assert_eq!(stored.attrs.public_ip, Some(*ip), "{} is held by its winner", lease.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_dual_stack_racers_on_sixteen_ipv6_subnets() {
    // Plenty of IPv4 subnets, 16 IPv6 ones: two racers choosing one IPv6
    // subnet with different IPv4 ones write different keys, so only the
    // transaction's check that nothing was created since the listing keeps
    // them from sharing it.
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let text = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","IPv6SubnetMin":"fd10:244:0:1::","IPv6SubnetMax":"fd10:244:0:10::","Backend":{"Type":"vxlan"}}"#;
    let config = put_config(&reg, text).await;
    let (won, out_of_subnets) = twenty_racers(&etcd.endpoint(), &config).await;
    assert_eq!(won.len(), 16, "16 racers get a lease");
    assert_eq!(out_of_subnets.len(), 4, "4 racers are told the IPv6 range is full: {out_of_subnets:?}");
    for msg in &out_of_subnets {
        assert!(msg.contains("fd10:244:0:1:: - fd10:244:0:10::"), "{msg}");
    }
    let v6: BTreeSet<_> = won.iter().map(|(_, l)| l.ipv6_subnet.expect("dual-stack lease")).collect();
    assert_eq!(v6.len(), 16, "no IPv6 subnet handed out twice: {won:?}");
    let v4: BTreeSet<_> = won.iter().map(|(_, l)| l.subnet.expect("dual-stack lease")).collect();
    assert_eq!(v4.len(), 16, "no IPv4 subnet handed out twice");

    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), 16, "etcd holds the winners' keys only");
    for (ip, lease) in &won {
        let stored = listing.leases.iter().find(|l| l.id() == lease.id()).unwrap();
        assert_eq!((stored.ipv6_subnet, stored.attrs.public_ip), (lease.ipv6_subnet, Some(*ip)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_own_lease_then_previous_subnet() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let ip = Ipv4Addr::new(198, 18, 0, 2);
    let req = AcquireRequest { attrs: attrs(ip), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
    let first = acquire_lease(&reg, &config, &req).await.unwrap();
    let again = acquire_lease(&reg, &config, &req).await.unwrap();
    assert_eq!(again.subnet, first.subnet, "same PublicIP gets its own lease back");
    assert_eq!(reg.list(&config).await.unwrap().leases.len(), 1, "and no second key");

    // The lease is gone (e.g. expired while the node was down), but the
    // node's subnet.env remembers the subnet: it gets it back when free.
    reg.delete_lease(&first.id()).await.unwrap();
    let wanted = "10.244.9.0/24".parse().unwrap();
    let req = AcquireRequest { previous_subnet: Some(wanted), ..req };
    assert_eq!(acquire_lease(&reg, &config, &req).await.unwrap().subnet, Some(wanted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_never_overwrites_a_subnet_taken_over_by_another_node() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let a = Ipv4Addr::new(198, 18, 0, 2);
    let b = Ipv4Addr::new(198, 18, 0, 3);
    let lease_a = acquire_lease(
        &reg,
        &config,
        &AcquireRequest { attrs: attrs(a), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None },
    )
    .await
    .unwrap();

    // A is away; its lease goes, and B takes the subnet.
    reg.delete_lease(&lease_a.id()).await.unwrap();
    let now = reg.list(&config).await.unwrap().revision;
    let lease_b = reg.create_lease(lease_a.subnet, None, &attrs(b), HOUR, now).await.unwrap().expect("subnet is free");

    let outcome = reg.renew_lease(&lease_a, &attrs(a), HOUR).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Lost(LostReason::TakenOver { subnet: lease_a.id(), holder: b.to_string() }));
    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.leases[0].attrs.public_ip, Some(b), "B still holds the subnet");
    assert_eq!(listing.leases[0].mod_revision, lease_b.mod_revision, "B's entry untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewer_keeps_the_lease_alive_and_reports_its_loss() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let ip = Ipv4Addr::new(198, 18, 0, 2);
    // TTL 3 s, renewed 2 s before expiry: a renewal every second.
    let ttl = Duration::from_secs(3);
    let lease = acquire_lease(
        &reg,
        &config,
        &AcquireRequest { attrs: attrs(ip), ttl, previous_subnet: None, previous_ipv6_subnet: None },
    )
    .await
    .unwrap();
    let mut renewer = Renewer::new(reg.clone(), lease.clone(), ttl, Duration::from_secs(2));

    // Well past the original TTL, the lease is still there, renewed.
    let outcome = tokio::time::timeout(Duration::from_secs(6), renewer.run()).await;
    assert!(outcome.is_err(), "renewer kept running: {outcome:?}");
    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), 1, "lease survived two TTLs");
    assert!(listing.leases[0].mod_revision > lease.mod_revision, "it was rewritten");

    // Now it disappears out from under the node: the renewer says so.
    reg.delete_lease(&lease.id()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), renewer.run()).await.expect("renewer noticed");
    assert_eq!(reason, LostReason::Removed { subnet: lease.id() });
    assert!(reg.list(&config).await.unwrap().leases.is_empty(), "and did not recreate it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let req = AcquireRequest {
        attrs: attrs(Ipv4Addr::new(198, 18, 0, 2)),
        ttl: Duration::from_secs(2),
        previous_subnet: None,
        previous_ipv6_subnet: None,
    };
    let lease = acquire_lease(&reg, &config, &req).await.unwrap();
    let mut listing = reg.list(&config).await.unwrap();
    reg.fill_ttls(&mut listing.leases).await.unwrap();
    assert!(listing.leases[0].ttl.unwrap() <= Duration::from_secs(2));
    weft_lab::wait_until_async("the lease to expire", Duration::from_secs(10), || async {
        reg.list(&config).await.unwrap().leases.is_empty().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        reg.renew_lease(&lease, &req.attrs, HOUR).await.unwrap(),
        RenewOutcome::Lost(LostReason::Removed { subnet: lease.id() })
    );
}

/// A renewal that commits but whose reply never arrives must not delete the
/// key it just wrote (revoking the new etcd lease would): the key is still
/// there, attached to a live etcd lease, and the next renewal succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_whose_reply_is_lost_keeps_the_lease() {
    let etcd = etcd();
    let direct = registry(&etcd.endpoint()).await;
    let config = put_config(&direct, RANGE_16).await;
    let proxy = weft_lab::TcpProxy::start(etcd.addr()).await.unwrap();
    let mut opts = EtcdOptions::new(vec![proxy.endpoint()]);
    opts.timeout = Duration::from_secs(1);
    let reg = Registry::connect(opts).await.unwrap();
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    let req = AcquireRequest { attrs: attrs(ip), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
    let lease = acquire_lease(&reg, &config, &req).await.unwrap();

    proxy.mute_from_request_with(reg.lease_key(&lease.id()).as_bytes());
    let err = reg.renew_lease(&lease, &lease.attrs, HOUR).await.unwrap_err();
    let kv = direct.client().get(reg.lease_key(&lease.id()), None).await.unwrap();
    let kv = kv.kvs().first().unwrap_or_else(|| panic!("the key was deleted after the renewal error: {err}"));
    assert_ne!(kv.lease(), lease.etcd_lease, "the renewal did commit (a new etcd lease)");
    let ttl = direct.client().lease_time_to_live(kv.lease(), None).await.unwrap().ttl();
    assert!(ttl > 3000, "the key's etcd lease is alive: ttl {ttl}");

    proxy.cut();
    proxy.restore();
    let renewed =
        weft_lab::wait_until_async("a renewal through the restored proxy", Duration::from_secs(10), || async {
            match reg.renew_lease(&lease, &lease.attrs, HOUR).await {
                Ok(RenewOutcome::Renewed(l)) => Some(l),
                _ => None,
            }
        })
        .await
        .unwrap();
    assert_eq!(renewed.subnet, lease.subnet);
    let kv = direct.client().get(reg.lease_key(&lease.id()), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), renewed.etcd_lease);
}

const DUAL: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// The key names under `<prefix>/subnets/`, as etcd holds them.
async fn key_names(reg: &Registry) -> Vec<String> {
    let prefix = reg.subnets_prefix();
    let kvs = reg.client().get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    kvs.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).trim_start_matches(&prefix).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_leases_have_one_key_for_both_families() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, DUAL).await;
    let mut seen6 = BTreeSet::new();
    for i in 0..8u8 {
        let mut a = attrs(Ipv4Addr::new(198, 18, 0, 10 + i));
        a.public_ipv6 = Some(format!("fd00:198:18::{}", 10 + i).parse().unwrap());
        let req = AcquireRequest { attrs: a, ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
        let lease = acquire_lease(&reg, &config, &req).await.unwrap();
        let v6 = lease.ipv6_subnet.expect("a dual-stack lease has an IPv6 subnet");
        assert!(config.ipv6.as_ref().unwrap().is_leasable(&v6), "{v6}");
        assert!(seen6.insert(v6), "{v6} handed out twice");
        // Restarting gives the same key back, renewed in place.
        let again = acquire_lease(&reg, &config, &req).await.unwrap();
        assert_eq!((again.subnet, again.ipv6_subnet), (lease.subnet, lease.ipv6_subnet));
    }
    let keys = key_names(&reg).await;
    assert_eq!(keys.len(), 8, "{keys:?}");
    for k in &keys {
        // flanneld's form: 10.244.N.0-24&fd10:244:0:M::-64
        let (v4, v6) = k.split_once('&').unwrap_or_else(|| panic!("{k} has no IPv6 part"));
        assert!(v4.starts_with("10.244.") && v4.ends_with(".0-24"), "{k}");
        assert!(v6.starts_with("fd10:244:0:") && v6.ends_with("::-64"), "{k}");
    }
    let listing = reg.list(&config).await.unwrap();
    assert!(listing.skipped.is_empty(), "{:?}", listing.skipped);
    let value = reg.client().get(reg.subnets_prefix() + &keys[0], None).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(value.kvs()[0].value()).unwrap();
    assert!(json["PublicIPv6"].as_str().unwrap().starts_with("fd00:198:18::"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_ipv6_on_replaces_the_v4_key_and_off_again_replaces_it_back() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let v4_config = put_config(&reg, RANGE_16).await;
    let ip = Ipv4Addr::new(198, 18, 0, 2);
    let req = AcquireRequest { attrs: attrs(ip), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
    let v4 = acquire_lease(&reg, &v4_config, &req).await.unwrap();
    assert_eq!(key_names(&reg).await, [v4.key()]);

    let dual = put_config(
        &reg,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    // The previous subnet.env had an IPv6 subnet: it is taken when free.
    let wanted6 = "fd10:244:0:7::/64".parse().unwrap();
    let req6 = AcquireRequest { previous_ipv6_subnet: Some(wanted6), ..req.clone() };
    let both = acquire_lease(&reg, &dual, &req6).await.unwrap();
    assert_eq!(both.subnet, v4.subnet, "the IPv4 subnet is kept");
    assert_eq!(both.ipv6_subnet, Some(wanted6));
    assert_eq!(
        key_names(&reg).await,
        [format!("{}-24&fd10:244:0:7::-64", v4.subnet.unwrap().network())],
        "one key, dual"
    );

    let back = acquire_lease(&reg, &v4_config, &req).await.unwrap();
    assert_eq!((back.subnet, back.ipv6_subnet), (v4.subnet, None));
    assert_eq!(key_names(&reg).await, [v4.key()], "IPv6 off: the v4-only key again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_held_under_either_key_form_is_not_handed_out_again() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, DUAL).await;
    let v4: ipnet::Ipv4Net = "10.244.5.0/24".parse().unwrap();
    let subnet = Some(v4);
    let (a2, a3) = (attrs(Ipv4Addr::new(198, 18, 0, 2)), attrs(Ipv4Addr::new(198, 18, 0, 3)));
    let listed_before = reg.list(&config).await.unwrap().revision;
    let a = reg.create_lease(subnet, Some("fd10:244:0:5::/64".parse().unwrap()), &a2, HOUR, listed_before);
    assert!(a.await.unwrap().is_some());
    let now = reg.list(&config).await.unwrap().revision;
    // Same IPv4 subnet, other IPv6 subnet, or none: both refused.
    let b = reg.create_lease(subnet, Some("fd10:244:0:6::/64".parse().unwrap()), &a3, HOUR, now);
    assert!(b.await.unwrap().is_none(), "a second dual key for the same IPv4 subnet");
    let c = reg.create_lease(subnet, None, &a3, HOUR, now);
    assert!(c.await.unwrap().is_none(), "a v4-only key for a subnet held by a dual key");
    // Other IPv4 subnet, same IPv6 subnet, chosen from a listing taken
    // before the dual key was created: refused, it may be taken.
    let other_v4 = Some("10.244.6.0/24".parse().unwrap());
    let d = reg.create_lease(other_v4, Some("fd10:244:0:5::/64".parse().unwrap()), &a3, HOUR, listed_before);
    assert!(d.await.unwrap().is_none(), "an IPv6 subnet chosen from a stale listing");
    assert_eq!(key_names(&reg).await, ["10.244.5.0-24&fd10:244:0:5::-64"]);
    // The previous subnet.env of another node names the same subnets: it gets others.
    let req = AcquireRequest {
        attrs: attrs(Ipv4Addr::new(198, 18, 0, 4)),
        ttl: HOUR,
        previous_subnet: subnet,
        previous_ipv6_subnet: Some("fd10:244:0:5::/64".parse().unwrap()),
    };
    let other = acquire_lease(&reg, &config, &req).await.unwrap();
    assert_ne!(other.subnet, subnet);
    assert_ne!(other.ipv6_subnet, Some("fd10:244:0:5::/64".parse().unwrap()));
    reg.delete_lease(&v4.into()).await.unwrap();
    assert_eq!(key_names(&reg).await, [other.key()], "delete_lease removes the dual key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_leases_are_keyed_by_their_ipv6_subnet() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(
        &reg,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","IPv6SubnetMax":"fd10:244:0:3::"}"#,
    )
    .await;
    let attrs6 = |n: u8| LeaseAttrs {
        public_ip: None,
        public_ipv6: Some(format!("fd00:198:18::{n}").parse().unwrap()),
        ..attrs(Ipv4Addr::UNSPECIFIED)
    };
    let req = |n: u8| AcquireRequest { attrs: attrs6(n), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
    let mut seen = BTreeSet::new();
    for n in 1..=3 {
        let lease = acquire_lease(&reg, &config, &req(n)).await.unwrap();
        assert_eq!(lease.subnet, None);
        let v6 = lease.ipv6_subnet.expect("an IPv6 subnet");
        assert!(seen.insert(v6), "{v6} handed out twice");
        // Restarting (same PublicIPv6) gives the same key back, renewed in place.
        let again = acquire_lease(&reg, &config, &req(n)).await.unwrap();
        assert_eq!(again.ipv6_subnet, Some(v6));
    }
    let mut keys = key_names(&reg).await;
    keys.sort();
    assert_eq!(keys, ["fd10:244:0:1::-64", "fd10:244:0:2::-64", "fd10:244:0:3::-64"]);
    let value = reg.client().get(reg.full_key(None, seen.first()), None).await.unwrap();
    let text = String::from_utf8_lossy(value.kvs()[0].value()).into_owned();
    assert!(!text.contains("PublicIP\""), "no PublicIP in an IPv6-only lease: {text}");
    // The range is full: a fourth node is told so.
    let e = acquire_lease(&reg, &config, &req(4)).await.unwrap_err().to_string();
    assert!(e.contains("out of subnets"), "{e}");
    // A freed subnet named by a previous subnet.env is taken again.
    let freed = *seen.first().unwrap();
    reg.delete_lease(&freed.into()).await.unwrap();
    let back = AcquireRequest { previous_ipv6_subnet: Some(freed), ..req(5) };
    assert_eq!(acquire_lease(&reg, &config, &back).await.unwrap().ipv6_subnet, Some(freed));
    // The listing sees three leases, none skipped.
    let listing = reg.list(&config).await.unwrap();
    assert_eq!((listing.leases.len(), listing.skipped.len()), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_ipv4_off_replaces_the_dual_key_keeping_the_ipv6_subnet_and_on_again_back() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let dual = put_config(&reg, DUAL).await;
    let mut a = attrs(Ipv4Addr::new(198, 18, 0, 2));
    a.public_ipv6 = Some("fd00:198:18::2".parse().unwrap());
    let req = AcquireRequest { attrs: a.clone(), ttl: HOUR, previous_subnet: None, previous_ipv6_subnet: None };
    let both = acquire_lease(&reg, &dual, &req).await.unwrap();
    let v6 = both.ipv6_subnet.unwrap();

    let only6 = put_config(&reg, r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#).await;
    let req6 = AcquireRequest { attrs: LeaseAttrs { public_ip: None, ..a.clone() }, ..req.clone() };
    let lease = acquire_lease(&reg, &only6, &req6).await.unwrap();
    assert_eq!((lease.subnet, lease.ipv6_subnet), (None, Some(v6)), "the IPv6 subnet is kept");
    assert_eq!(key_names(&reg).await, [format!("{}-64", v6.network())], "one key, IPv6 alone");

    // IPv4 on again: a dual key with the same IPv6 subnet and an IPv4 one.
    let again = acquire_lease(&reg, &dual, &req).await.unwrap();
    assert_eq!(again.ipv6_subnet, Some(v6));
    assert!(again.subnet.is_some());
    assert_eq!(key_names(&reg).await, [again.key()], "one key, dual");
}

/// Three values of 1.4 MiB under the subnets prefix (near etcd's request
/// limit) among ordinary leases: one listing page of them is larger than
/// gRPC's 4 MiB reply, which made every listing (and every `weft run`
/// start) fail. The listing asks for smaller pages instead, skips the
/// huge values with why, and a node still acquires a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_among_the_leases_are_skipped_and_a_node_still_acquires() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, RANGE_16).await;
    let mut kv = reg.client();
    let huge = format!(r#"{{"PublicIP":"198.18.0.99","BackendType":"vxlan","Junk":"{}"}}"#, "x".repeat(1_400_000));
    for n in 1..=3 {
        kv.put(format!("/coreos.com/network/subnets/10.244.{n}.0-24"), huge.clone(), None).await.unwrap();
    }
    for n in 4..=6 {
        let req = AcquireRequest {
            attrs: attrs(Ipv4Addr::new(198, 18, 0, n)),
            ttl: HOUR,
            previous_subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            previous_ipv6_subnet: None,
        };
        acquire_lease(&reg, &config, &req).await.unwrap();
    }
    let listing = reg.list(&config).await.expect("the listing copes with huge values");
    assert_eq!(listing.leases.len(), 3, "the three ordinary leases");
    assert_eq!(listing.skipped.len(), 3);
    assert!(
        listing.skipped.iter().all(|(_, e)| e.to_string().contains("more than a lease ever needs")),
        "{:?}",
        listing.skipped
    );
    // Their subnets still count as taken: a new node gets another one.
    let req = AcquireRequest {
        attrs: attrs(Ipv4Addr::new(198, 18, 0, 7)),
        ttl: HOUR,
        previous_subnet: None,
        previous_ipv6_subnet: None,
    };
    let lease = acquire_lease(&reg, &config, &req).await.unwrap();
    assert!(!(1..=6).any(|n| lease.subnet == Some(format!("10.244.{n}.0/24").parse().unwrap())), "{lease:?}");
}
