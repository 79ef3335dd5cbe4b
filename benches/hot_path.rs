//! Micro benchmarks of the udp backend's per-packet work: the receive-path
//! check, the TTL decrement, the route lookup and ICMP error building.
//! `cargo bench --bench hot_path`; the lab benchmark is `scripts/bench.sh`.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_dataplane::forward::packet::{build_icmp_error, check_inbound, checksum, decrement_ttl, IcmpError};
use weft_dataplane::forward::table::Snapshot;
use weft_dataplane::Peer;

fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 2, 2]);
    p[16..20].copy_from_slice(&[10, 244, 1, 2]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

fn per_packet(c: &mut Criterion) {
    let local = "10.244.1.0/24".parse().unwrap();
    let mut g = c.benchmark_group("per_packet");
    for len in [64usize, 1472] {
        let p = packet(len);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("check_inbound", len), &p, |b, p| {
            b.iter(|| check_inbound(black_box(p), &local))
        });
    }
    let mut p = packet(1472);
    g.bench_function("decrement_ttl", |b| {
        b.iter(|| {
            p[8] = 64;
            decrement_ttl(black_box(&mut p))
        })
    });
    let orig = packet(1472);
    let mut out = [0u8; 128];
    g.bench_function("build_icmp_error", |b| {
        b.iter(|| build_icmp_error(IcmpError::NetUnreachable, Ipv4Addr::new(10, 244, 1, 0), black_box(&orig), &mut out))
    });
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for peers in [3usize, 250, 4000] {
        let list: Vec<Peer> = (0..peers)
            .map(|i| {
                Peer::v4(
                    format!("10.{}.{}.0/24", 100 + i / 256, i % 256).parse().unwrap(),
                    Ipv4Addr::new(198, 18, (i / 256) as u8, (i % 256) as u8),
                    None,
                )
            })
            .collect();
        let table = Snapshot::new(&list, 8285);
        let dst = Ipv4Addr::new(10, 100 + ((peers - 1) / 256) as u8, ((peers - 1) % 256) as u8, 9);
        g.bench_with_input(BenchmarkId::from_parameter(peers), &dst, |b, dst| b.iter(|| table.lookup(black_box(*dst))));
    }
    g.finish();
}

criterion_group!(benches, per_packet, route_lookup);
criterion_main!(benches);
