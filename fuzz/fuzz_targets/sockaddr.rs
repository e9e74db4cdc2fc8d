//! Sockaddrs read from a seccomp-notified process (bypass mode): the first byte picks the
//! socket (bit 0: AF_INET6, bit 1: datagram) and the policy (bit 2: --disable-host-loopback),
//! the rest is the raw address as the supervisor reads it from the program's memory.
//! Properties: decoding never panics; a decoded address survives `encode` -> `decode_inet`;
//! the policy never hands out a host socket to loopback except for the gateway with host
//! loopback allowed, and never for a destination an IPv4-mapped spelling would hide.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tapwire_proto::bypass::{self, Dest, Policy, Route, SOCKADDR_MAX};
use tapwire_proto::config::NetConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, raw)) = data.split_first() else {
        return;
    };
    let raw = &raw[..raw.len().min(SOCKADDR_MAX)];
    let (v6, dgram) = (cfg & 1 != 0, cfg & 2 != 0);
    let mut net = NetConfig::default();
    net.enable_ipv6 = true;
    net.disable_host_loopback = cfg & 4 != 0;
    let policy = Policy::new(&net, &[], &[]);

    if let Some(a) = bypass::decode_inet(raw) {
        assert_eq!(
            bypass::decode_inet(bypass::encode(&a).as_bytes()),
            Some(a),
            "round trip"
        );
    }
    let _ = bypass::decode_send(raw, v6);
    let Ok(Dest::Inet(dst)) = bypass::decode_connect(raw, v6, dgram) else {
        return;
    };
    let n = bypass::normalize(dst);
    if let Route::Host(target) = policy.connect(n) {
        if target.ip().is_loopback() {
            let gw = match n.ip() {
                IpAddr::V4(_) => IpAddr::V4(net.gateway()),
                IpAddr::V6(_) => IpAddr::V6(net.gateway6()),
            };
            assert_eq!(n.ip(), gw, "loopback reached through {dst}");
            assert!(
                !net.disable_host_loopback,
                "loopback with --disable-host-loopback"
            );
        }
        assert!(
            !n.ip().is_loopback(),
            "a loopback destination bypassed: {dst}"
        );
        assert!(!n.ip().is_multicast() && !n.ip().is_unspecified(), "{dst}");
    }
});
