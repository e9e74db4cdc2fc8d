//! Raw `struct sockaddr` bytes (sans-IO): decoding what a container passed to `connect`,
//! `sendto`/`sendmsg` or `bind`, and encoding the addresses handed back to the kernel.
//!
//! # Theory of operation
//! In bypass mode the supervisor reads a socket call's address from the container's memory as
//! plain bytes; nothing about them can be trusted. [`decode_connect`] and [`decode_send`] mirror
//! the kernel's own checks (minimum length per family, which families a socket domain takes,
//! and the errno it returns otherwise: `EINVAL`, `EAFNOSUPPORT`), so that an address the kernel
//! would refuse is refused the same way and never acted upon. [`decode_inet`] reads an AF_INET or
//! AF_INET6 address for bind and getpeername, [`family`] just the family field, and [`encode`]
//! writes a `sockaddr_in`/`sockaddr_in6` ([`RawAddr`]) for the host calls. Multi-byte fields
//! are in the kernel's layout: the family, flow label and scope id in native byte order, the
//! port and address in network order. None of these functions panics, whatever the bytes.
//! `crate::bypass` re-exports everything here.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::linux;

const AF_UNSPEC: u16 = linux::AF_UNSPEC as u16;
const AF_INET: u16 = linux::AF_INET as u16;
const AF_INET6: u16 = linux::AF_INET6 as u16;
/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
pub const SOCKADDR_IN6_LEN: usize = 28;
/// The kernel accepts an AF_INET6 connect address of this length (RFC 2133, no scope id).
const SIN6_LEN_RFC2133: usize = 24;
/// The largest address any socket call takes (`sizeof(struct sockaddr_storage)`).
pub const SOCKADDR_MAX: usize = 128;

/// A decoded connect address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// AF_UNSPEC: dissolve the association (disconnect).
    Unspec,
    /// An address of the socket's family (for an AF_INET6 UDP socket, also a plain AF_INET one).
    Inet(SocketAddr),
}

/// The family field of a raw sockaddr, if there are enough bytes for one.
pub fn family(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Decode the address of `connect(fd, bytes, len)` on an AF_INET (`v6 == false`) or AF_INET6
/// socket of type stream or datagram (`dgram`), with the kernel's checks. `Err` is the errno the
/// kernel would return. An IPv6 address keeps its flow label and scope id.
pub fn decode_connect(bytes: &[u8], v6: bool, dgram: bool) -> Result<Dest, i32> {
    let fam = family(bytes).ok_or(linux::EINVAL)?;
    match fam {
        AF_UNSPEC => Ok(Dest::Unspec),
        AF_INET if !v6 || dgram => {
            if bytes.len() < SOCKADDR_IN_LEN {
                return Err(linux::EINVAL);
            }
            decode_inet(bytes).map(Dest::Inet).ok_or(linux::EINVAL)
        }
        AF_INET6 if v6 => {
            if bytes.len() < SIN6_LEN_RFC2133 {
                return Err(linux::EINVAL);
            }
            decode_inet(bytes).map(Dest::Inet).ok_or(linux::EINVAL)
        }
        _ if v6 && bytes.len() < SIN6_LEN_RFC2133 => Err(linux::EINVAL),
        _ if !v6 && bytes.len() < SOCKADDR_IN_LEN => Err(linux::EINVAL),
        _ => Err(linux::EAFNOSUPPORT),
    }
}

/// Decode the destination of a UDP `sendto`/`sendmsg` on an AF_INET (`v6 == false`) or
/// AF_INET6 socket as the kernel reads it: `Ok(None)` means "no address" (use the connected
/// peer). Unlike connect, an AF_INET socket takes an AF_UNSPEC address as an IPv4 one, and an
/// AF_INET6 socket ignores it.
pub fn decode_send(bytes: &[u8], v6: bool) -> Result<Option<SocketAddr>, i32> {
    let fam = family(bytes).ok_or(linux::EINVAL)?;
    let v4 = |bytes: &[u8]| -> Result<Option<SocketAddr>, i32> {
        if bytes.len() < SOCKADDR_IN_LEN {
            return Err(linux::EINVAL);
        }
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let a: [u8; 4] = bytes[4..8].try_into().map_err(|_| linux::EINVAL)?;
        Ok(Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(a),
            port,
        ))))
    };
    match (v6, fam) {
        (false, AF_INET | AF_UNSPEC) => v4(bytes),
        (false, _) if bytes.len() < SOCKADDR_IN_LEN => Err(linux::EINVAL),
        (false, _) => Err(linux::EAFNOSUPPORT),
        (true, AF_INET6) => {
            if bytes.len() < SIN6_LEN_RFC2133 {
                return Err(linux::EINVAL);
            }
            decode_inet(bytes).map(Some).ok_or(linux::EINVAL)
        }
        (true, AF_INET) => v4(bytes),
        (true, AF_UNSPEC) => Ok(None),
        (true, _) => Err(linux::EINVAL),
    }
}

