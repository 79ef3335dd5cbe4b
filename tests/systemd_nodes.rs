//! The Debian package on nodes booted with systemd as PID 1, as an
//! operator runs it: `apt-get install ./weft_*.deb`, `/etc/default/weft`,
//! `systemctl enable --now weft`, then pods through the packaged CNI
//! plugin. For each backend: the unit becomes active through `Type=notify`,
//! pods reach each other, a SIGKILL and a `systemctl restart` cost less
//! than a second of a 10 ms ping, `systemctl stop` leaves the dataplane,
//! the journal has no error lines, and `/readyz` answers; and a failure
//! weft reports itself is not restarted in a tight loop.
//!
//! The nodes boot a cached Debian 12 tree (`weft_lab::systemd::BASE`,
//! debootstrapped on first use); `scripts/package.sh` builds the package
//! (scripts/test.sh does, before the tests).

mod lab_common;

use std::time::{Duration, Instant};

use lab_common::{config, forwarding_nice, forwarding_policies, package};
use weft_lab::systemd::SystemdNode;
use weft_lab::{wait_until, Lab};

/// How long a crash or a restart may interrupt pod traffic.
const GAP: Duration = Duration::from_secs(1);
const PING_INTERVAL_MS: u64 = 10;
/// The same for the udp backend, whose sockets and TUN queues systemd
/// keeps: two pings at most.
const HANDED_OVER_GAP: Duration = Duration::from_millis(2 * PING_INTERVAL_MS);

struct Cluster {
    lab: Lab,
    nodes: Vec<SystemdNode>,
}

impl Cluster {
    /// Two systemd nodes running the packaged unit on `backend`, with a pod each.
    fn new(backend: &str) -> Cluster {
        Cluster::with_config(backend, &config(backend))
    }

    /// The same with the network config `json`.
    fn with_config(backend: &str, json: &str) -> Cluster {
        Cluster::prepared(backend, json, |_| {})
    }

