//! Destination translation: what a guest-visible address means on the host (sans-IO).
//!
//! # Theory of operation
//! The guest sees a small virtual network (slirp4netns's): the gateway (network+2) stands for
//! the host's loopback, the DNS address (network+3) for the host's resolver, and every address
//! outside the network is reached through an ordinary host socket to that same address. Other
//! addresses inside the virtual network do not exist. [`Nat::translate`] turns one guest
//! destination into the host address to connect to, or into the error the guest must see:
//!
//! | guest destination | host target | refused as |
//! |---|---|---|
//! | gateway:port | 127.0.0.1:port | ICMP net unreachable with `--disable-host-loopback` |
//! | dns:53 | first resolv.conf nameserver:53 | RST / port unreachable when DNS is off or unknown |
//! | dns:other | - | RST / port unreachable |
//! | other address in the network | - | ICMP host unreachable |
//! | `127.0.0.0/8`, `::1`, `0.0.0.0/8`, `::`, multicast, broadcast | - | ICMP net unreachable (loopback only through the gateway) |
//! | anything else | the same address | - |
//!
//! Every row is decided on the canonical address ([`crate::destination`]): an IPv4-mapped,
//! IPv4-compatible or NAT64 spelling gets the IPv4 row of the address it carries, so
//! `::ffff:127.0.0.1` is refused like 127.0.0.1 and `::ffff:10.0.2.2` is the gateway.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::NetConfig;
use crate::destination::{self, Kind};
use crate::wire::Unreachable;

/// What to do with a guest destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connect a host socket to this address.
    Connect(SocketAddr),
    /// Answer with an ICMP destination unreachable (TCP: the connect fails with that error).
    Unreachable(Unreachable),
    /// Nothing listens there: TCP gets a RST, UDP an ICMP port unreachable.
    Refused,
}

/// The translation policy, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Nat {
    net: NetConfig,
}

impl Nat {
    pub fn new(net: &NetConfig) -> Self {
        Nat { net: net.clone() }
    }

    /// Translate a guest destination. `resolver` is the current upstream nameserver, if any.
    pub fn translate(&self, dst: SocketAddr, resolver: Option<SocketAddr>) -> Verdict {
        if dst.is_ipv6() && !self.net.enable_ipv6 {
            return Verdict::Unreachable(Unreachable::Net);
        }
        // Decided on the address the host kernel would use (`::ffff:127.0.0.1` is 127.0.0.1).
        let d = destination::classify(&self.net, dst.ip());
        match d.kind {
            Kind::Gateway => {
                if self.net.disable_host_loopback {
                    return Verdict::Unreachable(Unreachable::Net);
                }
                let loopback: IpAddr = match d.canonical {
                    IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                };
                Verdict::Connect(SocketAddr::new(loopback, dst.port()))
            }
            Kind::Dns => match (dst.port(), self.net.disable_dns, resolver) {
                (53, false, Some(r)) => Verdict::Connect(r),
                _ => Verdict::Refused,
            },
            // Host loopback only through the gateway; "this host" is loopback too.
            Kind::HostLoopback | Kind::Unspecified | Kind::NotUnicast => {
                Verdict::Unreachable(Unreachable::Net)
            }
            Kind::Inside => Verdict::Unreachable(Unreachable::Host),
            Kind::Remote => Verdict::Connect(SocketAddr::new(d.host, dst.port())),
        }
    }

    /// Whether a host target is on the host's loopback (outbound binding does not apply).
    pub fn is_loopback(target: &SocketAddr) -> bool {
        destination::reaches_host_loopback(target.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::from(a).into(), port)
    }

