//! `--forward-to-host`: the listening sockets a namespace child opens on the guest's own
//! loopback and hands to the parent.
//!
//! Theory of operation: a socket belongs to the network namespace it was created in, for its
//! whole life, whichever process holds it. So the child that is inside the guest's namespace
//! anyway (run mode's [`super::run`] child after `unshare`, daemon mode's [`super::helper`]
//! after `setns`) creates, for each guest port, a TCP listener on 127.0.0.1:PORT and one on
//! \[::1\]:PORT (`IPV6_V6ONLY`; skipped when the namespace has no IPv6 loopback), all
//! non-blocking and close-on-exec, and sends them after the TAP's datagram: batches of up to
//! [`scm::MAX_FDS`] descriptors tagged [`TAG_LISTENERS`], then one [`TAG_DONE`] datagram, or
//! `E` + the error text if a port cannot be bound (the whole start-up fails: the user asked
//! for that port). The parent ([`recv_listeners`]) collects the fds; which port each one is
//! comes from `getsockname` on it, so the datagrams carry nothing but the descriptors. The
//! engine accepts on them from the host namespace (`engine::splice`).
//!
//! Syscalls (child): `socket`, `setsockopt(SO_REUSEADDR, IPV6_V6ONLY)`, `bind`, `listen`,
//! `sendmsg`. Parent: `recvmsg`.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Socket, Type};

use super::channel::{MAX_REPLY, TAG_ERR};
use nix::unistd::Pid;

use super::NetnsError;
use crate::sys::scm;

/// "Listeners follow" (up to `scm::MAX_FDS` fds attached).
pub(super) const TAG_LISTENERS: u8 = b'F';
/// "No more listeners".
pub(super) const TAG_DONE: u8 = b'D';

/// Backlog of each guest-side listener.
const BACKLOG: i32 = 128;

fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::STREAM.cloexec().nonblocking(), None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Child side, inside the guest's namespace: the listeners of `ports` (127.0.0.1 and, where
/// the namespace has it, ::1).
pub(super) fn open_listeners(ports: &[u16]) -> Result<Vec<OwnedFd>, NetnsError> {
    let mut fds = Vec::with_capacity(ports.len() * 2);
    for &port in ports {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        fds.push(listener(v4).map_err(|e| bind_err(v4, e))?);
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        match listener(v6) {
            Ok(fd) => fds.push(fd),
            // No IPv6 (disabled, or lo without ::1): the IPv4 listener alone.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
                ) => {}
            Err(e) => return Err(bind_err(v6, e)),
        }
    }
    Ok(fds)
}

fn bind_err(addr: SocketAddr, e: io::Error) -> NetnsError {
    NetnsError::Setup {
        step: format!("--forward-to-host: listen on {addr} in the guest's network namespace"),
        source: e,
    }
}

/// Child side: send `fds` in batches, then [`TAG_DONE`].
pub(super) fn send_listeners(sock: BorrowedFd<'_>, fds: &[OwnedFd]) -> io::Result<()> {
    for batch in fds.chunks(scm::MAX_FDS) {
        let mut borrowed = [sock; scm::MAX_FDS];
        for (slot, fd) in borrowed.iter_mut().zip(batch) {
            *slot = fd.as_fd();
        }
        scm::send_with_fds(
            sock,
            &[TAG_LISTENERS],
            borrowed.get(..batch.len()).unwrap_or(&[]),
        )?;
    }
    scm::send_with_fds(sock, &[TAG_DONE], &[]).map(drop)
}

/// Parent side: the listeners the child sends after the TAP, up to [`TAG_DONE`]; `E` + text
/// from the child is its error. At most `max` descriptors are accepted.
pub(super) fn recv_listeners(
    sock: BorrowedFd<'_>,
    pid: Pid,
    max: usize,
) -> Result<Vec<OwnedFd>, NetnsError> {
    let mut all = Vec::new();
    let mut buf = [0u8; MAX_REPLY];
    loop {
        let mut fds = Vec::new();
        let got = match scm::recv_with_fds(sock, &mut buf, &mut fds, false) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(NetnsError::Recv { pid, source }),
            Ok(got) => got,
        };
        let bad = |reason| NetnsError::BadReply { pid, reason };
        if got.fds_truncated || got.truncated {
            return Err(bad("listener message truncated"));
        }
        match buf.get(..got.bytes).unwrap_or(&[]) {
            [TAG_LISTENERS] if !fds.is_empty() => all.extend(fds),
            [TAG_DONE] if fds.is_empty() => return Ok(all),
            [TAG_ERR, text @ ..] => {
                return Err(NetnsError::Child {
                    pid,
                    message: String::from_utf8_lossy(text).into_owned(),
                })
            }
            [] => {
                return Err(NetnsError::ChildDied {
                    pid,
                    how: "ended".to_owned(),
                })
            }
            _ => return Err(bad("expected the --forward-to-host listeners")),
        }
        if all.len() > max {
            return Err(bad("more listeners than ports"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_round_trip_in_batches() {
        let (a, b) = super::super::channel::seqpacket_pair().unwrap();
        // Ports 0: the kernel picks, so the test needs no free port.
        let mut fds = Vec::new();
        for _ in 0..10 {
            fds.push(listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap());
        }
        send_listeners(a.as_fd(), &fds).unwrap();
        let got = recv_listeners(b.as_fd(), Pid::from_raw(1), 20).unwrap();
        assert_eq!(got.len(), 10);
        let port = |fd: &OwnedFd| {
            let s = Socket::from(fd.try_clone().unwrap());
            s.local_addr().unwrap().as_socket().unwrap().port()
        };
        for (x, y) in fds.iter().zip(&got) {
            assert_eq!(port(x), port(y));
        }
        // Too many for the caller's limit: refused.
        send_listeners(a.as_fd(), &fds).unwrap();
        assert!(recv_listeners(b.as_fd(), Pid::from_raw(1), 4).is_err());
    }
}
