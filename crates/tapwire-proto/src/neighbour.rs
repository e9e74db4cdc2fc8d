//! The guest's neighbour entries in our stack, guarded against poisoning (sans-IO).
//!
//! # Theory of operation
//! smoltcp learns the guest's MAC address from ARP and neighbour discovery only: whatever an
//! ARP frame's sender hardware address or a neighbour solicitation's (advertisement's) link-layer
//! option says, for the sender's IP address, for 60 s. One hand-made frame from the guest's own
//! address with a bogus link-layer address therefore black-holed every frame smoltcp sent to
//! that address for a minute (issue 12, item 5). [`Guard`] sits in front of smoltcp and keeps
//! its cache honest with what the guest actually sends:
//!
//! - **Claims must match the frame.** An ARP frame whose sender hardware address, or an NS/NA
//!   whose link-layer option, differs from the frame's Ethernet source is dropped
//!   ([`Check::Drop`]): a real stack always names its own MAC.
//! - **What passes is remembered**: up to [`ENTRIES`] (IP address, MAC) claims, as smoltcp
//!   will have them (the oldest claim is forgotten first; smoltcp's own cache holds 8).
//! - **IP frames correct the claims.** An IPv4 or IPv6 frame (the guest's TCP, UDP, ICMP)
//!   from an address with a remembered claim but another Ethernet source means the claim is
//!   wrong (or the guest changed its MAC): [`Check::Heal`] asks the caller to feed smoltcp a
//!   synthetic frame claiming the real MAC (built by [`heal_frame`]: an ARP reply, or an
//!   unsolicited neighbour advertisement with the override flag), so the entry is right again
//!   at once, not after its 60 s.
//!
//! Cost per frame: the claims are usually all one MAC, so an IP frame from it costs one
//! 6-byte comparison; no allocation.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::checksum;

/// Most claims remembered.
pub const ENTRIES: usize = 16;
/// Length of the frames [`heal_frame`] builds (the NA; the ARP reply is shorter).
pub const HEAL_FRAME_MAX: usize = 14 + 40 + 32;

const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IP4: [u8; 2] = [0x08, 0x00];
const ETH_IP6: [u8; 2] = [0x86, 0xdd];

/// What to do with one guest frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Go on as usual.
    Pass,
    /// An ARP/NDP frame claiming a MAC that is not its own: do not let smoltcp see it.
    Drop,
    /// Go on as usual, and first tell smoltcp that `ip` is at `mac` ([`heal_frame`]).
    Heal { ip: IpAddr, mac: [u8; 6] },
}

/// The claims smoltcp has seen; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    entries: [Option<(IpAddr, [u8; 6])>; ENTRIES],
    next: usize,
    /// Claims remembered.
    count: usize,
    /// The one MAC of all remembered claims, if they agree (the fast path).
    uniform: Option<[u8; 6]>,
}

impl Guard {
    /// Check one frame from the guest, before it is handled.
    #[inline]
    pub fn check(&mut self, frame: &[u8]) -> Check {
        let (Some(src), Some(ethertype)) = (frame.get(6..12), frame.get(12..14)) else {
            return Check::Pass;
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(src);
        let fast = self.count == 0 || self.uniform == Some(mac);
        match [ethertype[0], ethertype[1]] {
            ETH_ARP => match arp_claim(frame) {
                Some((_, claimed)) if claimed != mac => Check::Drop,
                Some((ip, claimed)) => {
                    self.remember(ip.into(), claimed);
                    Check::Pass
                }
                None => Check::Pass,
            },
            ETH_IP4 if fast => Check::Pass,
            ETH_IP4 => match frame.get(26..30) {
                Some(ip) => self.correct(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into(), mac),
                None => Check::Pass,
            },
            ETH_IP6 => {
                let Some(b) = frame.get(22..38) else {
                    return Check::Pass;
                };
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                let ip = Ipv6Addr::from(a);
                let claim = if frame.get(20) == Some(&58) {
                    ndp_claim(frame)
                } else {
                    None
                };
                match claim {
                    Some(claimed) if claimed != mac => Check::Drop,
                    Some(claimed) => {
                        self.remember(ip.into(), claimed);
                        Check::Pass
                    }
                    None if fast || ip.is_unspecified() => Check::Pass,
                    None => self.correct(ip.into(), mac),
                }
            }
            _ => Check::Pass,
        }
    }

    /// An IP frame from `ip` came from `mac`.
    fn correct(&mut self, ip: IpAddr, mac: [u8; 6]) -> Check {
        let Some(e) = self.entries.iter_mut().flatten().find(|(a, _)| *a == ip) else {
            return Check::Pass;
        };
        if e.1 == mac {
            return Check::Pass;
        }
        e.1 = mac;
        self.recompute_uniform();
        Check::Heal { ip, mac }
    }

    fn remember(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if let Some(e) = self.entries.iter_mut().flatten().find(|(a, _)| *a == ip) {
            e.1 = mac;
        } else {
            if self.entries[self.next].replace((ip, mac)).is_none() {
                self.count += 1;
            }
            self.next = (self.next + 1) % ENTRIES;
        }
        self.recompute_uniform();
    }

    fn recompute_uniform(&mut self) {
        let mut macs = self.entries.iter().flatten().map(|(_, m)| *m);
        self.uniform = macs.next().filter(|first| macs.all(|m| m == *first));
    }
}

/// The (sender IP, sender MAC) of an Ethernet/IPv4 ARP frame.
fn arp_claim(frame: &[u8]) -> Option<(Ipv4Addr, [u8; 6])> {
    let arp = frame.get(14..42)?;
    if arp[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&arp[8..14]);
    Some((Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]), mac))
}

