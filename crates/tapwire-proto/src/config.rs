//! Network configuration shared by the CLI, the namespace helper and the engine.
//!
//! Theory of operation: the CLI turns flags into one [`NetConfig`] value (validated, never
//! partially applied); everything downstream reads addresses from it through the helper
//! methods (`gateway()`, `dns()`, `guest()`) so the "network+2 / +3 / +100" convention of
//! slirp4netns lives in exactly one place.
//!
//! The command-line spellings of the values that live here are their [`FromStr`] impls:
//! [`Publish`] (`-p [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]`), [`Proto`] (`tcp`, `udp`) and
//! [`Outbound`] (`--outbound-addr*`: an IP literal or an interface name, checked by
//! [`valid_ifname`]). Their errors are plain strings, which the CLI prints after the flag's
//! name, so the texts are part of the user interface.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Where host sockets are bound for outbound traffic (`--outbound-addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound<A> {
    /// Bind the source address.
    Addr(A),
    /// Bind to an interface (SO_BINDTODEVICE).
    Device(String),
}

/// `--outbound-addr*`: an IP literal or an interface name.
impl FromStr for Outbound<IpAddr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Outbound::Addr(ip)),
            Err(_) if valid_ifname(s) => Ok(Outbound::Device(s.to_owned())),
            Err(_) => Err("expected an IP address or a valid interface name".to_owned()),
        }
    }
}

/// `--outbound-addr`: IPv4 literal or interface name.
impl FromStr for Outbound<Ipv4Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<Outbound<IpAddr>>()? {
            Outbound::Addr(IpAddr::V4(a)) => Ok(Outbound::Addr(a)),
            Outbound::Addr(IpAddr::V6(_)) => {
                Err("expected an IPv4 address (use --outbound-addr6 for IPv6)".to_owned())
            }
            Outbound::Device(d) => Ok(Outbound::Device(d)),
        }
    }
}

/// `--outbound-addr6`: IPv6 literal or interface name.
impl FromStr for Outbound<Ipv6Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<Outbound<IpAddr>>()? {
            Outbound::Addr(IpAddr::V6(a)) => Ok(Outbound::Addr(a)),
            Outbound::Addr(IpAddr::V4(_)) => {
                Err("expected an IPv6 address (use --outbound-addr for IPv4)".to_owned())
            }
            Outbound::Device(d) => Ok(Outbound::Device(d)),
        }
    }
}

/// Whether `s` is a Linux interface name as the kernel's `dev_valid_name` accepts it:
/// 1..=15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Only ASCII digits (no sign, no whitespace) parsed as `N`, else `None`.
pub(crate) fn parse_digits<N: FromStr>(s: &str) -> Option<N> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The virtual network seen by the guest and the policy for reaching the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// IPv4 network address (default 10.0.2.0).
    pub network: Ipv4Addr,
    /// Prefix length, 1..=25 (default 24).
    pub prefix: u8,
    /// MTU of the tap, 1..=65521 (default 1500).
    pub mtu: u32,
    /// MAC address for the guest's tap (`--macaddress`, only with `-c`).
    pub guest_mac: Option<[u8; 6]>,
    /// `--disable-host-loopback`: the gateway no longer reaches host 127.0.0.1.
    pub disable_host_loopback: bool,
    /// `--disable-dns`: no DNS forwarder at network+3.
    pub disable_dns: bool,
    /// `-6`: IPv6 (router advertisements, NDP, TCP/UDP over IPv6).
    pub enable_ipv6: bool,
    /// `--cidr6`: the IPv6 /64 prefix (default fd00::).
    pub prefix6: Ipv6Addr,
    /// `--outbound-addr`.
    pub outbound4: Option<Outbound<Ipv4Addr>>,
    /// `--outbound-addr6`.
    pub outbound6: Option<Outbound<Ipv6Addr>>,
    /// Checksum and TCP segmentation offload on the TAP (`--disable-offload` turns it off).
    pub offload: bool,
    /// UDP segmentation offload (USO) on top of `offload`, where the kernel has it
    /// (`--disable-udp-offload` turns it off alone).
    pub uso: bool,
    /// `--max-buffer-memory`: the TCP ring budget in bytes (`None`: a fraction of the RAM;
    /// see `budget`).
    pub max_buffer_memory: Option<u64>,
    /// `--threads`: engine workers, each with its own TAP queue and flows (1: one thread,
    /// a single-queue TAP).
    pub threads: usize,
    /// `--busy-poll`: microseconds the engine polls before it sleeps after a quick exchange
    /// (0: never; see `spin`).
    pub busy_poll_us: u64,
}

