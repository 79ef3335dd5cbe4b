//! Many leases at once, in the lab: one vxlan node programs 5,000 peers, and
//! its routes, FDB and neighbour entries equal the leases exactly; then
//! 2,500 leases are deleted and 2,500 others added in one etcd transaction,
//! and the kernel is compared again. (Speed is the benchmark's business,
//! `scripts/bench.sh --scale`; this checks that nothing is lost or left.)

mod lab_common;

use std::collections::BTreeSet;
use std::time::Duration;

use lab_common::*;
use serde_json::Value;
use weft_lab::peers::{peer_index, peer_lease, peer_mac, peer_public_ip, peer_subnet, PEERS_CONFIG};
use weft_lab::{wait_until, Lab};

/// `ip -j ARGS` (or `bridge -j`) in node 1, as JSON.
fn json(lab: &Lab, program: &str, args: &[&str]) -> Vec<Value> {
    let out = lab.node_cmd(1, program).arg("-j").args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// What the kernel has, as (routes, fdb, neighbours, nexthops) sets of strings.
type Kernel = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

fn kernel(lab: &Lab) -> Kernel {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let routes = json(lab, "ip", &["-4", "route", "show", "proto", "87"])
        .iter()
        .map(|r| format!("{} nhid {} via {} dev {}", s(&r["dst"]), r["nhid"], s(&r["gateway"]), s(&r["dev"])))
        .collect();
    let fdb = json(lab, "bridge", &["fdb", "show", "dev", "flannel.1"])
        .iter()
        .filter(|f| f.get("dst").is_some())
        .map(|f| format!("{} dst {}", s(&f["mac"]), s(&f["dst"])))
        .collect();
    let neigh = json(lab, "ip", &["-4", "neigh", "show", "dev", "flannel.1", "nud", "permanent"])
        .iter()
        .map(|n| format!("{} lladdr {}", s(&n["dst"]), s(&n["lladdr"])))
        .collect();
    let nexthops = json(lab, "ip", &["nexthop", "show", "proto", "87"])
        .iter()
        .map(|n| format!("id {} via {} dev {}", n["id"], s(&n["gateway"]), s(&n["dev"])))
        .collect();
    (routes, fdb, neigh, nexthops)
}

/// What the kernel must have for leases `ids`.
fn expected(ids: &BTreeSet<u32>) -> Kernel {
    // Each route points at a nexthop object whose id is the subnet's address.
    let id = |i: u32| u32::from(peer_subnet(i));
    let routes = ids
        .iter()
        .map(|i| format!("{}/24 nhid {} via {} dev flannel.1", peer_subnet(*i), id(*i), peer_subnet(*i)))
        .collect();
    let fdb = ids.iter().map(|i| format!("{} dst {}", peer_mac(*i), peer_public_ip(*i))).collect();
    let neigh = ids.iter().map(|i| format!("{} lladdr {}", peer_subnet(*i), peer_mac(*i))).collect();
    let nexthops = ids.iter().map(|i| format!("id {} via {} dev flannel.1", id(*i), peer_subnet(*i))).collect();
    (routes, fdb, neigh, nexthops)
}

fn converge(lab: &Lab, ids: &BTreeSet<u32>, what: &str) {
    let want = expected(ids);
    let mut last = None;
    let done = wait_until(what, Duration::from_secs(60), || {
        let have = kernel(lab);
        let same = have == want;
        last = Some(have);
        same.then_some(())
    });
    if done.is_err() {
        let (r, f, n, h) = last.unwrap();
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
            (a.difference(b).take(3).cloned().collect::<Vec<_>>(), b.difference(a).take(3).cloned().collect::<Vec<_>>())
        };
        panic!(
            "{what}: routes (extra, missing) {:?}, fdb {:?}, neigh {:?}, nexthops {:?}\n{}",
            diff(&r, &want.0),
            diff(&f, &want.1),
            diff(&n, &want.2),
            diff(&h, &want.3),
            lab.log_tail(1)
        );
    }
}

#[test]
fn five_thousand_peers_are_programmed_exactly_and_follow_a_mass_change() {
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(PEERS_CONFIG).unwrap();
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let own = peer_index(lab.subnet_env(1).unwrap().0);
    let ids: Vec<u32> = (1..).filter(|i| *i != own).take(7500).collect();

    let first: BTreeSet<u32> = ids[..5000].iter().copied().collect();
    for chunk in ids[..5000].chunks(1000) {
        lab.etcd_txn(chunk.iter().map(|i| peer_lease(*i)).collect(), vec![]).unwrap();
    }
    converge(&lab, &first, "5,000 peers to be programmed");

    // One transaction: the first 2,500 go, 2,500 new ones come.
    let deletes = ids[..2500].iter().map(|i| peer_lease(*i).0).collect();
    let puts = ids[5000..].iter().map(|i| peer_lease(*i)).collect();
    lab.etcd_txn(puts, deletes).unwrap();
    let second: BTreeSet<u32> = ids[2500..].iter().copied().collect();
    converge(&lab, &second, "2,500 removed and 2,500 added in one transaction");
    assert!(lab.daemon_running(1));
    assert_eq!(lab.http(1, "/readyz").unwrap().0, 200);
}
