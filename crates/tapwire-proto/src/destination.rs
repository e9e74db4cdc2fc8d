//! Destination policy (sans-IO): what a destination address means to the host kernel, and so
//! whether a host socket may be opened to it.
//!
//! # Theory of operation
//! A guest (or a bypassed program) names a destination; the daemon opens a host socket to
//! it. The host kernel does not decide on the spelling but on the address it will use, so
//! neither may we: an AF_INET6 socket connected to `::ffff:127.0.0.1` reaches the host's IPv4
//! loopback, and `0.0.0.0` or `::` is "this host" (loopback) to `connect`/`sendto`. Every
//! place that picks a host destination therefore asks [`classify`], which first rewrites the
//! address into its canonical form and then classifies that:
//!
//! | spelling | canonical form |
//! |---|---|
//! | IPv4-mapped `::ffff:a.b.c.d` | `a.b.c.d` (what the kernel uses) |
//! | IPv4-compatible `::a.b.c.d` (deprecated; routed over `sit0` when loaded), except `::` and `::1` | `a.b.c.d` |
//! | NAT64 well-known prefix `64:ff9b::a.b.c.d` | `a.b.c.d` for the policy; the host socket keeps the IPv6 address |
//! | anything else | itself |
//!
//! | canonical address | [`Kind`] | NAT verdict ([`crate::nat`]) |
//! |---|---|---|
//! | the gateway (network+2, PREFIX::2) | [`Kind::Gateway`] | host loopback, unless `--disable-host-loopback` |
//! | the DNS address (network+3, PREFIX::3) | [`Kind::Dns`] | the upstream nameserver on port 53 |
//! | `127.0.0.0/8`, `::1` | [`Kind::HostLoopback`] | refused: loopback only through the gateway |
//! | `0.0.0.0/8`, `::` | [`Kind::Unspecified`] | refused: "this host" = loopback to the kernel |
//! | multicast, broadcast, `240.0.0.0/4` | [`Kind::NotUnicast`] | refused |
//! | other addresses of the virtual network, IPv6 link-local | [`Kind::Inside`] | host unreachable |
//! | anything else | [`Kind::Remote`] | a host socket to [`Destination::host`] |
//!
//! So the only way to host loopback is the gateway, in any spelling, and only when host
//! loopback is allowed; [`reaches_host_loopback`] is the predicate the tests and the fuzz
//! target (`fuzz/fuzz_targets/destination_policy.rs`) check every verdict against.
//!
//! Limits: only the well-known NAT64 prefix is known; a host with a local-use NAT64 prefix
//! (RFC 8215) translates in its NAT64 gateway, outside this host's kernel, so those
//! addresses cannot reach host loopback anyway.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::NetConfig;

/// The NAT64 well-known prefix `64:ff9b::/96` (RFC 6052), as the high 96 bits.
const NAT64_PREFIX: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;

/// How an address was spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// As the kernel uses it (any IPv4 address, a native IPv6 address).
    Plain,
    /// `::ffff:a.b.c.d`.
    Mapped,
    /// `::a.b.c.d`.
    Compatible,
    /// `64:ff9b::a.b.c.d`.
    Nat64,
}

/// What a canonical address is, in the virtual network's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Dns,
    HostLoopback,
    Unspecified,
    NotUnicast,
    Inside,
    Remote,
}

/// A classified destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// The canonical address the policy decided on.
    pub canonical: IpAddr,
    /// The address a host socket should be connected to (the canonical one, except for NAT64,
    /// which only a NAT64 gateway translates).
    pub host: IpAddr,
    pub spelling: Spelling,
    pub kind: Kind,
}

/// `ip` rewritten as the host kernel will use it, plus how it was spelled.
#[inline]
pub fn canonical(ip: IpAddr) -> (IpAddr, Spelling) {
    let IpAddr::V6(v6) = ip else {
        return (ip, Spelling::Plain);
    };
    let bits = u128::from(v6);
    // The low 32 bits are the IPv4 address (truncation intended).
    let v4 = IpAddr::V4(Ipv4Addr::from(bits as u32));
    if let Some(a) = v6.to_ipv4_mapped() {
        (IpAddr::V4(a), Spelling::Mapped)
    } else if bits >> 32 == 0 && bits > 1 {
        (v4, Spelling::Compatible)
    } else if bits >> 32 == NAT64_PREFIX >> 32 {
        (v4, Spelling::Nat64)
    } else {
        (ip, Spelling::Plain)
    }
}

/// `ip` as the host kernel uses it: IPv4-mapped and IPv4-compatible addresses become IPv4,
/// anything else (NAT64 included) is unchanged. The form to compare against a host socket's
/// peer address and to hand to `connect`.
#[inline]
pub fn host_form(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        (_, Spelling::Nat64 | Spelling::Plain) => ip,
        (c, _) => c,
    }
}

/// Whether a host socket to `ip` ends up on the host's loopback (`127.0.0.0/8`, `::1`, or an
/// unspecified address, in any spelling).
#[inline]
pub fn reaches_host_loopback(ip: IpAddr) -> bool {
    match canonical(ip).0 {
        IpAddr::V4(a) => a.is_loopback() || a.octets()[0] == 0,
        IpAddr::V6(a) => a.is_loopback() || a.is_unspecified(),
    }
}

