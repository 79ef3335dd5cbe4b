//! The command line. Flag names follow flanneld's, so an existing unit file
//! or environment works unchanged; each flag can also be set through
//! `WEFT_<FLAG>` or flanneld's `FLANNELD_<FLAG>` environment variable.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use weft_subnet::EtcdOptions;
use weft_subnet::{DEFAULT_ENDPOINT, DEFAULT_PREFIX};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "A flannel-compatible overlay network daemon",
    long_about = "weft gives every node of a cluster its own pod subnet, leased from etcd, \
                  and carries pod traffic between nodes (udp, vxlan or host-gw backend). \
                  It shares etcd keys, JSON, flags and subnet.env with flanneld."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Log verbosity: 0 warnings, 1 info, 2 debug, 3 trace (RUST_LOG overrides).
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0, env = "WEFT_V")]
    pub verbosity: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the node daemon: lease this node's subnet and carry pod traffic.
    #[command(next_display_order = None)]
    Run(Box<RunArgs>),

    /// Read or write the network config in etcd.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Show which node holds which subnet, straight from etcd.
    Leases(LeasesArgs),
    /// Write Docker daemon options from the subnet file (flannel's mk-docker-opts.sh).
    ///
    /// Example: weft docker-opts -c -d /run/docker_opts.env, then in docker's unit:
    /// EnvironmentFile=/run/docker_opts.env and ExecStart=/usr/bin/dockerd $DOCKER_OPTS
    DockerOpts(DockerOptsArgs),
    /// Write the man pages (weft.1, weft-run.1, ...) generated from these definitions into DIR.
    #[command(hide = true)]
    Man {
        /// The directory to write the pages to.
        dir: PathBuf,
    },
}

/// `weft docker-opts`, with mk-docker-opts.sh's one-letter options.
#[derive(Debug, Clone, Args)]
pub(crate) struct DockerOptsArgs {
    /// The subnet file to read.
    #[arg(short = 'f', value_name = "FLANNEL-ENV-FILE", default_value = "/run/flannel/subnet.env")]
    pub flannel_env: PathBuf,
    /// The file to write (- for standard output).
    #[arg(short = 'd', value_name = "DOCKER-ENV-FILE", default_value = "/run/docker_opts.env")]
    pub docker_env: PathBuf,
    /// Write each option as its own variable (DOCKER_OPT_MTU="--mtu=1450").
    #[arg(short = 'i')]
    pub individual: bool,
    /// Write all options as one variable (DOCKER_OPTS=" --bip=... ").
    #[arg(short = 'c')]
    pub combined: bool,
    /// Do not write --ip-masq=false (for old Docker versions).
    #[arg(short = 'm')]
    pub no_ip_masq: bool,
    /// The name of the combined variable.
    #[arg(short = 'k', value_name = "COMBINED-KEY", default_value = "DOCKER_OPTS")]
    pub key: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCmd {
    /// Validate a network config and store it at <prefix>/config.
    ///
    /// Example: echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' | weft config put -
    Put {
        /// The config file, or - for standard input.
        file: PathBuf,
    },
    /// Print the network config stored at <prefix>/config.
    Get,
}

#[derive(Debug, Args)]
pub(crate) struct LeasesArgs {
    /// Print a JSON array instead of a table (one JSON object per line with --watch).
    #[arg(long)]
    pub json: bool,
    /// Keep running and print leases as they are added and removed.
    #[arg(long)]
    pub watch: bool,
}

/// How to reach etcd (flanneld's flags).
#[derive(Debug, Args)]
pub(crate) struct EtcdArgs {
    /// Comma-separated etcd endpoints.
    #[arg(long, global = true, env = "WEFT_ETCD_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix of the network.
    #[arg(long, global = true, env = "WEFT_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// TLS key file for etcd (with --etcd-certfile).
    #[arg(long, global = true, env = "WEFT_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// TLS certificate file for etcd (with --etcd-keyfile).
    #[arg(long, global = true, env = "WEFT_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// TLS CA file for etcd. With any TLS file, plain HTTP is never used.
    #[arg(long, global = true, env = "WEFT_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd user name (with --etcd-password).
    #[arg(long, global = true, env = "WEFT_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (with --etcd-username). Seen by anyone who can read
    /// the process's environment or command line: prefer
    /// --etcd-password-file.
    #[arg(long, global = true, env = "WEFT_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// File whose first line is the etcd password (with --etcd-username),
    /// instead of --etcd-password: e.g. a systemd credential,
    /// `%d/etcd-password` with `LoadCredential=`.
    #[arg(long, global = true, env = "WEFT_ETCD_PASSWORD_FILE", conflicts_with = "etcd_password")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The options to reach etcd with; fails when the password file
    /// cannot be read or is empty.
    pub(crate) fn options(&self) -> anyhow::Result<EtcdOptions> {
        let mut o = EtcdOptions::new(self.etcd_endpoints.clone());
        o.prefix = self.etcd_prefix.clone();
        o.key_file = self.etcd_keyfile.clone();
        o.cert_file = self.etcd_certfile.clone();
        o.ca_file = self.etcd_cafile.clone();
        o.username = self.etcd_username.clone();
        o.password = match &self.etcd_password_file {
            Some(path) => Some(read_password(path)?),
            None => self.etcd_password.clone(),
        };
        Ok(o)
    }
}

/// The first line of `path`, which must not be empty.
fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::{bail, Context};
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read the etcd password from {}; check --etcd-password-file", path.display())
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("{} holds no password on its first line; check --etcd-password-file", path.display());
    }
    Ok(line.to_string())
}

