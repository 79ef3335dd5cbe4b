//! Nodes booted with systemd as PID 1, as real nodes are: a Debian 12
//! root file system (debootstrap from Debian's archive once, cached in
//! [`BASE`]), booted by `systemd-nspawn -b` on a throwaway copy of it
//! (`--ephemeral`) inside a lab node's network namespace. The test
//! installs weft's `.deb` with apt, writes `/etc/default/weft` and starts
//! the packaged unit, exactly as an operator would.
//!
//! The pod namespaces stay the lab's (`/run/netns` is bound into the
//! node), so the lab's ping helpers work unchanged; the pod is wired by
//! the packaged CNI plugin running inside the node, with Debian's
//! `bridge` and `host-local` installed there.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use crate::netns;
use crate::wait::wait_until;
use crate::Lab;

/// Where the base file system is kept between runs (named after what it
/// holds, so a base without a package of [`INCLUDE`] is never used).
pub const BASE: &str = "/var/cache/weft-lab/bookworm-wg-nft";

/// What the base holds beyond debootstrap's minimal set: systemd as init,
/// what weft's package depends on (iptables, or nftables for its nftables
/// mode) and recommends, ping, and `wg` (what an
/// operator of the wireguard backend types).
const INCLUDE: &str =
    "systemd,systemd-sysv,iproute2,iptables,nftables,iputils-ping,containernetworking-plugins,wireguard-tools";

/// The Debian archive this machine's apt uses for bookworm: the `URIs` of
/// the first `deb` entry for suite `bookworm` in deb822 `.sources` files,
/// or the URI of the first `deb` line for it in one-line `.list` files.
/// So a machine that reaches Debian through a mirror or a proxy builds the
/// base through it too. Pure.
pub fn bookworm_archive(files: &[(String, String)]) -> Option<String> {
    for (name, text) in files {
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|l| {
                        l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string())
                    })
                };
                let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let enabled = field("Enabled").is_none_or(|e| e != "no");
                let bookworm = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == "bookworm"));
                if deb && enabled && bookworm {
                    if let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string)) {
                        return Some(uri);
                    }
                }
            }
        } else {
            for line in text.lines() {
                let mut words = line.split_whitespace().peekable();
                if words.next() != Some("deb") {
                    continue;
                }
                // Options in brackets may hold spaces: skip to their end.
                if words.peek().is_some_and(|w| w.starts_with('[')) {
                    for w in words.by_ref() {
                        if w.ends_with(']') {
                            break;
                        }
                    }
                }
                let (uri, suite) = (words.next(), words.next());
                if let (Some(uri), Some("bookworm")) = (uri, suite) {
                    return Some(uri.to_string());
                }
            }
        }
    }
    None
}

