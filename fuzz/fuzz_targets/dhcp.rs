//! The DHCP server: a sequence of messages (length-prefixed, see `common::chunks`), each with
//! a time step taken from its first byte, against one server. Properties: no panic, replies
//! fit the buffer, are BOOTREPLYs with the magic cookie, and any address offered is inside the
//! pool (network+15 ..= network+30).
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tapwire_proto::config::NetConfig;
use tapwire_proto::dhcp::{DhcpServer, POOL_SIZE, POOL_START};

fuzz_target!(|data: &[u8]| {
    let net = NetConfig::default();
    let mut server = DhcpServer::new(&net);
    let mut out = [0u8; 600];
    let mut now = 1_000u64;
    let first = u32::from(net.network) + POOL_START;
    for msg in common::chunks(data) {
        let Some((&step, msg)) = msg.split_first() else {
            continue;
        };
        now += u64::from(step) * 100;
        if let Ok(n) = server.handle(msg, now, &mut out) {
            assert!(n <= out.len() && n >= 240, "reply of {n} bytes");
            assert_eq!(out[0], 2, "BOOTREPLY");
            assert_eq!(out[236..240], [99, 130, 83, 99], "magic cookie");
            let yiaddr = u32::from(Ipv4Addr::new(out[16], out[17], out[18], out[19]));
            assert!(
                yiaddr == 0 || (first..first + POOL_SIZE as u32).contains(&yiaddr),
                "offered {}",
                Ipv4Addr::from(yiaddr)
            );
        }
    }
});
