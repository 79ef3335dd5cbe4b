//! The wireguard backend as an operator of WireGuard knows it: `wg show`
//! and `wg showconf` through WireGuard's userspace API, `wg set` refused,
//! a node behind NAT reached through its packets (roaming), a public
//! IP that is not the host's, and a restarted node among many peers
//! reached again at once.
mod lab_common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::time::Duration;

use lab_common::*;
use weft_lab::capture::{udp_payloads, Capture};
use weft_lab::wggo::WireguardGo;
use weft_lab::{netns, wait_until, Lab};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `wg show <dev> dump`'s peer lines as (public key, endpoint, allowed
/// ips, latest handshake, rx, tx, keepalive).
fn peers(lab: &Lab, i: u8) -> Vec<Vec<String>> {
    let out = lab.wg(i, &["show", "flannel-wg", "dump"]).unwrap();
    assert!(out.status.success(), "wg show dump on node {i}: {}", text(&out.stderr));
    text(&out.stdout).lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect()).collect()
}

fn lease_key(lab: &Lab, i: u8) -> (String, String) {
    let (subnet, _, _) = lab.subnet_env(i).unwrap();
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.network(), subnet.prefix_len());
    let out = lab.etcdctl(&["get", "--print-value-only", &key]).unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (subnet.to_string(), lease["BackendData"]["PublicKey"].as_str().unwrap().to_string())
}

