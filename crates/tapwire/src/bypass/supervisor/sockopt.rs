//! What a trapped socket is, and the socket options carried over to its host socket.
//!
//! # Theory of operation
//! [`SockInfo`] is read once per call from the copy of the program's socket (domain, type,
//! protocol, namespace, flags). A host socket replacing a container socket gets every option
//! of [`OPTIONS`] whose value on the container socket differs from a fresh socket's (the
//! defaults are read once per domain/type/protocol and cached by the supervisor): a program
//! that set `TCP_NODELAY` or a buffer size before `connect` keeps it. Small helpers on
//! sockets (`SO_ERROR`, `SO_SNDTIMEO`, bound/connected, inode) live here too.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::sys::socket;
use tapwire_proto::bypass::decode_inet;

/// The socket of a trapped call, as read from the copy.
#[derive(Clone, Copy, Debug)]
pub(super) struct SockInfo {
    pub(super) domain: i32,
    pub(super) ty: i32,
    pub(super) proto: i32,
    /// Lives in our (the host's) network namespace.
    pub(super) host: bool,
    /// F_GETFL of the shared open file description.
    pub(super) flags: OFlag,
}

impl SockInfo {
    pub(super) fn v6(&self) -> bool {
        self.domain == libc::AF_INET6
    }
    pub(super) fn nonblock(&self) -> bool {
        self.flags.contains(OFlag::O_NONBLOCK)
    }
    pub(super) fn tcp(&self) -> bool {
        self.ty == libc::SOCK_STREAM && self.proto == libc::IPPROTO_TCP
    }
    pub(super) fn udp(&self) -> bool {
        self.ty == libc::SOCK_DGRAM && self.proto == libc::IPPROTO_UDP
    }
}

/// The value of each [`OPTIONS`] entry on one socket (None: not applicable or unreadable).
pub(super) type OptionValues = Vec<Option<Vec<u8>>>;

/// `poll(fd, POLLOUT, 0)`: a connect that finished at once (loopback usually does).
pub(super) fn ready_now(sock: &OwnedFd) -> bool {
    let mut p = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// `SO_ERROR` (clears it).
pub(super) fn take_error(sock: &OwnedFd) -> i32 {
    socket::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
        .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// The socket's `SO_SNDTIMEO`, if set: a blocking connect gives up after it.
pub(super) fn send_timeout(sock: &OwnedFd) -> Option<Duration> {
    let mut tv = [0u8; 16];
    let n =
        socket::getsockopt_raw(sock.as_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &mut tv).ok()?;
    if n < 16 {
        return None;
    }
    let sec = i64::from_ne_bytes(tv[..8].try_into().ok()?);
    let usec = i64::from_ne_bytes(tv[8..].try_into().ok()?);
    let d = Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.max(0) as u64);
    (!d.is_zero()).then_some(d)
}

pub(super) fn inode(fd: &OwnedFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino)
}

/// Whether the socket is bound to a local port (explicitly, or by an earlier connect/send).
pub(super) fn bound(sock: &OwnedFd) -> bool {
    let mut name = [0u8; 128];
    socket::getsockname_raw(sock.as_fd(), &mut name)
        .ok()
        .and_then(|n| decode_inet(name.get(..n).unwrap_or(&[])))
        .is_some_and(|a| a.port() != 0)
}

/// Whether the socket has a peer (is connected).
pub(super) fn connected(sock: &OwnedFd) -> bool {
    nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(sock.as_raw_fd()).is_ok()
}

/// Which sockets an option is carried for (besides its level: TCP options for TCP...).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AppliesTo {
    Any,
    Stream,
    Dgram,
}

use AppliesTo::{Any, Dgram, Stream};