/// `--busy-poll`'s default: off, as the kernel's own `SO_BUSY_POLL` is. Spinning paid on one
/// VM (TCP ping-pong p50 22.5 -> 15.6 µs at 50 µs) and cost on another whose wakeups are
/// slower and whose vCPUs compete on the host (104 -> 167 µs): a spinning vCPU takes host CPU
/// the applications' vCPU needs. Users who own their cores turn it on.
pub const DEFAULT_BUSY_POLL_US: u64 = 0;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
            mtu: 1500,
            guest_mac: None,
            disable_host_loopback: false,
            disable_dns: false,
            enable_ipv6: false,
            prefix6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
            outbound4: None,
            outbound6: None,
            offload: true,
            uso: true,
            max_buffer_memory: None,
            threads: 1,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
        }
    }
}

impl NetConfig {
    fn offset(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }
    /// UDP offload is on (USO on the TAP where the kernel has it, and plain datagrams
    /// coalesced into trains, `train`): `--disable-udp-offload` and `--disable-offload` turn
    /// it off.
    pub fn udp_offload(&self) -> bool {
        self.offload && self.uso
    }
    /// network+2: the gateway, which stands for host loopback.
    pub fn gateway(&self) -> Ipv4Addr {
        self.offset(2)
    }
    /// network+3: the DNS forwarder.
    pub fn dns(&self) -> Ipv4Addr {
        self.offset(3)
    }
    /// network+100: the guest's address with `-c`.
    pub fn guest(&self) -> Ipv4Addr {
        self.offset(100)
    }
    /// Netmask of the network.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
    /// Whether `addr` is inside the virtual network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(addr) & mask == u32::from(self.network) & mask
    }
    fn offset6(&self, n: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.prefix6).wrapping_add(n))
    }
    /// prefix::2: the IPv6 gateway, which stands for host ::1.
    pub fn gateway6(&self) -> Ipv6Addr {
        self.offset6(2)
    }
    /// prefix::3: the IPv6 DNS forwarder.
    pub fn dns6(&self) -> Ipv6Addr {
        self.offset6(3)
    }
    /// Our link-local address (the router in RAs), fe80::2.
    pub fn link_local6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)
    }
    /// Whether `addr` is inside the IPv6 /64.
    pub fn contains6(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> 64 == u128::from(self.prefix6) >> 64
    }
    /// The MAC the daemon's end of the link uses (slirp4netns uses 52:55:0a:00:02:02).
    pub fn host_mac(&self) -> [u8; 6] {
        let g = self.gateway().octets();
        [0x52, 0x55, g[0], g[1], g[2], g[3]]
    }
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The `/tcp` or `/udp` suffix of `-p`.
impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol '{other}' (tcp or udp)")),
        }
    }
}

/// A port forward from the host into the guest (`add_hostfwd`, `-p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    /// Where the host listens (`0.0.0.0:8080`, `[::1]:8080`...).
    pub host: SocketAddr,
    /// Where connections go in the guest.
    pub guest: SocketAddr,
}

/// `-p [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]` as given: the guest address is the
/// network's guest address (network+100), known once the network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub proto: Proto,
    pub host_addr: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl Publish {
    /// The forward this publishes on `net`.
    pub fn forward(&self, net: &NetConfig) -> Forward {
        Forward {
            proto: self.proto,
            host: SocketAddr::new(self.host_addr, self.host_port),
            guest: SocketAddr::new(net.guest().into(), self.guest_port),
        }
    }
}