/// An AF_INET (>= 16 bytes) or AF_INET6 (>= 24 bytes; the scope id is 0 if absent) sockaddr;
/// `None` for anything else.
pub fn decode_inet(bytes: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    match family(bytes)? {
        AF_INET => {
            let a: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        AF_INET6 => {
            if bytes.len() < SIN6_LEN_RFC2133 {
                return None;
            }
            let flow: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            let a: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let scope = match bytes.get(24..28) {
                Some(s) => u32::from_ne_bytes(s.try_into().ok()?),
                None => 0,
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                u32::from_ne_bytes(flow),
                scope,
            )))
        }
        _ => None,
    }
}

/// A raw sockaddr built by [`encode`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawAddr {
    buf: [u8; SOCKADDR_IN6_LEN],
    len: usize,
}

impl RawAddr {
    /// The `len` bytes to hand to the kernel.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match decode_inet(self.as_bytes()) {
            Some(a) => write!(f, "RawAddr({a})"),
            None => write!(f, "RawAddr({:?})", self.as_bytes()),
        }
    }
}

/// `addr` as a `struct sockaddr_in` or `struct sockaddr_in6`.
pub fn encode(addr: &SocketAddr) -> RawAddr {
    let mut buf = [0u8; SOCKADDR_IN6_LEN];
    let len = match addr {
        SocketAddr::V4(a) => {
            buf[..2].copy_from_slice(&AF_INET.to_ne_bytes());
            buf[2..4].copy_from_slice(&a.port().to_be_bytes());
            buf[4..8].copy_from_slice(&a.ip().octets());
            SOCKADDR_IN_LEN
        }
        SocketAddr::V6(a) => {
            buf[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            buf[2..4].copy_from_slice(&a.port().to_be_bytes());
            buf[4..8].copy_from_slice(&a.flowinfo().to_ne_bytes());
            buf[8..24].copy_from_slice(&a.ip().octets());
            buf[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            SOCKADDR_IN6_LEN
        }
    };
    RawAddr { buf, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sockaddr_roundtrip() {
        for a in [
            "10.0.2.2:80",
            "[2001:db8::1]:443",
            "[fe80::1%7]:22",
            "[::ffff:1.2.3.4]:1",
        ] {
            let a = sa(a);
            let raw = encode(&a);
            assert_eq!(decode_inet(raw.as_bytes()), Some(a));
        }
        assert_eq!(encode(&sa("1.2.3.4:258")).as_bytes(), {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(linux::AF_INET as u16).to_ne_bytes());
            b[2..8].copy_from_slice(&[1, 2, 1, 2, 3, 4]);
            b
        });
    }

    #[test]
    fn decode_connect_mirrors_the_kernel() {
        let v4 = encode(&sa("10.0.2.2:80"));
        let v6 = encode(&sa("[2001:db8::1]:80"));
        let b4 = v4.as_bytes();
        let b6 = v6.as_bytes();
        assert_eq!(
            decode_connect(b4, false, false),
            Ok(Dest::Inet(sa("10.0.2.2:80")))
        );
        assert_eq!(decode_connect(&b4[..15], false, false), Err(linux::EINVAL));
        assert_eq!(decode_connect(&b4[..1], false, false), Err(linux::EINVAL));
        assert_eq!(decode_connect(&[], false, false), Err(linux::EINVAL));
        // An AF_INET6 address on an AF_INET socket.
        assert_eq!(decode_connect(b6, false, false), Err(linux::EAFNOSUPPORT));
        // AF_INET6 socket: 24 bytes suffice; an AF_INET address only for UDP.
        assert_eq!(
            decode_connect(&b6[..24], true, false),
            Ok(Dest::Inet(sa("[2001:db8::1]:80")))
        );
        assert_eq!(decode_connect(&b6[..23], true, false), Err(linux::EINVAL));
        assert_eq!(
            decode_connect(b4, true, true),
            Ok(Dest::Inet(sa("10.0.2.2:80")))
        );
        assert_eq!(decode_connect(b4, true, false), Err(linux::EINVAL));
        let mut unspec = [0u8; 16];
        unspec[..2].copy_from_slice(&(linux::AF_UNSPEC as u16).to_ne_bytes());
        assert_eq!(decode_connect(&unspec[..2], false, false), Ok(Dest::Unspec));
        let mut unix = [0u8; 110];
        unix[..2].copy_from_slice(&(linux::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(
            decode_connect(&unix, false, false),
            Err(linux::EAFNOSUPPORT)
        );
        assert_eq!(decode_connect(&unix, true, true), Err(linux::EAFNOSUPPORT));
    }

    #[test]
    fn decode_send_mirrors_udp_sendmsg() {
        let v4 = encode(&sa("10.0.2.2:53"));
        let v6 = encode(&sa("[2001:db8::1]:53"));
        let mut unspec4 = v4;
        unspec4.buf[..2].copy_from_slice(&AF_UNSPEC.to_ne_bytes());
        assert_eq!(
            decode_send(v4.as_bytes(), false),
            Ok(Some(sa("10.0.2.2:53")))
        );
        // AF_UNSPEC on an AF_INET socket still carries an address (udp_sendmsg reads it).
        assert_eq!(
            decode_send(unspec4.as_bytes(), false),
            Ok(Some(sa("10.0.2.2:53")))
        );
        assert_eq!(decode_send(&v4.as_bytes()[..15], false), Err(linux::EINVAL));
        assert_eq!(decode_send(v6.as_bytes(), false), Err(linux::EAFNOSUPPORT));
        assert_eq!(
            decode_send(v6.as_bytes(), true),
            Ok(Some(sa("[2001:db8::1]:53")))
        );
        assert_eq!(
            decode_send(v4.as_bytes(), true),
            Ok(Some(sa("10.0.2.2:53")))
        );
        assert_eq!(decode_send(unspec4.as_bytes(), true), Ok(None));
        assert_eq!(decode_send(&[], true), Err(linux::EINVAL));
        let mut unix = [0u8; 110];
        unix[..2].copy_from_slice(&(linux::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode_send(&unix, true), Err(linux::EINVAL));
    }

    #[test]
    fn decoders_never_panic() {
        // Every length and a spread of contents, including every family value's low byte.
        let mut buf = [0u8; SOCKADDR_MAX + 8];
        let mut x: u32 = 0x1234_5678;
        for round in 0..2000 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            buf[0] = (round % 32) as u8;
            buf[1] = 0;
            let len = round % buf.len();
            let bytes = &buf[..len];
            let _ = decode_inet(bytes);
            for (v6, dgram) in [(false, false), (false, true), (true, false), (true, true)] {
                let _ = decode_connect(bytes, v6, dgram);
                let _ = decode_send(bytes, v6);
            }
            let _ = family(bytes);
        }
    }
}
