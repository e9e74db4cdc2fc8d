//! Network configuration shared by the CLI, the namespace helper and the engine.
//!
//! Theory of operation: the CLI turns flags into one [`NetConfig`] value (validated, never
//! partially applied); everything downstream reads addresses from it through the helper
//! methods (`gateway()`, `dns()`, `guest()`) so the "network+2 / +3 / +100" convention of
//! slirp4netns lives in exactly one place.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where host sockets are bound for outbound traffic (`--outbound-addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound<A> {
    /// Bind the source address.
    Addr(A),
    /// Bind to an interface (SO_BINDTODEVICE).
    Device(String),
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
}

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
        }
    }
}

impl NetConfig {
    fn offset(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}
