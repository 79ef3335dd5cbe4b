//! flanneld compatibility of the command line and the environment.
//!
//! - flanneld (Go's flag package) accepts `-etcd-endpoints=...` with one
//!   dash; weft rewrites such arguments to `--etcd-endpoints=...` when the
//!   name is one of its long flags.
//! - flanneld reads `FLANNELD_<FLAG>` variables; weft reads `WEFT_<FLAG>`
//!   and, where that is unset, the `FLANNELD_` one.

use std::ffi::OsString;

/// Copy `FLANNELD_X` to `WEFT_X` where only the former is set.
pub(crate) fn import_flanneld_env() {
    let imports: Vec<(String, OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let name = k.to_str()?.strip_prefix("FLANNELD_")?.to_string();
            let weft = format!("WEFT_{name}");
            std::env::var_os(&weft).is_none().then_some((weft, v))
        })
        .collect();
    for (k, v) in imports {
        // Runs first thing in main, before any other thread exists.
        std::env::set_var(k, v);
    }
}

/// Turn `-long-flag[=v]` into `--long-flag[=v]` for known long flags.
pub(crate) fn normalize_args(args: Vec<OsString>, cmd: &clap::Command) -> Vec<OsString> {
    let mut longs: Vec<String> = Vec::new();
    collect_longs(cmd, &mut longs);
    let mut out = Vec::with_capacity(args.len());
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().enumerate() {
        let s = arg.to_string_lossy();
        if i == 0 || rest_verbatim || s.starts_with("--") || !s.starts_with('-') {
            if s == "--" {
                rest_verbatim = true;
            }
            out.push(arg);
            continue;
        }
        let name = s[1..].split('=').next().unwrap_or("");
        if name.len() > 1 && longs.iter().any(|l| l == name) {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(arg);
        }
    }
    out
}

fn collect_longs(cmd: &clap::Command, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if let Some(l) = arg.get_long() {
            out.push(l.to_string());
        }
    }
    for sub in cmd.get_subcommands() {
        collect_longs(sub, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn norm(args: &[&str]) -> Vec<String> {
        let args = args.iter().map(OsString::from).collect();
        normalize_args(args, &crate::cli::Cli::command()).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn single_dash_long_flags_are_accepted() {
        assert_eq!(
            norm(&["weft", "-etcd-endpoints=http://a:2379", "leases", "-json", "-v=2", "-etcd-prefix", "/x"]),
            ["weft", "--etcd-endpoints=http://a:2379", "leases", "--json", "-v=2", "--etcd-prefix", "/x"]
        );
        // Unknown names and values are left for clap to judge.
        assert_eq!(norm(&["weft", "-bogus", "leases"]), ["weft", "-bogus", "leases"]);
        assert_eq!(
            norm(&["weft", "config", "put", "--", "-etcd-prefix"]),
            ["weft", "config", "put", "--", "-etcd-prefix"]
        );
    }
}
