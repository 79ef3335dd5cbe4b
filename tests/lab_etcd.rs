//! The control plane under etcd faults, at the level of the daemon: a real
//! 3-member etcd cluster on the lab's underlay (each member in its own
//! namespace), and etcd with short-lived auth tokens. A pod pings across
//! nodes every 10 ms throughout; no ping may be lost.

mod lab_common;

use std::time::{Duration, Instant};

use lab_common::*;
use weft_lab::{wait_until, Lab};

/// Nodes lease from 10.244.1.0 - 10.244.199.0; the tests put leases of
/// nodes that do not exist at 10.244.200.0 and up, which no node can hold.
const VXLAN: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan"}}"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A vxlan lease of a node that does not exist (nothing to reach), enough
/// to check that every node programs it.
fn foreign_lease(third_octet: u8) -> (String, String) {
    (
        format!("/coreos.com/network/subnets/10.244.{third_octet}.0-24"),
        format!(
            r#"{{"PublicIP":"198.18.1.{third_octet}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:01:{third_octet:02x}"}}}}"#
        ),
    )
}

/// Time until every node routes to 10.244.`third_octet`.0/24 (panics after `limit`).
fn programmed_everywhere(lab: &Lab, third_octet: u8, limit: Duration) -> Duration {
    let began = Instant::now();
    let want = format!("10.244.{third_octet}.0/24");
    for i in 1..=lab.nodes.len() as u8 {
        wait_until(&format!("node {i} to program {want}"), limit.saturating_sub(began.elapsed()), || {
            lab.weft_routes(i).ok().filter(|r| r.contains(&want)).map(|_| ())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
    }
    began.elapsed()
}

/// `etcdctl ARGS` through member `k` only (a member that is partitioned or
/// down must not be asked); its stdout. Retried for up to 20 s: after a
/// member is killed or cut off, the rest may still be electing a leader.
fn ctl_via(lab: &Lab, k: usize, creds: &[&str], args: &[&str]) -> String {
    let ep = lab.cluster.as_ref().unwrap().members[k - 1].endpoint();
    let mut last = String::new();
    let out = wait_until(&format!("etcdctl {args:?} through member {k}"), Duration::from_secs(20), || {
        let out = weft_lab::netns::run(
            lab.node_cmd(1, "etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={ep}"))
                .arg("--command-timeout=2s")
                .args(creds)
                .args(args),
        );
        match out {
            Ok(o) => Some(text(&o.stdout)),
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        }
    });
    out.unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// `etcdctl put` through member `k` only.
fn put_via(lab: &Lab, k: usize, key: &str, value: &str, creds: &[&str]) {
    ctl_via(lab, k, creds, &["put", key, value]);
}

fn start_nodes(lab: &mut Lab, extra: &[&str]) {
    for i in 1..=lab.nodes.len() as u8 {
        lab.start_daemon(i, extra).unwrap();
    }
    for i in 1..=lab.nodes.len() as u8 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod(i).unwrap();
    }
    wait_converged(lab);
}

/// Kill the member serving the watches, partition each member in turn,
/// lose quorum and get it back: every lease added through the majority is
/// programmed in time, and the pods never lose a ping.
#[test]
fn a_three_member_cluster_fails_in_every_way_without_losing_a_ping() {
    let mut lab = Lab::with_etcd(2, env!("CARGO_BIN_EXE_weft"), 3, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(VXLAN).unwrap();
    start_nodes(&mut lab, &["--resync-interval", "2s"]);
    let pinger = lab.pinger(1, lab.node(2).pod_ip.unwrap(), "0.01", 1_000_000).unwrap();
    let mut report = Vec::new();

    // 1. Kill a member that serves a watch; add a lease through the others.
    let serving = lab.cluster.as_ref().unwrap().serving_watches();
    let k = *serving.first().unwrap_or_else(|| panic!("no member serves a watch"));
    lab.cluster.as_mut().unwrap().member(k).kill();
    let (key, value) = foreign_lease(201);
    put_via(&lab, k % 3 + 1, &key, &value, &[]);
    let t = programmed_everywhere(&lab, 201, Duration::from_secs(5));
    report.push(format!("member {k} (serving a watch) killed: new lease programmed in {t:.2?}"));
    lab.cluster.as_mut().unwrap().restart(k, Duration::from_secs(30)).unwrap();

    // 2. Cut each member off from its peers in turn (clients still reach it).
    for k in 1..=3usize {
        lab.cluster.as_mut().unwrap().member(k).partition().unwrap();
        let (key, value) = foreign_lease(210 + k as u8);
        // Through a member of the majority, once it has a leader again.
        let other = k % 3 + 1;
        wait_until("the majority to have a leader", Duration::from_secs(15), || {
            lab.cluster.as_ref().unwrap().members[other - 1].healthy().then_some(())
        })
        .unwrap();
        put_via(&lab, other, &key, &value, &[]);
        let t = programmed_everywhere(&lab, 210 + k as u8, Duration::from_secs(10));
        report.push(format!("member {k} partitioned: new lease programmed in {t:.2?}"));
        lab.cluster.as_mut().unwrap().member(k).heal().unwrap();
        wait_until("the healed member to catch up", Duration::from_secs(30), || {
            lab.cluster.as_ref().unwrap().members[k - 1].healthy().then_some(())
        })
        .unwrap();
    }

    // 3. No quorum: two members down. weft keeps forwarding, stays alive and
    //    ready, and says etcd is unavailable.
    lab.cluster.as_mut().unwrap().member(2).kill();
    lab.cluster.as_mut().unwrap().member(3).kill();
    for i in 1..=2u8 {
        wait_until(&format!("node {i} to report etcd unavailable"), Duration::from_secs(20), || {
            (lab.metric(i, "weft_etcd_available").ok()? == 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
        let (code, body) = lab.http(i, "/readyz").unwrap();
        assert_eq!(code, 200, "etcd down alone does not make a node not ready: {body}");
        assert!(body.contains("etcd unavailable"), "{body}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(lab.ping_once(1, lab.node(2).pod_ip.unwrap()));
    let began = Instant::now();
    lab.cluster.as_mut().unwrap().restart(2, Duration::from_secs(30)).unwrap();
    lab.cluster.as_mut().unwrap().restart(3, Duration::from_secs(30)).unwrap();
    let back = began.elapsed();
    let (key, value) = foreign_lease(220);
    put_via(&lab, 1, &key, &value, &[]);
    let t = programmed_everywhere(&lab, 220, Duration::from_secs(10));
    report.push(format!("quorum lost and back ({back:.2?} to restart): new lease programmed in {t:.2?}"));
    for i in 1..=2u8 {
        wait_until(&format!("node {i} to see etcd again"), Duration::from_secs(10), || {
            (lab.metric(i, "weft_etcd_available").ok()? == 1).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
    }

    let (sent, received) = pinger.finish().unwrap();
    eprintln!("{}\npings: {sent} sent, {received} received", report.join("\n"));
    assert_eq!(sent, received, "no ping lost while etcd failed\n{}\n{}", lab.log_tail(1), lab.log_tail(2));
    for i in 1..=2u8 {
        assert!(lab.daemon_running(i), "node {i} still running");
    }
}

/// etcd's auth tokens live 5 s; the lease is renewed every 30 s. weft must
/// log in again whenever its token has expired: after 3 minutes the lease
/// has been renewed, and a lease added at the end is programmed.
#[test]
fn expired_auth_tokens_are_renewed() {
    let mut lab =
        Lab::with_etcd(2, env!("CARGO_BIN_EXE_weft"), 1, &["--auth-token-ttl=5"]).unwrap_or_else(|e| panic!("{e:#}"));
    for args in [&["user", "add", "root:s3cret"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]] {
        let out = lab.etcdctl(args).unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let creds = ["--etcd-username", "root", "--etcd-password", "s3cret"];
    let out = lab.weft(&[&creds[..], &["config", "put", "-"]].concat(), Some(VXLAN)).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    start_nodes(&mut lab, &[&creds[..], &["--subnet-lease-ttl", "90s", "--subnet-lease-renew-margin", "1"]].concat());
    let log = lab.log(1);
    assert!(log.contains("the etcd password travels in clear text"), "{log}");
    let pinger = lab.pinger(1, lab.node(2).pod_ip.unwrap(), "0.01", 1_000_000).unwrap();

    std::thread::sleep(Duration::from_secs(180));
    for i in 1..=2u8 {
        let renewals = lab.metric(i, "weft_lease_renewals_total").unwrap();
        assert!(renewals >= 2, "node {i}: {renewals} renewals in 3 minutes\n{}", lab.log_tail(i));
        assert!(lab.daemon_running(i), "node {i} still running\n{}", lab.log_tail(i));
    }
    let (key, value) = foreign_lease(230);
    put_via(&lab, 1, &key, &value, &["--user", "root:s3cret"]);
    let t = programmed_everywhere(&lab, 230, PROPAGATION);
    let (sent, received) = pinger.finish().unwrap();
    eprintln!("auth token ttl 5 s: lease added after 3 min programmed in {t:.2?}; pings {received}/{sent}");
    assert_eq!(sent, received, "no ping lost");
}

/// The watch goes silent without an error (a proxy drops what etcd sends on
/// it, while new requests are answered); the own lease deleted meanwhile is
/// noticed by reading it back, within one resync interval.
#[test]
fn a_deleted_lease_is_noticed_within_a_resync_with_the_watch_stalled() {
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(VXLAN).unwrap();
    let proxy = lab.etcd_proxy().unwrap_or_else(|e| panic!("{e:#}"));
    let resync = Duration::from_secs(3);
    lab.start_daemon(1, &["--etcd-endpoints", &proxy.endpoint(), "--resync-interval", "3s"]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));

    // The watch is open once a lease added now is programmed.
    let (key, value) = foreign_lease(200);
    assert!(lab.etcdctl(&["put", &key, &value]).unwrap().status.success());
    programmed_everywhere(&lab, 200, PROPAGATION);

    proxy.stall_open_streams();
    let (key, value) = foreign_lease(201);
    assert!(lab.etcdctl(&["put", &key, &value]).unwrap().status.success());
    // Longer than a resync: a lease added now is not programmed, so the
    // watch is really stalled (and nothing else brings leases in).
    std::thread::sleep(resync + Duration::from_secs(1));
    assert!(!lab.weft_routes(1).unwrap().contains("10.244.201.0/24"), "the watch was not stalled\n{}", lab.log(1));

    let subnet = lab.subnet_env(1).unwrap().0;
    let own = format!("/coreos.com/network/subnets/{}-{}", subnet.addr(), subnet.prefix_len());
    let began = Instant::now();
    assert!(lab.etcdctl(&["del", &own]).unwrap().status.success());
    let status = lab.wait_exit(1, resync * 3).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(1)));
    let took = began.elapsed();
    eprintln!("own lease deleted under a stalled watch: the daemon exited after {took:.2?} (resync {resync:?})");
    assert!(!status.success(), "a lost lease exits non-zero for a restart");
    assert!(took <= resync + Duration::from_secs(1), "noticed after {took:?}\n{}", lab.log_tail(1));
    assert!(lab.log(1).contains(&format!("the lease of {subnet} expired or was deleted")), "{}", lab.log_tail(1));
}

/// One member cut off from its peers, and the nodes talk only to it; on the
/// majority a lease is deleted and the store compacted past it. After the
/// heal, that lease's route is gone on every node and no other route was
/// touched.
#[test]
fn a_lease_deleted_and_compacted_during_a_partition_is_removed_after_the_heal() {
    let mut lab = Lab::with_etcd(2, env!("CARGO_BIN_EXE_weft"), 3, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(VXLAN).unwrap();
    let m3 = lab.cluster.as_ref().unwrap().members[2].endpoint();
    start_nodes(&mut lab, &["--etcd-endpoints", &m3, "--resync-interval", "2s"]);
    let pinger = lab.pinger(1, lab.node(2).pod_ip.unwrap(), "0.01", 1_000_000).unwrap();
    for o in [230, 231, 232] {
        let (key, value) = foreign_lease(o);
        put_via(&lab, 1, &key, &value, &[]);
        programmed_everywhere(&lab, o, Duration::from_secs(5));
    }
    let before: Vec<String> = (1..=2).map(|i| lab.weft_routes(i).unwrap()).collect();

    let marks: Vec<usize> = (1..=2).map(|i| lab.log(i).len()).collect();
    lab.cluster.as_mut().unwrap().member(3).partition().unwrap();
    // Until member 3 knows it has no leader and has cancelled the nodes'
    // watches (require-leader); they retry with backoff meanwhile.
    wait_until("member 3 to lose its leader", Duration::from_secs(15), || {
        (lab.cluster.as_ref().unwrap().members[2].metric("etcd_server_has_leader") == 0.0).then_some(())
    })
    .unwrap();
    for i in 1..=2u8 {
        wait_until(&format!("node {i}'s watch to be cancelled"), Duration::from_secs(20), || {
            lab.log(i)[marks[usize::from(i) - 1]..].contains("lost the etcd watch of leases").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
    }
    // Nodes cannot reach it either, so that their watches come back only
    // after it has caught up with the compaction.
    lab.cluster.as_ref().unwrap().members[2].shut_out_clients().unwrap();
    let (gone, _) = foreign_lease(231);
    ctl_via(&lab, 1, &[], &["del", &gone]);
    for n in 0..5 {
        put_via(&lab, 1, "/weft-test/filler", &n.to_string(), &[]);
    }
    let status = ctl_via(&lab, 1, &[], &["get", "/weft-test/filler", "-w", "json"]);
    let rev = status.split("\"revision\":").nth(1).and_then(|r| r.split([',', '}']).next()).unwrap().to_string();
    ctl_via(&lab, 1, &[], &["compact", &rev]);
    let logs: Vec<usize> = (1..=2).map(|i| lab.log(i).len()).collect();

    lab.cluster.as_mut().unwrap().member(3).heal().unwrap();
    let before_compaction = (rev.parse::<i64>().unwrap() - 1).to_string();
    wait_until("member 3 to apply the compaction", Duration::from_secs(20), || {
        let m3 = &lab.cluster.as_ref().unwrap().members[2];
        m3.ctl(&["get", "/weft-test/filler", "--consistency=s", "--rev", &before_compaction])
            .err()
            .filter(|e| format!("{e:#}").contains("compacted"))
    })
    .unwrap();
    let began = Instant::now();
    lab.cluster.as_ref().unwrap().members[2].let_in_clients().unwrap();
    for i in 1..=2u8 {
        wait_until(&format!("node {i} to remove 10.244.231.0/24"), Duration::from_secs(20), || {
            (!lab.weft_routes(i).ok()?.contains("10.244.231.0/24")).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
    }
    let took = began.elapsed();
    let (sent, received) = pinger.finish().unwrap();
    for i in 1..=2u8 {
        let want: Vec<&str> = before[usize::from(i) - 1].lines().filter(|l| !l.contains("10.244.231.0/24")).collect();
        let routes = lab.weft_routes(i).unwrap();
        assert_eq!(routes.lines().collect::<Vec<_>>(), want, "node {i}: only the deleted lease's route goes");
        let after = &lab.log(i)[logs[usize::from(i) - 1]..];
        assert!(!after.contains("installed route"), "node {i} touched other routes:\n{after}");
        assert_eq!(after.matches("removed route").count(), 1, "node {i}:\n{after}");
    }
    let compactions: Vec<u64> =
        (1..=2).map(|i| lab.metric(i, "weft_etcd_relists_total{reason=\"compaction\"}").unwrap()).collect();
    eprintln!(
        "lease deleted and compacted during a partition: route removed {took:.2?} after the member took clients again \
         (relists after compaction: {compactions:?}); {sent} pings, {} lost",
        sent - received
    );
    assert!(
        compactions.iter().all(|n| *n >= 1),
        "each node's watch resumed past the compaction and listed again\n{}\n{}",
        lab.log(1),
        lab.cluster.as_ref().unwrap().members[2].log_tail()
    );
    assert_eq!(sent, received, "no ping lost");
}

/// The etcd lease a key is attached to (0: none), and whether the key exists.
fn key_lease(lab: &Lab, key: &str) -> Option<i64> {
    let out = lab.etcdctl(&["get", key, "-w", "json"]).unwrap();
    let json = text(&out.stdout);
    json.contains("\"kvs\"").then(|| {
        json.split("\"lease\":").nth(1).and_then(|r| r.split([',', '}']).next()).map_or(0, |n| n.parse().unwrap())
    })
}

/// A renewal that commits in etcd but whose reply never reaches the daemon
/// (a proxy swallows everything from that request on) must not cost the
/// lease: the key stays, and once etcd answers again the daemon renews it.
#[test]
fn a_renewal_whose_reply_is_lost_keeps_the_daemons_lease() {
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(VXLAN).unwrap();
    let proxy = lab.etcd_proxy().unwrap_or_else(|e| panic!("{e:#}"));
    // A 70 s lease renewed 1 min before it expires: the first renewal comes
    // 10 s after start. The resync (which reads the own key) is kept out of
    // the way so that the renewal is the first request naming the key.
    let args = ["--etcd-endpoints", &proxy.endpoint(), "--subnet-lease-ttl", "70s", "--subnet-lease-renew-margin", "1"];
    lab.start_daemon(1, &[&args[..], &["--resync-interval", "5m"]].concat()).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let subnet = lab.subnet_env(1).unwrap().0;
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.addr(), subnet.prefix_len());
    let first = key_lease(&lab, &key).expect("the lease is in etcd");

    proxy.mute_from_request_with(key.as_bytes());
    let failures = |lab: &Lab| lab.metric(1, "weft_etcd_request_failures_total{op=\"renew_lease\"}").unwrap();
    wait_until("the renewal to time out", Duration::from_secs(30), || (failures(&lab) >= 1).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    let during = key_lease(&lab, &key).unwrap_or_else(|| panic!("the key was deleted\n{}", lab.log_tail(1)));
    assert_ne!(during, first, "the renewal committed (the key has a new etcd lease)");

    proxy.cut();
    proxy.restore();
    wait_until("a renewal once etcd answers again", Duration::from_secs(30), || {
        lab.log(1).contains("lease renewed again after errors").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    assert!(lab.daemon_running(1), "{}", lab.log_tail(1));
    assert_eq!(lab.http(1, "/readyz").unwrap().0, 200);
    assert!(key_lease(&lab, &key).is_some_and(|l| l != 0), "the key is still held");
    assert_eq!(lab.subnet_env(1).unwrap().0, subnet);
    assert_eq!(lab.metric(1, "weft_lease_losses_total").unwrap(), 0);
}

/// etcd out of reach for longer than the lease lives: by its own clock the
/// node knows the lease expired (another node may hold the subnet now), so
/// it says so in /readyz (not ready), withdraws subnet.env, and the CNI
/// plugin refuses new pods with a clear error. When etcd answers again the
/// key is gone: weft exits to lease again, and the next start (as systemd
/// restarts it) gets the same subnet back and puts subnet.env back.
#[test]
fn a_lease_that_expired_while_etcd_was_away_withdraws_subnet_env_until_leased_again() {
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(VXLAN).unwrap();
    let proxy = lab.etcd_proxy().unwrap_or_else(|e| panic!("{e:#}"));
    let args = ["--etcd-endpoints", &proxy.endpoint(), "--subnet-lease-ttl", "70s", "--subnet-lease-renew-margin", "1"];
    lab.start_daemon(1, &args).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let subnet = lab.subnet_env(1).unwrap().0;
    let file = lab.node(1).subnet_file.clone();
    let withdrawn = weft_subnet::withdrawn_path(&file);

    proxy.cut();
    let body = wait_until("node 1 to find its lease expired", Duration::from_secs(100), || {
        let (code, body) = lab.http(1, "/readyz").ok()?;
        (code == 503 && body.contains("expired without a renewal")).then_some(body)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    assert!(body.contains("withdrawn"), "{body}");
    assert!(!file.exists() && withdrawn.exists(), "subnet.env is not withdrawn");
    let ns = lab.add_netns("late").unwrap();
    let dir = lab.dir().join("n1");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
        "subnetFile": file, "dataDir": dir.join("cni"), "ipam": {"dataDir": dir.join("ipam")},
    });
    let out = lab
        .cni(1, std::path::Path::new(env!("CARGO_BIN_EXE_weft-cni")), "ADD", "late", &ns, &conf.to_string())
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("is withdrawn"), "CNI ADD: {said}");

    // The node's clock runs ahead of etcd's by the time its grant took to
    // arrive: restore etcd only once etcd itself has let the key go.
    wait_until("etcd to expire the lease", Duration::from_secs(30), || {
        let out = lab.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]).ok()?;
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    proxy.restore();
    let status = lab.wait_exit(1, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(1)));
    assert!(!status.success());
    assert!(!file.exists(), "subnet.env came back without a lease");
    lab.start_daemon(1, &args).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lab.subnet_env(1).unwrap().0, subnet, "the same subnet again");
    assert!(!withdrawn.exists());
}
