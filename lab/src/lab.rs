//! The lab: an underlay switch, a real etcd, N nodes each running
//! `weft run`, and a pod behind each node, all in network namespaces.
//!
//! ```text
//!  [etcd ns] 198.18.0.250 ─┐
//!  [node 1]  198.18.0.1 ───┤ br0 in [switch ns], 198.18.0.254
//!  [node 2]  198.18.0.2 ───┘
//!     └ cni0 (FLANNEL_SUBNET gateway) ─ veth ─ [pod 1] eth0 10.244.X.2
//! ```
//!
//! Underlay addresses are in 198.18.0.0/15, pods in 10.244.0.0/16. The
//! underlay is dual-stack: every address 198.18.0.N also has
//! `fd00:198:18::N/64` ([`underlay_ip6`]), for dual-stack networks (pods in
//! `fd10:244::/56` then). Nothing is added to the root namespace;
//! everything is removed on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use crate::netns::{self, exec, ip, NS_PREFIX};
use crate::wait::wait_until;
use crate::{EtcdCluster, EtcdServer};

/// Port of `/healthz` and `/readyz` on every lab node.
pub const HEALTHZ_PORT: u16 = 9808;
/// etcd's underlay address.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
/// The switch's own address (nodes' default gateway; it does not forward).
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The IPv6 underlay address that goes with IPv4 underlay address
/// `198.18.0.N`: `fd00:198:18::N`.
pub fn underlay_ip6(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, u16::from(v4.octets()[3]))
}

/// One node of the lab.
pub struct Node {
    pub index: u8,
    pub ns: String,
    pub pod_ns: String,
    pub underlay_ip: Ipv4Addr,
    /// The node's IPv6 underlay address (`fd00:198:18::N`).
    pub underlay_ip6: Ipv6Addr,
    pub subnet_file: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
    /// The pod's address, once attached.
    pub pod_ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address, once attached on a dual-stack network.
    pub pod_ip6: Option<Ipv6Addr>,
    /// The node's underlay has no IPv4 ([`Lab::make_underlay_ipv6_only`]).
    pub ipv6_only: bool,
}

pub struct Lab {
    pub name: String,
    weft: PathBuf,
    dir: tempfile::TempDir,
    switch_ns: String,
    etcd_ns: String,
    etcd: Option<EtcdServer>,
    /// With [`Lab::with_etcd`]: the members (member 1 in `etcd_ns`).
    pub cluster: Option<EtcdCluster>,
    pub nodes: Vec<Node>,
    extra_ns: Vec<String>,
    /// The CNI plugin [`attach_pod`](Lab::attach_pod) runs; default:
    /// `weft-cni` next to the `weft` binary.
    pub cni_plugin: Option<PathBuf>,
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we own; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl Lab {
    /// Build the underlay, etcd and `nodes` node namespaces (daemons not started).
    pub fn new(nodes: u8, weft: impl Into<PathBuf>) -> Result<Lab> {
        Self::build(nodes, weft.into(), None)
    }

    /// [`Lab::new`] with an etcd cluster of `members` members, each in its
    /// own namespace on the underlay (198.18.0.250, .251, ...), started
    /// with `extra` arguments (e.g. `--auth-token-ttl=5`). Nodes are given
    /// every member's endpoint.
    pub fn with_etcd(nodes: u8, weft: impl Into<PathBuf>, members: u8, extra: &[&str]) -> Result<Lab> {
        Self::build(nodes, weft.into(), Some((members, extra)))
    }

    fn build(nodes: u8, weft: PathBuf, cluster: Option<(u8, &[&str])>) -> Result<Lab> {
        netns::sweep_stale();
        let id = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NS_PREFIX}{}-{id}", std::process::id());
        let mut lab = Lab {
            weft,
            dir: tempfile::Builder::new().prefix("weft-lab-").tempdir()?,
            switch_ns: format!("{name}-sw"),
            etcd_ns: format!("{name}-etcd"),
            name,
            etcd: None,
            cluster: None,
            nodes: Vec::new(),
            extra_ns: Vec::new(),
            cni_plugin: None,
        };
        netns::add(&lab.switch_ns)?;
        ip(&["-n", &lab.switch_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch_ns, "addr", "add", &format!("{SWITCH_IP}/24"), "dev", "br0"])?;
        let switch6 = format!("{}/64", underlay_ip6(SWITCH_IP));
        ip(&["-n", &lab.switch_ns, "addr", "add", &switch6, "dev", "br0", "nodad"])?;
        ip(&["-n", &lab.switch_ns, "link", "set", "br0", "up"])?;

        let etcd_ns = lab.etcd_ns.clone();
        lab.plug(&etcd_ns, "etcd", ETCD_IP)?;
        match cluster {
            None => lab.etcd = Some(EtcdServer::start_in_netns(&etcd_ns, ETCD_IP)?),
            Some((members, extra)) => {
                let mut places = vec![(etcd_ns, ETCD_IP)];
                for k in 2..=members {
                    let ns = format!("{}-etcd{k}", lab.name);
                    let ip = Ipv4Addr::new(198, 18, 0, 249 + k);
                    lab.plug(&ns, &format!("etcd{k}"), ip)?;
                    lab.extra_ns.push(ns.clone());
                    places.push((ns, ip));
                }
                lab.cluster = Some(EtcdCluster::start(&places, extra)?);
            }
        }
        for i in 1..=nodes {
            lab.add_node_ns(i)?;
        }
        Ok(lab)
    }

