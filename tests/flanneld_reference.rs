//! Drop-in compatibility with flanneld v0.20.2, against what flanneld itself
//! wrote (tests/data/flanneld-reference/, recorded on a 2-node lab like
//! ours): every etcd value is parsed and written back byte for byte, every
//! subnet.env rendered the same, the iptables rules are flanneld's, and a
//! weft node fed flanneld's leases programs exactly the neighbour, FDB and
//! route entries flanneld programmed. The same for dual-stack vxlan
//! against `vxlan-dual.txt`, derived from flanneld's source (flanneld
//! cannot run here; the file's header says what it was written from).

mod lab_common;

use std::collections::BTreeMap;

use lab_common::*;
use weft_dataplane::{forward_rules, masq_rules};
use weft_lab::{netns, wait_until, Lab};
use weft_subnet::SubnetEnv;
use weft_subnet::{parse_subnet_key, subnet_key};
use weft_subnet::{LeaseAttrs, NetworkConfig};

const PREFIX: &str = "/coreos.com/network/subnets/";

/// One recorded file: section title -> lines.
struct Reference {
    sections: BTreeMap<String, Vec<String>>,
}

impl Reference {
    fn load(backend: &str) -> Reference {
        let path = format!("{}/tests/data/flanneld-reference/{backend}.txt", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut sections = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(title) = line.strip_prefix("## ") {
                current = title.to_string();
                sections.insert(current.clone(), Vec::new());
            } else if !line.is_empty() {
                sections.entry(current.clone()).or_insert_with(Vec::new).push(line.to_string());
            }
        }
        Reference { sections }
    }

    fn section(&self, title: &str) -> &[String] {
        self.sections.get(title).unwrap_or_else(|| panic!("no section {title:?}"))
    }

    /// (key, value) pairs of the etcd section.
    fn etcd(&self) -> Vec<(String, String)> {
        self.section("etcd (key, then value)").chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
    }

