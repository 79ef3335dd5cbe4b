//! `weft run`: the node daemon.
//!
//! Start-up, in this order, so that bad input fails before the host is
//! touched: read the config (waiting while it is absent), pick the external
//! interface and public IP, check that the backend can serve the config,
//! acquire the lease, set up the backend, program every existing lease,
//! write subnet.env, install masquerading, then report ready (sd_notify and
//! `/readyz`). Then: lease events and a periodic resync reconcile the
//! dataplane; the renewer keeps the lease; every resync the own key and the
//! config are read back (a lost lease, or a config change that cannot be
//! applied in place, ends the daemon for a restart; a deleted or invalid
//! config turns it not ready). SIGTERM/SIGINT stop the daemon and leave the
//! dataplane in place, so a restart does not interrupt pods.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use tracing::{debug, info, warn};
use weft_dataplane::{Dataplane, DataplaneConfig, DualStack, IfaceRequest};
use weft_subnet::Backoff;
use weft_subnet::Renewer;
use weft_subnet::{
    acquire_lease, AcquireRequest, Error as SubnetError, Lease, LeaseAttrs, LeaseEvent, LeaseWatch, NetworkConfig,
    Registry,
};
use weft_subnet::{previous_ipv6_subnet, previous_subnet, SubnetEnv};

use crate::cli::{EtcdArgs, RunArgs};
use crate::health::{Health, HealthState, Readiness};
use crate::node_check::{ConfigFollower, ConfigStep};
use crate::peers::{desired_peers, Own};

/// `weft run`: [`start`], then [`serve`] until `shutdown` resolves or the
/// lease is lost.
pub(crate) async fn run(etcd: &EtcdArgs, args: &RunArgs, shutdown: impl Future<Output = ()>) -> Result<ExitCode> {
    tokio::pin!(shutdown);
    match start(etcd, args, shutdown.as_mut()).await? {
        Some(node) => serve(node, args, shutdown).await,
        None => Ok(ExitCode::SUCCESS),
    }
}

/// A started node: what [`serve`] runs.
struct Node {
    registry: Registry,
    config: NetworkConfig,
    dp: Dataplane,
    watch: LeaseWatch,
    lease: Lease,
    /// The lease's name (its IPv4 subnet, or its IPv6 subnet on IPv6-only
    /// networks) and the address that names this node in it.
    id: IpNet,
    holder: IpAddr,
    readiness: Readiness,
    ttl: Duration,
    margin: Duration,
    /// The health server, kept for as long as the node runs.
    _health_task: Option<tokio::task::JoinHandle<()>>,
    /// This host is this process's (see `instance`).
    _instance: crate::instance::Instance,
    /// What the leases are judged against.
    own: Own,
}

