//! UDP proxy: a NAT table from guest (source, destination) pairs to connected host sockets.
//!
//! # Theory of operation
//! The first datagram from a guest endpoint to a destination creates a binding: a host UDP
//! socket, bound to `--outbound-addr` if given (except for loopback targets), `connect()`ed to
//! the translated destination. The guest's datagrams are `send()` on it as they arrive (no
//! queue: if the host socket is full the datagram is dropped and counted, as a router would).
//! Datagrams the host socket receives are read directly into a frame buffer at the UDP payload
//! offset, given headers from the binding's key (source = the address the guest sent to), and
//! written to the TAP; replies bigger than the MTU are fragmented. Because the socket is
//! connected, only the destination's replies come back (port-restricted cone NAT), which is
//! what DNS, NTP, QUIC and games expect.
//!
//! Bindings expire after [`IDLE_MS`] without traffic in either direction ([`DNS_IDLE_MS`] for
//! DNS). The table is capped at [`MAX_FLOWS`]; a datagram that would exceed it is dropped and
//! counted.
use std::io;
use std::net::SocketAddr;

use tapwire_proto::config::NetConfig;

pub use crate::sys::socket::{bind_outbound, host_socket};

/// Idle timeout of a binding.
pub const IDLE_MS: u64 = 60_000;
/// Idle timeout of a DNS binding (one query, one answer).
pub const DNS_IDLE_MS: u64 = 10_000;
/// Most bindings at once.
pub const MAX_FLOWS: usize = 4096;

/// The host side of a binding.
pub enum UdpHost {
    /// Outbound: our own socket, connected to the destination.
    Connected(mio::net::UdpSocket),
    /// Inbound through a port forward: replies leave through the forward's socket to `client`.
    Forwarded {
        /// Slab index and id of the forward (the id guards against a reused index).
        fwd: usize,
        id: u64,
        client: SocketAddr,
    },
}

/// One binding.
pub struct UdpFlow {
    pub host: UdpHost,
    /// The guest endpoint and the destination it sent to (the replies' source).
    pub guest: SocketAddr,
    pub dst: SocketAddr,
    pub idle_ms: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    /// DNS bindings: the guest's latest query, re-sent to the next nameserver if the current
    /// one refuses it (see `dns`). `None` for other bindings.
    pub last_query: Option<Vec<u8>>,
}

impl UdpFlow {
    pub fn open(
        net: &NetConfig,
        guest: SocketAddr,
        dst: SocketAddr,
        target: SocketAddr,
        idle_ms: u64,
    ) -> io::Result<UdpFlow> {
        let sock = host_socket(net, target, socket2::Type::DGRAM, None)?;
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let sock = mio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock));
        Ok(UdpFlow {
            host: UdpHost::Connected(sock),
            guest,
            dst,
            idle_ms,
            datagrams_out: 0,
            datagrams_in: 0,
            last_query: None,
        })
    }
}
