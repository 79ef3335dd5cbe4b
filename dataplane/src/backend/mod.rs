//! The backends, in two families behind one small interface each:
//!
//! - kernel backends ([`KernelBackend`]): a pure `plan(peers) -> Desired`,
//!   then converge the kernel to it;
//! - userspace backends ([`UserspaceBackend`]): a pure plan (udp's route
//!   table snapshot, wireguard's peers by `Mode`), then supervise the
//!   forwarding threads with it, on the shared [`userspace`] substrate.
//!
//! | module     | what                                                              |
//! |------------|-------------------------------------------------------------------|
//! | [`vxlan`]  | kernel VXLAN device; FDB, neighbour and route per peer            |
//! | [`hostgw`] | one route per peer via its public IP                              |
//! | [`userspace`] | the substrate of udp and wireguard: TUN device, sockets, threads |
//! | [`udp`]    | flannel's udp wire format on the substrate                         |
//! | [`wireguard`] | standard WireGuard (boringtun's protocol) on the substrate     |
//!
//! [`Programming`] is the one place that folds converge outcomes into the
//! report and says how many peers are not programmed.

pub(crate) mod hostgw;
pub(crate) mod udp;
pub(crate) mod userspace;
pub(crate) mod vxlan;
pub(crate) mod wireguard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use ipnet::IpNet;
use weft_types::BackendKind;

use crate::error::{chain, Error, Result};
use crate::model::{Desired, DualStack, Peer};
use crate::report::{BackendMetrics, ObjectKind, Problem, Report};
use crate::sync::converge::{Outcome, Pass};

/// What every backend tells the face.
pub(crate) trait Backend: Send {
    fn kind(&self) -> BackendKind;
    /// The MTU pods should use (`FLANNEL_MTU`).
    fn mtu(&self) -> u32;
    /// The `BackendData` written in leases.
    fn backend_data(&self) -> Option<serde_json::Value> {
        None
    }
    /// The `BackendV6Data` written in leases on dual-stack networks.
    fn backend_v6_data(&self) -> Option<serde_json::Value> {
        None
    }
    /// The devices weft owns for this backend, and their indexes as last seen.
    fn devices(&self) -> Vec<(String, Option<u32>)>;
    /// Program what depends on the node's own subnets (devices, addresses).
    fn start(&mut self, subnets: DualStack) -> BoxFuture<'_, Result<()>>;
}

/// A kernel backend (vxlan, host-gw): a pure plan, then converge the kernel.
pub(crate) trait KernelBackend: Backend {
    /// The first half of a pass: check the devices and plan `peers`.
    /// `None` when a device cannot be put right (the problem is in
    /// `report`); the pass returned may be widened to a full one.
    fn check_and_plan<'a>(
        &'a mut self,
        peers: &'a [Peer],
        report: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, Option<(Desired, Pass)>>;
    /// The second half: converge the kernel's entries to `desired`.
    fn converge<'a>(
        &'a mut self,
        peers: &'a [Peer],
        desired: &'a Desired,
        report: &'a mut Report,
        pass: Pass,
    ) -> BoxFuture<'a, ()>;
}

/// A userspace backend (udp, wireguard): a pure plan, then supervise the
/// forwarding threads with it.
pub(crate) trait UserspaceBackend: Backend {
    /// Swap in the plan for `peers`, check the devices, keep the threads
    /// running (always a full check: nothing is trusted from the last pass).
    fn reconcile<'a>(&'a mut self, peers: &'a [Peer], report: &'a mut Report) -> BoxFuture<'a, ()>;
    /// When a pass is due without any event (a thread restart, a grace
    /// period's end).
    fn next_wake(&self) -> Option<Instant>;
    /// Problems visible without a pass (a thread that ended).
    fn live_problems(&self, out: &mut Vec<Problem>);
    /// The backend's own counters for `/metrics`.
    fn metrics(&self) -> Arc<dyn BackendMetrics>;
    /// Stop and join the threads; the devices stay (they are persistent).
    fn shutdown(&mut self);
}

/// One backend of either family.
pub(crate) enum Family {
    Kernel(Box<dyn KernelBackend>),
    Userspace(Box<dyn UserspaceBackend>),
}

impl Family {
    pub(crate) fn common(&self) -> &dyn Backend {
        match self {
            Family::Kernel(b) => &**b,
            Family::Userspace(b) => &**b,
        }
    }

    pub(crate) fn common_mut(&mut self) -> &mut dyn Backend {
        match self {
            Family::Kernel(b) => &mut **b,
            Family::Userspace(b) => &mut **b,
        }
    }
}

/// The peers (by [`Peer::id`]) a route to `dst` is for: the peer whose
/// subnet or IPv6 subnet it is.
pub(crate) fn owners_of_route(peers: &[Peer], dst: &IpNet) -> Vec<IpNet> {
    peers
        .iter()
        .filter(|p| match dst {
            IpNet::V4(d) => p.subnet == Some(*d),
            IpNet::V6(d) => p.subnet6 == Some(*d),
        })
        .map(Peer::id)
        .collect()
}

