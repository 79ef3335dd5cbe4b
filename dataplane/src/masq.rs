//! Forwarding and IP masquerading rules, exactly as flanneld v0.20.2 writes
//! them (chain names, rules, order and comments), so that a node moved from
//! flanneld to weft (or back) has one set of rules, not two:
//! - `FLANNEL-FWD` (filter, from `FORWARD`): traffic from and to the pod
//!   network is accepted, always;
//! - `FLANNEL-POSTRTG` (nat, from `POSTROUTING`), with `--ip-masq` only: pod
//!   traffic leaving the overlay is masqueraded; pod-to-pod traffic never is.
//!
//! The `WEFT-*` chains of weft before 0.1 are removed at start.
//!
//! Rules are loaded with `iptables-restore --noflush`, which replaces the
//! contents of weft's chains atomically and leaves every other chain alone.
//! iptables runs as a child process off the async runtime, with a deadline:
//! a hung iptables (a held xtables lock) is killed, and never stalls the
//! daemon.
//!
//! [`Rules`] keeps them in place: after installing, it remembers what
//! `iptables -S` shows of weft's chains; each check compares again and
//! reinstalls (a repair) when a chain, a rule or a jump went missing.

use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::report::{ObjectKind, Report};

/// The longest an iptables command may take.
const DEADLINE: Duration = Duration::from_secs(10);

pub const NAT_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
/// flanneld's comments, on every rule and jump of each chain.
const NAT_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";
/// (table, chain, jumped to from) of earlier weft versions (their jumps
/// carry the comment `weft`).
const LEGACY: [(&str, &str, &str); 2] = [("nat", "WEFT-POSTRTG", "POSTROUTING"), ("filter", "WEFT-FWD", "FORWARD")];

/// The `iptables-restore` input for the masquerade chain, flanneld's rules
/// in flanneld's order (pod-to-pod is returned before anything is
/// masqueraded). Pure.
pub fn masq_rules(network: Ipv4Net, subnet: Ipv4Net) -> String {
    let c = NAT_COMMENT;
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark 0x4000/0x4000 -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} -d {network} -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} ! -d 224.0.0.0/4 -m comment --comment \"{c}\" -j MASQUERADE --random-fully\n\
         -A {NAT_CHAIN} ! -s {network} -d {subnet} -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} ! -s {network} -d {network} -m comment --comment \"{c}\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// The `iptables-restore` input for the forward chain. Pure.
