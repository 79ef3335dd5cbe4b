//! `weft docker-opts`: what flannel's `mk-docker-opts.sh` does, from the
//! subnet file: Docker daemon options (`--bip`, `--mtu`, `--ip-masq=false`)
//! as `DOCKER_OPT_*` variables and/or one combined `DOCKER_OPTS` variable,
//! written to a file Docker's unit reads (`/run/docker_opts.env`).
//!
//! The output is byte for byte the script's: individual variables in
//! name order (with any `DOCKER_OPT_*` already in the environment, as the
//! script's `compgen -v` lists them), then the combined key, whose value
//! starts with that key's value from the environment and a space and has
//! a space after each option. Where the script is lenient weft is not: a
//! missing subnet file is an error (the script writes empty options), and
//! `-m` works as the script's usage says (the script rejects it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::DockerOptsArgs;

/// The variables a shell would have after sourcing the subnet file.
fn source(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The file's content: `vars` from the subnet file, `env` the process's
/// environment (for `DOCKER_OPT_*` and the combined key's initial value).
pub(crate) fn render(vars: &BTreeMap<String, String>, env: &BTreeMap<String, String>, args: &DockerOptsArgs) -> String {
    let lookup = |k: &str| vars.get(k).or_else(|| env.get(k)).filter(|v| !v.is_empty());
    let mut opts: BTreeMap<String, String> =
        env.iter().filter(|(k, _)| k.starts_with("DOCKER_OPT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    opts.extend(vars.iter().filter(|(k, _)| k.starts_with("DOCKER_OPT_")).map(|(k, v)| (k.clone(), v.clone())));
    if let Some(s) = lookup("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={s}"));
    }
    if let Some(m) = lookup("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={m}"));
    }
    if lookup("FLANNEL_IPMASQ").map(String::as_str) == Some("true") && !args.no_ip_masq {
        opts.insert("DOCKER_OPT_IPMASQ".into(), "--ip-masq=false".into());
    }
    let (individual, combined) = match (args.individual, args.combined) {
        (false, false) => (true, true),
        other => other,
    };
    let mut out = String::new();
    let mut all = format!("{} ", lookup(&args.key).map(String::as_str).unwrap_or(""));
    for (name, value) in &opts {
        if individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        all.push_str(value);
        all.push(' ');
    }
    if combined {
        out.push_str(&format!("{}=\"{all}\"\n", args.key));
    }
    out
}

pub(crate) fn run(args: &DockerOptsArgs) -> Result<ExitCode> {
    let path = Path::new(&args.flannel_env);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: weft writes it once it holds this node's subnet (is `weft run` running?)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let vars = source(&text);
    if !vars.contains_key("FLANNEL_SUBNET") {
        bail!("{} has no FLANNEL_SUBNET; is it a subnet file weft or flanneld wrote?", path.display());
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let out = render(&vars, &env, args);
    if args.docker_env.as_os_str() == "-" {
        print!("{out}");
    } else {
        std::fs::write(&args.docker_env, out).with_context(|| format!("writing {}", args.docker_env.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
