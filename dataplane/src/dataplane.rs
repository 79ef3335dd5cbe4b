//! [`Dataplane`]: the one face the daemon drives. Build it from the backend
//! config, the external interface request and the network
//! ([`Dataplane::prepare`], which changes nothing on the host), start it
//! with the node's subnet ([`Dataplane::start`]), then tell it the desired
//! peers whenever they change or it asks ([`Dataplane::reconcile`] after
//! [`Dataplane::changed`]). It answers with what is not as desired
//! ([`Dataplane::health`]) and its counters ([`Dataplane::render_metrics`]).
//!
//! Netlink, iptables, TUN and threads stay behind this face.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use weft_types::BackendConfig;

use crate::converge::Pass;
use crate::error::Result;
use crate::events::{self, Interest};
use crate::hostgw::HostGwBackend;
use crate::iface::{find_external, ExternalInterface, IfaceRequest};
use crate::masq::Rules;
use crate::netlink::Netlink;
use crate::peer::Peer;
use crate::report::{Counters, DataplaneMetrics, Report};
use crate::udp::UdpBackend;
use crate::vxlan::VxlanBackend;

/// What the dataplane is built from.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub backend: BackendConfig,
    /// The whole pod network.
    pub network: Ipv4Net,
    /// Which interface carries traffic between nodes (`--iface` and co.).
    pub iface: IfaceRequest,
    /// Masquerade pod traffic leaving the network (`--ip-masq`).
    pub ip_masq: bool,
    /// Route peers through nexthop objects where the kernel has them
    /// (`--no-nexthop-objects` turns it off).
    pub nexthop_objects: bool,
    /// How often iptables rules are compared with what was installed
    /// (netlink objects are checked on every kernel event as well).
    pub resync: Duration,
}

enum Backend {
    Vxlan(VxlanBackend),
    HostGw(HostGwBackend),
    Udp(UdpBackend),
}

