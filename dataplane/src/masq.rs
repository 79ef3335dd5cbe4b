//! Forwarding and IP masquerading rules, in chains of weft's own, the way
//! flanneld does it:
//! - `WEFT-FWD` (filter, from `FORWARD`): traffic from and to the pod
//!   network is accepted, always;
//! - `WEFT-POSTRTG` (nat, from `POSTROUTING`), with `--ip-masq` only: pod
//!   traffic leaving the overlay is masqueraded; pod-to-pod traffic never is.
//!
//! Rules are loaded with `iptables-restore --noflush`, which replaces the
//! contents of weft's chains atomically and leaves every other chain alone.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

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

fn iptables(args: &[&str]) -> Result<bool> {
    let out = Command::new("iptables")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Masq(format!("cannot run iptables (install the iptables package): {e}")))?;
    Ok(out.status.success())
}

fn ensure_jump(table: &str, chain: &str, target: &str) -> Result<()> {
    let spec = ["-m", "comment", "--comment", "weft", "-j", target];
    let check: Vec<&str> = [&["-w", "-t", table, "-C", chain][..], &spec[..]].concat();
    if iptables(&check)? {
        return Ok(());
    }
    let insert: Vec<&str> = [&["-w", "-t", table, "-I", chain, "1"][..], &spec[..]].concat();
    if !iptables(&insert)? {
        return Err(Error::Masq(format!("could not insert the jump from {table}/{chain} to {target}")));
    }
    Ok(())
}

/// Accept forwarding for the pod network (installed on every start).
pub fn apply_forward(network: Ipv4Net) -> Result<()> {
    restore(&forward_rules(network))?;
    ensure_jump("filter", "FORWARD", FWD_CHAIN)
}

/// Install (or refresh) masquerading for `network` with this node's `subnet`.
pub fn apply_masq(network: Ipv4Net, subnet: Ipv4Net) -> Result<()> {
    restore(&masq_rules(network, subnet))?;
    ensure_jump("nat", "POSTROUTING", NAT_CHAIN)
}

fn restore(input: &str) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Masq(format!("cannot run iptables-restore (install the iptables package): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| Error::Masq(format!("writing to iptables-restore: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Masq(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Masq(format!("iptables-restore failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Remove the masquerade chain and the jump to it (stale rules of an
/// earlier run with `--ip-masq`). An absent chain is fine.
pub fn remove_masq() -> Result<()> {
    let (table, chain, target) = ("nat", "POSTROUTING", NAT_CHAIN);
    {
        let spec = ["-m", "comment", "--comment", "weft", "-j", target];
        let del: Vec<&str> = [&["-w", "-t", table, "-D", chain][..], &spec[..]].concat();
        while iptables(&del)? {}
        if iptables(&["-w", "-t", table, "-F", target])? {
            iptables(&["-w", "-t", table, "-X", target])?;
        }
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
