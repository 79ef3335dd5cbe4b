//! Forwarding and IP masquerading rules, exactly as flanneld v0.20.2 writes
//! them (chain names, rules, order and comments), so that a node moved from
//! flanneld to weft (or back) has one set of rules, not two:
//! - `FLANNEL-FWD` (filter, from `FORWARD`): traffic from and to the pod
//!   network is accepted, always;
//! - `FLANNEL-POSTRTG` (nat, from `POSTROUTING`), with `--ip-masq` only: pod
//!   traffic leaving the overlay is masqueraded; pod-to-pod traffic never is.
//!
//! On dual-stack networks the same chains and rules for the IPv6 network
//! are kept in ip6tables (flanneld's `MasqIP6Rules`; multicast there is
//! `ff00::/8`).
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
//!
//! With `"EnableNFTables": true` the same is done with flannel's nftables
//! tables instead (`sync::nft_rules`, compared as `nft list table` prints
//! them), and the iptables chains of an earlier run are removed; without
//! it, the nftables tables of an earlier run are.

use ipnet::IpNet;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::kernel::iptables::{self, Family};
use crate::model::DualStack;
use crate::report::{ObjectKind, Problem, Report};
use crate::sync::nft_rules;

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
pub fn masq_rules(network: IpNet, subnet: IpNet) -> String {
    let c = NAT_COMMENT;
    let multicast = match network {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    };
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark 0x4000/0x4000 -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} -d {network} -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} -s {network} ! -d {multicast} -m comment --comment \"{c}\" -j MASQUERADE --random-fully\n\
         -A {NAT_CHAIN} ! -s {network} -d {subnet} -m comment --comment \"{c}\" -j RETURN\n\
         -A {NAT_CHAIN} ! -s {network} -d {network} -m comment --comment \"{c}\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// The `iptables-restore` input for the forward chain. Pure.