pub fn forward_rules(network: Ipv4Net) -> String {
    let c = FWD_COMMENT;
    format!(
        "*filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {network} -m comment --comment \"{c}\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {network} -m comment --comment \"{c}\" -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Run `program args` with `stdin`, within [`DEADLINE`]: (success, stdout, stderr).
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Masq(format!("cannot run {program} (install the iptables package): {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(|e| Error::Masq(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| Error::Masq(format!("{program} {} took longer than {DEADLINE:?}; killed it", args.join(" "))))?
        .map_err(|e| Error::Masq(format!("waiting for {program}: {e}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

async fn iptables(args: &[&str]) -> Result<bool> {
    Ok(run("iptables", args, None).await?.0)
}

/// The comment on the jump to `target` (flanneld's for its chains).
fn comment_of(target: &str) -> &'static str {
    match target {
        NAT_CHAIN => NAT_COMMENT,
        FWD_CHAIN => FWD_COMMENT,
        _ => "weft",
    }
}

/// `iptables -t TABLE OP CHAIN -m comment --comment C -j TARGET`.
async fn jump(table: &str, op: &str, chain: &str, target: &str) -> Result<bool> {
    let comment = comment_of(target);
    iptables(&["-w", "5", "-t", table, op, chain, "-m", "comment", "--comment", comment, "-j", target]).await
}

/// Make sure `table/chain` jumps to `target` (inserted first).
async fn ensure_jump(table: &str, chain: &str, target: &str) -> Result<()> {
    if jump(table, "-C", chain, target).await? {
        return Ok(());
    }
    if !jump(table, "-I", chain, target).await? {
        return Err(Error::Masq(format!("could not insert the jump from {table}/{chain} to {target}")));
    }
    Ok(())
}

async fn restore(input: &str) -> Result<()> {
    let (ok, _, err) = run("iptables-restore", &["-w", "5", "--noflush"], Some(input)).await?;
    if !ok {
        return Err(Error::Masq(format!("iptables-restore failed: {err}")));
    }
    Ok(())
}
/// What `iptables -S` shows of one of weft's chains, and whether the jump
/// to it is in place.
async fn observe(table: &str, from: &str, chain: &str) -> Result<(String, bool)> {
    let (ok, rules, _) = run("iptables", &["-w", "5", "-t", table, "-S", chain], None).await?;
    let rules = if ok { rules } else { String::new() };
    Ok((rules, jump(table, "-C", from, chain).await?))
}

/// weft's forwarding and masquerade rules, kept in place.
pub(crate) struct Rules {
    network: Ipv4Net,
    ip_masq: bool,
    subnet: Option<Ipv4Net>,
    /// What the chains looked like right after weft installed them.
    installed: Option<Vec<(String, bool)>>,
}

impl Rules {
    pub(crate) fn new(network: Ipv4Net, ip_masq: bool) -> Rules {
        Rules { network, ip_masq, subnet: None, installed: None }
    }

    async fn observe_all(&self) -> Result<Vec<(String, bool)>> {
        let mut v = vec![observe("filter", "FORWARD", FWD_CHAIN).await?];
        if self.ip_masq {
            v.push(observe("nat", "POSTROUTING", NAT_CHAIN).await?);
        }
        Ok(v)
    }

    async fn apply(&self, subnet: Ipv4Net) -> Result<()> {
        restore(&forward_rules(self.network)).await?;
        ensure_jump("filter", "FORWARD", FWD_CHAIN).await?;
        if self.ip_masq {
            restore(&masq_rules(self.network, subnet)).await?;
            ensure_jump("nat", "POSTROUTING", NAT_CHAIN).await?;
        }
        Ok(())
    }

    /// Install the rules for `subnet` (and remove the masquerade chain of
    /// an earlier run with `--ip-masq` when it is off now).
    pub(crate) async fn start(&mut self, subnet: Ipv4Net) -> Result<()> {
        self.subnet = Some(subnet);
        for (table, chain, from) in LEGACY {
            remove_chain(table, from, chain).await?;
        }
        if !self.ip_masq {
            remove_chain("nat", "POSTROUTING", NAT_CHAIN).await?;
        }
        self.apply(subnet).await?;
        if self.ip_masq {
            info!("installed IP masquerade rules");
        }
        self.installed = Some(self.observe_all().await?);
        Ok(())
    }

    /// Compare the chains with what was installed; reinstall on any difference.
    pub(crate) async fn check(&mut self, report: &mut Report) {
        let Some(subnet) = self.subnet else { return };
        let result = async {
            let now = self.observe_all().await?;
            if self.installed.as_ref() == Some(&now) {
                return Ok(false);
            }
            warn!("weft's iptables rules were changed or removed; reinstalling them");
            self.apply(subnet).await?;
            self.installed = Some(self.observe_all().await?);
            Ok::<_, Error>(true)
        }
        .await;
        match result {
            Ok(true) => report.repaired(ObjectKind::Rules, 1),
            Ok(false) => {}
            Err(e) => report.problem(format!("iptables rules not in place, retrying: {e}")),
        }
    }
}

/// Remove `table/chain` and the jumps to it from `from` (stale rules: the
/// masquerade chain of an earlier run with `--ip-masq`, or the chains of an
/// earlier weft). An absent chain is fine.
async fn remove_chain(table: &str, from: &str, chain: &str) -> Result<()> {
    while jump(table, "-D", from, chain).await? {}
    if iptables(&["-w", "5", "-t", table, "-F", chain]).await? {
        iptables(&["-w", "5", "-t", table, "-X", chain]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_is_never_masqueraded() {
        let r = masq_rules("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        let nat: Vec<&str> = r.lines().filter(|l| l.starts_with("-A FLANNEL-POSTRTG")).collect();
        // The pod-to-pod RETURN comes before any MASQUERADE.
        let ret =
            nat.iter().position(|l| l.contains("-s 10.244.0.0/16 -d 10.244.0.0/16") && l.ends_with("RETURN")).unwrap();
        let first_masq = nat.iter().position(|l| l.contains("MASQUERADE")).unwrap();
        assert!(ret < first_masq);
        assert!(r.contains("! -s 10.244.0.0/16 -d 10.244.3.0/24"));
        assert_eq!(r.matches("COMMIT").count(), 1);
        let f = forward_rules("10.244.0.0/16".parse().unwrap());
        assert!(f.contains("-A FLANNEL-FWD -s 10.244.0.0/16") && f.contains("-A FLANNEL-FWD -d 10.244.0.0/16"));
    }
}
