//! The network config changed under running daemons, in the lab: deleted,
//! made invalid, its range changed, then changes a running node cannot
//! apply (VNI, backend type), each followed by the restart a service
//! manager would do. A pod pings across nodes every 10 ms while the nodes
//! keep running; no ping may be lost.

mod lab_common;

use std::time::Duration;

use lab_common::*;
use weft_lab::{wait_until, Lab};

/// The resync interval the daemons run with: the config is read back once
/// per interval.
const RESYNC: &str = "1s";
/// A change must be acted on within two resync intervals and a margin.
const NOTICED: Duration = Duration::from_secs(4);
const KEY: &str = "/coreos.com/network/config";

fn vxlan(extra: &str) -> String {
    format!(r#"{{"Network":"10.244.0.0/16","SubnetLen":24{extra},"Backend":{{"Type":"vxlan"}}}}"#)
}

/// Wait until node `i`'s `/readyz` answers `code` with a body containing
/// `needle`; returns the body.
fn readyz(lab: &Lab, i: u8, code: u16, needle: &str) -> String {
    wait_until(&format!("node {i} /readyz {code} saying {needle:?}"), NOTICED, || {
        let (c, body) = lab.http(i, "/readyz").ok()?;
        (c == code && body.contains(needle)).then_some(body)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)))
}

fn etcd_put(lab: &Lab, value: &str) {
    let out = lab.etcdctl(&["put", KEY, value]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Put `json`, see both daemons exit non-zero naming `change`, start them
/// again (as systemd would) and wait until they are ready and converged.
fn restart_with(lab: &mut Lab, json: &str, change: &str) {
    lab.put_config(json).unwrap();
    for i in 1..=2 {
        let status = lab.wait_exit(i, NOTICED).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(i)));
        assert!(!status.success(), "a config change that needs a restart exits non-zero");
        let log = lab.log(i);
        assert!(
            log.contains(change) && log.contains("exiting so that the service manager starts weft again"),
            "{}",
            lab.log_tail(i)
        );
    }
    for i in 1..=2 {
        lab.start_daemon(i, &["--resync-interval", RESYNC]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
    }
    wait_converged(lab);
}

fn link(lab: &Lab, i: u8, name: &str) -> Option<String> {
    let out = lab.node_cmd(i, "ip").args(["-d", "link", "show", name]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn config_changes_are_followed_or_restarted_for() {
    let mut lab = lab_with_config(2, &vxlan(r#","SubnetMax":"10.244.199.0""#), &["--resync-interval", RESYNC]);
    let subnets: Vec<_> = (1..=2).map(|i| lab.subnet_env(i).unwrap().0).collect();
    let pod2 = lab.node(2).pod_ip.unwrap();
    let pinger = lab.pinger(1, pod2, "0.01", 1_000_000).unwrap();
    let metric = |lab: &Lab, i| lab.metric(i, "weft_config_current").unwrap();
    assert_eq!(metric(&lab, 1), 1);

    // Deleted: both nodes keep forwarding and say why they are not ready.
    assert!(lab.etcdctl(&["del", KEY]).unwrap().status.success());
    for i in 1..=2 {
        readyz(&lab, i, 503, &format!("the network config at {KEY} was deleted"));
        assert_eq!(metric(&lab, i), 0);
    }
    // Back, in other words (key order, defaults written out): ready again.
    lab.put_config(r#"{"Backend":{"VNI":1,"Type":"vxlan"},"SubnetMax":"10.244.199.0","Network":"10.244.0.0/16"}"#)
        .unwrap();
    for i in 1..=2 {
        readyz(&lab, i, 200, "ready");
        assert_eq!(metric(&lab, i), 1);
    }

    // Invalid: not ready with the parser's reason, said once, not every pass.
    etcd_put(&lab, r#"{"Network":"10.244.0.0/16","SubnetLen":40}"#);
    for i in 1..=2 {
        let body = readyz(&lab, i, 503, "is invalid now");
        assert!(body.contains("SubnetLen"), "{body}");
    }
    let said = lab.log(1).matches("not ready:").count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.log(1).matches("not ready:").count(), said, "{}", lab.log_tail(1));

    // The range widened: applies to leases acquired later; nodes stay ready.
    lab.put_config(&vxlan(r#","SubnetMax":"10.244.250.0""#)).unwrap();
    for i in 1..=2 {
        readyz(&lab, i, 200, "ready");
        wait_until("the range change to be logged", NOTICED, || {
            lab.log(i).contains("applies to leases acquired from now on").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.log_tail(i)));
    }
    assert!(lab.daemon_running(1) && lab.daemon_running(2));

    // A new VNI cannot be applied in place: each node exits for a restart,
    // and the dataplane carries traffic until it does.
    let vni2 =
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.250.0","Backend":{"Type":"vxlan","VNI":2}}"#;
    lab.put_config(vni2).unwrap();
    for i in 1..=2 {
        lab.wait_exit(i, NOTICED).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log_tail(i)));
    }
    let (sent, received) = pinger.finish().unwrap();
    eprintln!("config deleted, invalid, widened, VNI changed: {sent} pings sent, {} lost", sent - received);
    assert_eq!(sent, received, "no ping lost while the daemons followed the config");
    for i in 1..=2 {
        assert!(lab.log(i).contains("Backend.VNI 1 -> 2"), "{}", lab.log_tail(i));
        lab.start_daemon(i, &["--resync-interval", RESYNC]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
    }
    wait_converged(&lab);
    for i in 1..=2 {
        assert!(link(&lab, i, "flannel.2").is_some_and(|l| l.contains("vxlan id 2")));
        assert!(link(&lab, i, "flannel.1").is_none(), "the old VNI's device is removed");
        assert_eq!(lab.subnet_env(i).unwrap().0, subnets[usize::from(i) - 1], "the subnet is kept");
    }
    assert!(lab.ping_once(1, pod2));

    // vxlan -> udp -> host-gw: each restart leaves only the new backend's
    // device, and pods reach each other.
    restart_with(&mut lab, &config("udp"), "Backend.Type vxlan -> udp");
    for i in 1..=2 {
        assert!(link(&lab, i, "flannel0").is_some() && link(&lab, i, "flannel.2").is_none());
    }
    assert!(lab.ping_once(1, pod2) && lab.ping_once(2, lab.node(1).pod_ip.unwrap()));
    restart_with(&mut lab, &config("host-gw"), "Backend.Type udp -> host-gw");
    for i in 1..=2 {
        assert!(link(&lab, i, "flannel0").is_none(), "the persistent TUN device of udp is removed");
        assert_eq!(lab.subnet_env(i).unwrap().0, subnets[usize::from(i) - 1]);
    }
    assert!(lab.ping_once(1, pod2) && lab.ping_once(2, lab.node(1).pod_ip.unwrap()));
}
