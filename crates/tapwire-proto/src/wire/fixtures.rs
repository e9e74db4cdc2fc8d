//! Test fixtures shared by the `wire` tests: the link, the guest's addresses, and builders of
//! the guest frames (UDP, SYN, ARP, echo, ICMPv6) with right checksums.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use super::checksum::{checksum, pseudo_header_sum};
use super::reply::{finish_ipv4, finish_ipv6};
use super::*;

pub(super) const LINK6: Link6 = Link6 {
    gateway: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    dns: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
    link_local: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
};

pub(super) const LINK: LinkInfo = LinkInfo {
    mac: [0x52, 0x55, 10, 0, 2, 2],
    gateway: Ipv4Addr::new(10, 0, 2, 2),
    dns: Ipv4Addr::new(10, 0, 2, 3),
    ipv6: Some(LINK6),
};

pub(super) const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

pub(super) const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

pub(super) const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

// From the guest's point of view: frames go from GUEST_MAC to our MAC.
pub(super) const TO_US: L2 = L2 {
    src: GUEST_MAC,
    dst: LINK.mac,
};

pub(super) fn udp_frame(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; UDP_PAYLOAD + payload.len()];
    f[UDP_PAYLOAD..].copy_from_slice(payload);
    let n = finish_udp(
        &mut f,
        &TO_US,
        SocketAddrV4::new(GUEST, 40000).into(),
        dst.into(),
        payload.len(),
        7,
    )
    .unwrap();
    f.truncate(n);
    f
}

pub(super) fn syn_frame(dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; ICMP_OFFSET + 20];
    let seg = &mut f[ICMP_OFFSET..];
    seg[0..2].copy_from_slice(&40001u16.to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..8].copy_from_slice(&1000u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64000u16.to_be_bytes());
    let pseudo = pseudo_header_sum(GUEST.into(), (*dst.ip()).into(), 6, 20);
    let c = checksum(seg, pseudo);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    finish_ipv4(&mut f, &TO_US, GUEST, *dst.ip(), 6, 20, 1).unwrap();
    f
}

pub(super) fn refresh_ip_checksum(f: &mut [u8]) {
    refresh_ip_checksum_len(f, IP_LEN);
}

pub(super) fn refresh_ip_checksum_len(f: &mut [u8], len: usize) {
    f[IP_OFFSET + 10..IP_OFFSET + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&f[IP_OFFSET..IP_OFFSET + len], 0);
    f[IP_OFFSET + 10..IP_OFFSET + 12].copy_from_slice(&c.to_be_bytes());
}

pub(super) fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a[8..14].copy_from_slice(&GUEST_MAC);
    a[14..18].copy_from_slice(&GUEST.octets());
    a[24..28].copy_from_slice(&target.octets());
    f
}

pub(super) fn echo_frame(dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; ICMP_OFFSET + 16];
    let m = &mut f[ICMP_OFFSET..];
    m[0] = 8;
    m[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    m[6..8].copy_from_slice(&1u16.to_be_bytes());
    m[8..].copy_from_slice(b"pingdata");
    let c = checksum(m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    finish_ipv4(&mut f, &TO_US, GUEST, dst, 1, 16, 3).unwrap();
    f
}

pub(super) fn icmp6_frame(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8], hop_limit: u8) -> Vec<u8> {
    let l4 = l4_offset(true);
    let mut f = vec![0u8; l4 + msg.len()];
    f[l4..].copy_from_slice(msg);
    let pseudo = pseudo_header_sum(src.into(), dst.into(), 58, msg.len());
    let c = checksum(&f[l4..], pseudo);
    f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
    finish_ipv6(&mut f, &TO_US, src, dst, 58, msg.len()).unwrap();
    f[ETH_LEN + 7] = hop_limit;
    f
}

pub(super) fn ns(target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m
}
