//! Guest frames into the whole engine through a fake TAP (a SOCK_SEQPACKET socketpair).
//!
//! Input: a config byte, then length-prefixed frames (see `common::chunks`); with config bit
//! 0x20 each chunk starts with its own 10-byte virtio-net header (flags, GSO type...), else a
//! zero header is put in front, as the TAP does without offloads. Each input gets a
//! fresh engine (one loop turn: at most `RX_BUDGET` frames, then the exit fd ends it), so
//! flows, the smoltcp interface, UDP/ICMP bindings, the DNS relay and the DHCP server all see
//! the frames exactly as from a TAP. Host sockets live in a private network namespace with
//! only `lo`. Property: no panic, no hang, every frame the engine writes back fits the MTU.
#![no_main]

#[path = "common.rs"]
mod common;

use std::os::fd::AsRawFd;

use libfuzzer_sys::fuzz_target;
use tapwire_proto::config::NetConfig;
use tapwire::engine::{Engine, Lifecycle, RX_BUDGET};
use tapwire::link::tap::Tap;

fuzz_target!(init: common::isolate(), |data: &[u8]| {
    let Some((&cfg, frames)) = data.split_first() else {
        return;
    };
    let mut net = NetConfig::default();
    net.mtu = [1500, 65520, 576, 1280][usize::from(cfg & 3)];
    net.disable_dns = cfg & 4 != 0;
    net.disable_host_loopback = cfg & 8 != 0;
    net.enable_ipv6 = cfg & 16 != 0;
    let mtu = net.mtu as usize;

    let (tap, guest) = common::fake_tap();
    let (exit_r, exit_w) = common::pipe();
    let life = Lifecycle {
        exit_fd: Some(exit_r),
        child: None,
    };
    let mut engine = Engine::new(net, Tap::from_fd(tap), life).expect("engine");
    let own_header = cfg & 0x20 != 0;
    let mut msg = Vec::with_capacity(70_000);
    for frame in common::chunks(frames).filter(|f| !f.is_empty()).take(RX_BUDGET) {
        msg.clear();
        if !own_header {
            msg.extend_from_slice(&[0u8; 10]);
        }
        msg.extend_from_slice(frame);
        // SAFETY: sending a live buffer on an open socket.
        unsafe {
            libc::send(
                guest.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    drop(exit_w);
    assert_eq!(engine.run().expect("engine run"), 0);
    // Everything written back is a virtio-net header and one frame of at most MTU + 14 bytes
    // (the fake TAP refuses TUNSETOFFLOAD, so no TSO frames).
    let mut buf = vec![0u8; 70_000];
    loop {
        // SAFETY: receiving into a live buffer of the given length.
        let n = unsafe {
            libc::recv(
                guest.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            break;
        }
        let n = n as usize;
        assert!(n >= 10, "message of {n} bytes: no virtio-net header");
        assert!(n - 10 <= mtu + 14, "frame of {} bytes with MTU {mtu}", n - 10);
    }
});
