//! The host side of the engine: the event registry every host socket lives in, the token
//! scheme that routes its events, and where a guest destination leads on the host.
//!
//! # Theory of operation
//! All host sockets (TCP streams, UDP and ICMP bindings, forward listeners, API clients,
//! `--forward-to-host` listeners and their spliced connections) are
//! registered edge-triggered in one `mio` registry. A token carries the socket's kind in its
//! low [`KIND_BITS`] bits and its slab index above, so the loop dispatches an event to its flow
//! without a lookup; kind [`KIND_SPECIAL`] holds the fixed tokens (TAP, signalfd, exit fd, API
//! listener, the sock_diag socket of `-p auto`).
//!
//! [`Host::translate`] turns a destination the guest chose into the address a host socket
//! connects to: the NAT's verdict, with the DNS forwarder's address mapped to the current
//! upstream nameserver (see `dns`). The per-protocol files create, read and write their own
//! sockets; this file holds only what they share.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use mio::{Poll, Registry, Token};
use tapwire_proto::config::NetConfig;
use tapwire_proto::nat::{Nat, Verdict};

use super::dns::{self, Resolver};
use super::Clock;

pub(super) const KIND_BITS: usize = 3;
pub(super) const KIND_MASK: usize = (1 << KIND_BITS) - 1;
pub(super) const KIND_SPECIAL: usize = 0;
pub(super) const KIND_TCP: usize = 1;
pub(super) const KIND_UDP: usize = 2;
pub(super) const KIND_ICMP: usize = 3;
pub(super) const KIND_FWD: usize = 4;
pub(super) const KIND_API: usize = 5;
pub(super) const KIND_SPLICE_LISTEN: usize = 6;
pub(super) const KIND_SPLICE: usize = 7;
pub(super) const TOKEN_TAP: Token = Token(0);
pub(super) const TOKEN_SIGNAL: Token = Token(1 << KIND_BITS);
pub(super) const TOKEN_EXIT_FD: Token = Token(2 << KIND_BITS);
pub(super) const TOKEN_API: Token = Token(3 << KIND_BITS);
/// The guest's sock_diag socket (`-p auto`; destroy events).
pub(super) const TOKEN_AUTO: Token = Token(4 << KIND_BITS);
/// `--threads`: frames or a report request in this worker's inbox (see `queues`).
pub(super) const TOKEN_WAKE: Token = Token(5 << KIND_BITS);

/// The token of socket `idx` of `kind`.
#[inline]
pub(super) fn token(kind: usize, idx: usize) -> Token {
    Token((idx << KIND_BITS) | kind)
}

/// The registry, the NAT and the DNS upstream.
pub(super) struct Host {
    pub poll: Poll,
    pub nat: Nat,
    pub resolver: Resolver,
}

impl Host {
    pub fn new(net: &NetConfig, poll: Poll) -> Host {
        Host {
            poll,
            nat: Nat::new(net),
            resolver: Resolver::new("/etc/resolv.conf"),
        }
    }

    #[inline]
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Where a new flow to `dst` goes on the host (DNS forwarder: the current upstream).
    pub fn translate(&mut self, net: &NetConfig, dst: SocketAddr, clock: Clock) -> Verdict {
        let resolver = if dns::is_dns(net, dst) {
            self.resolver.upstream(clock.now_ms())
        } else {
            None
        };
        self.nat.translate(dst, resolver)
    }
}