/// `wg show flannel-wg` on a weft node lists every peer with its endpoint,
/// AllowedIPs, a latest handshake and bytes after traffic; `wg showconf`
/// is read back by `wg setconf` into wireguard-go unchanged; `wg set` is
/// refused and changes nothing; the socket is root's alone, goes at a
/// clean stop, and one left by a crash is replaced.
#[test]
fn wg_show_lists_the_peers_and_wg_set_is_refused() {
    let mut lab = lab(3, "wireguard", &[]);
    assert_ping_matrix(&lab);
    let sock = lab.uapi_dir(1).join("flannel-wg.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the answer holds the private key");

    let shown = peers(&lab, 1);
    assert_eq!(shown.len(), 2, "{shown:?}");
    for j in [2, 3] {
        let (subnet, key) = lease_key(&lab, j);
        let p = shown.iter().find(|p| p[0] == key).unwrap_or_else(|| panic!("node {j}'s key in {shown:?}"));
        assert_eq!(p[2], format!("{}:51820", lab.node(j).underlay_ip), "endpoint: {p:?}");
        assert_eq!(p[3], subnet, "allowed ips: {p:?}");
        let (handshake, rx, tx): (u64, u64, u64) =
            (p[4].parse().unwrap(), p[5].parse().unwrap(), p[6].parse().unwrap());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(handshake > 0 && now.abs_diff(handshake) < 120, "latest handshake {handshake}, now {now}: {p:?}");
        assert!(rx > 0 && tx > 0, "transfer: {p:?}");
    }
    let human = text(&lab.wg(1, &["show"]).unwrap().stdout);
    assert!(human.contains("interface: flannel-wg") && human.contains("latest handshake:"), "{human}");

    // showconf, read back by wg's own parser into wireguard-go.
    let conf = lab.wg(1, &["showconf", "flannel-wg"]).unwrap();
    assert!(conf.status.success(), "{}", text(&conf.stderr));
    let conf = text(&conf.stdout);
    let file = lab.dir().join("showconf.conf");
    std::fs::write(&file, &conf).unwrap();
    let ns = lab.add_netns("rt").unwrap();
    let dev = format!("wgrt{}", std::process::id() % 10000);
    let wggo = WireguardGo::start(&ns, &dev, lab.dir()).unwrap();
    let set = netns::exec(&ns, "wg").args(["setconf", &dev, file.to_str().unwrap()]).output().unwrap();
    assert!(set.status.success(), "wg setconf of weft's showconf: {}\n{conf}", text(&set.stderr));
    let back = text(&netns::exec(&ns, "wg").args(["showconf", &dev]).output().unwrap().stdout);
    let peers_of = |c: &str| -> Vec<String> {
        let mut v: Vec<String> = c.split("[Peer]").skip(1).map(|p| p.trim().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(peers_of(&back), peers_of(&conf), "the peers survive wg's parser");
    assert!(back.contains(conf.lines().find(|l| l.starts_with("PrivateKey")).unwrap()), "{back}\n---\n{conf}");
    drop(wggo);

    // wg set: refused, said, nothing changed.
    let (_, key2) = lease_key(&lab, 2);
    let out = lab.wg(1, &["set", "flannel-wg", "peer", &key2, "remove"]).unwrap();
    assert!(!out.status.success(), "wg set succeeded");
    assert!(text(&out.stderr).contains("Operation not permitted"), "{}", text(&out.stderr));
    assert!(lab.log(1).contains("refused a WireGuard configuration change"), "{}", lab.log_tail(1));
    assert_eq!(peers(&lab, 1).len(), 2);
    assert_ping_matrix(&lab);

    // A crash leaves the socket; the next start replaces it. A clean stop
    // removes it.
    lab.stop_daemon(3, libc::SIGKILL).unwrap();
    let sock3 = lab.uapi_dir(3).join("flannel-wg.sock");
    assert!(sock3.exists(), "a killed process cannot remove its socket");
    lab.start_daemon(3, &[]).unwrap();
    lab.wait_ready(3, READY).unwrap();
    assert_eq!(peers(&lab, 3).len(), 2, "{}", lab.log_tail(3));
    lab.stop_daemon(3, libc::SIGTERM).unwrap();
    assert!(!sock3.exists(), "the socket outlived a clean stop");
}

/// A network with `PersistentKeepaliveInterval` 25, node 2 behind a NAT
/// router at `nat` (started with `extra`), pods on both, pinging both ways.
fn nat_lab(nat: Ipv4Addr, extra: &[&str]) -> (Lab, String) {
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap();
    let json = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}"#;
    lab.put_config(json).unwrap();
    let router = lab.put_behind_nat(2, nat).unwrap();
    lab.start_daemon(1, &[]).unwrap();
    lab.start_daemon(2, extra).unwrap();
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(i)));
        lab.attach_pod(i).unwrap();
    }
    let (pod1, pod2) = (lab.node(1).pod_ip.unwrap(), lab.node(2).pod_ip.unwrap());
    wait_until("pods to reach each other across the NAT", Duration::from_secs(20), || {
        (lab.ping_once(1, pod2) && lab.ping_once(2, pod1)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", lab.log_tail(1), lab.log_tail(2)));
    (lab, router)
}

/// node 1's view of node 2's endpoint, by `wg show`.
fn endpoint_of_node2(lab: &Lab) -> String {
    let (_, key) = lease_key(lab, 2);
    peers(lab, 1).into_iter().find(|p| p[0] == key).map(|p| p[2].clone()).unwrap()
}

/// A node behind NAT, its lease naming an address no other node reaches:
/// its authenticated packets move its endpoint to the NAT's address, both
/// pods reach each other, both nodes stay ready, `wg show` and the
/// metrics name the NAT's address; a replayed packet from elsewhere moves
/// nothing; when the NAT maps the node anew (its address changes, which
/// drops every mapping), traffic is back within a keepalive.
#[test]
fn a_node_behind_nat_is_reached_at_the_address_its_packets_come_from() {
    let nat = Ipv4Addr::new(198, 18, 0, 30);
    let (mut lab, router) = nat_lab(nat, &[]);
    let seen = endpoint_of_node2(&lab);
    assert!(seen.starts_with("198.18.0.30:"), "node 2 is seen at {seen}, not the NAT's address");
    assert!(lab.log(1).contains("wireguard peer roamed"), "{}", lab.log_tail(1));
    assert!(lab.metric(1, "weft_wireguard_endpoint_roams_total").unwrap() >= 1);
    let (code, body) = lab.http(1, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let metrics = lab.http(1, "/metrics").unwrap().1;
    assert!(metrics.contains(&format!("endpoint=\"{seen}\"")), "{metrics}");

    // A data message of node 2's, captured at node 1 and replayed from an
    // underlay host: dropped as a replay, the endpoint stays.
    let node1 = lab.node(1).underlay_ip;
    let capture = Capture::start(&lab.node(1).ns, "eth0").unwrap();
    assert!(lab.ping_once(2, lab.node(1).pod_ip.unwrap()));
    let frames = capture.stop().unwrap();
    let data = udp_payloads(&frames, node1, 51820).into_iter().find(|m| m[0] == 4).expect("a data message");
    let intruder = lab.add_intruder(&["198.18.0.200"]).unwrap();
    let replays = lab.metric(1, "weft_wireguard_dropped_total{reason=\"replay\"}").unwrap();
    netns::in_netns(&intruder, move || {
        let sock = std::net::UdpSocket::bind("198.18.0.200:51820").unwrap();
        for _ in 0..3 {
            sock.send_to(&data, SocketAddr::from((node1, 51820))).unwrap();
        }
    })
    .unwrap();
    wait_until("the replays to be dropped", PROPAGATION, || {
        (lab.metric(1, "weft_wireguard_dropped_total{reason=\"replay\"}").ok()? >= replays + 3).then_some(())
    })
    .unwrap();
    assert_eq!(endpoint_of_node2(&lab), seen, "a replay moved the endpoint");

    // The NAT's address changes: its mappings go with the old one (the
    // new address, a secondary one, stays when the old goes).
    netns::run(netns::exec(&router, "sysctl").args(["-qw", "net.ipv4.conf.eth0.promote_secondaries=1"])).unwrap();
    netns::ip(&["-n", &router, "addr", "add", "198.18.0.31/24", "dev", "eth0"]).unwrap();
    netns::ip(&["-n", &router, "addr", "del", "198.18.0.30/24", "dev", "eth0"]).unwrap();
    let pod2 = lab.node(2).pod_ip.unwrap();
    let back = wait_until("node 1 to reach node 2 at the NAT's new address", Duration::from_secs(40), || {
        let e = endpoint_of_node2(&lab);
        (e.starts_with("198.18.0.31:") && lab.ping_once(1, pod2)).then_some(e)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    assert!(back.starts_with("198.18.0.31:"));
    assert!(lab.ping_once(2, lab.node(1).pod_ip.unwrap()));
    for i in 1..=2 {
        assert_eq!(lab.http(i, "/readyz").unwrap().0, 200);
    }
}

/// `--public-ip` set to the NAT's address, which is not the host's, as
/// flanneld allows: published in the lease, said in the log, and the node
/// reaches and is reached through the NAT.
#[test]
fn a_public_ip_that_is_a_nats_address_is_published_and_works() {
    let (lab, _router) = nat_lab(Ipv4Addr::new(198, 18, 0, 30), &["--public-ip", "198.18.0.30"]);
    let log = lab.log(2);
    assert!(log.contains("the public address is not this host's"), "{log}");
    let (subnet, _, _) = lab.subnet_env(2).unwrap();
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.network(), subnet.prefix_len());
    let lease = text(&lab.etcdctl(&["get", "--print-value-only", &key]).unwrap().stdout);
    assert!(lease.contains("\"PublicIP\":\"198.18.0.30\""), "{lease}");
    assert!(endpoint_of_node2(&lab).starts_with("198.18.0.30:"));
}

/// A node restarted among many peers (600 leases of nodes that do not
/// answer, and node 1): node 1 keeps sending on the session the old
/// process had, which the new one cannot open; that data asks node 2 for a
/// handshake with node 1 at once, so pod 1 reaches pod 2 within a few
/// seconds. (Before, node 2 handshook with node 1 only when its turn came
/// among the first handshakes with 601 leases, 24 a second, or when node
/// 1 gave up on the old session after 15 s.)
#[test]
fn a_restarted_node_among_many_peers_is_reached_again_at_once() {
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap();
    let json =
        r#"{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMax":"10.244.99.192","Backend":{"Type":"wireguard"}}"#;
    lab.put_config(json).unwrap();
    // 600 /26s from 10.244.100.0 on, above the nodes' range.
    let fakes: Vec<(String, String)> = (0..600u32)
        .map(|i| {
            let (_, value) = weft_lab::peers::peer_wg_lease(i + 1);
            let at = (100u32 << 8) + i * 64;
            (format!("/coreos.com/network/subnets/10.244.{}.{}-26", at >> 8, at & 0xff), value)
        })
        .collect();
    lab.etcd_txn(fakes, vec![]).unwrap();
    for i in 1..=2 {
        lab.start_daemon(i, &[]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(i)));
        lab.attach_pod(i).unwrap();
    }
    let pod2 = lab.node(2).pod_ip.unwrap();
    wait_until("pod 1 to reach pod 2", Duration::from_secs(20), || lab.ping_once(1, pod2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));

    lab.stop_daemon(2, libc::SIGKILL).unwrap();
    lab.start_daemon(2, &[]).unwrap();
    lab.wait_ready(2, READY).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(2)));
    let began = std::time::Instant::now();
    wait_until("pod 1 to reach pod 2 after node 2's restart", Duration::from_secs(30), || {
        lab.ping_once(1, pod2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(2)));
    let back = began.elapsed();
    eprintln!("pod 1 reached pod 2 {back:?} after node 2 was ready again");
    assert!(back < Duration::from_secs(4), "pod 1 reached pod 2 only {back:?} after node 2's restart");
}
