//! The lab benchmark: one run measures the bare underlay, host-gw, vxlan,
//! and udp with and without offloads, on a 2-node lab, so that the figures
//! compare as ratios taken under the same conditions.
//!
//! Per case: pod-to-pod TCP throughput (iperf3, 1 and 2 streams), RTT
//! (ping: average and p99; and p50/p99 of pings every 10 ms during the
//! 1-stream run, latency under load), the rate of 64-byte UDP packets received
//! (iperf3 -u -l 64), and the daemons' CPU seconds per gigabit during the
//! 1-stream run; for the bare underlay also a userspace UDP echo's RTT,
//! what wake-ups cost on the machine (see `echo.rs`). For every case, how
//! many of the machine's CPUs were busy during the TCP runs (its CPU cost
//! per byte, whoever spends it); for udp, how often its forwarding threads
//! were woken per ping and per MB (`procfs.rs`). Prints a table, writes
//! JSON and SVG charts.
//!
//! The `-v6` cases measure the same over IPv6 on a dual-stack network
//! (pods' IPv6 addresses; the underlay's for `underlay-v6`).
//!
//! With `--scale N,...`: the control-plane case as well (see `scale.rs`).
//!
//! `scripts/bench.sh [--seconds N] [--out FILE] [--only CASE,...] [--scale N,...] [--hold]`

mod charts;
mod echo;
mod procfs;
mod scale;
mod summary;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::json;
use weft_lab::wggo::WireguardGo;
use weft_lab::{netns, Lab};

struct Case {
    name: &'static str,
    /// Network config, or None for the bare underlay.
    config: Option<&'static str>,
    /// Measure over IPv6 (the pods' or the underlay's IPv6 addresses).
    v6: bool,
}

const CASES: &[Case] = &[
    Case { name: "underlay", config: None, v6: false },
    Case { name: "host-gw", config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#), v6: false },
    Case { name: "vxlan", config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#), v6: false },
    Case { name: "udp", config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#), v6: false },
    Case {
        name: "udp-no-offload",
        config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Offload":false}}"#),
        v6: false,
    },
    Case {
        name: "udp-realtime",
        config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","RealtimeThreads":true}}"#),
        v6: false,
    },
    Case {
        name: "udp-no-lane",
        config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","LatencyLane":false}}"#),
        v6: false,
    },
    Case {
        name: "wireguard",
        config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#),
        v6: false,
    },
    Case {
        name: "wireguard-no-lane",
        config: Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","LatencyLane":false}}"#),
        v6: false,
    },
    // The anchor: wireguard-go on both nodes, configured as flanneld
    // configures its kernel device (no weft): bookworm-backports' build
    // (0.0.20231211, with TUN and UDP offloads: today's fastest userspace
    // WireGuard), which scripts/bench.sh unpacks under target/.
    Case { name: "wireguard-go", config: None, v6: false },
    // And Debian 12's own build (0.0.20220316, no offloads).
    Case { name: "wireguard-go-2022", config: None, v6: false },
    // And cloudflare's boringtun-cli, if scripts/bench.sh could build it.
    Case { name: "boringtun", config: None, v6: false },
    // Dual-stack networks, measured pod to pod over IPv6.
    Case { name: "underlay-v6", config: None, v6: true },
    Case { name: "host-gw-v6", config: Some(DUAL_HOSTGW), v6: true },
    Case { name: "vxlan-v6", config: Some(DUAL_VXLAN), v6: true },
    Case { name: "udp-v6", config: Some(DUAL_UDP), v6: true },
];

const DUAL_UDP: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"udp"}}"#;

const DUAL_HOSTGW: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"host-gw"}}"#;
const DUAL_VXLAN: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;