/// The link-layer address an IPv6 neighbour solicitation (source option) or advertisement
/// (target option) claims for its sender, if the frame is one and carries it.
fn ndp_claim(frame: &[u8]) -> Option<[u8; 6]> {
    let ip = frame.get(14..54)?;
    if ip[6] != 58 {
        return None;
    }
    let icmp = frame.get(54..)?;
    let want = match icmp.first()? {
        135 => 1,
        136 => 2,
        _ => return None,
    };
    let mut opts = icmp.get(24..)?;
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == want && len == 8 {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&opts[2..8]);
            return Some(mac);
        }
        opts = &opts[len..];
    }
    None
}

/// Who the healing frame is addressed to: our MAC and an address of ours of each family
/// (the gateway, our IPv6 link-local address).
#[derive(Debug, Clone, Copy)]
pub struct Ours {
    pub mac: [u8; 6],
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

/// Build in `buf` a frame from `mac` that makes a stack learn that `ip` is at `mac`: an ARP
/// reply to `ours.ip4`, or an unsolicited neighbour advertisement (override) to `ours.ip6`.
/// Returns its length (0 if `buf` is shorter than [`HEAL_FRAME_MAX`]).
pub fn heal_frame(buf: &mut [u8], ours: &Ours, ip: IpAddr, mac: [u8; 6]) -> usize {
    if buf.len() < HEAL_FRAME_MAX {
        return 0;
    }
    buf[0..6].copy_from_slice(&ours.mac);
    buf[6..12].copy_from_slice(&mac);
    match ip {
        IpAddr::V4(ip) => {
            buf[12..14].copy_from_slice(&ETH_ARP);
            let arp = &mut buf[14..42];
            arp[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            arp[8..14].copy_from_slice(&mac);
            arp[14..18].copy_from_slice(&ip.octets());
            arp[18..24].copy_from_slice(&ours.mac);
            arp[24..28].copy_from_slice(&ours.ip4.octets());
            42
        }
        IpAddr::V6(ip) => {
            buf[12..14].copy_from_slice(&ETH_IP6);
            let len = 32u16;
            let hdr = &mut buf[14..54];
            hdr[0..8].copy_from_slice(&[0x60, 0, 0, 0, 0, len as u8, 58, 255]);
            hdr[8..24].copy_from_slice(&ip.octets());
            hdr[24..40].copy_from_slice(&ours.ip6.octets());
            let na = &mut buf[54..86];
            na.fill(0);
            na[0] = 136;
            na[4] = 0x20; // override
            na[8..24].copy_from_slice(&ip.octets());
            na[24] = 2; // target link-layer address
            na[25] = 1;
            na[26..32].copy_from_slice(&mac);
            let mut pseudo = [0u8; 40];
            pseudo[0..16].copy_from_slice(&ip.octets());
            pseudo[16..32].copy_from_slice(&ours.ip6.octets());
            pseudo[34..36].copy_from_slice(&len.to_be_bytes());
            pseudo[39] = 58;
            let initial: u32 = pseudo
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            let c = checksum(&buf[54..86], initial);
            buf[56..58].copy_from_slice(&c.to_be_bytes());
            86
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
    const BOGUS: [u8; 6] = [0x02, 0, 0, 0xde, 0xad, 1];
    const OURS: Ours = Ours {
        mac: [0x52, 0x55, 10, 0, 2, 2],
        ip4: Ipv4Addr::new(10, 0, 2, 2),
        ip6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
    };

    fn eth(src: [u8; 6], ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(payload);
        f
    }

    fn arp(eth_src: [u8; 6], sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[10, 0, 2, 2]);
        eth(eth_src, ETH_ARP, &a)
    }

    fn ip4(src: [u8; 6], from: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 6, 0, 0];
        h.extend_from_slice(&from);
        h.extend_from_slice(&[10, 0, 2, 2]);
        eth(src, ETH_IP4, &h)
    }

    fn ip6(src: [u8; 6], from: Ipv6Addr, next: u8, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, body.len() as u8, next, 255];
        h.extend_from_slice(&from.octets());
        h.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        h.extend_from_slice(body);
        eth(src, ETH_IP6, &h)
    }

    fn ns(lladdr: [u8; 6]) -> Vec<u8> {
        let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&lladdr);
        m
    }