/// The peers of one pass and which of them could not be programmed.
pub(crate) struct Programming<'p> {
    peers: &'p [Peer],
    failed: BTreeSet<IpNet>,
    /// The first failure, as `subnet: why`.
    first: Option<String>,
}

impl<'p> Programming<'p> {
    /// Start a pass over `peers`; those `desired` left out count as failed.
    pub(crate) fn new(peers: &'p [Peer], desired: &Desired) -> Programming<'p> {
        let mut p = Programming { peers, failed: BTreeSet::new(), first: None };
        for (subnet, why) in &desired.unplanned {
            p.fail([*subnet], || format!("{subnet}: {why}"));
        }
        p
    }

    fn fail(&mut self, subnets: impl IntoIterator<Item = IpNet>, why: impl FnOnce() -> String) {
        self.first.get_or_insert_with(why);
        self.failed.extend(subnets);
    }

    /// Fold one kind's converge result into `report`: its changes and
    /// repairs, and the peers (`peers_of` a failed key) it failed. Returns
    /// the desired entries now in place (the next pass's `previous`), or
    /// `None` when the kind could not be converged at all (then every peer
    /// failed, and the previous entries stay as they were).
    pub(crate) fn record<K: Ord + Clone + std::fmt::Display, V: Clone>(
        &mut self,
        report: &mut Report,
        kind: ObjectKind,
        desired: &BTreeMap<K, V>,
        result: Result<Outcome<K>>,
        peers_of: impl Fn(&K) -> Vec<IpNet>,
    ) -> Option<BTreeMap<K, V>> {
        match result {
            Ok(o) => {
                report.changes += o.changes;
                report.repaired(kind, o.repairs);
                for (k, e) in &o.failed {
                    self.fail(peers_of(k), || format!("{k}: {}", chain(e)));
                }
                Some(o.programmed(desired))
            }
            Err(e) => {
                self.fail_all(&e);
                None
            }
        }
    }

    /// Every peer failed: `e` stopped the whole pass.
    pub(crate) fn fail_all(&mut self, e: &Error) {
        let all: Vec<IpNet> = self.peers.iter().map(Peer::id).collect();
        self.fail(all, || chain(e));
    }

    /// Write how many peers are programmed, and the problem if any failed
    /// (the face has written how many are desired).
    pub(crate) fn finish(self, report: &mut Report) {
        let failed = self.failed.iter().filter(|s| self.peers.iter().any(|p| p.id() == **s)).count();
        report.peers_programmed = self.peers.len() - failed;
        if let Some(first) = self.first {
            report.problem(Problem::Peers { failed, of: self.peers.len(), first });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sync::converge::Outcome;

    fn peer(n: u8) -> Peer {
        Peer::v4(format!("10.244.{n}.0/24").parse().unwrap(), Ipv4Addr::new(198, 18, 0, n), None)
    }

    #[test]
    fn outcomes_fold_into_counts_repairs_and_one_problem() {
        let peers = [peer(2), peer(3), peer(4)];
        let desired = Desired { unplanned: vec![(peers[2].id(), "no VTEP MAC in its lease")], ..Desired::default() };
        let mut report = Report::default();
        let mut p = Programming::new(&peers, &desired);
        let want: BTreeMap<IpNet, u8> = peers.iter().map(|p| (p.id(), 0)).collect();
        let outcome = Outcome {
            changes: 3,
            repairs: 1,
            failed: vec![(peers[1].id(), Error::Conflict("nexthop id 1 exists already".into()))],
        };
        let kept = p.record(&mut report, ObjectKind::Route, &want, Ok(outcome), |k| vec![*k]).unwrap();
        assert_eq!(kept.len(), 2, "the failed entry is not taken as in place");
        p.finish(&mut report);
        assert_eq!((report.peers_programmed, report.changes), (1, 3));
        assert_eq!(report.repairs[ObjectKind::Route as usize], 1);
        assert_eq!(report.problems.len(), 1);
        assert_eq!(
            report.problems[0].to_string(),
            "2 of 3 peers not programmed, retrying (first: 10.244.4.0/24: no VTEP MAC in its lease)"
        );
    }

    #[test]
    fn a_kind_that_fails_whole_fails_every_peer_and_keeps_the_previous_entries() {
        let peers = [peer(2), peer(3)];
        let mut report = Report::default();
        let mut p = Programming::new(&peers, &Desired::default());
        let want: BTreeMap<IpNet, u8> = BTreeMap::new();
        let failed: Result<Outcome<IpNet>> = Err(Error::Conflict("dump failed".into()));
        assert!(p.record(&mut report, ObjectKind::Route, &want, failed, |k| vec![*k]).is_none());
        p.finish(&mut report);
        assert_eq!(report.peers_programmed, 0);
        assert_eq!(report.problems[0].to_string(), "2 of 2 peers not programmed, retrying (first: dump failed)");
    }

    #[test]
    fn all_in_place_is_no_problem() {
        let peers = [peer(2)];
        let mut report = Report::default();
        Programming::new(&peers, &Desired::default()).finish(&mut report);
        assert_eq!(report.peers_programmed, 1);
        assert!(report.problems.is_empty());
    }
}
