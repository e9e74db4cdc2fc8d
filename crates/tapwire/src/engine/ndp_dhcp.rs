//! Link configuration for the guest: IPv6 router advertisements and the DHCPv4 server.
//!
//! # Theory of operation
//! Both are answered from the engine's own state, without a host socket:
//!
//! - **Router advertisements** announce the IPv6 prefix (SLAAC), the MTU and the DNS
//!   forwarder's address to all nodes on the link: in answer to a router solicitation, and
//!   unsolicited once a minute (checked by the loop's once-a-second housekeeping, first on its
//!   first turn). Neighbor solicitations are smoltcp's (see `link::device`).
//! - **DHCP**: `tapwire_proto::dhcp` decides the reply from the guest's message; it is built
//!   at the UDP payload offset of the link's frame buffer and sent from the gateway. A
//!   malformed message is counted as a drop; messages not for us are ignored.
#![forbid(unsafe_code)]

use std::net::Ipv6Addr;

use tapwire_proto::config::NetConfig;
use tapwire_proto::dhcp::{DhcpError, DhcpServer};
use tapwire_proto::wire::{self, DropReason, RouterAdvert, L2, UDP_PAYLOAD};

use super::Engine;

/// Unsolicited router advertisements: this often.
const RA_INTERVAL_MS: u64 = 60_000;

/// The DHCP server and the router advertisement timer.
pub(super) struct LinkConfig {
    dhcp: DhcpServer,
    /// When the last router advertisement went out.
    last_ra_ms: Option<u64>,
}

impl LinkConfig {
    pub fn new(net: &NetConfig) -> LinkConfig {
        LinkConfig {
            dhcp: DhcpServer::new(net),
            last_ra_ms: None,
        }
    }

    /// An unsolicited advertisement is due.
    pub fn advert_due(&self, now_ms: u64) -> bool {
        self.last_ra_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= RA_INTERVAL_MS)
    }
}

impl Engine {
    /// Announce the prefix (SLAAC), MTU and DNS server to all nodes on the link.
    pub(super) fn send_router_advert(&mut self) {
        if !self.net.enable_ipv6 {
            return;
        }
        self.link_config.last_ra_ms = Some(self.clock.now_ms());
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let ra = RouterAdvert {
            router: self.net.link_local6(),
            prefix: self.net.prefix6,
            mtu: self.net.mtu,
            dns: (!self.net.disable_dns).then(|| self.net.dns6()),
        };
        let l2 = L2 {
            src: self.link.info.mac,
            dst: wire::multicast_mac(all_nodes),
        };
        if let Some(n) = wire::router_advert(&mut self.link.out, &l2, &ra, all_nodes) {
            self.link.send_out(n, &mut self.stats.device);
        }
    }

    pub(super) fn dhcp_from_guest(&mut self, msg: &[u8]) {
        let now_s = self.clock.now_ms() / 1000;
        let out = &mut self.link.out;
        match self
            .link_config
            .dhcp
            .handle(msg, now_s, &mut out[UDP_PAYLOAD..])
        {
            Ok(len) => {
                let server = self.net.gateway();
                if let Some(n) = wire::finish_dhcp(out, self.link.info.mac, server, len) {
                    self.link.send_out(n, &mut self.stats.device);
                }
            }
            Err(DhcpError::Malformed) => self.stats.drops.bump(DropReason::Dhcp),
            Err(DhcpError::Ignored) => {}
        }
    }
}
