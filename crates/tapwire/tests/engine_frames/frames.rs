//! Guest frames built by hand (so that malformed ones are one byte away from valid ones) and
//! the engine's frames parsed with every checksum verified by our own RFC 1071 code, not the
//! engine's.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

/// The guest's MAC (locally administered, unicast).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x64];
/// A MAC that is neither ours nor the engine's.
pub const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x99];
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV6: u16 = 0x86dd;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMP6: u8 = 58;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One's complement sum of `data` (not folded, not complemented).
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Fold and complement: the value for a checksum field (0 over data whose field is right).
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

pub fn pseudo4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    sum(&p, 0)
}

/// An Ethernet frame from the guest.
pub fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP packet (operation 1 request, 2 reply) from the guest.
pub fn arp(op: u16, sender_ip: Ipv4Addr, target_mac: [u8; 6], target_ip: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&GUEST_MAC);
    p.extend_from_slice(&sender_ip.octets());
    p.extend_from_slice(&target_mac);
    p.extend_from_slice(&target_ip.octets());
    let dst = if op == 1 { BROADCAST } else { target_mac };
    eth(dst, ETH_ARP, &p)
}

/// An IPv4 header (no options, checksum filled in) followed by `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum(&p, 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Recompute the IPv4 header checksum of a frame (after editing the header).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum(&frame[14..14 + ihl], 0));
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 frame from the guest to the engine's MAC.
pub fn ipv4(host_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(host_mac, ETH_IPV4, &ipv4_packet(src, dst, proto, l4))
}

/// An ICMP echo request (type 8) or other ICMP message, checksummed.
pub fn icmp4(kind: u8, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = fold(sum(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A UDP datagram with a valid checksum.
pub fn udp4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&src.port().to_be_bytes());
    d.extend_from_slice(&dst.port().to_be_bytes());
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut c = fold(sum(&d, pseudo4(*src.ip(), *dst.ip(), UDP, len)));
    if c == 0 {
        c = 0xffff;
    }
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// A TCP segment as the guest sends it.
#[derive(Debug, Clone, Default)]
pub struct Seg<'a> {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub wnd: u16,
    /// Options, already padded to a multiple of 4 bytes.
    pub opts: Vec<u8>,
    pub data: &'a [u8],
}

/// A TCP segment with a valid checksum.
pub fn tcp4(src: SocketAddrV4, dst: SocketAddrV4, s: &Seg<'_>) -> Vec<u8> {
    assert_eq!(s.opts.len() % 4, 0);
    let hlen = 20 + s.opts.len();
    let mut t = Vec::with_capacity(hlen + s.data.len());
    t.extend_from_slice(&src.port().to_be_bytes());
    t.extend_from_slice(&dst.port().to_be_bytes());
    t.extend_from_slice(&s.seq.to_be_bytes());
    t.extend_from_slice(&s.ack.to_be_bytes());
    t.push(((hlen / 4) as u8) << 4);
    t.push(s.flags);
    t.extend_from_slice(&s.wnd.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&s.opts);
    t.extend_from_slice(s.data);
    let c = fold(sum(&t, pseudo4(*src.ip(), *dst.ip(), TCP, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An IPv6 frame (`dst_mac` may be a multicast MAC) with an ICMPv6 message, checksummed.
pub fn icmp6(dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop: u8, msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    m[2..4].copy_from_slice(&[0, 0]);
    let c = fold(sum(&m, pseudo6(src, dst, ICMP6, m.len())));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(m.len() as u16).to_be_bytes());
    p.extend_from_slice(&[ICMP6, hop]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&m);
    eth(dst_mac, ETH_IPV6, &p)
}

// ---- parsing the engine's frames ----

/// A frame's Ethernet header: (dst, src, ethertype, payload).
pub type Eth<'a> = ([u8; 6], [u8; 6], u16, &'a [u8]);

/// The Ethernet header of a frame from the engine.
pub fn parse_eth(f: &[u8]) -> Option<Eth<'_>> {
    if f.len() < 14 {
        return None;
    }
    let dst = f[0..6].try_into().ok()?;
    let src = f[6..12].try_into().ok()?;
    Some((dst, src, u16::from_be_bytes([f[12], f[13]]), &f[14..]))
}

/// An IPv4 packet from the engine.
#[derive(Debug)]
pub struct Ip4<'a> {
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ident: u16,
    /// Flags and fragment offset.
    pub frag: u16,
    pub payload: &'a [u8],
}

/// Parse an IPv4 frame; panics on a bad header checksum or inconsistent lengths (the engine
/// must never emit those).
pub fn parse_ipv4(f: &[u8]) -> Option<Ip4<'_>> {
    let (dst_mac, _src, ty, p) = parse_eth(f)?;
    if ty != ETH_IPV4 {
        return None;
    }
    assert!(p.len() >= 20, "short IPv4 packet from the engine: {f:02x?}");
    assert_eq!(p[0], 0x45, "IPv4 version/IHL from the engine");
    assert_eq!(
        fold(sum(&p[..20], 0)),
        0,
        "bad IPv4 header checksum from the engine"
    );
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    assert!(
        total >= 20 && total <= p.len(),
        "IPv4 total length {total} in {} bytes",
        p.len()
    );
    let a = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    Some(Ip4 {
        dst_mac,
        src: a(12),
        dst: a(16),
        proto: p[9],
        ident: u16::from_be_bytes([p[4], p[5]]),
        frag: u16::from_be_bytes([p[6], p[7]]),
        payload: &p[20..total],
    })
}

