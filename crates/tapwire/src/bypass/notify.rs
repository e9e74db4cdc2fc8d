//! The seccomp listener: receiving notifications, answering them, installing fds.
//!
//! # Theory of operation
//! A listener fd ([`Listener`]) comes from the filter's installation (run mode) or from an OCI
//! runtime. Its ioctls:
//! - `SECCOMP_IOCTL_NOTIF_RECV`: one notification ([`Notif`]: id, thread id, arch, syscall
//!   number, six raw arguments);
//! - `..._SEND`: the answer ([`Reply`]: a return value, an errno, or CONTINUE);
//! - `..._ID_VALID`: the target is still blocked in that very call; checked after every read
//!   of its memory, because a thread id can be reused once the thread is gone;
//! - `..._ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD`: install one of our fds at a given number in
//!   the target, replacing what was there, like `dup2`;
//! - `..._SET_FLAGS`: synchronous wake-ups (Linux 6.6), cheaper round trips.
//!
//! `ENOENT` from any of them means the target left the call (killed, or a signal interrupted
//! it); callers drop such notifications quietly. [`check_notif_sizes`] makes sure, at start-up,
//! that the kernel's notification structures are no larger than this build's.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys::cvt;

/// One notification: a thread stopped in a trapped syscall.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    /// Thread id (in our pid namespace).
    pub tid: i32,
    pub arch: u32,
    pub nr: i32,
    pub args: [u64; 6],
}

/// The answer to a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Let the kernel run the call as if nothing happened.
    Continue,
    /// The call returns this value.
    Value(i64),
    /// The call fails with this errno.
    Error(i32),
}

/// A seccomp listener fd.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener(fd)
    }

    /// Receive one notification (blocks if none is pending: poll first). `ENOENT`: the
    /// notification was cancelled between poll and receive.
    pub fn recv(&self) -> io::Result<Notif> {
        // SAFETY: seccomp_notif is plain integers; all-zero is valid (and required by RECV).
        let mut n: libc::seccomp_notif = unsafe { zeroed() };
        // SAFETY: RECV writes one seccomp_notif into `n`, which is large enough and exclusively
        // borrowed for the call.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut n as *mut libc::seccomp_notif,
            )
        })?;
        Ok(Notif {
            id: n.id,
            tid: n.pid as i32,
            arch: n.data.arch,
            nr: n.data.nr,
            args: n.data.args,
        })
    }

    /// Answer notification `id`.
    pub fn respond(&self, id: u64, reply: Reply) -> io::Result<()> {
        let (val, error, flags) = match reply {
            Reply::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Reply::Value(v) => (v, 0, 0),
            Reply::Error(e) => (0, -e.abs(), 0),
        };
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from `resp`, which lives across the call.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp as *mut libc::seccomp_notif_resp,
            )
        })
        .map(|_| ())
    }

    /// Whether notification `id` is still pending (its thread still blocked in that call).
    pub fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: ID_VALID reads one u64 from the pointer, which is valid for the call.
        unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &mut id as *mut u64,
            ) == 0
        }
    }

    /// Ask the kernel to wake the supervisor and the trapped thread synchronously (hand the CPU
    /// over instead of a plain wake-up): `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6. Each
    /// notification is a round trip between two threads, which this makes cheaper. Best effort:
    /// older kernels refuse it (EINVAL) and work as before.
    pub fn set_sync_wakeup(&self) -> io::Result<()> {
        const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
        // SAFETY: SET_FLAGS takes the flags by value; no memory is passed.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        })
        .map(|_| ())
    }

    /// Install `src` in the target of notification `id` at fd number `newfd`, replacing
    /// whatever is there. Returns the fd number.
    pub fn addfd_at(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        newfd: RawFd,
        cloexec: bool,
    ) -> io::Result<RawFd> {
        let mut add = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: src.as_raw_fd() as u32,
            newfd: newfd as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads one seccomp_notif_addfd from `add` (valid across the call); `src`
        // is an open fd borrowed for the call, which the kernel duplicates into the target.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                &mut add as *mut libc::seccomp_notif_addfd,
            )
        })
    }
}

/// The size of the kernel's notification structures as this build knows them; checked
/// against `SECCOMP_GET_NOTIF_SIZES` at start-up.
pub fn check_notif_sizes() -> io::Result<()> {
    // SAFETY: seccomp_notif_sizes is plain integers.
    let mut sizes: libc::seccomp_notif_sizes = unsafe { zeroed() };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one seccomp_notif_sizes into `sizes`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::from(sizes.seccomp_notif) > size_of::<libc::seccomp_notif>()
        || usize::from(sizes.seccomp_notif_resp) > size_of::<libc::seccomp_notif_resp>()
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "kernel seccomp notification structures are larger than this build knows ({} / {} bytes)",
                sizes.seccomp_notif, sizes.seccomp_notif_resp
            ),
        ));
    }
    Ok(())
}
