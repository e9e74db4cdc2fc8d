//! Process file descriptors and `/proc`: how the daemon reaches another process's fds.
//!
//! # Theory of operation
//! A pidfd names one process (or, with `PIDFD_THREAD`, one thread) for good: unlike a pid it
//! cannot be reused behind our back. It becomes readable when the process exits (the
//! daemon's lifeline polls one) and [`pidfd_getfd`] copies one of the process's fds into
//! ours: the same open file description, so flags, options and even `connect` on the copy act
//! on the original. Both need ptrace rights over the target (being its parent, root, or
//! CAP_SYS_PTRACE over its user namespace).
//!
//! [`ProcFs`] is `/proc`, opened once before the daemon confines itself (the sandbox leaves no
//! `/proc` in its root; an fd opened earlier keeps working); `status` gives a thread's group
//! for kernels without thread pidfds, `fdinfo` an fd's close-on-exec flag.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::owned;

/// `PIDFD_THREAD` (Linux 6.9) = `O_EXCL`: a pidfd for one thread rather than its group.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

fn pidfd_open_raw(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

/// A pidfd for process `pid` (Linux >= 5.3). Meaningful for a process that cannot be reaped
/// under us (our child), or one whose identity is checked afterwards.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    pidfd_open_raw(pid, 0)
}

/// A pidfd for thread `tid`: a thread pidfd if the kernel has them (6.9), else one for its
/// thread group (found in `/proc/TID/status`). `ESRCH`: the thread is gone.
pub fn pidfd_open_thread(proc: &ProcFs, tid: i32) -> io::Result<OwnedFd> {
    match pidfd_open_raw(tid, PIDFD_THREAD) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let tgid = thread_group(proc, tid)?;
            pidfd_open_raw(tgid, 0)
        }
        other => other,
    }
}

/// A copy of the target's fd `fd` (close-on-exec in our table).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags (must be 0); returns a new fd.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// `/proc`, opened once before the daemon confines itself (the sandbox leaves no `/proc`
/// in its root; an fd opened earlier keeps working).
#[derive(Debug)]
pub struct ProcFs(OwnedFd);

impl std::os::fd::AsFd for ProcFs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ProcFs {
    pub fn open() -> io::Result<ProcFs> {
        nix::fcntl::open(
            "/proc",
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(ProcFs)
        .map_err(io::Error::from)
    }

    /// Open `/proc/<path>` (`path` relative, e.g. "42/status"). A missing entry (the thread
    /// is gone) is `ESRCH`.
    pub fn file(&self, path: &str, write: bool) -> io::Result<std::fs::File> {
        let mode = if write {
            nix::fcntl::OFlag::O_WRONLY
        } else {
            nix::fcntl::OFlag::O_RDONLY
        };
        nix::fcntl::openat(
            &self.0,
            path,
            mode | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(|e| match e {
            nix::errno::Errno::ENOENT => io::Error::from_raw_os_error(libc::ESRCH),
            e => io::Error::from(e),
        })
    }

    /// A small `/proc` text file (status, fdinfo): plain reads into one buffer, no size
    /// probing.
    fn read(&self, path: &str) -> io::Result<String> {
        use std::io::Read as _;
        let mut f = self.file(path, false)?;
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(k) => len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// The thread group (process) id of thread `tid`.
pub fn thread_group(proc: &ProcFs, tid: i32) -> io::Result<i32> {
    let status = proc.read(&format!("{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// Whether fd `fd` of thread `tid` is close-on-exec (from `/proc/TID/fdinfo/FD`).
pub fn fd_cloexec(proc: &ProcFs, tid: i32, fd: RawFd) -> io::Result<bool> {
    let info = proc.read(&format!("{tid}/fdinfo/{fd}"))?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(flags & libc::O_CLOEXEC as u32 != 0)
}