/// A TCP segment from the engine.
#[derive(Debug, Clone)]
pub struct TcpSeg {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub wnd: u16,
    pub mss: Option<u16>,
    pub ws: Option<u8>,
    pub data: Vec<u8>,
}

impl TcpSeg {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Parse a TCP/IPv4 frame; panics on a bad checksum.
pub fn parse_tcp(f: &[u8]) -> Option<TcpSeg> {
    let ip = parse_ipv4(f)?;
    if ip.proto != TCP {
        return None;
    }
    let t = ip.payload;
    assert!(t.len() >= 20, "short TCP segment from the engine");
    assert_eq!(
        fold(sum(t, pseudo4(ip.src, ip.dst, TCP, t.len()))),
        0,
        "bad TCP checksum from the engine"
    );
    let hlen = usize::from(t[12] >> 4) * 4;
    assert!(hlen >= 20 && hlen <= t.len(), "TCP header length {hlen}");
    let (mut mss, mut ws) = (None, None);
    let mut o = &t[20..hlen];
    while let Some(&kind) = o.first() {
        match kind {
            0 => break,
            1 => o = &o[1..],
            _ => {
                let len = usize::from(*o.get(1)?);
                if len < 2 || len > o.len() {
                    break;
                }
                match (kind, len) {
                    (2, 4) => mss = Some(u16::from_be_bytes([o[2], o[3]])),
                    (3, 3) => ws = Some(o[2]),
                    _ => {}
                }
                o = &o[len..];
            }
        }
    }
    let port = |o: usize| u16::from_be_bytes([t[o], t[o + 1]]);
    let word = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    Some(TcpSeg {
        src: SocketAddrV4::new(ip.src, port(0)),
        dst: SocketAddrV4::new(ip.dst, port(2)),
        seq: word(4),
        ack: word(8),
        flags: t[13],
        wnd: port(14),
        mss,
        ws,
        data: t[hlen..].to_vec(),
    })
}

/// Parse a UDP/IPv4 frame (not a fragment); panics on a bad checksum. (src, dst, payload).
pub fn parse_udp(f: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
    let ip = parse_ipv4(f)?;
    if ip.proto != UDP || ip.frag & 0x3fff != 0 {
        return None;
    }
    let d = ip.payload;
    assert!(d.len() >= 8, "short UDP datagram from the engine");
    let len = usize::from(u16::from_be_bytes([d[4], d[5]]));
    assert_eq!(len, d.len(), "UDP length vs IP length");
    if d[6..8] != [0, 0] {
        assert_eq!(
            fold(sum(d, pseudo4(ip.src, ip.dst, UDP, len))),
            0,
            "bad UDP checksum from the engine"
        );
    }
    let port = |o: usize| u16::from_be_bytes([d[o], d[o + 1]]);
    Some((
        SocketAddrV4::new(ip.src, port(0)),
        SocketAddrV4::new(ip.dst, port(2)),
        d[8..].to_vec(),
    ))
}

/// An ICMPv4 message from the engine (checksum verified): (ip, message).
pub fn parse_icmp4(f: &[u8]) -> Option<(Ip4<'_>, &[u8])> {
    let ip = parse_ipv4(f)?;
    if ip.proto != ICMP {
        return None;
    }
    let m = ip.payload;
    assert!(m.len() >= 8, "short ICMP message from the engine");
    assert_eq!(fold(sum(m, 0)), 0, "bad ICMP checksum from the engine");
    Some((ip, m))
}

/// An ICMPv6 message from the engine (checksum verified):
/// (dst MAC, src MAC, src, dst, hop limit, message).
pub type Icmp6<'a> = ([u8; 6], [u8; 6], Ipv6Addr, Ipv6Addr, u8, &'a [u8]);

pub fn parse_icmp6(f: &[u8]) -> Option<Icmp6<'_>> {
    let (dst_mac, src_mac, ty, p) = parse_eth(f)?;
    if ty != ETH_IPV6 || p.len() < 40 || p[6] != ICMP6 {
        return None;
    }
    assert_eq!(p[0] >> 4, 6, "IPv6 version from the engine");
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    assert!(40 + len <= p.len(), "IPv6 payload length");
    let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&p[o..o + 16]).unwrap());
    let (src, dst) = (a(8), a(24));
    let m = &p[40..40 + len];
    assert_eq!(
        fold(sum(m, pseudo6(src, dst, ICMP6, len))),
        0,
        "bad ICMPv6 checksum from the engine"
    );
    Some((dst_mac, src_mac, src, dst, p[7], m))
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
