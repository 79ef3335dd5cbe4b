//! The backends against real kernel objects in a throwaway network
//! namespace: they converge, they are idempotent, they only touch their own.

use std::net::Ipv4Addr;
use std::process::Command;

use std::time::Duration;

use weft_dataplane::{Dataplane, DataplaneConfig, DualStack, IfaceRequest, ObjectKind, Peer};
use weft_lab::netns;
use weft_types::{BackendConfig, VxlanOptions};

/// A namespace with `eth0` (198.18.0.1/24, one end of a veth) and a foreign route.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        netns::sweep_stale();
        let name = format!("{}{}-dp-{tag}", netns::NS_PREFIX, std::process::id());
        netns::add(&name).unwrap();
        netns::ip(&["-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]).unwrap();
        netns::ip(&["-n", &name, "addr", "add", "198.18.0.1/24", "dev", "eth0"]).unwrap();
        netns::ip(&["-n", &name, "link", "set", "eth0", "up"]).unwrap();
        netns::ip(&["-n", &name, "link", "set", "peer0", "up"]).unwrap();
        netns::ip(&["-n", &name, "route", "add", "10.244.99.0/24", "via", "198.18.0.99", "dev", "eth0"]).unwrap();
        Ns(name)
    }

    fn show(&self, args: &[&str]) -> String {
        let out = netns::run(Command::new("ip").args(["-n", &self.0]).args(args)).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fdb(&self) -> String {
        let out = netns::run(netns::exec(&self.0, "bridge").args(["fdb", "show", "dev", "flannel.1"])).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run an async block on a runtime whose thread lives in this namespace.
    fn block_on<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        netns::in_netns(&self.0, move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
        })
        .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        netns::del(&self.0);
    }
}

fn peer(n: u8, mac: bool) -> Peer {
    Peer::v4(
        format!("10.244.{n}.0/24").parse().unwrap(),
        Ipv4Addr::new(198, 18, 0, n),
        mac.then(|| format!("0e:00:00:00:00:{n:02x}").parse().unwrap()),
    )
}

fn vxlan_opts() -> VxlanOptions {
    VxlanOptions { vni: 1, port: 8472, gbp: false, direct_routing: false, learning: false, mtu: None }
}

fn config(backend: BackendConfig) -> DataplaneConfig {
    DataplaneConfig {
        backend,
        network: DualStack::new(Some("10.244.0.0/16".parse().unwrap()), None),
        iface: IfaceRequest { ifaces: vec!["eth0".into()], ..Default::default() },
        ip_masq: false,
        resync: Duration::from_secs(10),
        nexthop_objects: true,
        wireguard_uapi_dir: None,
        nftables: false,
    }
}

/// A started dataplane for 10.244.1.0/24 (inside a namespace's runtime).
async fn started(backend: BackendConfig) -> Dataplane {
    let mut dp = Dataplane::prepare(config(backend)).await.unwrap();
    dp.start(DualStack::new(Some("10.244.1.0/24".parse().unwrap()), None)).await.unwrap();
    dp
}

