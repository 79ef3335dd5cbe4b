//! `weft run` with the wireguard backend on a multi-node lab.

mod lab_common;

use std::os::unix::fs::PermissionsExt as _;

use lab_common::*;
use weft_lab::lab::tcp_transfer_checked;

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
    assert!(lab.metric(1, "weft_wireguard_packets_total{direction=\"tx\"}").unwrap() > 1000);
    assert!(log.contains("wireguard backend forwarding"), "{log}");
}
