//! [`Dataplane`]: the one face the daemon drives. Build it from the backend
//! config, the external interface request and the network
//! ([`Dataplane::prepare`], which changes nothing on the host), start it
//! with the node's subnet ([`Dataplane::start`]), then tell it the desired
//! peers whenever they change or it asks ([`Dataplane::update`] after
//! [`Dataplane::changed`]). It answers with what is not as desired
//! ([`Dataplane::health`]) and its counters ([`Dataplane::metrics`]).
//!
//! The face owns the timing policy: it settles bursts of kernel events,
//! keeps the resync clock, and chooses each pass's kind: a full pass reads
//! the kernel (at start, after a kernel event, when the resync is due), a
//! delta pass trusts what the last pass left and programs only what the
//! peers changed. It is also the only writer of what the kernel watch
//! looks for. Netlink, iptables, TUN and threads stay behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Notify;
use weft_types::{BackendConfig, BackendKind};

use crate::backend::hostgw::HostGwBackend;
use crate::backend::udp::UdpBackend;
use crate::backend::vxlan::VxlanBackend;
use crate::backend::wireguard::WgBackend;
use crate::backend::Family;
use crate::error::Result;
use crate::kernel::Netlink;
use crate::model::{DualStack, Peer};
use crate::report::{Counters, DataplaneMetrics, Problem, Report};
use crate::sync::converge::Pass;
use crate::sync::iface::{find_external, ExternalInterface, IfaceRequest};
use crate::sync::rules::Rules;
use crate::sync::watch::Watch;

/// Kernel events come in bursts (a device deleted takes its routes and
/// entries with it): wait this long after the first so one pass repairs all.
const EVENT_SETTLE: Duration = Duration::from_millis(20);

/// Resolves `settle` after `wake` is rung. Cancel-safe: the caller waits
/// in a `select!` beside lease events and clocks, and one of those may win
/// during the settle; the wake-up is then kept (the permit put back) for
/// the next call instead of being lost until the periodic resync.
async fn settled(wake: &Notify, settle: Duration) {
    wake.notified().await;
    wake.notify_one();
    tokio::time::sleep(settle).await;
    // Take back the permit this call put back (or a newer ring: this pass
    // covers it).
    let _ = futures::FutureExt::now_or_never(wake.notified());
}

/// What the dataplane is built from.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub backend: BackendConfig,
    /// The whole pod network: IPv4 (none on IPv6-only networks) and IPv6
    /// (on dual-stack and IPv6-only networks).
    pub network: DualStack,
    /// Which interface carries traffic between nodes (`--iface` and co.).
    pub iface: IfaceRequest,
    /// Masquerade pod traffic leaving the network (`--ip-masq`).
    pub ip_masq: bool,
    /// Route peers through nexthop objects where the kernel has them
    /// (`--no-nexthop-objects` turns it off).
    pub nexthop_objects: bool,
    /// How often everything weft owns is read back and compared, iptables
    /// rules included (netlink objects are checked on every kernel event
    /// as well).
    pub resync: Duration,
    /// Where the wireguard backend serves WireGuard's userspace API
    /// sockets (`wg show` reads `/var/run/wireguard`); `None`: not served.
    pub wireguard_uapi_dir: Option<std::path::PathBuf>,
    /// `EnableNFTables`: the rules go into flannel's nftables tables.
    pub nftables: bool,
}

/// The node's dataplane: one backend, its rules, and its watch on the kernel.
pub struct Dataplane {
    backend: Family,
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    rules: Rules,
    resync: Duration,
    /// When the last resync pass (full, rules compared) ran.
    resynced: Instant,
    watch: Watch,
    wake: Arc<Notify>,
    counters: Arc<Counters>,
    last: Report,
    /// A full pass has completed without problems since start.
    synced: bool,
}

