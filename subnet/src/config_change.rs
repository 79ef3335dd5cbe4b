//! What the network config stored in etcd means for a node that is already
//! running with an earlier one. Pure: the daemon reads the stored text on
//! every resync and acts on the verdict.
//!
//! - The same config (formatting aside): nothing to do.
//! - Only `SubnetMin`/`SubnetMax` changed: that applies to leases acquired
//!   from now on; a running node keeps its subnet and the leases of the
//!   others are checked against `Network` and `SubnetLen` only.
//! - `Network`, `SubnetLen`, IPv6, `EnableNFTables` or anything in `Backend` changed: the
//!   node's lease, devices and routes were made for the old values and
//!   cannot be changed in place; the daemon exits so that the service
//!   manager starts it again with the new config.
//! - Deleted or invalid: keep forwarding with the config the node started
//!   with and report not ready until it is back.

use std::fmt::Debug;

use weft_types::BackendConfig;

use crate::config::NetworkConfig;
use crate::error::ConfigError;

/// How the stored config compares with the running one.
#[derive(Debug, PartialEq)]
pub enum ConfigVerdict {
    /// The same config.
    Same,
    /// Changes that apply to leases acquired from now on, one per field
    /// (`SubnetMax 10.244.255.0 -> 10.244.127.0`).
    AppliesToNewLeases(Vec<String>),
    /// Changes a running node cannot take over, one per field.
    NeedsRestart(Vec<String>),
    /// No config at the key.
    Deleted,
    /// The stored text is not a valid config.
    Invalid(ConfigError),
}

/// Judge the stored config text (`None`: deleted) against `running`.
pub fn judge(running: &NetworkConfig, stored: Option<&str>) -> ConfigVerdict {
    let Some(text) = stored else { return ConfigVerdict::Deleted };
    let fresh = match NetworkConfig::parse(text) {
        Ok(c) => c,
        Err(e) => return ConfigVerdict::Invalid(e),
    };
    if &fresh == running {
        return ConfigVerdict::Same;
    }
    let mut restart = Vec::new();
    let (old4, new4) = (running.ipv4.as_ref(), fresh.ipv4.as_ref());
    if old4.is_some() != new4.is_some() {
        restart.push(format!("EnableIPv4 {} -> {}", old4.is_some(), new4.is_some()));
    }
    changed(&mut restart, "Network", &old4.map(|v4| v4.network), &new4.map(|v4| v4.network));
    changed(&mut restart, "SubnetLen", &old4.map(|v4| v4.subnet_len), &new4.map(|v4| v4.subnet_len));
    if running.ipv6 != fresh.ipv6 {
        restart.push("the IPv6 settings (EnableIPv6, IPv6Network, ...)".to_string());
    }
    backend_changes(&mut restart, &running.backend, &fresh.backend);
    changed(&mut restart, "EnableNFTables", &running.enable_nftables, &fresh.enable_nftables);
    if !restart.is_empty() {
        return ConfigVerdict::NeedsRestart(restart);
    }
    let mut later = Vec::new();
    changed(&mut later, "SubnetMin", &old4.map(|v4| v4.subnet_min), &new4.map(|v4| v4.subnet_min));
    changed(&mut later, "SubnetMax", &old4.map(|v4| v4.subnet_max), &new4.map(|v4| v4.subnet_max));
    ConfigVerdict::AppliesToNewLeases(later)
}

fn changed<T: PartialEq + Debug>(out: &mut Vec<String>, field: &str, old: &T, new: &T) {
    if old != new {
        out.push(format!("{field} {} -> {}", show(old), show(new)));
    }
}

/// `10.244.0.0/16` rather than `10.244.0.0/16` in quotes, `default` for an
/// unset option.
fn show<T: Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    match s.as_str() {
        "None" => "default".into(),
        _ => s.strip_prefix("Some(").and_then(|s| s.strip_suffix(')')).unwrap_or(&s).to_string(),
    }
}