/// Socket options carried from the container's socket to the host socket: (level, name,
/// bytes, sockets). Buffer sizes are reported doubled by the kernel and set halved. Left out:
/// SO_MARK and SO_BINDTODEVICE (they name things of the container's namespace), TCP_REPAIR,
/// TCP_FASTOPEN_CONNECT (the supervisor performs the connect), filters (not readable).
/// Every connect reads each applicable one (one getsockopt each): the list is what matters,
/// not everything that exists.
pub(super) const OPTIONS: &[(i32, i32, usize, AppliesTo)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4, Any),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4, Any),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4, Any),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8, Any),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, 4, Any),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, 4, Any),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16, Any),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16, Any),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4, Stream),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, 4, Any),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4, Any),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_CORK, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16, Any),
    (libc::IPPROTO_IP, libc::IP_TOS, 4, Any),
    (libc::IPPROTO_IP, libc::IP_TTL, 4, Any),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, 4, Any),
    (libc::IPPROTO_IP, libc::IP_RECVERR, 4, Any),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 4, Any),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 4, Dgram),
    (libc::IPPROTO_UDP, libc::UDP_SEGMENT, 4, Any),
    (libc::IPPROTO_UDP, libc::UDP_GRO, 4, Any),
    (libc::IPPROTO_UDP, libc::UDP_CORK, 4, Any),
];

/// Whether option `(level, _, _, for)` applies to a socket like `info`.
pub(super) fn applies(level: i32, only: AppliesTo, info: SockInfo) -> bool {
    let level_ok = match level {
        libc::IPPROTO_TCP => info.tcp(),
        libc::IPPROTO_UDP => info.udp(),
        libc::IPPROTO_IPV6 => info.v6(),
        _ => true,
    };
    level_ok
        && match only {
            Any => true,
            Stream => info.ty == libc::SOCK_STREAM,
            Dgram => info.ty == libc::SOCK_DGRAM,
        }
}

/// The value of every applicable option of `sock` (None: not applicable or unreadable).
pub(super) fn read_options(sock: &OwnedFd, info: SockInfo) -> OptionValues {
    OPTIONS
        .iter()
        .map(|&(level, name, size, only)| {
            if !applies(level, only, info) {
                return None;
            }
            let mut b = vec![0u8; size];
            let n = socket::getsockopt_raw(sock.as_fd(), level, name, &mut b).ok()?;
            b.truncate(n);
            Some(b)
        })
        .collect()
}

/// Set on `host` every option of `guest` that differs from a fresh socket's (`defaults`).
/// Failures are ignored: an option the host refuses (e.g. SO_MARK without privileges) is one
/// the container's namespace granted but the host does not.
pub(super) fn copy_options(
    guest: &OwnedFd,
    host: &OwnedFd,
    info: SockInfo,
    defaults: &[Option<Vec<u8>>],
) {
    let mut b = [0u8; 16];
    for (i, &(level, name, size, only)) in OPTIONS.iter().enumerate() {
        if !applies(level, only, info) {
            continue;
        }
        let Some(buf) = b.get_mut(..size) else {
            continue;
        };
        let Ok(n) = socket::getsockopt_raw(guest.as_fd(), level, name, buf) else {
            continue;
        };
        let val = buf.get(..n).unwrap_or(&[]);
        if defaults.get(i).and_then(|d| d.as_deref()) == Some(val) {
            continue;
        }
        let r = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_RCVBUF) | (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
                let v = i32::from_ne_bytes(val.try_into().unwrap_or([0; 4])) / 2;
                socket::setsockopt_raw(host.as_fd(), level, name, &v.to_ne_bytes())
            }
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                let end = val.iter().position(|&c| c == 0).unwrap_or(val.len());
                socket::setsockopt_raw(host.as_fd(), level, name, val.get(..end).unwrap_or(&[]))
            }
            _ => socket::setsockopt_raw(host.as_fd(), level, name, val),
        };
        if let Err(e) = r {
            tracing::debug!("bypass: option ({level}, {name}) not carried to the host socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_table_has_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for &(l, n, s, _) in OPTIONS {
            assert!(seen.insert((l, n)), "({l}, {n}) twice");
            assert!(s <= 16);
        }
    }
}