impl Dataplane {
    /// Pick the external interface and check that the backend can serve
    /// the network; binds the udp backend's port and re-attaches a TUN
    /// device left by an earlier run, but changes nothing on the host.
    pub async fn prepare(cfg: DataplaneConfig) -> Result<Dataplane> {
        let nl = Netlink::connect()?.nexthop_objects(cfg.nexthop_objects);
        let mut req = cfg.iface.clone();
        req.ipv6 = cfg.network.v6.is_some();
        req.ipv6_only = cfg.network.v4.is_none();
        let ext = find_external(&nl, &req).await?;
        let rules = Rules::new(cfg.network, cfg.ip_masq, cfg.nftables);
        rules.check_tools().await?;
        let wake = Arc::new(Notify::new());
        let (network, e) = (cfg.network, ext.clone());
        let backend = match cfg.backend {
            BackendConfig::Vxlan(opts) => Family::Kernel(Box::new(VxlanBackend::prepare(nl, opts, e, network).await?)),
            BackendConfig::HostGw => Family::Kernel(Box::new(HostGwBackend::prepare(nl, e, network)?)),
            BackendConfig::Udp(opts) => {
                Family::Userspace(Box::new(UdpBackend::prepare(nl, opts, e, network, wake.clone()).await?))
            }
            BackendConfig::Wireguard(opts) => Family::Userspace(Box::new(
                WgBackend::prepare(nl, opts, e, network, wake.clone(), cfg.wireguard_uapi_dir.clone()).await?,
            )),
        };
        Ok(Dataplane {
            backend,
            ext,
            networks: cfg.network.both(),
            rules,
            resync: cfg.resync,
            resynced: Instant::now(),
            watch: Watch::new(wake.clone()),
            wake,
            counters: Arc::default(),
            last: Report::default(),
            synced: false,
        })
    }

    /// The interface and public IP traffic between nodes uses.
    pub fn external(&self) -> &ExternalInterface {
        &self.ext
    }

    /// The backend's type (`BackendType` in leases).
    pub fn kind(&self) -> BackendKind {
        self.backend.common().kind()
    }

