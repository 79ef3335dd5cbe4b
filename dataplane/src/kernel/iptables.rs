//! Running iptables: `iptables-restore --noflush` for weft's chains,
//! `iptables` for jumps and for reading a chain back; `ip6tables` and
//! `ip6tables-restore` for IPv6 ([`Family`]). iptables runs as a
//! child process off the async runtime, with a deadline: a hung iptables (a
//! held xtables lock) is killed, and never stalls the daemon. What the
//! rules are is `sync::rules`' business.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};

/// Which of the two tools: `iptables` (IPv4) or `ip6tables` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// The longest an iptables command may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Run `program args` with `stdin`, within [`DEADLINE`]: (success, stdout, stderr).
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    run_tool(
        program,
        args,
        stdin,
        "install the iptables package, or set \"EnableNFTables\": true in the network config for nftables",
    )
    .await
}

/// Run `program args` with `stdin`, within [`DEADLINE`]: (success, stdout,
/// stderr); `missing` says what to do when the program cannot be run.
pub(crate) async fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    missing: &str,
) -> Result<(bool, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Masq(format!("cannot run {program} ({missing}): {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(|e| Error::Masq(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| Error::Masq(format!("{program} {} took longer than {DEADLINE:?}; killed it", args.join(" "))))?
        .map_err(|e| Error::Masq(format!("waiting for {program}: {e}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

async fn iptables(fam: Family, args: &[&str]) -> Result<bool> {
    Ok(run(fam.tool(), args, None).await?.0)
}

/// `iptables` can be run here: an error saying what to do if not.
pub(crate) async fn check() -> Result<()> {
    run(Family::V4.tool(), &["--version"], None).await.map(|_| ())
}

/// `iptables-restore -w 5 --noflush` with `input`.
pub(crate) async fn restore(fam: Family, input: &str) -> Result<()> {
    let (ok, _, err) = run(fam.restore_tool(), &["-w", "5", "--noflush"], Some(input)).await?;
    if !ok {
        return Err(Error::Masq(format!("{} failed: {err}", fam.restore_tool())));
    }
    Ok(())
}

/// `iptables -t TABLE OP CHAIN -m comment --comment COMMENT -j TARGET`
/// (`-C` checks, `-I` inserts, `-D` deletes); whether it succeeded.
pub(crate) async fn jump(fam: Family, table: &str, op: &str, chain: &str, target: &str, comment: &str) -> Result<bool> {
    iptables(fam, &["-w", "5", "-t", table, op, chain, "-m", "comment", "--comment", comment, "-j", target]).await
}

/// `iptables -t TABLE -S CHAIN`: the chain's rules, `None` when it does not exist.
pub(crate) async fn show(fam: Family, table: &str, chain: &str) -> Result<Option<String>> {
    let (ok, rules, _) = run(fam.tool(), &["-w", "5", "-t", table, "-S", chain], None).await?;
    Ok(ok.then_some(rules))
}

/// `iptables -t TABLE -F CHAIN && iptables -t TABLE -X CHAIN` (absent is fine).
pub(crate) async fn delete_chain(fam: Family, table: &str, chain: &str) -> Result<()> {
    if iptables(fam, &["-w", "5", "-t", table, "-F", chain]).await? {
        iptables(fam, &["-w", "5", "-t", table, "-X", chain]).await?;
    }
    Ok(())
}