/// `weft run`: flanneld's flags, so an existing unit file works unchanged.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Interface (name, IPv4 or IPv6 address) for traffic between nodes;
    /// may be repeated, the first that exists wins. Default: the default
    /// route's.
    #[arg(long = "iface", env = "WEFT_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regular expression matched against interface names and addresses
    /// (used when --iface is not given); may be repeated.
    #[arg(long = "iface-regex", env = "WEFT_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// IP address other nodes reach this one at. Default: the interface's address.
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other nodes reach this one at, on dual-stack networks
    /// (EnableIPv6). Default: the interface's first global IPv6 address.
    #[arg(long, env = "WEFT_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// Where to write the subnet environment for the CNI plugin.
    #[arg(long, env = "WEFT_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, env = "WEFT_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub subnet_lease_renew_margin: u64,
    /// Lifetime of the lease in etcd (e.g. 24h, 30m); renewed before it ends.
    #[arg(long, env = "WEFT_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,
    /// Masquerade pod traffic leaving the overlay network (--ip-masq or --ip-masq=false).
    #[arg(long, env = "WEFT_IP_MASQ", num_args = 0..=1, default_value_t = false, default_missing_value = "true", value_parser = parse_bool)]
    pub ip_masq: bool,
    /// This host's identity in its lease (`WeftNodeID`, which flanneld
    /// ignores), so that two hosts with one public address are told apart
    /// and said, not fought over. Default: /etc/machine-id.
    #[arg(long, env = "WEFT_NODE_ID")]
    pub node_id: Option<String>,
    /// Address the health endpoints listen on. The default keeps them
    /// (and /metrics) on the node itself; flanneld's is 0.0.0.0, which
    /// pods can reach too: set 0.0.0.0 or the node's address to scrape
    /// from elsewhere.
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "127.0.0.1")]
    pub healthz_ip: Ipv4Addr,
    /// Port of /healthz and /readyz; 0 disables them.
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Program per-peer routes with their gateway (`via`) instead of
    /// through nexthop objects (`nhid`), as flanneld does: for tools that
    /// expect such routes. Programming many peers then takes quadratic
    /// kernel time (see docs/backends.md).
    #[arg(long, env = "WEFT_NO_NEXTHOP_OBJECTS")]
    pub no_nexthop_objects: bool,
    /// Where the wireguard backend serves WireGuard's userspace API, one
    /// socket per device (`flannel-wg.sock`), for `wg show` and wgctrl
    /// tools. `wg` looks in /var/run/wireguard; another directory is for
    /// several weft nodes on one host (a lab). Empty: not served.
    #[arg(long, env = "WEFT_WIREGUARD_UAPI_DIR", default_value = "/var/run/wireguard")]
    pub wireguard_uapi_dir: PathBuf,
    /// How often to re-check and restore the dataplane (e.g. 10s).
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How often to list every lease again, in case the etcd watch stalled
    /// without an error (a safety net; the watch normally sees every change).
    #[arg(long, env = "WEFT_LEASE_RELIST_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub lease_relist_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 10m, 24h)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "t" => Ok(true),
        "false" | "0" | "no" | "f" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}
