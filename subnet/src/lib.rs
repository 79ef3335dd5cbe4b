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

pub mod acquire;
pub mod backoff;
pub mod choose;
pub mod config;
pub mod config_change;
pub mod env_file;
pub mod error;
pub mod etcd;
pub mod lease;
pub mod metrics;
pub mod registry;
pub mod renew;
pub mod watch;

pub use acquire::{acquire_lease, AcquireRequest};
pub use config::{BackendConfig, NetworkConfig};
pub use error::{ConfigError, Error, Result};
pub use etcd::EtcdOptions;
pub use lease::{Lease, LeaseAttrs, MacAddr};
pub use registry::Registry;
pub use watch::{LeaseEvent, LeaseWatch};