    #[test]
    fn arp_claims_must_match_the_frame() {
        let mut g = Guard::default();
        assert_eq!(g.check(&arp(REAL, BOGUS, [10, 0, 2, 100])), Check::Drop);
        assert_eq!(g.check(&arp(REAL, REAL, [10, 0, 2, 100])), Check::Pass);
        assert_eq!(g.check(&ip4(REAL, [10, 0, 2, 100])), Check::Pass);
        // A forged Ethernet source too: passes, and the guest's next IP frame heals it.
        assert_eq!(g.check(&arp(BOGUS, BOGUS, [10, 0, 2, 100])), Check::Pass);
        assert_eq!(
            g.check(&ip4(REAL, [10, 0, 2, 100])),
            Check::Heal {
                ip: Ipv4Addr::new(10, 0, 2, 100).into(),
                mac: REAL
            }
        );
        assert_eq!(g.check(&ip4(REAL, [10, 0, 2, 100])), Check::Pass);
        // No claim for that address: nothing to heal.
        assert_eq!(g.check(&ip4(BOGUS, [10, 0, 2, 77])), Check::Pass);
    }

    #[test]
    fn ndp_claims_must_match_the_frame() {
        let me = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x64);
        let mut g = Guard::default();
        assert_eq!(g.check(&ip6(REAL, me, 58, &ns(BOGUS))), Check::Drop);
        assert_eq!(g.check(&ip6(REAL, me, 58, &ns(REAL))), Check::Pass);
        assert_eq!(g.check(&ip6(BOGUS, me, 58, &ns(BOGUS))), Check::Pass);
        assert_eq!(
            g.check(&ip6(REAL, me, 6, &[0; 20])),
            Check::Heal {
                ip: me.into(),
                mac: REAL
            }
        );
        assert_eq!(g.check(&ip6(REAL, me, 6, &[0; 20])), Check::Pass);
        // Truncated and odd frames never panic and pass.
        for n in 0..60 {
            let f = ip6(REAL, me, 58, &ns(BOGUS));
            let _ = g.check(&f[..n.min(f.len())]);
        }
    }

    #[test]
    fn bounded_and_oldest_first() {
        let mut g = Guard::default();
        for i in 0..(ENTRIES as u8 + 4) {
            g.check(&arp(BOGUS, BOGUS, [10, 0, 2, i]));
        }
        assert_eq!(g.count, ENTRIES);
        // The first four were forgotten; the rest heal.
        assert_eq!(g.check(&ip4(REAL, [10, 0, 2, 0])), Check::Pass);
        assert!(matches!(
            g.check(&ip4(REAL, [10, 0, 2, 10])),
            Check::Heal { .. }
        ));
    }

    #[test]
    fn heal_frames_claim_the_real_mac() {
        let mut buf = [0u8; HEAL_FRAME_MAX];
        let n = heal_frame(&mut buf, &OURS, Ipv4Addr::new(10, 0, 2, 100).into(), REAL);
        assert_eq!(
            arp_claim(&buf[..n]),
            Some((Ipv4Addr::new(10, 0, 2, 100), REAL))
        );
        assert_eq!(&buf[0..6], &OURS.mac);
        let me = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x64);
        let n = heal_frame(&mut buf, &OURS, me.into(), REAL);
        assert_eq!(ndp_claim(&buf[..n]), Some(REAL));
        let f = &buf[..n];
        let pkt = smoltcp::wire::Ipv6Packet::new_checked(&f[14..]).unwrap();
        let icmp = smoltcp::wire::Icmpv6Packet::new_checked(pkt.payload()).unwrap();
        assert!(icmp.verify_checksum(&pkt.src_addr(), &pkt.dst_addr()));
        let repr = smoltcp::wire::NdiscRepr::parse(&icmp).unwrap();
        assert!(matches!(
            repr,
            smoltcp::wire::NdiscRepr::NeighborAdvert { .. }
        ));
        assert_eq!(heal_frame(&mut buf[..10], &OURS, me.into(), REAL), 0);
    }
}
