//! IPv4 reassembly of fragments from the guest (sans-IO).
//!
//! # Theory of operation
//! The guest's kernel fragments a UDP datagram larger than the MTU (slirp4netns reassembles
//! them; a forwarder that drops them loses every large UDP send silently). Fragments are
//! collected per (source, destination, protocol, identification) in one of [`SLOTS`] buffers;
//! a bitmap of 8-byte blocks records what arrived. When the last fragment is in and no block is
//! missing, the whole packet is rebuilt as an unfragmented frame (Ethernet + IPv4 header +
//! payload) that the engine classifies like any other frame, checksums included.
//!
//! Limits and defences: at most [`SLOTS`] datagrams in flight (the oldest is dropped for a new
//! one), each complete within [`TIMEOUT_MS`]; overlapping fragments that disagree, fragments
//! past 65535 bytes and a second "last" fragment with another length discard the datagram
//! (teardrop-style tricks). Buffers are allocated on first use and reused.
#![forbid(unsafe_code)]

use crate::wire::{self, ETH_LEN, IP_LEN};

/// Datagrams reassembled at once.
pub const SLOTS: usize = 8;
/// A datagram must be complete within this time.
pub const TIMEOUT_MS: u64 = 15_000;
const MAX_PAYLOAD: usize = 65_535 - IP_LEN;
const BLOCKS: usize = MAX_PAYLOAD.div_ceil(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ident: u16,
}

struct Slot {
    key: Option<Key>,
    started_ms: u64,
    /// Ethernet + IPv4 header of the first fragment, then the payload.
    buf: Vec<u8>,
    have: Vec<u64>,
    /// Payload length, known once the last fragment arrived.
    total: Option<usize>,
}

impl Slot {
    fn reset(&mut self, key: Key, now_ms: u64) {
        self.key = Some(key);
        self.started_ms = now_ms;
        if self.buf.len() != ETH_LEN + IP_LEN + MAX_PAYLOAD {
            self.buf = vec![0u8; ETH_LEN + IP_LEN + MAX_PAYLOAD];
            self.have = vec![0u64; BLOCKS.div_ceil(64)];
        }
        self.have.iter_mut().for_each(|w| *w = 0);
        self.total = None;
    }

    fn block(&self, i: usize) -> bool {
        self.have[i / 64] & (1 << (i % 64)) != 0
    }

    fn complete(&self) -> bool {
        self.total
            .is_some_and(|t| (0..t.div_ceil(8)).all(|i| self.block(i)))
    }
}

/// The reassembly state; see the module documentation.
pub struct Reassembler {
    slots: Vec<Slot>,
}

/// Outcome of feeding one fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled<'a> {
    /// Stored; more fragments needed.
    Pending,
    /// The whole packet, as an unfragmented frame.
    Complete(&'a [u8]),
    /// Malformed or inconsistent; the datagram (if any) was discarded.
    Invalid,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    key: None,
                    started_ms: 0,
                    buf: Vec::new(),
                    have: Vec::new(),
                    total: None,
                })
                .collect(),
        }
    }
}

