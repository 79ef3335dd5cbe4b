//! The command line. Flag names follow flanneld's, so an existing unit file
//! or environment works unchanged; each flag can also be set through
//! `WEFT_<FLAG>` or flanneld's `FLANNELD_<FLAG>` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use weft_subnet::etcd::{DEFAULT_ENDPOINT, DEFAULT_PREFIX};
use weft_subnet::EtcdOptions;

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "A flannel-compatible overlay network daemon",
    long_about = "weft gives every node of a cluster its own pod subnet, leased from etcd, \
                  and carries pod traffic between nodes (udp, vxlan or host-gw backend). \
                  It shares etcd keys, JSON, flags and subnet.env with flanneld."
)]
pub struct Cli {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Log verbosity: 0 warnings, 1 info, 2 debug, 3 trace (RUST_LOG overrides).
    #[arg(
        short = 'v',
        long = "v",
        global = true,
        default_value_t = 0,
        env = "WEFT_V"
    )]
    pub verbosity: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read or write the network config in etcd.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Show which node holds which subnet, straight from etcd.
    Leases(LeasesArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
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
pub struct LeasesArgs {
    /// Print a JSON array instead of a table (one JSON object per line with --watch).
    #[arg(long)]
    pub json: bool,
    /// Keep running and print leases as they are added and removed.
    #[arg(long)]
    pub watch: bool,
}

/// How to reach etcd (flanneld's flags).
#[derive(Debug, Args)]
pub struct EtcdArgs {
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
    /// etcd password (with --etcd-username).
    #[arg(
        long,
        global = true,
        env = "WEFT_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    pub fn options(&self) -> EtcdOptions {
        let mut o = EtcdOptions::new(self.etcd_endpoints.clone());
        o.prefix = self.etcd_prefix.clone();
        o.key_file = self.etcd_keyfile.clone();
        o.cert_file = self.etcd_certfile.clone();
        o.ca_file = self.etcd_cafile.clone();
        o.username = self.etcd_username.clone();
        o.password = self.etcd_password.clone();
        o
    }
}
