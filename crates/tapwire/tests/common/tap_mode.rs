//! Helpers shared by the tap-mode suites (tap_mode, tap_mode_dns, tap_mode_remote,
//! tap_mode_hostile): sizes, the gateway address, and the guest's configured tap0.

use super::*;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

pub const MB: usize = 1 << 20;
/// Size of each bulk transfer (the issue asks for >= 50 MB).
pub const BULK: usize = 50 * MB;

pub fn gw(port: u16) -> SocketAddr {
    SocketAddrV4::new(GATEWAY, port).into()
}

/// Parse `ip -o link show DEV` / `ip -o -4 addr show DEV` output of the guest.
pub fn guest_ip(guest: &Guest, args: &str) -> String {
    guest.sh(&format!("ip {args}"), SETUP_TIMEOUT).ok().stdout
}

pub fn check_configured(guest: &Guest, addr: &str, gateway: &str, mtu: u32) {
    let link = guest_ip(guest, "-o link show tap0");
    assert!(
        link.contains(&format!("mtu {mtu} ")),
        "tap0 MTU {mtu}: {link}"
    );
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "tap0 up: {link}"
    );
    let a = guest_ip(guest, "-o -4 addr show dev tap0");
    assert!(
        a.contains(&format!("inet {addr} ")),
        "tap0 address {addr}: {a}"
    );
    let r = guest_ip(guest, "-4 route show default");
    assert!(
        r.contains(&format!("default via {gateway} dev tap0")),
        "default route via {gateway}: {r}"
    );
    let lo = guest_ip(guest, "-o link show lo");
    assert!(lo.contains(",UP") || lo.contains("<UP"), "lo up: {lo}");
}

/// How long the daemon's fd count may take to come back to its baseline once flows closed.
pub const FD_SETTLE: Duration = Duration::from_secs(30);
