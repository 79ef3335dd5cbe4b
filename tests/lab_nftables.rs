//! flannel's nftables mode (`"EnableNFTables": true`) in the lab, on every
//! backend: pods reach each other, a pod reaches the underlay only
//! masqueraded, and `nft list table` shows, byte for byte, what flannel's
//! own nftables mode makes (`tests/data/flannel-nftables/`, recorded from
//! flannel's source); a deleted table or rule is put back within a resync and
//! counted; switching modes leaves only the new mode's objects; a node
//! without iptables runs the nftables mode and refuses the iptables mode
//! with an error naming the option.

mod lab_common;

use std::time::Duration;

use ipnet::IpNet;
use lab_common::*;
use weft_lab::lab::SWITCH_IP;
use weft_lab::{wait_until, Lab};

const RESYNC: &str = "2s";
const NETWORK6: &str = "fd10:244::/56";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The lab's config for `backend` in nftables mode (dual-stack when `dual`).
fn nft_config(backend: &str, dual: bool) -> String {
    let v6 = if dual { format!(r#","EnableIPv6":true,"IPv6Network":"{NETWORK6}""#) } else { String::new() };
    format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","EnableNFTables":true{v6},"Backend":{{"Type":"{backend}"}}}}"#
    )
}

/// What `nft list table` prints of weft's two tables in node `i`.
fn listing(lab: &Lab, i: u8) -> String {
    let mut out = String::new();
    for (family, table) in [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")] {
        let o = lab.node_cmd(i, "nft").args(["list", "table", family, table]).output().unwrap();
        out += &text(&o.stdout);
    }
    out
}

/// The node's subnet of `var` (`FLANNEL_SUBNET`: `10.244.7.1/24`) as a
/// network (`10.244.7.0/24`).
fn own_subnet(lab: &Lab, i: u8, var: &str) -> String {
    let v = env_var(lab, i, var).unwrap_or_else(|| panic!("{var} missing in node {i}'s subnet.env"));
    v.parse::<IpNet>().unwrap().trunc().to_string()
}

/// The recording `file` with node `i`'s subnets where the recorded ones are.
fn expected(lab: &Lab, i: u8, file: &str) -> String {
    let path = format!("{}/tests/data/flannel-nftables/{file}", env!("CARGO_MANIFEST_DIR"));
    let recorded = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut s = recorded;
    if !file.starts_with("ipv6") {
        s = s.replace("10.244.1.0/24", &own_subnet(lab, i, "FLANNEL_SUBNET"));
    }
    if !file.starts_with("ipv4") {
        s = s.replace("fd10:244:0:1::/64", &own_subnet(lab, i, "FLANNEL_IPV6_SUBNET"));
    }
    s
}

/// No iptables chains of weft's in node `i`.
fn assert_no_iptables_chains(lab: &Lab, i: u8) {
    for (table, chain) in [("nat", "FLANNEL-POSTRTG"), ("filter", "FLANNEL-FWD")] {
        let o = lab.node_cmd(i, "iptables").args(["-t", table, "-S", chain]).output().unwrap();
        assert!(!o.status.success(), "{chain} is there in nftables mode: {}", text(&o.stdout));
    }
}

fn nftables_mode(backend: &str) -> Lab {
    let lab = lab_with_config(2, &nft_config(backend, false), &["--ip-masq", "--resync-interval", RESYNC]);
    assert_ping_matrix(&lab);
    for i in 1..=2 {
        assert_eq!(listing(&lab, i), expected(&lab, i, "ipv4.txt"), "{backend}: node {i}");
        assert_no_iptables_chains(&lab, i);
    }
    // The switch has no route to the pods: only a masqueraded ping gets an answer.
    assert!(lab.ping_once(1, SWITCH_IP), "{backend}: pod 1 (masqueraded) reaches the underlay\n{}", lab.log_tail(1));
    lab
}

#[test]
fn vxlan_in_nftables_mode_repairs_its_tables() {
    let lab = nftables_mode("vxlan");
    let repairs = || lab.metric(2, r#"weft_dataplane_repairs_total{backend="vxlan",kind="rules"}"#).unwrap();
    let before = repairs();
    let del = lab.node_cmd(2, "nft").args(["delete", "table", "ip", "flannel-ipv4"]).output().unwrap();
    assert!(del.status.success(), "{}", text(&del.stderr));
    wait_until("the table to be back and the repair counted", Duration::from_secs(5), || {
        (listing(&lab, 2) == expected(&lab, 2, "ipv4.txt") && repairs() > before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", listing(&lab, 2), lab.log_tail(2)));
    assert!(lab.log(2).contains("weft's nftables rules were changed or removed"), "{}", lab.log_tail(2));

    // One rule deleted (the first masquerade): put back the same way.
    let chain = lab.node_cmd(2, "nft").args(["-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"]).output().unwrap();
    let chain = text(&chain.stdout);
    let handle = chain
        .lines()
        .find(|l| l.contains("masquerade"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no masquerade rule with a handle in {chain}"))
        .trim()
        .to_string();
    let before = repairs();
    let del =
        lab.node_cmd(2, "nft").args(["delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", &handle]).output();
    assert!(del.unwrap().status.success());
    assert_ne!(listing(&lab, 2), expected(&lab, 2, "ipv4.txt"), "the rule is gone");
    wait_until("the rule to be back and the repair counted", Duration::from_secs(5), || {
        (listing(&lab, 2) == expected(&lab, 2, "ipv4.txt") && repairs() > before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", listing(&lab, 2), lab.log_tail(2)));
    assert_ping_matrix(&lab);
}

#[test]
fn host_gw_in_nftables_mode() {
    nftables_mode("host-gw");
}

#[test]
fn udp_in_nftables_mode() {
    nftables_mode("udp");
}

#[test]
fn wireguard_in_nftables_mode() {
    nftables_mode("wireguard");
}

#[test]
fn dual_stack_in_nftables_mode() {
    let lab = lab_with_config(2, &nft_config("vxlan", true), &["--ip-masq"]);
    assert_ping_matrix(&lab);
    for i in 1..=2 {
        assert_eq!(listing(&lab, i), expected(&lab, i, "dual-stack.txt"), "node {i}");
    }
}

/// IPv6-only: the IPv4 table is there (flannel makes both), empty; the
/// IPv6 one has the chains.
#[test]
fn ipv6_only_in_nftables_mode() {
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    lab.put_config(&format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{NETWORK6}","EnableNFTables":true,"Backend":{{"Type":"vxlan"}}}}"#
    ))
    .unwrap();
    for i in 1..=2 {
        lab.make_underlay_ipv6_only(i).unwrap();
        lab.start_daemon(i, &["--ip-masq"]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod6(i).unwrap_or_else(|e| panic!("{e:#}"));
    }
    wait_converged6(&lab);
    let pod2 = lab.node(2).pod_ip6.unwrap();
    assert!(lab.ping6_once(1, pod2), "pod 1 reaches pod 2 over IPv6\n{}", lab.log_tail(1));
    for i in 1..=2 {
        assert_eq!(listing(&lab, i), expected(&lab, i, "ipv6-only.txt"), "node {i}");
    }
}

/// Switching the mode (a restart with the other config) leaves only the new
/// mode's objects, both ways.
#[test]
fn switching_modes_leaves_only_the_new_mode_s_rules() {
    let mut lab = lab_with_config(1, &nft_config("host-gw", false), &["--ip-masq"]);
    assert!(listing(&lab, 1).contains("chain postrtg"), "{}", listing(&lab, 1));
    assert!(lab.stop_daemon(1, libc::SIGTERM).unwrap().success());

    lab.put_config(&config("host-gw")).unwrap();
    lab.start_daemon(1, &["--ip-masq"]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(listing(&lab, 1), "", "flannel's tables are gone in iptables mode");
    let chain = lab.node_cmd(1, "iptables").args(["-t", "nat", "-S", "FLANNEL-POSTRTG"]).output().unwrap();
    assert!(text(&chain.stdout).contains("MASQUERADE"), "{}", text(&chain.stdout));
    assert!(lab.log(1).contains("removed the nftables tables"), "{}", lab.log_tail(1));
    assert!(lab.stop_daemon(1, libc::SIGTERM).unwrap().success());

    lab.put_config(&nft_config("host-gw", false)).unwrap();
    lab.start_daemon(1, &["--ip-masq"]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    assert_no_iptables_chains(&lab, 1);
    assert_eq!(listing(&lab, 1), expected(&lab, 1, "ipv4.txt"));
    assert!(lab.ping_once(1, SWITCH_IP), "masqueraded again\n{}", lab.log_tail(1));
}

/// A host without the iptables commands (only nft on the PATH): the
/// nftables mode runs; the iptables mode stops at start with an error that
/// names `EnableNFTables`, and changes nothing.
#[test]
fn a_node_without_iptables_runs_the_nftables_mode() {
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let bin = lab.dir().join("nft-only");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/usr/sbin/nft", bin.join("nft")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let env = [("PATH", path.as_str())];

    lab.put_config(&config("host-gw")).unwrap();
    lab.start_daemon_env(1, &["--ip-masq"], &env).unwrap();
    let status = lab.wait_exit(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(1)));
    assert!(!status.success());
    let log = lab.log(1);
    assert!(log.contains("cannot run iptables") && log.contains("EnableNFTables"), "{log}");
    assert!(!lab.node(1).subnet_file.exists(), "nothing written");

    lab.put_config(&nft_config("host-gw", false)).unwrap();
    lab.start_daemon_env(1, &["--ip-masq"], &env).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(1)));
    lab.attach_pod(1).unwrap();
    assert_eq!(listing(&lab, 1), expected(&lab, 1, "ipv4.txt"));
    assert!(lab.ping_once(1, SWITCH_IP), "masqueraded\n{}", lab.log_tail(1));
}
