//! `subnet.env`: the file the flannel CNI plugin and docker helper scripts
//! read, in flanneld's format:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! Dual-stack networks add `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`;
//! IPv6-only networks have those and no `FLANNEL_NETWORK`/`FLANNEL_SUBNET`,
//! as flanneld writes it when `EnableIPv4` is false.
//!
//! It is written atomically (temporary file in the same directory, fsync,
//! rename), so a reader never sees half a file.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{Error, Result};

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 network and subnet (none on IPv6-only networks).
    pub network: Option<Ipv4Net>,
    pub subnet: Option<Ipv4Net>,
    pub mtu: u32,
    pub ip_masq: bool,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
}

impl SubnetEnv {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let (Some(net), Some(sub)) = (self.network, self.subnet) {
            let first = Ipv4Addr::from(u32::from(sub.network()) + 1);
            s.push_str(&format!("FLANNEL_NETWORK={net}\nFLANNEL_SUBNET={first}/{}\n", sub.prefix_len()));
        }
        if let Some(net) = self.ipv6_network {
            s.push_str(&format!("FLANNEL_IPV6_NETWORK={net}\n"));
        }
        if let Some(sub) = self.ipv6_subnet {
            let first = std::net::Ipv6Addr::from(u128::from(sub.network()) + 1);
            s.push_str(&format!("FLANNEL_IPV6_SUBNET={}/{}\n", first, sub.prefix_len()));
        }
        s.push_str(&format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ip_masq));
        s
    }

    /// Write the file atomically, creating its directory if needed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let err = |source| Error::WriteFile { path: path.display().to_string(), source };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)?;
        // A subnet held again: what was withdrawn is stale.
        let _ = std::fs::remove_file(withdrawn_path(path));
        Ok(())
    }
}

/// Where `subnet.env` is moved while the node holds no valid lease: the
/// CNI plugin finds no subnet file (and says why), and the next start
/// still asks for the same subnet.
pub fn withdrawn_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".withdrawn");
    path.with_file_name(name)
}

/// Move `subnet.env` aside (see [`withdrawn_path`]); `false` when there was
/// none.
pub fn withdraw(path: &Path) -> std::io::Result<bool> {
    match std::fs::rename(path, withdrawn_path(path)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Put a withdrawn `subnet.env` back; `false` when there was none.
pub fn restore(path: &Path) -> std::io::Result<bool> {
    match std::fs::rename(withdrawn_path(path), path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `subnet.env`'s text, or the withdrawn one's.
fn recorded(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).or_else(|_| std::fs::read_to_string(withdrawn_path(path))).ok()
}

/// The subnet recorded in an existing `subnet.env` (`FLANNEL_SUBNET`), or
/// a withdrawn one, if the file exists and holds one.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = recorded(path)?;
    parse_var(&text, "FLANNEL_SUBNET")?.parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

/// The IPv6 subnet recorded in an existing `subnet.env`
/// (`FLANNEL_IPV6_SUBNET`), if the file exists and holds one.
pub fn previous_ipv6_subnet(path: &Path) -> Option<Ipv6Net> {
    let text = recorded(path)?;
    parse_var(&text, "FLANNEL_IPV6_SUBNET")?.parse::<Ipv6Net>().ok().map(|n| n.trunc())
}

/// The value of `name` in a `KEY=value` file.
pub(crate) fn parse_var<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().filter_map(|l| l.trim().split_once('=')).find(|(k, _)| k.trim() == name).map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flanneld_format_and_round_trips() {
        let env = SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            mtu: 1450,
            ip_masq: true,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), env.render());
        assert_eq!(previous_subnet(&path), Some("10.244.3.0/24".parse().unwrap()));
        // Only the file itself is left behind: no temporary files.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(previous_ipv6_subnet(&path), None);
    }

    #[test]
    fn dual_stack_file_is_flanneld_order() {
        let env = SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            mtu: 1450,
            ip_masq: false,
            ipv6_network: Some("fd10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd10:244:0:3::/64".parse().unwrap()),
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET=fd10:244:0:3::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(previous_ipv6_subnet(&path), Some("fd10:244:0:3::/64".parse().unwrap()));
    }

    #[test]
    fn ipv6_only_file_has_no_ipv4_variables() {
        let env = SubnetEnv {
            network: None,
            subnet: None,
            mtu: 1430,
            ip_masq: true,
            ipv6_network: Some("fd10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd10:244:0:3::/64".parse().unwrap()),
        };
        assert_eq!(
            env.render(),
            "FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET=fd10:244:0:3::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(previous_subnet(&path), None);
        assert_eq!(previous_ipv6_subnet(&path), Some("fd10:244:0:3::/64".parse().unwrap()));
    }

    #[test]
    fn missing_or_garbled_file_has_no_previous_subnet() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(previous_subnet(&dir.path().join("nope.env")), None);
        let p = dir.path().join("bad.env");
        std::fs::write(&p, "FLANNEL_SUBNET=banana\n").unwrap();
        assert_eq!(previous_subnet(&p), None);
    }
}
