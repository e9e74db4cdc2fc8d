//! Any byte string as a guest frame: classification must never panic, and whatever it
//! accepts as TCP can be answered with a RST whose checksums verify.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tapwire::wire::{self, Class, LinkInfo, L2};

const LINK: LinkInfo = LinkInfo {
    mac: [0x52, 0x55, 10, 0, 2, 2],
    gateway: Ipv4Addr::new(10, 0, 2, 2),
    dns: Ipv4Addr::new(10, 0, 2, 3),
};

fuzz_target!(|frame: &[u8]| {
    let l2 = L2 { src: LINK.mac, dst: [2, 0, 0, 0, 0, 1] };
    let mut out = [0u8; 128];
    match wire::classify(frame, &LINK) {
        Class::Tcp(info) => {
            if info.syn {
                let n = wire::tcp_rst(&mut out, &l2, &info).expect("RST fits");
                assert_eq!(wire::checksum(&out[wire::IP_OFFSET..wire::IP_OFFSET + 20], 0), 0);
                assert!(n <= out.len());
            }
        }
        Class::Udp(_) | Class::Echo(_) => {
            let _ = wire::icmp_error(&mut out, &l2, LINK.gateway, wire::Unreachable::Port, &frame[wire::ETH_LEN..]);
        }
        Class::Stack | Class::Drop(_) => {}
    }
});
