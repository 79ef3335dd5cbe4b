//! weft's WireGuard protocol on hostile datagrams: a peer with a session
//! is handed each kind of message with the input laid over it (and the
//! input alone). It must never panic, and a data message changed in any
//! byte must never be opened.
#![no_main]

use std::sync::Arc;

use boringtun::noise::TunnResult;
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use weft_dataplane::forward::noise::{Identity, Noise};

fn message(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        other => panic!("the handshake between two weft peers failed: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let mut here = Noise::new(Arc::new(Identity::new(a.clone())), PublicKey::from(&b), None, None, 1);
    let mut there = Noise::new(Arc::new(Identity::new(b)), PublicKey::from(&a), None, None, 2);
    let (mut buf, mut out) = (vec![0u8; 4096], vec![0u8; 4096]);
    let init = message(here.format_handshake_initiation(&mut buf, false));
    let resp = message(there.decapsulate(None, &init, &mut buf));
    let keepalive = message(here.decapsulate(None, &resp, &mut buf));
    let _ = there.decapsulate(None, &keepalive, &mut buf);
    let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 2, 1, 10, 244, 1, 1];
    packet.extend_from_slice(&[0u8; 8]);
    let sealed = message(there.encapsulate(&packet, &mut buf));

    let Some((&first, rest)) = data.split_first() else { return };
    let base = match first % 4 {
        0 => init,
        1 => resp,
        2 => sealed.clone(),
        _ => Vec::new(),
    };
    let mut m = base.clone();
    for (i, x) in rest.iter().enumerate() {
        match m.get_mut(i) {
            Some(byte) => *byte ^= x,
            None => m.push(*x),
        }
    }
    let opened = matches!(
        here.decapsulate(None, &m, &mut out),
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..)
    );
    assert!(!(first % 4 == 2 && m != sealed && opened), "a changed data message was opened");
    let _ = there.decapsulate(None, &m, &mut out);
    let _ = here.decapsulate(None, data, &mut out);
    let _ = here.update_timers(&mut out);
});