    /// The same, with `prepare` run on each node before the package is
    /// installed.
    fn prepared(backend: &str, json: &str, prepare: impl Fn(&SystemdNode)) -> Cluster {
        let deb = package();
        let mut lab = Lab::new(2, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        lab.put_config(json).unwrap();
        let mut nodes = Vec::new();
        for i in 1..=2 {
            let node = SystemdNode::boot(&mut lab, i).unwrap_or_else(|e| panic!("{e:#}"));
            prepare(&node);
            node.install(&deb).unwrap_or_else(|e| panic!("{e:#}"));
            let defaults = format!(
                "WEFT_ETCD_ENDPOINTS={}\nWEFT_IFACE=eth0\nWEFT_IP_MASQ=true\nWEFT_HEALTHZ_PORT={}\n",
                lab.etcd_endpoint(),
                weft_lab::lab::HEALTHZ_PORT
            );
            std::fs::write(node.path("/etc/default/weft"), defaults).unwrap();
            // Type=notify: this returns once weft said READY=1 (or failed).
            node.run("systemctl", &["enable", "--now", "weft"]).unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&node)));
            nodes.push(node);
        }
        let mut c = Cluster { lab, nodes };
        for i in 1..=2 {
            assert_eq!(c.state(i), "active", "{}", journal(c.node(i)));
            let pod = c.nodes[usize::from(i) - 1].attach_pod(&mut c.lab).unwrap_or_else(|e| panic!("{e:#}"));
            eprintln!("{backend}: node {i} pod {pod}");
        }
        for (from, to) in [(1, 2), (2, 1)] {
            let dst = c.lab.node(to).pod_ip.unwrap();
            wait_until(&format!("pod {from} to reach pod {to}"), Duration::from_secs(5), || {
                c.lab.ping_once(from, dst).then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", journal(c.node(1)), journal(c.node(2))));
        }
        c
    }

    fn node(&self, i: u8) -> &SystemdNode {
        &self.nodes[usize::from(i) - 1]
    }

    fn state(&self, i: u8) -> String {
        let out = self.node(i).cmd("systemctl").args(["is-active", "weft"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run `fault` on node 2 while pods 1 and 2 ping each other every 10
    /// ms; wait for the unit to be active again with another main process,
    /// and ready; then ping on for a second. Returns the time the pings lost
    /// add up to, the worse way.
    fn loss_during(&self, what: &str, fault: impl FnOnce(&SystemdNode)) -> Duration {
        let node = self.node(2);
        let before = node.main_pid().unwrap();
        assert_ne!(before, 0, "weft is not running on node 2");
        let interval = format!("0.{PING_INTERVAL_MS:03}");
        // Both ways: pod 1's requests wait in node 2's UDP socket, pod 2's
        // in its TUN queues.
        let to_2 = self.lab.pinger(1, self.lab.node(2).pod_ip.unwrap(), &interval, 100_000).unwrap();
        let to_1 = self.lab.pinger(2, self.lab.node(1).pod_ip.unwrap(), &interval, 100_000).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let began = Instant::now();
        fault(node);
        let back = wait_until(&format!("weft on node 2 to be back after {what}"), Duration::from_secs(30), || {
            let pid = node.main_pid().ok()?;
            (pid != 0 && pid != before && self.state(2) == "active").then_some(())
        });
        back.unwrap_or_else(|e| panic!("{e}\n{}", journal(node)));
        let took = began.elapsed();
        wait_until("node 2 to be ready", Duration::from_secs(10), || {
            (self.lab.http(2, "/readyz").ok()?.0 == 200).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(node)));
        std::thread::sleep(Duration::from_secs(1));
        let mut worst = Duration::ZERO;
        for (way, pinger) in [("pod 1 to pod 2", to_2), ("pod 2 to pod 1", to_1)] {
            let (sent, received) = pinger.finish().unwrap();
            let lost = Duration::from_millis((sent - received) * PING_INTERVAL_MS);
            eprintln!(
                "{what}: back in {} ms; {way}: {sent} pings sent, {} lost ({} ms)",
                took.as_millis(),
                sent - received,
                lost.as_millis()
            );
            worst = worst.max(lost);
        }
        worst
    }
}

/// The unit's journal.
/// Add the drop-in `name` with `text` to node's weft unit and restart it.
fn restart_with_drop_in(node: &SystemdNode, name: &str, text: &str) {
    let dir = node.path("/etc/systemd/system/weft.service.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    node.run("systemctl", &["daemon-reload"]).unwrap_or_else(|e| panic!("{e:#}"));
    node.run("systemctl", &["restart", "weft"]).unwrap_or_else(|e| panic!("{e:#}\n{}", journal(node)));
}

fn journal(node: &SystemdNode) -> String {
    node.run("journalctl", &["-u", "weft", "--no-pager", "-o", "short-monotonic"]).unwrap_or_else(|e| format!("{e:#}"))
}

fn systemd_nodes(backend: &str, device: &str) -> Cluster {
    faults_and_stop(Cluster::new(backend), backend, device)
}

/// A crash and a restart of node 2's weft under pings, its journal, and a
/// stop that leaves the dataplane.
fn faults_and_stop(c: Cluster, backend: &str, device: &str) -> Cluster {
    let (code, body) = c.lab.http(2, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");

    // The userspace backends' sockets and TUN queues wait in systemd's
    // store while weft is away, and wireguard's sessions with them: nothing
    // is lost but what a ping or two may lose to a loaded machine.
    let gap = if matches!(backend, "udp" | "wireguard") { HANDED_OVER_GAP } else { GAP };
    let crash = c.loss_during("SIGKILL", |n| {
        n.run("systemctl", &["kill", "--kill-whom=main", "-s", "SIGKILL", "weft"]).unwrap();
    });
    assert!(crash <= gap, "{backend}: a crash cost {} ms of pings\n{}", crash.as_millis(), journal(c.node(2)));
    let restart = c.loss_during("systemctl restart", |n| {
        n.run("systemctl", &["restart", "weft"]).unwrap();
    });
    assert!(restart <= gap, "{backend}: a restart cost {} ms of pings\n{}", restart.as_millis(), journal(c.node(2)));
    if matches!(backend, "udp" | "wireguard") {
        let log = journal(c.node(2));
        assert!(log.contains("took back") && log.contains("UDP sockets of the last run"), "{log}");
    }
    if backend == "wireguard" {
        let log = journal(c.node(2));
        assert!(log.contains("took back the last run's WireGuard sessions"), "{log}");
    }

    // weft's own log lines carry their level; none is an error.
    let own = c.node(2).run("journalctl", &["-u", "weft", "--no-pager", "-o", "cat", "_COMM=weft"]).unwrap();
    let errors: Vec<&str> = own.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{backend}: error lines in the journal:\n{}", errors.join("\n"));

    // Stopped, the dataplane stays: the device is there, and the kernel
    // backends still carry pod traffic (the userspace ones cannot).
    c.node(2).run("systemctl", &["stop", "weft"]).unwrap();
    assert_eq!(c.state(2), "inactive");
    c.node(2).run("ip", &["link", "show", device]).unwrap_or_else(|e| panic!("{backend}: {e:#}"));
    if !matches!(backend, "udp" | "wireguard") {
        assert!(c.lab.ping_once(1, c.lab.node(2).pod_ip.unwrap()), "{backend}: pods cut off by systemctl stop");
    }
    c
}

/// A failure weft reports itself (here an invalid config in etcd) does not
/// restart in a tight loop under the unit's 100 ms RestartSec: weft holds
/// its exit off until it has run 5 s.
fn failures_are_held_off(c: &Cluster) {
    let out = c.lab.etcdctl(&["put", "/coreos.com/network/config", r#"{"Network": "not a network"}"#]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = c.node(2);
    let restarts = || -> u32 {
        node.run("systemctl", &["show", "-p", "NRestarts", "--value", "weft"]).unwrap().trim().parse().unwrap()
    };
    let before = restarts();
    node.run("systemctl", &["start", "--no-block", "weft"]).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let during = restarts() - before;
    assert!(during <= 2, "{during} restarts in 8 s with an invalid config\n{}", journal(node));
    assert!(journal(node).contains("so that systemd does not restart it in a tight loop"), "{}", journal(node));
    node.run("systemctl", &["stop", "weft"]).unwrap();
}

#[test]
fn vxlan_on_systemd_nodes() {
    systemd_nodes("vxlan", "flannel.1");
}

#[test]
fn host_gw_on_systemd_nodes() {
    let c = systemd_nodes("host-gw", "eth0");
    failures_are_held_off(&c);
}

/// A config change the nodes restart for (`Queues` 1 to 2): the two sockets
/// systemd kept (a bulk queue and the lane) do not fit, so they are let
/// go, named in the log, and three are bound; pods reach each other again.
fn kept_sockets_that_do_not_fit_are_let_go(c: &Cluster) {
    let before = c.node(2).main_pid().unwrap();
    let json = config("udp").replace(r#""Type":"udp""#, r#""Type":"udp","Queues":2"#);
    let out = c.lab.etcdctl(&["put", "/coreos.com/network/config", &json]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("node 2 to restart with two bulk queues and the lane, ready", Duration::from_secs(30), || {
        let pid = c.node(2).main_pid().ok()?;
        (pid != 0 && pid != before && c.lab.http(2, "/readyz").ok()?.0 == 200).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", journal(c.node(2))));
    let log = journal(c.node(2));
    // One bulk queue and the lane kept; two and the lane wanted.
    assert!(log.contains("are not 3 on"), "{log}");
    for (from, to) in [(1, 2), (2, 1)] {
        let dst = c.lab.node(to).pod_ip.unwrap();
        wait_until(&format!("pod {from} to reach pod {to}"), Duration::from_secs(10), || {
            c.lab.ping_once(from, dst).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(c.node(2))));
    }
}

#[test]
fn udp_on_systemd_nodes() {
    let c = Cluster::new("udp");
    kept_sockets_that_do_not_fit_are_let_go(&c);
    let c = faults_and_stop(c, "udp", "flannel0");
    // The packaged unit keeps CAP_SYS_NICE: the forwarding threads of
    // node 1 (still running) are at nice -19, and nothing was refused.
    let nice = forwarding_nice(c.node(1).main_pid().unwrap());
    assert!(nice.len() >= 2 && nice.iter().all(|(_, n)| *n == -19), "{nice:?}");
    assert!(!journal(c.node(1)).contains("refused nice"), "{}", journal(c.node(1)));
}

/// The wireguard backend under the packaged unit: `wg show` on a node, as
/// an operator types it, lists the other node with its endpoint, a latest
/// handshake and traffic; then the crash, restart and stop of every
/// backend (a restarted node handshakes again at once).
#[test]
fn wireguard_on_systemd_nodes() {
    let c = Cluster::new("wireguard");
    let shown =
        c.node(1).run("wg", &["show", "flannel-wg"]).unwrap_or_else(|e| panic!("{e:#}\n{}", journal(c.node(1))));
    let endpoint = format!("endpoint: {}:51820", c.lab.node(2).underlay_ip);
    assert!(shown.contains("peer: ") && shown.contains(&endpoint), "{shown}");
    assert!(shown.contains("latest handshake:") && shown.contains("transfer:"), "{shown}");
    faults_and_stop(c, "wireguard", "flannel-wg");
}

/// Under the packaged unit: `/etc/default/weft` is root's alone; five
/// SIGKILLs within two seconds leave weft restarted (systemd's default
/// start limit left the unit failed for good), the first restarts as fast
/// as ever; and the etcd password comes from a systemd credential through
/// `--etcd-password-file`, never from the environment.
#[test]
fn a_crash_loop_and_a_credential_on_systemd_nodes() {
    let c = Cluster::new("host-gw");
    let node = c.node(2);
    assert_eq!(node.run("stat", &["-c", "%a %U", "/etc/default/weft"]).unwrap().trim(), "600 root");

    let began = Instant::now();
    let mut kills = 0;
    while kills < 6 && began.elapsed() < Duration::from_secs(2) {
        let pid = node.main_pid().unwrap();
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        node.run("systemctl", &["kill", "--kill-whom=main", "-s", "SIGKILL", "weft"]).unwrap();
        kills += 1;
        // The next process, before it is killed in turn.
        let _ = wait_until("the next weft", Duration::from_secs(2), || {
            let now = node.main_pid().ok()?;
            (now != 0 && now != pid).then_some(())
        });
    }
    assert!(kills >= 5, "only {kills} SIGKILLs within 2 s: the test proves nothing");
    wait_until("weft to be active and ready after the crash loop", Duration::from_secs(30), || {
        (c.state(2) == "active" && c.lab.http(2, "/readyz").ok()?.0 == 200).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e} ({kills} SIGKILLs in {:?})\n{}", began.elapsed(), journal(node)));
    let restarts: u32 =
        node.run("systemctl", &["show", "-p", "NRestarts", "--value", "weft"]).unwrap().trim().parse().unwrap();
    assert!(restarts >= kills, "{restarts} restarts after {kills} SIGKILLs");
    eprintln!("{kills} SIGKILLs in {:?}: {restarts} restarts, ready again", began.elapsed());

    // etcd requires a password now; node 2's comes from a credential.
    for args in [&["user", "add", "root:s3cret-pw"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]] {
        let out = c.lab.etcdctl(args).unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    node.run("install", &["-d", "-m", "700", "/etc/weft"]).unwrap();
    std::fs::write(node.path("/etc/weft/etcd-password"), "s3cret-pw\n").unwrap();
    node.run("chmod", &["600", "/etc/weft/etcd-password"]).unwrap();
    // Type=notify: active after the restart means weft held its lease in
    // etcd, so it logged in.
    restart_with_drop_in(
        node,
        "etcd-password.conf",
        "[Service]\nLoadCredential=etcd-password:/etc/weft/etcd-password\n\
         Environment=WEFT_ETCD_USERNAME=root WEFT_ETCD_PASSWORD_FILE=%d/etcd-password\n",
    );
    assert_eq!(c.state(2), "active", "{}", journal(node));
    assert_eq!(c.lab.http(2, "/readyz").unwrap().0, 200, "{}", journal(node));
    let env = node.run("systemctl", &["show", "-p", "Environment", "weft"]).unwrap();
    assert!(!env.contains("s3cret-pw"), "the password is in the unit's environment: {env}");
    let pid = node.main_pid().unwrap();
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    assert!(environ.contains("WEFT_ETCD_PASSWORD_FILE="), "weft's environment unread: {environ}");
    assert!(!environ.contains("s3cret-pw"), "the password is in weft's environment");
}

/// A dual-stack network on systemd nodes: the packaged unit and CNI
/// plugin (kube-flannel's config) give pods both families, and they reach
/// each other over IPv6 through flannel-v6.1.
#[test]
fn dual_stack_vxlan_on_systemd_nodes() {
    let json = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::with_config("vxlan", json);
    for (from, to) in [(1, 2), (2, 1)] {
        let dst = c.lab.node(to).pod_ip6.unwrap_or_else(|| panic!("pod {to} has no IPv6 address"));
        wait_until(&format!("pod {from} to reach pod {to} over IPv6"), Duration::from_secs(5), || {
            c.lab.ping6_once(from, dst).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(c.node(from))));
    }
    let env = std::fs::read_to_string(c.node(2).path("/run/flannel/subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_IPV6_SUBNET=fd10:244:"), "{env}");
    c.node(2).run("ip", &["link", "show", "flannel-v6.1"]).unwrap_or_else(|e| panic!("{e:#}"));
    let (code, body) = c.lab.http(2, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
}

/// `LatencyLane` under the packaged unit: on by default, and the unit
/// grants `CAP_BPF`, so the lane runs (its threads at nice -19 while
/// idle). A drop-in that takes `CAP_BPF` away: the kernel refuses the
/// classifier, weft says so once with what to check, and forwards as
/// without the lane (one queue).
#[test]
fn udp_latency_lane_runs_under_the_unit_and_a_refusal_is_said_once() {
    let c = Cluster::new("udp");
    let node = c.node(2);
    let said = journal(node);
    assert!(!said.contains("LatencyLane: loading"), "{said}");
    assert!(said.contains("queues=2") && said.contains("latency_lane=true"), "{said}");
    let policies = forwarding_policies(node.main_pid().unwrap());
    assert_eq!(policies.len(), 4, "a bulk queue and the lane, two threads each: {policies:?}");
    restart_with_drop_in(node, "no-bpf.conf", "[Service]\nCapabilityBoundingSet=~CAP_BPF\n");
    let said = journal(node);
    assert_eq!(said.matches("LatencyLane: loading the eBPF classifier").count(), 1, "{said}");
    assert!(said.contains("forwarding without the lane") && said.contains("systemctl cat weft"), "{said}");
    assert!(said.contains("queues=1") && said.contains("latency_lane=false"), "{said}");
    let policies = forwarding_policies(node.main_pid().unwrap());
    assert_eq!(policies.len(), 2, "one queue, two threads: {policies:?}");
    assert!(c.lab.ping_once(1, c.lab.node(2).pod_ip.unwrap()), "pods reach each other");
}

/// `RealtimeThreads` under the packaged unit, which allows real-time
/// scheduling (`RestrictRealtime=no`, `LimitRTPRIO=10`, for the latency
/// lane): every forwarding thread runs `SCHED_FIFO`, nothing refused. A
/// drop-in that restricts it again: the kernel refuses `SCHED_FIFO`; weft
/// says so once, with what the unit needs, and forwards at nice -19.
#[test]
fn udp_realtime_threads_run_under_the_unit_and_a_refusal_is_said_once() {
    let json = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","Backend":{"Type":"udp","RealtimeThreads":true}}"#;
    let c = Cluster::with_config("udp", json);
    let node = c.node(2);
    let said = journal(node);
    assert!(!said.contains("the kernel refused SCHED_FIFO"), "{said}");
    let policies = forwarding_policies(node.main_pid().unwrap());
    let fifo = libc::SCHED_FIFO as u32;
    assert!(policies.len() >= 2 && policies.iter().all(|(_, p)| *p == fifo), "threads SCHED_FIFO: {policies:?}");
    restart_with_drop_in(node, "no-rt.conf", "[Service]\nRestrictRealtime=yes\n");
    let said = journal(node);
    assert_eq!(said.matches("the kernel refused SCHED_FIFO").count(), 1, "{said}");
    assert!(said.contains("RestrictRealtime=no and LimitRTPRIO=10"), "{said}");
    let policies = forwarding_policies(node.main_pid().unwrap());
    assert!(policies.len() >= 2 && policies.iter().all(|(_, p)| *p == 0), "threads at normal priority: {policies:?}");
    assert!(c.lab.ping_once(1, c.lab.node(2).pod_ip.unwrap()), "pods reach each other");
}

/// A node with nft and without the iptables commands, the network config
/// in nftables mode: the unit comes up, pods reach each other (in
/// `Cluster::new`), and the rules are flannel's nftables tables.
#[test]
fn nftables_on_systemd_nodes_without_iptables() {
    let json = config("vxlan").replace(r#""Backend""#, r#""EnableNFTables":true,"Backend""#);
    let c = Cluster::prepared("vxlan", &json, |node| {
        node.run("sh", &["-c", "rm -f /usr/sbin/iptables* /usr/sbin/ip6tables* /usr/sbin/xtables*"]).unwrap();
        assert!(node.run("sh", &["-c", "command -v iptables"]).is_err(), "iptables is still there");
    });
    for i in 1..=2 {
        let table = c.node(i).run("nft", &["list", "table", "ip", "flannel-ipv4"]).unwrap();
        assert!(table.contains("chain postrtg") && table.contains("masquerade fully-random"), "{table}");
    }
    let own = c.node(2).run("journalctl", &["-u", "weft", "--no-pager", "-o", "cat", "_COMM=weft"]).unwrap();
    assert!(!own.lines().any(|l| l.contains(" ERROR ")), "{own}");
}
