//! ICMP echo proxy through unprivileged ICMP datagram sockets.
//!
//! # Theory of operation
//! Echo requests to the gateway and DNS addresses are answered by smoltcp. Echo requests to
//! any other address are proxied: a binding per (guest address, destination, identifier) owns
//! a host `socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)` connected to the destination. The kernel
//! rewrites the identifier to the socket's and computes checksums; replies come back as ICMP
//! messages whose identifier [`tapwire_proto::wire::finish_echo_reply`] restores to the guest's. Such
//! sockets need the daemon's group in `net.ipv4.ping_group_range`; when the host refuses them
//! the request is dropped and counted (there is no raw-socket fallback: we hold no privilege).
//! Bindings expire after [`IDLE_MS`].
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use tapwire_proto::config::NetConfig;

/// Idle timeout of an echo binding.
pub const IDLE_MS: u64 = 10_000;
/// Most bindings at once.
pub const MAX_FLOWS: usize = 256;

/// One echo binding.
pub struct IcmpFlow {
    pub sock: mio::net::UdpSocket,
    pub guest: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
}

impl IcmpFlow {
    pub fn open(
        net: &NetConfig,
        guest: Ipv4Addr,
        dst: Ipv4Addr,
        ident: u16,
        target: SocketAddr,
    ) -> io::Result<IcmpFlow> {
        let sock = crate::engine::udp::host_socket(
            net,
            target,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::ICMPV4),
        )?;
        sock.connect(&target.into())?;
        let sock = mio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock));
        Ok(IcmpFlow {
            sock,
            guest,
            dst,
            ident,
        })
    }
}
