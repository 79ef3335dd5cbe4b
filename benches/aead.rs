//! ChaCha20-Poly1305, sealing and opening one WireGuard data packet, in
//! three implementations: ring (boringtun's data path), RustCrypto's
//! `chacha20poly1305` (boringtun's handshake) and aws-lc-rs (AWS-LC,
//! BoringSSL's descendant, with its own assembly). The
//! cipher is 40 % of the wireguard backend's CPU per GB
//! (docs/benchmarks.md, "Where the CPU goes"); this says what another
//! implementation would save.
//!
//! `cargo bench --bench aead`

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::KeyInit;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// An MTU-sized pod packet (flannel-wg's MTU, 1420) and a small one.
const SIZES: [usize; 2] = [1420, 128];

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn seal(c: &mut Criterion) {
    let key = [7u8; 32];
    let mut g = c.benchmark_group("chacha20poly1305_seal");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let mut buf = vec![0x5au8; size];
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let n = Nonce::assume_unique_for_key(nonce(counter));
                ring_key.seal_in_place_separate_tag(n, Aad::empty(), &mut buf).unwrap()
            })
        });
        let aws = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &key).unwrap(),
        );
        g.bench_with_input(BenchmarkId::new("aws-lc-rs", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
                aws.seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::empty(), &mut buf).unwrap()
            })
        });
        let rc = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        g.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                rc.encrypt_in_place_detached((&nonce(counter)).into(), &[], &mut buf).unwrap()
            })
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let key = [7u8; 32];
    let mut g = c.benchmark_group("chacha20poly1305_open");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let plain = vec![0x5au8; size];
        let mut sealed = plain.clone();
        let tag = ring_key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce(1)), Aad::empty(), &mut sealed)
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        let mut buf = sealed.clone();
        g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                let n = Nonce::assume_unique_for_key(nonce(1));
                ring_key.open_in_place(n, Aad::empty(), &mut buf).unwrap().len()
            })
        });
        let aws = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &key).unwrap(),
        );
        g.bench_with_input(BenchmarkId::new("aws-lc-rs", size), &size, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(1));
                aws.open_in_place(n, aws_lc_rs::aead::Aad::empty(), &mut buf).unwrap().len()
            })
        });
        let rc = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        g.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                let (text, tag) = buf.split_at_mut(size);
                rc.decrypt_in_place_detached((&nonce(1)).into(), &[], text, (&*tag).into()).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
