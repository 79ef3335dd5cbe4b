//! weft's CNI plugin (`weft-cni`) in the lab, with Debian's real `bridge`
//! and `host-local` plugins as delegates: two nodes running weft (vxlan),
//! one pod each wired by the plugin, exactly as a runtime calls it.

mod lab_common;

use std::path::{Path, PathBuf};
use std::process::Output;

use lab_common::*;
use serde_json::{json, Value};
use weft_lab::Lab;

/// The plugin binary (built with the tests).
fn plugin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_weft-cni"));
    assert!(
        Path::new("/usr/lib/cni/bridge").is_file(),
        "Debian's containernetworking-plugins are missing (scripts/setup.sh)"
    );
    p
}

/// The network config of node `i`, as a kubelet would pass it (`type`
/// flannel), with the plugin's and host-local's state in the lab's dir.
fn netconf(lab: &Lab, i: u8) -> Value {
    let dir = lab.dir().join(format!("n{i}"));
    json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": lab.node(i).subnet_file,
        "dataDir": dir.join("cni"),
        "delegate": {"hairpinMode": true},
        "ipam": {"dataDir": dir.join("ipam")}
    })
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "plugin failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS` in namespace `ns`: its stdout.
fn text(ns: &str, args: &[&str]) -> String {
    let out = weft_lab::netns::exec(ns, "ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Addresses host-local has handed out in `dir` (one file per address).
fn reserved(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("cbr0")) else { return vec![] };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

#[test]
fn pods_wired_by_the_plugin_reach_each_other_and_are_removed_cleanly() {
    let plugin = plugin();
    let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(&config("vxlan")).unwrap();
    for i in 1..=2 {
        lab.start_daemon(i, &[]).unwrap();
    }
    let mut pods = Vec::new();
    for i in 1..=2u8 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = lab.add_netns(&format!("c{i}")).unwrap();
        let conf = netconf(&lab, i).to_string();
        let result = stdout_json(&ok(lab.cni(i, &plugin, "ADD", &format!("pod{i}"), &ns, &conf).unwrap()));
        let addr: ipnet::Ipv4Net = result["ips"][0]["address"].as_str().unwrap().parse().unwrap();
        let (subnet, _, mtu) = lab.subnet_env(i).unwrap();
        assert!(subnet.contains(&addr.addr()), "node {i}: pod address {addr} outside the node's subnet {subnet}");
        let link = text(&ns, &["link", "show", "eth0"]);
        assert!(link.contains(&format!("mtu {mtu}")), "the pod's MTU is FLANNEL_MTU: {link}");
        pods.push((ns, addr.addr(), result));
    }
    wait_converged(&lab);
    for (from, to) in [(0, 1), (1, 0)] {
        let out = weft_lab::netns::exec(&pods[from].0, "ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", &pods[to].1.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "pod {} cannot reach pod {}", from + 1, to + 1);
    }

    // CHECK with the ADD result, then DEL (twice: the spec requires the
    // second to succeed as well).
    let (ns, _, result) = &pods[0];
    let mut check = netconf(&lab, 1);
    check["prevResult"] = result.clone();
    ok(lab.cni(1, &plugin, "CHECK", "pod1", ns, &check.to_string()).unwrap());
    check["prevResult"]["ips"][0]["address"] = json!("192.0.2.7/24");
    let out = lab.cni(1, &plugin, "CHECK", "pod1", ns, &check.to_string()).unwrap();
    assert!(!out.status.success() && stdout_json(&out)["code"] == json!(7), "a foreign address fails CHECK");
    let out = lab.cni(1, &plugin, "CHECK", "nobody", ns, &netconf(&lab, 1).to_string()).unwrap();
    assert!(!out.status.success() && stdout_json(&out)["code"] == json!(3), "an unknown container fails CHECK");
    let ipam = lab.dir().join("n1").join("ipam");
    assert_eq!(reserved(&ipam).len(), 1);
    let conf = netconf(&lab, 1).to_string();
    ok(lab.cni(1, &plugin, "DEL", "pod1", ns, &conf).unwrap());
    assert!(text(ns, &["link", "show", "eth0"]).is_empty(), "the pod's interface is gone");
    assert!(reserved(&ipam).is_empty(), "host-local released the address: {:?}", reserved(&ipam));
    assert!(!lab.dir().join("n1/cni/pod1").exists(), "the kept delegate config is removed");
    let again = ok(lab.cni(1, &plugin, "DEL", "pod1", ns, &conf).unwrap());
    assert!(again.stdout.is_empty());

    // ADD without a subnet file: a CNI error, a non-zero exit, nothing done.
    let mut missing = netconf(&lab, 1);
    missing["subnetFile"] = json!("/nonexistent/subnet.env");
    let out = lab.cni(1, &plugin, "ADD", "pod3", ns, &missing.to_string()).unwrap();
    assert!(!out.status.success());
    let err = stdout_json(&out);
    assert_eq!(err["code"], json!(11), "{err}");
    assert!(err["msg"].as_str().unwrap().contains("/nonexistent/subnet.env does not exist"), "{err}");
    assert!(text(ns, &["link", "show", "eth0"]).is_empty());
    assert!(reserved(&ipam).is_empty() && !lab.dir().join("n1/cni/pod3").exists());

    // A delegate that is not on CNI_PATH, and stdin that is not JSON.
    let mut unknown = netconf(&lab, 1);
    unknown["delegate"] = json!({"type": "no-such-plugin"});
    let out = lab.cni(1, &plugin, "ADD", "pod4", ns, &unknown.to_string()).unwrap();
    let err = stdout_json(&out);
    assert!(!out.status.success() && err["code"] == json!(100), "{err}");
    assert!(err["msg"].as_str().unwrap().contains("failed to find plugin \"no-such-plugin\" in path [/usr/lib/cni]"));
    let out = lab.cni(1, &plugin, "ADD", "pod5", ns, "not json").unwrap();
    assert!(!out.status.success() && stdout_json(&out)["code"] == json!(6));
    assert!(text(ns, &["link", "show", "eth0"]).is_empty());
}

/// The same network config once through weft's plugin and once through the
/// delegate config flannel's plugin would build (written out here from its
/// documented behaviour): the same interfaces, addresses and routes.
#[test]
fn the_plugin_wires_a_pod_as_flannels_delegate_config_does() {
    let plugin = plugin();
    let mut lab = Lab::new(1, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(&config("vxlan")).unwrap();
    lab.start_daemon(1, &[]).unwrap();
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e:#}"));
    let (subnet, _, mtu) = lab.subnet_env(1).unwrap();
    let ipam_dir = lab.dir().join("n1").join("ipam");

    let ours = lab.add_netns("ours").unwrap();
    let conf = netconf(&lab, 1).to_string();
    ok(lab.cni(1, &plugin, "ADD", "ours", &ours, &conf).unwrap());

    // What flannel's plugin hands to bridge for this config and subnet file
    // (FLANNEL_IPMASQ=false: the bridge masquerades).
    let flannels = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "hairpinMode": true,
        "ipMasq": true,
        "mtu": mtu,
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": subnet.trunc().to_string()}]],
            "routes": [{"dst": "10.244.0.0/16"}]
        }
    });
    let theirs = lab.add_netns("theirs").unwrap();
    ok(lab.cni(1, Path::new("/usr/lib/cni/bridge"), "ADD", "theirs", &theirs, &flannels.to_string()).unwrap());

    // Compare with each pod's own address and MAC blanked out.
    let shape = |ns: &str| -> Vec<String> {
        let mut lines = Vec::new();
        for args in [&["-4", "-o", "addr", "show"][..], &["-4", "route", "show"][..], &["-o", "link", "show"][..]] {
            lines.extend(text(ns, args).lines().map(|l| {
                let mut words: Vec<String> = l.split_whitespace().map(String::from).collect();
                for w in words.iter_mut() {
                    if w.starts_with(&subnet.network().to_string()[..7]) && !w.ends_with(".1") && !w.contains(".0/") {
                        *w = "<pod address>".into();
                    }
                    if w.len() == 17 && w.matches(':').count() == 5 {
                        *w = "<mac>".into();
                    }
                    if let Some((name, _)) = w.split_once("@if") {
                        *w = format!("{name}@if<peer>:");
                    }
                }
                words.join(" ").split(" link-netns ").next().unwrap_or_default().to_string()
            }));
        }
        lines
    };
    let (a, b) = (shape(&ours), shape(&theirs));
    assert!(!a.is_empty());
    assert_eq!(a, b, "weft-cni's pod differs from flannel's delegate's");
}
