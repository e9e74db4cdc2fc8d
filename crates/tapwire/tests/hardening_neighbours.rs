//! Neighbour poisoning (issue 12 item 5): one hand-made ARP frame or neighbour solicitation
//! from the guest's own address with a bogus link-layer address must not black-hole the
//! guest's traffic. Before the fix, smoltcp took the claim for 60 s: IPv4 was dead for ~48 s,
//! IPv6 for ~61 s (slirp4netns: ~36 s and ~1 s).
//!
//! Each test makes a working connection to the gateway first (so our stack has learnt the
//! guest's real MAC), then writes the poison on tap0 (AF_PACKET, tests/common/hardening.rs's
//! injector) in two forms, each followed by a fresh TCP connection to the gateway that must
//! get its reply within [`RECOVER`]:
//! 1. the claim names a bogus MAC in a frame from the guest's real MAC (the frame):
//!    dropped;
//! 2. the Ethernet source is forged too: taken, and corrected at once by the guest's next IP
//!    frame (its SYN).
//!
//! Both fail on the branch base (checked with TAPWIRE_TEST_BIN at its build: the connection
//! after the poison times out).
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bypass::acceptor;
use common::hardening::{csum, tap_injector};
use common::ipv6::{host_listen6, World6, GW6};
use common::*;

/// How long a connection after the poison may take (before the fix: ~48 s / ~61 s).
const RECOVER: Duration = Duration::from_secs(5);
const PORT: u16 = 20311;
const BOGUS: [u8; 6] = [0x02, 0x00, 0x00, 0xde, 0xad, 0x01];

fn tap_mac(guest: &Guest) -> [u8; 6] {
    let link = guest.sh("ip -o link show tap0", SETUP_TIMEOUT).ok().stdout;
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("tap0 MAC");
    let mut m = [0u8; 6];
    for (d, h) in m.iter_mut().zip(mac.split(':')) {
        *d = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

fn send(fd: &std::os::fd::OwnedFd, f: &[u8]) {
    // SAFETY: sending a live buffer on an open socket.
    let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    assert_eq!(
        n,
        f.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// An ARP request for the gateway from 10.0.2.100, claiming `sha`, in a frame from `eth_src`.
fn arp_poison(eth_src: [u8; 6], sha: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&GUEST_ADDR.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GATEWAY.octets());
    f
}

/// A neighbour solicitation for the IPv6 gateway from `src`, with source link-layer address
/// `lladdr`, in a frame from `eth_src`.
fn ns_poison(eth_src: [u8; 6], src: Ipv6Addr, lladdr: [u8; 6]) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&GW6.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&lladdr);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let init: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let c = csum(&icmp, init);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, 0, 0, 2];
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A fresh connection from the guest to `to` and the host's greeting; how long it took, or
/// why it failed.
fn hello(guest: &Guest, to: SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = guest
        .connect(to, RECOVER)
        .map_err(|e| format!("connect {to}: {e} after {:?}", start.elapsed()))?;
    s.set_read_timeout(Some(
        RECOVER
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(100)),
    ))
    .unwrap();
    let mut got = [0u8; 2];
    s.read_exact(&mut got)
        .map_err(|e| format!("read from {to}: {e} after {:?}", start.elapsed()))?;
    assert_eq!(&got, b"hi");
    Ok(start.elapsed())
}

fn poison_and_recover(guest: &Guest, to: SocketAddr, poison: impl Fn([u8; 6], [u8; 6]) -> Vec<u8>) {
    let real = tap_mac(guest);
    let fd = tap_injector(guest);
    let t = hello(guest, to).unwrap_or_else(|e| panic!("before any poison: {e}"));
    eprintln!("{to}: before: {t:?}");
    for (what, eth_src) in [("claim in a real frame", real), ("forged frame", BOGUS)] {
        send(&fd, &poison(eth_src, BOGUS));
        std::thread::sleep(Duration::from_millis(200));
        match hello(guest, to) {
            Ok(t) => eprintln!("{to}: after the poison ({what}): {t:?}"),
            Err(e) => panic!("{to}: black-holed by one poison frame ({what}): {e}"),
        }
    }
}

#[test]
fn arp_poison_does_not_black_hole_ipv4() {
    if !preflight(&["ip"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acc = acceptor(
        host.listen(PORT),
        b"hi",
        stop.clone(),
        Arc::new(AtomicUsize::new(0)),
    );
    poison_and_recover(&guest, SocketAddr::new(GATEWAY.into(), PORT), arp_poison);
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
}

#[test]
fn ndp_poison_does_not_black_hole_ipv6() {
    if !preflight(&["ip"]) {
        return;
    }
    let w = World6::new(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acc = acceptor(
        host_listen6(&w.host, PORT),
        b"hi",
        stop.clone(),
        Arc::new(AtomicUsize::new(0)),
    );
    let src = w.addr;
    poison_and_recover(
        &w.guest,
        SocketAddr::new(IpAddr::V6(GW6), PORT),
        |eth, ll| ns_poison(eth, src, ll),
    );
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
}