#[test]
fn vxlan_converges_idempotently_and_removes_stale_peers() {
    let ns = Ns::new("vxlan");
    let (first, again, shrink, after) = ns.block_on(async {
        let mut b = started(BackendConfig::Vxlan(vxlan_opts())).await;
        let peers = vec![peer(2, true), peer(3, true)];
        let first = b.reconcile(&peers).await.changes;
        let again = b.reconcile(&peers).await.clone();
        assert_eq!((again.peers_desired, again.peers_programmed), (2, 2));
        assert!(again.problems.is_empty() && again.total_repairs() == 0, "{again:?}");
        let shrink = b.reconcile(&peers[..1]).await.changes;
        let after = b.reconcile(&peers[..1]).await.changes;
        (first, again.changes, shrink, after)
    });
    assert_eq!(first, 6, "2 peers x (fdb, neighbour, route)");
    assert_eq!(again, 0, "a second run changes nothing");
    assert_eq!(shrink, 3, "the removed peer's three entries go");
    assert_eq!(after, 0);

    let link = ns.show(&["-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains("vxlan id 1") && link.contains("local 198.18.0.1") && link.contains("dstport 8472"),
        "{link}"
    );
    assert!(link.contains("nolearning") && link.contains("mtu 1450"), "{link}");
    assert!(ns.show(&["addr", "show", "flannel.1"]).contains("inet 10.244.1.0/32"));
    let routes = ns.show(&["route", "show", "proto", "87"]);
    // Through a nexthop object whose id is the subnet's address.
    let id = u32::from(Ipv4Addr::new(10, 244, 2, 0));
    assert_eq!(routes.trim(), format!("10.244.2.0/24 nhid {id} via 10.244.2.0 dev flannel.1 onlink"), "{routes}");
    let nexthops = ns.show(&["nexthop", "show", "proto", "87"]);
    assert_eq!(nexthops.lines().count(), 1, "the removed peer's nexthop goes too: {nexthops}");
    assert!(nexthops.starts_with(&format!("id {id} via 10.244.2.0 dev flannel.1 ")), "{nexthops}");
    assert!(nexthops.contains("onlink"), "{nexthops}");
    assert!(ns.show(&["route"]).contains("10.244.99.0/24 via 198.18.0.99"), "foreign route untouched");
    let fdb = ns.fdb();
    assert!(fdb.contains("0e:00:00:00:00:02 dst 198.18.0.2 self permanent") && !fdb.contains("198.18.0.3"), "{fdb}");
    let neigh = ns.show(&["neigh", "show", "dev", "flannel.1"]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:00:00:00:00:02 PERMANENT") && !neigh.contains("10.244.3.0"),
        "{neigh}"
    );
}

#[test]
fn vxlan_direct_routing_uses_the_underlay_for_peers_on_the_same_subnet() {
    let ns = Ns::new("direct");
    ns.block_on(async {
        let mut b = started(BackendConfig::Vxlan(VxlanOptions { direct_routing: true, ..vxlan_opts() })).await;
        let far = Peer { public_ip: Some(Ipv4Addr::new(198, 19, 0, 7)), ..peer(7, true) };
        assert!(b.reconcile(&[peer(2, true), far]).await.problems.is_empty());
    });
    let routes = netns::without_nhid(&ns.show(&["route", "show", "proto", "87"]));
    assert!(routes.contains("10.244.2.0/24 via 198.18.0.2 dev eth0"), "same-subnet peer routed directly: {routes}");
    assert!(routes.contains("10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink"), "other peer through VXLAN: {routes}");
}

#[test]
fn host_gw_converges_and_is_idempotent() {
    let ns = Ns::new("hostgw");
    let (first, again, gone) = ns.block_on(async {
        let mut b = started(BackendConfig::HostGw).await;
        let peers = vec![peer(2, false), peer(3, false)];
        let first = b.reconcile(&peers).await.changes;
        let again = b.reconcile(&peers).await.changes;
        let gone = b.reconcile(&[]).await.changes;
        (first, again, gone)
    });
    assert_eq!((first, again, gone), (2, 0, 2));
    assert_eq!(ns.show(&["route", "show", "proto", "87"]).trim(), "");
    assert_eq!(ns.show(&["nexthop", "show", "proto", "87"]).trim(), "", "unused nexthops removed");
    assert!(ns.show(&["route"]).contains("10.244.99.0/24 via 198.18.0.99"));
}

#[test]
fn an_incompatible_existing_device_is_recreated_and_a_foreign_one_refused() {
    let ns = Ns::new("recreate");
    netns::ip(&["-n", &ns.0, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "4789", "dev", "eth0"])
        .unwrap();
    ns.block_on(async {
        started(BackendConfig::Vxlan(vxlan_opts())).await;
    });
    assert!(ns.show(&["-d", "link", "show", "flannel.1"]).contains("dstport 8472"));

    let ns = Ns::new("foreign");
    netns::ip(&["-n", &ns.0, "link", "add", "flannel.1", "type", "bridge"]).unwrap();
    let err = ns.block_on(async {
        Dataplane::prepare(config(BackendConfig::Vxlan(vxlan_opts()))).await.err().unwrap().to_string()
    });
    assert!(err.contains("flannel.1 exists but is not a VXLAN device"), "{err}");
}

#[test]
fn vxlan_repairs_what_was_removed_or_changed_and_counts_it() {
    let ns = Ns::new("repair");
    let name = ns.0.clone();
    let ip = move |args: &[&str]| {
        netns::run(Command::new("ip").args(["-n", &name]).args(args)).unwrap();
    };
    let reports = ns.block_on(async move {
        let mut b = started(BackendConfig::Vxlan(vxlan_opts())).await;
        let peers = vec![peer(2, true), peer(3, true)];
        b.reconcile(&peers).await;
        let mut reports = Vec::new();
        // One fault at a time, then one pass; every pass must end healthy.
        ip(&["neigh", "del", "10.244.2.0", "dev", "flannel.1"]);
        reports.push(("neighbour", b.reconcile(&peers).await.clone()));
        ip(&["route", "del", "10.244.3.0/24"]);
        reports.push(("route", b.reconcile(&peers).await.clone()));
        // Removing a nexthop object takes its route along.
        ip(&["nexthop", "del", "id", &u32::from(Ipv4Addr::new(10, 244, 2, 0)).to_string()]);
        reports.push(("nexthop", b.reconcile(&peers).await.clone()));
        ip(&["link", "set", "flannel.1", "mtu", "1300"]);
        reports.push(("mtu", b.reconcile(&peers).await.clone()));
        ip(&["link", "set", "flannel.1", "down"]);
        reports.push(("down", b.reconcile(&peers).await.clone()));
        ip(&["link", "del", "flannel.1"]);
        reports.push(("deleted", b.reconcile(&peers).await.clone()));
        // Learning cannot change in place: the device is recreated.
        ip(&["link", "set", "flannel.1", "type", "vxlan", "learning"]);
        reports.push(("learning", b.reconcile(&peers).await.clone()));
        reports
    });
    for (fault, r) in &reports {
        assert!(r.problems.is_empty(), "{fault}: {r:?}");
        assert_eq!(r.peers_programmed, 2, "{fault}: {r:?}");
        assert!(r.total_repairs() > 0, "{fault} is counted as a repair: {r:?}");
    }
    let kind = |i: usize, k: ObjectKind| reports[i].1.repairs[k as usize];
    assert_eq!(kind(0, ObjectKind::Neighbour), 1);
    assert_eq!(kind(1, ObjectKind::Route), 1);
    assert_eq!(kind(2, ObjectKind::Route), 1);
    assert_eq!(kind(3, ObjectKind::Device), 1);
    assert_eq!(kind(4, ObjectKind::Device), 1);
    assert_eq!(kind(5, ObjectKind::Device), 1);
    let link = ns.show(&["-d", "link", "show", "flannel.1"]);
    assert!(link.contains("nolearning") && link.contains("mtu 1450") && link.contains(",UP"), "{link}");
    assert!(ns.show(&["addr", "show", "flannel.1"]).contains("inet 10.244.1.0/32"));
    assert_eq!(ns.show(&["route", "show", "proto", "87"]).lines().count(), 2);
    assert_eq!(ns.show(&["nexthop", "show", "proto", "87"]).lines().count(), 2);
    assert_eq!(ns.fdb().lines().filter(|l| l.contains("permanent")).count(), 2, "{}", ns.fdb());
}

#[test]
fn a_nexthop_id_held_by_another_program_is_reported_and_left_alone() {
    let ns = Ns::new("nhconflict");
    let id = u32::from(Ipv4Addr::new(10, 244, 3, 0)).to_string();
    netns::ip(&["-n", &ns.0, "nexthop", "add", "id", &id, "via", "198.18.0.50", "dev", "eth0"]).unwrap();
    let before = ns.show(&["nexthop", "show", "id", &id]);
    let r = ns.block_on(async {
        let mut b = started(BackendConfig::HostGw).await;
        b.reconcile(&[peer(2, false), peer(3, false)]).await.clone()
    });
    assert_eq!((r.peers_desired, r.peers_programmed), (2, 1), "{r:?}");
    assert!(
        r.problems.iter().any(|p| p.to_string().contains(&format!("nexthop id {id} belongs to another program"))),
        "{r:?}"
    );
    assert_eq!(ns.show(&["nexthop", "show", "id", &id]), before, "the other program's nexthop is untouched");
    let routes = ns.show(&["route", "show", "proto", "87"]);
    assert!(routes.contains("10.244.2.0/24") && !routes.contains("10.244.3.0/24"), "{routes}");
}

#[test]
fn a_delta_pass_programs_only_the_change_and_leaves_what_a_full_pass_would() {
    let ns = Ns::new("delta");
    let id5 = u32::from(Ipv4Addr::new(10, 244, 5, 0)).to_string();
    let name = ns.0.clone();
    let foreign = move || {
        netns::ip(&["-n", &name, "nexthop", "add", "id", &id5, "via", "198.18.0.50", "dev", "eth0"]).unwrap();
    };
    let (delta, full, conflict) = ns.block_on(async move {
        let mut b = started(BackendConfig::Vxlan(vxlan_opts())).await;
        assert_eq!(b.update(&[peer(2, true), peer(3, true)]).await.changes, 6, "the first pass is a full one");
        let delta = b.update(&[peer(2, true), peer(4, true)]).await.clone();
        let full = b.reconcile(&[peer(2, true), peer(4, true)]).await.changes;
        // A nexthop id taken by someone else since the last full pass.
        foreign();
        let conflict = b.update(&[peer(2, true), peer(4, true), peer(5, true)]).await.clone();
        (delta, full, conflict)
    });
    assert_eq!(delta.changes, 6, "peer 3's three entries out, peer 4's in: {delta:?}");
    assert!(delta.problems.is_empty(), "{delta:?}");
    assert_eq!(full, 0, "a full pass after the delta finds nothing to do");
    assert_eq!(conflict.peers_programmed, 2, "{conflict:?}");
    assert!(
        conflict.problems.iter().any(|p| p.to_string().contains("exists already, not made by weft")),
        "{conflict:?}"
    );
    let routes = netns::without_nhid(&ns.show(&["route", "show", "proto", "87"]));
    assert!(routes.contains("10.244.2.0/24") && routes.contains("10.244.4.0/24"), "{routes}");
    assert!(!routes.contains("10.244.3.0/24") && !routes.contains("10.244.5.0/24"), "{routes}");
    let nexthops = ns.show(&["nexthop", "show"]);
    assert!(nexthops.contains("via 198.18.0.50 dev eth0"), "the other nexthop is untouched: {nexthops}");
    assert_eq!(ns.show(&["nexthop", "show", "proto", "87"]).lines().count(), 2, "{nexthops}");
}

#[test]
fn a_delta_pass_after_the_device_was_recreated_programs_every_peer() {
    let ns = Ns::new("deltadev");
    let name = ns.0.clone();
    let r = ns.block_on(async move {
        let mut b = started(BackendConfig::Vxlan(vxlan_opts())).await;
        b.reconcile(&[peer(2, true), peer(3, true)]).await;
        netns::ip(&["-n", &name, "link", "del", "flannel.1"]).unwrap();
        // Leases changed before the kernel event's pass: a delta pass
        // finds a new device and must not trust the old one's entries.
        b.update(&[peer(2, true), peer(3, true), peer(4, true)]).await.clone()
    });
    assert!(r.problems.is_empty(), "{r:?}");
    assert_eq!(r.peers_programmed, 3, "{r:?}");
    assert_eq!(ns.show(&["route", "show", "proto", "87"]).lines().count(), 3);
    assert_eq!(ns.fdb().lines().filter(|l| l.contains("permanent")).count(), 3, "{}", ns.fdb());
    assert_eq!(ns.show(&["neigh", "show", "dev", "flannel.1", "nud", "permanent"]).lines().count(), 3);
}

#[test]
fn without_nexthop_objects_routes_carry_their_gateway_and_weft_nexthops_go() {
    let ns = Ns::new("nonh");
    let peers = [peer(2, true), peer(3, true)];
    let before = peers.clone();
    // First with nexthop objects, as a node upgraded from an earlier start.
    ns.block_on(async move {
        started(BackendConfig::Vxlan(vxlan_opts())).await.reconcile(&before).await;
    });
    assert_eq!(ns.show(&["nexthop", "show", "proto", "87"]).lines().count(), 2);
    let r = ns.block_on(async move {
        let cfg = DataplaneConfig { nexthop_objects: false, ..config(BackendConfig::Vxlan(vxlan_opts())) };
        let mut dp = Dataplane::prepare(cfg).await.unwrap();
        dp.start(DualStack::new(Some("10.244.1.0/24".parse().unwrap()), None)).await.unwrap();
        dp.reconcile(&peers).await.clone()
    });
    assert!(r.problems.is_empty() && r.peers_programmed == 2, "{r:?}");
    let routes = ns.show(&["route", "show", "proto", "87"]);
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink \n10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink",
        "flanneld's form of the routes"
    );
    assert_eq!(ns.show(&["nexthop", "show", "proto", "87"]).trim(), "", "weft's nexthops removed");
}
