//! `weft run` with the wireguard backend on a multi-node lab.

mod lab_common;

use std::os::unix::fs::PermissionsExt as _;

use lab_common::*;
use weft_lab::capture::{udp_payloads, Capture};
use weft_lab::lab::tcp_transfer_checked;
use weft_lab::wggo::WireguardGo;
use weft_lab::{netns, wait_until};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn wireguard_nodes_carry_pings_and_checked_tcp_with_flanneld_lease_data() {
    let lab = lab(3, "wireguard", &[]);
    assert_ping_matrix(&lab);
    assert_eq!(tcp_transfer_checked(&lab, 1, 2, 16 << 20).unwrap(), 16 << 20);
    std::thread::scope(|s| {
        let a = s.spawn(|| tcp_transfer_checked(&lab, 1, 3, 8 << 20));
        let b = s.spawn(|| tcp_transfer_checked(&lab, 3, 1, 8 << 20));
        assert_eq!(a.join().unwrap().unwrap(), 8 << 20);
        assert_eq!(b.join().unwrap().unwrap(), 8 << 20);
    });

    // The lease as flanneld writes it: the public key and the port.
    let (subnet, _, _) = lab.subnet_env(1).unwrap();
    let key = format!("/coreos.com/network/subnets/{}-{}", subnet.network(), subnet.prefix_len());
    let out = lab.etcdctl(&["get", "--print-value-only", &key]).unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lease["BackendType"], "wireguard", "{lease}");
    assert_eq!(lease["BackendData"]["Port"], 51820, "{lease}");
    let public = lease["BackendData"]["PublicKey"].as_str().unwrap().to_string();
    assert_eq!(public.len(), 44, "{lease}");

    // The key file: private, base64, and its public key is the lease's.
    let path = lab.node(1).subnet_file.with_file_name("wgkey");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let private = std::fs::read_to_string(&path).unwrap();
    let log = lab.log(1);
    assert!(!log.contains(private.trim()), "the private key reached the log");

    // flannel-wg as flanneld sets its device up: <subnet>/32, the network
    // via the device, MTU external - 80.
    let addr = text(&lab.node_cmd(1, "ip").args(["-4", "-o", "addr", "show", "flannel-wg"]).output().unwrap().stdout);
    assert!(addr.contains(&format!("inet {}/32", subnet.network())), "{addr}");
    let route = text(&lab.node_cmd(1, "ip").args(["route", "show", "10.244.0.0/16"]).output().unwrap().stdout);
    assert!(route.contains("dev flannel-wg") && route.contains("scope link"), "{route}");
    let link = text(&lab.node_cmd(1, "ip").args(["-o", "link", "show", "flannel-wg"]).output().unwrap().stdout);
    let eth0 = text(&lab.node_cmd(1, "ip").args(["-o", "link", "show", "eth0"]).output().unwrap().stdout);
    let mtu = |s: &str| -> u32 { s.split(" mtu ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap() };
    assert_eq!(mtu(&link), mtu(&eth0) - 80, "{link}");
    let env = std::fs::read_to_string(&lab.node(1).subnet_file).unwrap();
    assert!(env.contains(&format!("FLANNEL_MTU={}", mtu(&eth0) - 80)), "{env}");

    assert!(lab.metric(1, "weft_wireguard_handshakes_total").unwrap() >= 1);
    assert_metrics_documented(&lab, "wireguard");
    assert!(lab.metric(1, "weft_wireguard_packets_total{direction=\"tx\"}").unwrap() > 1000);
    assert!(log.contains("wireguard backend forwarding") && log.contains("offload=true"), "{log}");
}

fn lease_key(subnet: ipnet::Ipv4Net) -> String {
    format!("/coreos.com/network/subnets/{}-{}", subnet.network(), subnet.prefix_len())
}

fn lease_public_key(lab: &weft_lab::Lab, i: u8) -> String {
    let (subnet, _, _) = lab.subnet_env(i).unwrap();
    let out = lab.etcdctl(&["get", "--print-value-only", &lease_key(subnet)]).unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    lease["BackendData"]["PublicKey"].as_str().unwrap().to_string()
}

#[test]
fn wireguard_repairs_its_device_drops_gone_peers_and_keeps_its_key_across_restarts() {
    let mut lab = lab(3, "wireguard", &[]);
    let pod2 = lab.node(2).pod_ip.unwrap();

    // flannel-wg deleted: recreated with its address and route, pods reach
    // each other again.
    netns::run(lab.node_cmd(1, "ip").args(["link", "del", "flannel-wg"])).unwrap();
    wait_until("pod 1 to reach pod 2 after flannel-wg was deleted", READY, || lab.ping_once(1, pod2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    assert!(lab.metric(1, "weft_dataplane_repairs_total{backend=\"wireguard\",kind=\"device\"}").unwrap() >= 1);

    // A lease removed removes its peer.
    let gone = lab.subnet_env(3).unwrap().0;
    assert!(lab.stop_daemon(3, libc::SIGTERM).unwrap().success());
    lab.etcdctl(&["del", &lease_key(gone)]).unwrap();
    wait_until("node 1 to drop node 3's peer", PROPAGATION, || {
        (lab.metric(1, "weft_dataplane_peers_programmed{backend=\"wireguard\"}").ok()? == 1).then_some(())
    })
    .unwrap();
    let (_, metrics) = lab.http(1, "/metrics").unwrap();
    assert!(!metrics.contains(&format!("peer=\"{gone}\"")), "{metrics}");

    // A restart keeps the key, so the peers' configuration stays valid.
    let before = lease_public_key(&lab, 1);
    assert!(lab.stop_daemon(1, libc::SIGTERM).unwrap().success());
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap();
    assert_eq!(lease_public_key(&lab, 1), before);
    wait_until("pod 2 to reach pod 1 after the restart", READY, || {
        lab.ping_once(2, lab.node(1).pod_ip.unwrap()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
}

/// Datagrams that are not WireGuard, or forged, sent at node 1's port
/// from a namespace that is no node: each is dropped under its reason and
/// pod traffic goes on.
#[test]
fn wireguard_garbage_and_forgeries_are_dropped_and_counted() {
    let mut lab = lab(2, "wireguard", &[]);
    let target = std::net::SocketAddr::from((lab.node(1).underlay_ip, 51820));
    let intruder = lab.add_intruder(&["198.18.0.200"]).unwrap();
    let mut forged_init = vec![0u8; 148];
    forged_init[0] = 1;
    let mut forged_data = vec![0u8; 64];
    forged_data[0] = 4;
    forged_data[4..8].copy_from_slice(&0x00ff_ff01u32.to_le_bytes());
    let sends: [(&[u8], &str); 3] =
        [(b"garbage, not wireguard", "malformed"), (&forged_init, "authentication"), (&forged_data, "unknown_peer")];
    let datagrams: Vec<Vec<u8>> = sends.iter().map(|(p, _)| p.to_vec()).collect();
    netns::in_netns(&intruder, move || {
        let sock = std::net::UdpSocket::bind("198.18.0.200:0").unwrap();
        for _ in 0..10 {
            for d in &datagrams {
                sock.send_to(d, target).unwrap();
            }
        }
    })
    .unwrap();
    for (_, reason) in &sends {
        let name = format!("weft_wireguard_dropped_total{{reason=\"{reason}\"}}");
        wait_until(&format!("{name} to reach 10"), PROPAGATION, || (lab.metric(1, &name).ok()? >= 10).then_some(()))
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.http(1, "/metrics").unwrap().1));
    }
    assert_ping_matrix(&lab);

    // A lease whose node does not answer: named by /readyz once the grace
    // period is over, while the node stays ready (the fault is the other
    // node's), and no longer named when the lease goes.
    let silent: ipnet::Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let lease = serde_json::json!({
        "PublicIP": "198.18.0.200",
        "BackendType": "wireguard",
        "BackendData": {"PublicKey": "ZmFrZSBwZWVyIGtleSBmb3IgdGhlIHJlYWR5eiB0ZXM=", "Port": 51820},
    });
    lab.etcdctl(&["put", &lease_key(silent), &lease.to_string()]).unwrap();
    let (code, body) = wait_until("node 1 to name the silent peer", READY, || {
        let (code, body) = lab.http(1, "/readyz").ok()?;
        body.contains("other nodes at fault").then_some((code, body))
    })
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(
            "1 of 2 wireguard peers without a completed handshake (first: 10.244.200.0/24 at 198.18.0.200:51820"
        ),
        "{code} {body}"
    );
    assert_eq!(lab.metric(1, "weft_remote_problems").unwrap(), 1);
    assert_eq!(lab.metric(1, "weft_dataplane_ready{backend=\"wireguard\"}").unwrap(), 1);
    lab.etcdctl(&["del", &lease_key(silent)]).unwrap();
    wait_until("node 1 to stop naming it", PROPAGATION, || {
        (!lab.http(1, "/readyz").ok()?.1.contains("at fault")).then_some(())
    })
    .unwrap();
    assert!(lab.log(1).contains("other nodes at fault: none any more"), "{}", lab.log(1));
}

/// What node 1 sends node 2 is WireGuard and nothing else (a capture on
/// node 2's underlay interface): UDP to 51820, message types 1 to 4, no
/// pod payload or pod header in clear. A captured data message replayed,
/// or tampered with, is dropped and counted by node 2.
#[test]
fn wireguard_underlay_is_encrypted_and_replays_and_tampering_are_dropped() {
    let mut lab = lab(2, "wireguard", &[]);
    let (pod1, pod2) = (lab.node(1).pod_ip.unwrap(), lab.node(2).pod_ip.unwrap());
    let node2 = lab.node(2).underlay_ip;
    let capture = Capture::start(&lab.node(2).ns, "eth0").unwrap();
    // "weftsecret pod payload", as ping's pattern (hex, at most 16 bytes).
    let pattern = b"weftsecretpodpay";
    let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
    let out = netns::exec(&lab.node(1).pod_ns, "ping")
        .args(["-n", "-q", "-c", "5", "-i", "0.05", "-s", "200", "-p", &hex, &pod2.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(tcp_transfer_checked(&lab, 1, 2, 1 << 20).unwrap(), 1 << 20);
    let frames = capture.stop().unwrap();
    let messages = udp_payloads(&frames, node2, 51820);
    assert!(messages.len() >= 10, "{} messages to node 2 in {} frames", messages.len(), frames.len());
    let mut inner_header = pod1.octets().to_vec();
    inner_header.extend_from_slice(&pod2.octets());
    for m in &messages {
        assert!((1..=4).contains(&m[0]) && m[1..4] == [0, 0, 0], "not a WireGuard message: {:02x?}", &m[..8]);
        let clear = |needle: &[u8]| m.windows(needle.len()).any(|w| w == needle);
        assert!(!clear(pattern) && !clear(&inner_header), "cleartext on the underlay");
    }
    assert!(messages.iter().any(|m| m[0] == 4), "no data message");

    // Replayed and tampered copies of a data message, from elsewhere.
    let data = messages.iter().rev().find(|m| m[0] == 4 && m.len() < 400).expect("a small data message").clone();
    // A copy with a counter never used (ahead of the replay window's
    // edge, so it reaches the AEAD check): the counter is the nonce, so
    // the tag no longer verifies.
    let mut tampered = data.clone();
    let counter = u64::from_le_bytes(tampered[8..16].try_into().unwrap()) + 10_000;
    tampered[8..16].copy_from_slice(&counter.to_le_bytes());
    let intruder = lab.add_intruder(&["198.18.0.200"]).unwrap();
    let target = std::net::SocketAddr::from((node2, 51820));
    netns::in_netns(&intruder, move || {
        let sock = std::net::UdpSocket::bind("198.18.0.200:0").unwrap();
        for _ in 0..3 {
            sock.send_to(&data, target).unwrap();
            sock.send_to(&tampered, target).unwrap();
        }
    })
    .unwrap();
    for reason in ["replay", "authentication"] {
        let name = format!("weft_wireguard_dropped_total{{reason=\"{reason}\"}}");
        wait_until(&format!("{name} to reach 3"), PROPAGATION, || (lab.metric(2, &name).ok()? >= 3).then_some(()))
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.http(2, "/metrics").unwrap().1));
    }
    assert_ping_matrix(&lab);
}

/// wireguard-go (Debian's, an independent WireGuard) on node 2,
/// configured with `wg` from the leases as flanneld configures its kernel
/// device: pods behind it and behind a weft node ping and carry TCP both
/// ways.
#[test]
fn wireguard_interoperates_with_wireguard_go() {
    let mut lab = weft_lab::Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap();
    lab.put_config(&config("wireguard")).unwrap();
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap();
    lab.attach_pod(1).unwrap();
    let (subnet1, _, _) = lab.subnet_env(1).unwrap();
    let weft_key = lease_public_key(&lab, 1);

    // Node 2: wireguard-go with a key of its own and the lease flanneld
    // would write for it.
    let subnet2: ipnet::Ipv4Net = "10.244.150.0/24".parse().unwrap();
    let dev = format!("wgt{}", std::process::id() % 100_000);
    let dir = lab.node(2).subnet_file.parent().unwrap().to_path_buf();
    let wggo = WireguardGo::start(&lab.node(2).ns, &dev, &dir).unwrap();
    let endpoint1 = std::net::SocketAddr::from((lab.node(1).underlay_ip, 51820));
    wggo.add_peer(&weft_key, endpoint1, subnet1).unwrap();
    wggo.set_up(subnet2, 1420, "10.244.0.0/16".parse().unwrap()).unwrap();
    let lease = serde_json::json!({
        "PublicIP": lab.node(2).underlay_ip.to_string(),
        "BackendType": "wireguard",
        "BackendData": {"PublicKey": wggo.public_key, "Port": 51820},
    });
    lab.etcdctl(&["put", &lease_key(subnet2), &lease.to_string()]).unwrap();
    lab.write_subnet_env(2, "10.244.0.0/16".parse().unwrap(), subnet2, 1420).unwrap();
    let pod2 = lab.attach_pod(2).unwrap();
    let pod1 = lab.node(1).pod_ip.unwrap();

    wait_until("the weft pod to reach the wireguard-go pod", READY, || lab.ping_once(1, pod2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", lab.log_tail(1), wggo.log()));
    assert!(lab.ping_once(2, pod1), "the wireguard-go pod cannot reach the weft pod");
    assert_eq!(tcp_transfer_checked(&lab, 1, 2, 8 << 20).unwrap(), 8 << 20);
    assert_eq!(tcp_transfer_checked(&lab, 2, 1, 8 << 20).unwrap(), 8 << 20);
    // wireguard-go's view: a completed handshake with weft's key.
    let show = wggo.latest_handshakes().unwrap();
    let stamp: u64 = show.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(show.starts_with(&weft_key) && stamp > 0, "{show}");
    lab.wait_ready(1, READY).unwrap();
}

#[test]
fn wireguard_with_two_queues_carries_pings_and_checked_tcp() {
    let config = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","Backend":{"Type":"wireguard","Queues":2}}"#;
    let lab = lab_with_config(2, config, &[]);
    assert_ping_matrix(&lab);
    std::thread::scope(|s| {
        let a = s.spawn(|| tcp_transfer_checked(&lab, 1, 2, 8 << 20));
        let b = s.spawn(|| tcp_transfer_checked(&lab, 2, 1, 8 << 20));
        assert_eq!(a.join().unwrap().unwrap(), 8 << 20);
        assert_eq!(b.join().unwrap().unwrap(), 8 << 20);
    });
    let log = lab.log(1);
    // Two bulk queues and the lane.
    let started = log.lines().find(|l| l.contains("wireguard backend forwarding")).unwrap_or_else(|| panic!("{log}"));
    assert!(started.contains("queues=3") && started.contains("latency_lane=true"), "{started}");
    let tun = text(&lab.node_cmd(1, "ip").args(["-d", "link", "show", "flannel-wg"]).output().unwrap().stdout);
    assert!(tun.contains("multi_queue"), "{tun}");
}

/// By default (`LatencyLane` on), each device's bulk queue gets a lane:
/// small packets (and small WireGuard messages, on the receiving side)
/// take it, its two threads turn `SCHED_FIFO` only while a bulk stream
/// runs, and a ping beside the stream keeps a bounded tail (a generous
/// 5 ms here; the benchmark judges the real figure, docs/benchmarks.md).
#[test]
fn wireguard_defaults_keep_pings_short_beside_a_bulk_stream() {
    let lab = release_lab(2, &config("wireguard"));
    assert_lane_follows_a_bulk_stream(&lab, "wireguard backend forwarding", &["weft-wg-rx", "weft-wg-tx"]);
}
