//! Running `nft`: a script in nft's own input format loaded with one `nft
//! -f -` (one transaction: the kernel takes all of it or none), a table
//! read back with `nft list table`. Through the iptables module's runner,
//! with its deadline. What the rules are is `sync::rules`' business.

use crate::error::{Error, Result};
use crate::kernel::iptables::run_tool;

const MISSING: &str = "install the nftables package, or leave \"EnableNFTables\" unset for iptables";

/// `nft -f -` with `script`, one transaction.
pub(crate) async fn apply(script: &str) -> Result<()> {
    let (ok, _, err) = run_tool("nft", &["-f", "-"], Some(script), MISSING).await?;
    if !ok {
        return Err(Error::Masq(format!("nft -f failed: {err}")));
    }
    Ok(())
}

/// `nft list table FAMILY NAME`: what nft prints of it, `None` when there
/// is no such table.
pub(crate) async fn list_table(family: &str, name: &str) -> Result<Option<String>> {
    let (ok, text, err) = run_tool("nft", &["list", "table", family, name], None, MISSING).await?;
    if ok {
        return Ok(Some(text));
    }
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    Err(Error::Masq(format!("nft list table {family} {name} failed: {err}")))
}

/// `nft` can be run here: an error saying what to install if not.
pub(crate) async fn check() -> Result<()> {
    run_tool("nft", &["--version"], None, MISSING).await.map(|_| ())
}
