//! IPv6-only networks (`EnableIPv4: false`, which flanneld's etcd mode
//! cannot run) in the lab, for each backend: two nodes whose underlay has
//! no IPv4 at all (no address, no route; etcd reached over IPv6), pods
//! wired by the CNI plugin. What a user checks: one lease key per node,
//! the IPv6 subnet alone, whose value has no `PublicIP`; subnet.env with
//! the IPv6 variables only; pods with only an IPv6 address reaching each
//! other (ping and checked TCP); no IPv4 device, address or route of
//! weft's; `weft leases` listing the IPv6 subnets and addresses.

mod lab_common;

use std::time::Duration;

use lab_common::*;
use weft_lab::lab::tcp6_transfer_checked;
use weft_lab::Lab;

fn config6(backend: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{{"Type":"{backend}"}}}}"#
    )
}

/// Two nodes on an IPv6-only underlay running `backend`, each with a pod.
fn ipv6_only_lab(backend: &str) -> Lab {
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    lab.put_config(&config6(backend)).unwrap();
    for i in 1..=2 {
        lab.make_underlay_ipv6_only(i).unwrap();
        lab.start_daemon(i, &[]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod6(i).unwrap_or_else(|e| panic!("{e:#}"));
    }
    wait_converged6(&lab);
    check_leases_and_env(&lab, backend);
    assert_pods_reach_each_other(&lab);
    lab
}

fn check_leases_and_env(lab: &Lab, backend: &str) {
    let leases = leases(lab);
    assert_eq!(leases.len(), 2, "{leases:?}");
    let shown = weft_leases(lab);
    for i in 1..=2u8 {
        let node = lab.node(i);
        assert_eq!(env_var(lab, i, "FLANNEL_NETWORK"), None, "no IPv4 in subnet.env");
        assert_eq!(env_var(lab, i, "FLANNEL_SUBNET"), None, "no IPv4 in subnet.env");
        assert_eq!(env_var(lab, i, "FLANNEL_IPV6_NETWORK").as_deref(), Some("fd10:244::/56"));
        let sub6: ipnet::Ipv6Net = env_var(lab, i, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
        // The key is the IPv6 subnet alone, in the form of flanneld's keys.
        let want_key = format!("{}-64", sub6.network());
        let (_, value) =
            leases.iter().find(|(k, _)| *k == want_key).unwrap_or_else(|| panic!("no key {want_key} in {leases:?}"));
        assert!(value.get("PublicIP").is_none(), "an IPv6-only lease has no PublicIP: {value}");
        assert_eq!(value["PublicIPv6"], node.underlay_ip6.to_string(), "{value}");
        // flanneld's udp backend writes no BackendType; weft's does the same.
        assert_eq!(value["BackendType"].as_str().unwrap_or("udp"), backend, "{value}");
        let line = format!("{:<19} {:<16} {backend}", sub6.trunc().to_string(), node.underlay_ip6.to_string());
        assert!(shown.contains(&line), "weft leases shows {line:?}: {shown}");
        if backend == "vxlan" {
            assert!(value.get("BackendData").is_none(), "no IPv4 VTEP: {value}");
            assert_eq!(value["BackendV6Data"]["VNI"], 1, "{value}");
        }
        // Nothing of IPv4: no proto-87 route, no IPv4 address on weft's devices.
        assert_eq!(lab.weft_routes(i).unwrap().trim(), "", "no IPv4 routes");
        let v4 = lab.node_cmd(i, "ip").args(["-4", "-br", "addr", "show", "dev", "eth0"]).output().unwrap();
        assert!(String::from_utf8_lossy(&v4.stdout).trim().is_empty(), "the underlay has no IPv4");
    }
}

fn assert_pods_reach_each_other(lab: &Lab) {
    for (from, to) in [(1, 2), (2, 1)] {
        assert_eq!(lab.node(to).pod_ip, None, "pod {to} has no IPv4 address");
        let v6 = lab.node(to).pod_ip6.unwrap();
        assert!(lab.ping6_once(from, v6), "pod {from} cannot ping {v6}\n{}", lab.log_tail(from));
    }
    assert_eq!(tcp6_transfer_checked(lab, 1, 2, 4 << 20).unwrap(), 4 << 20, "TCP over IPv6");
    assert_eq!(tcp6_transfer_checked(lab, 2, 1, 1 << 20).unwrap(), 1 << 20, "TCP over IPv6, back");
}

/// Whether node `i` has link `dev`.
fn has_link(lab: &Lab, i: u8, dev: &str) -> bool {
    lab.node_cmd(i, "ip").args(["link", "show", dev]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn vxlan_ipv6_only() {
    let lab = ipv6_only_lab("vxlan");
    assert!(has_link(&lab, 1, "flannel-v6.1") && !has_link(&lab, 1, "flannel.1"), "only the IPv6 VXLAN device");
    delete_flannel_v6_and_wait_repaired(&lab);
}

#[test]
fn host_gw_ipv6_only() {
    let lab = ipv6_only_lab("host-gw");
    assert_host_gw_ipv6_route_and_chain(&lab);
    // The IPv4 chain is not installed.
    let v4 = lab.node_cmd(1, "iptables").args(["-S", "FLANNEL-FWD"]).output().unwrap();
    assert!(!v4.status.success(), "no IPv4 forward chain: {}", String::from_utf8_lossy(&v4.stdout));
}

#[test]
fn udp_ipv6_only() {
    let lab = ipv6_only_lab("udp");
    let addrs = lab.node_cmd(1, "ip").args(["-br", "addr", "show", "dev", "flannel0"]).output().unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    let sub6: ipnet::Ipv6Net = env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").unwrap().parse().unwrap();
    assert!(addrs.contains(&format!("{}/56", sub6.network())), "flannel0 has the IPv6 subnet's address: {addrs}");
    assert!(!addrs.contains("10.244."), "and no IPv4 one: {addrs}");
    // Every datagram went over the IPv6 underlay.
    assert!(lab.metric(1, "weft_udp_packets_total{direction=\"tx\"}").unwrap() > 0);
}

#[test]
fn turning_ipv4_off_under_a_running_node_keeps_its_ipv6_subnet_in_a_key_of_its_own() {
    let dual = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"host-gw"}}"#;
    let mut lab = lab_with_config(1, dual, &[]);
    let sub6 = env_var(&lab, 1, "FLANNEL_IPV6_SUBNET").unwrap();
    // The operator turns IPv4 off: the running node cannot apply it in
    // place, says so and exits for its service manager to restart it.
    lab.put_config(&config6("host-gw")).unwrap();
    let status = lab.wait_exit(1, Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "exits non-zero so that systemd restarts it");
    assert!(lab.log(1).contains("EnableIPv4 true -> false"), "{}", lab.log_tail(1));
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(env_var(&lab, 1, "FLANNEL_IPV6_SUBNET"), Some(sub6.clone()), "the IPv6 subnet is kept");
    assert_eq!(env_var(&lab, 1, "FLANNEL_SUBNET"), None);
    let keys: Vec<String> = leases(&lab).into_iter().map(|(k, _)| k).collect();
    let net6: ipnet::Ipv6Net = sub6.parse().unwrap();
    assert_eq!(keys, [format!("{}-64", net6.network())], "the dual key is replaced, not joined by a second");
}
