//! Fragmentation of outgoing IPv4 and IPv6 packets that do not fit the MTU.
//!
//! # Theory of operation
//! Only packets tapwire built itself go through here (large UDP replies, rare), so the input is
//! known to carry a bare IP header: 20 bytes for IPv4, 40 without extension headers for IPv6.
//! [`fragment`] cuts the IPv4 payload into 8-byte multiples, rewriting length, offset/MF and
//! the header checksum per fragment; [`fragment6`] inserts a Fragment header carrying the
//! caller's identification. Each fragment is built in the caller's scratch buffer and handed to
//! `emit` at once; a packet that fits is emitted unchanged, and one that cannot be fragmented
//! (wrong family, tiny MTU, short scratch) is not emitted at all.
#![forbid(unsafe_code)]

use super::checksum::checksum;
use super::{ETH_LEN, ICMP_OFFSET, IP6_LEN, IP_LEN, IP_OFFSET};

/// Split the IPv4 packet in `frame` (Ethernet + IPv4 without options) into fragments whose IP
/// packets fit `mtu`, calling `emit` with each fragment frame (built in `scratch`). Packets that
/// already fit are emitted as they are.
pub fn fragment(frame: &[u8], mtu: usize, scratch: &mut [u8], mut emit: impl FnMut(&[u8])) {
    if frame.len() < ICMP_OFFSET {
        return;
    }
    if frame.len() - ETH_LEN <= mtu {
        emit(frame);
        return;
    }
    if frame[12..14] != [0x08, 0x00] {
        // IPv6: see `fragment6`.
        return;
    }
    let payload = &frame[ICMP_OFFSET..];
    // Fragment payload sizes are multiples of 8 bytes.
    let chunk = (mtu.saturating_sub(IP_LEN)) & !7;
    if chunk == 0 || scratch.len() < ICMP_OFFSET + chunk {
        return;
    }
    let mut offset = 0;
    while offset < payload.len() {
        let n = chunk.min(payload.len() - offset);
        let more = offset + n < payload.len();
        scratch[..ICMP_OFFSET].copy_from_slice(&frame[..ICMP_OFFSET]);
        scratch[ICMP_OFFSET..ICMP_OFFSET + n].copy_from_slice(&payload[offset..offset + n]);
        let ip = &mut scratch[IP_OFFSET..IP_OFFSET + IP_LEN];
        ip[2..4].copy_from_slice(&((IP_LEN + n) as u16).to_be_bytes());
        let flags_off = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&flags_off.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        emit(&scratch[..ICMP_OFFSET + n]);
        offset += n;
    }
}