pub fn forward_rules(network: IpNet) -> String {
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

/// The family of `net`.
fn family(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The jump from `chain` to `target` with weft's comment for it.
async fn jump(fam: Family, table: &str, op: &str, chain: &str, target: &str) -> Result<bool> {
    iptables::jump(fam, table, op, chain, target, comment_of(target)).await
}

/// Make sure `table/chain` jumps to `target`: appended, as flanneld does,
/// so the rules an operator (or Docker's `DOCKER-USER`) put first stay
/// first.
async fn ensure_jump(fam: Family, table: &str, chain: &str, target: &str) -> Result<()> {
    if jump(fam, table, "-C", chain, target).await? {
        return Ok(());
    }
    if !jump(fam, table, "-A", chain, target).await? {
        return Err(Error::Masq(format!("could not append the jump from {table}/{chain} to {target} ({fam:?})")));
    }
    Ok(())
}

/// What `iptables -S` shows of one of weft's chains, and whether the jump
/// to it is in place.
async fn observe(fam: Family, table: &str, from: &str, chain: &str) -> Result<(String, bool)> {
    let rules = iptables::show(fam, table, chain).await?.unwrap_or_default();
    Ok((rules, jump(fam, table, "-C", from, chain).await?))
}

/// weft's forwarding and masquerade rules, kept in place.
pub(crate) struct Rules {
    network: DualStack,
    ip_masq: bool,
    /// (network, node subnet) per family, once started.
    nets: Vec<(IpNet, IpNet)>,
    /// What the chains looked like right after weft installed them.
    installed: Option<Vec<(String, bool)>>,
    /// nftables (flannel's tables) instead of iptables chains.
    nftables: bool,
}

impl Rules {
    pub(crate) fn new(network: DualStack, ip_masq: bool, nftables: bool) -> Rules {
        Rules { network, ip_masq, nets: Vec::new(), installed: None, nftables }
    }

    /// The command the rules are made with can be run here: checked at
    /// start, before anything changes, so that a host without it is told
    /// what to install (or which mode to choose).
    pub(crate) async fn check_tools(&self) -> Result<()> {
        if self.nftables {
            crate::kernel::nft::check().await
        } else {
            iptables::check().await
        }
    }

    /// What the rules are kept in, for log lines.
    fn kind(&self) -> &'static str {
        if self.nftables {
            "nftables"
        } else {
            "iptables"
        }
    }

    async fn observe_all(&self) -> Result<Vec<(String, bool)>> {
        if self.nftables {
            let tables = nft_rules::observe().await?;
            return Ok(tables.into_iter().map(|t| (t.clone().unwrap_or_default(), t.is_some())).collect());
        }
        let mut v = Vec::new();
        for (network, _) in &self.nets {
            let fam = family(network);
            v.push(observe(fam, "filter", "FORWARD", FWD_CHAIN).await?);
            if self.ip_masq {
                v.push(observe(fam, "nat", "POSTROUTING", NAT_CHAIN).await?);
            }
        }
        Ok(v)
    }

    async fn apply(&self) -> Result<()> {
        if self.nftables {
            return nft_rules::apply(&self.nets, self.ip_masq).await;
        }
        for (network, subnet) in &self.nets {
            let fam = family(network);
            iptables::restore(fam, &forward_rules(*network)).await?;
            ensure_jump(fam, "filter", "FORWARD", FWD_CHAIN).await?;
            if self.ip_masq {
                iptables::restore(fam, &masq_rules(*network, *subnet)).await?;
                ensure_jump(fam, "nat", "POSTROUTING", NAT_CHAIN).await?;
            }
        }
        Ok(())
    }

    /// Install the rules for the node's `subnets`, and remove the
    /// masquerade chain of an earlier run with `--ip-masq` when it is off
    /// now, and the chains of a family the network does not have.
    pub(crate) async fn start(&mut self, subnets: DualStack) -> Result<()> {
        self.nets.clear();
        if let (Some(n4), Some(s4)) = (self.network.v4, subnets.v4) {
            self.nets.push((n4.into(), s4.into()));
        }
        if let (Some(n6), Some(s6)) = (self.network.v6, subnets.v6) {
            self.nets.push((n6.into(), s6.into()));
        }
        if self.nftables {
            self.remove_iptables_chains().await;
            self.apply().await?;
            if self.ip_masq {
                info!("installed IP masquerade rules (nftables)");
            }
            self.installed = Some(self.observe_all().await?);
            return Ok(());
        }
        match nft_rules::remove().await {
            Ok(true) => info!("removed the nftables tables of a run with EnableNFTables"),
            Ok(false) => {}
            Err(e) => warn!("cannot remove the nftables tables of a run with EnableNFTables: {e}"),
        }
        for (table, chain, from) in LEGACY {
            remove_chain(Family::V4, table, from, chain).await?;
        }
        if !self.ip_masq || self.network.v4.is_none() {
            remove_chain(Family::V4, "nat", "POSTROUTING", NAT_CHAIN).await?;
        }
        if self.network.v4.is_none() {
            remove_chain(Family::V4, "filter", "FORWARD", FWD_CHAIN).await?;
        }
        if !self.ip_masq || self.network.v6.is_none() {
            // ip6tables may be missing on an IPv4-only host: nothing to remove then.
            let _ = remove_chain(Family::V6, "nat", "POSTROUTING", NAT_CHAIN).await;
        }
        if self.network.v6.is_none() {
            let _ = remove_chain(Family::V6, "filter", "FORWARD", FWD_CHAIN).await;
        }
        self.apply().await?;
        if self.ip_masq {
            info!("installed IP masquerade rules");
        }
        self.installed = Some(self.observe_all().await?);
        Ok(())
    }

    /// Compare the chains with what was installed; reinstall on any difference.
    pub(crate) async fn check(&mut self, report: &mut Report) {
        if self.nets.is_empty() {
            return;
        }
        let result = async {
            let now = self.observe_all().await?;
            if self.installed.as_ref() == Some(&now) {
                return Ok(false);
            }
            warn!("weft's {} rules were changed or removed; reinstalling them", self.kind());
            self.apply().await?;
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

impl Rules {
    /// In nftables mode: remove the iptables chains of an earlier run in
    /// iptables mode, where iptables is there to ask (a host without it has
    /// none).
    async fn remove_iptables_chains(&self) {
        let chains = LEGACY.into_iter().chain([("nat", NAT_CHAIN, "POSTROUTING"), ("filter", FWD_CHAIN, "FORWARD")]);
        let mut removed = false;
        for (table, chain, from) in chains {
            for fam in [Family::V4, Family::V6] {
                if iptables::show(fam, table, chain).await.ok().flatten().is_some() {
                    removed |= remove_chain(fam, table, from, chain).await.is_ok();
                }
            }
        }
        if removed {
            info!("removed the iptables chains of a run without EnableNFTables");
        }
    }
}

/// Remove `table/chain` and the jumps to it from `from` (stale rules: the
/// masquerade chain of an earlier run with `--ip-masq`, or the chains of an
/// earlier weft). An absent chain is fine.
async fn remove_chain(fam: Family, table: &str, from: &str, chain: &str) -> Result<()> {
    while jump(fam, table, "-D", from, chain).await? {}
    iptables::delete_chain(fam, table, chain).await
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

    #[test]
    fn ipv6_rules_are_flanneld_ip6_rules() {
        let r = masq_rules("fd10:244::/56".parse().unwrap(), "fd10:244:0:3::/64".parse().unwrap());
        assert!(r.contains("-A FLANNEL-POSTRTG -s fd10:244::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"), "{r}");
        assert!(r.contains("! -s fd10:244::/56 -d fd10:244:0:3::/64"), "{r}");
        assert!(!r.contains("224.0.0.0/4"));
    }
}
