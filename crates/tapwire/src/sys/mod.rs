//! The raw system calls the daemon makes, behind safe wrappers.
//!
//! # Theory of operation
//! `sys` is the only home of raw, general-purpose syscalls: each wrapper takes borrowed fds and
//! byte slices, returns [`OwnedFd`]s as soon as the kernel hands out a descriptor, and turns
//! `-1`/`errno` into [`io::Error`] without reinterpreting it (callers such as the bypass
//! supervisor pass the kernel's exact errors on to a program). Every `unsafe` block states its
//! invariant in a `// SAFETY:` line. The modules that own one kernel interface outright (the
//! TAP device, the seccomp listener and filter, the daemon's own sandbox steps) keep their
//! few calls next to that interface; anything another module could also need lives here:
//! - [`fd`]: inherited descriptors (`-r`/`-e`), RLIMIT_NOFILE.
//! - [`pidfd`]: `pidfd_open`, `pidfd_getfd`, `/proc` ([`pidfd::ProcFs`]).
//! - [`socket`]: socket calls on raw address bytes, socket options, the outbound bind
//!   (`--outbound-addr`).
//! - [`scm`]: passing descriptors over UNIX sockets (SCM_RIGHTS).
//! - [`mount`]: the new mount API (`open_tree`, `move_mount`).
//! - [`unix_listener`]: the daemon's listening UNIX sockets (mode 0600, no symlinks), peer
//!   credentials.
//! - [`mmsg`]: batched datagram I/O (`recvmmsg`, `sendmmsg`).
//! - [`splice`]: `splice(2)` through a pipe (`--forward-to-host`).
//! - [`text`]: dropping the start-up code's pages once the daemon serves (`madvise`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub mod fd;
pub mod mmsg;
pub mod mount;
pub mod pidfd;
pub mod scm;
pub mod socket;
pub mod splice;
pub mod text;
pub mod unix_listener;

/// A syscall's result as an owned fd: `-1` is `errno`, anything else a new descriptor.
pub(crate) fn owned(raw: libc::c_long) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the syscall just returned this fd (checked >= 0); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An int-returning libc call's result: `-1` is `errno`.
pub(crate) fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use tapwire_proto::linux;

    #[test]
    fn proto_linux_numbers_match_libc() {
        assert_eq!(linux::EINVAL, libc::EINVAL);
        assert_eq!(linux::ENETUNREACH, libc::ENETUNREACH);
        assert_eq!(linux::ECONNREFUSED, libc::ECONNREFUSED);
        assert_eq!(linux::EHOSTUNREACH, libc::EHOSTUNREACH);
        assert_eq!(linux::EAFNOSUPPORT, libc::EAFNOSUPPORT);
        assert_eq!(linux::AF_UNSPEC, libc::AF_UNSPEC);
        assert_eq!(linux::AF_UNIX, libc::AF_UNIX);
        assert_eq!(linux::AF_INET, libc::AF_INET);
        assert_eq!(linux::AF_INET6, libc::AF_INET6);
    }
}