    fn config(&self) -> NetworkConfig {
        let (_, value) = self.etcd().into_iter().find(|(k, _)| k.ends_with("/config")).unwrap();
        NetworkConfig::parse(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn leases(&self) -> Vec<(String, String)> {
        self.etcd().into_iter().filter(|(k, _)| k.starts_with(PREFIX)).collect()
    }
}

fn values_round_trip(backend: &str) {
    let r = Reference::load(backend);
    let config = r.config();
    assert_eq!(config.backend.type_name(), backend, "the config means {backend}");
    let leases = r.leases();
    assert_eq!(leases.len(), 2);
    for (key, value) in &leases {
        let name = key.strip_prefix(PREFIX).unwrap();
        let (subnet, v6) = parse_subnet_key(name).unwrap();
        assert_eq!(subnet_key(subnet.as_ref(), v6.as_ref()), name, "key written back");
        let attrs: LeaseAttrs = serde_json::from_str(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(attrs.backend_kind(), backend, "{value}");
        assert_eq!(&serde_json::to_string(&attrs).unwrap(), value, "lease value written back byte for byte");
        if backend == "vxlan" {
            let mac = attrs.vtep_mac().expect("VtepMAC");
            assert_eq!(value.matches(&mac.to_string()).count(), 1, "{value}");
        }
    }
    // What weft writes for a lease of its own has flanneld's shape.
    let (_, value) = &leases[0];
    let attrs: LeaseAttrs = serde_json::from_str(value).unwrap();
    let ours = LeaseAttrs {
        public_ip: attrs.public_ip,
        public_ipv6: None,
        backend_type: LeaseAttrs::backend_type_for(backend.parse().unwrap()),
        backend_data: attrs.backend_data.clone(),
        backend_v6_data: None,
        node_id: None,
    };
    assert_eq!(&serde_json::to_string(&ours).unwrap(), value);

    for node in ["node 0", "node 1"] {
        let recorded = r.section(&format!("{node}: subnet.env")).join("\n") + "\n";
        let get = |var: &str| {
            recorded.lines().find_map(|l| l.strip_prefix(&format!("{var}="))).unwrap_or_else(|| panic!("{var}"))
        };
        let subnet: ipnet::Ipv4Net = get("FLANNEL_SUBNET").parse().unwrap();
        let env = SubnetEnv {
            network: Some(get("FLANNEL_NETWORK").parse().unwrap()),
            subnet: Some(subnet.trunc()),
            mtu: get("FLANNEL_MTU").parse().unwrap(),
            ip_masq: get("FLANNEL_IPMASQ") == "true",
            ipv6_network: None,
            ipv6_subnet: None,
        };
        assert_eq!(env.render(), recorded, "subnet.env byte for byte");

        // flanneld's chains, rule for rule.
        let save = r.section(&format!("{node}: iptables-save"));
        let chain_rules: Vec<&str> = save.iter().map(String::as_str).filter(|l| l.starts_with("-A FLANNEL-")).collect();
        let ours = forward_rules(config.network().unwrap().into())
            + &masq_rules(config.network().unwrap().into(), subnet.trunc().into());
        let our_rules: Vec<&str> = ours.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(our_rules, chain_rules, "{node}");
    }
}

#[test]
fn udp_values_round_trip() {
    values_round_trip("udp");
}

#[test]
fn vxlan_values_round_trip() {
    values_round_trip("vxlan");
}

#[test]
fn host_gw_values_round_trip() {
    values_round_trip("host-gw");
}

/// A weft node (198.18.0.1) on a network whose other nodes are the two
/// recorded flanneld nodes: flanneld's config and leases as they were
/// recorded; weft must program for each of them what flanneld programmed
/// for its peer, and install flanneld's iptables rules for its own subnet.
fn programs_flanneld_peers(backend: &str) {
    let r = Reference::load(backend);
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap();
    for (key, value) in r.etcd() {
        let out = lab.etcdctl(&["put", &key, &value]).unwrap();
        assert!(out.status.success());
    }
    // The node ran flanneld before (its rules stay after it stops): weft
    // must take them over, not add a second set.
    let flanneld_rules = r.section("node 0: iptables-save").join("\n") + "\n";
    let mut restore = lab.node_cmd(1, "iptables-restore");
    restore.stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), flanneld_rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "loading flanneld's rules");
    lab.start_daemon(1, &["--ip-masq"]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let text = |args: &[&str], program: &str| {
        String::from_utf8_lossy(&netns::run(lab.node_cmd(1, program).args(args)).unwrap().stdout).into_owned()
    };
    let own = lab.subnet_env(1).unwrap().0;
    for node in ["node 0", "node 1"] {
        let peer = if node == "node 0" { "node 1" } else { "node 0" };
        // What flanneld on `node` programmed for `peer`: weft must have the same.
        for (what, program, args) in [
            ("ip route show", "ip", &["route", "show"][..]),
            ("ip neigh show nud permanent", "ip", &["neigh", "show", "nud", "permanent"][..]),
            ("bridge fdb show dev flannel.1", "bridge", &["fdb", "show", "dev", "flannel.1"][..]),
        ] {
            let recorded = r.section(&format!("{node}: {what}"));
            if recorded.iter().all(|l| l.contains("proto kernel") || l.contains("dev flannel0")) {
                continue; // nothing programmed per peer (udp; host-gw has no FDB)
            }
            wait_until(&format!("{what} to hold {peer}'s entries"), PROPAGATION, || {
                // weft's routes name a nexthop object (`nhid N`) that
                // holds flanneld's gateway and device.
                let ours = netns::without_nhid(&text(args, program)).replace(" proto 87", "");
                recorded
                    .iter()
                    .filter(|l| !l.contains("proto kernel") && !l.contains("dev flannel0"))
                    .all(|l| ours.lines().any(|o| o.trim() == l.trim()))
                    .then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\nrecorded: {recorded:?}\nours:\n{}", text(args, program)));
        }
    }
    // flanneld's iptables rules, for weft's own subnet, in one set.
    let save = text(&[], "iptables-save");
    let recorded = r.section("node 0: iptables-save");
    let recorded_subnet = Reference::load(backend).section("node 0: subnet.env")[1].replace("FLANNEL_SUBNET=", "");
    let recorded_subnet: ipnet::Ipv4Net = recorded_subnet.parse().unwrap();
    for line in recorded.iter().filter(|l| l.starts_with("-A ")) {
        let want = line.replace(&recorded_subnet.trunc().to_string(), &own.to_string());
        assert_eq!(save.lines().filter(|l| *l == want).count(), 1, "exactly once: {want}\n{save}");
    }
    let rules = save.lines().filter(|l| l.starts_with("-A ")).count();
    assert_eq!(rules, recorded.iter().filter(|l| l.starts_with("-A ")).count(), "one set of rules:\n{save}");
    if backend == "udp" {
        assert_eq!(lab.metric(1, "weft_dataplane_peers_programmed{backend=\"udp\"}").unwrap(), 2);
    }
}

#[test]
fn vxlan_programs_flanneld_peers_as_flanneld_does() {
    programs_flanneld_peers("vxlan");
}

#[test]
fn host_gw_programs_flanneld_peers_as_flanneld_does() {
    programs_flanneld_peers("host-gw");
}

#[test]
fn udp_accepts_flanneld_leases_without_backend_type() {
    programs_flanneld_peers("udp");
}

/// A `KEY=value` of a subnet.env text.
fn env_value<'a>(text: &'a str, var: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(&format!("{var}="))).unwrap_or_else(|| panic!("{var}"))
}

/// flanneld's dual-stack vxlan keys, values, subnet.env and ip6tables
/// rules (derived from its source, see the file's header): read, and
/// written back byte for byte.
#[test]
fn dual_stack_values_round_trip() {
    let r = Reference::load("vxlan-dual");
    let config = r.config();
    let v6 = config.ipv6.as_ref().expect("the config is dual-stack");
    for (key, value) in r.leases() {
        let name = key.strip_prefix(PREFIX).unwrap();
        let (subnet, subnet6) = parse_subnet_key(name).unwrap();
        assert!(subnet6.is_some(), "{name} has an IPv6 part");
        assert_eq!(subnet_key(subnet.as_ref(), subnet6.as_ref()), name, "key written back");
        let lease = weft_subnet::Lease::from_entry(name, value.as_bytes(), &config, 0, 0).unwrap();
        assert_eq!(lease.ipv6_subnet, subnet6);
        assert!(lease.attrs.public_ipv6.is_some() && lease.attrs.vtep_mac6().is_some(), "{value}");
        assert_eq!(serde_json::to_string(&lease.attrs).unwrap(), value, "lease value written back byte for byte");
    }
    for node in ["node 0", "node 1"] {
        let recorded = r.section(&format!("{node}: subnet.env")).join("\n") + "\n";
        let subnet: ipnet::Ipv4Net = env_value(&recorded, "FLANNEL_SUBNET").parse().unwrap();
        let subnet6: ipnet::Ipv6Net = env_value(&recorded, "FLANNEL_IPV6_SUBNET").parse().unwrap();
        let env = SubnetEnv {
            network: config.network(),
            subnet: Some(subnet.trunc()),
            mtu: env_value(&recorded, "FLANNEL_MTU").parse().unwrap(),
            ip_masq: true,
            ipv6_network: Some(v6.network),
            ipv6_subnet: Some(subnet6.trunc()),
        };
        assert_eq!(env.render(), recorded, "subnet.env byte for byte");
        let save = r.section(&format!("{node}: ip6tables-save"));
        let chain_rules: Vec<&str> = save.iter().map(String::as_str).filter(|l| l.starts_with("-A FLANNEL-")).collect();
        let ours = forward_rules(v6.network.into()) + &masq_rules(v6.network.into(), subnet6.trunc().into());
        let our_rules: Vec<&str> = ours.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(our_rules, chain_rules, "{node}: ip6tables");
    }
}

/// A dual-stack weft node among the two flanneld nodes: for each it must
/// program the IPv6 neighbour, FDB entry and route flanneld programs for
/// its peer, and flanneld's ip6tables rules for its own IPv6 subnet.
#[test]
fn vxlan_programs_flanneld_dual_stack_peers_as_flanneld_does() {
    let r = Reference::load("vxlan-dual");
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap();
    for (key, value) in r.etcd() {
        assert!(lab.etcdctl(&["put", &key, &value]).unwrap().status.success());
    }
    lab.start_daemon(1, &["--ip-masq"]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let text = |program: &str, args: &[&str]| {
        String::from_utf8_lossy(&netns::run(lab.node_cmd(1, program).args(args)).unwrap().stdout).into_owned()
    };
    for node in ["node 0", "node 1"] {
        for (what, program, args) in [
            ("ip -6 route show", "ip", &["-6", "route", "show"][..]),
            ("ip -6 neigh show nud permanent", "ip", &["-6", "neigh", "show", "nud", "permanent"][..]),
            ("bridge fdb show dev flannel-v6.1", "bridge", &["fdb", "show", "dev", "flannel-v6.1"][..]),
        ] {
            let recorded = r.section(&format!("{node}: {what}"));
            wait_until(&format!("{what} to hold the entries flanneld's {node} has"), PROPAGATION, || {
                let ours = text(program, args).replace(" proto 87", "");
                recorded
                    .iter()
                    .filter(|l| !l.contains("proto kernel"))
                    .all(|l| ours.lines().any(|o| o.trim() == l.trim()))
                    .then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\nflanneld: {recorded:?}\nours:\n{}", text(program, args)));
        }
    }
    let own6 = std::fs::read_to_string(&lab.node(1).subnet_file).unwrap();
    let own6: ipnet::Ipv6Net = env_value(&own6, "FLANNEL_IPV6_SUBNET").parse().unwrap();
    let recorded6: ipnet::Ipv6Net =
        env_value(&(r.section("node 0: subnet.env").join("\n") + "\n"), "FLANNEL_IPV6_SUBNET").parse().unwrap();
    let save = text("ip6tables-save", &[]);
    let recorded = r.section("node 0: ip6tables-save");
    for line in recorded.iter().filter(|l| l.starts_with("-A ")) {
        let want = line.replace(&recorded6.trunc().to_string(), &own6.trunc().to_string());
        assert_eq!(save.lines().filter(|l| *l == want).count(), 1, "exactly once: {want}\n{save}");
    }
}
