//! The control-plane scale case: N leases already in etcd, one daemon
//! started in a lab node, timed until every peer is programmed (vxlan:
//! its route is in the kernel; wireguard: `weft_dataplane_peers_programmed`
//! says so); then 100 more leases added in one transaction, timed the same
//! way. Also the daemon's RSS and CPU seconds at the end, and its CPU over
//! the next 60 s, idle (no peer answers: a wireguard node keeps trying).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_lab::peers::{peer_index, peer_lease, peer_wg_lease, PEERS_CONFIG, WG_PEERS_CONFIG};
use weft_lab::{netns, Lab};

#[derive(Debug, Clone)]
pub(crate) struct ScaleFigures {
    pub(crate) backend: &'static str,
    pub(crate) leases: u32,
    pub(crate) programmed_s: f64,
    pub(crate) add_100_s: f64,
    pub(crate) rss_mb: f64,
    pub(crate) cpu_s: f64,
    /// CPU seconds per second over the 60 s after the +100.
    pub(crate) idle_cpu: f64,
}

/// How long the idle CPU is measured.
const IDLE: Duration = Duration::from_secs(60);

/// Write leases `ids` for `backend`, in transactions of 1,000 (or all in one).
fn put_leases(lab: &Lab, backend: &str, ids: Vec<u32>, one_txn: bool) -> Result<()> {
    let size = if one_txn { ids.len().max(1) } else { 1000 };
    let lease = if backend == "wireguard" { peer_wg_lease } else { peer_lease };
    for chunk in ids.chunks(size) {
        lab.etcd_txn(chunk.iter().map(|i| lease(*i)).collect(), vec![])?;
    }
    Ok(())
}

/// Peers node 1 has programmed: its routes (vxlan), or its metric.
fn programmed(lab: &Lab, backend: &str) -> Result<usize> {
    if backend == "wireguard" {
        let n = lab.metric(1, "weft_dataplane_peers_programmed{backend=\"wireguard\"}").unwrap_or(0);
        return Ok(n as usize);
    }
    routes(lab)
}

/// weft's routes in node 1 (`ip route show proto 87`, counted).
fn routes(lab: &Lab) -> Result<usize> {
    let out = netns::run(lab.node_cmd(1, "ip").args(["-4", "route", "show", "proto", "87"]))?;
    Ok(out.stdout.iter().filter(|b| **b == b'\n').count())
}

fn wait_programmed(lab: &Lab, backend: &str, want: usize, limit: Duration) -> Result<Duration> {
    let began = Instant::now();
    loop {
        if programmed(lab, backend)? >= want {
            return Ok(began.elapsed());
        }
        if began.elapsed() > limit {
            bail!("{} of {want} peers programmed after {limit:?}", programmed(lab, backend)?);
        }
        // Counting is a full dump (tens of ms for tens of thousands of
        // routes): poll at 5% of the time so far, so the count does not
        // take the CPU the daemon is measured on (the figure is at most 5%
        // late).
        std::thread::sleep((began.elapsed() / 20).clamp(Duration::from_millis(10), Duration::from_millis(500)));
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// One scale run with `n` leases on `backend` (vxlan or wireguard).
pub(crate) fn run(weft: &std::path::Path, backend: &'static str, n: u32) -> Result<ScaleFigures> {
    if !(1..=65_433).contains(&n) {
        bail!("--scale takes lease counts from 1 to 65433 (the node and 100 more leases come on top)");
    }
    let mut lab = Lab::new(1, weft)?;
    // A /8 network of /24s: 65,534 leasable subnets, flannel's ceiling.
    lab.put_config(if backend == "wireguard" { WG_PEERS_CONFIG } else { PEERS_CONFIG })?;
    // Leases 1..=n; the node itself takes another subnet.
    put_leases(&lab, backend, (1..=n).collect(), false)?;
    let began = Instant::now();
    lab.start_daemon(1, &["--subnet-lease-ttl", "24h"])?;
    let pid = lab.daemon_pid(1).context("daemon pid")?;
    let limit = Duration::from_secs(300);
    wait_programmed(&lab, backend, n as usize, limit).with_context(|| lab.log_tail(1))?;
    let programmed = began.elapsed();
    lab.wait_ready(1, limit)?;
    let own = peer_index(lab.subnet_env(1)?.0);
    put_leases(&lab, backend, (n + 1..).filter(|i| *i != own).take(100).collect(), true)?;
    let add = wait_programmed(&lab, backend, n as usize + 100, limit).with_context(|| lab.log_tail(1))?;
    let cpu_s = lab.daemon_cpu(1)?.as_secs_f64();
    std::thread::sleep(IDLE);
    let idle_cpu = (lab.daemon_cpu(1)?.as_secs_f64() - cpu_s) / IDLE.as_secs_f64();
    Ok(ScaleFigures {
        backend,
        leases: n,
        programmed_s: programmed.as_secs_f64(),
        add_100_s: add.as_secs_f64(),
        rss_mb: rss_mb(pid),
        cpu_s,
        idle_cpu,
    })
}
