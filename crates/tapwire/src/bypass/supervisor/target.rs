//! The trapped thread: its identity, its memory, and copies of its sockets.
//!
//! # Theory of operation
//! Everything read from the thread is followed by `ID_VALID` before it is trusted: a thread id
//! can be reused once its thread is gone. A pidfd is opened *before* that check
//! ([`Supervisor::pidfd`]), so it names the same thread; `/proc/TID/mem` likewise
//! ([`Supervisor::write`]). `pidfd_getfd` ([`Supervisor::getfd`]) gives a copy of the socket:
//! the same open file description, so its domain, type, protocol, `O_NONBLOCK`, options and
//! network namespace (`SO_NETNS_COOKIE`) are read straight from it ([`Supervisor::sock_info`]).
//! Without ptrace rights over the thread the answer is [`Fail::Blind`] (see `on_notif`).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::sockopt::SockInfo;
use super::{Fail, Supervisor};
use crate::bypass::memory;
use crate::bypass::notify::Notif;
use crate::sys::{pidfd, socket};

impl Supervisor {
    pub(super) fn id_valid(&self, li: usize, id: u64) -> bool {
        self.listeners.get(li).is_some_and(|l| l.fd.id_valid(id))
    }

    /// Whether the program's fd `fd` is close-on-exec (`EBADF` if it is gone meanwhile).
    pub(super) fn cloexec(&self, li: usize, n: &Notif, fd: RawFd) -> Result<bool, Fail> {
        match pidfd::fd_cloexec(&self.proc, n.tid, fd) {
            Ok(c) => Ok(c),
            Err(_) if self.id_valid(li, n.id) => Err(Fail::Errno(libc::EBADF)),
            Err(_) => Err(Fail::Gone),
        }
    }

    /// Read `buf.len()` bytes of the target's memory, then prove the thread is still in the
    /// call. `EFAULT` if unreadable (as the kernel would say), `Gone` if the thread left.
    pub(super) fn read(&self, li: usize, n: &Notif, addr: u64, buf: &mut [u8]) -> Result<(), Fail> {
        let r = memory::read_mem(n.tid, addr, buf);
        if !self.id_valid(li, n.id) {
            return Err(Fail::Gone);
        }
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => Fail::Blind,
            _ => Fail::Errno(libc::EFAULT),
        })
    }

    /// Write to the target's memory through `/proc/TID/mem`, opened before the `ID_VALID`
    /// check, so the write cannot land in another process that reused the thread id.
    pub(super) fn write(
        &self,
        li: usize,
        tid: i32,
        id: u64,
        addr: u64,
        data: &[u8],
    ) -> Result<(), Fail> {
        let mem = memory::open_mem(&self.proc, tid).map_err(|_| Fail::Gone)?;
        if !self.id_valid(li, id) {
            return Err(Fail::Gone);
        }
        memory::write_mem(&mem, addr, data).map_err(|_| Fail::Errno(libc::EFAULT))
    }

    /// A pidfd for the calling thread; only valid once an `ID_VALID` after it succeeded.
    pub(super) fn pidfd(&self, n: &Notif) -> Result<OwnedFd, Fail> {
        pidfd::pidfd_open_thread(&self.proc, n.tid).map_err(|_| Fail::Gone)
    }

    /// A copy of the target's fd `fd`. The pidfd is opened before `ID_VALID`, so it is the
    /// calling thread's.
    ///
    /// `pidfd`: one from [`Self::pidfd`] that a later [`Self::read`] already proved to be the
    /// calling thread's (saves an `ID_VALID`), or `None`.
    pub(super) fn getfd(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        pidfd: Option<OwnedFd>,
    ) -> Result<OwnedFd, Fail> {
        let pidfd = match pidfd {
            Some(p) => p,
            None => {
                let p = self.pidfd(n)?;
                if !self.id_valid(li, n.id) {
                    return Err(Fail::Gone);
                }
                p
            }
        };
        match pidfd::pidfd_getfd(pidfd.as_fd(), fd) {
            Ok(f) => Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.warned_getfd {
                    self.warned_getfd = true;
                    tracing::warn!(
                        "bypass: pidfd_getfd on thread {} is not permitted (ptrace rights); calls go through unchanged",
                        n.tid
                    );
                }
                Err(Fail::Blind)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn sock_info(&self, sock: &OwnedFd) -> Result<Option<SockInfo>, Fail> {
        let fd = sock.as_fd();
        let domain = socket::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Ok(None);
        }
        let ty = socket::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let proto = socket::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        let host = socket::netns_cookie(fd)? == self.host_cookie;
        let flags =
            OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        Ok(Some(SockInfo {
            domain,
            ty,
            proto,
            host,
            flags,
        }))
    }

    /// Fetch (fd, info) for a call whose first argument is the socket; `Ok(None)` means "not an
    /// IP socket: let the kernel do it".
    pub(super) fn target_socket(
        &mut self,
        li: usize,
        n: &Notif,
        pidfd: Option<OwnedFd>,
    ) -> Result<Option<(RawFd, OwnedFd, SockInfo)>, Fail> {
        let fd = n.args[0] as i32;
        let sock = self.getfd(li, n, fd, pidfd)?;
        match self.sock_info(&sock)? {
            Some(info) => Ok(Some((fd, sock, info))),
            None => Ok(None),
        }
    }
}
