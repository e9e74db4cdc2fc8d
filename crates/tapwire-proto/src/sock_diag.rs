//! The `NETLINK_SOCK_DIAG` messages that find the guest's listening sockets: the dump request
//! and a parser for the kernel's replies and destroy events, as bytes (no socket here).
//!
//! # Theory of operation
//! The daemon holds a `NETLINK_SOCK_DIAG` socket made inside the guest's network namespace (a
//! netlink socket answers for the namespace it was created in). To learn which sockets listen
//! it sends [`dump_request`] for each of (IPv4, IPv6) x (TCP, UDP): a `SOCK_DIAG_BY_FAMILY`
//! request with `NLM_F_DUMP` and an `inet_diag_req_v2` asking for the `LISTEN` state (TCP) or
//! the `CLOSE` state (UDP: a socket that is bound but not connected). The kernel answers with
//! one `inet_diag_msg` per socket, then `NLMSG_DONE` (or `NLMSG_ERROR`), all carrying the
//! request's sequence number. [`parse`] walks one received datagram: every message is
//! length-checked before it is read, so hostile or truncated bytes end the walk (counted as
//! malformed) and never panic.
//!
//! The socket is also subscribed to the `SKNLGRP_INET*_DESTROY` groups ([`DESTROY_GROUPS`]):
//! the kernel then multicasts an `inet_diag_msg` with sequence number 0 whenever a socket of
//! the guest is destroyed. There is no such event for a *new* listener, so new listeners are
//! only found by a dump; a destroy event is only a hint to dump again soon ([`Parsed::events`]).
//!
//! Layouts (native endian headers, network-order ports and addresses): `nlmsghdr` 16 bytes
//! (len, type, flags, seq, pid); `inet_diag_req_v2` 56 bytes (family, protocol, ext, pad,
//! states, sockid); `inet_diag_msg` 72 bytes (family, state, timer, retrans, sockid, expires,
//! rqueue, wqueue, uid, inode) followed by `rtattr`s, of which `INET_DIAG_SKV6ONLY` (sent for
//! IPv6 sockets in LISTEN or CLOSE) says whether an IPv6 socket also takes IPv4.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Proto;
use crate::linux::{AF_INET, AF_INET6};

/// `NETLINK_SOCK_DIAG`, the netlink protocol number.
pub const NETLINK_SOCK_DIAG: i32 = 4;
/// `SKNLGRP_INET_TCP_DESTROY` .. `SKNLGRP_INET6_UDP_DESTROY` (groups 1..=4) as `nl_groups` bits.
pub const DESTROY_GROUPS: u32 = 0b1111;
/// Size of one dump request.
pub const REQUEST_LEN: usize = NLMSG_HDR + REQ_V2;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const INET_DIAG_SKV6ONLY: u16 = 11;

/// A socket of the guest that accepts connections (TCP) or datagrams from anyone (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listener {
    pub proto: Proto,
    /// The bound address (`0.0.0.0`, `::`, `127.0.0.1`, the guest's own address...).
    pub addr: IpAddr,
    pub port: u16,
    /// An IPv6 socket with `IPV6_V6ONLY` (takes no IPv4); always false for IPv4.
    pub v6only: bool,
}

/// The dump request for one address family (`v6`) and protocol, with sequence number `seq`
/// (not 0: destroy events carry 0).
pub fn dump_request(v6: bool, proto: Proto, seq: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel. inet_diag_req_v2:
    b[16] = if v6 { AF_INET6 } else { AF_INET } as u8;
    let (protocol, state) = match proto {
        Proto::Tcp => (IPPROTO_TCP, TCP_LISTEN),
        Proto::Udp => (IPPROTO_UDP, TCP_CLOSE),
    };
    b[17] = protocol;
    b[20..24].copy_from_slice(&(1u32 << state).to_ne_bytes());
    b
}

