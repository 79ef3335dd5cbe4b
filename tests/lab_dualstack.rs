//! Dual-stack networks (`EnableIPv6`) in the lab: two nodes on a v4+v6
//! underlay, pods wired by the CNI plugin, for each backend. What a user checks: one lease key per node in
//! flanneld's dual form, both families in subnet.env, pods reaching each
//! other over IPv4 and IPv6, IPv6 repaired like IPv4, and a v4 node
//! turned dual-stack keeping its IPv4 subnet. The udp backend carries pod
//! IPv6 too, over the IPv6 underlay.

mod lab_common;

use std::time::Duration;

use lab_common::*;
use weft_lab::lab::{tcp6_transfer_checked, tcp_transfer_checked};
use weft_lab::{wait_until, Lab};

fn dual_config(backend: &str) -> String {
    format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{{"Type":"{backend}"}}}}"#
    )
}

fn assert_pods_reach_each_other_over_both_families(lab: &Lab) {
    for (from, to) in [(1, 2), (2, 1)] {
        let v4 = lab.node(to).pod_ip.unwrap();
        let v6 = lab.node(to).pod_ip6.unwrap_or_else(|| panic!("pod {to} has no IPv6 address"));
        assert!(lab.ping_once(from, v4), "pod {from} cannot ping {v4}\n{}", lab.log_tail(from));
        assert!(lab.ping6_once(from, v6), "pod {from} cannot ping {v6}\n{}", lab.log_tail(from));
    }
    assert_eq!(tcp6_transfer_checked(lab, 1, 2, 4 << 20).unwrap(), 4 << 20, "TCP over IPv6");
    assert_eq!(tcp_transfer_checked(lab, 2, 1, 1 << 20).unwrap(), 1 << 20, "TCP over IPv4");
}

