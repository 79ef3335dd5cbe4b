//! The loops the forwarding threads of both userspace backends run: step
//! until told to stop, sleeping in `poll(2)` on the data descriptor beside
//! the stop signal; and on the offload path, the send and receive loops
//! that hand the TUN device between a queue's two threads (see `duty`).

use std::io;
use std::sync::Mutex;

use super::duty::Duty;
use super::thread::{wait, wait_any, Exit, Step, StopSignal, Wake};

/// Step until told to stop or a persistent error.
pub(crate) fn run(mut step: impl FnMut() -> Step, fd: i32, stop: &StopSignal) -> Exit {
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        match step() {
            Step::Worked => {}
            Step::Idle => match wait(fd, libc::POLLIN, stop) {
                Ok(Wake::Ready(_)) => {}
                Ok(Wake::Stop) => return Exit::Stopped,
                Err(e) => return Exit::Failed(e),
            },
            Step::Failed(e) => return Exit::Failed(e),
        }
    }
}

/// The send thread of an offload queue: reads the TUN device while the
/// traffic is bulk, and sleeps on its doorbell while the receive thread
/// serves both directions (see `duty`).
pub(crate) fn run_sender<T: TunReader>(
    tx: &Mutex<T>,
    mut step: impl FnMut(&mut T) -> Step,
    duty: &Duty,
    tun: i32,
    stop: &StopSignal,
) -> Exit {
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        if !duty.bulk() {
            match wait_any(&[duty.to_sender.fd()], libc::POLLIN, stop, None) {
                Ok(Wake::Ready(_)) => duty.to_sender.clear(),
                Ok(Wake::Stop) => return Exit::Stopped,
                Err(e) => return Exit::Failed(e),
            }
            continue;
        }
        match send_step(tx, &mut step, duty) {
            Step::Worked => duty.worked(),
            Step::Idle => {
                if duty.hand_back_if_quiet() {
                    continue;
                }
                match wait_any(&[tun], libc::POLLIN, stop, Some(duty.quiet())) {
                    Ok(Wake::Ready(_)) => {}
                    Ok(Wake::Stop) => return Exit::Stopped,
                    Err(e) => return Exit::Failed(e),
                }
            }
            Step::Failed(e) => return Exit::Failed(e),
        }
    }
}

/// The receive thread of an offload queue: UDP -> TUN, and TUN -> UDP too
/// while the traffic is light (see `duty`).
///
/// After each round it goes back to `poll` rather than trying its
/// descriptors until they fail: a light packet's hop then costs one wake-up
/// and the calls that move it, and `poll` reports what is ready. The one
/// exception is the TUN read right after a write, which picks up what the
/// kernel made of the written packet (a reply, an ACK) without a wake-up.
pub(crate) fn run_receiver<T: TunReader>(
    mut receive: impl FnMut() -> (Step, bool),
    tx: &Mutex<T>,
    mut send: impl FnMut(&mut T) -> Step,
    duty: &Duty,
    fds: [i32; 2],
    stop: &StopSignal,
) -> Exit {
    const SOCK: u8 = 1;
    const TUN: u8 = 2;
    const BELL: u8 = 4;
    let [sock, tun] = fds;
    // What to read this round; at the start, both.
    let mut ready = SOCK | TUN;
    loop {
        if stop.fired() {
            return Exit::Stopped;
        }
        let received = if ready & SOCK != 0 {
            match receive() {
                (Step::Failed(e), _) => return Exit::Failed(e),
                (Step::Worked, true) => {
                    duty.saw_bulk();
                    Step::Worked
                }
                (Step::Worked, false) => {
                    duty.worked();
                    Step::Worked
                }
                (step, _) => step,
            }
        } else {
            Step::Idle
        };
        let light = !duty.bulk();
        let look_at_tun = ready & TUN != 0 || matches!(received, Step::Worked);
        if light && look_at_tun {
            match send_step(tx, &mut send, duty) {
                Step::Failed(e) => return Exit::Failed(e),
                Step::Worked => duty.worked(),
                Step::Idle => {}
            }
        }
        // In `fds` order, so that the wake-up's bits are SOCK, TUN and BELL;
        // poll(2) skips a negative descriptor (the TUN device while bulk).
        let tun_if_ours = if duty.bulk() { -1 } else { tun };
        ready = match wait_any(&[sock, tun_if_ours, duty.to_receiver.fd()], libc::POLLIN, stop, None) {
            Ok(Wake::Ready(r)) => r,
            Ok(Wake::Stop) => return Exit::Stopped,
            Err(e) => return Exit::Failed(e),
        };
        if ready & BELL != 0 {
            // Rung: light again (the TUN device is ours) or bulk (it is not).
            duty.to_receiver.clear();
            ready |= TUN;
        }
    }
}

/// What reads a queue's TUN device: says whether its last read was bulk
/// (a super-packet), which hands the device to the send thread.
pub(crate) trait TunReader {
    fn read_bulk(&self) -> bool;
}

/// One TUN -> UDP step under the queue's send lock; bulk is noted.
fn send_step<T: TunReader>(tx: &Mutex<T>, step: &mut impl FnMut(&mut T) -> Step, duty: &Duty) -> Step {
    let Ok(mut path) = tx.lock() else {
        return Step::Failed(io::Error::other("the other thread of this queue panicked while sending"));
    };
    let result = step(&mut path);
    if matches!(result, Step::Worked) && path.read_bulk() {
        duty.saw_bulk();
    }
    result
}
