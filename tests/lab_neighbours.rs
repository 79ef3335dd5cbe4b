//! Broken neighbours never hurt a healthy node: a node that is gone but
//! keeps its lease (powered off, for the lease's TTL) is reported, and
//! the healthy nodes stay ready and keep talking, on every backend.

mod lab_common;

use std::time::{Duration, Instant};

use lab_common::*;

/// The lease a node at 198.18.0.200 would hold on `backend`, had it not
/// been powered off.
fn dead_node_lease(backend: &str) -> serde_json::Value {
    let data = match backend {
        "vxlan" => serde_json::json!({"VNI": 1, "VtepMAC": "02:42:c6:12:00:c8"}),
        "wireguard" => serde_json::json!({"PublicKey": "ZmFrZSBwZWVyIGtleSBmb3IgdGhlIHJlYWR5eiB0ZXM=", "Port": 51820}),
        _ => serde_json::Value::Null,
    };
    let mut lease = serde_json::json!({"PublicIP": "198.18.0.200", "BackendType": backend});
    if !data.is_null() {
        lease["BackendData"] = data;
    }
    lease
}

/// Both healthy nodes answer 200 on every poll for 15 s after the dead
/// node's lease appears (past the wireguard backend's 10 s grace for a
/// first handshake), and their pods keep talking.
fn a_dead_node_leaves_the_healthy_ready(backend: &str) {
    let lab = lab(2, backend, &[]);
    let key = "/coreos.com/network/subnets/10.244.200.0-24";
    lab.etcdctl(&["put", key, &dead_node_lease(backend).to_string()]).unwrap();
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(15) {
        for i in [1, 2] {
            let (code, body) = lab.http(i, "/readyz").unwrap();
            assert_eq!(
                code,
                200,
                "{backend}: node {i} not ready {:?} after a dead node's lease: {body}",
                began.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_ping_matrix(&lab);
    if backend == "wireguard" {
        for i in [1, 2] {
            let (_, body) = lab.http(i, "/readyz").unwrap();
            assert!(body.contains("other nodes at fault") && body.contains("10.244.200.0/24"), "node {i}: {body}");
            assert_eq!(lab.metric(i, "weft_remote_problems").unwrap(), 1);
            assert!(lab.log(i).contains("other nodes at fault (this node stays ready)"), "{}", lab.log_tail(i));
        }
    }
}

#[test]
fn a_dead_node_leaves_the_healthy_ready_on_vxlan() {
    a_dead_node_leaves_the_healthy_ready("vxlan");
}

#[test]
fn a_dead_node_leaves_the_healthy_ready_on_host_gw() {
    a_dead_node_leaves_the_healthy_ready("host-gw");
}

#[test]
fn a_dead_node_leaves_the_healthy_ready_on_udp() {
    a_dead_node_leaves_the_healthy_ready("udp");
}

#[test]
fn a_dead_node_leaves_the_healthy_ready_on_wireguard() {
    a_dead_node_leaves_the_healthy_ready("wireguard");
}

/// A second `weft run` on a host whose weft runs (a stray manual start
/// beside the unit) exits at once with a clear error, before it touches
/// anything; the first keeps its device, its threads and its pods talking.
#[test]
fn a_second_weft_run_on_a_host_is_refused_and_the_first_untouched() {
    let lab = lab(2, "udp", &[]);
    let mut second = lab.run_command(1, &[]).unwrap();
    let mut child = second.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let exited = weft_lab::wait_until("the second weft run to exit", Duration::from_secs(10), || {
        child.try_wait().ok().flatten()
    });
    if exited.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another weft run is already running on this host"), "{stderr}");
    assert_eq!(lab.http(1, "/readyz").unwrap().0, 200);
    assert_ping_matrix(&lab);
    assert_eq!(lab.metric(1, "weft_udp_thread_restarts_total{queue=\"0\"}").unwrap(), 0);
}

/// Node 3 starts with a copy of node 2's WireGuard key (a config-managed
/// key, a golden image). A key names one peer: node 1 reaches node 2 (the
/// older lease) and names node 3's lease as the duplicate, in `/readyz`
/// (still ready) and in one log line; nodes 2 and 3 refuse each other's
/// lease as carrying their own key. Before, the two leases merged into
/// one peer and node 1 silently lost one of them.
#[test]
fn two_wireguard_nodes_with_one_key_one_is_reached_and_both_are_named() {
    let mut lab = weft_lab::Lab::new(3, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(&config("wireguard")).unwrap();
    for i in [1, 2] {
        lab.start_daemon(i, &[]).unwrap();
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let key_file = |lab: &weft_lab::Lab, i: u8| lab.node(i).subnet_file.with_file_name("wgkey");
    std::fs::copy(key_file(&lab, 2), key_file(&lab, 3)).unwrap();
    lab.start_daemon(3, &[]).unwrap();
    lab.wait_ready(3, READY).unwrap_or_else(|e| panic!("{e:#}"));
    for i in 1..=3 {
        lab.attach_pod(i).unwrap();
    }
    let subnet = |i: u8| lab.subnet_env(i).unwrap().0.trunc();
    let (s2, s3) = (subnet(2), subnet(3));
    let said = format!("the wireguard lease of {s3} has the PublicKey of {s2}'s");
    let body = weft_lab::wait_until("node 1 to name the duplicate", PROPAGATION, || {
        let (code, body) = lab.http(1, "/readyz").ok()?;
        (code == 200 && body.contains(&said)).then_some(body)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", lab.http(1, "/readyz").unwrap().1, lab.log_tail(1)));
    assert!(body.contains("other nodes at fault"), "{body}");
    let pod2 = lab.node(2).pod_ip.unwrap();
    weft_lab::wait_until("pod 1 to reach pod 2", PROPAGATION, || lab.ping_once(1, pod2).then_some(())).unwrap();
    assert!(lab.ping_once(2, lab.node(1).pod_ip.unwrap()));
    for i in [2, 3] {
        weft_lab::wait_until(&format!("node {i} to refuse the other's lease"), PROPAGATION, || {
            (lab.metric(i, "weft_wireguard_peers_refused").ok()? == 1).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
        assert_eq!(lab.http(i, "/readyz").unwrap().0, 200);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lab.log(1).matches(&said).count(), 1, "said once:\n{}", lab.log(1));
}

/// Leases whose PublicIP no peer can have: a multicast group (every node
/// would multicast that subnet's pod traffic onto the underlay), loopback,
/// and the node's own address. None is programmed (no FDB entry, no
/// route); each is said once and counted; the node stays ready and its
/// pods keep talking.
#[test]
fn leases_with_addresses_no_peer_can_have_are_not_programmed_and_said_once() {
    let lab = lab(2, "vxlan", &["--resync-interval", "1s"]);
    let own = lab.node(1).underlay_ip.to_string();
    let bad = [(201u8, "224.0.0.1"), (202, "127.0.0.1"), (203, own.as_str())];
    for (n, ip) in bad {
        let lease = serde_json::json!({
            "PublicIP": ip,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": format!("02:42:c6:12:00:{n:02x}")},
        });
        lab.etcdctl(&["put", &format!("/coreos.com/network/subnets/10.244.{n}.0-24"), &lease.to_string()]).unwrap();
    }
    weft_lab::wait_until("node 1 to count the three", PROPAGATION, || {
        (lab.metric(1, "weft_leases_ignored").ok()? == 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    // A few passes more: still said once each.
    std::thread::sleep(Duration::from_secs(3));
    let run = |args: &[&str]| {
        String::from_utf8_lossy(&lab.node_cmd(1, args[0]).args(&args[1..]).output().unwrap().stdout).into_owned()
    };
    let fdb = run(&["bridge", "fdb", "show", "dev", "flannel.1"]);
    let routes = run(&["ip", "route"]);
    let log = lab.log(1);
    for (n, ip) in bad {
        assert!(!fdb.contains(&format!("dst {ip} ")), "an FDB entry to {ip}:\n{fdb}");
        assert!(!routes.contains(&format!("10.244.{n}.0/24")), "a route to 10.244.{n}.0/24:\n{routes}");
        let said = log.matches(&format!("ignoring the lease of 10.244.{n}.0/24: PublicIP {ip} is")).count();
        assert_eq!(said, 1, "lease {n}:\n{log}");
    }
    assert_eq!(lab.http(1, "/readyz").unwrap().0, 200);
    assert_ping_matrix(&lab);
}

/// A second host comes up with node 1's address (a cloned VM, a leftover
/// node): told apart by its node ID, it refuses to start with a clear
/// error naming the lease and both IDs, and never rewrites node 1's lease;
/// node 1 stays ready with its subnet.
#[test]
fn a_second_host_with_a_nodes_address_is_told_apart_and_said_not_fought() {
    let mut lab = weft_lab::Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(&config("host-gw")).unwrap();
    lab.start_daemon_env(1, &[], &[("WEFT_NODE_ID", "node-one")]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let subnet = lab.subnet_env(1).unwrap().0.trunc();
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.network(), subnet.prefix_len());
    let value = |lab: &weft_lab::Lab| lab.etcdctl(&["get", "--print-value-only", &key]).unwrap().stdout;
    let before = value(&lab);
    assert!(
        String::from_utf8_lossy(&before).contains("\"WeftNodeID\":\"node-one\""),
        "{}",
        String::from_utf8_lossy(&before)
    );

    let ip1 = lab.node(1).underlay_ip.to_string();
    let added =
        lab.node_cmd(2, "ip").args(["addr", "add", &format!("{ip1}/24"), "dev", "eth0", "nodad"]).status().unwrap();
    assert!(added.success());
    let mut second = lab.run_command(2, &["--public-ip", &ip1]).unwrap();
    second.env("WEFT_NODE_ID", "node-two").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = second.spawn().unwrap();
    let exited =
        weft_lab::wait_until("the second host to give up", Duration::from_secs(15), || child.try_wait().ok().flatten());
    if exited.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let said = format!("another host holds the lease of {subnet} with this node's public address {ip1}");
    assert!(stderr.contains(&said) && stderr.contains("node-one") && stderr.contains("node-two"), "{stderr}");
    assert_eq!(value(&lab), before, "node 1's lease was rewritten");
    assert_eq!(lab.http(1, "/readyz").unwrap().0, 200);
    assert_eq!(lab.subnet_env(1).unwrap().0.trunc(), subnet);
}