fn check_leases_and_env(lab: &Lab, backend: &str) {
    let leases = leases(lab);
    assert_eq!(leases.len(), 2, "{leases:?}");
    let shown = weft_leases(lab);
    for i in 1..=2u8 {
        let node = lab.node(i);
        let sub4 = env_var(lab, i, "FLANNEL_SUBNET").unwrap();
        let sub6: ipnet::Ipv6Net = env_var(lab, i, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
        assert_eq!(env_var(lab, i, "FLANNEL_IPV6_NETWORK").as_deref(), Some("fd10:244::/56"));
        assert!(sub6.addr().segments()[7] == 1, "FLANNEL_IPV6_SUBNET is the subnet's first address: {sub6}");
        // flanneld's key: <v4 subnet>-<len>&<v6 subnet>-<len>
        let v4: ipnet::Ipv4Net = sub4.parse().unwrap();
        let want_key = format!("{}-24&{}-64", v4.network(), sub6.network());
        let (_, value) =
            leases.iter().find(|(k, _)| *k == want_key).unwrap_or_else(|| panic!("no key {want_key} in {leases:?}"));
        assert_eq!(value["PublicIP"], node.underlay_ip.to_string(), "{value}");
        assert_eq!(value["PublicIPv6"], node.underlay_ip6.to_string(), "{value}");
        let line6 = format!("  {} {}", sub6.trunc(), node.underlay_ip6);
        assert!(shown.contains(&line6), "weft leases shows {line6:?}: {shown}");
        if backend == "vxlan" {
            let shown = lab.node_cmd(i, "ip").args(["-br", "link", "show", "flannel-v6.1"]).output().unwrap();
            let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
            assert_eq!(value["BackendV6Data"]["VNI"], 1, "{value}");
            let mac6 = value["BackendV6Data"]["VtepMAC"].as_str().unwrap_or_else(|| panic!("no v6 VtepMAC: {value}"));
            assert!(shown.contains(mac6), "flannel-v6.1 has the published MAC {mac6}: {shown}");
        } else if backend == "wireguard" {
            // The same key as the IPv4 device, the IPv6 device's port.
            assert_eq!(value["BackendV6Data"]["PublicKey"], value["BackendData"]["PublicKey"], "{value}");
            assert_eq!(value["BackendV6Data"]["Port"], 51821, "{value}");
        } else {
            assert!(value.get("BackendV6Data").is_none(), "{value}");
        }
    }
}

fn dual_stack_pods_reach_each_other(backend: &str) -> Lab {
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    lab.put_config(&dual_config(backend)).unwrap();
    for i in 1..=2 {
        lab.start_daemon(i, &[]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod(i).unwrap();
    }
    wait_converged(&lab);
    wait_converged6(&lab);
    check_leases_and_env(&lab, backend);
    assert_pods_reach_each_other_over_both_families(&lab);
    lab
}

#[test]
fn vxlan_dual_stack() {
    let lab = dual_stack_pods_reach_each_other("vxlan");
    delete_flannel_v6_and_wait_repaired(&lab);
}

#[test]
fn host_gw_dual_stack() {
    let lab = dual_stack_pods_reach_each_other("host-gw");
    assert_host_gw_ipv6_route_and_chain(&lab);
}

#[test]
fn ip_masq_installs_flanneld_ip6_rules() {
    let lab = lab_with_config(1, &dual_config("host-gw"), &["--ip-masq"]);
    let out = lab.node_cmd(1, "ip6tables").args(["-t", "nat", "-S", "FLANNEL-POSTRTG"]).output().unwrap();
    let rules = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(rules.contains("-s fd10:244::/56 ! -d ff00::/8"), "{rules}");
    assert!(rules.contains("-j MASQUERADE --random-fully"), "{rules}");
    let jump = lab.node_cmd(1, "ip6tables").args(["-t", "nat", "-S", "POSTROUTING"]).output().unwrap();
    assert!(String::from_utf8_lossy(&jump.stdout).contains("-j FLANNEL-POSTRTG"));
}

#[test]
fn turning_ipv6_on_under_a_running_node_replaces_its_key_and_keeps_its_subnet() {
    let mut lab = lab(1, "vxlan", &[]);
    let (v4_subnet, _, _) = lab.subnet_env(1).unwrap();
    assert_eq!(leases(&lab).len(), 1);
    // The operator turns IPv6 on: the running node cannot apply it in
    // place, says so and exits for its service manager to restart it.
    lab.put_config(&dual_config("vxlan")).unwrap();
    let status = lab.wait_exit(1, Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "exits non-zero so that systemd restarts it");
    assert!(lab.log(1).contains("IPv6"), "{}", lab.log_tail(1));
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let (again, _, _) = lab.subnet_env(1).unwrap();
    assert_eq!(again, v4_subnet, "the IPv4 subnet is kept");
    let keys: Vec<String> = leases(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 1, "the v4-only key is replaced, not joined by a second: {keys:?}");
    assert!(keys[0].starts_with(&format!("{}-24&fd10:244:", v4_subnet.network())), "{keys:?}");
    assert!(env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").is_some());
}

/// Node `i`'s UDP datagrams sent so far: (over IPv4, over IPv6), from
/// its namespace's /proc/net/snmp and /proc/net/snmp6.
fn udp_datagrams_out(lab: &Lab, i: u8) -> (u64, u64) {
    let read = |file: &str| {
        let out = lab.node_cmd(i, "cat").arg(file).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snmp = read("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "OutDatagrams").unwrap();
    let v4 = values.split_whitespace().nth(at).unwrap().parse().unwrap();
    let snmp6 = read("/proc/net/snmp6");
    let v6 = snmp6.lines().find_map(|l| l.strip_prefix("Udp6OutDatagrams")).unwrap().trim().parse().unwrap();
    (v4, v6)
}

/// Ten pings from pod 1 to `dst`, each answered: the UDP datagrams node 1
/// sent meanwhile, (over IPv4, over IPv6).
fn datagrams_for_ten_pings(lab: &Lab, dst: std::net::IpAddr) -> (u64, u64) {
    let before = udp_datagrams_out(lab, 1);
    for _ in 0..10 {
        let ok = match dst {
            std::net::IpAddr::V6(d) => lab.ping6_once(1, d),
            std::net::IpAddr::V4(d) => lab.ping_once(1, d),
        };
        assert!(ok, "pod 1 cannot ping {dst}");
    }
    let after = udp_datagrams_out(lab, 1);
    (after.0 - before.0, after.1 - before.1)
}

#[test]
fn udp_dual_stack() {
    // Pod IPv6 travels through flannel0 like IPv4; the TUN device holds
    // both families' addresses.
    let lab = dual_stack_pods_reach_each_other("udp");
    // Over the IPv6 underlay (both nodes have a PublicIPv6): pod IPv6 in
    // IPv6 datagrams to the peer's PublicIPv6, pod IPv4 still in IPv4 ones
    // (flanneld's format), and the MTU leaves room for the IPv6 header.
    for (family, dst) in [("IPv6", lab.node(2).pod_ip6.unwrap().into()), ("IPv4", lab.node(2).pod_ip.unwrap().into())] {
        let (v4, v6) = datagrams_for_ten_pings(&lab, dst);
        if family == "IPv6" {
            assert!(v6 >= 10 && v4 < 10, "10 pod IPv6 pings: {v6} IPv6 and {v4} IPv4 datagrams sent");
        } else {
            assert!(v4 >= 10 && v6 < 10, "10 pod IPv4 pings: {v4} IPv4 and {v6} IPv6 datagrams sent");
        }
    }
    let ext_mtu: u32 = {
        let out = lab.node_cmd(1, "cat").arg("/sys/class/net/eth0/mtu").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert_eq!(env_var(&lab, 1, "FLANNEL_MTU"), Some((ext_mtu - 48).to_string()), "IPv6 (40) + UDP (8) overhead");
    let addrs = lab.node_cmd(1, "ip").args(["-6", "-br", "addr", "show", "dev", "flannel0"]).output().unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    let sub6: ipnet::Ipv6Net = env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
    assert!(addrs.contains(&format!("{}/56", sub6.network())), "flannel0 has <v6 subnet>/<v6 network prefix>: {addrs}");
    // IPv6 to a subnet nobody leases is answered with ICMPv6 unreachable
    // from flannel0, not black-holed.
    let out = lab
        .node_cmd(1, "ip")
        .args(["netns", "exec", &lab.node(1).pod_ns, "ping", "-6", "-n", "-c", "1", "-W", "2", "fd10:244:0:c8::9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(text.contains("Destination unreachable") || text.contains("No route"), "{text}");
    assert!(lab.metric(1, "weft_udp_dropped_total{reason=\"no_route\"}").unwrap() >= 1);

    // The IPv6 network's route on flannel0 removed: put back, IPv6 flows again.
    let out = lab.node_cmd(1, "ip").args(["-6", "route", "del", "fd10:244::/56", "dev", "flannel0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dst = lab.node(2).pod_ip6.unwrap();
    wait_until("the IPv6 network's route on flannel0 to be restored", Duration::from_secs(10), || {
        let r =
            lab.node_cmd(1, "ip").args(["-6", "route", "show", "fd10:244::/56", "dev", "flannel0"]).output().ok()?;
        (!r.stdout.is_empty() && lab.ping6_once(1, dst)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(1)));
    assert!(lab.metric(1, "weft_dataplane_repairs_total{backend=\"udp\",kind=\"route\"}").unwrap() >= 1);
}

#[test]
fn wireguard_dual_stack() {
    // flanneld's default Mode, separate: pod IPv6 through flannel-wg-v6,
    // over the IPv6 underlay to the peers' PublicIPv6 on port 51821.
    let lab = dual_stack_pods_reach_each_other("wireguard");
    let before = udp_datagrams_out(&lab, 1);
    for _ in 0..10 {
        assert!(lab.ping6_once(1, lab.node(2).pod_ip6.unwrap()));
    }
    let after = udp_datagrams_out(&lab, 1);
    assert!(after.1 - before.1 >= 10, "10 pod IPv6 pings: {} IPv6 datagrams", after.1 - before.1);
    let text = |args: &[&str]| {
        String::from_utf8_lossy(&lab.node_cmd(1, "ip").args(args).output().unwrap().stdout).into_owned()
    };
    let sub6: ipnet::Ipv6Net = env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
    let addr = text(&["-6", "-o", "addr", "show", "dev", "flannel-wg-v6"]);
    assert!(addr.contains(&format!("{}/128", sub6.network())), "{addr}");
    let route = text(&["-6", "route", "show", "fd10:244::/56"]);
    assert!(route.contains("dev flannel-wg-v6"), "{route}");
    let sockets = String::from_utf8_lossy(&lab.node_cmd(1, "ss").args(["-uln"]).output().unwrap().stdout).into_owned();
    assert!(sockets.contains(&format!("[{}]:51821", lab.node(1).underlay_ip6)), "{sockets}");
    let peer6: ipnet::Ipv6Net = env_var(&lab, 2, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
    let (_, metrics) = lab.http(1, "/metrics").unwrap();
    let gauge = format!("weft_wireguard_peer_last_handshake_seconds{{peer=\"{}\"}}", peer6.trunc());
    assert!(metrics.contains(&gauge), "{gauge} in {metrics}");
}

#[test]
fn wireguard_dual_stack_on_one_device_with_mode_auto() {
    // Mode auto, flanneld's other layout: flannel-wg carries both families,
    // each peer reached over IPv6 as it has a PublicIPv6, on ListenPort.
    let config = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"wireguard","Mode":"auto"}}"#;
    let lab = lab_with_config(2, config, &[]);
    wait_converged6(&lab);
    for i in 1..=2u8 {
        let (_, value) = leases(&lab)
            .into_iter()
            .find(|(k, _)| k.starts_with(&env_var(&lab, i, "FLANNEL_SUBNET").unwrap().replace(".1/24", ".0-24")))
            .unwrap();
        assert_eq!(value["BackendV6Data"]["PublicKey"], value["BackendData"]["PublicKey"], "{value}");
        assert_eq!(value["BackendV6Data"]["Port"], 51820, "one device, one port: {value}");
    }
    for (family, dst) in [("IPv6", lab.node(2).pod_ip6.unwrap().into()), ("IPv4", lab.node(2).pod_ip.unwrap().into())] {
        let (v4, v6) = datagrams_for_ten_pings(&lab, dst);
        assert!(v6 >= 10, "10 pod {family} pings go over the IPv6 underlay: {v4} IPv4 and {v6} IPv6 datagrams sent");
    }
    assert_eq!(tcp6_transfer_checked(&lab, 1, 2, 1 << 20).unwrap(), 1 << 20);
    let text = |args: &[&str]| {
        String::from_utf8_lossy(&lab.node_cmd(1, "ip").args(args).output().unwrap().stdout).into_owned()
    };
    let sub6: ipnet::Ipv6Net = env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
    assert!(text(&["-6", "-o", "addr", "show", "dev", "flannel-wg"]).contains(&format!("{}/128", sub6.network())));
    assert!(!lab.node_cmd(1, "ip").args(["link", "show", "flannel-wg-v6"]).output().unwrap().status.success());
}