    #[test]
    fn ipv6_destinations() {
        let nat = Nat::new(&NetConfig {
            enable_ipv6: true,
            ..Default::default()
        });
        let r: SocketAddr = "127.0.0.1:53".parse().unwrap();
        assert_eq!(
            nat.translate("[fd00::2]:80".parse().unwrap(), None),
            Verdict::Connect("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            nat.translate("[fd00::3]:53".parse().unwrap(), Some(r)),
            Verdict::Connect(r)
        );
        assert_eq!(
            nat.translate("[fd00::99]:80".parse().unwrap(), None),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            nat.translate("[2001:db8::1]:80".parse().unwrap(), None),
            Verdict::Connect("[2001:db8::1]:80".parse().unwrap())
        );
        let off = Nat::new(&NetConfig::default());
        assert_eq!(
            off.translate("[2001:db8::1]:80".parse().unwrap(), None),
            Verdict::Unreachable(Unreachable::Net)
        );
    }

    #[test]
    fn gateway_is_host_loopback() {
        let nat = Nat::new(&NetConfig::default());
        assert_eq!(
            nat.translate(v4([10, 0, 2, 2], 8080), None),
            Verdict::Connect("127.0.0.1:8080".parse().unwrap())
        );
        let nat = Nat::new(&NetConfig {
            disable_host_loopback: true,
            ..Default::default()
        });
        assert_eq!(
            nat.translate(v4([10, 0, 2, 2], 8080), None),
            Verdict::Unreachable(Unreachable::Net)
        );
    }

    #[test]
    fn dns_goes_to_resolver() {
        let r: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let nat = Nat::new(&NetConfig::default());
        assert_eq!(
            nat.translate(v4([10, 0, 2, 3], 53), Some(r)),
            Verdict::Connect(r)
        );
        assert_eq!(
            nat.translate(v4([10, 0, 2, 3], 54), Some(r)),
            Verdict::Refused
        );
        assert_eq!(nat.translate(v4([10, 0, 2, 3], 53), None), Verdict::Refused);
        let nat = Nat::new(&NetConfig {
            disable_dns: true,
            ..Default::default()
        });
        assert_eq!(
            nat.translate(v4([10, 0, 2, 3], 53), Some(r)),
            Verdict::Refused
        );
    }

    #[test]
    fn other_addresses() {
        let nat = Nat::new(&NetConfig::default());
        assert_eq!(
            nat.translate(v4([10, 0, 2, 50], 80), None),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            nat.translate(v4([192, 168, 77, 2], 80), None),
            Verdict::Connect("192.168.77.2:80".parse().unwrap())
        );
    }

    #[test]
    fn custom_cidr() {
        let nat = Nat::new(&NetConfig {
            network: Ipv4Addr::new(10, 11, 12, 0),
            ..Default::default()
        });
        assert_eq!(
            nat.translate(v4([10, 11, 12, 2], 1), None),
            Verdict::Connect("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            nat.translate(v4([10, 0, 2, 2], 1), None),
            Verdict::Connect("10.0.2.2:1".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_gateway_dns_and_link_local() {
        let r: SocketAddr = "[::1]:53".parse().unwrap();
        let nat = Nat::new(&NetConfig {
            enable_ipv6: true,
            disable_host_loopback: true,
            ..Default::default()
        });
        let t = |s: &str, resolver| nat.translate(s.parse().unwrap(), resolver);
        assert_eq!(
            t("[fd00::2]:80", None),
            Verdict::Unreachable(Unreachable::Net)
        );
        assert_eq!(t("[fd00::3]:80", Some(r)), Verdict::Refused);
        assert_eq!(t("[fd00::3]:53", None), Verdict::Refused);
        // Link-local addresses count as the virtual link: nobody there.
        assert_eq!(
            t("[fe80::1]:80", None),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            t("[febf::1]:80", None),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            t("[fec0::1]:80", None),
            Verdict::Connect("[fec0::1]:80".parse().unwrap())
        );
        // An IPv4 destination is decided by the IPv4 network whatever -6 says.
        assert_eq!(
            t("10.0.2.2:80", None),
            Verdict::Unreachable(Unreachable::Net)
        );
        let no_dns = Nat::new(&NetConfig {
            enable_ipv6: true,
            disable_dns: true,
            ..Default::default()
        });
        assert_eq!(
            no_dns.translate("[fd00::3]:53".parse().unwrap(), Some(r)),
            Verdict::Refused
        );
    }

    #[test]
    fn network_edges_and_the_guest_are_unreachable() {
        let nat = Nat::new(&NetConfig::default());
        for a in [
            [10, 0, 2, 0],
            [10, 0, 2, 1],
            [10, 0, 2, 100],
            [10, 0, 2, 255],
        ] {
            assert_eq!(
                nat.translate(v4(a, 80), None),
                Verdict::Unreachable(Unreachable::Host),
                "{a:?}"
            );
        }
        // Just outside the /24.
        assert_eq!(
            nat.translate(v4([10, 0, 3, 2], 80), None),
            Verdict::Connect("10.0.3.2:80".parse().unwrap())
        );
        // A wider network moves the gateway with it.
        let nat = Nat::new(&NetConfig {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 16,
            ..Default::default()
        });
        assert_eq!(
            nat.translate(v4([10, 0, 3, 2], 80), None),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            nat.translate(v4([10, 0, 0, 2], 80), None),
            Verdict::Connect("127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn loopback_targets() {
        let nat = Nat::new(&NetConfig {
            enable_ipv6: true,
            ..Default::default()
        });
        let target = |s: &str| match nat.translate(s.parse().unwrap(), None) {
            Verdict::Connect(t) => t,
            other => panic!("{s}: {other:?}"),
        };
        assert!(Nat::is_loopback(&target("10.0.2.2:22")));
        assert!(Nat::is_loopback(&target("[fd00::2]:22")));
        assert!(!Nat::is_loopback(&target("192.0.2.1:22")));
        assert!(!Nat::is_loopback(&target("[2001:db8::1]:22")));
        assert!(Nat::is_loopback(&"127.0.0.53:53".parse().unwrap()));
    }

    #[test]
    fn loopback_spellings_are_refused_in_every_mode() {
        for disable in [false, true] {
            let nat = Nat::new(&NetConfig {
                enable_ipv6: true,
                disable_host_loopback: disable,
                ..Default::default()
            });
            for s in [
                "127.0.0.1:80",
                "127.0.0.2:80",
                "0.0.0.0:80",
                "[::1]:80",
                "[::]:80",
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.2]:80",
                "[::ffff:0.0.0.0]:80",
                "[::127.0.0.1]:80",
                "[64:ff9b::7f00:1]:80",
                "[::ffff:224.0.0.1]:80",
            ] {
                assert_eq!(
                    nat.translate(s.parse().unwrap(), None),
                    Verdict::Unreachable(Unreachable::Net),
                    "{s} disable={disable}"
                );
            }
            // The gateway in IPv4-mapped spelling is the gateway.
            let gw = nat.translate("[::ffff:10.0.2.2]:80".parse().unwrap(), None);
            if disable {
                assert_eq!(gw, Verdict::Unreachable(Unreachable::Net));
            } else {
                assert_eq!(gw, Verdict::Connect("127.0.0.1:80".parse().unwrap()));
            }
            assert_eq!(
                nat.translate("[::ffff:10.0.2.100]:80".parse().unwrap(), None),
                Verdict::Unreachable(Unreachable::Host)
            );
            // Remote addresses: mapped ones go out as IPv4, NAT64 ones stay IPv6.
            assert_eq!(
                nat.translate("[::ffff:192.0.2.1]:80".parse().unwrap(), None),
                Verdict::Connect("192.0.2.1:80".parse().unwrap())
            );
            assert_eq!(
                nat.translate("[64:ff9b::c000:201]:80".parse().unwrap(), None),
                Verdict::Connect("[64:ff9b::c000:201]:80".parse().unwrap())
            );
        }
    }
}
