//! The daemon's periodic look at etcd, independent of the lease watch: every
//! resync interval one request reads the node's own key and the network
//! config. A lost lease ends the daemon (the caller exits for a restart);
//! the config is judged against the one the daemon started with (see
//! `weft_subnet::config_change`) and turned into readiness or an exit.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;
use weft_subnet::Metrics;
use weft_subnet::NodeCheck;
use weft_subnet::{judge, ConfigVerdict};
use weft_subnet::{NetworkConfig, Registry};

/// Check the own key and the config every `every` (the first after one
/// interval); each answer is sent on the returned channel. An etcd that does
/// not answer sends nothing: the renewer, the watch and the metrics cover it.
pub(crate) fn spawn(
    registry: Registry,
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
    holder: IpAddr,
    every: Duration,
) -> (mpsc::Receiver<NodeCheck>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Ok(check) = registry.check_node(subnet, subnet6, holder).await {
                if tx.send(check).await.is_err() {
                    return;
                }
            }
        }
    });
    (rx, task)
}

/// What the daemon does about the stored config.
#[derive(Debug, PartialEq)]
pub(crate) enum ConfigStep {
    /// Nothing keeps the node from being ready.
    Fine,
    /// Keep forwarding, but report not ready with this reason.
    NotReady(String),
    /// Exit (with this message) so that the service manager starts weft
    /// again with the new config.
    Restart(String),
}

/// Follows the stored config against the one the daemon runs with.
pub(crate) struct ConfigFollower {
    running: NetworkConfig,
    key: String,
    subnet: IpNet,
    metrics: Arc<Metrics>,
    /// The range changes last logged, so that each is said once.
    said: Vec<String>,
}

impl ConfigFollower {
    pub(crate) fn new(running: NetworkConfig, key: String, subnet: IpNet, metrics: Arc<Metrics>) -> Self {
        metrics.set_config_current(true);
        ConfigFollower { running, key, subnet, metrics, said: Vec::new() }
    }

    /// Judge the stored config text (`None`: deleted).
    pub(crate) fn observe(&mut self, stored: Option<&str>) -> ConfigStep {
        let verdict = judge(&self.running, stored);
        self.metrics.set_config_current(matches!(verdict, ConfigVerdict::Same | ConfigVerdict::AppliesToNewLeases(_)));
        let key = &self.key;
        match verdict {
            ConfigVerdict::Same => ConfigStep::Fine,
            ConfigVerdict::AppliesToNewLeases(changes) => {
                if changes != self.said {
                    info!(
                        "the network config at {key} changed ({}): that applies to leases acquired from now on; this node keeps {}",
                        changes.join(", "),
                        self.subnet
                    );
                    self.said = changes;
                }
                ConfigStep::Fine
            }
            ConfigVerdict::Deleted => ConfigStep::NotReady(format!(
                "the network config at {key} was deleted: forwarding with the config read at start until it is back"
            )),
            ConfigVerdict::Invalid(e) => ConfigStep::NotReady(format!(
                "the network config at {key} is invalid now ({e}): forwarding with the config read at start until it is fixed"
            )),
            ConfigVerdict::NeedsRestart(changes) => ConfigStep::Restart(format!(
                "the network config at {key} changed ({}), which a running node cannot apply in place; \
                 exiting so that the service manager starts weft again with the new config",
                changes.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

    fn follower() -> (ConfigFollower, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let running = NetworkConfig::parse(RUNNING).unwrap();
        let f = ConfigFollower::new(
            running,
            "/coreos.com/network/config".into(),
            "10.244.3.0/24".parse().unwrap(),
            metrics.clone(),
        );
        (f, metrics)
    }

    fn current(m: &Metrics) -> bool {
        let mut out = String::new();
        m.render(&mut weft_types::metrics::Writer::new(&mut out));
        out.lines().any(|l| l == "weft_config_current 1")
    }

    #[test]
    fn each_verdict_becomes_readiness_or_an_exit() {
        let (mut f, m) = follower();
        assert_eq!(f.observe(Some(RUNNING)), ConfigStep::Fine);
        assert!(current(&m));
        match f.observe(None) {
            ConfigStep::NotReady(why) => assert!(why.contains("/coreos.com/network/config was deleted"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!current(&m));
        match f.observe(Some("{\"Network\":")) {
            ConfigStep::NotReady(why) => assert!(why.contains("is invalid now"), "{why}"),
            other => panic!("{other:?}"),
        }
        let narrower = r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.9.0","Backend":{"Type":"vxlan"}}"#;
        assert_eq!(f.observe(Some(narrower)), ConfigStep::Fine);
        assert!(current(&m));
        match f.observe(Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#)) {
            ConfigStep::Restart(why) => {
                assert!(why.contains("Backend.Type vxlan -> udp") && why.contains("exiting"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!current(&m));
    }
}
