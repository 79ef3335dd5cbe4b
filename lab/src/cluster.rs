//! An etcd cluster on the lab's underlay: each member in its own network
//! namespace, with its own data directory, and the faults a test needs:
//! freeze (SIGSTOP), kill, restart (same data), and partition (its peer
//! traffic dropped by iptables inside its namespace, while clients still
//! reach it).

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::etcd::etcd_binary;
use crate::netns::{self, exec};
use crate::wait::wait_until;

/// Client port of every member (each has its namespace to itself).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;

/// One member.
pub struct Member {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    partitioned: bool,
}

/// A running cluster (members are killed on drop; their namespaces belong
/// to the lab).
pub struct EtcdCluster {
    pub members: Vec<Member>,
}

impl Member {
    /// `http://<ip>:2379`
    pub fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines this member logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = etcd_binary()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log())?;
        let mut cmd = exec(&self.ns, bin.to_str().context("etcd path")?);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().context("starting an etcd member")?);
        Ok(())
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of a child we own; no memory involved.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Whether this member answers `endpoint health` (which needs a leader).
    pub fn healthy(&self) -> bool {
        exec(&self.ns, "etcdctl")
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints={}", self.endpoint()), "--command-timeout=1s", "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The sum of a metric's samples on this member's `/metrics` (0 when
    /// absent or unreachable).
    pub fn metric(&self, name: &str) -> f64 {
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, CLIENT_PORT));
        let body = netns::in_netns(&self.ns, move || crate::lab::http_get(addr, "/metrics")).ok().flatten();
        body.map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
    }

    /// SIGKILL the member and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal(libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on its data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP: the process stays, answers nothing.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Drop the member's peer traffic both ways (clients still reach it).
    pub fn partition(&mut self) -> Result<()> {
        if !self.partitioned {
            self.peer_rules("-I")?;
            self.partitioned = true;
        }
        Ok(())
    }

    /// Undo [`partition`](Self::partition).
    pub fn heal(&mut self) -> Result<()> {
        if self.partitioned {
            self.peer_rules("-D")?;
            self.partitioned = false;
        }
        Ok(())
    }

    /// Refuse clients from other namespaces (connections reset), peers and
    /// the member's own namespace still reach it.
    pub fn shut_out_clients(&self) -> Result<()> {
        self.client_rule("-I")
    }

    /// Undo [`shut_out_clients`](Self::shut_out_clients).
    pub fn let_in_clients(&self) -> Result<()> {
        self.client_rule("-D")
    }

    fn client_rule(&self, op: &str) -> Result<()> {
        let port = CLIENT_PORT.to_string();
        let rule = ["INPUT", "-i", "eth0", "-p", "tcp", "--dport", &port, "-j", "REJECT", "--reject-with", "tcp-reset"];
        netns::run(exec(&self.ns, "iptables").arg(op).args(rule))?;
        Ok(())
    }

    /// `etcdctl ARGS` from the member's own namespace against this member
    /// alone; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = netns::run(
            exec(&self.ns, "etcdctl")
                .env("ETCDCTL_API", "3")
                .args([&format!("--endpoints={}", self.endpoint()), "--command-timeout=2s"])
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn peer_rules(&self, op: &str) -> Result<()> {
        let port = PEER_PORT.to_string();
        for (chain, dir) in [("INPUT", "--dport"), ("INPUT", "--sport"), ("OUTPUT", "--dport"), ("OUTPUT", "--sport")] {
            netns::run(exec(&self.ns, "iptables").args([op, chain, "-p", "tcp", dir, &port, "-j", "DROP"]))?;
        }
        Ok(())
    }
}

impl EtcdCluster {
    /// Start one member in each of `places` (namespace, underlay address),
    /// already connected to the underlay, with `extra` arguments for every
    /// member, and wait until each is healthy.
    pub fn start(places: &[(String, Ipv4Addr)], extra: &[&str]) -> Result<EtcdCluster> {
        let initial: Vec<String> =
            places.iter().enumerate().map(|(i, (_, ip))| format!("m{}=http://{ip}:{PEER_PORT}", i + 1)).collect();
        let mut members = Vec::new();
        for (i, (ns, ip)) in places.iter().enumerate() {
            let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
            let name = format!("m{}", i + 1);
            let client = format!("http://{ip}:{CLIENT_PORT}");
            let peer = format!("http://{ip}:{PEER_PORT}");
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={client},http://127.0.0.1:{CLIENT_PORT}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".to_string(),
                "--initial-cluster-token=weft-lab".to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            members.push(Member { name, ns: ns.clone(), ip: *ip, dir, args, child: None, partitioned: false });
        }
        let mut cluster = EtcdCluster { members };
        for m in &mut cluster.members {
            m.spawn()?;
        }
        for m in &cluster.members {
            cluster.wait_healthy(m, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    fn wait_healthy(&self, m: &Member, limit: Duration) -> Result<()> {
        let r = wait_until(&format!("etcd member {} to be healthy", m.name), limit, || m.healthy().then_some(()));
        if let Err(e) = r {
            bail!("{e}\n{}", m.log_tail());
        }
        Ok(())
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// Member `k` (1-based).
    pub fn member(&mut self, k: usize) -> &mut Member {
        &mut self.members[k - 1]
    }

    /// Restart member `k` and wait until it is healthy again.
    pub fn restart(&mut self, k: usize, limit: Duration) -> Result<()> {
        self.members[k - 1].restart()?;
        self.wait_healthy(&self.members[k - 1], limit)
    }

    /// The members serving at least one watch right now (by their
    /// `etcd_debugging_mvcc_watcher_total` gauge), 1-based.
    pub fn serving_watches(&self) -> Vec<usize> {
        (1..=self.members.len())
            .filter(|k| self.members[k - 1].metric("etcd_debugging_mvcc_watcher_total") >= 1.0)
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