/// What one datagram from the socket held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The dump of `seq` is complete (`NLMSG_DONE`).
    pub done: bool,
    /// The kernel refused the dump (`NLMSG_ERROR`, a positive errno).
    pub error: Option<i32>,
    /// Destroy events (sequence number 0) seen.
    pub events: u32,
    /// The walk stopped at a message that did not fit or made no sense.
    pub malformed: bool,
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walk one datagram of replies to the dump `seq` of `proto`; listeners found are pushed to
/// `out`. Messages of other (older) dumps are skipped.
pub fn parse(buf: &[u8], seq: u32, proto: Proto, out: &mut Vec<Listener>) -> Parsed {
    let mut p = Parsed::default();
    let mut at = 0usize;
    while at < buf.len() {
        let (Some(len), Some(kind), Some(mseq)) =
            (u32_ne(buf, at), u16_ne(buf, at + 4), u32_ne(buf, at + 8))
        else {
            p.malformed = true;
            break;
        };
        let len = len as usize;
        let Some(msg) = buf
            .get(at..at.saturating_add(len))
            .filter(|_| len >= NLMSG_HDR)
        else {
            p.malformed = true;
            break;
        };
        let body = &msg[NLMSG_HDR..];
        if mseq == 0 {
            if kind == SOCK_DIAG_BY_FAMILY {
                p.events += 1;
            }
        } else if mseq == seq {
            match kind {
                NLMSG_DONE => p.done = true,
                NLMSG_ERROR => {
                    let errno = u32_ne(body, 0).map_or(0, |e| (e as i32).wrapping_neg());
                    p.error = Some(errno);
                    p.done = true;
                }
                SOCK_DIAG_BY_FAMILY => match listener(body, proto) {
                    Ok(Some(l)) => out.push(l),
                    Ok(None) => {}
                    Err(()) => {
                        p.malformed = true;
                        break;
                    }
                },
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        at = at.saturating_add((len + 3) & !3);
    }
    p
}

/// One `inet_diag_msg` (and its attributes): a listener, `None` for a socket that is not one
/// (a connected UDP socket, a port-less socket), `Err` if it does not fit.
fn listener(body: &[u8], proto: Proto) -> Result<Option<Listener>, ()> {
    let m = body.get(..DIAG_MSG).ok_or(())?;
    let family = i32::from(m[0]);
    let state = m[1];
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let src = &m[8..24];
    let wanted = match proto {
        Proto::Tcp => state == TCP_LISTEN,
        // Bound and not connected; an ESTABLISHED UDP socket only talks to its peer.
        Proto::Udp => state == TCP_CLOSE && dport == 0,
    };
    if !wanted || sport == 0 || state == TCP_ESTABLISHED {
        return Ok(None);
    }
    let mut v6only = false;
    let addr = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
        AF_INET6 => {
            let a: [u8; 16] = src.try_into().map_err(|_| ())?;
            let mut at = DIAG_MSG;
            while let (Some(alen), Some(atype)) = (u16_ne(body, at), u16_ne(body, at + 2)) {
                let alen = usize::from(alen);
                if alen < 4 || body.len() < at + alen {
                    break;
                }
                if atype == INET_DIAG_SKV6ONLY {
                    v6only = body.get(at + 4).is_some_and(|&b| b != 0);
                }
                at += (alen + 3) & !3;
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Ok(None),
    };
    Ok(Some(Listener {
        proto,
        addr,
        port: sport,
        v6only,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real replies of a 6.x kernel in a namespace with: TCP 0.0.0.0:8080, TCP [::]:8081
    // (IPV6_V6ONLY), TCP [::]:8082 (dual stack), UDP 127.0.0.1:5353, UDP [::]:5354; seq 7.
    const TCP4: &str = concat!(
        "7c00000014000200070000005c420000020a00001f900000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000600000000000000000000000000000080000000000000007e3c00000500080000000000",
        "08000f00000000000c001500010000000000000006001600520000001400000003000200070000005c42000000000000",
    );
    const TCP6: &str = concat!(
        "8400000014000200070000005c4200000a0a00001f920000000000000000000000000000000000000000000000000000",
        "000000000000000000000000070000000000000000000000000000008000000000000000823c00000500080000000000",
        "05000b000000000008000f00000000000c00150001000000000000000600160012000000840000001400020007000000",
        "5c4200000a0a00001f910000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0800000000000000000000000000000080000000000000007f3c0000050008000000000005000b000100000008000f00",
        "000000000c001500010000000000000006001600120000001400000003000200070000005c42000000000000",
    );
    const UDP4: &str = concat!(
        "7c00000014000200070000005c4200000207000014e900007f0000010000000000000000000000000000000000000000",
        "000000000000000000000000090000000000000000000000000000000000000000000000803c00000500080000000000",
        "08000f00000000000c001500010000000000000006001600500000001400000003000200070000005c42000000000000",
    );
    const UDP6: &str = concat!(
        "8400000014000200070000005c4200000a07000014ea0000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000a0000000000000000000000000000000000000000000000813c00000500080000000000",
        "05000b000000000008000f00000000000c00150001000000000000000600160010000000140000000300020007000000",
        "5c42000000000000",
    );
    // A destroy event (a listener on 127.0.0.1 closed), first 96 bytes and the length.
    const EVENT_HEAD: &str = concat!(
        "7c01000014000000000000000000000002070000ce3300007f000001000000000000000000000000",
        "00000000000000000000000000000000000000000110000000000000000000000000000000000000"
    );

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn run(s: &str, proto: Proto) -> (Parsed, Vec<Listener>) {
        let mut out = Vec::new();
        let p = parse(&hex(s), 7, proto, &mut out);
        (p, out)
    }

    fn l(proto: Proto, addr: &str, port: u16, v6only: bool) -> Listener {
        Listener {
            proto,
            addr: addr.parse().unwrap(),
            port,
            v6only,
        }
    }

    #[test]
    fn request_bytes() {
        let r = dump_request(true, Proto::Udp, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(&r[0..4], &72u32.to_ne_bytes());
        assert_eq!(&r[4..8], &[20, 0, 1, 3]);
        assert_eq!(&r[8..12], &9u32.to_ne_bytes());
        assert_eq!((r[16], r[17]), (10, 17));
        assert_eq!(&r[20..24], &(1u32 << 7).to_ne_bytes());
        let r = dump_request(false, Proto::Tcp, 1);
        assert_eq!((r[16], r[17]), (2, 6));
        assert_eq!(&r[20..24], &(1u32 << 10).to_ne_bytes());
    }

    #[test]
    fn real_dumps() {
        let (p, out) = run(TCP4, Proto::Tcp);
        assert_eq!(
            p,
            Parsed {
                done: true,
                ..Parsed::default()
            }
        );
        assert_eq!(out, [l(Proto::Tcp, "0.0.0.0", 8080, false)]);
        let (p, out) = run(TCP6, Proto::Tcp);
        assert!(p.done && !p.malformed);
        assert_eq!(
            out,
            [
                l(Proto::Tcp, "::", 8082, false),
                l(Proto::Tcp, "::", 8081, true)
            ]
        );
        let (_, out) = run(UDP4, Proto::Udp);
        assert_eq!(out, [l(Proto::Udp, "127.0.0.1", 5353, false)]);
        let (_, out) = run(UDP6, Proto::Udp);
        assert_eq!(out, [l(Proto::Udp, "::", 5354, false)]);
    }

    #[test]
    fn other_sequence_numbers_and_events() {
        let mut out = Vec::new();
        let p = parse(&hex(TCP4), 8, Proto::Tcp, &mut out);
        assert!(!p.done && out.is_empty());
        // The event's header says 380 bytes: only its head is here, so it is malformed.
        let mut ev = hex(EVENT_HEAD);
        let p = parse(&ev, 7, Proto::Tcp, &mut out);
        assert!(p.malformed && p.events == 0);
        ev.resize(0x17c, 0);
        let p = parse(&ev, 7, Proto::Tcp, &mut out);
        assert_eq!(p.events, 1);
        assert!(!p.malformed && out.is_empty());
    }

    #[test]
    fn errors_and_hostile_bytes() {
        // NLMSG_ERROR with -EPERM.
        let mut e = vec![0u8; 20];
        e[0..4].copy_from_slice(&20u32.to_ne_bytes());
        e[4..6].copy_from_slice(&2u16.to_ne_bytes());
        e[8..12].copy_from_slice(&7u32.to_ne_bytes());
        e[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        let mut out = Vec::new();
        assert_eq!(parse(&e, 7, Proto::Tcp, &mut out).error, Some(1));
        // Every truncation of a real dump, and every length value, parses without panic.
        let whole = hex(TCP6);
        for cut in 0..whole.len() {
            parse(&whole[..cut], 7, Proto::Tcp, &mut out);
        }
        for len in [0u32, 1, 15, 16, 17, 87, 88, u32::MAX] {
            let mut b = whole.clone();
            b[0..4].copy_from_slice(&len.to_ne_bytes());
            parse(&b, 7, Proto::Tcp, &mut out);
            // An attribute length that runs past the message.
            let mut b = whole.clone();
            b[88..90].copy_from_slice(&(len as u16).to_ne_bytes());
            parse(&b, 7, Proto::Tcp, &mut out);
        }
        let p = parse(&whole[..20], 7, Proto::Tcp, &mut out);
        assert!(p.malformed);
    }
}
