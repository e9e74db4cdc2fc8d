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
//! | anything else | the same address | - |
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::NetConfig;
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
        let (gateway, dns, inside, loopback): (IpAddr, IpAddr, bool, IpAddr) = match dst.ip() {
            IpAddr::V4(ip) => (
                self.net.gateway().into(),
                self.net.dns().into(),
                self.net.contains(ip),
                Ipv4Addr::LOCALHOST.into(),
            ),
            IpAddr::V6(ip) => {
                if !self.net.enable_ipv6 {
                    return Verdict::Unreachable(Unreachable::Net);
                }
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                (
                    self.net.gateway6().into(),
                    self.net.dns6().into(),
                    self.net.contains6(ip) || link_local,
                    Ipv6Addr::LOCALHOST.into(),
                )
            }
        };
        let ip = dst.ip();
        if ip == gateway {
            if self.net.disable_host_loopback {
                return Verdict::Unreachable(Unreachable::Net);
            }
            return Verdict::Connect(SocketAddr::new(loopback, dst.port()));
        }
        if ip == dns {
            return match (dst.port(), self.net.disable_dns, resolver) {
                (53, false, Some(r)) => Verdict::Connect(r),
                _ => Verdict::Refused,
            };
        }
        if inside {
            return Verdict::Unreachable(Unreachable::Host);
        }
        Verdict::Connect(dst)
    }

    /// Whether a host target is on the host's loopback (outbound binding does not apply).
    pub fn is_loopback(target: &SocketAddr) -> bool {
        target.ip().is_loopback()
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
}