#[derive(Debug, Default, Clone)]
struct Figures {
    tcp1_gbps: f64,
    tcp2_gbps: f64,
    rtt_avg_us: f64,
    rtt_p99_us: f64,
    /// Ping RTT while the 1-stream TCP run loads the path.
    loaded_p50_us: f64,
    loaded_p99_us: f64,
    udp64_kpps: f64,
    cpu_s_per_gbit: Option<f64>,
    /// Busy fraction of each forwarding thread during the 1-stream run.
    threads: Vec<(String, f64)>,
    /// Underlay only: a userspace UDP echo's RTT average (see `echo`).
    echo_avg_us: Option<f64>,
    /// Busy CPUs of the whole machine during the 1-stream run: both pods,
    /// both nodes' kernels and daemons; the CPU cost of the case per byte.
    busy_cpus: f64,
    /// The same during the 2-stream run.
    busy_cpus_tcp2: f64,
    /// udp only: times the forwarding threads slept (and were woken) per
    /// ping of the idle RTT run, and per GB of the 1-stream run.
    sleeps_per_ping: Option<f64>,
    sleeps_per_gb: Option<f64>,
    /// Ping RTT while a busy loop runs on every CPU (pods that compute).
    busy_p50_us: f64,
    busy_p99_us: f64,
}

impl Figures {
    /// The machine's CPU-seconds per GB moved in the 1-stream run.
    pub(crate) fn cpu_s_per_gb(&self) -> f64 {
        per_gb(self.busy_cpus, self.tcp1_gbps)
    }

    /// The same in the 2-stream run.
    pub(crate) fn cpu_s_per_gb_tcp2(&self) -> f64 {
        per_gb(self.busy_cpus_tcp2, self.tcp2_gbps)
    }
}

/// CPU-seconds per GB of `busy` CPUs moving `gbps` Gbit/s.
fn per_gb(busy: f64, gbps: f64) -> f64 {
    busy / (gbps / 8.0).max(1e-9)
}

