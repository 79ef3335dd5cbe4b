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
//! Rules are loaded with `iptables-restore --noflush` (`kernel::iptables`),
//! which replaces the contents of weft's chains atomically and leaves every
//! other chain alone.
//!
//! [`Rules`] keeps them in place: after installing, it remembers what
//! `iptables -S` shows of weft's chains; each check compares again and
//! reinstalls (a repair) when a chain, a rule or a jump went missing.

use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::kernel::iptables;
use crate::report::{ObjectKind, Problem, Report};

pub(crate) const NAT_CHAIN: &str = "FLANNEL-POSTRTG";
pub(crate) const FWD_CHAIN: &str = "FLANNEL-FWD";
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

/// The comment on the jump to `target` (flanneld's for its chains).
fn comment_of(target: &str) -> &'static str {
    match target {
        NAT_CHAIN => NAT_COMMENT,
        FWD_CHAIN => FWD_COMMENT,
        _ => "weft",
    }
}

/// The jump from `chain` to `target` with weft's comment for it.
async fn jump(table: &str, op: &str, chain: &str, target: &str) -> Result<bool> {
    iptables::jump(table, op, chain, target, comment_of(target)).await
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

/// What `iptables -S` shows of one of weft's chains, and whether the jump
/// to it is in place.
async fn observe(table: &str, from: &str, chain: &str) -> Result<(String, bool)> {
    let rules = iptables::show(table, chain).await?.unwrap_or_default();
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
        iptables::restore(&forward_rules(self.network)).await?;
        ensure_jump("filter", "FORWARD", FWD_CHAIN).await?;
        if self.ip_masq {
            iptables::restore(&masq_rules(self.network, subnet)).await?;
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
            Err(e) => report.problem(Problem::Rules { error: e.to_string() }),
        }
    }
}

/// Remove `table/chain` and the jumps to it from `from` (stale rules: the
/// masquerade chain of an earlier run with `--ip-masq`, or the chains of an
/// earlier weft). An absent chain is fine.
async fn remove_chain(table: &str, from: &str, chain: &str) -> Result<()> {
    while jump(table, "-D", from, chain).await? {}
    iptables::delete_chain(table, chain).await
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
