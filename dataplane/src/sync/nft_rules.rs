//! The forwarding and masquerade rules in nftables (`"EnableNFTables":
//! true`), as flannel's nftables mode writes them: a table per family,
//! `flannel-ipv4` (`ip`) and `flannel-ipv6` (`ip6`), each with the comment
//! `rules for <table>`, made for both families whatever the network; for
//! each family of the network a `forward` chain (filter hook, filter
//! priority) accepting traffic from and to the pod network, and with
//! `--ip-masq` a `postrtg` chain (nat, postrouting, srcnat priority) with
//! flannel's masquerade rules in flannel's order.
//!
//! Each change is one `nft -f` transaction that deletes weft's tables and
//! makes them anew (`add table` first, so that an absent table is no
//! error): nothing else is touched, and packets see the old rules or the
//! new ones, never none. `sync::rules` keeps them in place.

use ipnet::IpNet;

use crate::error::Result;
use crate::kernel::nft;

/// (family, table) of weft's two tables, flannel's names.
pub(crate) const TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// The `nft -f` script that makes weft's tables for `nets` ((network, node
/// subnet) per family), masquerading when `ip_masq`. Pure.
pub fn nft_script(nets: &[(IpNet, IpNet)], ip_masq: bool) -> String {
    let mut s = String::new();
    for (family, table) in TABLES {
        s += &format!("add table {family} {table}\ndelete table {family} {table}\n");
        s += &format!("add table {family} {table} {{ comment \"rules for {table}\" ; }}\n");
        let Some((network, subnet)) = nets.iter().find(|(n, _)| nft_family(n) == family) else { continue };
        let chain = |name: &str, kind: &str, hook: &str, priority: &str, comment: &str| {
            format!(
                "add chain {family} {table} {name} {{ type {kind} hook {hook} priority {priority} ; comment \"{comment}\" ; }}\n"
            )
        };
        let rule = |chain: &str, r: String| format!("add rule {family} {table} {chain} {r}\n");
        s += &chain("forward", "filter", "forward", "filter", "chain to accept flannel traffic");
        s += &rule("forward", format!("{family} saddr {network} accept"));
        s += &rule("forward", format!("{family} daddr {network} accept"));
        if !ip_masq {
            continue;
        }
        let multicast = if family == "ip" { "224.0.0.0/4" } else { "ff00::/8" };
        let masq = "masquerade fully-random";
        s += &chain("postrtg", "nat", "postrouting", "srcnat", "chain to manage traffic masquerading by flannel");
        // Traffic kube-proxy marked for its own masquerading.
        s += &rule("postrtg", "meta mark 0x4000 return".to_string());
        // Pod to pod is never masqueraded.
        s += &rule("postrtg", format!("{family} saddr {subnet} {family} daddr {network} return"));
        s += &rule("postrtg", format!("{family} saddr {network} {family} daddr {subnet} return"));
        s += &rule("postrtg", format!("{family} saddr != {subnet} {family} daddr {network} return"));
        s += &rule("postrtg", format!("{family} saddr {network} {family} daddr != {multicast} {masq}"));
        s += &rule("postrtg", format!("{family} saddr != {network} {family} daddr {network} {masq}"));
    }
    s
}

/// nft's family name for `net`'s addresses.
fn nft_family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

/// Make weft's tables for `nets`, in one transaction.
pub(crate) async fn apply(nets: &[(IpNet, IpNet)], ip_masq: bool) -> Result<()> {
    nft::apply(&nft_script(nets, ip_masq)).await
}

/// What `nft list table` prints of each of weft's tables (`None`: absent).
pub(crate) async fn observe() -> Result<Vec<Option<String>>> {
    let mut v = Vec::new();
    for (family, table) in TABLES {
        v.push(nft::list_table(family, table).await?);
    }
    Ok(v)
}

/// Remove weft's tables (left by a run in nftables mode), when nft is
/// there to ask; whether there were any.
pub(crate) async fn remove() -> Result<bool> {
    if nft::check().await.is_err() {
        return Ok(false);
    }
    let present: Vec<_> = TABLES.iter().zip(observe().await?).filter(|(_, t)| t.is_some()).map(|(ft, _)| *ft).collect();
    if present.is_empty() {
        return Ok(false);
    }
    let script: String = present.iter().map(|(f, t)| format!("delete table {f} {t}\n")).collect();
    nft::apply(&script).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<(IpNet, IpNet)> {
        vec![("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap())]
    }

    #[test]
    fn both_tables_are_made_and_only_the_network_s_families_get_chains() {
        let s = nft_script(&nets(), false);
        assert!(s.contains("add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }"), "{s}");
        assert!(s.contains("add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }"), "{s}");
        assert!(s.contains("add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept"), "{s}");
        assert!(!s.contains("ip6 flannel-ipv6 forward"), "{s}");
        assert!(!s.contains("postrtg"), "no masquerade without --ip-masq: {s}");
        // Each table is deleted before it is made: stale chains go.
        let del = s.find("delete table ip flannel-ipv4").unwrap();
        assert!(s.find("add chain ip flannel-ipv4").unwrap() > del);
    }

    #[test]
    fn pod_to_pod_returns_before_any_masquerade() {
        let s = nft_script(&nets(), true);
        let rules: Vec<&str> = s.lines().filter(|l| l.starts_with("add rule ip flannel-ipv4 postrtg")).collect();
        assert_eq!(rules.len(), 6, "{s}");
        assert!(rules[0].ends_with("meta mark 0x4000 return"));
        assert!(rules[1].ends_with("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return"));
        let first_masq = rules.iter().position(|r| r.contains("masquerade")).unwrap();
        assert_eq!(first_masq, 4);
        assert!(rules[4].ends_with("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
    }

    #[test]
    fn ipv6_uses_ip6_and_its_multicast() {
        let nets = vec![("fd10:244::/56".parse().unwrap(), "fd10:244:0:3::/64".parse().unwrap())];
        let s = nft_script(&nets, true);
        assert!(s.contains("add rule ip6 flannel-ipv6 postrtg ip6 saddr fd10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"), "{s}");
        assert!(!s.contains("ip flannel-ipv4 forward"), "{s}");
    }
}
