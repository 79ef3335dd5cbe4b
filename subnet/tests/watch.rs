//! Watching the lease table against a real etcd, through outages,
//! compaction and garbage.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use ipnet::Ipv4Net;
use weft_lab::TcpProxy;
use weft_subnet::{LeaseEvent, LeaseWatch, Registry};

const NET: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn add(reg: &Registry, subnet: &str, host: u8) {
    // IPv4 only: the listing revision does not matter.
    reg.create_lease(Some(net(subnet)), None, &attrs(Ipv4Addr::new(198, 18, 0, host)), HOUR, 0)
        .await
        .unwrap()
        .expect("subnet free");
}

/// Collect events until the watch's table holds exactly `want`, or fail.
async fn events_until(watch: &mut LeaseWatch, want: &[&str]) -> Vec<LeaseEvent> {
    let want: Vec<Ipv4Net> = want.iter().map(|s| net(s)).collect();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let have: Vec<Ipv4Net> = watch.leases().filter_map(|l| l.subnet).collect();
        if have == want {
            return events;
        }
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(batch) => events.extend(batch),
            Err(_) => {
                panic!("watch table is {have:?}, expected {want:?}; events so far {events:?}")
            }
        }
    }
}

/// Summarise events as ("+"/"-", subnet), sorted.
fn summary(events: &[LeaseEvent]) -> Vec<(char, Ipv4Net)> {
    let mut s: Vec<_> = events
        .iter()
        .map(|e| match e {
            LeaseEvent::Added(l) => ('+', l.subnet.expect("an IPv4 lease")),
            LeaseEvent::Removed(l) => ('-', l.subnet.expect("an IPv4 lease")),
        })
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_adds_and_removes() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, NET).await;
    add(&reg, "10.244.1.0/24", 1).await;
    let mut watch = LeaseWatch::start(reg.clone(), config).await.unwrap();
    assert_eq!(watch.leases().count(), 1);

    add(&reg, "10.244.2.0/24", 2).await;
    let ev = events_until(&mut watch, &["10.244.1.0/24", "10.244.2.0/24"]).await;
    assert_eq!(summary(&ev), vec![('+', net("10.244.2.0/24"))]);
    assert_eq!(ev[0].lease().attrs.public_ip, Some(Ipv4Addr::new(198, 18, 0, 2)));

    reg.delete_lease(&net("10.244.1.0/24").into()).await.unwrap();
    let ev = events_until(&mut watch, &["10.244.2.0/24"]).await;
    assert_eq!(summary(&ev), vec![('-', net("10.244.1.0/24"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_recovers_from_outage_and_compaction_with_exact_differences() {
    let etcd = etcd();
    let direct = registry(&etcd.endpoint()).await;
    let config = put_config(&direct, NET).await;
    add(&direct, "10.244.1.0/24", 1).await;
    add(&direct, "10.244.2.0/24", 2).await;

    // The watcher reaches etcd through a proxy that the test can cut.
    let proxy = TcpProxy::start(etcd.addr()).await.unwrap();
    let via_proxy = registry(&proxy.endpoint()).await;
    let mut watch = LeaseWatch::start(via_proxy, config.clone()).await.unwrap();
    assert_eq!(watch.leases().count(), 2);

    // Outage 1: changes happen and history is compacted while away.
    proxy.cut();
    let pending = tokio::spawn(async move {
        let ev = watch.next().await; // runs into the outage and must survive it
        (watch, ev)
    });
    direct.delete_lease(&net("10.244.1.0/24").into()).await.unwrap();
    add(&direct, "10.244.3.0/24", 3).await;
    add(&direct, "10.244.4.0/24", 4).await;
    direct.delete_lease(&net("10.244.4.0/24").into()).await.unwrap(); // added and removed while away
    add(&direct, "10.244.5.0/24", 5).await;
    let rev = direct.list(&config).await.unwrap().revision;
    direct.client().compact(rev, None).await.expect("compact");
    tokio::time::sleep(Duration::from_millis(300)).await; // let the watcher hit the outage
    proxy.restore();

    let (mut watch, first) = pending.await.unwrap();
    let mut events = first;
    events.extend(events_until(&mut watch, &["10.244.2.0/24", "10.244.3.0/24", "10.244.5.0/24"]).await);
    assert_eq!(
        summary(&events),
        vec![('+', net("10.244.3.0/24")), ('+', net("10.244.5.0/24")), ('-', net("10.244.1.0/24"))],
        "exactly the differences, including the removal that happened while away"
    );
    assert_eq!(watch.relists(), 1, "recovered by listing again after compaction");

    // Outage 2, no compaction: etcd replays the missed events.
    proxy.cut();
    let pending = tokio::spawn(async move {
        let ev = watch.next().await;
        (watch, ev)
    });
    direct.delete_lease(&net("10.244.3.0/24").into()).await.unwrap();
    add(&direct, "10.244.6.0/24", 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let (mut watch, first) = pending.await.unwrap();
    let mut events = first;
    events.extend(events_until(&mut watch, &["10.244.2.0/24", "10.244.5.0/24", "10.244.6.0/24"]).await);
    assert_eq!(summary(&events), vec![('+', net("10.244.6.0/24")), ('-', net("10.244.3.0/24"))]);
    assert_eq!(watch.relists(), 1, "recovered by replay, no second listing");

    // And the table matches etcd's.
    let truth: BTreeMap<_, _> =
        direct.list(&config).await.unwrap().leases.into_iter().map(|l| (l.subnet, l.attrs)).collect();
    let seen: BTreeMap<_, _> = watch.leases().map(|l| (l.subnet, l.attrs.clone())).collect();
    assert_eq!(seen, truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_skipped_not_fatal() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, NET).await;
    let mut kv = reg.client();
    let p = reg.subnets_prefix();
    kv.put(format!("{p}garbage"), "x", None).await.unwrap();
    kv.put(format!("{p}10.244.7.0-24"), "{not json", None).await.unwrap();
    kv.put(format!("{p}10.99.0.0-24"), r#"{"PublicIP":"198.18.0.9"}"#, None).await.unwrap(); // outside network
    kv.put(format!("{p}10.244.8.0-24"), r#"{"PublicIP":"not-an-ip"}"#, None).await.unwrap();
    add(&reg, "10.244.1.0/24", 1).await;

    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.skipped.len(), 4, "{:?}", listing.skipped);
    assert!(listing.taken.contains(&net("10.244.7.0/24")), "a garbled key still occupies its subnet");

    let mut watch = LeaseWatch::start(reg.clone(), config.clone()).await.unwrap();
    assert_eq!(watch.leases().count(), 1);
    // Garbage arriving during the watch is skipped; the watch goes on.
    kv.put(format!("{p}10.244.9.0-24"), "[]", None).await.unwrap();
    kv.put(format!("{p}also-garbage"), "{}", None).await.unwrap();
    add(&reg, "10.244.2.0/24", 2).await;
    let ev = events_until(&mut watch, &["10.244.1.0/24", "10.244.2.0/24"]).await;
    assert_eq!(summary(&ev), vec![('+', net("10.244.2.0/24"))]);

    // A valid lease overwritten with garbage stops being a usable lease.
    kv.put(format!("{p}10.244.2.0-24"), "garbage", None).await.unwrap();
    let ev = events_until(&mut watch, &["10.244.1.0/24"]).await;
    assert_eq!(summary(&ev), vec![('-', net("10.244.2.0/24"))]);
}

/// More leases than fit in one gRPC reply (4 MiB): 40,000 vxlan leases of a
/// /8, about 7 MB. The listing (paged, at one revision) holds every one, a
/// watch starts from it, and a lease added afterwards is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_larger_than_a_grpc_reply_is_complete() {
    const N: u32 = 40_000;
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let config = put_config(&reg, r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#).await;
    let mut client = reg.client();
    let prefix = reg.subnets_prefix();
    let value = |i: u32| {
        let ip = Ipv4Addr::from(0xc612_0000 + i); // 198.18.x.y
        let a = attrs(ip);
        serde_json::to_string(&a).unwrap()
    };
    let mut bytes = 0;
    for chunk in (1..=N).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|i| {
                let subnet = Ipv4Addr::from(0x0a00_0000 + (i << 8));
                let (k, v) = (format!("{prefix}{subnet}-24"), value(*i));
                bytes += k.len() + v.len();
                etcd_client::TxnOp::put(k, v, None)
            })
            .collect();
        client.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
    assert!(bytes > 4 * 1024 * 1024, "the leases must not fit in one reply: {bytes} bytes");

    let listing = reg.list(&config).await.unwrap();
    assert_eq!(listing.leases.len(), N as usize, "every lease listed");
    assert!(listing.skipped.is_empty());
    let distinct: std::collections::BTreeSet<_> = listing.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(distinct.len(), N as usize, "no lease listed twice");
    let mut watch = LeaseWatch::start(reg.clone(), config.clone()).await.unwrap();
    assert_eq!(watch.leases().count(), N as usize);
    add(&reg, "10.255.0.0/24", 9).await;
    let events = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("the new lease is seen");
    assert!(matches!(&events[..], [LeaseEvent::Added(l)] if l.subnet == Some(net("10.255.0.0/24"))), "{events:?}");
}

/// Two keys for one subnet (`10.244.3.0-24` and its dual-stack form): the
/// older is the lease, from a listing and from the watch alike; garbage
/// written at the other key removes nothing; once the older key is
/// deleted, the other takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_keys_for_one_subnet_the_older_wins_and_only_its_own_key_removes_it() {
    let etcd = etcd();
    let reg = registry(&etcd.endpoint()).await;
    let dual =
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;
    let config = put_config(&reg, dual).await;
    let mut kv = reg.client();
    let p = reg.subnets_prefix();
    let (v4_key, dual_key) = (format!("{p}10.244.3.0-24"), format!("{p}10.244.3.0-24&fd10:244:0:3::-64"));
    let value = |host: u8| format!(r#"{{"PublicIP":"198.18.0.{host}","PublicIPv6":null,"BackendType":"vxlan"}}"#);
    kv.put(v4_key.clone(), value(3), None).await.unwrap();
    let mut watch = LeaseWatch::start(reg.clone(), config.clone()).await.unwrap();
    let holder = |watch: &LeaseWatch| {
        watch.leases().find(|l| l.subnet == Some(net("10.244.3.0/24"))).and_then(|l| l.attrs.public_ip)
    };

    // The newer key: not used. A lease added after it marks when the
    // watch has seen it.
    kv.put(dual_key.clone(), value(33), None).await.unwrap();
    add(&reg, "10.244.4.0/24", 4).await;
    events_until(&mut watch, &["10.244.3.0/24", "10.244.4.0/24"]).await;
    assert_eq!(holder(&watch), Some(Ipv4Addr::new(198, 18, 0, 3)));
    let listed = LeaseWatch::start(reg.clone(), config.clone()).await.unwrap();
    assert_eq!(holder(&listed), Some(Ipv4Addr::new(198, 18, 0, 3)), "a listing picks the same one");

    // Garbage at the newer key removes nothing.
    kv.put(dual_key.clone(), "garbage", None).await.unwrap();
    add(&reg, "10.244.5.0/24", 5).await;
    events_until(&mut watch, &["10.244.3.0/24", "10.244.4.0/24", "10.244.5.0/24"]).await;
    assert_eq!(holder(&watch), Some(Ipv4Addr::new(198, 18, 0, 3)));

    // The older key deleted: the other (valid again) takes its place.
    kv.put(dual_key.clone(), value(33), None).await.unwrap();
    kv.delete(v4_key.clone(), None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while holder(&watch) != Some(Ipv4Addr::new(198, 18, 0, 33)) {
        tokio::time::timeout_at(deadline, watch.next()).await.expect("the other key to take over");
    }
}
