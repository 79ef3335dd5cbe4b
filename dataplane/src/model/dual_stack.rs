//! [`DualStack`]: the IPv4 and the IPv6 part of a network, or of a node's
//! subnet, either of which may be absent: an IPv4-only network has no IPv6
//! part, an IPv6-only one no IPv4 part, a dual-stack one both.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An IPv4 and an IPv6 network (or subnet), each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DualStack {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl DualStack {
    pub fn new(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> DualStack {
        DualStack { v4, v6 }
    }

    /// Both parts that are present, IPv4 first.
    pub fn both(&self) -> Vec<IpNet> {
        self.v4.map(IpNet::V4).into_iter().chain(self.v6.map(IpNet::V6)).collect()
    }

    /// Keep each part only where `of` has that family (a node's subnets
    /// of a network).
    pub fn within(self, of: DualStack) -> DualStack {
        DualStack { v4: self.v4.filter(|_| of.v4.is_some()), v6: self.v6.filter(|_| of.v6.is_some()) }
    }
}

impl From<Ipv4Net> for DualStack {
    fn from(v4: Ipv4Net) -> DualStack {
        DualStack { v4: Some(v4), v6: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_order_and_within_a_network() {
        let v4: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let v6: Ipv6Net = "fd00:2::/64".parse().unwrap();
        let both = DualStack::new(Some(v4), Some(v6));
        assert_eq!(both.both(), vec![IpNet::V4(v4), IpNet::V6(v6)]);
        assert_eq!(DualStack::from(v4).both(), vec![IpNet::V4(v4)]);
        let v6_only_network = DualStack::new(None, Some("fd00::/48".parse().unwrap()));
        assert_eq!(both.within(v6_only_network), DualStack::new(None, Some(v6)));
    }
}
