//! Forwarding and IP masquerading rules, in chains of weft's own, the way
//! flanneld does it:
//! - `WEFT-FWD` (filter, from `FORWARD`): traffic from and to the pod
//!   network is accepted, always;
//! - `WEFT-POSTRTG` (nat, from `POSTROUTING`), with `--ip-masq` only: pod
//!   traffic leaving the overlay is masqueraded; pod-to-pod traffic never is.
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

const NAT_CHAIN: &str = "WEFT-POSTRTG";
const FWD_CHAIN: &str = "WEFT-FWD";

/// The `iptables-restore` input for the masquerade chain. Pure.
pub fn masq_rules(network: Ipv4Net, subnet: Ipv4Net) -> String {
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark 0x4000/0x4000 -m comment --comment \"weft: traffic marked for masquerade elsewhere\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} -d {network} -m comment --comment \"weft: pod to pod\" -j RETURN\n\
         -A {NAT_CHAIN} ! -s {network} -d {subnet} -m comment --comment \"weft: to local pods\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} ! -d 224.0.0.0/4 -m comment --comment \"weft: pods to outside\" -j MASQUERADE --random-fully\n\
         -A {NAT_CHAIN} ! -s {network} -d {network} -m comment --comment \"weft: outside to remote pods\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// The `iptables-restore` input for the forward chain. Pure.
pub fn forward_rules(network: Ipv4Net) -> String {
    format!(
        "*filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {network} -m comment --comment \"weft: forward from pods\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {network} -m comment --comment \"weft: forward to pods\" -j ACCEPT\n\
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

/// `iptables -t TABLE OP CHAIN -m comment --comment weft -j TARGET`.
async fn jump(table: &str, op: &str, chain: &str, target: &str) -> Result<bool> {
    iptables(&["-w", "5", "-t", table, op, chain, "-m", "comment", "--comment", "weft", "-j", target]).await
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
        if !self.ip_masq {
            remove_masq().await?;
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

/// Remove the masquerade chain and the jump to it (stale rules of an
/// earlier run with `--ip-masq`). An absent chain is fine.
async fn remove_masq() -> Result<()> {
    while jump("nat", "-D", "POSTROUTING", NAT_CHAIN).await? {}
    if iptables(&["-w", "5", "-t", "nat", "-F", NAT_CHAIN]).await? {
        iptables(&["-w", "5", "-t", "nat", "-X", NAT_CHAIN]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_is_never_masqueraded() {
        let r = masq_rules("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        let nat: Vec<&str> = r.lines().filter(|l| l.starts_with("-A WEFT-POSTRTG")).collect();
        // The pod-to-pod RETURN comes before any MASQUERADE.
        let ret =
            nat.iter().position(|l| l.contains("-s 10.244.0.0/16 -d 10.244.0.0/16") && l.ends_with("RETURN")).unwrap();
        let first_masq = nat.iter().position(|l| l.contains("MASQUERADE")).unwrap();
        assert!(ret < first_masq);
        assert!(r.contains("! -s 10.244.0.0/16 -d 10.244.3.0/24"));
        assert_eq!(r.matches("COMMIT").count(), 1);
        let f = forward_rules("10.244.0.0/16".parse().unwrap());
        assert!(f.contains("-A WEFT-FWD -s 10.244.0.0/16") && f.contains("-A WEFT-FWD -d 10.244.0.0/16"));
    }
}