/// [`bookworm_archive`] of this machine's apt sources.
fn archive() -> Result<String> {
    let mut files = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        files.push(("sources.list".to_string(), text));
    }
    let mut more: Vec<_> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    more.sort();
    for path in more {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".list") || name.ends_with(".sources") {
            files.push((name, std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
    bookworm_archive(&files).context(
        "no apt source for Debian 12 (bookworm) on this machine (/etc/apt/sources.list, /etc/apt/sources.list.d): the systemd nodes are debootstrapped from it",
    )
}

/// The base file system, built on first use (about a minute). Builds are
/// serialised by a lock, and a build lands by rename, so a half-built
/// tree is never used.
pub fn base() -> Result<PathBuf> {
    let base = PathBuf::from(BASE);
    let parent = base.parent().context("base path")?;
    std::fs::create_dir_all(parent)?;
    let lock = File::create(parent.join("bookworm.lock"))?;
    // SAFETY: flock on a descriptor we own; it is released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the base image");
    }
    if base.join("usr/lib/systemd/systemd").exists() {
        return Ok(base);
    }
    let tmp = parent.join(format!("bookworm.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), "bookworm"])
        .arg(&tmp)
        .arg(archive()?)
        .output()
        .context("running debootstrap (install Debian's debootstrap package: scripts/setup.sh does)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("debootstrap failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&tmp, &base)?;
    Ok(base)
}

/// One booted node; shut down (and its copy of the base removed) on drop.
pub struct SystemdNode {
    pub index: u8,
    nspawn: Option<Child>,
    /// PID 1 of the node, as the host sees it.
    leader: u32,
    log: PathBuf,
}

impl SystemdNode {
    /// Boot lab node `i` (its namespace exists, its daemon is not run by
    /// the lab) and wait until systemd reports the boot finished.
    pub fn boot(lab: &mut Lab, i: u8) -> Result<SystemdNode> {
        let base = base()?;
        // The pod's namespace exists before the boot, so that the bind of
        // /run/netns carries it into the node.
        let pod_ns = lab.node(i).pod_ns.clone();
        netns::add(&pod_ns)?;
        let log = lab.dir().join(format!("n{i}/nspawn.log"));
        std::fs::create_dir_all(log.parent().context("log dir")?)?;
        let out = File::create(&log)?;
        let mut nspawn = Command::new("systemd-nspawn");
        // SAFETY: prctl(PR_SET_PDEATHSIG) runs in the child between fork and
        // exec and touches no memory of the parent. SIGTERM makes nspawn
        // shut the node down if the test process dies.
        unsafe {
            nspawn.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = nspawn
            .args(["--quiet", "--register=no", "--keep-unit", "--boot", "--ephemeral", "--console=passive"])
            .arg(format!("--directory={}", base.display()))
            .arg(format!("--machine={}-n{i}", lab.name))
            .arg(format!("--network-namespace-path=/run/netns/{}", lab.node(i).ns))
            // CAP_BPF and bpf(2), which a real node has and nspawn keeps from a container,
            // for the udp backend's LatencyLane (its unit drop-in is tested).
            .args([
                "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_BPF",
                "--system-call-filter=bpf",
                "--bind=/dev/net/tun",
                "--bind=/run/netns",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting systemd-nspawn (install Debian's systemd-container package)")?;
        let pid = child.id();
        let mut node = SystemdNode { index: i, nspawn: Some(child), leader: 0, log };
        node.leader = wait_until(&format!("node {i}'s systemd to start"), Duration::from_secs(30), || init_of(pid))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", node.console()))?;
        let booted = wait_until(&format!("node {i} to finish booting"), Duration::from_secs(60), || {
            let out = node.cmd("systemctl").arg("is-system-running").output().ok()?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        if let Err(e) = booted {
            bail!("{e}\n{}", node.console());
        }
        Ok(node)
    }

    /// What the node printed on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `program` inside the node: its mount, UTS, IPC, network and PID
    /// namespaces.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.leader.to_string(), "-m", "-u", "-i", "-n", "-p", "--", program]);
        c
    }

    /// Run `program args` in the node; its output, or an error with it.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.cmd(program).args(args).stdin(Stdio::null()).output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("node {}: {program} {} failed: {text}", self.index, args.join(" "));
        }
        Ok(text)
    }

    /// A path inside the node, as the host reaches it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(inside.trim_start_matches('/'))
    }

    /// `apt-get install ./<deb>` inside the node.
    pub fn install(&self, deb: &Path) -> Result<()> {
        let name = deb.file_name().context("package file name")?.to_string_lossy().into_owned();
        std::fs::copy(deb, self.path(&format!("/root/{name}")))?;
        self.run("apt-get", &["install", "-y", "-qq", "--no-install-recommends", &format!("/root/{name}")])?;
        Ok(())
    }

    /// The unit's main process as the host sees it (0: not running).
    pub fn main_pid(&self) -> Result<u32> {
        let inner: u32 = self.run("systemctl", &["show", "-p", "MainPID", "--value", "weft"])?.trim().parse()?;
        if inner == 0 {
            return Ok(0);
        }
        // The node has its own PID namespace: find the host's PID of weft.
        host_pid_of(self.leader, inner)
    }

    /// Give the node a pod with the packaged CNI plugin and kube-flannel's
    /// network config, run inside the node; returns the pod's address.
    pub fn attach_pod(&self, lab: &mut Lab) -> Result<Ipv4Addr> {
        let pod_ns = lab.node(self.index).pod_ns.clone();
        let conf = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
        let mut child = self
            .cmd("/usr/lib/cni/flannel")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("pod{}", self.index))
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, conf.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "the packaged CNI plugin failed on node {}: {}{}",
                self.index,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).context("the CNI plugin's result")?;
        let addr: Ipv4Net = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no IPv4 address in the CNI result {result}"))?;
        lab.set_pod_ip(self.index, addr.addr());
        // On a dual-stack network the pod has an IPv6 address too.
        let addr6 = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|ip| ip["address"].as_str()?.parse::<ipnet::Ipv6Net>().ok());
        lab.set_pod_ip6(self.index, addr6.map(|a| a.addr()));
        Ok(addr.addr())
    }
}

impl Drop for SystemdNode {
    fn drop(&mut self) {
        let Some(mut child) = self.nspawn.take() else { return };
        // SIGTERM asks nspawn to shut the node down cleanly.
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let gone = wait_until("the node to shut down", Duration::from_secs(15), || child.try_wait().ok().flatten());
        if gone.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The node's PID 1 under nspawn `pid`: `systemd`, nspawn's child (or,
/// while it starts, its intermediate child's).
fn init_of(pid: u32) -> Option<u32> {
    let near = children(pid);
    let far = near.iter().flat_map(|c| children(*c));
    near.clone()
        .into_iter()
        .chain(far)
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|s| s.trim() == "systemd"))
}

/// The host PID of the process that is `inner` in the PID namespace of
/// `leader` (the last field of `NSpid` in its status).
fn host_pid_of(leader: u32, inner: u32) -> Result<u32> {
    let ns = std::fs::read_link(format!("/proc/{leader}/ns/pid"))?;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or("");
        if nspid.split_whitespace().last().and_then(|s| s.parse().ok()) == Some(inner) {
            return Ok(pid);
        }
    }
    bail!("no process {inner} in the node's PID namespace")
}

#[cfg(test)]
mod tests {
    use super::bookworm_archive;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
    }

    #[test]
    fn the_archive_is_the_machines_own_bookworm_source() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            bookworm_archive(&files(&[("debian.sources", deb822)])).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "# deb http://old/debian bookworm main\ndeb-src http://src/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://proxy:3142/debian bookworm main\n";
        assert_eq!(
            bookworm_archive(&files(&[("sources.list", one_line)])).as_deref(),
            Some("http://proxy:3142/debian")
        );
        let disabled = "Types: deb\nEnabled: no\nURIs: http://off/debian\nSuites: bookworm\n";
        let backports = "deb http://b/debian bookworm-backports main\n";
        assert_eq!(bookworm_archive(&files(&[("a.sources", disabled), ("b.list", backports)])), None);
    }
}
