//! The one address policy (`tapwire_proto::destination`) and its users, fed any destination:
//! byte 0 picks the configuration (bit 0: --disable-host-loopback, bit 1: -6, bit 2:
//! --disable-dns, bits 3-4: one of four networks), bytes 1-2 the port, the rest the address
//! (4 bytes: IPv4, 16 bytes: IPv6; other lengths are padded/cut to 16).
//! Properties, for the tap path (`Nat::translate`, with a resolver off host loopback) and the
//! bypass path (`Policy::connect` of the normalized address):
//! - a host socket to host loopback (any spelling) is only ever opened for the gateway, in
//!   some spelling, and never with --disable-host-loopback;
//! - no verdict names a multicast or unspecified target;
//! - `canonical` is idempotent and `host_form` never changes what `reaches_host_loopback` says.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tapwire_proto::bypass::{normalize, Policy, Route};
use tapwire_proto::config::NetConfig;
use tapwire_proto::destination::{self, Kind};
use tapwire_proto::nat::{Nat, Verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let Some((port, raw)) = rest.split_at_checked(2) else {
        return;
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip: IpAddr = if raw.len() == 4 {
        Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()
    } else {
        let mut b = [0u8; 16];
        for (d, s) in b.iter_mut().zip(raw) {
            *d = *s;
        }
        Ipv6Addr::from(b).into()
    };
    let (network, prefix) = [
        (Ipv4Addr::new(10, 0, 2, 0), 24),
        (Ipv4Addr::new(127, 0, 0, 0), 24),
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
    ][usize::from(cfg >> 3) & 3];
    let net = NetConfig {
        disable_host_loopback: cfg & 1 != 0,
        enable_ipv6: cfg & 2 != 0,
        disable_dns: cfg & 4 != 0,
        network,
        prefix,
        ..Default::default()
    };
    let dst = SocketAddr::new(ip, port);
    let d = destination::classify(&net, ip);
    assert_eq!(destination::canonical(d.canonical).0, d.canonical, "{ip}");
    assert_eq!(
        destination::reaches_host_loopback(destination::host_form(ip)),
        destination::reaches_host_loopback(ip),
        "{ip}"
    );

    let ok_loopback = |what: &str, target: SocketAddr| {
        if destination::reaches_host_loopback(target.ip()) {
            assert_eq!(
                d.kind,
                Kind::Gateway,
                "{what}: {dst} reached loopback {target}"
            );
            assert!(
                !net.disable_host_loopback,
                "{what}: {dst} reached loopback {target} with --disable-host-loopback"
            );
        }
        assert!(!target.ip().is_multicast(), "{what}: {dst} -> {target}");
        if let IpAddr::V4(a) = target.ip() {
            assert!(!a.is_broadcast(), "{what}: {dst} -> {target}");
        }
    };

    // Tap path; the resolver is a remote address so any loopback target is the policy's doing.
    let resolver: SocketAddr = "192.0.2.53:53".parse().unwrap();
    if let Verdict::Connect(t) = Nat::new(&net).translate(dst, Some(resolver)) {
        if t != resolver {
            ok_loopback("tap", t);
        }
    }
    // Bypass path.
    if let Route::Host(t) = Policy::new(&net, &[], &[]).connect(normalize(dst)) {
        ok_loopback("bypass", t);
    }
});
