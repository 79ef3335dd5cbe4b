//! The weft demo: starts a throwaway etcd on loopback, writes a network
//! config with `weft config put`, lets three nodes lease subnets through the
//! subnet manager, and shows the result with `weft leases`.
//!
//! Run it with `scripts/demo.sh` (which installs what is needed and builds).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weft_lab::EtcdServer;
use weft_subnet::{acquire_lease, AcquireRequest, EtcdOptions, LeaseAttrs, Registry};

const CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#;

fn weft_bin() -> Result<PathBuf> {
    // examples live in target/<profile>/examples; the binary one level up.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("weft"))
        .context("locating the weft binary")?;
    if !bin.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release --bin weft`",
            bin.display()
        );
    }
    Ok(bin)
}

fn weft(bin: &PathBuf, etcd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    println!("$ weft {}", args.join(" "));
    let mut child = Command::new(bin)
        .arg("--etcd-endpoints")
        .arg(etcd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("weft {} failed with {}", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok(text)
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = weft_bin()?;
    println!("== starting a throwaway etcd on loopback");
    let etcd = EtcdServer::start()?;
    let ep = etcd.endpoint();
    println!("   etcd at {ep}\n");

    println!("== writing the network config");
    weft(&bin, &ep, &["config", "put", "-"], Some(CONFIG))?;
    weft(&bin, &ep, &["config", "get"], None)?;

    println!("\n== three nodes lease a subnet each");
    let registry = Registry::connect(EtcdOptions::new(vec![ep.clone()])).await?;
    let config = registry.get_config().await?;
    for i in 1..=3u8 {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::new(198, 18, 0, i),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(
                serde_json::json!({"VNI": 1, "VtepMAC": format!("0e:00:00:00:00:0{i}")}),
            ),
            backend_v6_data: None,
        };
        let req = AcquireRequest {
            attrs,
            ttl: Duration::from_secs(24 * 3600),
            previous_subnet: None,
        };
        let lease = acquire_lease(&registry, &config, &req).await?;
        println!("   node 198.18.0.{i} leased {}", lease.subnet);
    }

    println!();
    weft(&bin, &ep, &["leases"], None)?;
    println!();
    weft(&bin, &ep, &["leases", "--json"], None)?;
    println!("\n== done; stopping etcd and removing its data");
    drop(etcd);
    Ok(())
}
