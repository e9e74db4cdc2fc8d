//! Any byte string as a guest frame: classification must never panic, and whatever it
//! accepts as TCP can be answered with a RST whose checksums verify. The first byte turns
//! IPv6 on (bit 0) and marks the transport checksum partial, as a virtio-net header with
//! NEEDS_CSUM does (bit 1). The offload helpers (`vnet`) run on the same bytes: the SYN's MSS
//! rewrite on what the engine would hand smoltcp, and the TSO finishing on anything; neither
//! may panic, and a partial-checksum header must point inside the frame. The UDP offloads
//! (USO) too: the train finishing, and a guest's UDP GSO header checked and cut into
//! datagrams.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tapwire_proto::vnet;
use tapwire_proto::wire::{self, Class, Link6, LinkInfo, L2};

const MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

fn link(ipv6: bool) -> LinkInfo {
    LinkInfo {
        mac: MAC,
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        dns: Ipv4Addr::new(10, 0, 2, 3),
        ipv6: ipv6.then(|| Link6 {
            gateway: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            dns: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
            link_local: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, frame)) = data.split_first() else {
        return;
    };
    let link = link(cfg & 1 == 1);
    let l2 = L2 {
        src: MAC,
        dst: [2, 0, 0, 0, 0, 1],
    };
    let mut out = [0u8; 128];
    let mut copy = frame.to_vec();
    let h = vnet::offload_tcp(&mut copy, 1500, 1460);
    if h.needs_csum() {
        let at = usize::from(h.csum_start) + usize::from(h.csum_offset);
        assert!(at + 2 <= copy.len(), "checksum offset {at} outside {} bytes", copy.len());
    }
    // USO: a UDP train for the guest from the same bytes must point its checksum inside the
    // frame; a guest's virtio-net header (the first 10 bytes) with any payload length must
    // either be refused or cut into datagrams that cover the payload exactly, in bounds.
    let mut copy = frame.to_vec();
    let size = u16::from(cfg) * 7 + 1;
    if let Some(h) = vnet::offload_udp(&mut copy, 65520, size) {
        assert!(h.needs_csum(), "a USO frame for the guest carries a partial checksum");
        let at = usize::from(h.csum_start) + usize::from(h.csum_offset);
        assert!(at + 2 <= copy.len(), "UDP checksum offset {at} outside {} bytes", copy.len());
    }
    if let Some(h) = vnet::VnetHdr::parse(frame) {
        let len = frame.len().saturating_sub(10);
        if let Ok(Some(seg)) = vnet::udp_gso_from_guest(&h, len) {
            let (mut next, mut count) = (0, 0);
            for (off, n) in vnet::udp_segments(len, usize::from(seg)) {
                assert_eq!(off, next, "segments are contiguous");
                assert!(n > 0 && n <= usize::from(seg), "segment of {n} bytes at size {seg}");
                next += n;
                count += 1;
            }
            assert_eq!(next, len, "the segments cover the payload");
            assert!(count > 1, "a train of one datagram is not a train");
        }
    }
    match wire::classify_offloaded(frame, &link, cfg & 2 != 0) {
        Class::Tcp(info) => {
            if info.syn {
                let mut syn = frame.to_vec();
                let _ = vnet::raise_syn_mss(&mut syn);
                assert_eq!(syn.len(), frame.len());
                let n = wire::tcp_rst(&mut out, &l2, &info).expect("RST fits");
                assert!(n <= out.len());
                if info.src.is_ipv4() {
                    let ip = &out[wire::IP_OFFSET..wire::IP_OFFSET + 20];
                    assert_eq!(wire::checksum(ip, 0), 0, "IPv4 header checksum");
                }
            }
        }
        Class::Udp(_) | Class::Echo(_) => {
            if frame.get(12..14) == Some(&[0x08, 0x00]) {
                let _ = wire::icmp_error(
                    &mut out,
                    &l2,
                    link.gateway,
                    wire::Unreachable::Port,
                    &frame[wire::ETH_LEN..],
                );
            }
        }
        _ => {}
    }
});
