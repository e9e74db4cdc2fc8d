//! The bypass decision (sans-IO): which socket calls of a container get a host socket, and what
//! the container must see.
//!
//! # Theory of operation
//! In bypass mode a seccomp filter stops the container's `connect`, `bind`, `listen`,
//! `getpeername` (and, with UDP bypass, the `send*` calls that carry an address) and the
//! supervisor ([`tapwire::bypass::supervisor`]) decides what to do with each. This module is that decision,
//! free of I/O so that unit tests drive it with plain values and raw bytes:
//!
//! - [`Policy::connect`]: for a destination (already decoded and normalized: an IPv4-mapped
//!   IPv6 address counts as the IPv4 address it carries), one [`Route`]:
//!
//!   | destination | route |
//!   |---|---|
//!   | built-in ignore list: `0.0.0.0/8`, `127.0.0.0/8`, multicast, `240.0.0.0/4`, `::`, `::1`, `fe80::/10`, `ff00::/8` | [`Route::Tap`] |
//!   | `--ignore` CIDRs | [`Route::Tap`] |
//!   | the tap network, except the gateway (so DNS at network+3 stays on the tap) | [`Route::Tap`] |
//!   | IPv6 without `-6` | [`Route::Tap`] (the namespace has no IPv6 route: the kernel says so) |
//!   | the gateway | host loopback, as in tap mode ([`crate::nat`]); [`Route::Refuse`] `ENETUNREACH` with `--disable-host-loopback` |
//!   | anything else | [`Route::Host`] with the same address |
//!
//!   Bypass therefore never reaches anything the tap path would not: every [`Route::Host`]
//!   target is what [`crate::nat::Nat::translate`] gives for the same destination.
//! - [`Policy::bind`]: a TCP bind to a published guest port (`-p HOST:GUEST`) on the
//!   unspecified or the guest address is served by a host socket bound to HOST; everything else
//!   stays in the namespace. [`Policy::listen_ok`] lets `listen` run on a host socket only if it
//!   is bound to such a published address.
//! - Raw `struct sockaddr` bytes from the container's memory: [`decode_connect`] mirrors the
//!   kernel's own checks (length, family per socket domain) so that an address the kernel would
//!   refuse is never acted upon; [`decode_inet`] and [`encode`] convert for bind, getpeername
//!   and the host calls. They never panic, whatever the bytes.
//! - [`PeerTable`]: the original destination of translated sockets (the gateway became
//!   127.0.0.1), keyed by the socket's inode number so that `dup`ed and inherited copies of the
//!   socket find it too; bounded, oldest entries go first (a lost entry only means `getpeername`
//!   shows the host address).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use crate::config::{NetConfig, Proto, Publish};
use crate::linux;
use crate::nat::{Nat, Verdict};
use crate::wire::Unreachable;

/// An IPv4 or IPv6 network (`--ignore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` are cleared. `None` if the prefix is too
    /// long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix)))
            }
            IpAddr::V6(a) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside. An IPv4 network never contains an IPv6 address and vice versa
    /// (normalize IPv4-mapped addresses first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    /// `ADDR/PREFIX` (IPv4 or IPv6), or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid address '{addr}' (expected IPv4 or IPv6 CIDR)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("invalid prefix length '{p}'"));
                }
                p.parse::<u8>()
                    .ok()
                    .filter(|&n| n <= max)
                    .ok_or_else(|| format!("prefix length must be 0-{max}, got '{p}'"))?
            }
        };
        Cidr::new(addr, prefix).ok_or_else(|| "invalid CIDR".to_owned())
    }
}

/// Destinations that are never bypassed, whatever the options: they mean "this host" or "this
/// link" and must keep meaning the container's own.
const BUILTIN_IGNORE: [(IpAddr, u8); 8] = [
    (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
    (IpAddr::V4(Ipv4Addr::new(240, 0, 0, 0)), 4),
    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
    (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
];

/// What to do with a `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Leave it in the container's network namespace (the tap path).
    Tap,
    /// Bypass: a host socket connected to this address.
    Host(SocketAddr),
    /// Fail the call with this errno.
    Refuse(i32),
}

/// The bypass policy, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    net: NetConfig,
    nat: Nat,
    ignore: Vec<Cidr>,
    publish: Vec<Publish>,
}