impl Reassembler {
    /// Feed one fragment frame (Ethernet + IPv4 without options, header checksum already
    /// verified by the caller).
    pub fn feed(&mut self, frame: &[u8], now_ms: u64) -> Reassembled<'_> {
        let Some(ip) = frame.get(ETH_LEN..ETH_LEN + IP_LEN) else {
            return Reassembled::Invalid;
        };
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let Some(data) = frame.get(ETH_LEN + IP_LEN..ETH_LEN + total_len.max(IP_LEN)) else {
            return Reassembled::Invalid;
        };
        let flags_off = u16::from_be_bytes([ip[6], ip[7]]);
        let more = flags_off & 0x2000 != 0;
        let offset = usize::from(flags_off & 0x1fff) * 8;
        let key = Key {
            src: [ip[12], ip[13], ip[14], ip[15]],
            dst: [ip[16], ip[17], ip[18], ip[19]],
            proto: ip[9],
            ident: u16::from_be_bytes([ip[4], ip[5]]),
        };
        let end = offset + data.len();
        // Non-final fragments carry multiples of 8 bytes; nothing goes past 64 KiB.
        if data.is_empty() || end > MAX_PAYLOAD || (more && data.len() % 8 != 0) {
            self.discard(key);
            return Reassembled::Invalid;
        }
        for s in &mut self.slots {
            if s.key.is_some() && now_ms.saturating_sub(s.started_ms) > TIMEOUT_MS {
                s.key = None;
            }
        }
        let idx = match self.slots.iter().position(|s| s.key == Some(key)) {
            Some(i) => i,
            None => {
                let i = self
                    .slots
                    .iter()
                    .position(|s| s.key.is_none())
                    .unwrap_or_else(|| {
                        (0..SLOTS)
                            .min_by_key(|&i| self.slots[i].started_ms)
                            .unwrap_or(0)
                    });
                self.slots[i].reset(key, now_ms);
                i
            }
        };
        let slot = &mut self.slots[idx];
        if !more {
            if slot.total.is_some_and(|t| t != end) {
                slot.key = None;
                return Reassembled::Invalid;
            }
            slot.total = Some(end);
        }
        if slot.total.is_some_and(|t| end > t) {
            slot.key = None;
            return Reassembled::Invalid;
        }
        let base = ETH_LEN + IP_LEN;
        let first = offset / 8;
        let last = end.div_ceil(8);
        // Overlaps must carry the same bytes (retransmitted duplicates), never new content.
        if (first..last).any(|b| slot.block(b)) && slot.buf[base + offset..base + end] != *data {
            slot.key = None;
            return Reassembled::Invalid;
        }
        slot.buf[base + offset..base + end].copy_from_slice(data);
        for b in first..last {
            slot.have[b / 64] |= 1 << (b % 64);
        }
        if offset == 0 {
            slot.buf[..base].copy_from_slice(&frame[..base]);
        }
        if !slot.complete() {
            return Reassembled::Pending;
        }
        let total = slot.total.unwrap_or(0);
        slot.key = None;
        // Rewrite the header: whole length, no fragment fields, fresh checksum.
        let hdr = &mut slot.buf[ETH_LEN..base];
        hdr[2..4].copy_from_slice(&((IP_LEN + total) as u16).to_be_bytes());
        hdr[6..8].copy_from_slice(&[0, 0]);
        hdr[10..12].copy_from_slice(&[0, 0]);
        let c = wire::checksum(hdr, 0);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        Reassembled::Complete(&slot.buf[..base + total])
    }

    fn discard(&mut self, key: Key) {
        for s in &mut self.slots {
            if s.key == Some(key) {
                s.key = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, finish_udp, fragment, Class, LinkInfo, L2, UDP_PAYLOAD};
    use std::net::{Ipv4Addr, SocketAddrV4};

    const LINK: LinkInfo = LinkInfo {
        mac: [0x52, 0x55, 10, 0, 2, 2],
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        dns: Ipv4Addr::new(10, 0, 2, 3),
        ipv6: None,
    };

    fn big_udp(len: usize, ident: u16) -> Vec<u8> {
        let mut f = vec![0u8; UDP_PAYLOAD + len];
        for (i, b) in f[UDP_PAYLOAD..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let l2 = L2 {
            src: [2, 0, 0, 0, 0, 1],
            dst: LINK.mac,
        };
        let n = finish_udp(
            &mut f,
            &l2,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), 4000).into(),
            SocketAddrV4::new(LINK.gateway, 7).into(),
            len,
            ident,
        )
        .unwrap();
        f.truncate(n);
        f
    }

    fn pieces(f: &[u8]) -> Vec<Vec<u8>> {
        let mut scratch = vec![0u8; 1600];
        let mut v = Vec::new();
        fragment(f, 1500, &mut scratch, |p| v.push(p.to_vec()));
        v
    }

    #[test]
    fn reassembles_in_any_order() {
        let f = big_udp(4000, 9);
        let mut p = pieces(&f);
        assert_eq!(p.len(), 3);
        p.reverse();
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[0], 0), Reassembled::Pending);
        assert_eq!(r.feed(&p[1], 1), Reassembled::Pending);
        let Reassembled::Complete(whole) = r.feed(&p[2], 2) else {
            panic!("not complete")
        };
        assert_eq!(&whole[ETH_LEN + IP_LEN..], &f[ETH_LEN + IP_LEN..]);
        assert!(matches!(classify(whole, &LINK), Class::Udp(u) if u.payload.len() == 4000));
    }

    #[test]
    fn duplicates_ok_conflicts_and_timeouts_not() {
        let f = big_udp(3000, 10);
        let p = pieces(&f);
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[0], 0), Reassembled::Pending);
        assert_eq!(r.feed(&p[0], 0), Reassembled::Pending);
        let mut evil = p[1].clone();
        let last = evil.len() - 1;
        evil[last] ^= 0xff;
        assert_eq!(r.feed(&evil, 0), Reassembled::Pending);
        // The same block again with other bytes: discarded.
        let mut evil2 = p[1].clone();
        evil2[last - 1] ^= 0xff;
        assert_eq!(r.feed(&evil2, 0), Reassembled::Invalid);
        // Timeout: a late piece starts over and never completes alone.
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[0], 0), Reassembled::Pending);
        assert_eq!(r.feed(&p[1], TIMEOUT_MS + 1), Reassembled::Pending);
        assert!(matches!(
            r.feed(&p[2], TIMEOUT_MS + 2),
            Reassembled::Pending
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let f = big_udp(3000, 11);
        let p = pieces(&f);
        let mut r = Reassembler::default();
        for piece in &p {
            for cut in 0..piece.len() {
                let _ = r.feed(&piece[..cut], 0);
            }
        }
        // Offsets past 64 KiB.
        let mut huge = p[1].clone();
        huge[ETH_LEN + 6] = 0x3f;
        huge[ETH_LEN + 7] = 0xff;
        assert_eq!(r.feed(&huge, 0), Reassembled::Invalid);
    }

    #[test]
    fn many_datagrams_evict_oldest() {
        let mut r = Reassembler::default();
        for ident in 0..(SLOTS as u16 + 4) {
            let p = pieces(&big_udp(3000, ident));
            assert_eq!(r.feed(&p[0], u64::from(ident)), Reassembled::Pending);
        }
        // The newest ones are still there.
        let p = pieces(&big_udp(3000, SLOTS as u16 + 3));
        assert_eq!(r.feed(&p[1], 100), Reassembled::Pending);
        assert!(matches!(r.feed(&p[2], 100), Reassembled::Complete(_)));
    }

    /// `f` with its IPv4 total length set to `len` and cut to fit.
    fn with_ip_len(f: &[u8], len: usize) -> Vec<u8> {
        let mut g = f[..ETH_LEN + len].to_vec();
        g[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&(len as u16).to_be_bytes());
        g
    }

    /// `f` with its fragment offset (in bytes) and MF flag replaced.
    fn with_offset(f: &[u8], offset: usize, more: bool) -> Vec<u8> {
        let mut g = f.to_vec();
        let v = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        g[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&v.to_be_bytes());
        g
    }

    #[test]
    fn rebuilt_header_is_whole_and_timeout_is_inclusive() {
        let f = big_udp(3000, 12);
        let p = pieces(&f);
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[0], 1_000), Reassembled::Pending);
        assert_eq!(r.feed(&p[1], 1_000 + TIMEOUT_MS), Reassembled::Pending);
        let Reassembled::Complete(whole) = r.feed(&p[2], 1_000 + TIMEOUT_MS) else {
            panic!("not complete at exactly the timeout")
        };
        assert_eq!(whole.len(), f.len());
        let hdr = &whole[ETH_LEN..ETH_LEN + IP_LEN];
        assert_eq!(
            usize::from(u16::from_be_bytes([hdr[2], hdr[3]])),
            f.len() - ETH_LEN
        );
        assert_eq!(&hdr[6..8], &[0, 0], "no MF, offset 0");
        assert_eq!(wire::checksum(hdr, 0), 0);
        assert_eq!(&whole[..ETH_LEN], &f[..ETH_LEN]);
        // The slot was freed: the same pieces start a new datagram.
        assert_eq!(r.feed(&p[2], 2_000 + TIMEOUT_MS), Reassembled::Pending);
    }

    #[test]
    fn inconsistent_lengths_discard_the_datagram() {
        let f = big_udp(3000, 13);
        let p = pieces(&f);
        let last_len = p[2].len() - ETH_LEN;
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[0], 0), Reassembled::Pending);
        assert_eq!(r.feed(&p[2], 0), Reassembled::Pending);
        // A second "last" fragment ending elsewhere.
        assert_eq!(
            r.feed(&with_ip_len(&p[2], last_len - 8), 0),
            Reassembled::Invalid
        );
        // Discarded: the missing middle no longer completes anything.
        assert_eq!(r.feed(&p[1], 0), Reassembled::Pending);

        // A fragment past the known end.
        let mut r = Reassembler::default();
        assert_eq!(r.feed(&p[2], 0), Reassembled::Pending);
        assert_eq!(
            r.feed(&with_offset(&p[1], 4_000, true), 0),
            Reassembled::Invalid
        );

        // A non-final fragment whose data is not a multiple of 8 bytes, and an empty one.
        let mut r = Reassembler::default();
        let odd = with_ip_len(&p[0], p[0].len() - ETH_LEN - 4);
        assert_eq!(r.feed(&odd, 0), Reassembled::Invalid);
        assert_eq!(r.feed(&with_ip_len(&p[0], IP_LEN), 0), Reassembled::Invalid);
        // A total length shorter than the header, or longer than the frame.
        let mut short = p[0].clone();
        short[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(r.feed(&short, 0), Reassembled::Invalid);
        let mut long = p[0].clone();
        long[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&1600u16.to_be_bytes());
        assert_eq!(r.feed(&long, 0), Reassembled::Invalid);
    }

    #[test]
    fn datagrams_are_told_apart_by_ident_and_addresses() {
        let a = pieces(&big_udp(3000, 20));
        let b = pieces(&big_udp(3000, 21));
        let mut c = a.clone();
        for piece in &mut c {
            piece[ETH_LEN + 15] = 101; // another guest source, same ident
        }
        let mut r = Reassembler::default();
        for i in 0..2 {
            assert_eq!(r.feed(&a[i], 0), Reassembled::Pending);
            assert_eq!(r.feed(&b[i], 0), Reassembled::Pending);
            assert_eq!(r.feed(&c[i], 0), Reassembled::Pending);
        }
        let Reassembled::Complete(whole) = r.feed(&c[2], 0) else {
            panic!("c not complete")
        };
        assert_eq!(whole[ETH_LEN + 15], 101);
        assert!(matches!(r.feed(&b[2], 0), Reassembled::Complete(_)));
        assert!(matches!(r.feed(&a[2], 0), Reassembled::Complete(_)));
    }
}
