//! `weft config put FILE|-` and `weft config get`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use weft_subnet::{NetworkConfig, Registry};

use crate::cli::{ConfigCmd, EtcdArgs};

pub(crate) async fn run(etcd: &EtcdArgs, cmd: &ConfigCmd) -> Result<ExitCode> {
    match cmd {
        ConfigCmd::Put { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("reading the config from standard input")?;
                s
            } else {
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
            };
            // Validate before connecting: an invalid config never reaches etcd.
            let config = NetworkConfig::parse(&text).context("the config was not written")?;
            let registry = Registry::connect(etcd.options()).await?;
            registry.put_config(&text).await?;
            eprintln!(
                "wrote {}: network {}, /{} subnets {} - {} ({} subnets), backend {}",
                registry.config_key(),
                config.network,
                config.subnet_len,
                config.subnet_min,
                config.subnet_max,
                config.subnet_count(),
                config.backend.type_name()
            );
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::Get => {
            let registry = Registry::connect(etcd.options()).await?;
            let Some(text) = registry.get_config_text().await? else {
                anyhow::bail!(weft_subnet::Error::ConfigNotFound { key: registry.config_key() });
            };
            println!("{}", text.trim_end());
            if let Err(e) = NetworkConfig::parse(&text) {
                eprintln!("warning: the stored config is invalid, weft will not use it: {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
