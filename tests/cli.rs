//! The `weft` command line as a user runs it, against a real etcd.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_lab::EtcdServer;

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("cannot start the test etcd: {e:#}"))
}

fn weft(etcd: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("--etcd-endpoints").arg(etcd).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run weft");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A child process that is killed if the test fails before it ends it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[test]
fn config_put_and_get() {
    let etcd = etcd();
    let out = weft(&etcd.endpoint(), &["config", "put", "-"], Some(CONFIG));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr)
        .contains("network 10.244.0.0/16, /24 subnets 10.244.1.0 - 10.244.255.0 (255 subnets), backend vxlan"));
    let out = weft(&etcd.endpoint(), &["config", "get"], None);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), CONFIG);

    // From a file too, with flanneld's single-dash flag spelling.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("net.json");
    std::fs::write(&file, r#"{"Network":"10.244.0.0/16"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg(format!("-etcd-endpoints={}", etcd.endpoint()))
        .args(["config", "put"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("backend udp"), "missing Backend means udp");
}

#[test]
fn invalid_config_is_refused_and_nothing_is_written() {
    let etcd = etcd();
    let cases = [
        (r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#, "field SubnetLen: 33 is too long"),
        (r#"{"Network":"10.244.0.0"}"#, "field Network"),
        (r#"{"Network":"10.244.0.0/16","SubnetMin":"10.1.0.0"}"#, "field SubnetMin: 10.1.0.0 is outside Network"),
        (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#, "unknown backend type \"ipip\""),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"x"}}"#,
            "field Backend.Mode: \"x\" is not a wireguard mode (separate, auto, ipv4 or ipv6)",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"c2hvcnQ="}}"#,
            "field Backend.PSK: 5 bytes; it must be 32 bytes in base64",
        ),
        ("{", "not valid JSON"),
    ];
    for (config, want) in cases {
        let out = weft(&etcd.endpoint(), &["config", "put", "-"], Some(config));
        assert!(!out.status.success(), "{config} accepted");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{config}: {err}");
        assert!(err.contains("the config was not written"), "{err}");
    }
    let out = weft(&etcd.endpoint(), &["config", "get"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no network config at /coreos.com/network/config"), "{}", text(&out.stderr));
}

#[test]
fn unreachable_etcd_fails_fast() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    for args in [&["leases"][..], &["config", "get"][..]] {
        let start = Instant::now();
        let out = weft(&endpoint, args, None);
        assert!(start.elapsed() < Duration::from_secs(7), "{args:?} took {:?}", start.elapsed());
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(&format!("cannot reach etcd at {endpoint}")), "{err}");
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft")).args(["leases", "--frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--frobnicate"));
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["--etcd-endpoints", "127.0.0.1:2379", "leases"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("must start with http:// or https://"), "{}", text(&out.stderr));
}

fn put_lease(etcd: &str, key: &str, value: &str) {
    // Write like another node (or flanneld) would: through etcd directly.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", etcd, "put", &format!("/coreos.com/network/subnets/{key}"), value])
        .output()
        .expect("etcdctl (Debian package etcd-client) is needed by this test");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn leases_show_each_wireguard_nodes_public_key() {
    // A flanneld node on its wireguard backend, as flanneld writes it.
    let etcd = etcd();
    let ep = etcd.endpoint();
    assert!(weft(&ep, &["config", "put", "-"], Some(CONFIG)).status.success());
    let key = "hTZnM0mTFrS5RJp2ph0TSbdWpG1S6fxYQm8trSDmO0s=";
    put_lease(
        &ep,
        "10.244.7.0-24",
        &format!(
            r#"{{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}}}}"#
        ),
    );
    let out = weft(&ep, &["leases"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].starts_with("10.244.7.0/24") && lines[1].contains("wireguard"), "{table}");
    assert_eq!(lines.get(2).copied(), Some(format!("  wireguard key {key}").as_str()), "{table}");
    let out = weft(&ep, &["leases", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json[0]["public_key"], key, "{json}");
    assert_eq!(json[0]["backend_data"]["Port"], 51820, "{json}");
}

#[test]
fn leases_table_json_and_watch() {
    let etcd = etcd();
    let ep = etcd.endpoint();
    assert!(weft(&ep, &["config", "put", "-"], Some(CONFIG)).status.success());
    put_lease(
        &ep,
        "10.244.3.0-24",
        r#"{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5f:aa:01:02:03"}}"#,
    );
    put_lease(&ep, "10.244.4.0-24", r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"udp"}"#);
    put_lease(&ep, "bogus", "nonsense");

    let out = weft(&ep, &["leases"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("SUBNET") && lines[0].contains("VTEP MAC"));
    assert!(
        lines[1].starts_with("10.244.3.0/24")
            && lines[1].contains("198.18.0.2")
            && lines[1].contains("0e:5f:aa:01:02:03")
    );
    assert!(lines[2].starts_with("10.244.4.0/24") && lines[2].contains("udp"));
    assert!(text(&out.stderr).contains("skipping entry subnets/bogus"), "malformed entry is warned about");

    let out = weft(&ep, &["leases", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let arr = json.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["subnet"], "10.244.3.0/24");
    assert_eq!(arr[0]["public_ip"], "198.18.0.2");
    assert_eq!(arr[0]["vtep_mac"], "0e:5f:aa:01:02:03");
    assert_eq!(arr[1]["vtep_mac"], serde_json::Value::Null);

    // --watch prints the table, then events as they happen.
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["--etcd-endpoints", &ep, "leases", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no line for {what}"));
    assert!(next("header").starts_with("SUBNET"));
    next("row 1");
    next("row 2");
    // A lease written the way a node writes it: attached to an etcd lease.
    let grant = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "lease", "grant", "3600"])
        .output()
        .unwrap();
    let id = text(&grant.stdout).split_whitespace().nth(1).unwrap().to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "put", "--lease", &id, "/coreos.com/network/subnets/10.244.5.0-24"])
        .arg(r#"{"PublicIP":"198.18.0.4","BackendType":"host-gw"}"#)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = next("added event");
    assert!(line.starts_with("added") && line.contains("10.244.5.0/24") && line.contains("host-gw"), "{line}");
    assert!(line.contains(" 59m") || line.contains(" 1h00m"), "time left is shown: {line}");

    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "del", "/coreos.com/network/subnets/10.244.3.0-24"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = next("removed event");
    assert!(line.starts_with("removed") && line.contains("10.244.3.0/24"), "{line}");
    // SIGTERM ends it cleanly.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// `weft docker-opts` in a scratch dir: the file it writes (or the failed
/// output). The environment has no DOCKER_OPT* variables.
fn docker_opts(subnet_env: Option<&str>, args: &[&str]) -> (Output, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("subnet.env"), dir.path().join("docker_opts.env"));
    if let Some(text) = subnet_env {
        std::fs::write(&input, text).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("docker-opts").arg("-f").arg(&input).arg("-d").arg(&output).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCKER_OPT")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    (out, std::fs::read_to_string(&output).ok())
}

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// Expected outputs written from mk-docker-opts.sh's format: `NAME="value"`
/// lines in name order, then the combined key, its value starting with a
/// space and with a space after each option.
#[test]
fn docker_opts_match_mk_docker_opts() {
    let all = "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450 \"\n";
    let no_masq = SUBNET_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false");
    let cases: [(&str, &[&str], &str); 6] = [
        (SUBNET_ENV, &[], all),
        (&no_masq, &[], "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.244.3.1/24 --mtu=1450 \"\n"),
        (SUBNET_ENV, &["-c"], "DOCKER_OPTS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450 \"\n"),
        (SUBNET_ENV, &["-i"], "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"),
        (SUBNET_ENV, &["-c", "-k", "DOCKER_NETWORK_OPTIONS"], "DOCKER_NETWORK_OPTIONS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450 \"\n"),
        (SUBNET_ENV, &["-i", "-c"], all),
    ];
    for (input, args, want) in cases {
        let (out, written) = docker_opts(Some(input), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(written.as_deref(), Some(want), "docker-opts {args:?} with {input:?}");
    }
    // -m leaves out --ip-masq=false (as the script's usage describes it).
    let (_, written) = docker_opts(Some(SUBNET_ENV), &["-c", "-m"]);
    assert_eq!(written.as_deref(), Some("DOCKER_OPTS=\" --bip=10.244.3.1/24 --mtu=1450 \"\n"));
}

#[test]
fn docker_opts_without_a_subnet_file_fail_and_write_nothing() {
    let (out, written) = docker_opts(None, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("subnet.env does not exist"), "{}", text(&out.stderr));
    assert_eq!(written, None, "no options file is written");
    let (out, written) = docker_opts(Some("garbage\n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has no FLANNEL_SUBNET"), "{}", text(&out.stderr));
    assert_eq!(written, None);
}
