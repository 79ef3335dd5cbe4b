//! Network namespaces for the lab: create, run commands in, enter from a
//! thread, delete. Namespace names carry the creating process's PID so
//! that namespaces left behind by a killed test run can be swept.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// All lab namespaces start with this.
pub const NS_PREFIX: &str = "weftlab-";

/// Run a command and fail with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A command that runs inside namespace `ns`.
pub fn exec(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// `ip netns add NAME` and bring its loopback up.
pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// `ip netns del NAME` (absent is fine).
pub fn del(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

/// Delete lab namespaces whose creating process no longer exists.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            del(name);
        }
    }
}

/// Move the calling thread into namespace `ns`: sockets it opens from now
/// on live there. Only for threads of their own (see [`in_netns`]).
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid namespace fd only changes this thread's
    // network namespace; the fd outlives the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a thread that has entered namespace `ns`: sockets it opens
/// live in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns_owned = ns.to_string();
    let handle = std::thread::spawn(move || -> Result<T> {
        enter(&ns_owned)?;
        Ok(f())
    });
    handle.join().map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// `ip route` output without the `nhid N` of routes that point at nexthop
/// objects, for comparing with routes written out in full (flanneld's, or
/// an expected `via GW dev DEV`): the kernel prints the nexthop's gateway
/// and device after the id.
pub fn without_nhid(routes: &str) -> String {
    routes
        .lines()
        .map(|l| {
            let mut words = l.split(' ').peekable();
            let mut out = Vec::new();
            while let Some(w) = words.next() {
                if w == "nhid" && words.peek().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                    words.next();
                } else {
                    out.push(w);
                }
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_nhid_drops_only_the_id() {
        let r = "10.244.2.0/24 nhid 183763456 via 10.244.2.0 dev flannel.1 onlink \n10.244.9.0/24 via 1.2.3.4 dev eth0";
        assert_eq!(
            super::without_nhid(r),
            "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink \n10.244.9.0/24 via 1.2.3.4 dev eth0"
        );
    }
}
