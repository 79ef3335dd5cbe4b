//! `weft-cni`: a CNI plugin that does what flannel's does, so that a network
//! config with `"type": "flannel"` works unchanged with this binary
//! installed under that name. It reads the node's subnet from the subnet
//! file weft writes, builds the config of a delegate plugin (`bridge` with
//! `host-local` IPAM by default), runs it, and returns its result.
//!
//! | module        | what it holds                                                  |
//! |---------------|----------------------------------------------------------------|
//! | `netconf`     | the plugin's config and the delegate config built from it (pure) |
//! | `subnet_file` | reading `subnet.env` (pure)                                     |
//! | `delegate`    | finding and running the delegate; the per-container kept config |
//! | `error`       | CNI error results and codes                                     |
//!
//! Commands (`CNI_COMMAND`): ADD, DEL, CHECK, VERSION; spec versions 0.3.0
//! to 1.0.0.

mod delegate;
mod error;
mod netconf;
mod subnet_file;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use error::{code, CniError};
use netconf::{NetConf, SUPPORTED};

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        println!("{}", json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}));
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let version = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => serde_json::from_slice::<Value>(&stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(String::from))
            .unwrap_or_else(|| "1.0.0".into()),
        Err(_) => "1.0.0".into(),
    };
    match run(&command, &stdin) {
        Ok(out) => {
            if !out.trim().is_empty() {
                println!("{}", out.trim());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.render(&version));
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
}

fn container_id() -> Result<String, CniError> {
    let id = env("CNI_CONTAINERID")?;
    let ok = id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) && !id.starts_with('.');
    if !ok {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} has characters other than A-Z a-z 0-9 _ . -"),
        ));
    }
    Ok(id)
}

fn run(command: &str, stdin: &[u8]) -> Result<String, CniError> {
    match command {
        "ADD" => add(stdin),
        "DEL" => del(stdin),
        "CHECK" => check(stdin),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => {
            Err(CniError::new(code::INVALID_ENV, format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION")))
        }
    }
}

fn add(stdin: &[u8]) -> Result<String, CniError> {
    let conf = NetConf::parse(stdin)?;
    let id = container_id()?;
    for required in ["CNI_NETNS", "CNI_IFNAME"] {
        env(required)?;
    }
    let cni_path = env("CNI_PATH")?;
    let text = match std::fs::read_to_string(&conf.subnet_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && Path::new(&format!("{}.withdrawn", conf.subnet_file)).exists() => {
            return Err(CniError::with_details(
                code::TRY_AGAIN_LATER,
                format!("{} is withdrawn: this node holds no valid lease of its subnet", conf.subnet_file),
                "weft withdrew it when the lease expired or was lost (etcd unreachable?); pods get addresses again once it is renewed",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::with_details(
                code::TRY_AGAIN_LATER,
                format!("{} does not exist", conf.subnet_file),
                "weft (or flanneld) writes it once it holds this node's subnet: is it running?",
            ))
        }
        Err(e) => return Err(CniError::new(code::IO_FAILURE, format!("reading {}: {e}", conf.subnet_file))),
    };
    let subnet = subnet_file::parse(&conf.subnet_file, &text).map_err(|e| CniError::new(code::INVALID_CONFIG, e))?;
    let config = conf.delegate(&subnet)?;
    let plugin = delegate::find(config["type"].as_str().unwrap_or_default(), &cni_path)?;
    delegate::save(&conf.data_dir, &id, &config)?;
    delegate::run(&plugin, "ADD", &config)
}

fn del(stdin: &[u8]) -> Result<String, CniError> {
    let conf = NetConf::parse(stdin)?;
    let id = container_id()?;
    // Nothing kept: nothing was added, or it is already deleted.
    let Some(config) = delegate::load(&conf.data_dir, &id)? else { return Ok(String::new()) };
    let plugin = delegate::find(config["type"].as_str().unwrap_or_default(), &env("CNI_PATH")?)?;
    delegate::run(&plugin, "DEL", &config)?;
    let path = delegate::scratch_path(&conf.data_dir, &id);
    if let Err(e) = std::fs::remove_file(&path) {
        eprintln!("weft-cni: could not remove {}: {e}", path.display());
    }
    Ok(String::new())
}

/// CHECK is not delegated: Debian's `bridge` (1.1.1) rejects the routes
/// without a gateway that flannel's delegate config asks host-local for
/// ("Expected Route ... not found"), and flannel's plugin answers CHECK
/// without asking the delegate either. It checks what it owns: that an ADD
/// was done for the container and that each address of the previous result
/// is inside the subnet that ADD used.
fn check(stdin: &[u8]) -> Result<String, CniError> {
    let conf = NetConf::parse(stdin)?;
    let id = container_id()?;
    let Some(config) = delegate::load(&conf.data_dir, &id)? else {
        return Err(CniError::new(code::UNKNOWN_CONTAINER, format!("no network was added for container {id}")));
    };
    let ranges: Vec<ipnet::IpNet> = config["ipam"]["ranges"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|set| set.as_array().into_iter().flatten())
        .filter_map(|r| r["subnet"].as_str()?.parse().ok())
        .collect();
    let ips = conf.raw.get("prevResult").and_then(|p| p["ips"].as_array()).cloned().unwrap_or_default();
    for ip in &ips {
        let addr: Option<ipnet::IpNet> = ip["address"].as_str().and_then(|a| a.parse().ok());
        match addr {
            Some(a) if ranges.iter().any(|r| r.contains(&a.addr())) => {}
            _ => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("prevResult address {} is not in the subnet the container was added with", ip["address"]),
                ))
            }
        }
    }
    Ok(String::new())
}
