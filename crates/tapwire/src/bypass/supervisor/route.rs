//! route: whether the program's own namespace sends a destination out of the tap.
//!
//! # Theory of operation
//! The policy ([`tapwire_proto::bypass::Policy`]) knows tapwire's network, not the routes the
//! program's namespace has gained since: a WireGuard or Tailscale interface inside
//! `tapwire run --bypass` routes its networks (or everything, with a default route of its
//! own) through the tunnel. A host socket for such a destination would leave through the
//! host's network instead, around the tunnel. So before a connect is bypassed, [`RouteProbe`]
//! asks the namespace's kernel `ip route get DST` over a `NETLINK_ROUTE` socket the run child
//! opened in the namespace ([`crate::netns::Supervised`]), bytes from
//! [`tapwire_proto::route`]: an answer naming another interface keeps the connect on the
//! program's own socket, where the namespace's kernel routes it into the tunnel. An answer
//! naming the tap, or no route at all (IPv6 right after start, before the router
//! advertisement gave the namespace its routes), or no readable answer leaves the decision to
//! the policy, which never reaches more than the tap path would.
//!
//! The kernel answers a route question inside the `send` (rtnetlink runs in the sender's
//! context), so the reply is read without blocking; cost: one `sendto` + one `recvfrom` per
//! bypass candidate connect (measured in the closing note of issue 13, a few microseconds).
//! OCI containers (`--seccomp-listener`) have no probe: their runtime made the namespace, and
//! the policy alone decides, as before.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, MsgFlags};
use tapwire_proto::route::{parse_reply, request, Reply, REQUEST_MAX};

/// Where the namespace sends a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Egress {
    /// Out of the tap, or the namespace cannot say: the policy decides.
    Tap,
    /// Out of another interface (a VPN): the program's own socket.
    Elsewhere,
}

/// A `NETLINK_ROUTE` socket in the program's network namespace, and the tap's index there.
#[derive(Debug)]
pub(super) struct RouteProbe {
    fd: OwnedFd,
    tap_index: u32,
    seq: u32,
}

impl RouteProbe {
    pub(super) fn new(fd: OwnedFd, tap_index: u32) -> RouteProbe {
        RouteProbe {
            fd,
            tap_index,
            seq: 0,
        }
    }

    /// `ip route get dst` in the namespace: [`Egress::Elsewhere`] only for a route out of
    /// another interface.
    pub(super) fn egress(&mut self, dst: IpAddr) -> Egress {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; REQUEST_MAX];
        let len = request(self.seq, dst, &mut req);
        // Non-blocking calls: no EINTR to retry.
        if !send(self.fd.as_raw_fd(), &req[..len], MsgFlags::MSG_DONTWAIT).is_ok_and(|n| n == len) {
            return Egress::Tap;
        }
        // A route reply is well under 1 KiB; 4 KiB holds any with room for attributes.
        let mut buf = [0u8; 4096];
        // Bounded: stale replies (from a question whose answer we stopped waiting for) are
        // skipped, a few at most.
        for _ in 0..8 {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(_) => return Egress::Tap,
            };
            match parse_reply(self.seq, &buf[..n]) {
                Reply::Oif(i) if i != self.tap_index => return Egress::Elsewhere,
                Reply::Stale => continue,
                Reply::Oif(_) | Reply::Error(_) | Reply::Malformed => return Egress::Tap,
            }
        }
        Egress::Tap
    }
}
