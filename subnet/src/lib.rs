//! weft-subnet: the control-plane core of weft, compatible with flanneld.
//!
//! Everything a node needs to know about *who holds which pod subnet*:
//!
//! | module       | what it holds                                                        |
//! |--------------|----------------------------------------------------------------------|
//! | [`config`]   | the network config (`<prefix>/config`): parsing, defaults, validation |
//! | [`config_change`] | what a config changed while running means: same, applies, restart |
//! | [`lease`]    | the lease model, its JSON (flannel's `LeaseAttrs`) and key naming     |
//! | [`choose`]   | picking a free subnet from `[SubnetMin, SubnetMax]` (pure)            |
//! | [`etcd`]     | connecting to etcd: endpoints, TLS, timeouts                          |
//! | [`registry`] | the etcd adapter: read/write config, list, create, renew, delete      |
//! | [`acquire`]  | the acquire policy: reuse own lease, previous subnet, random free     |
//! | [`renew`]    | the renewal loop and what it reports about the node's own lease       |
//! | [`backoff`]  | capped exponential backoff with jitter for retries                  |
//! | [`watch`]    | list + watch with reconnect and compaction recovery -> lease events   |
//! | [`metrics`]  | etcd request timings, watch restarts, the own lease's state           |
//! | [`env_file`] | `subnet.env`, written atomically for the flannel CNI plugin           |
//! | [`error`]    | the crate's error type                                                |
//!
//! The pure parts (config, lease, choose, the watch diff) have no sockets and no
//! clock and are unit-tested directly; the etcd parts are tested against a real
//! etcd server in `tests/`.

mod acquire;
mod backoff;
mod choose;
mod config;
mod config_change;
mod env_file;
mod error;
mod etcd;
mod lease;
mod metrics;
mod registry;
mod renew;
mod watch;

pub use acquire::{acquire_lease, AcquireRequest};
pub use backoff::Backoff;
pub use config::{BackendConfig, NetworkConfig};
pub use config_change::{judge, ConfigVerdict};
pub use env_file::{previous_ipv6_subnet, previous_subnet, restore, withdraw, withdrawn_path, SubnetEnv};
pub use error::{ConfigError, Error, Result};
pub use etcd::{EtcdOptions, DEFAULT_ENDPOINT, DEFAULT_PREFIX};
pub use lease::{parse_subnet_key, subnet_key, BackendData, Lease, LeaseAttrs, MacAddr};
pub use metrics::Metrics;
pub use registry::{LostReason, NodeCheck, Registry, RenewOutcome};
pub use renew::Renewer;
pub use watch::{LeaseEvent, LeaseWatch};