/// Split an IPv6 packet in an Ethernet `frame` (a 40-byte header without extension headers,
/// as every IPv6 frame we build) into fragments that fit `mtu`, each with a Fragment header
/// carrying `ident`, calling `emit` with each fragment frame (built in `scratch`, at least
/// MTU + 14 bytes). A packet that fits is emitted unchanged; anything else is not sent.
pub fn fragment6(
    frame: &[u8],
    mtu: usize,
    ident: u32,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) {
    const FRAG_LEN: usize = 8;
    let hdr = ETH_LEN + IP6_LEN;
    if frame.len() < hdr || frame[12..14] != [0x86, 0xdd] {
        return;
    }
    if frame.len() - ETH_LEN <= mtu {
        emit(frame);
        return;
    }
    let next_header = frame[ETH_LEN + 6];
    let payload = &frame[hdr..];
    let chunk = mtu.saturating_sub(IP6_LEN + FRAG_LEN) & !7;
    if chunk == 0 || scratch.len() < hdr + FRAG_LEN + chunk {
        return;
    }
    let mut offset = 0;
    while offset < payload.len() {
        let n = chunk.min(payload.len() - offset);
        let more = offset + n < payload.len();
        scratch[..hdr].copy_from_slice(&frame[..hdr]);
        scratch[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&((FRAG_LEN + n) as u16).to_be_bytes());
        scratch[ETH_LEN + 6] = 44; // Fragment header
        let frag = &mut scratch[hdr..hdr + FRAG_LEN];
        frag[0] = next_header;
        frag[1] = 0;
        let off_flags = (offset as u16) | u16::from(more);
        frag[2..4].copy_from_slice(&off_flags.to_be_bytes());
        frag[4..8].copy_from_slice(&ident.to_be_bytes());
        scratch[hdr + FRAG_LEN..hdr + FRAG_LEN + n].copy_from_slice(&payload[offset..offset + n]);
        emit(&scratch[..hdr + FRAG_LEN + n]);
        offset += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::*;
    use smoltcp::wire::Ipv4Packet;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn ipv6_fragments_carry_the_whole_payload() {
        // A 4000-byte UDP datagram in IPv6 at MTU 1500.
        let mut f = vec![0u8; ETH_LEN + IP6_LEN + 8 + 4000];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[ETH_LEN] = 0x60;
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&4008u16.to_be_bytes());
        f[ETH_LEN + 6] = 17;
        for (i, b) in f[ETH_LEN + IP6_LEN..].iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        let mut scratch = vec![0u8; 1514];
        let mut pieces = Vec::new();
        fragment6(&f, 1500, 0xabcd_0123, &mut scratch, |p| {
            pieces.push(p.to_vec())
        });
        assert_eq!(pieces.len(), 3);
        let mut whole = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() - ETH_LEN <= 1500, "fragment {i} fits the MTU");
            assert_eq!(p[ETH_LEN + 6], 44, "next header: Fragment");
            let plen = u16::from_be_bytes([p[ETH_LEN + 4], p[ETH_LEN + 5]]) as usize;
            assert_eq!(plen, p.len() - ETH_LEN - IP6_LEN);
            let frag = &p[ETH_LEN + IP6_LEN..ETH_LEN + IP6_LEN + 8];
            assert_eq!(frag[0], 17);
            assert_eq!(&frag[4..8], &0xabcd_0123u32.to_be_bytes());
            let off_flags = u16::from_be_bytes([frag[2], frag[3]]);
            assert_eq!(
                (off_flags & !7) as usize,
                whole.len(),
                "offset of fragment {i}"
            );
            assert_eq!(
                off_flags & 1 == 1,
                i + 1 < pieces.len(),
                "M flag of fragment {i}"
            );
            whole.extend_from_slice(&p[ETH_LEN + IP6_LEN + 8..]);
        }
        assert_eq!(&whole[..], &f[ETH_LEN + IP6_LEN..]);
        // Small packets pass unchanged; IPv4 or garbage is not sent.
        let mut small = f.clone();
        small.truncate(ETH_LEN + IP6_LEN + 100);
        let mut n = 0;
        fragment6(&small, 1500, 1, &mut scratch, |p| {
            assert_eq!(p, &small[..]);
            n += 1;
        });
        assert_eq!(n, 1);
        let mut v4 = f.clone();
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        fragment6(&v4, 1500, 1, &mut scratch, |_| {
            panic!("IPv4 is not fragment6's")
        });
        fragment6(&f[..20], 1500, 1, &mut scratch, |_| panic!("truncated"));
    }

    #[test]
    fn fragments_reassemble_to_original() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let f = udp_frame(dst, &payload);
        let mut scratch = vec![0u8; 2000];
        let mut pieces = Vec::new();
        fragment(&f, 1500, &mut scratch, |p| pieces.push(p.to_vec()));
        assert_eq!(pieces.len(), 3);
        let mut joined = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&p[ETH_LEN..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(p.len() - ETH_LEN <= 1500);
            assert_eq!(ip.more_frags(), i < 2);
            assert_eq!(usize::from(ip.frag_offset()), joined.len());
            joined.extend_from_slice(ip.payload());
        }
        assert_eq!(&joined[..], &f[ICMP_OFFSET..]);
        // Small packets pass unchanged.
        let small = udp_frame(dst, b"x");
        let mut n = 0;
        fragment(&small, 1500, &mut scratch, |p| {
            assert_eq!(p, &small[..]);
            n += 1
        });
        assert_eq!(n, 1);
    }
}
