//! The guest's `NETLINK_SOCK_DIAG` socket, for `-p auto`: opened inside the guest's network
//! namespace by the namespace helper (or the `tapwire run` child), used by the engine.
//!
//! # Theory of operation
//! A netlink socket reports on the namespace it was created in, wherever its fd goes later,
//! so [`open`] runs in the child that already joined (or made) the guest's namespaces, and the
//! fd travels back next to the TAP's over `SCM_RIGHTS` (see `netns::channel`). The child is
//! root in the guest's user namespace there, so it may also subscribe the socket to the
//! `SKNLGRP_INET*_DESTROY` multicast groups (binding them needs `CAP_NET_ADMIN` over the
//! namespace, which the daemon itself has only when it owns that user namespace); if the
//! kernel refuses, the socket is bound without them and the engine finds closed listeners by
//! its periodic dump only. The socket is non-blocking and close-on-exec.
//!
//! [`dump`] lists the listeners: one request per (family, protocol), and the replies read at
//! once: the kernel builds a dump's next part while we receive the previous one, so a
//! complete dump never waits. Any other outcome (no `NLMSG_DONE` before `EAGAIN`, an error)
//! gives up this round; the caller keeps what it knew. Destroy events read on the way are
//! counted, not lost.
//!
//! Syscalls: `socket(AF_NETLINK)` and `bind` (in the child only), `sendto`, `recvfrom`.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use tapwire_proto::config::Proto;
use tapwire_proto::sock_diag::{self, Listener, DESTROY_GROUPS};

/// Open a `NETLINK_SOCK_DIAG` socket in the current network namespace, subscribed to the
/// destroy groups when allowed (the `bool`). Makes no allocation (runs in a forked child).
pub fn open() -> io::Result<(OwnedFd, bool)> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkSockDiag,
    )?;
    match bind(fd.as_raw_fd(), &NetlinkAddr::new(0, DESTROY_GROUPS)) {
        Ok(()) => Ok((fd, true)),
        Err(Errno::EPERM | Errno::EACCES | Errno::EINVAL | Errno::ENOENT) => {
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            Ok((fd, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// What one [`dump`] found.
#[derive(Debug, Default)]
pub struct Dump {
    /// The four dumps completed; `listeners` is the whole list.
    pub complete: bool,
    /// Destroy events read on the way.
    pub events: u32,
    /// A dump the kernel refused (its errno): the protocol's diag module is missing.
    pub refused: Option<i32>,
    pub malformed: bool,
}

/// Read and count pending destroy events (nothing else is expected outside a dump). Returns
/// their number; a receive queue that overflowed counts as one.
pub fn drain_events(fd: &OwnedFd, buf: &mut [u8]) -> u32 {
    let mut events = 0u32;
    let mut scratch = Vec::new();
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                let p = sock_diag::parse(buf.get(..n).unwrap_or(&[]), 0, Proto::Tcp, &mut scratch);
                events = events.saturating_add(p.events.max(1));
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => events = events.saturating_add(1),
            Err(_) => return events,
        }
    }
}

/// List the guest's listeners of the protocols `protos` says into `out` (cleared first);
/// `seq` is the caller's running sequence number (never 0). A UDP dump costs more than a
/// TCP one (the kernel walks its whole UDP hash table; listening TCP sockets have their own).
pub fn dump(
    fd: &OwnedFd,
    protos: impl Fn(Proto) -> bool,
    seq: &mut u32,
    buf: &mut [u8],
    out: &mut Vec<Listener>,
) -> Dump {
    out.clear();
    let mut d = Dump::default();
    for (v6, proto) in [
        (false, Proto::Tcp),
        (true, Proto::Tcp),
        (false, Proto::Udp),
        (true, Proto::Udp),
    ] {
        if !protos(proto) {
            continue;
        }
        *seq = seq.wrapping_add(1).max(1);
        let req = sock_diag::dump_request(v6, proto, *seq);
        loop {
            match send(fd.as_raw_fd(), &req, MsgFlags::empty()) {
                Ok(_) => break,
                Err(Errno::EINTR) => {}
                // Events filled the receive queue: read them and ask again.
                Err(Errno::ENOBUFS) => d.events += 1,
                Err(_) => return d,
            }
        }
        loop {
            let n = match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // Overrun by events while dumping: this dump may be short; try next round.
                Err(Errno::ENOBUFS) => {
                    d.events += 1;
                    return d;
                }
                Err(_) => return d,
            };
            let p = sock_diag::parse(buf.get(..n).unwrap_or(&[]), *seq, proto, out);
            d.events = d.events.saturating_add(p.events);
            if p.malformed {
                d.malformed = true;
                return d;
            }
            if let Some(e) = p.error {
                d.refused = Some(e);
            }
            if p.done {
                break;
            }
        }
    }
    d.complete = true;
    d
}
