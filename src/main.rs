//! `weft`: a flannel-compatible overlay network daemon.
//!
//! This binary is thin: it parses the command line, sets up logging and
//! hands over to one module per subcommand.
//!
//! | module         | what it holds                                                 |
//! |----------------|---------------------------------------------------------------|
//! | [`cli`]        | the clap command line: flags, subcommands, help texts         |
//! | [`compat`]     | flanneld compatibility of the command line and environment    |
//! | [`crash_loop`] | the back-off of a crash loop under the unit                   |
//! | [`cmd_config`] | `weft config put|get`                                         |
//! | [`cmd_leases`] | `weft leases [--json] [--watch]`                              |
//! | [`cmd_docker_opts`] | `weft docker-opts`: flannel's mk-docker-opts.sh          |
//! | [`daemon`]     | `weft run`: lease, backend, watch, renew, resync, shutdown    |
//! | [`health`]     | `/healthz`, `/readyz` and `/metrics`                          |
//! | [`instance`]   | one `weft run` per host (network namespace)                  |
//! | [`node_check`] | the own lease and the config read back every resync           |
//! | [`notify`]     | systemd readiness (`sd_notify READY=1`)                       |
//! | [`peers`]      | the leases of the other nodes that the backend programs       |
//! | [`signals`]    | SIGINT/SIGTERM as a future, SIGHUP ignored                    |
//!
//! The subnet manager is the `weft-subnet` crate; the forwarding backends
//! are the `weft-dataplane` crate.

mod cli;
mod cmd_config;
mod cmd_docker_opts;
mod cmd_leases;
mod compat;
mod crash_loop;
mod daemon;
mod health;
mod instance;
mod node_check;
mod notify;
mod peers;
mod signals;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    compat::import_flanneld_env();
    let args = compat::normalize_args(std::env::args_os().collect(), &Cli::command());
    let matches = Cli::command().get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logging(&cli);
    if matches!(cli.command, Command::Run(_)) {
        crash_loop::back_off();
    }
    // One thread: the control plane waits on etcd and netlink, and the udp
    // backend forwards on threads of its own. Measured with 65,433 peers
    // against the two-worker runtime: programmed in 3.1 s instead of 4.0,
    // 2.4 CPU-s instead of 4.3, RSS 54 MB instead of 72 (fewer malloc
    // arenas, and netlink dumps are consumed as they are read).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Config(cmd) => cmd_config::run(&cli.etcd, cmd).await,
            Command::Leases(args) => cmd_leases::run(&cli.etcd, args).await,
            Command::DockerOpts(args) => cmd_docker_opts::run(args),
            Command::Man { dir } => write_man_pages(dir),
            Command::Run(args) => daemon::run(&cli.etcd, args, signals::shutdown()).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if matches!(cli.command, Command::Run(_)) {
                notify::hold_off_restart(started);
            }
            ExitCode::FAILURE
        }
    }
}

/// `weft man DIR`: the man pages of weft and each subcommand, for
/// packaging (`scripts/package.sh`).
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| format!("writing man pages to {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(cli: &Cli) {
    // Commands that print results keep the log to warnings unless asked.
    let quiet = !matches!(cli.command, Command::Run(_));
    let default = match cli.verbosity {
        0 if quiet => "warn",
        0 => "info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