/// Start-up, in the order of the module doc, up to ready; `None` when
/// `shutdown` came while waiting for etcd.
async fn start(
    etcd: &EtcdArgs,
    args: &RunArgs,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Node>> {
    let instance = crate::instance::claim()?;
    // Under systemd: the sockets and TUN queues the last run left in the
    // descriptor store, taken before anything else runs.
    weft_dataplane::take_handed_over_descriptors();
    let ttl = args.subnet_lease_ttl;
    let margin = Duration::from_secs(args.subnet_lease_renew_margin * 60);
    if margin >= ttl {
        bail!(
            "--subnet-lease-renew-margin ({} min) must be shorter than --subnet-lease-ttl ({})",
            args.subnet_lease_renew_margin,
            humantime::format_duration(ttl)
        );
    }
    let cleartext = etcd.options()?.cleartext_password_endpoints().join(",");
    if !cleartext.is_empty() {
        warn!(
            endpoints = %cleartext,
            "the etcd password travels in clear text over plain http://; use https:// endpoints (with --etcd-cafile, or the system's CA roots)"
        );
    }
    let health = Arc::new(HealthState::default());
    let mut readiness = Readiness::new(health.clone());
    let health_task = if args.healthz_port != 0 {
        let addr = SocketAddr::from((args.healthz_ip, args.healthz_port));
        Some(
            crate::health::serve(addr, health.clone())
                .await
                .with_context(|| format!("cannot serve health endpoints on {addr}"))?,
        )
    } else {
        None
    };

    // 1. etcd and the config, waiting for either while they are absent.
    let (registry, config) = tokio::select! {
        r = wait_for_config(etcd) => r?,
        _ = shutdown => { info!("stopped while waiting for etcd"); return Ok(None) }
    };
    health.set_control(registry.metrics().clone());
    info!(
        network = ?config.network(),
        subnet_len = ?config.ipv4.as_ref().map(|v4| v4.subnet_len),
        ipv6_network = ?config.network6(),
        backend = config.backend.type_name(),
        "network config"
    );
    let network6 = config.ipv6.as_ref().map(|v6| v6.network);

    // 2. The external interface and the backend's checks: no changes yet
    //    (the udp backend binds its port and re-attaches its TUN device, so
    //    that packets wait instead of being dropped while the rest starts).
    let dp_config = DataplaneConfig {
        backend: config.backend.clone(),
        network: DualStack::new(config.network(), network6),
        iface: IfaceRequest {
            ifaces: args.iface.clone(),
            regexes: args.iface_regex.clone(),
            public_ip: args.public_ip,
            public_ipv6: args.public_ipv6,
            ipv6: network6.is_some(),
            ipv6_only: config.ipv6_only(),
        },
        ip_masq: args.ip_masq,
        nexthop_objects: !args.no_nexthop_objects,
        resync: args.resync_interval,
        wireguard_uapi_dir: Some(args.wireguard_uapi_dir.clone()).filter(|d| !d.as_os_str().is_empty()),
        nftables: config.enable_nftables,
    };
    let mut dp = Dataplane::prepare(dp_config).await?;
    let ext = dp.external().clone();
    info!(
        iface = %ext.name,
        addr = ?ext.addr,
        public_ip = ?ext.public_ip,
        public_ipv6 = ?ext.public_ipv6,
        mtu = ext.mtu,
        "external interface"
    );
    if let Some((public, local)) = ext.public_not_local() {
        warn!(
            %public,
            %local,
            "the public address is not this host's: other nodes are told to reach this node at {public} (1:1 NAT, a floating address), and weft sends from {local}; udp and vxlan need {public} to forward to {local}, wireguard also finds a node behind NAT from its packets (see docs/operations.md)"
        );
    }
    health.set_dataplane(dp.metrics());

    // 3. The lease.
    let attrs = LeaseAttrs {
        public_ip: ext.public_ip,
        public_ipv6: ext.public_ipv6,
        backend_type: LeaseAttrs::backend_type_for(dp.kind()),
        backend_data: dp.backend_data().map(Into::into),
        backend_v6_data: dp.backend_v6_data().map(Into::into),
        node_id: node_id(args),
    };
    let acquire = AcquireRequest {
        attrs,
        ttl,
        previous_subnet: previous_subnet(&args.subnet_file),
        previous_ipv6_subnet: previous_ipv6_subnet(&args.subnet_file),
    };
    let lease = acquire_lease(&registry, &config, &acquire).await?;
    let (subnet, subnet6) = (lease.subnet, lease.ipv6_subnet);
    // The lease's name (its IPv4 subnet, or its IPv6 subnet on IPv6-only
    // networks) and the address that names this node in it.
    let (id, holder) = (lease.id(), lease.holder().context("the lease names no public address")?);
    registry.metrics().lease_written(id, ttl, false);
    info!(subnet = ?subnet, ipv6_subnet = ?subnet6, %holder, ttl = %humantime::format_duration(ttl), "lease acquired");

    // 4. The dataplane (devices, rules), the existing peers, subnet.env.
    dp.start(DualStack::new(subnet, subnet6)).await.context("setting up the dataplane")?;
    let mut watch = LeaseWatch::start(registry.clone(), config.clone()).await?;
    watch.set_relist_interval(args.lease_relist_interval);
    let own = Own {
        subnet: id,
        subnet6,
        public: [ext.public_ip.map(IpAddr::V4), ext.public_ipv6.map(IpAddr::V6)].into_iter().flatten().collect(),
        ipv6: config.ipv6.is_some(),
        backend: dp.kind(),
    };
    let first = reconcile(&mut dp, &watch, &own).await;
    weft_dataplane::release_unclaimed_descriptors();
    let env = SubnetEnv {
        network: config.network(),
        subnet,
        mtu: dp.mtu(),
        ip_masq: args.ip_masq,
        ipv6_network: network6,
        ipv6_subnet: subnet6,
    };
    env.write(&args.subnet_file)?;
    info!(path = %args.subnet_file.display(), "wrote subnet file");
    // Ready (in /readyz) only now that subnet.env exists: CNI reads it.
    readiness.set(first);
    if let Err(e) = crate::notify::ready() {
        warn!("could not notify systemd of readiness: {e}");
    }
    info!(subnet = %id, backend = %dp.kind(), "weft is running");
    Ok(Some(Node {
        registry,
        config,
        dp,
        watch,
        lease,
        id,
        holder,
        readiness,
        ttl,
        margin,
        _health_task: health_task,
        _instance: instance,
        own,
    }))
}

/// Run until stopped or until the lease is lost. Lease events, and
/// whatever the dataplane asks for (kernel events, ended forwarding
/// threads, its resync), trigger a pass; the dataplane picks its kind.
async fn serve(
    node: Node,
    args: &RunArgs,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<ExitCode> {
    let Node {
        registry,
        config,
        mut dp,
        mut watch,
        lease,
        id,
        holder,
        mut readiness,
        ttl,
        margin,
        _health_task,
        _instance,
        own,
    } = node;
    let (subnet, subnet6) = (lease.subnet, lease.ipv6_subnet);
    let mut renewer = Renewer::new(registry.clone(), lease, ttl, margin);
    let mut renewal = tokio::spawn(async move { renewer.run().await });
    let (mut checks, check_task) =
        crate::node_check::spawn(registry.clone(), subnet, subnet6, holder, args.resync_interval);
    let mut follower = ConfigFollower::new(config.clone(), registry.config_key(), id, registry.metrics().clone());
    let mut lease_clock = tokio::time::interval(LEASE_CLOCK);
    lease_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expired = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(ExitCode::SUCCESS),
            _ = lease_clock.tick() => {
                let now = registry.metrics().expires_in().is_some_and(|d| d.is_zero());
                if now != expired {
                    expired = now;
                    readiness.set_lease(lease_time(id, now, &args.subnet_file));
                }
            }
            lost = &mut renewal => {
                registry.metrics().lease_lost();
                let why = lost.map(|r| r.to_string()).unwrap_or_else(|e| format!("renewal task failed: {e}"));
                break Err(anyhow::anyhow!("{why}; exiting so that the service manager restarts weft"));
            }
            check = checks.recv() => {
                let Some(check) = check else { break Err(anyhow::anyhow!("the lease and config check ended")) };
                if let Some(why) = check.lost {
                    registry.metrics().lease_lost();
                    break Err(anyhow::anyhow!("{why}; exiting so that the service manager restarts weft"));
                }
                match follower.observe(check.config.as_deref()) {
                    ConfigStep::Fine => readiness.set_config(None),
                    ConfigStep::NotReady(why) => readiness.set_config(Some(why)),
                    ConfigStep::Restart(why) => break Err(anyhow::anyhow!(why)),
                }
            }
            events = watch.next() => {
                if let Some(why) = own_lease_gone(&events, id, holder) {
                    registry.metrics().lease_lost();
                    break Err(anyhow::anyhow!("{why}; exiting so that the service manager restarts weft"));
                }
                for ev in &events {
                    match ev {
                        LeaseEvent::Added(l) => info!(subnet = %l.id(), public_ip = ?l.holder(), "lease added"),
                        LeaseEvent::Removed(l) => info!(subnet = %l.id(), public_ip = ?l.holder(), "lease removed"),
                    }
                }
                readiness.set(reconcile(&mut dp, &watch, &own).await);
            }
            _ = dp.changed() => readiness.set(reconcile(&mut dp, &watch, &own).await),
        }
    };
    renewal.abort();
    check_task.abort();
    readiness.stopping();
    // Without a lease no new pod may get an address from this subnet.
    if registry.metrics().expires_in().is_none() {
        withdraw_subnet_env(&args.subnet_file);
    }
    dp.shutdown();
    if outcome.is_ok() {
        info!(subnet = %id, "stopping; the dataplane stays in place for the next start");
    }
    outcome
}