impl Policy {
    /// `ignore`: the `--ignore` networks (added to the built-in list); `publish`: the `-p`
    /// forwards (only TCP ones are served by bind).
    pub fn new(net: &NetConfig, ignore: &[Cidr], publish: &[Publish]) -> Policy {
        let mut all: Vec<Cidr> = BUILTIN_IGNORE
            .iter()
            .filter_map(|&(a, p)| Cidr::new(a, p))
            .collect();
        all.extend_from_slice(ignore);
        Policy {
            net: net.clone(),
            nat: Nat::new(net),
            ignore: all,
            publish: publish
                .iter()
                .filter(|p| p.proto == Proto::Tcp)
                .copied()
                .collect(),
        }
    }

    /// The network configuration this policy was built from.
    pub fn net(&self) -> &NetConfig {
        &self.net
    }

    /// Whether `ip` (normalized) is on the ignore list.
    pub fn ignored(&self, ip: IpAddr) -> bool {
        self.ignore.iter().any(|c| c.contains(ip))
    }

    /// The route for a connect to `dst` (normalized: see [`normalize`]).
    pub fn connect(&self, dst: SocketAddr) -> Route {
        let ip = dst.ip();
        if dst.port() == 0 || self.ignored(ip) {
            return Route::Tap;
        }
        match ip {
            IpAddr::V4(v4) => {
                if self.net.contains(v4) && v4 != self.net.gateway() {
                    return Route::Tap;
                }
            }
            IpAddr::V6(v6) => {
                if !self.net.enable_ipv6 || (self.net.contains6(v6) && v6 != self.net.gateway6()) {
                    return Route::Tap;
                }
            }
        }
        match self.nat.translate(dst, None) {
            Verdict::Connect(target) => Route::Host(target),
            Verdict::Unreachable(Unreachable::Net) => Route::Refuse(linux::ENETUNREACH),
            Verdict::Unreachable(Unreachable::Host) => Route::Refuse(linux::EHOSTUNREACH),
            Verdict::Unreachable(_) | Verdict::Refused => Route::Refuse(linux::ECONNREFUSED),
        }
    }

    /// For a TCP bind to `local` (normalized) in the container: the host address to bind
    /// instead, if `local` is a published guest port. `v6_socket`: the socket is AF_INET6 (an
    /// IPv4 host address is then given IPv4-mapped).
    pub fn bind(&self, local: SocketAddr, v6_socket: bool) -> Option<SocketAddr> {
        let ours = match local.ip() {
            IpAddr::V4(a) => a.is_unspecified() || a == self.net.guest(),
            IpAddr::V6(a) => a.is_unspecified(),
        };
        if !ours {
            return None;
        }
        let p = self.publish.iter().find(|p| p.guest_port == local.port())?;
        let host = SocketAddr::new(p.host_addr, p.host_port);
        match (host, v6_socket) {
            (SocketAddr::V6(_), false) => None,
            (h, v6) => Some(to_family(h, v6)),
        }
    }

