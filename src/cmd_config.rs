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
            let registry = Registry::connect(etcd.options()?).await?;
            registry.put_config(&text).await?;
            let mut what = Vec::new();
            if let Some(v4) = &config.ipv4 {
                what.push(format!(
                    "network {}, /{} subnets {} - {} ({} subnets)",
                    v4.network,
                    v4.subnet_len,
                    v4.subnet_min,
                    v4.subnet_max,
                    v4.subnet_count()
                ));
            }
            if let Some(v6) = &config.ipv6 {
                what.push(format!(
                    "IPv6 network {}, /{} subnets {} - {}",
                    v6.network, v6.subnet_len, v6.subnet_min, v6.subnet_max
                ));
            }
            eprintln!("wrote {}: {}, backend {}", registry.config_key(), what.join("; "), config.backend.type_name());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::Get => {
            let registry = Registry::connect(etcd.options()?).await?;
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
