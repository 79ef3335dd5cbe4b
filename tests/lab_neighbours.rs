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
