//! The namespace's own routing decision, asked of its kernel: `RTM_GETROUTE` bytes (sans-IO).
//!
//! # Theory of operation
//! Bypass mode gives a program a host socket for a destination only when the program's own
//! network namespace would send that destination out of the tap. A namespace that also has a
//! VPN (a WireGuard or Tailscale interface with routes for its networks) must keep those
//! destinations on its own stack, or the host socket would try to reach a VPN address through
//! the host's network. So before bypassing, the supervisor asks the namespace's kernel the
//! same question `ip route get DST` asks, over a `NETLINK_ROUTE` socket that the run child
//! opened inside the namespace, and compares the answer's output interface with the tap's
//! index:
//!
//! - [`request`] encodes `RTM_GETROUTE` for one destination: `nlmsghdr` + `rtmsg` (family,
//!   `rtm_dst_len` = full length) + `RTA_DST`. No `NLM_F_DUMP`: the kernel answers with the one
//!   route it would use (policy routing, source selection and all), like `ip route get`.
//! - [`parse_reply`] reads the answer: `RTM_NEWROUTE` with `RTA_OIF` ([`Reply::Oif`]), or
//!   `NLMSG_ERROR` with a negative errno ([`Reply::Error`], e.g. `ENETUNREACH` when the
//!   namespace has no route at all). Anything else is [`Reply::Malformed`]. Only a route out
//!   of another interface changes the decision (the program's own socket then carries the
//!   connect); no route or no answer leaves it to the policy, which never reaches more than
//!   the tap path would.
//!
//! Replies are matched by sequence number; a stale reply (a timed-out earlier question) is
//! [`Reply::Stale`] and the caller reads again.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The longest request [`request`] writes (IPv6: 16 + 12 + 4 + 16).
pub const REQUEST_MAX: usize = NLMSG_HDRLEN + RTMSG_LEN + 4 + 16;

/// The kernel's answer to one [`request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The route goes out of this interface index.
    Oif(u32),
    /// The kernel refused the lookup with this (positive) errno, e.g. `ENETUNREACH`.
    Error(i32),
    /// An answer to another sequence number.
    Stale,
    /// Not a route reply we can read.
    Malformed,
}