    /// Whether `listen` may run on a host socket bound to `local` (normalized): only on a
    /// published host address.
    pub fn listen_ok(&self, local: SocketAddr) -> bool {
        self.publish.iter().any(|p| {
            let host = normalize(SocketAddr::new(p.host_addr, p.host_port));
            host == local
        })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries; anything
/// else unchanged. Decisions are made on normalized addresses, so that a dual-stack socket
/// cannot reach the gateway or loopback under another spelling.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// `addr` in the form an AF_INET6 (`v6`) or AF_INET socket takes: IPv4 becomes IPv4-mapped for
/// an AF_INET6 socket. (An IPv6 address for an AF_INET socket is returned unchanged; callers
/// never ask for it.)
pub fn to_family(addr: SocketAddr, v6: bool) -> SocketAddr {
    match (addr, v6) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    }
}

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

/// The original destinations of translated host sockets, by socket inode. Bounded: beyond
/// `cap` entries the oldest is forgotten.
#[derive(Debug)]
pub struct PeerTable {
    map: HashMap<u64, SocketAddr>,
    order: VecDeque<u64>,
    cap: usize,
}

impl PeerTable {
    pub fn new(cap: usize) -> PeerTable {
        PeerTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Remember that the socket with inode `ino` was connected to `original`.
    pub fn insert(&mut self, ino: u64, original: SocketAddr) {
        if self.map.insert(ino, original).is_none() {
            self.order.push_back(ino);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Stale keys (removed from the map) make `order` longer than the map; trim them.
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    pub fn get(&self, ino: u64) -> Option<SocketAddr> {
        self.map.get(&ino).copied()
    }

    pub fn remove(&mut self, ino: u64) {
        self.map.remove(&ino);
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// What the supervisor did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Notifications received.
    pub notifications: u64,
    /// Connects given a host socket.
    pub bypassed: u64,
    /// Connects performed on the container's own socket (tap path).
    pub tap: u64,
    /// Calls refused by policy.
    pub refused: u64,
    /// Binds served by a host socket (published ports).
    pub published: u64,
    /// Calls let through unchanged (not an IP socket, or getpeername of an untranslated one).
    pub continued: u64,
    /// Sends performed by the supervisor (UDP bypass).
    pub sends: u64,
    /// Notifications whose process went away before the answer.
    pub dead: u64,
    /// Calls that failed inside the supervisor (the program got the errno).
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn policy(net: NetConfig, ignore: &[&str], publish: &[Publish]) -> Policy {
        let ignore: Vec<Cidr> = ignore.iter().map(|c| c.parse().unwrap()).collect();
        Policy::new(&net, &ignore, publish)
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains("10.1.200.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let h: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(h.to_string(), "192.0.2.7/32");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.51.100.8".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "",
            "x",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "1.2.3/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_routes() {
        let p = policy(NetConfig::default(), &[], &[]);
        // The gateway is host loopback.
        assert_eq!(
            p.connect(sa("10.0.2.2:80")),
            Route::Host(sa("127.0.0.1:80"))
        );
        // Elsewhere: the same address.
        assert_eq!(
            p.connect(sa("192.0.2.1:443")),
            Route::Host(sa("192.0.2.1:443"))
        );
        // The container's own loopback, unspecified, the tap network (incl. DNS), multicast.
        for tap in [
            "127.0.0.1:80",
            "127.9.9.9:80",
            "0.0.0.0:80",
            "10.0.2.3:53",
            "10.0.2.100:80",
            "10.0.2.77:80",
            "224.0.0.1:5353",
            "255.255.255.255:67",
            "192.0.2.1:0",
        ] {
            assert_eq!(p.connect(sa(tap)), Route::Tap, "{tap}");
        }
        // IPv6 without -6 stays in the namespace (which has no IPv6 route).
        assert_eq!(p.connect(sa("[2001:db8::1]:80")), Route::Tap);
        assert_eq!(p.connect(sa("[::1]:80")), Route::Tap);
    }

    #[test]
    fn disable_host_loopback_refuses_the_gateway() {
        let p = policy(
            NetConfig {
                disable_host_loopback: true,
                ..Default::default()
            },
            &[],
            &[],
        );
        assert_eq!(
            p.connect(sa("10.0.2.2:80")),
            Route::Refuse(linux::ENETUNREACH)
        );
        assert_eq!(p.connect(sa("127.0.0.1:80")), Route::Tap);
        assert_eq!(
            p.connect(sa("192.0.2.1:80")),
            Route::Host(sa("192.0.2.1:80"))
        );
    }

    #[test]
    fn ignore_list() {
        let p = policy(
            NetConfig::default(),
            &["192.0.2.0/24", "2001:db8::/32"],
            &[],
        );
        assert_eq!(p.connect(sa("192.0.2.1:80")), Route::Tap);
        assert_eq!(
            p.connect(sa("198.51.100.1:80")),
            Route::Host(sa("198.51.100.1:80"))
        );
        // Ignoring the gateway keeps it on the tap (which also reaches host loopback).
        let p = policy(NetConfig::default(), &["10.0.2.2/32"], &[]);
        assert_eq!(p.connect(sa("10.0.2.2:80")), Route::Tap);
    }

    #[test]
    fn ipv6_with_enable_ipv6() {
        let p = policy(
            NetConfig {
                enable_ipv6: true,
                ..Default::default()
            },
            &["2001:db8:1::/48"],
            &[],
        );
        assert_eq!(p.connect(sa("[fd00::2]:80")), Route::Host(sa("[::1]:80")));
        assert_eq!(p.connect(sa("[fd00::3]:53")), Route::Tap);
        assert_eq!(p.connect(sa("[fd00::64]:53")), Route::Tap);
        assert_eq!(p.connect(sa("[fe80::1%2]:80")), Route::Tap);
        assert_eq!(p.connect(sa("[ff02::1]:80")), Route::Tap);
        assert_eq!(p.connect(sa("[::1]:80")), Route::Tap);
        assert_eq!(p.connect(sa("[2001:db8:1::1]:80")), Route::Tap);
        assert_eq!(
            p.connect(sa("[2001:db8:2::1]:80")),
            Route::Host(sa("[2001:db8:2::1]:80"))
        );
    }

    #[test]
    fn mapped_addresses_are_decided_as_ipv4() {
        let p = policy(NetConfig::default(), &[], &[]);
        assert_eq!(
            p.connect(normalize(sa("[::ffff:10.0.2.2]:80"))),
            Route::Host(sa("127.0.0.1:80"))
        );
        assert_eq!(
            p.connect(normalize(sa("[::ffff:127.0.0.1]:80"))),
            Route::Tap
        );
        assert_eq!(
            to_family(sa("127.0.0.1:80"), true),
            sa("[::ffff:127.0.0.1]:80")
        );
        assert_eq!(to_family(sa("127.0.0.1:80"), false), sa("127.0.0.1:80"));
    }

    #[test]
    fn publish_bind_and_listen() {
        let publish = [
            Publish {
                proto: Proto::Tcp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 8080,
                guest_port: 80,
            },
            Publish {
                proto: Proto::Udp,
                host_addr: "0.0.0.0".parse().unwrap(),
                host_port: 5353,
                guest_port: 53,
            },
            Publish {
                proto: Proto::Tcp,
                host_addr: "::1".parse().unwrap(),
                host_port: 8443,
                guest_port: 443,
            },
        ];
        let p = policy(NetConfig::default(), &[], &publish);
        assert_eq!(p.bind(sa("0.0.0.0:80"), false), Some(sa("127.0.0.1:8080")));
        assert_eq!(
            p.bind(sa("10.0.2.100:80"), false),
            Some(sa("127.0.0.1:8080"))
        );
        assert_eq!(
            p.bind(sa("[::]:80"), true),
            Some(sa("[::ffff:127.0.0.1]:8080"))
        );
        assert_eq!(p.bind(sa("127.0.0.1:80"), false), None);
        assert_eq!(p.bind(sa("0.0.0.0:81"), false), None);
        // UDP publishes stay on the tap path.
        assert_eq!(p.bind(sa("0.0.0.0:53"), false), None);
        // An IPv6 host address cannot serve an AF_INET socket.
        assert_eq!(p.bind(sa("0.0.0.0:443"), false), None);
        assert_eq!(p.bind(sa("[::]:443"), true), Some(sa("[::1]:8443")));
        assert!(p.listen_ok(sa("127.0.0.1:8080")));
        assert!(p.listen_ok(normalize(sa("[::ffff:127.0.0.1]:8080"))));
        assert!(!p.listen_ok(sa("127.0.0.1:8081")));
        assert!(!p.listen_ok(sa("0.0.0.0:5353")));
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

    #[test]
    fn peer_table_is_bounded() {
        let mut t = PeerTable::new(3);
        for i in 0..10u64 {
            t.insert(i, sa("10.0.2.2:80"));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(9), Some(sa("10.0.2.2:80")));
        assert_eq!(t.get(0), None);
        for i in 0..100u64 {
            t.insert(1000 + i, sa("10.0.2.2:81"));
            t.remove(1000 + i);
        }
        assert!(t.order.len() <= 2 * t.cap + 1);
        t.remove(9);
        assert_eq!(t.get(9), None);
    }
}