/// The node's dataplane: one backend, its rules, and its watch on the kernel.
pub struct Dataplane {
    backend: Backend,
    ext: ExternalInterface,
    network: Ipv4Net,
    rules: Rules,
    resync: Duration,
    rules_checked: Option<Instant>,
    interest: Arc<RwLock<Interest>>,
    wake: Arc<Notify>,
    events: Option<JoinHandle<()>>,
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
        let ext = find_external(&nl, &cfg.iface).await?;
        let wake = Arc::new(Notify::new());
        let interest: Arc<RwLock<Interest>> = Arc::default();
        let backend = match cfg.backend {
            BackendConfig::Vxlan(opts) => {
                Backend::Vxlan(VxlanBackend::prepare(nl, opts, ext.clone(), cfg.network, interest.clone()).await?)
            }
            BackendConfig::HostGw => {
                Backend::HostGw(HostGwBackend::prepare(nl, ext.clone(), cfg.network, interest.clone())?)
            }
            BackendConfig::Udp(opts) => {
                Backend::Udp(UdpBackend::prepare(nl, opts, ext.clone(), cfg.network, wake.clone()).await?)
            }
        };
        Ok(Dataplane {
            backend,
            ext,
            network: cfg.network,
            rules: Rules::new(cfg.network, cfg.ip_masq),
            resync: cfg.resync,
            rules_checked: None,
            interest,
            wake,
            events: None,
            counters: Arc::default(),
            last: Report::default(),
            synced: false,
        })
    }

    /// The interface and public IP traffic between nodes uses.
    pub fn external(&self) -> &ExternalInterface {
        &self.ext
    }

    /// The `BackendType` written in leases.
    pub fn type_name(&self) -> &'static str {
        match self.backend {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw(_) => "host-gw",
            Backend::Udp(_) => "udp",
        }
    }

    /// The `BackendData` written in leases.
    pub fn backend_data(&self) -> Option<serde_json::Value> {
        match &self.backend {
            Backend::Vxlan(b) => Some(b.backend_data()),
            Backend::HostGw(_) | Backend::Udp(_) => None,
        }
    }

    /// The MTU pods should use (`FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        match &self.backend {
            Backend::Vxlan(b) => b.mtu(),
            Backend::HostGw(b) => b.mtu(),
            Backend::Udp(b) => b.mtu(),
        }
    }

    /// Program what depends on the node's own subnet (devices, addresses,
    /// forwarding and masquerade rules) and start watching the kernel.
    pub async fn start(&mut self, subnet: Ipv4Net) -> Result<()> {
        let keep = match &self.backend {
            Backend::Vxlan(b) => Some(b.device().0.to_string()),
            Backend::Udp(b) => Some(b.device().0.to_string()),
            Backend::HostGw(_) => None,
        };
        crate::leftovers::remove(&Netlink::connect()?, keep.as_deref(), self.network).await?;
        match &mut self.backend {
            Backend::Vxlan(b) => b.start(subnet).await?,
            Backend::HostGw(_) => {}
            Backend::Udp(b) => b.start(subnet).await?,
        }
        self.rules.start(subnet).await?;
        self.rules_checked = Some(Instant::now());
        self.update_interest();
        self.events = Some(events::subscribe(self.interest.clone(), self.wake.clone())?);
        Ok(())
    }

    fn update_interest(&self) {
        let (name, index) = match &self.backend {
            Backend::Vxlan(b) => b.device(),
            Backend::Udp(b) => b.device(),
            Backend::HostGw(_) => ("", None),
        };
        if let Ok(mut i) = self.interest.write() {
            i.names = if name.is_empty() { vec![] } else { vec![name.to_string()] };
            i.indexes = index.into_iter().collect();
            i.network = Some(self.network);
        }
    }

    /// Converge the host to `peers` and check everything weft owns,
    /// repairing what was removed or changed: reads the kernel's routes,
    /// neighbours and FDB. Idempotent; safe to call at any time. The
    /// iptables rules are compared once per resync interval.
    pub async fn reconcile(&mut self, peers: &[Peer]) -> &Report {
        self.pass(peers, Pass::Full).await
    }

    /// Converge the host to `peers` after the peers changed: what the last
    /// pass left in place is taken as installed (see [`Pass::Delta`]), so
    /// only the change is programmed. The devices are still checked. Until
    /// a full pass has run, this is one.
    pub async fn apply(&mut self, peers: &[Peer]) -> &Report {
        let pass = if self.synced { Pass::Delta } else { Pass::Full };
        self.pass(peers, pass).await
    }

    async fn pass(&mut self, peers: &[Peer], pass: Pass) -> &Report {
        let began = Instant::now();
        let mut report = Report::default();
        match &mut self.backend {
            Backend::Vxlan(b) => b.reconcile(peers, &mut report, pass).await,
            Backend::HostGw(b) => b.reconcile(peers, &mut report, pass).await,
            Backend::Udp(b) => b.reconcile(peers, &mut report).await,
        }
        // A full pass that could read the kernel: later deltas can trust it.
        self.synced |= pass == Pass::Full && report.problems.is_empty();
        // A pass triggered by a kernel event comes well within the interval.
        let due = self.rules_checked.is_none_or(|t| t.elapsed() >= self.resync.mul_f32(0.9));
        if due {
            self.rules.check(&mut report).await;
            self.rules_checked = Some(Instant::now());
        }
        self.update_interest();
        self.counters.record(&report, began.elapsed());
        self.last = report;
        &self.last
    }

    /// Resolves when the dataplane wants a reconcile: a kernel event touched
    /// one of its objects, a forwarding thread ended, or a restart is due.
    /// Bursts of events resolve it once.
    pub async fn changed(&self) {
        let next = match &self.backend {
            Backend::Udp(b) => b.next_wake(),
            _ => None,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => self.wake.notified().await,
        }
    }

    /// What does not match the desired state, as of the last pass (and,
    /// for the udp backend, threads that ended since). Empty: all in place.
    pub fn health(&self) -> Vec<String> {
        let mut problems = self.last.problems.clone();
        if let Backend::Udp(b) = &self.backend {
            b.live_problems(&mut problems);
        }
        problems
    }

    /// The last pass's report.
    pub fn last_report(&self) -> &Report {
        &self.last
    }

    /// A handle that renders the dataplane's metrics at any time.
    pub fn metrics(&self) -> DataplaneMetrics {
        DataplaneMetrics {
            backend: self.type_name(),
            counters: self.counters.clone(),
            udp: match &self.backend {
                Backend::Udp(b) => Some(b.counters().clone()),
                _ => None,
            },
        }
    }

    /// Stop watching and stop the forwarding threads. Everything in the
    /// kernel stays, so traffic keeps flowing (kernel backends) or resumes
    /// as soon as the next start re-attaches (udp).
    pub fn shutdown(mut self) {
        if let Some(t) = self.events.take() {
            t.abort();
        }
        if let Backend::Udp(b) = &mut self.backend {
            b.shutdown();
        }
    }
}