fn backend_changes(out: &mut Vec<String>, old: &BackendConfig, new: &BackendConfig) {
    match (old, new) {
        (BackendConfig::Vxlan(a), BackendConfig::Vxlan(b)) => {
            changed(out, "Backend.VNI", &a.vni, &b.vni);
            changed(out, "Backend.Port", &a.port, &b.port);
            changed(out, "Backend.GBP", &a.gbp, &b.gbp);
            changed(out, "Backend.DirectRouting", &a.direct_routing, &b.direct_routing);
            changed(out, "Backend.Learning", &a.learning, &b.learning);
            changed(out, "Backend.MTU", &a.mtu, &b.mtu);
        }
        (BackendConfig::Udp(a), BackendConfig::Udp(b)) => {
            changed(out, "Backend.Port", &a.port, &b.port);
            changed(out, "Backend.MTU", &a.mtu, &b.mtu);
            changed(out, "Backend.Offload", &a.offload, &b.offload);
            changed(out, "Backend.Queues", &a.queues, &b.queues);
            changed(out, "Backend.RealtimeThreads", &a.realtime_threads, &b.realtime_threads);
            changed(out, "Backend.LatencyLane", &a.latency_lane, &b.latency_lane);
        }
        (BackendConfig::HostGw, BackendConfig::HostGw) => {}
        (BackendConfig::Wireguard(a), BackendConfig::Wireguard(b)) => {
            changed(out, "Backend.ListenPort", &a.listen_port, &b.listen_port);
            changed(out, "Backend.ListenPortV6", &a.listen_port_v6, &b.listen_port_v6);
            // The key itself is a secret: say only that it changed.
            if a.psk != b.psk {
                out.push("Backend.PSK changed".into());
            }
            changed(out, "Backend.PersistentKeepaliveInterval", &a.persistent_keepalive, &b.persistent_keepalive);
            changed(out, "Backend.Mode", &a.mode, &b.mode);
            changed(out, "Backend.MTU", &a.mtu, &b.mtu);
            changed(out, "Backend.Queues", &a.queues, &b.queues);
            changed(out, "Backend.LatencyLane", &a.latency_lane, &b.latency_lane);
        }
        (a, b) => out.push(format!("Backend.Type {} -> {}", a.type_name(), b.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

    fn verdict(stored: Option<&str>) -> ConfigVerdict {
        judge(&NetworkConfig::parse(RUNNING).unwrap(), stored)
    }

    fn restart(stored: &str) -> Vec<String> {
        match verdict(Some(stored)) {
            ConfigVerdict::NeedsRestart(v) => v,
            other => panic!("{stored}: {other:?}"),
        }
    }

    #[test]
    fn same_config_in_other_words_is_the_same() {
        assert_eq!(verdict(Some(RUNNING)), ConfigVerdict::Same);
        // Formatting, key order, defaults written out, host bits set.
        let other = r#"{ "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472},
                          "SubnetLen": 24, "Network": "10.244.1.0/16" }"#;
        assert_eq!(verdict(Some(other)), ConfigVerdict::Same);
    }

    #[test]
    fn deleted_and_invalid_are_told_apart() {
        assert_eq!(verdict(None), ConfigVerdict::Deleted);
        assert!(matches!(verdict(Some("{not json")), ConfigVerdict::Invalid(ConfigError::Json(_))));
        assert!(matches!(verdict(Some(r#"{"SubnetLen":24}"#)), ConfigVerdict::Invalid(ConfigError::MissingNetwork)));
    }

    #[test]
    fn range_changes_apply_to_new_leases() {
        let narrower =
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.127.0","Backend":{"Type":"vxlan"}}"#;
        assert_eq!(
            verdict(Some(narrower)),
            ConfigVerdict::AppliesToNewLeases(vec!["SubnetMax 10.244.255.0 -> 10.244.127.0".into()])
        );
    }

    #[test]
    fn what_a_running_node_cannot_change_names_each_field() {
        let net = r#"{"Network":"10.245.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
        assert_eq!(restart(net), ["Network 10.244.0.0/16 -> 10.245.0.0/16"]);
        let nft = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
        assert_eq!(restart(nft), ["EnableNFTables false -> true"]);
        let len = r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#;
        // SubnetMin/SubnetMax move with SubnetLen but are not the point.
        assert_eq!(restart(len), ["SubnetLen 24 -> 26"]);
        let ty = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;
        assert_eq!(restart(ty), ["Backend.Type vxlan -> host-gw"]);
        let no_backend = r#"{"Network":"10.244.0.0/16","SubnetLen":24}"#;
        assert_eq!(restart(no_backend), ["Backend.Type vxlan -> udp"]);
        let opts = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":7,"MTU":1400}}"#;
        assert_eq!(restart(opts), ["Backend.VNI 1 -> 7", "Backend.MTU default -> 1400"]);
        let both = r#"{"Network":"10.245.0.0/16","SubnetLen":24,"SubnetMax":"10.245.9.0","Backend":{"Type":"vxlan","Learning":true}}"#;
        assert_eq!(restart(both), ["Network 10.244.0.0/16 -> 10.245.0.0/16", "Backend.Learning false -> true"]);
    }

    #[test]
    fn udp_thread_options_need_a_restart() {
        let running = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        let lane = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","LatencyLane":false,"RealtimeThreads":true}}"#;
        assert_eq!(
            judge(&running, Some(lane)),
            ConfigVerdict::NeedsRestart(vec![
                "Backend.RealtimeThreads false -> true".into(),
                "Backend.LatencyLane true -> false".into()
            ])
        );
    }
}