/// Where iperf3/ping run from and to: pods, or the nodes themselves.
struct Ends {
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

fn iperf(ends: &Ends, args: &[&str]) -> Result<serde_json::Value> {
    weft_lab::iperf::client(&ends.client_ns, &ends.server_ip, args)
}

fn measure(ends: &Ends, secs: u32, daemons: &[u32]) -> Result<Figures> {
    let t = secs.to_string();
    let cpus = procfs::cpus();
    let mut f = Figures::default();
    let before: u64 = daemons.iter().map(|p| procfs::cpu_ticks(*p)).sum();
    let threads_before: Vec<_> = daemons.iter().map(|p| procfs::thread_ticks(*p)).collect();
    let machine_before = procfs::machine_ticks();
    let sleeps_before = procfs::forwarding_sleeps(daemons);
    // Latency under load: pings every 10 ms while the bulk stream runs.
    let pinger = netns::exec(&ends.client_ns, "ping")
        .args(["-n", "-i", "0.01", "-W", "1", "-w", &t, &ends.server_ip])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let one = iperf(ends, &["-t", &t])?;
    let loaded = rtts_us(&pinger.wait_with_output()?.stdout);
    f.loaded_p50_us = percentile(&loaded, 0.50);
    f.loaded_p99_us = percentile(&loaded, 0.99);
    let after: u64 = daemons.iter().map(|p| procfs::cpu_ticks(*p)).sum();
    f.busy_cpus = procfs::busy_cpus(machine_before, procfs::machine_ticks(), cpus);
    let sleeps = procfs::forwarding_sleeps(daemons).saturating_sub(sleeps_before);
    for (i, (p, tb)) in daemons.iter().zip(threads_before).enumerate() {
        for (name, ticks) in procfs::thread_ticks(*p) {
            let was = tb.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or(0);
            if name.starts_with("weft-") && ticks > was {
                f.threads.push((format!("node{}:{name}", i + 1), (ticks - was) as f64 / 100.0 / f64::from(secs)));
            }
        }
    }
    let bps = one["end"]["sum_received"]["bits_per_second"].as_f64().context("tcp1 bps")?;
    let secs_measured = one["end"]["sum_received"]["seconds"].as_f64().unwrap_or(f64::from(secs));
    f.tcp1_gbps = bps / 1e9;
    if !daemons.is_empty() {
        // clock ticks are 1/100 s on Linux
        let cpu_s = (after - before) as f64 / 100.0;
        f.cpu_s_per_gbit = Some(cpu_s / (bps * secs_measured / 1e9));
    }
    if !f.threads.is_empty() {
        f.sleeps_per_gb = Some(sleeps as f64 / (bps * secs_measured / 8e9));
    }
    let machine_before = procfs::machine_ticks();
    let two = iperf(ends, &["-t", &t, "-P", "2"])?;
    f.busy_cpus_tcp2 = procfs::busy_cpus(machine_before, procfs::machine_ticks(), cpus);
    f.tcp2_gbps = two["end"]["sum_received"]["bits_per_second"].as_f64().context("tcp2 bps")? / 1e9;
    let udp = iperf(ends, &["-t", &t, "-u", "-l", "64", "-b", "0"])?;
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(f64::from(secs)).max(0.001);
    f.udp64_kpps = (packets - lost).max(0.0) / seconds / 1e3;

    let sleeps_before = procfs::forwarding_sleeps(daemons);
    let out = netns::exec(&ends.client_ns, "ping")
        .args(["-n", "-c", "500", "-i", "0.002", "-W", "1", &ends.server_ip])
        .output()?;
    let rtts = rtts_us(&out.stdout);
    if rtts.is_empty() {
        bail!("ping to {} got no answers", ends.server_ip);
    }
    if !f.threads.is_empty() {
        let slept = procfs::forwarding_sleeps(daemons).saturating_sub(sleeps_before);
        f.sleeps_per_ping = Some(slept as f64 / rtts.len() as f64);
    }
    f.rtt_avg_us = rtts.iter().sum::<f64>() / rtts.len() as f64;
    f.rtt_p99_us = percentile(&rtts, 0.99);
    let busy = with_busy_cpus(cpus, || {
        netns::exec(&ends.client_ns, "ping")
            .args(["-n", "-c", "300", "-i", "0.005", "-W", "1", &ends.server_ip])
            .output()
    })?;
    let busy = rtts_us(&busy.stdout);
    f.busy_p50_us = percentile(&busy, 0.50);
    f.busy_p99_us = percentile(&busy, 0.99);
    Ok(f)
}

/// Run `f` while one thread per CPU spins, as pods that compute would keep
/// a node's CPUs busy.
fn with_busy_cpus<T>(cpus: usize, f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..cpus {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// The round-trip times (µs) in ping's output, sorted.
fn rtts_us(stdout: &[u8]) -> Vec<f64> {
    let mut rtts: Vec<f64> = String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    rtts.sort_by(|a, b| a.total_cmp(b));
    rtts
}

/// The `q` quantile of sorted `v` (0 when empty).
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn ratios_json(r: &summary::Ratios) -> serde_json::Value {
    json!({
        "tcp_1_stream": r.tcp1,
        "tcp_2_streams": r.tcp2,
        "rtt_over_vxlan_us": r.rtt_over_us,
        "udp_64b": r.udp64,
        "wakeup_floor_us": r.floor_us,
        "machine_cpu_per_gb_tcp1": r.cpu_per_gb,
        "cpus_for_0_9x_tcp1": r.cpus_for_target,
        "cpus_for_0_9x_tcp2": r.cpus_for_target2,
    })
}

/// One case's row of the table (and its detail lines).
fn print_row(name: &str, f: &Figures) {
    println!(
        "{:<16} {:>10.2} {:>10.2} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>11.0} {:>12}",
        name,
        f.tcp1_gbps,
        f.tcp2_gbps,
        f.rtt_avg_us,
        f.rtt_p99_us,
        f.loaded_p50_us,
        f.loaded_p99_us,
        f.udp64_kpps,
        f.cpu_s_per_gbit.map(|c| format!("{c:.3}")).unwrap_or_else(|| "-".into())
    );
    if let Some(e) = f.echo_avg_us {
        println!(
            "{:<16}   userspace UDP echo: {e:.0} us avg (ping {:.0}): its two wake-ups cost {:.0} us",
            "",
            f.rtt_avg_us,
            e - f.rtt_avg_us
        );
    }
    if f.busy_cpus > 0.0 {
        println!(
            "{:<16}   machine: {:.2} CPUs busy, {:.2} CPU-s per GB during tcp1; {:.2} busy, {:.2} CPU-s per GB during tcp2",
            "",
            f.busy_cpus,
            f.cpu_s_per_gb(),
            f.busy_cpus_tcp2,
            f.cpu_s_per_gb_tcp2()
        );
    }
    println!(
        "{:<16}   with a busy loop on every CPU: ping p50 {:.0} us, p99 {:.0} us",
        "", f.busy_p50_us, f.busy_p99_us
    );
    for (t, busy) in &f.threads {
        println!("{:<16}   {t}: {:.0}% busy during tcp1", "", busy * 100.0);
    }
    if let (Some(ping), Some(gb)) = (f.sleeps_per_ping, f.sleeps_per_gb) {
        println!(
            "{:<16}   forwarding threads woken {ping:.1} times per ping, {:.0} per MB during tcp1",
            "",
            gb / 1000.0
        );
    }
}

/// Where scripts/bench.sh installs boringtun-cli (`cargo install`).
const BORINGTUN: &str = "target/boringtun-cli/bin/boringtun-cli";

/// Where scripts/bench.sh unpacks bookworm-backports' wireguard-go.
const WIREGUARD_GO_BACKPORTS: &str = "target/wireguard-go-backports/usr/bin/wireguard-go";

/// The WireGuard implementation of an anchor case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// bookworm-backports' wireguard-go (offloads).
    WireguardGo,
    /// Debian 12's wireguard-go, on the PATH.
    WireguardGo2022,
    BoringtunCli,
}

impl Anchor {
    fn of(case: &str) -> Option<Anchor> {
        match case {
            "wireguard-go" => Some(Anchor::WireguardGo),
            "wireguard-go-2022" => Some(Anchor::WireguardGo2022),
            "boringtun" => Some(Anchor::BoringtunCli),
            _ => None,
        }
    }
}

/// Both nodes on wireguard-go (or on boringtun-cli), each with a pod: the
/// anchors the wireguard backend is measured against.
fn wireguard_go_nodes(lab: &mut Lab, anchor: Anchor) -> Result<(Vec<WireguardGo>, Ends)> {
    let network: Ipv4Net = "10.244.0.0/16".parse()?;
    let subnets: [Ipv4Net; 2] = ["10.244.150.0/24".parse()?, "10.244.151.0/24".parse()?];
    let mut nodes = Vec::new();
    for i in 1..=2u8 {
        let dir = lab.node(i).subnet_file.parent().context("node dir")?.to_path_buf();
        let dev = format!("wgb{i}-{}", std::process::id() % 100_000);
        let ns = lab.node(i).ns.clone();
        nodes.push(match anchor {
            Anchor::BoringtunCli => {
                let program = std::path::Path::new(BORINGTUN);
                if !program.is_file() {
                    bail!("{BORINGTUN} is missing: scripts/bench.sh installs it (cargo install --locked boringtun-cli --root target/boringtun-cli)");
                }
                WireguardGo::start_boringtun(program, &ns, &dev, &dir)?
            }
            Anchor::WireguardGo => {
                let program = std::path::Path::new(WIREGUARD_GO_BACKPORTS);
                if !program.is_file() {
                    bail!("{WIREGUARD_GO_BACKPORTS} is missing: scripts/bench.sh unpacks bookworm-backports' wireguard-go there");
                }
                WireguardGo::start_program(program, &ns, &dev, &dir)?
            }
            Anchor::WireguardGo2022 => WireguardGo::start(&ns, &dev, &dir)?,
        });
    }
    // flanneld's MTU for it: the underlay's less 80.
    let mtu = 1500 - 80;
    for i in 0..2 {
        let other = 1 - i;
        let endpoint = SocketAddr::from((lab.node(other as u8 + 1).underlay_ip, weft_lab::wggo::PORT));
        nodes[i].add_peer(&nodes[other].public_key, endpoint, subnets[other])?;
        nodes[i].set_up(subnets[i], mtu, network)?;
        lab.write_subnet_env(i as u8 + 1, network, subnets[i], mtu)?;
        lab.attach_pod(i as u8 + 1)?;
    }
    let dst = lab.node(2).pod_ip.context("pod")?;
    weft_lab::wait_until("pods to reach each other over wireguard-go", Duration::from_secs(10), || {
        lab.ping_once(1, dst).then_some(())
    })?;
    let ends = Ends {
        client_ns: lab.node(1).pod_ns.clone(),
        server_ns: lab.node(2).pod_ns.clone(),
        server_ip: dst.to_string(),
    };
    Ok((nodes, ends))
}

fn run_case(case: &Case, weft: &PathBuf, secs: u32, hold: bool) -> Result<Figures> {
    let mut lab = Lab::new(2, weft)?;
    let mut _anchor = Vec::new();
    let (ends, daemons) = match case.config {
        None if Anchor::of(case.name).is_some() => {
            let (nodes, ends) = wireguard_go_nodes(&mut lab, Anchor::of(case.name).context("anchor")?)?;
            let pids = nodes.iter().map(WireguardGo::pid).collect();
            _anchor = nodes;
            (ends, pids)
        }
        None => {
            let server = lab.node(2);
            let ends = Ends {
                client_ns: lab.node(1).ns.clone(),
                server_ns: server.ns.clone(),
                server_ip: if case.v6 { server.underlay_ip6.to_string() } else { server.underlay_ip.to_string() },
            };
            (ends, vec![])
        }
        Some(config) => {
            lab.put_config(config)?;
            for i in 1..=2 {
                lab.start_daemon(i, &[])?;
            }
            for i in 1..=2 {
                lab.wait_ready(i, Duration::from_secs(30))?;
                lab.attach_pod(i)?;
            }
            let dst = lab.node(2).pod_ip.context("pod")?;
            // Until the peers know each other.
            weft_lab::wait_until("pods to reach each other", Duration::from_secs(10), || {
                lab.ping_once(1, dst).then_some(())
            })?;
            let server_ip = if case.v6 {
                let dst6 = lab.node(2).pod_ip6.context("the pod has no IPv6 address")?;
                weft_lab::wait_until("pods to reach each other over IPv6", Duration::from_secs(10), || {
                    lab.ping6_once(1, dst6).then_some(())
                })?;
                dst6.to_string()
            } else {
                dst.to_string()
            };
            let ends = Ends { client_ns: lab.node(1).pod_ns.clone(), server_ns: lab.node(2).pod_ns.clone(), server_ip };
            (ends, (1..=2).filter_map(|i| lab.daemon_pid(i)).collect())
        }
    };
    let echo = match case.config {
        None if !case.v6 && case.name == "underlay" => {
            let rtts = echo::udp_echo_rtts_us(&ends.client_ns, &ends.server_ns, lab.node(2).underlay_ip, 500)?;
            Some(rtts.iter().sum::<f64>() / rtts.len() as f64)
        }
        _ => None,
    };
    let _server = weft_lab::iperf::Server::start(&ends.server_ns, &ends.server_ip)?;
    if hold {
        // For profiling and experiments by hand: the lab stays up until Enter.
        println!(
            "{}: lab up; client namespace {}, server namespace {} ({}), daemons {:?}; press Enter to tear it down",
            case.name, ends.client_ns, ends.server_ns, ends.server_ip, daemons
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    Ok(Figures { echo_avg_us: echo, ..measure(&ends, secs, &daemons)? })
}

fn main() -> Result<()> {
    let mut secs = 5u32;
    let mut out = PathBuf::from("target/bench.json");
    let mut only: Option<Vec<String>> = None;
    let mut scales: Vec<u32> = Vec::new();
    let mut hold = false;
    let mut repeat = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => secs = args.next().context("--seconds N")?.parse()?,
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--only" => only = Some(args.next().context("--only CASE,...")?.split(',').map(String::from).collect()),
            "--scale" => {
                scales = args
                    .next()
                    .context("--scale N,...")?
                    .split(',')
                    .map(|n| n.parse().with_context(|| format!("--scale: {n:?} is not a lease count")))
                    .collect::<Result<_>>()?
            }
            "--hold" => hold = true,
            "--repeat" => {
                repeat = args.next().context("--repeat N")?.parse().context("--repeat: a number of rounds")?;
                if repeat == 0 {
                    bail!("--repeat: at least 1 round");
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--seconds N] [--out FILE] [--only underlay,host-gw,vxlan,udp,udp-no-offload,udp-realtime,udp-no-lane,wireguard,wireguard-no-lane,wireguard-go,wireguard-go-2022,boringtun|none] [--scale 5000,20000,65433] [--repeat N] [--hold]\n\n\
                     --repeat N  run the cases N times, interleaved; ratios per round and their medians, charts and JSON from each figure's median\n\
                     --hold  keep each case's lab up (its namespaces printed) until Enter, then measure it"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    let weft = weft_lab::weft_next_to_example()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpus = procfs::cpus();
    println!("weft lab benchmark: kernel {kernel}, {cpus} CPUs, {secs} s per iperf3 run, 2 nodes");
    println!();
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>11} {:>12}",
        "case",
        "tcp1 Gb/s",
        "tcp2 Gb/s",
        "rtt avg us",
        "rtt p99 us",
        "load p50 us",
        "load p99 us",
        "udp64 kpps",
        "cpu s/Gbit"
    );
    let mut rounds: Vec<Vec<(&str, Figures)>> = Vec::new();
    for round in 1..=repeat {
        let mut results = Vec::new();
        for case in CASES {
            if let Some(only) = &only {
                if !only.iter().any(|o| o == case.name) {
                    continue;
                }
            }
            let name = if repeat > 1 { format!("{} #{round}", case.name) } else { case.name.to_string() };
            match run_case(case, &weft, secs, hold) {
                Ok(f) => {
                    print_row(&name, &f);
                    results.push((case.name, f));
                }
                Err(e) => println!("{name:<16} failed: {e:#}"),
            }
        }
        rounds.push(results);
    }
    let all_ratios: Vec<summary::Ratios> = rounds.iter().filter_map(|r| summary::Ratios::of(r)).collect();
    if !all_ratios.is_empty() {
        println!();
    }
    for (i, r) in all_ratios.iter().enumerate() {
        r.print(&if repeat > 1 { format!("round {}", i + 1) } else { "this run".into() });
    }
    if all_ratios.len() > 1 {
        if let Some(m) = summary::Ratios::median(&all_ratios) {
            m.print(&format!("median of {} rounds", all_ratios.len()));
        }
    }
    // Each case's figures: the median over the rounds.
    let results: Vec<(&str, Figures)> = CASES
        .iter()
        .filter_map(|c| {
            let runs: Vec<Figures> = rounds.iter().filter_map(|r| summary::find(r, c.name).cloned()).collect();
            Some((c.name, summary::median_figures(&runs)?))
        })
        .collect();
    if let (Some(u), Some(p)) = (summary::find(&results, "udp"), summary::find(&results, "udp-no-offload")) {
        println!("udp with offloads vs without: tcp1 {:.1}x", u.tcp1_gbps / p.tcp1_gbps);
    }
    let mut scale_results = Vec::new();
    if !scales.is_empty() {
        println!();
        println!(
            "{:<10} {:<10} {:>14} {:>14} {:>8} {:>8} {:>12}",
            "backend", "leases", "programmed s", "+100 s", "RSS MB", "CPU s", "idle CPU"
        );
    }
    for n in scales {
        for backend in ["vxlan", "wireguard"] {
            match scale::run(&weft, backend, n) {
                Ok(s) => {
                    println!(
                        "{:<10} {:<10} {:>14.2} {:>14.3} {:>8.0} {:>8.1} {:>12.3}",
                        s.backend, s.leases, s.programmed_s, s.add_100_s, s.rss_mb, s.cpu_s, s.idle_cpu
                    );
                    scale_results.push(s);
                }
                Err(e) => println!("{backend:<10} {n:<10} failed: {e:#}"),
            }
        }
    }
    let json = json!({
        "kernel": kernel,
        "cpus": cpus,
        "seconds_per_run": secs,
        "rounds": repeat,
        "udp_vs_vxlan": all_ratios.iter().map(ratios_json).collect::<Vec<_>>(),
        "udp_vs_vxlan_median": summary::Ratios::median(&all_ratios).as_ref().map(ratios_json),
        "cases": results.iter().map(|(name, f)| json!({
            "case": name,
            "tcp_1_stream_gbps": f.tcp1_gbps,
            "tcp_2_streams_gbps": f.tcp2_gbps,
            "rtt_avg_us": f.rtt_avg_us,
            "rtt_p99_us": f.rtt_p99_us,
            "rtt_under_load_p50_us": f.loaded_p50_us,
            "rtt_under_load_p99_us": f.loaded_p99_us,
            "rtt_busy_cpus_p50_us": f.busy_p50_us,
            "rtt_busy_cpus_p99_us": f.busy_p99_us,
            "udp_64b_kpps_received": f.udp64_kpps,
            "daemon_cpu_s_per_gbit": f.cpu_s_per_gbit,
            "udp_echo_avg_us": f.echo_avg_us,
            "machine_busy_cpus_tcp1": f.busy_cpus,
            "machine_cpu_s_per_gb_tcp1": f.cpu_s_per_gb(),
            "machine_busy_cpus_tcp2": f.busy_cpus_tcp2,
            "machine_cpu_s_per_gb_tcp2": f.cpu_s_per_gb_tcp2(),
            "forwarding_wakeups_per_ping": f.sleeps_per_ping,
            "forwarding_wakeups_per_gb_tcp1": f.sleeps_per_gb,
            "forwarding_thread_busy_tcp1": f.threads.iter().map(|(t, b)| json!({"thread": t, "busy": b})).collect::<Vec<_>>(),

        })).collect::<Vec<_>>(),
        "scale": scale_results.iter().map(|s| json!({
            "backend": s.backend,
            "leases": s.leases,
            "programmed_s": s.programmed_s,
            "add_100_s": s.add_100_s,
            "rss_mb": s.rss_mb,
            "cpu_s": s.cpu_s,
            "idle_cpu_per_s": s.idle_cpu,
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("\nwrote {}", out.display());
    for chart in write_charts(&out, &results, &scale_results)? {
        println!("wrote {}", chart.display());
    }
    Ok(())
}

/// The charts next to the JSON (`bench.json` -> `bench-throughput.svg`, ...).
fn write_charts(
    out: &std::path::Path,
    results: &[(&str, Figures)],
    scale: &[scale::ScaleFigures],
) -> Result<Vec<PathBuf>> {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
    let path = |what: &str| out.with_file_name(format!("{stem}-{what}.svg"));
    let mut written = Vec::new();
    if !results.is_empty() {
        let cases: Vec<&str> = results.iter().map(|(c, _)| *c).collect();
        let col = |f: fn(&Figures) -> f64| results.iter().map(|(_, r)| f(r)).collect::<Vec<f64>>();
        let p = path("throughput");
        charts::bars(
            &p,
            "Pod-to-pod TCP throughput (iperf3)",
            "Gbit/s",
            &cases,
            &[("1 stream", col(|f| f.tcp1_gbps)), ("2 streams", col(|f| f.tcp2_gbps))],
            false,
        )?;
        written.push(p);
        let p = path("rtt");
        charts::bars(
            &p,
            "Pod-to-pod ping RTT: idle, under a TCP stream, with busy CPUs (log scale)",
            "microseconds",
            &cases,
            &[
                ("idle avg", col(|f| f.rtt_avg_us)),
                ("idle p99", col(|f| f.rtt_p99_us)),
                ("loaded p50", col(|f| f.loaded_p50_us)),
                ("loaded p99", col(|f| f.loaded_p99_us)),
                ("busy CPUs p99", col(|f| f.busy_p99_us)),
            ],
            true,
        )?;
        written.push(p);
        let p = path("udp64");
        charts::bars(
            &p,
            "64-byte UDP packets received",
            "kpps",
            &cases,
            &[("received", col(|f| f.udp64_kpps))],
            false,
        )?;
        written.push(p);
    }
    if !scale.is_empty() {
        let p = path("scale");
        // flanneld v0.20.2 on the same kind of lab (issue 10's figures; at
        // 65,434 leases it had not finished after 120 s).
        let flanneld = vec![(5000.0, 3.01), (20000.0, 16.9)];
        charts::lines(
            &p,
            "Time from start until every lease's peer is programmed",
            "leases",
            "seconds",
            &[
                (
                    "weft",
                    scale
                        .iter()
                        .filter(|s| s.backend == "vxlan")
                        .map(|s| (f64::from(s.leases), s.programmed_s))
                        .collect(),
                ),
                (
                    "weft, wireguard",
                    scale
                        .iter()
                        .filter(|s| s.backend == "wireguard")
                        .map(|s| (f64::from(s.leases), s.programmed_s))
                        .collect(),
                ),
                ("flanneld v0.20.2 (reference)", flanneld),
            ],
        )?;
        written.push(p);
    }
    Ok(written)
}
