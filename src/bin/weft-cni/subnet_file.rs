//! Reading the subnet file weft (or flanneld) writes, by default
//! `/run/flannel/subnet.env`: `FLANNEL_NETWORK` (one network or a comma
//! list), `FLANNEL_SUBNET`, `FLANNEL_MTU`, `FLANNEL_IPMASQ`, and their IPv6
//! counterparts. Pure: text in, values out.

use ipnet::IpNet;

/// What the delegate config is built from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubnetFile {
    /// The whole overlay network(s), IPv4 then IPv6.
    pub(crate) networks: Vec<IpNet>,
    /// This node's pod subnets (network form: `10.244.3.0/24`), IPv4 then IPv6.
    pub(crate) subnets: Vec<IpNet>,
    pub(crate) mtu: u32,
    /// Whether the daemon masquerades (then the bridge must not).
    pub(crate) ip_masq: bool,
}

/// Parse the file's text; `path` only names it in errors.
pub(crate) fn parse(path: &str, text: &str) -> Result<SubnetFile, String> {
    let (mut v4_nets, mut v6_nets) = (Vec::new(), Vec::new());
    let (mut v4_sub, mut v6_sub, mut mtu, mut masq) = (None, None, None, None);
    let cidr = |key: &str, v: &str| -> Result<IpNet, String> {
        v.trim().parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("{path}: {key}={v} is not an address/prefix"))
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key.trim() {
            "FLANNEL_NETWORK" => {
                for n in value.split(',').filter(|s| !s.trim().is_empty()) {
                    v4_nets.push(cidr(key, n)?);
                }
            }
            "FLANNEL_IPV6_NETWORK" => {
                for n in value.split(',').filter(|s| !s.trim().is_empty()) {
                    v6_nets.push(cidr(key, n)?);
                }
            }
            "FLANNEL_SUBNET" => v4_sub = Some(cidr(key, value)?),
            "FLANNEL_IPV6_SUBNET" => v6_sub = Some(cidr(key, value)?),
            "FLANNEL_MTU" => {
                mtu = Some(
                    value.trim().parse::<u32>().map_err(|_| format!("{path}: FLANNEL_MTU={value} is not a number"))?,
                )
            }
            "FLANNEL_IPMASQ" => masq = Some(value.trim() == "true"),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if v4_nets.is_empty() && v6_nets.is_empty() {
        missing.push("FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK");
    }
    if v4_sub.is_none() && v6_sub.is_none() {
        missing.push("FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET");
    }
    if mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if masq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(format!("{path} is missing {}", missing.join(", ")));
    }
    Ok(SubnetFile {
        networks: v4_nets.into_iter().chain(v6_nets).collect(),
        subnets: v4_sub.into_iter().chain(v6_sub).collect(),
        mtu: mtu.unwrap_or_default(),
        ip_masq: masq.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_weft_and_flanneld_write() {
        let text =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let f = parse("subnet.env", text).unwrap();
        assert_eq!(f.networks, ["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(f.subnets, ["10.244.3.0/24".parse::<IpNet>().unwrap()], "network form, as flannel's plugin uses");
        assert_eq!((f.mtu, f.ip_masq), (1450, true));
        let dual = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
        let f = parse("s", dual).unwrap();
        assert_eq!(f.networks.len(), 3);
        assert_eq!(f.subnets[1].to_string(), "fd00:0:0:3::/64");
        assert!(!f.ip_masq);
    }

    #[test]
    fn gaps_and_garbage_are_named() {
        let e = parse("/run/flannel/subnet.env", "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap_err();
        assert_eq!(
            e,
            "/run/flannel/subnet.env is missing FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        let e = parse("f", "FLANNEL_SUBNET=10.244.3.300/24\n").unwrap_err();
        assert!(e.contains("FLANNEL_SUBNET=10.244.3.300/24 is not an address/prefix"), "{e}");
        let e = parse("f", "FLANNEL_MTU=big\n").unwrap_err();
        assert!(e.contains("FLANNEL_MTU=big is not a number"), "{e}");
    }
}
