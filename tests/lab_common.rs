//! Helpers for the multi-node lab tests (included with `mod lab_common;`).
#![allow(dead_code)]

use std::time::Duration;

use weft_lab::Lab;

pub const READY: Duration = Duration::from_secs(20);
/// Lease changes must reach every node within this.
pub const PROPAGATION: Duration = Duration::from_secs(2);

pub fn config(backend: &str) -> String {
    format!(r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{{"Type":"{backend}"}}}}"#)
}

/// A lab with `n` nodes running `weft run` on `backend`, each with a pod.
pub fn lab(n: u8, backend: &str, extra: &[&str]) -> Lab {
    let mut lab = Lab::new(n, env!("CARGO_BIN_EXE_weft")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    lab.put_config(&config(backend)).unwrap();
    for i in 1..=n {
        lab.start_daemon(i, extra).unwrap();
    }
    for i in 1..=n {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod(i).unwrap();
    }
    lab
}

/// Every pod pings every other pod; panics with the failing pairs.
pub fn assert_ping_matrix(lab: &Lab) {
    let mut failed = Vec::new();
    let n = lab.nodes.len() as u8;
    for from in 1..=n {
        for to in 1..=n {
            if from == to {
                continue;
            }
            let dst = lab.node(to).pod_ip.unwrap();
            if !lab.ping_once(from, dst) {
                failed.push(format!("pod {from} -> pod {to} ({dst})"));
            }
        }
    }
    if !failed.is_empty() {
        let logs: Vec<String> = (1..=n).map(|i| lab.log_tail(i)).collect();
        panic!("unreachable: {failed:?}\n{}", logs.join("\n"));
    }
}
