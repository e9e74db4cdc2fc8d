//! File descriptors inherited from the parent (`-r FD`, `-e FD`).
//!
//! # Theory of operation
//! slirp4netns's callers pass pipe ends by number. We take ownership of such a number only
//! after checking that it is open (`fcntl(F_GETFD)`), so a wrong number is a clear error at
//! start-up instead of a write to, or a close of, some unrelated fd later. The fd is also
//! marked close-on-exec so it does not leak into a run-mode command.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Take ownership of an inherited fd after checking it is open; marks it close-on-exec.
pub fn adopt(fd: RawFd, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd < 0 || flags < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {fd}: {}", io::Error::last_os_error()),
        ));
    }
    // SAFETY: F_SETFD with a flag set derived from F_GETFD on an fd we just saw open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the fd is open (checked above) and was handed to this process to own by the
    // command line contract (-r/-e); nothing else in this process uses that number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: every proxied flow holds a host socket.
pub fn raise_nofile_limit() {
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
    }
}
