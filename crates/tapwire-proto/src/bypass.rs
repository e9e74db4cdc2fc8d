//! The bypass decision (sans-IO): which socket calls of a container get a host socket, and what
//! the container must see.
//!
//! # Theory of operation
//! In bypass mode a seccomp filter stops the container's `connect`, `bind`, `listen`,
//! `getpeername` (and, with UDP bypass, the `send*` calls that carry an address) and the
//! supervisor (`tapwire::bypass::supervisor`, in the daemon) decides what to do with each. This module is that decision,
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
//! - Raw `struct sockaddr` bytes from the container's memory are decoded and encoded by
//!   [`crate::sockaddr`] ([`decode_connect`] mirrors the kernel's own checks so that an address
//!   the kernel would refuse is never acted upon; [`decode_inet`] and [`encode`] convert for
//!   bind, getpeername and the host calls); re-exported here, as `tapwire_proto::bypass::X`.
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
use crate::destination::{self, Kind};
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

    /// The route for a connect to `dst` (normalized: see [`normalize`]). Decided on the
    /// canonical address ([`crate::destination`]), so that no spelling of loopback or of the
    /// tap network leaves the namespace.
    pub fn connect(&self, dst: SocketAddr) -> Route {
        let d = destination::classify(&self.net, dst.ip());
        if dst.port() == 0 || self.ignored(d.canonical) {
            return Route::Tap;
        }
        if dst.is_ipv6() && !self.net.enable_ipv6 {
            // No -6: the namespace has no IPv6 route (the kernel says so).
            return Route::Tap;
        }
        match d.kind {
            Kind::Gateway | Kind::Remote => {}
            // Loopback and "this host" are the container's own; the tap network stays there.
            Kind::Dns
            | Kind::Inside
            | Kind::HostLoopback
            | Kind::Unspecified
            | Kind::NotUnicast => return Route::Tap,
        }
        match self.nat.translate(dst, None) {
            Verdict::Connect(target)
                if !destination::reaches_host_loopback(target.ip()) || d.kind == Kind::Gateway =>
            {
                Route::Host(target)
            }
            Verdict::Connect(_) => Route::Refuse(linux::ENETUNREACH),
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

/// An IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible (`::a.b.c.d`) IPv6 address as the
/// IPv4 address it carries ([`destination::host_form`]); anything else unchanged. Decisions are
/// made on normalized addresses, so that a dual-stack socket cannot reach the gateway or
/// loopback under another spelling.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match destination::host_form(IpAddr::V6(*a.ip())) {
            IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            IpAddr::V6(_) => addr,
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

pub use crate::sockaddr::{
    decode_connect, decode_inet, decode_send, encode, family, Dest, RawAddr, SOCKADDR_IN6_LEN,
    SOCKADDR_IN_LEN, SOCKADDR_MAX,
};

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
    /// Of those, connects the policy would have bypassed but the namespace routes elsewhere
    /// (a VPN inside it).
    pub own_route: u64,
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
    fn no_spelling_of_loopback_is_bypassed() {
        for disable in [false, true] {
            let net = NetConfig {
                enable_ipv6: true,
                disable_host_loopback: disable,
                ..Default::default()
            };
            let p = policy(net, &[], &[]);
            for s in [
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.2]:80",
                "[::ffff:0.0.0.0]:80",
                "[::127.0.0.1]:80",
                "[64:ff9b::7f00:1]:80",
                "[64:ff9b::]:80",
                "[::]:80",
                "[::1]:80",
                "0.0.0.0:80",
                "127.0.0.2:80",
            ] {
                assert_eq!(p.connect(normalize(sa(s))), Route::Tap, "{s}");
            }
            for s in [
                "[::ffff:10.0.2.2]:80",
                "[::10.0.2.2]:80",
                "[64:ff9b::a00:202]:80",
            ] {
                let want = if disable {
                    Route::Refuse(linux::ENETUNREACH)
                } else {
                    Route::Host(sa("127.0.0.1:80"))
                };
                assert_eq!(p.connect(normalize(sa(s))), want, "{s}");
            }
            assert_eq!(
                p.connect(normalize(sa("[::192.0.2.1]:80"))),
                Route::Host(sa("192.0.2.1:80"))
            );
            assert_eq!(
                p.connect(normalize(sa("[64:ff9b::c000:201]:80"))),
                Route::Host(sa("[64:ff9b::c000:201]:80"))
            );
        }
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
