//! The primitives of WireGuard's handshake, as its paper defines them:
//! BLAKE2s as HASH, HMAC-BLAKE2s as the KDF's HMAC, keyed BLAKE2s-128 as
//! MAC, ChaCha20-Poly1305 as AEAD (nonce: 4 zero bytes and a 64-bit
//! little-endian counter), XChaCha20-Poly1305 for cookies, and TAI64N
//! timestamps. Each is a call into a RustCrypto crate (the ones boringtun
//! uses too); nothing here is a cipher of weft's own.

use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};

/// The AEAD tag's length.
pub(crate) const TAG: usize = 16;

type HmacBlake2s = hmac::SimpleHmac<Blake2s256>;
type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

/// HASH(a || b).
pub(crate) fn hash(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, a);
    Digest::update(&mut h, b);
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacBlake2s as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// KDF_n(key, input), n = 1..=3: the chaining key first.
pub(crate) fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let prk = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut last: Vec<u8> = Vec::new();
    for (i, o) in out.iter_mut().enumerate() {
        *o = hmac(&prk, &[&last, &[i as u8 + 1]]);
        last = o.to_vec();
    }
    out
}

/// MAC(key, data): keyed BLAKE2s with a 16-byte output.
pub(crate) fn mac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let mut m = <Mac16 as KeyInit>::new_from_slice(key).expect("a 32-byte key");
    Update::update(&mut m, data);
    m.finalize_fixed().into()
}

/// The same with a 16-byte key (a cookie).
pub(crate) fn mac_by_cookie(cookie: &[u8; 16], data: &[u8]) -> [u8; 16] {
    let mut m = <Mac16 as KeyInit>::new_from_slice(cookie).expect("a 16-byte key");
    Update::update(&mut m, data);
    m.finalize_fixed().into()
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// AEAD(key, counter, plain, aad) into `out` (plain.len() + 16 bytes).
pub(crate) fn seal(key: &[u8; 32], counter: u64, plain: &[u8], aad: &[u8], out: &mut [u8]) {
    let cipher = ChaCha20Poly1305::new(key.into());
    let sealed = cipher.encrypt(&nonce(counter).into(), Payload { msg: plain, aad }).expect("sealing cannot fail");
    out.copy_from_slice(&sealed);
}

/// The inverse of [`seal`]; `None` when the tag does not verify.
pub(crate) fn open(key: &[u8; 32], counter: u64, sealed: &[u8], aad: &[u8], out: &mut [u8]) -> Option<()> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let plain = cipher.decrypt(&nonce(counter).into(), Payload { msg: sealed, aad }).ok()?;
    out.copy_from_slice(&plain);
    Some(())
}

/// XChaCha20-Poly1305 opened: a cookie reply's cookie (sealed over the
/// mac1 it answers).
pub(crate) fn xopen(key: &[u8; 32], nonce: &[u8; 24], sealed: &[u8], aad: &[u8]) -> Option<[u8; 16]> {
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher.decrypt(nonce.into(), Payload { msg: sealed, aad }).ok()?.try_into().ok()
}

/// A TAI64N timestamp of the wall clock: 8 bytes of seconds (offset by
/// 2^62) and 4 of nanoseconds, big-endian, so that later is greater
/// bytewise.
pub(crate) fn tai64n_now() -> [u8; 12] {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&((1u64 << 62) + since.as_secs()).to_be_bytes());
    t[8..].copy_from_slice(&since.subsec_nanos().to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_are_inverse_and_the_tag_binds_the_aad() {
        let key = [7u8; 32];
        let mut sealed = [0u8; 5 + TAG];
        seal(&key, 3, b"hello", b"aad", &mut sealed);
        let mut plain = [0u8; 5];
        assert!(open(&key, 3, &sealed, b"aad", &mut plain).is_some());
        assert_eq!(&plain, b"hello");
        assert!(open(&key, 3, &sealed, b"other", &mut plain).is_none());
        assert!(open(&key, 4, &sealed, b"aad", &mut plain).is_none());
    }

    #[test]
    fn kdf_outputs_chain() {
        let [a, b] = kdf::<2>(&[1u8; 32], b"x");
        let [a3, b3, c3] = kdf::<3>(&[1u8; 32], b"x");
        assert_eq!((a, b), (a3, b3));
        assert_ne!(b3, c3);
    }

    #[test]
    fn timestamps_grow() {
        let a = tai64n_now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(tai64n_now() > a);
    }
}