/// `-p/--publish`: `[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]`; an IPv6 HOST_ADDR is
/// written in brackets (`[::1]:8080:80`). Ports are 1..=65535; the default HOST_ADDR is 0.0.0.0.
impl FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const MSG: &str = "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]";
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, proto)) => (spec, proto.parse()?),
            None => (s, Proto::Tcp),
        };
        let port = |p: &str| -> Result<u16, String> {
            parse_digits::<u16>(p)
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port '{p}' (1-65535)"))
        };
        let (rest, guest) = spec.rsplit_once(':').ok_or(MSG)?;
        let guest_port = port(guest)?;
        let (host_addr, host_port) = match rest.rsplit_once(':') {
            None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), port(rest)?),
            Some((addr, hp)) => {
                let addr = addr
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(addr);
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("invalid host address '{addr}'"))?;
                (ip, port(hp)?)
            }
        };
        Ok(Publish {
            proto,
            host_addr,
            host_port,
            guest_port,
        })
    }
}

/// How to bring up the tap inside the namespace (`-c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfConfig {
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl IfConfig {
    /// The `-c` configuration for a network.
    pub fn from_net(net: &NetConfig) -> Self {
        IfConfig {
            mtu: net.mtu,
            mac: net.guest_mac,
            addr: net.guest(),
            prefix: net.prefix,
            gateway: net.gateway(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses() {
        let n = NetConfig::default();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(n.dns(), Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(n.guest(), Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(n.contains(Ipv4Addr::new(10, 0, 2, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 3, 1)));
        assert_eq!(n.host_mac(), [0x52, 0x55, 10, 0, 2, 2]);
    }

    #[test]
    fn publish_forms() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(
            (p.proto, p.host_addr, p.host_port, p.guest_port),
            (Proto::Tcp, IpAddr::from([0, 0, 0, 0]), 8080, 80)
        );
        let p: Publish = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(
            (p.proto, p.host_addr),
            (Proto::Udp, IpAddr::from([127, 0, 0, 1]))
        );
        let p: Publish = "[::1]:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host_addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((p.host_port, p.guest_port), (8443, 443));
        for bad in [
            "80",
            "0:80",
            "80:0",
            "x:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "70000:80",
            "",
        ] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_error_texts() {
        let err = |s: &str| s.parse::<Publish>().unwrap_err();
        assert_eq!(
            err("80"),
            "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]"
        );
        assert_eq!(err("8080:80/sctp"), "unknown protocol 'sctp' (tcp or udp)");
        assert_eq!(err("0:80"), "invalid port '0' (1-65535)");
        assert_eq!(err("70000:80"), "invalid port '70000' (1-65535)");
        assert_eq!(err("+1:80"), "invalid port '+1' (1-65535)");
        assert_eq!(err("1.2.3:80:80"), "invalid host address '1.2.3'");
        assert_eq!(err("[::1:80:80"), "invalid host address '[::1'");
        assert_eq!("udp".parse::<Proto>(), Ok(Proto::Udp));
        assert_eq!("tcp".parse::<Proto>(), Ok(Proto::Tcp));
    }

    #[test]
    fn outbound_forms() {
        assert_eq!(
            "192.0.2.1".parse::<Outbound<Ipv4Addr>>(),
            Ok(Outbound::Addr(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(
            "2001:db8::1".parse::<Outbound<Ipv6Addr>>(),
            Ok(Outbound::Addr("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            "eth0".parse::<Outbound<Ipv6Addr>>(),
            Ok(Outbound::Device("eth0".into()))
        );
        assert_eq!(
            "0123456789abcde".parse::<Outbound<Ipv4Addr>>(),
            Ok(Outbound::Device("0123456789abcde".into()))
        );
        assert_eq!(
            "::1".parse::<Outbound<Ipv4Addr>>().unwrap_err(),
            "expected an IPv4 address (use --outbound-addr6 for IPv6)"
        );
        assert_eq!(
            "10.0.0.1".parse::<Outbound<Ipv6Addr>>().unwrap_err(),
            "expected an IPv6 address (use --outbound-addr for IPv4)"
        );
        for bad in ["", "a/b", "a b", ".", "..", "0123456789abcdef", "a:b"] {
            assert_eq!(
                bad.parse::<Outbound<IpAddr>>().unwrap_err(),
                "expected an IP address or a valid interface name",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "tap0", "a", "0123456789abcde", "..."] {
            assert!(valid_ifname(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\u{a0}b",
            "0123456789abcdef",
        ] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }
}
