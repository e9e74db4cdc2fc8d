//! Socket calls: on raw address bytes and raw option bytes, and the host sockets of flows.
//!
//! # Theory of operation
//! The bypass supervisor performs socket calls for a program with the bytes the program
//! passed, so the wrappers here take addresses and option values as the kernel sees them
//! (`&[u8]`) and hand back the kernel's errno untouched: an emulated call keeps the kernel's
//! exact error behaviour. Sockets are always created non-blocking and close-on-exec.
//!
//! The host side of every proxied or bypassed flow starts the same way: a fresh socket, bound
//! per `--outbound-addr` / `--outbound-addr6` unless it goes to loopback ([`host_socket`],
//! [`bind_outbound`]); the engine (UDP, ICMP, TCP) and the bypass supervisor share that one
//! rule.
use std::io::{self, IoSlice};
use std::mem::zeroed;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use tapwire_proto::config::{NetConfig, Outbound};

use super::{cvt, owned};

/// `SO_NETNS_COOKIE` (Linux 5.14): a u64 naming the socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol)` in our network namespace.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    owned(libc::c_long::from(fd))
}

/// Create a host socket for a flow: bound per `--outbound-addr`, connected to `target`.
pub fn host_socket(
    net: &NetConfig,
    target: SocketAddr,
    ty: socket2::Type,
    proto: Option<socket2::Protocol>,
) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(target);
    let sock = socket2::Socket::new(domain, ty.nonblocking().cloexec(), proto)?;
    if !target.ip().is_loopback() {
        bind_outbound(&sock, net, target)?;
    }
    Ok(sock)
}

/// Apply `--outbound-addr` / `--outbound-addr6` to a fresh host socket of `target`'s family.
pub fn bind_outbound(
    sock: &socket2::Socket,
    net: &NetConfig,
    target: SocketAddr,
) -> io::Result<()> {
    bind_outbound_as(sock, net, target, target.is_ipv6())
}

/// [`bind_outbound`] for a socket whose family may differ from the target's: an AF_INET6
/// socket (`v6_socket`) reaching an IPv4 target binds the IPv4-mapped outbound address.
pub fn bind_outbound_as(
    sock: &socket2::Socket,
    net: &NetConfig,
    target: SocketAddr,
    v6_socket: bool,
) -> io::Result<()> {
    let (addr, dev): (Option<IpAddr>, Option<&str>) = match target {
        SocketAddr::V4(_) => match &net.outbound4 {
            Some(Outbound::Addr(a)) => (Some((*a).into()), None),
            Some(Outbound::Device(d)) => (None, Some(d)),
            None => (None, None),
        },
        SocketAddr::V6(_) => match &net.outbound6 {
            Some(Outbound::Addr(a)) => (Some((*a).into()), None),
            Some(Outbound::Device(d)) => (None, Some(d)),
            None => (None, None),
        },
    };
    match (addr, dev) {
        (Some(a), _) => {
            let local = tapwire_proto::bypass::to_family(SocketAddr::new(a, 0), v6_socket);
            sock.bind(&local.into())
        }
        (None, Some(d)) => sock.bind_device(Some(d.as_bytes())),
        (None, None) => Ok(()),
    }
}

/// `getsockopt` into `buf`; returns the length the kernel wrote.
pub fn getsockopt_raw(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the kernel writes at most `len` bytes to `buf` (exclusively borrowed) and the
    // actual length to `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok((len as usize).min(buf.len()))
}

/// `setsockopt` with raw bytes.
pub fn setsockopt_raw(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(val.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads `len` bytes from `val`, which lives across the call.
    cvt(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), len) })
        .map(|_| ())
}

/// An int socket option.
pub fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut b = [0u8; 4];
    getsockopt_raw(fd, level, name, &mut b)?;
    Ok(libc::c_int::from_ne_bytes(b))
}

/// The cookie of the socket's network namespace (`SO_NETNS_COOKIE`).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    getsockopt_raw(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

fn addr_len(addr: &[u8]) -> io::Result<libc::socklen_t> {
    libc::socklen_t::try_from(addr.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `connect(fd, addr)` with the address as raw bytes.
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    let len = addr_len(addr)?;
    // SAFETY: the kernel reads `len` bytes of address from `addr` (it copies them first and
    // checks the length and family itself); the buffer lives across the call.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), len) }).map(|_| ())
}

/// `bind(fd, addr)` with the address as raw bytes.
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    let len = addr_len(addr)?;
    // SAFETY: as in connect_raw: the kernel copies `len` bytes from `addr`, alive across the
    // call, and checks them itself.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), len) }).map(|_| ())
}

/// `listen(fd, backlog)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(|_| ())
}

/// `getsockname` as raw bytes (at most 128).
pub fn getsockname_raw(fd: BorrowedFd<'_>, buf: &mut [u8; 128]) -> io::Result<usize> {
    let mut len: libc::socklen_t = 128;
    // SAFETY: the kernel writes at most `len` (128) bytes into `buf` and the full length to
    // `len`.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) })?;
    Ok((len as usize).min(buf.len()))
}

/// `sendmsg(fd, {name, iov, control}, flags)`.
pub fn sendmsg_raw(
    fd: BorrowedFd<'_>,
    name: Option<&[u8]>,
    iov: &[IoSlice<'_>],
    control: &[u8],
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    if let Some(n) = name {
        msg.msg_name = n.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr_len(n)?;
    }
    // IoSlice is ABI-compatible with struct iovec.
    msg.msg_iov = iov.as_ptr().cast_mut().cast();
    msg.msg_iovlen = iov.len() as _;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr().cast_mut().cast();
        msg.msg_controllen = control.len() as _;
    }
    // SAFETY: every pointer in `msg` refers to a buffer borrowed for the duration of the call
    // (the kernel only reads them for sendmsg).
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::AsFd;

    fn local(s: &socket2::Socket) -> SocketAddr {
        s.local_addr().unwrap().as_socket().unwrap()
    }

    #[test]
    fn outbound_bind_follows_the_socket_family() {
        let net = NetConfig {
            outbound4: Some(Outbound::Addr(Ipv4Addr::LOCALHOST)),
            ..NetConfig::default()
        };
        let t4: SocketAddr = (Ipv4Addr::new(192, 0, 2, 1), 53).into();
        let s4 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        bind_outbound(&s4, &net, t4).unwrap();
        assert_eq!(local(&s4).ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        let s6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
        bind_outbound_as(&s6, &net, t4, true).unwrap();
        assert_eq!(
            local(&s6).ip(),
            IpAddr::from(Ipv4Addr::LOCALHOST.to_ipv6_mapped())
        );
        // No --outbound-addr6: an IPv6 target leaves the socket unbound.
        let s6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
        bind_outbound(&s6, &net, (Ipv6Addr::LOCALHOST, 1).into()).unwrap();
        let mut name = [0u8; 128];
        let n = getsockname_raw(s6.as_fd(), &mut name).unwrap();
        assert!(n > 0);
        assert_eq!(local(&s6).port(), 0);
    }
}