/// Encode `RTM_GETROUTE` for `dst` into `buf` and return its length. The port owner is the
/// kernel (`nlmsg_pid` 0).
pub fn request(seq: u32, dst: IpAddr, buf: &mut [u8; REQUEST_MAX]) -> usize {
    let mut octets = [0u8; 16];
    let (family, alen) = match dst {
        IpAddr::V4(a) => {
            octets[..4].copy_from_slice(&a.octets());
            (AF_INET, 4)
        }
        IpAddr::V6(a) => {
            octets.copy_from_slice(&a.octets());
            (AF_INET6, 16)
        }
    };
    let len = NLMSG_HDRLEN + RTMSG_LEN + 4 + alen;
    buf.fill(0);
    buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let r = NLMSG_HDRLEN;
    buf[r] = family;
    buf[r + 1] = (alen * 8) as u8;
    let a = r + RTMSG_LEN;
    buf[a..a + 2].copy_from_slice(&((4 + alen) as u16).to_ne_bytes());
    buf[a + 2..a + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
    buf[a + 4..a + 4 + alen].copy_from_slice(&octets[..alen]);
    len
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Read the kernel's answer to the request with sequence number `seq` (one datagram).
pub fn parse_reply(seq: u32, msg: &[u8]) -> Reply {
    parse(seq, msg).unwrap_or(Reply::Malformed)
}

fn parse(seq: u32, msg: &[u8]) -> Option<Reply> {
    let len = u32_at(msg, 0)? as usize;
    if len < NLMSG_HDRLEN || len > msg.len() {
        return None;
    }
    let msg = &msg[..len];
    let ty = u16_at(msg, 4)?;
    if u32_at(msg, 8)? != seq {
        return Some(Reply::Stale);
    }
    match ty {
        NLMSG_ERROR => {
            let err = i32::from_ne_bytes(msg.get(16..20)?.try_into().ok()?);
            // 0 is an ack, which a request without NLM_F_ACK never gets; treat it as garbage.
            (err < 0).then(|| Reply::Error(err.checked_neg().unwrap_or(i32::MAX)))
        }
        RTM_NEWROUTE => {
            let mut at = NLMSG_HDRLEN + RTMSG_LEN;
            while at + 4 <= msg.len() {
                let alen = u16_at(msg, at)? as usize;
                let aty = u16_at(msg, at + 2)? & 0x3fff;
                if alen < 4 || at + alen > msg.len() {
                    return None;
                }
                if aty == RTA_OIF && alen == 8 {
                    return Some(Reply::Oif(u32_at(msg, at + 4)?));
                }
                at += (alen + 3) & !3;
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// An `RTM_NEWROUTE` as the kernel sends it for `ip route get 10.99.0.2` (table, dst,
    /// oif, prefsrc attributes), with the given sequence number and output interface.
    fn newroute(seq: u32, oif: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&1234u32.to_ne_bytes());
        m.extend_from_slice(&[AF_INET, 32, 0, 0, 254, 0, 0, 1, 0, 2, 0, 0]);
        let attr = |m: &mut Vec<u8>, ty: u16, data: &[u8]| {
            m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(data);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        };
        attr(&mut m, 15, &254u32.to_ne_bytes()); // RTA_TABLE
        attr(&mut m, RTA_DST, &[10, 99, 0, 2]);
        attr(&mut m, RTA_OIF, &oif.to_ne_bytes());
        attr(&mut m, 7, &[10, 99, 0, 1]); // RTA_PREFSRC
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]); // the echoed request header
        m
    }

    #[test]
    fn request_v4_is_ip_route_get() {
        let mut b = [0u8; REQUEST_MAX];
        let n = request(7, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), &mut b);
        assert_eq!(n, 36);
        assert_eq!(u32_at(&b, 0), Some(36));
        assert_eq!(u16_at(&b, 4), Some(RTM_GETROUTE));
        assert_eq!(u16_at(&b, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&b, 8), Some(7));
        assert_eq!(&b[16..18], &[AF_INET, 32]);
        assert_eq!(u16_at(&b, 28), Some(8));
        assert_eq!(u16_at(&b, 30), Some(RTA_DST));
        assert_eq!(&b[32..36], &[10, 99, 0, 2]);
    }

    #[test]
    fn request_v6_has_a_128_bit_destination() {
        let mut b = [0u8; REQUEST_MAX];
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let n = request(1, IpAddr::V6(dst), &mut b);
        assert_eq!(n, REQUEST_MAX);
        assert_eq!(&b[16..18], &[AF_INET6, 128]);
        assert_eq!(&b[32..48], &dst.octets());
    }

    #[test]
    fn reply_gives_the_output_interface() {
        assert_eq!(parse_reply(5, &newroute(5, 3)), Reply::Oif(3));
    }

    #[test]
    fn reply_to_another_question_is_stale() {
        assert_eq!(parse_reply(6, &newroute(5, 3)), Reply::Stale);
        assert_eq!(parse_reply(6, &error(5, 101)), Reply::Stale);
    }

    #[test]
    fn no_route_is_the_kernels_errno() {
        assert_eq!(parse_reply(9, &error(9, 101)), Reply::Error(101));
        // An ack (errno 0) is never an answer to a route question.
        assert_eq!(parse_reply(9, &error(9, 0)), Reply::Malformed);
        // i32::MIN cannot be negated; still an error, not a panic.
        let mut m = error(9, 0);
        m[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(parse_reply(9, &m), Reply::Error(i32::MAX));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let good = newroute(1, 2);
        for cut in 0..good.len() {
            // Every truncation (with the length field left claiming more) is refused.
            assert_eq!(parse_reply(1, &good[..cut]), Reply::Malformed, "cut {cut}");
        }
        let mut no_oif = good.clone();
        let at = no_oif.len() - 16; // the RTA_OIF attribute's type
        no_oif[at + 2..at + 4].copy_from_slice(&99u16.to_ne_bytes());
        assert_eq!(parse_reply(1, &no_oif), Reply::Malformed);
        let mut zero_attr = good.clone();
        zero_attr[28..30].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse_reply(1, &zero_attr), Reply::Malformed);
        let mut other = good;
        other[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        assert_eq!(parse_reply(1, &other), Reply::Malformed);
    }
}
