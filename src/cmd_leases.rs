//! `weft leases`: who holds which subnet, straight from etcd.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use weft_subnet::{Lease, LeaseEvent, LeaseWatch, Registry};

use crate::cli::{EtcdArgs, LeasesArgs};

/// One lease as printed by `--json`.
#[derive(Serialize)]
struct LeaseView<'a> {
    /// The IPv4 subnet and `PublicIP` (absent on IPv6-only networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_ip: Option<String>,
    /// On dual-stack and IPv6-only networks.
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_ipv6: Option<String>,
    backend_type: &'a str,
    vtep_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vtep_mac6: Option<String>,
    /// A wireguard lease's public key (`BackendData.PublicKey`).
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key6: Option<String>,
    /// Seconds left on the lease, when known.
    expires_in_s: Option<u64>,
    backend_data: &'a Option<weft_subnet::BackendData>,
}

impl<'a> LeaseView<'a> {
    fn of(l: &'a Lease) -> Self {
        LeaseView {
            subnet: l.subnet.map(|s| s.to_string()),
            public_ip: l.attrs.public_ip.map(|ip| ip.to_string()),
            ipv6_subnet: l.ipv6_subnet.map(|s| s.to_string()),
            public_ipv6: l.attrs.public_ipv6.map(|ip| ip.to_string()),
            backend_type: l.attrs.backend_kind(),
            vtep_mac: l.attrs.vtep_mac().map(|m| m.to_string()),
            vtep_mac6: l.attrs.vtep_mac6().map(|m| m.to_string()),
            public_key: l.attrs.wireguard_key(),
            public_key6: l.attrs.wireguard_key6(),
            expires_in_s: l.ttl.map(|d| d.as_secs()),
            backend_data: &l.attrs.backend_data,
        }
    }
}

#[derive(Serialize)]
struct EventView<'a> {
    event: &'static str,
    lease: LeaseView<'a>,
}

fn human(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".into() };
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `s` with its control characters escaped (`\u{1b}`, `\n`): a lease is
/// another node's word, and its strings must not drive the terminal.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

const HEADER: &str = "SUBNET              PUBLIC IP        BACKEND   VTEP MAC            EXPIRES IN";

/// One line per lease; a dual-stack lease has a second, indented line
/// with its IPv6 subnet, `PublicIPv6` and IPv6 VTEP MAC, and a wireguard
/// lease one with its public key(s).
fn row(l: &Lease) -> String {
    let ipv6_only = l.subnet.is_none();
    let mac = if ipv6_only { l.attrs.vtep_mac6() } else { l.attrs.vtep_mac() };
    let mut line = format!(
        "{:<19} {:<16} {:<9} {:<19} {}",
        l.id().to_string(),
        l.holder().map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
        printable(l.attrs.backend_kind()),
        mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
        human(l.ttl)
    );
    if let Some(s6) = l.ipv6_subnet.filter(|_| !ipv6_only) {
        let ip6 = l.attrs.public_ipv6.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into());
        let mac6 = l.attrs.vtep_mac6().map(|m| m.to_string()).unwrap_or_else(|| "-".into());
        line.push_str(&format!("\n  {s6} {ip6} {mac6}"));
    }
    match (l.attrs.wireguard_key(), l.attrs.wireguard_key6()) {
        (Some(k), Some(k6)) if k != k6 => {
            line.push_str(&format!("\n  wireguard key {} (IPv6: {})", printable(&k), printable(&k6)))
        }
        (Some(k), _) | (None, Some(k)) => line.push_str(&format!("\n  wireguard key {}", printable(&k))),
        (None, None) => {}
    }
    line
}

pub(crate) async fn run(etcd: &EtcdArgs, args: &LeasesArgs) -> Result<ExitCode> {
    let registry = Registry::connect(etcd.options()?).await?;
    let config = registry.get_config().await?;
    let mut watch = LeaseWatch::start(registry.clone(), config).await?;
    let mut leases: Vec<Lease> = watch.leases().cloned().collect();
    registry.fill_ttls(&mut leases).await?;

    let mut out = std::io::stdout().lock();
    if args.json && !args.watch {
        let views: Vec<_> = leases.iter().map(LeaseView::of).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        for l in &leases {
            let ev = EventView { event: "added", lease: LeaseView::of(l) };
            writeln!(out, "{}", serde_json::to_string(&ev)?)?;
        }
    } else {
        writeln!(out, "{HEADER}")?;
        for l in &leases {
            writeln!(out, "{}", row(l))?;
        }
        if leases.is_empty() && !args.watch {
            eprintln!("no leases under {}", registry.subnets_prefix());
        }
    }
    out.flush()?;
    drop(out);
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }

    let shutdown = crate::signals::shutdown();
    tokio::pin!(shutdown);
    loop {
        let events = tokio::select! {
            _ = &mut shutdown => return Ok(ExitCode::SUCCESS),
            ev = watch.next() => ev,
        };
        // Time left, for what was just added (best effort: a lease that
        // is already gone again simply shows none).
        let mut added: Vec<Lease> = events
            .iter()
            .filter_map(|e| match e {
                LeaseEvent::Added(l) => Some(l.clone()),
                LeaseEvent::Removed(_) => None,
            })
            .collect();
        let _ = registry.fill_ttls(&mut added).await;
        let mut out = std::io::stdout().lock();
        for ev in &events {
            let (word, lease) = match ev {
                LeaseEvent::Added(l) => ("added", added.iter().find(|a| a.id() == l.id()).unwrap_or(l)),
                LeaseEvent::Removed(l) => ("removed", l),
            };

            if args.json {
                let ev = EventView { event: word, lease: LeaseView::of(lease) };
                writeln!(out, "{}", serde_json::to_string(&ev)?)?;
            } else {
                writeln!(out, "{word:<8} {}", row(lease))?;
            }
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_a_lease_are_printed_escaped() {
        assert_eq!(printable("vxlan"), "vxlan");
        assert_eq!(printable("\u{1b}[2Jvxlan\n"), "\\u{1b}[2Jvxlan\\n");
        let l = Lease::read_entry(
            "10.244.3.0-24",
            br#"{"PublicIP":"198.18.0.3","BackendType":"\u001b[31mred\u0007"}"#,
            0,
            0,
        )
        .unwrap();
        let shown = row(&l);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "{shown:?}");
        assert!(shown.contains("\\u{1b}[31mred\\u{7}"), "{shown}");
    }
}
