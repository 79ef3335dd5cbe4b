//! weft-lab: the test lab shared by the integration tests, the demo and the
//! benchmark.
//!
//! | module    | what it holds                                                    |
//! |-----------|------------------------------------------------------------------|
//! | [`etcd`]  | a real etcd server on free loopback ports, removed on drop        |
//! | [`capture`] | a packet capture on one interface of a namespace (AF_PACKET)   |
//! | [`proxy`] | a TCP proxy whose connections a test can cut, to fake an outage  |
//! | [`netns`] | network namespaces: create, exec in, enter from a thread, sweep   |
//! | [`lab`]   | the multi-node lab: switch, etcd, nodes running `weft run`, pods |
//! | [`iperf`] | iperf3 server and client between lab namespaces                  |
//! | [`peers`] | numbered fake vxlan peers (leases) for scale tests and the benchmark |
//! | [`systemd`] | nodes booted with systemd as PID 1 (nspawn), running the package |
//! | [`wait`]  | waiting for a condition with a deadline instead of sleeping      |
//! | [`wggo`]  | wireguard-go (Debian's or another build) on a node, as flanneld would |

pub mod capture;
pub mod cluster;
pub mod etcd;
pub mod iperf;
pub mod lab;
pub mod netns;
pub mod peers;
pub mod proxy;
pub mod raw;
pub mod systemd;
pub mod wait;
pub mod wggo;

pub use cluster::EtcdCluster;
pub use etcd::{EtcdServer, TlsFiles};
pub use lab::{underlay_ip6, Lab};
pub use proxy::TcpProxy;
pub use wait::{wait_until, wait_until_async};

/// The `weft` binary built alongside the running example
/// (`target/<profile>/examples/x` -> `target/<profile>/weft`).
pub fn weft_next_to_example() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("weft"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the weft binary next to {}", exe.display()))?;
    if !bin.is_file() {
        anyhow::bail!("{} not found; build it with `cargo build --release --bin weft`", bin.display());
    }
    Ok(bin)
}
