//! iperf3 between two namespaces of the lab, for the demo and the benchmark.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns;

/// An `iperf3 -s` bound to `ip` inside `ns`, killed on drop.
pub struct Server(Child);

impl Server {
    pub fn start(ns: &str, ip: &str) -> Result<Server> {
        let child = netns::exec(ns, "iperf3")
            .args(["-s", "-B", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (Debian package iperf3)")?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `iperf3 -c server_ip -J ARGS` in `ns` and return its JSON report.
/// Retries while the server is not yet listening or reports an error.
pub fn client(ns: &str, server_ip: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..50 {
        let out = netns::exec(ns, "iperf3").args(["-c", server_ip, "-J"]).args(args).output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && json.get("error").is_none() {
            return Ok(json);
        }
        last = json.get("error").map(|e| e.to_string()).unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into());
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 {args:?} to {server_ip} failed: {last}")
}

/// Received throughput of a TCP report, in Gbit/s.
pub fn tcp_gbps(report: &serde_json::Value) -> Result<f64> {
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received in iperf3 report")?;
    Ok(bps / 1e9)
}