/// This host's identity: `--node-id`, else `/etc/machine-id` (none when
/// neither is there: no check).
fn node_id(args: &RunArgs) -> Option<String> {
    let id = args
        .node_id
        .clone()
        .or_else(|| std::fs::read_to_string("/etc/machine-id").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if id.is_none() {
        warn!("no node ID (no /etc/machine-id, no --node-id): two hosts with one public address cannot be told apart");
    }
    id
}

/// How often the own lease's time is checked locally.
const LEASE_CLOCK: Duration = Duration::from_secs(1);

/// The own lease has `expired` by this host's clock (etcd unreachable for
/// longer than it lives, so it could not be renewed): another node may
/// hold the subnet now, so `subnet.env` is withdrawn and the node is not
/// ready until a renewal; or it is renewed again: put back. Returns the
/// readiness reason.
fn lease_time(id: IpNet, expired: bool, subnet_file: &std::path::Path) -> Option<String> {
    if expired {
        withdraw_subnet_env(subnet_file);
        let why = format!(
            "the lease of {id} expired without a renewal (etcd unreachable?): another node may hold the subnet now; \
             {} withdrawn, so new pods wait",
            subnet_file.display()
        );
        warn!("{why}");
        return Some(why);
    }
    match weft_subnet::restore(subnet_file) {
        Ok(true) => info!(path = %subnet_file.display(), "the lease is renewed: subnet file put back"),
        Ok(false) => {}
        Err(e) => warn!("cannot put {} back: {e}", subnet_file.display()),
    }
    None
}

/// Move `subnet.env` aside (the CNI plugin then says why it finds none).
fn withdraw_subnet_env(subnet_file: &std::path::Path) {
    match weft_subnet::withdraw(subnet_file) {
        Ok(true) => warn!(path = %subnet_file.display(), "subnet file withdrawn: this node holds no valid lease"),
        Ok(false) => {}
        Err(e) => warn!("cannot withdraw {}: {e}", subnet_file.display()),
    }
}

/// Connect to etcd and read a valid config, retrying while etcd is
/// unreachable or the config is absent (saying so once). An invalid config
/// is an error: the operator has to fix it.
async fn wait_for_config(etcd: &EtcdArgs) -> Result<(Registry, NetworkConfig)> {
    let opts = etcd.options()?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut said_etcd = false;
    let mut said_config = false;
    let registry = loop {
        match Registry::connect(opts.clone()).await {
            Ok(r) => break r,
            Err(e @ (SubnetError::Unreachable { .. } | SubnetError::Unavailable { .. })) => {
                if !said_etcd {
                    warn!("waiting for etcd: {e}");
                    said_etcd = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    loop {
        match registry.get_config().await {
            Ok(c) => return Ok((registry, c)),
            Err(e @ SubnetError::ConfigNotFound { .. }) => {
                if !said_config {
                    warn!("waiting for the network config: {e}");
                    said_config = true;
                }
            }
            Err(e @ (SubnetError::Unreachable { .. } | SubnetError::Unavailable { .. })) => {
                if !said_etcd {
                    warn!("waiting for etcd: {e}");
                    said_etcd = true;
                }
            }
            Err(SubnetError::Config(e)) => bail!("the network config at {} is invalid: {e}", registry.config_key()),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Whether the events say our own lease is gone or held by someone else.
fn own_lease_gone(events: &[LeaseEvent], subnet: IpNet, holder: IpAddr) -> Option<String> {
    events.iter().find_map(|ev| match ev {
        LeaseEvent::Removed(l) if l.id() == subnet => Some(format!("the lease of {subnet} was removed from etcd")),
        LeaseEvent::Added(l) if l.id() == subnet && l.holder() != Some(holder) => Some(format!(
            "the lease of {subnet} now belongs to {}",
            l.holder().map_or_else(|| "nobody readable".to_string(), |ip| ip.to_string())
        )),
        _ => None,
    })
}

/// A pass that changed this many kernel objects, or read the kernel with
/// this many peers, freed megabytes of transient maps and netlink
/// messages.
const TRIM_AT: usize = 1000;

/// Give memory freed after a large pass back to the kernel. glibc keeps
/// freed memory in per-thread arenas: with 65,000 peers the daemon's RSS
/// stayed at about 105 MB after a full pass, of which 43 MB was ever live
/// at once. `malloc_trim` releases the free pages of every arena; it takes
/// about a millisecond.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas and takes their
    // locks; it has no preconditions and leaves live allocations alone.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One pass (the one the dataplane judges due, [`Dataplane::update`]):
/// converge the dataplane to the leases; returns why the node is not ready
/// (empty: it is).
async fn reconcile(dp: &mut Dataplane, watch: &LeaseWatch, own: &Own) -> Health {
    let desired = desired_peers(watch.leases(), own);
    let report = dp.update(&desired.peers).await;
    // A full pass reads every route, nexthop, neighbour and FDB entry.
    if report.changes >= TRIM_AT || (report.full && report.peers_desired >= TRIM_AT) {
        release_freed_memory();
    }
    if report.changes > 0 {
        info!(
            peers = report.peers_desired,
            programmed = report.peers_programmed,
            changes = report.changes,
            repairs = report.total_repairs(),
            full = report.full,
            "dataplane converged"
        );
    } else {
        debug!(peers = report.peers_desired, full = report.full, "dataplane pass: nothing to change");
    }
    let (remote, own): (Vec<_>, Vec<_>) = dp.health().into_iter().partition(|p| p.is_remote());
    let mut remote: Vec<String> = remote.iter().map(ToString::to_string).collect();
    remote.extend(desired.duplicates);
    Health { own: own.iter().map(ToString::to_string).collect(), remote, ignored: desired.ignored }
}