    /// The `BackendData` written in leases.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        self.backend.common().backend_data()
    }

    /// The `BackendV6Data` written in leases on dual-stack networks.
    pub fn backend_v6_data(&self) -> Option<serde_json::Value> {
        self.backend.common().backend_v6_data()
    }

    /// The MTU pods should use (`FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        self.backend.common().mtu()
    }

    /// Program what depends on the node's own subnet (devices, addresses,
    /// forwarding and masquerade rules) and start watching the kernel.
    pub async fn start(&mut self, subnets: DualStack) -> Result<()> {
        let devices = self.devices();
        let keep: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
        crate::sync::leftovers::remove(&Netlink::connect()?, &keep, &self.networks).await?;
        self.backend.common_mut().start(subnets).await?;
        self.rules.start(subnets).await?;
        self.resynced = Instant::now();
        self.watch_devices();
        self.watch.start()?;
        Ok(())
    }

    /// The devices weft owns for this backend, and their indexes as last seen.
    fn devices(&self) -> Vec<(String, Option<u32>)> {
        self.backend.common().devices()
    }

    fn watch_devices(&self) {
        let devices = self.devices();
        let indexes = devices.iter().filter_map(|(_, i)| *i).collect();
        let names = devices.into_iter().map(|(n, _)| n).collect();
        self.watch.set_devices(names, indexes, self.networks.clone());
    }

    /// A full pass now: converge the host to `peers` and check everything
    /// weft owns, repairing what was removed or changed (reads the
    /// kernel's routes, nexthops, neighbours and FDB). Idempotent; safe to
    /// call at any time.
    pub async fn reconcile(&mut self, peers: &[Peer]) -> &Report {
        self.pass(peers, Pass::Full).await
    }

    /// Converge the host to `peers` with the pass that is due: a full pass
    /// until one has succeeded, after a kernel event touched weft's
    /// objects, and when the resync is due (which also compares the
    /// iptables rules); otherwise a delta pass that takes what the last
    /// pass left in place as installed and programs only the change (the
    /// devices are still checked).
    pub async fn update(&mut self, peers: &[Peer]) -> &Report {
        let kernel_changed = self.watch.take_dirty();
        let pass = if !self.synced || kernel_changed || self.resync_due() { Pass::Full } else { Pass::Delta };
        self.pass(peers, pass).await
    }

    fn resync_due(&self) -> bool {
        self.resynced.elapsed() >= self.resync
    }

    async fn pass(&mut self, peers: &[Peer], pass: Pass) -> &Report {
        let began = Instant::now();
        let resync = self.resync_due();
        if pass == Pass::Full {
            // What the watch saw up to now is what this pass reads.
            self.watch.take_dirty();
        }
        let mut report = Report { peers_desired: peers.len(), ..Report::default() };
        let mut full = pass == Pass::Full;
        match &mut self.backend {
            Family::Kernel(b) => {
                if let Some((desired, pass)) = b.check_and_plan(peers, &mut report, pass).await {
                    full = pass == Pass::Full;
                    // Shared with the watch, not copied: it holds an entry per peer.
                    let desired = Arc::new(desired);
                    self.watch.publish(Some(desired.clone()));
                    b.converge(peers, &desired, &mut report, pass).await;
                }
            }
            Family::Userspace(b) => {
                b.reconcile(peers, &mut report).await;
                full = true;
            }
        }
        report.full = full;
        // A full pass that could read the kernel: later deltas can trust it.
        self.synced |= full && report.problems.is_empty();
        if resync {
            self.rules.check(&mut report).await;
            self.resynced = Instant::now();
        }
        self.watch_devices();
        self.counters.record(&report, began.elapsed());
        self.last = report;
        &self.last
    }

    /// Resolves when the dataplane wants a pass ([`Dataplane::update`]): a
    /// kernel event touched one of its objects (bursts settle into one), a
    /// forwarding thread ended, a thread restart is due, or the resync is.
    pub async fn changed(&self) {
        let resync = tokio::time::sleep_until((self.resynced + self.resync).into());
        let restart = match &self.backend {
            Family::Userspace(b) => b.next_wake(),
            Family::Kernel(_) => None,
        };
        let restart = async {
            match restart {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = settled(&self.wake, EVENT_SETTLE) => {}
            _ = resync => {}
            _ = restart => {}
        }
    }

    /// What does not match the desired state, as of the last pass (and,
    /// for the userspace backends, threads that ended since). Empty: all in place.
    pub fn health(&self) -> Vec<Problem> {
        let mut problems = self.last.problems.clone();
        if let Family::Userspace(b) = &self.backend {
            b.live_problems(&mut problems);
        }
        problems
    }

    /// A handle that renders the dataplane's metrics at any time.
    pub fn metrics(&self) -> DataplaneMetrics {
        DataplaneMetrics {
            backend: self.kind(),
            counters: self.counters.clone(),
            backend_metrics: match &self.backend {
                Family::Userspace(b) => Some(b.metrics()),
                Family::Kernel(_) => None,
            },
        }
    }

    /// Stop watching and stop the forwarding threads. Everything in the
    /// kernel stays, so traffic keeps flowing (kernel backends) or resumes
    /// as soon as the next start re-attaches (udp).
    pub fn shutdown(mut self) {
        self.watch.stop();
        if let Family::Userspace(b) = &mut self.backend {
            b.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(20);

    /// A ring is kept when the settle is cut short by another branch of
    /// the caller's `select!` (before: lost until the resync, 10 s later).
    #[tokio::test]
    async fn a_wake_up_survives_a_cancelled_settle() {
        let wake = Notify::new();
        wake.notify_one();
        let cut = tokio::time::timeout(SETTLE / 4, settled(&wake, SETTLE)).await;
        assert!(cut.is_err(), "the settle was cut short");
        let next = tokio::time::timeout(SETTLE * 10, settled(&wake, SETTLE)).await;
        assert!(next.is_ok(), "the ring was lost with the cancelled settle");
    }

    /// A settle that completes takes its ring: the next call waits for a new one.
    #[tokio::test]
    async fn a_completed_settle_consumes_the_ring() {
        let wake = Notify::new();
        wake.notify_one();
        settled(&wake, SETTLE).await;
        let next = tokio::time::timeout(SETTLE * 5, settled(&wake, SETTLE)).await;
        assert!(next.is_err(), "woke without a ring");
        wake.notify_one();
        assert!(tokio::time::timeout(SETTLE * 10, settled(&wake, SETTLE)).await.is_ok());
    }
}