    /// Connect namespace `ns` to the switch as `eth0` with `addr`/24 and
    /// its IPv6 twin ([`underlay_ip6`])/64.
    fn plug(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        netns::add(ns)?;
        ip(&["link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", &self.switch_ns])?;
        ip(&["-n", &self.switch_ns, "link", "set", port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        // nodad: usable at once, and every address in the lab is unique.
        ip(&["-n", ns, "addr", "add", &format!("{}/64", underlay_ip6(addr)), "dev", "eth0", "nodad"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn add_node_ns(&mut self, i: u8) -> Result<()> {
        let ns = format!("{}-n{i}", self.name);
        let addr = Ipv4Addr::new(198, 18, 0, i);
        self.plug(&ns, &format!("n{i}"), addr)?;
        ip(&["-n", &ns, "route", "add", "default", "via", &SWITCH_IP.to_string()])?;
        netns::run(exec(&ns, "sysctl").args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]))?;
        let node_dir = self.dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir)?;
        self.nodes.push(Node {
            index: i,
            pod_ns: format!("{}-p{i}", self.name),
            ns,
            underlay_ip: addr,
            underlay_ip6: underlay_ip6(addr),
            subnet_file: node_dir.join("subnet.env"),
            log: node_dir.join("weft.log"),
            daemon: None,
            pod_ip: None,
            pod_ip6: None,
            ipv6_only: false,
        });
        Ok(())
    }

    /// A namespace on the underlay that is not a node, holding `addrs`
    /// (the first as its /24 address, the rest as extra addresses).
    pub fn add_intruder(&mut self, addrs: &[&str]) -> Result<String> {
        let ns = format!("{}-x", self.name);
        let first: Ipv4Addr = addrs.first().context("no address")?.parse()?;
        self.plug(&ns, "x", first)?;
        for a in &addrs[1..] {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        self.extra_ns.push(ns.clone());
        Ok(ns)
    }

    /// Put node `i` (its daemon not started yet) behind a NAT router, as a
    /// home router or a cloud NAT gateway puts a host: the node's `eth0`
    /// moves to `198.19.<i>.2/24` on a link of its own to a router
    /// namespace, which sits on the switch at `public` and masquerades what
    /// the node sends (iptables MASQUERADE). Nothing on the switch can
    /// reach the node's own address. The node has no IPv6 underlay then.
    /// Returns the router's namespace.
    pub fn put_behind_nat(&mut self, i: u8, public: Ipv4Addr) -> Result<String> {
        let ns = self.node(i).ns.clone();
        let router = format!("{}-r{i}", self.name);
        self.plug(&router, &format!("r{i}"), public)?;
        self.extra_ns.push(router.clone());
        ip(&["-n", &ns, "link", "del", "eth0"])?;
        ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", "lan0", "netns", &router])?;
        let (inside, gateway) = (Ipv4Addr::new(198, 19, i, 2), Ipv4Addr::new(198, 19, i, 1));
        ip(&["-n", &router, "addr", "add", &format!("{gateway}/24"), "dev", "lan0"])?;
        ip(&["-n", &router, "link", "set", "lan0", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{inside}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway.to_string()])?;
        netns::run(exec(&router, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        netns::run(exec(&router, "iptables").args([
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ]))?;
        self.nodes[usize::from(i) - 1].underlay_ip = inside;
        Ok(router)
    }

    /// A namespace of its own (e.g. a pod's, for a CNI plugin to wire),
    /// removed with the lab.
    pub fn add_netns(&mut self, suffix: &str) -> Result<String> {
        let ns = format!("{}-{suffix}", self.name);
        netns::add(&ns)?;
        self.extra_ns.push(ns.clone());
        Ok(ns)
    }

    /// Run the CNI plugin `plugin` in node `i` for `command` on container
    /// `id` whose namespace is `pod_ns`, with `config` on stdin and Debian's
    /// plugins (`/usr/lib/cni`) on `CNI_PATH`.
    pub fn cni(&self, i: u8, plugin: &Path, command: &str, id: &str, pod_ns: &str, config: &str) -> Result<Output> {
        let mut child = exec(&self.node(i).ns, plugin.to_str().context("plugin path")?)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", plugin.display()))?;
        child.stdin.take().context("stdin")?.write_all(config.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Add one more node namespace (daemon not started); returns its index.
    pub fn add_node(&mut self) -> Result<u8> {
        let i = self.nodes.len() as u8 + 1;
        self.add_node_ns(i)?;
        Ok(i)
    }

    /// The namespace etcd (or member 1) runs in.
    pub fn etcd_ns(&self) -> &str {
        &self.etcd_ns
    }

    pub fn etcd_endpoint(&self) -> String {
        match &self.cluster {
            Some(c) => c.endpoints(),
            None => format!("http://{ETCD_IP}:2379"),
        }
    }

    /// A proxy in etcd's namespace, on the underlay, in front of the single
    /// etcd server (not a cluster): give nodes `--etcd-endpoints
    /// http://<its addr>` to put it between them and etcd.
    pub fn etcd_proxy(&self) -> Result<crate::TcpProxy> {
        anyhow::ensure!(self.cluster.is_none(), "the proxy fronts the single etcd server");
        crate::TcpProxy::start_in_netns(
            &self.etcd_ns,
            SocketAddr::from((ETCD_IP, 0)),
            SocketAddr::from(([127, 0, 0, 1], 2379)),
        )
    }

    /// Put `puts` and delete `deletes` in one etcd transaction, through
    /// etcd's own namespace (the single server, not a cluster). Needs the
    /// `etcd-txn` feature.
    #[cfg(feature = "etcd-txn")]
    pub fn etcd_txn(&self, puts: Vec<(String, String)>, deletes: Vec<String>) -> Result<()> {
        let ns = self.etcd_ns.clone();
        netns::in_netns(&ns, move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
                let ops: Vec<_> = deletes
                    .into_iter()
                    .map(|k| etcd_client::TxnOp::delete(k, None))
                    .chain(puts.into_iter().map(|(k, v)| etcd_client::TxnOp::put(k, v, None)))
                    .collect();
                client.txn(etcd_client::Txn::new().and_then(ops)).await?;
                Ok(())
            })
        })?
    }

    /// The endpoints `weft` and `etcdctl` use from etcd's namespace.
    fn admin_endpoints(&self) -> String {
        match &self.cluster {
            Some(c) => c.endpoints(),
            None => "http://127.0.0.1:2379".into(),
        }
    }

    pub fn node(&self, i: u8) -> &Node {
        &self.nodes[usize::from(i) - 1]
    }

    /// Record the address of node `i`'s pod (wired by someone else, e.g. a
    /// [`crate::systemd::SystemdNode`]).
    pub fn set_pod_ip(&mut self, i: u8, ip: Ipv4Addr) {
        self.node_mut(i).pod_ip = Some(ip);
    }

    /// Record the IPv6 address of node `i`'s pod (`None`: it has none).
    pub fn set_pod_ip6(&mut self, i: u8, ip: Option<Ipv6Addr>) {
        self.node_mut(i).pod_ip6 = ip;
    }

    fn node_mut(&mut self, i: u8) -> &mut Node {
        &mut self.nodes[usize::from(i) - 1]
    }

    /// Run `weft ARGS` in the etcd namespace, against the lab's etcd.
    pub fn weft(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = exec(&self.etcd_ns, self.weft.to_str().context("weft path")?);
        cmd.args(["--etcd-endpoints", &self.admin_endpoints()]).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(text) = stdin {
            child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// `weft config put -` with `json`.
    pub fn put_config(&self, json: &str) -> Result<()> {
        let out = self.weft(&["config", "put", "-"], Some(json))?;
        if !out.status.success() {
            bail!("config put failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `etcdctl ARGS` against the lab's etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        netns::run(
            exec(&self.etcd_ns, "etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.admin_endpoints()))
                .args(args),
        )
    }

    /// The command line `weft run` gets in node `i` (before `extra`).
    pub fn run_command(&self, i: u8, extra: &[&str]) -> Result<Command> {
        let n = self.node(i);
        let mut cmd = exec(&n.ns, self.weft.to_str().context("weft path")?);
        cmd.arg("run");
        if !extra.contains(&"--etcd-endpoints") {
            let endpoint = match (n.ipv6_only, &self.cluster) {
                (true, None) => format!("http://[{}]:2379", underlay_ip6(ETCD_IP)),
                _ => self.etcd_endpoint(),
            };
            cmd.args(["--etcd-endpoints", &endpoint]);
        }
        if !extra.contains(&"--iface") {
            cmd.args(["--iface", "eth0"]);
        }
        // Each node its own WireGuard key, beside its subnet.env (the nodes
        // share one filesystem).
        cmd.env("WIREGUARD_KEY_FILE", n.subnet_file.with_file_name("wgkey"));
        // And its own directory of WireGuard userspace API sockets (every
        // node's device is `flannel-wg`); [`Lab::wg`] shows it where `wg`
        // looks.
        cmd.env("WEFT_WIREGUARD_UAPI_DIR", self.uapi_dir(i));
        cmd.args(["--subnet-file", n.subnet_file.to_str().context("path")?])
            .args(["--healthz-port", &HEALTHZ_PORT.to_string()])
            .args(extra);
        Ok(cmd)
    }

    /// Where node `i`'s weft serves its WireGuard userspace API sockets.
    pub fn uapi_dir(&self, i: u8) -> PathBuf {
        self.node(i).subnet_file.with_file_name("wireguard")
    }

    /// `wg ARGS` in node `i`, seeing that node's sockets as
    /// `/var/run/wireguard` (a bind mount in the mount namespace `ip netns
    /// exec` gives the command, so nothing outside it changes). The output
    /// whatever the exit status.
    pub fn wg(&self, i: u8, args: &[&str]) -> Result<Output> {
        let dir = self.uapi_dir(i);
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all("/run/wireguard")?;
        let script = format!("mount --bind '{}' /run/wireguard && exec wg \"$@\"", dir.display());
        exec(&self.node(i).ns, "sh")
            .args(["-c", &script, "wg"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running wg")
    }

    /// Write node `i`'s `subnet.env` as weft writes it, for a node that runs
    /// something else (wireguard-go), so that its pod can be attached.
    pub fn write_subnet_env(&self, i: u8, network: Ipv4Net, subnet: Ipv4Net, mtu: u32) -> Result<()> {
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let text = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
            subnet.prefix_len()
        );
        Ok(std::fs::write(&self.node(i).subnet_file, text)?)
    }

    /// Start `weft run` in node `i`, logging to the node's log file.
    pub fn start_daemon(&mut self, i: u8, extra: &[&str]) -> Result<()> {
        self.start_daemon_env(i, extra, &[])
    }

    /// [`start_daemon`](Self::start_daemon) with extra environment variables.
    pub fn start_daemon_env(&mut self, i: u8, extra: &[&str], envs: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.run_command(i, extra)?;
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.node(i).log)?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: prctl(PR_SET_PDEATHSIG) runs in the child between fork and
        // exec and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting weft run")?;
        self.node_mut(i).daemon = Some(child);
        Ok(())
    }

    /// Wait until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&mut self, i: u8, limit: Duration) -> Result<()> {
        let ns = self.node(i).ns.clone();
        let res = wait_until(&format!("node {i} to be ready"), limit, || {
            if let Some(status) = self.node_mut(i).daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(Err(anyhow::anyhow!("weft on node {i} exited with {status}")));
            }
            let ns = ns.clone();
            let ok = netns::in_netns(&ns, || http_get(SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT)), "/readyz"))
                .ok()
                .flatten()
                .map(|(code, _)| code == 200)
                .unwrap_or(false);
            ok.then_some(Ok(()))
        });
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(e.context(self.log_tail(i))),
        }
    }

    /// Send `sig` to node `i`'s daemon and wait for it to exit.
    pub fn stop_daemon(&mut self, i: u8, sig: i32) -> Result<std::process::ExitStatus> {
        let mut child = self.node_mut(i).daemon.take().context("daemon not running")?;
        signal(&child, sig);
        Ok(child.wait()?)
    }

    /// Send `sig` to node `i`'s daemon (without waiting).
    pub fn signal_daemon(&self, i: u8, sig: i32) {
        if let Some(c) = &self.node(i).daemon {
            signal(c, sig);
        }
    }

    /// Wait for node `i`'s daemon to exit by itself (within `limit`).
    pub fn wait_exit(&mut self, i: u8, limit: Duration) -> Result<std::process::ExitStatus> {
        let status = wait_until(&format!("weft on node {i} to exit"), limit, || {
            self.node_mut(i).daemon.as_mut().and_then(|c| c.try_wait().ok().flatten())
        })?;
        self.node_mut(i).daemon = None;
        Ok(status)
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: u8) -> String {
        let text = std::fs::read_to_string(&self.node(i).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- weft log of node {i} ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    /// The whole log of node `i`.
    pub fn log(&self, i: u8) -> String {
        std::fs::read_to_string(&self.node(i).log).unwrap_or_default()
    }

    /// `FLANNEL_SUBNET`'s subnet and `FLANNEL_MTU` from node `i`'s subnet.env.
    pub fn subnet_env(&self, i: u8) -> Result<(Ipv4Net, Ipv4Addr, u32)> {
        read_subnet_env(&self.node(i).subnet_file)
    }

    /// Take node `i`'s underlay IPv4 away: its IPv4 address and default
    /// route go, an IPv6 default route (via the switch's IPv6 address)
    /// comes, and its daemon reaches etcd over IPv6. For IPv6-only networks.
    pub fn make_underlay_ipv6_only(&mut self, i: u8) -> Result<()> {
        let n = self.node(i);
        let (ns, v4) = (n.ns.clone(), n.underlay_ip);
        ip(&["-n", &ns, "route", "del", "default"])?;
        ip(&["-n", &ns, "addr", "del", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "-6", "route", "add", "default", "via", &underlay_ip6(SWITCH_IP).to_string()])?;
        self.node_mut(i).ipv6_only = true;
        Ok(())
    }

    /// [`attach_pod`](Self::attach_pod) on an IPv6-only network: the pod
    /// gets an IPv6 address only. Returns it.
    pub fn attach_pod6(&mut self, i: u8) -> Result<Ipv6Addr> {
        let (v4, v6) = self.attach_pod_any(i)?;
        if let Some(v4) = v4 {
            bail!("the pod of node {i} got an IPv4 address ({v4}) on an IPv6-only network");
        }
        v6.with_context(|| format!("the pod of node {i} got no IPv6 address"))
    }

    /// Give node `i` a pod the way a runtime does: a namespace, then weft's
    /// CNI plugin (`weft-cni`, next to the `weft` binary) with Debian's
    /// `bridge` and `host-local` as its delegates, reading the node's
    /// `subnet.env`. The bridge does not masquerade (`ipMasq: false`), so
    /// pod addresses are seen end to end. Returns the pod's address.
    pub fn attach_pod(&mut self, i: u8) -> Result<Ipv4Addr> {
        let (v4, _) = self.attach_pod_any(i)?;
        v4.with_context(|| format!("the pod of node {i} got no IPv4 address"))
    }

    /// The pod's addresses of either family, as weft-cni's result gives them.
    fn attach_pod_any(&mut self, i: u8) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        let plugin = self.cni_plugin.clone().unwrap_or_else(|| self.weft.with_file_name("weft-cni"));
        if !plugin.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --bin weft-cni` (with --release for the demo)",
                plugin.display()
            );
        }
        let pod_ns = self.node(i).pod_ns.clone();
        let dir = self.dir.path().join(format!("n{i}"));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.node(i).subnet_file,
            "dataDir": dir.join("cni"),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true, "ipMasq": false},
            "ipam": {"dataDir": dir.join("ipam")}
        });
        netns::add(&pod_ns)?;
        let out = self.cni(i, &plugin, "ADD", &format!("pod{i}"), &pod_ns, &conf.to_string())?;
        if !out.status.success() {
            bail!(
                "weft-cni ADD on node {i} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).context("weft-cni's result")?;
        let ips: Vec<&str> =
            result["ips"].as_array().into_iter().flatten().filter_map(|ip| ip["address"].as_str()).collect();
        let addr = ips.iter().find_map(|a| a.parse::<Ipv4Net>().ok()).map(|a| a.addr());
        let addr6 = ips.iter().find_map(|a| a.parse::<ipnet::Ipv6Net>().ok()).map(|a| a.addr());
        if addr.is_none() && addr6.is_none() {
            bail!("no address in weft-cni's result {result}");
        }
        self.node_mut(i).pod_ip = addr;
        self.node_mut(i).pod_ip6 = addr6;
        Ok((addr, addr6))
    }

    /// Whether pod `i` gets an answer from IPv6 address `dst` within 3 s.
    pub fn ping6_once(&self, i: u8, dst: Ipv6Addr) -> bool {
        self.answers_within_3s(i, dst.into())
    }

    /// `ip -6 route show proto 87` in node `i`.
    pub fn weft_routes6(&self, i: u8) -> Result<String> {
        Ok(String::from_utf8_lossy(&ip(&["-n", &self.node(i).ns, "-6", "route", "show", "proto", "87"])?.stdout)
            .into_owned())
    }

    /// `ping -c COUNT -i INTERVAL -W 1 DST` from node `i`'s pod.
    pub fn ping(&self, i: u8, dst: Ipv4Addr, count: u32, interval: &str) -> Result<Output> {
        Ok(exec(&self.node(i).pod_ns, "ping")
            .args(["-n", "-q", "-c", &count.to_string(), "-i", interval, "-W", "1", &dst.to_string()])
            .stdin(Stdio::null())
            .output()?)
    }

    /// Whether pod `i` gets an answer from `dst` within 3 s.
    pub fn ping_once(&self, i: u8, dst: Ipv4Addr) -> bool {
        self.answers_within_3s(i, dst.into())
    }

    fn answers_within_3s(&self, i: u8, dst: std::net::IpAddr) -> bool {
        // Echoes every 0.2 s until the first answer, for at most 3 s: a
        // loaded machine may lose or delay one without anything being wrong.
        exec(&self.node(i).pod_ns, "ping")
            .args(["-n", "-q", "-c", "1", "-i", "0.2", "-w", "3", &dst.to_string()])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ip -4 route show proto 87` in node `i`.
    pub fn weft_routes(&self, i: u8) -> Result<String> {
        Ok(String::from_utf8_lossy(&ip(&["-n", &self.node(i).ns, "-4", "route", "show", "proto", "87"])?.stdout)
            .into_owned())
    }

    /// Any command in node `i`.
    pub fn node_cmd(&self, i: u8, program: &str) -> Command {
        exec(&self.node(i).ns, program)
    }

    /// `GET path` on node `i`'s health port: (status, body).
    pub fn http(&self, i: u8, path: &'static str) -> Result<(u16, String)> {
        // A loaded machine may miss one timeout; try a few times.
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
            if let Some(r) = netns::in_netns(&self.node(i).ns, move || http_get(addr, path))? {
                return Ok(r);
            }
        }
        bail!("GET {path} on node {i} failed 5 times")
    }

    /// One counter from node `i`'s `/metrics` (0 when absent).
    pub fn metric(&self, i: u8, name_and_labels: &str) -> Result<u64> {
        let (_, body) = self.http(i, "/metrics")?;
        Ok(metric_in(&body, name_and_labels))
    }

    /// Whether node `i`'s daemon is running (started and not exited).
    pub fn daemon_running(&mut self, i: u8) -> bool {
        self.node_mut(i).daemon.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The PID of node `i`'s daemon.
    pub fn daemon_pid(&self, i: u8) -> Option<u32> {
        self.node(i).daemon.as_ref().map(|c| c.id())
    }

    /// CPU time (user + system) node `i`'s daemon has used so far.
    pub fn daemon_cpu(&self, i: u8) -> Result<Duration> {
        let pid = self.daemon_pid(i).context("daemon not running")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which ends with ')'): utime is the
        // 12th and stime the 13th of them.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf takes no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    /// How long until pod `i` gets an answer from `dst` (one echo every
    /// 10 ms, each waiting up to 50 ms), or `None` after `limit`.
    pub fn time_to_reach(&self, i: u8, dst: Ipv4Addr, limit: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            let ok = exec(&self.node(i).pod_ns, "ping")
                .args(["-n", "-q", "-c", "1", "-W", "0.05", &dst.to_string()])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Start `ping -i INTERVAL -c COUNT` from pod `i` to `dst` in the
    /// background; [`Pinger::finish`] returns (sent, received).
    pub fn pinger(&self, i: u8, dst: Ipv4Addr, interval: &str, count: u32) -> Result<Pinger> {
        let child = exec(&self.node(i).pod_ns, "ping")
            .args(["-n", "-q", "-i", interval, "-c", &count.to_string(), "-W", "1", &dst.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Pinger { child: Some(child) })
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.daemon.take() {
                signal(&c, libc::SIGKILL);
                let _ = c.wait();
            }
        }
        self.etcd = None;
        self.cluster = None;
        for n in &self.nodes {
            netns::del(&n.pod_ns);
            netns::del(&n.ns);
        }
        for ns in &self.extra_ns {
            netns::del(ns);
        }
        netns::del(&self.etcd_ns);
        netns::del(&self.switch_ns);
    }
}

/// A background `ping`; interrupted (SIGINT, so it prints its summary)
/// when finished early or dropped.
pub struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    /// Stop the ping (SIGINT) and return (transmitted, received).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        let child = self.child.take().context("already finished")?;
        signal(&child, libc::SIGINT);
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("packets transmitted")).context("no ping summary")?;
        let num = |label: &str| -> Result<u64> {
            let before = line.split(label).next().context("summary")?;
            Ok(before.trim().rsplit([' ', ',']).next().unwrap_or("").parse()?)
        };
        Ok((num(" packets transmitted")?, num(" received")?))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Parse `FLANNEL_SUBNET` (gateway/len) and `FLANNEL_MTU`.
pub fn read_subnet_env(path: &Path) -> Result<(Ipv4Net, Ipv4Addr, u32)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .with_context(|| format!("{k} missing in {}", path.display()))
    };
    let gw_net: Ipv4Net = get("FLANNEL_SUBNET")?.parse()?;
    let mtu: u32 = get("FLANNEL_MTU")?.parse()?;
    Ok((gw_net.trunc(), gw_net.addr(), mtu))
}

/// A minimal HTTP GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    // One write: the whole request in one segment.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n").as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Send `len` pseudo-random bytes from pod `from` to pod `to` over TCP and
/// check that exactly those bytes arrived. Returns the bytes transferred.
pub fn tcp_transfer_checked(lab: &Lab, from: u8, to: u8, len: usize) -> Result<usize> {
    let dst = lab.node(to).pod_ip.context("pod not attached")?;
    tcp_transfer_to(lab, from, to, std::net::IpAddr::V4(dst), len)
}

/// [`tcp_transfer_checked`] over IPv6, to pod `to`'s IPv6 address.
pub fn tcp6_transfer_checked(lab: &Lab, from: u8, to: u8, len: usize) -> Result<usize> {
    let dst = lab.node(to).pod_ip6.context("pod has no IPv6 address")?;
    tcp_transfer_to(lab, from, to, std::net::IpAddr::V6(dst), len)
}

fn tcp_transfer_to(lab: &Lab, from: u8, to: u8, dst: std::net::IpAddr, len: usize) -> Result<usize> {
    static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
    let port = 5201 + (NEXT_PORT.fetch_add(1, Ordering::SeqCst) % 1000) as u16;
    let (from_ns, to_ns) = (lab.node(from).pod_ns.clone(), lab.node(to).pod_ns.clone());
    let listener = netns::in_netns(&to_ns, move || std::net::TcpListener::bind((dst, port)))??;
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut hash = Fnv::default();
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        Ok(hash.finish() ^ total as u64)
    });
    let sent = netns::in_netns(&from_ns, move || -> Result<u64> {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), Duration::from_secs(5))?;
        let mut hash = Fnv::default();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut left = len;
        let mut buf = vec![0u8; 65536];
        while left > 0 {
            let n = left.min(buf.len());
            for chunk in buf[..n].chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
            }
            conn.write_all(&buf[..n])?;
            hash.update(&buf[..n]);
            left -= n;
        }
        Ok(hash.finish() ^ len as u64)
    })??;
    let received = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    if sent != received {
        bail!("the bytes received differ from the bytes sent");
    }
    Ok(len)
}

/// FNV-1a, enough to compare two byte streams.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One counter from a Prometheus text body (0 when absent).
pub fn metric_in(body: &str, name_and_labels: &str) -> u64 {
    body.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}
