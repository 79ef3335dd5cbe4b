//! Twenty `weft run` daemons, one per lab node, started at once against a
//! range of sixteen subnets, fifty times over: never two holders of one
//! subnet; sixteen become ready, each with the subnet etcd says it holds;
//! the other four exit 1 saying "out of subnets" and naming the range (as
//! docs/operations.md says).

mod lab_common;

use std::collections::BTreeMap;
use std::time::Instant;

use lab_common::*;
use weft_lab::Lab;

const NODES: u8 = 20;
const ROUNDS: usize = 50;
const RANGE_16: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","Backend":{"Type":"host-gw"}}"#;

/// `subnet -> PublicIP` as etcd has it.
fn holders(lab: &Lab) -> BTreeMap<String, String> {
    let out = lab.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut map = BTreeMap::new();
    for pair in lines.chunks(2) {
        let key = pair[0].rsplit('/').next().unwrap().replace('-', "/");
        let ip = pair[1].split("\"PublicIP\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        assert!(map.insert(key.clone(), ip.to_string()).is_none(), "{key} listed twice");
    }
    map
}

#[test]
fn twenty_daemons_race_for_sixteen_subnets_fifty_times() {
    let mut lab = Lab::new(NODES, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.put_config(RANGE_16).unwrap();
    let began = Instant::now();
    for round in 1..=ROUNDS {
        let marks: Vec<usize> = (1..=NODES).map(|i| lab.log(i).len()).collect();
        for i in 1..=NODES {
            lab.start_daemon(i, &[]).unwrap();
        }
        let mut winners = BTreeMap::new();
        let mut losers = Vec::new();
        for i in 1..=NODES {
            match lab.wait_ready(i, READY) {
                Ok(()) => {
                    let subnet = lab.subnet_env(i).unwrap().0.to_string();
                    let ip = lab.node(i).underlay_ip.to_string();
                    if let Some(other) = winners.insert(subnet.clone(), ip.clone()) {
                        panic!("round {round}: {subnet} is used by {other} and {ip}");
                    }
                }
                Err(_) => {
                    let status = lab.wait_exit(i, READY).unwrap();
                    let log = &lab.log(i)[marks[usize::from(i) - 1]..];
                    assert_eq!(status.code(), Some(1), "round {round}, node {i}:\n{log}");
                    assert!(
                        log.contains("out of subnets") && log.contains("10.244.1.0 - 10.244.16.0"),
                        "round {round}, node {i} did not say why it lost:\n{log}"
                    );
                    losers.push(i);
                }
            }
        }
        assert_eq!((winners.len(), losers.len()), (16, 4), "round {round}");
        assert_eq!(holders(&lab), winners, "round {round}: etcd's holders are the ready daemons");

        // Stop the winners and free the range for the next round (each
        // node's subnet.env stays: the next start prefers that subnet).
        for i in 1..=NODES {
            if lab.daemon_running(i) {
                assert!(lab.stop_daemon(i, libc::SIGTERM).unwrap().success());
            }
        }
        assert!(lab.etcdctl(&["del", "--prefix", "/coreos.com/network/subnets/"]).unwrap().status.success());
    }
    eprintln!("{ROUNDS} rounds of {NODES} daemons on 16 subnets: no subnet held twice, in {:.1?}", began.elapsed());
}