/// Classify destination `ip` for the virtual network `net` (see the module's tables). IPv6
/// gateway and DNS addresses count whether or not `-6` is on; callers refuse IPv6 first when
/// it is off.
pub fn classify(net: &NetConfig, ip: IpAddr) -> Destination {
    let (canonical, spelling) = canonical(ip);
    let kind = match canonical {
        IpAddr::V4(a) => kind4(net, a),
        IpAddr::V6(a) => kind6(net, a),
    };
    let host = if spelling == Spelling::Nat64 {
        ip
    } else {
        canonical
    };
    Destination {
        canonical,
        host,
        spelling,
        kind,
    }
}

fn kind4(net: &NetConfig, a: Ipv4Addr) -> Kind {
    if a == net.gateway() {
        Kind::Gateway
    } else if a == net.dns() {
        Kind::Dns
    } else if a.is_loopback() {
        Kind::HostLoopback
    } else if a.octets()[0] == 0 {
        Kind::Unspecified
    } else if a.is_multicast() || a.is_broadcast() || a.octets()[0] >= 240 {
        Kind::NotUnicast
    } else if net.contains(a) {
        Kind::Inside
    } else {
        Kind::Remote
    }
}

fn kind6(net: &NetConfig, a: Ipv6Addr) -> Kind {
    if a == net.gateway6() {
        Kind::Gateway
    } else if a == net.dns6() {
        Kind::Dns
    } else if a.is_loopback() {
        Kind::HostLoopback
    } else if a.is_unspecified() {
        Kind::Unspecified
    } else if a.is_multicast() {
        Kind::NotUnicast
    } else if net.contains6(a) || a.segments()[0] & 0xffc0 == 0xfe80 {
        Kind::Inside
    } else {
        Kind::Remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net() -> NetConfig {
        NetConfig {
            enable_ipv6: true,
            ..Default::default()
        }
    }

    #[test]
    fn every_spelling_of_loopback_is_loopback() {
        for s in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:127.0.0.2",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::0.0.0.2",
            "64:ff9b::127.0.0.1",
            "64:ff9b::",
        ] {
            assert!(reaches_host_loopback(ip(s)), "{s}");
            let d = classify(&net(), ip(s));
            assert!(
                matches!(d.kind, Kind::HostLoopback | Kind::Unspecified),
                "{s}: {d:?}"
            );
        }
        for s in [
            "10.0.2.2",
            "192.0.2.1",
            "fd00::2",
            "2001:db8::1",
            "::ffff:0:127.0.0.1",
            "64:ff9b:1::127.0.0.1",
        ] {
            assert!(!reaches_host_loopback(ip(s)), "{s}");
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical(ip("::ffff:10.0.2.2")),
            (ip("10.0.2.2"), Spelling::Mapped)
        );
        assert_eq!(
            canonical(ip("::10.0.2.2")),
            (ip("10.0.2.2"), Spelling::Compatible)
        );
        assert_eq!(
            canonical(ip("64:ff9b::10.0.2.2")),
            (ip("10.0.2.2"), Spelling::Nat64)
        );
        assert_eq!(canonical(ip("::")), (ip("::"), Spelling::Plain));
        assert_eq!(canonical(ip("::1")), (ip("::1"), Spelling::Plain));
        assert_eq!(canonical(ip("::2")), (ip("0.0.0.2"), Spelling::Compatible));
        assert_eq!(canonical(ip("1.2.3.4")), (ip("1.2.3.4"), Spelling::Plain));
        assert_eq!(host_form(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(host_form(ip("64:ff9b::1.2.3.4")), ip("64:ff9b::1.2.3.4"));
        assert_eq!(host_form(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn kinds_in_every_spelling() {
        let n = net();
        let k = |s: &str| classify(&n, ip(s)).kind;
        for g in [
            "10.0.2.2",
            "::ffff:10.0.2.2",
            "::10.0.2.2",
            "64:ff9b::a00:202",
            "fd00::2",
        ] {
            assert_eq!(k(g), Kind::Gateway, "{g}");
        }
        for d in ["10.0.2.3", "::ffff:10.0.2.3", "fd00::3"] {
            assert_eq!(k(d), Kind::Dns, "{d}");
        }
        for s in [
            "10.0.2.100",
            "::ffff:10.0.2.100",
            "10.0.2.255",
            "fd00::64",
            "fe80::1",
        ] {
            assert_eq!(k(s), Kind::Inside, "{s}");
        }
        for s in [
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "ff02::1",
        ] {
            assert_eq!(k(s), Kind::NotUnicast, "{s}");
        }
        for s in [
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
            "64:ff9b::192.0.2.1",
        ] {
            assert_eq!(k(s), Kind::Remote, "{s}");
        }
        let d = classify(&n, ip("64:ff9b::192.0.2.1"));
        assert_eq!(d.host, ip("64:ff9b::192.0.2.1"));
        assert_eq!(d.canonical, ip("192.0.2.1"));
        let d = classify(&n, ip("::ffff:192.0.2.1"));
        assert_eq!(d.host, ip("192.0.2.1"));
    }
}
