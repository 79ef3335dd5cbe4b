//! The weft demo: a 3-node lab in network namespaces (an underlay switch, a
//! real etcd, three nodes running `weft run`, a pod behind each wired by
//! weft's CNI plugin with Debian's `bridge` and `host-local`), then
//! `weft leases`, a ping matrix between the pods and a short iperf3 figure.
//! Everything is torn down at the end.
//!
//! Run it with `scripts/demo.sh [--backend vxlan|host-gw|udp|wireguard] [--nodes N]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_lab::Lab;

struct Args {
    backend: String,
    nodes: u8,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { backend: "vxlan".into(), nodes: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => args.backend = it.next().context("--backend needs a value")?,
            "--nodes" => args.nodes = it.next().context("--nodes needs a value")?.parse().context("--nodes")?,
            "-h" | "--help" => {
                println!("usage: demo [--backend vxlan|host-gw|udp|wireguard] [--nodes N (2-9)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if !["vxlan", "host-gw", "udp", "wireguard"].contains(&args.backend.as_str()) {
        bail!("--backend must be vxlan, host-gw, udp or wireguard");
    }
    if !(2..=9).contains(&args.nodes) {
        bail!("--nodes must be between 2 and 9");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let weft = weft_lab::weft_next_to_example()?;
    let n = args.nodes;
    println!("== building the lab: switch, etcd and {n} nodes in network namespaces");
    let mut lab = Lab::new(n, &weft)?;
    let config = format!(r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{{"Type":"{}"}}}}"#, args.backend);
    println!("$ weft config put -   <<< {config}");
    lab.put_config(&config)?;

    println!("\n== starting `weft run` on every node ({} backend)", args.backend);
    let started = Instant::now();
    for i in 1..=n {
        lab.start_daemon(i, &[])?;
    }
    for i in 1..=n {
        lab.wait_ready(i, Duration::from_secs(30))?;
        let pod = lab.attach_pod(i)?;
        let (subnet, _, mtu) = lab.subnet_env(i)?;
        println!(
            "   node {i} ({}) leased {subnet}, MTU {mtu}; pod at {pod} (weft-cni: bridge + host-local)",
            lab.node(i).underlay_ip
        );
    }
    println!("   all nodes ready in {:.1} s", started.elapsed().as_secs_f64());

    println!("\n$ weft leases");
    let out = lab.weft(&["leases"], None)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("\n== ping matrix (pod -> pod, average RTT)");
    print!("{:>8}", "");
    for j in 1..=n {
        print!("{:>12}", format!("pod {j}"));
    }
    println!();
    let mut failures = 0;
    for i in 1..=n {
        print!("{:>8}", format!("pod {i}"));
        for j in 1..=n {
            if i == j {
                print!("{:>12}", "-");
                continue;
            }
            let dst = lab.node(j).pod_ip.context("pod")?;
            // The first ping may race a peer that has only just joined.
            let mut cell = "unreachable".to_string();
            for _ in 0..3 {
                let out = lab.ping(i, dst, 3, "0.2")?;
                if out.status.success() {
                    cell = avg_rtt(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|| "ok".into());
                    break;
                }
            }
            if cell == "unreachable" {
                failures += 1;
            }
            print!("{cell:>12}");
        }
        println!();
    }

    println!("\n== iperf3, pod 1 -> pod 2, 3 seconds");
    match iperf(&lab) {
        Ok(gbps) => println!("   {gbps:.2} Gbit/s"),
        Err(e) => println!("   iperf3 failed: {e:#}"),
    }

    println!("\n== tearing the lab down");
    drop(lab);
    if failures > 0 {
        bail!("{failures} pod pairs could not reach each other");
    }
    println!("done");
    Ok(())
}

fn avg_rtt(ping: &str) -> Option<String> {
    // "rtt min/avg/max/mdev = 0.051/0.062/0.075/0.010 ms"
    let stats = ping.lines().find(|l| l.contains("min/avg/max"))?;
    let avg = stats.split('=').nth(1)?.trim().split('/').nth(1)?;
    Some(format!("{avg} ms"))
}

fn iperf(lab: &Lab) -> Result<f64> {
    let dst = lab.node(2).pod_ip.context("pod")?.to_string();
    let _server = weft_lab::iperf::Server::start(&lab.node(2).pod_ns, &dst)?;
    let report = weft_lab::iperf::client(&lab.node(1).pod_ns, &dst, &["-t", "3"])?;
    weft_lab::iperf::tcp_gbps(&report)
}
