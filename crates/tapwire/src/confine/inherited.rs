//! Descriptors the daemon inherited: noted at start-up, closed before confinement.
//!
//! # Theory of operation
//! A caller may leave any fd open across the exec of the daemon (a directory fd of the host's
//! `/`, a socket, a pipe of its own). The sandbox changes the root but not the fd table, and
//! the filter allows `read`/`write`/`sendmsg` on any fd, so such an fd would be a way out of
//! the confinement. The daemon needs none of them except the ones its flags name
//! (`--ready-fd`, `--exit-fd`) and stdin/stdout/stderr.
//!
//! [`snapshot`] lists `/proc/self/fd` first thing in `daemon()`/`run_mode()`, before the daemon
//! opens anything, so every number in it is inherited (the listing's own directory fd is
//! recognized afterwards: it is closed by then). [`Inherited::close`] closes them right before
//! the sandbox. Inherited fds are kept open until then on purpose: a path argument may name one
//! (`--netns-type=path /proc/self/fd/N`; a `--userns-path` of that form, which the sandbox opens,
//! is kept open: [`named_by`]), and since the daemon never owned them, their numbers
//! cannot have been reused by anything it opened itself. Only fds still open and not owned by
//! the daemon are touched. Without `/proc` (not mounted) the snapshot falls back to probing
//! numbers 3..[`PROBE_LIMIT`] with `fcntl(F_GETFD)`.
//!
//! Syscalls (start-up only): `openat`/`getdents64` on `/proc/self/fd`, `fcntl(F_GETFD)`,
//! `close`.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// The fd a path argument names (`/proc/self/fd/N`, `/dev/fd/N`, `/proc/<our pid>/fd/N`), to
/// keep open: the sandbox may open such a `--userns-path` after the inherited fds are closed.
pub fn named_by(path: &std::path::Path) -> Option<RawFd> {
    let s = path.to_str()?;
    let own = format!("/proc/{}/fd/", std::process::id());
    let n = s
        .strip_prefix("/proc/self/fd/")
        .or_else(|| s.strip_prefix("/dev/fd/"))
        .or_else(|| s.strip_prefix(own.as_str()))?;
    n.parse().ok().filter(|&fd: &RawFd| fd > 2)
}

/// Numbers probed when `/proc/self/fd` cannot be listed.
pub const PROBE_LIMIT: RawFd = 4096;

/// The inherited fds to close before confinement.
#[derive(Debug, Default)]
pub struct Inherited(Vec<RawFd>);

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid argument.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Note every open fd above 2 except `keep` (the flags' fds). Call before opening anything.
pub fn snapshot(keep: &[RawFd]) -> Inherited {
    let listed: Option<Vec<RawFd>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    });
    // The ReadDir is dropped: its own fd is closed now and fails the is_open check.
    let candidates = listed.unwrap_or_else(|| (3..PROBE_LIMIT).collect());
    let mut fds: Vec<RawFd> = candidates
        .into_iter()
        .filter(|&fd| fd > 2 && !keep.contains(&fd) && is_open(fd))
        .collect();
    fds.sort_unstable();
    fds.dedup();
    Inherited(fds)
}

impl Inherited {
    pub fn fds(&self) -> &[RawFd] {
        &self.0
    }

    /// Close them all; returns how many were still open.
    pub fn close(self) -> usize {
        let mut n = 0;
        for fd in self.0 {
            if is_open(fd) {
                // SAFETY: `fd` was open before the daemon opened anything and the daemon never
                // took ownership of it (only the flags' fds are adopted, and they are excluded),
                // so no Rust object refers to it; closing it cannot invalidate one.
                unsafe { libc::close(fd) };
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!("closed {n} inherited file descriptor(s) before confinement");
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn paths_naming_fds() {
        use std::path::Path;
        assert_eq!(named_by(Path::new("/proc/self/fd/7")), Some(7));
        assert_eq!(named_by(Path::new("/dev/fd/9")), Some(9));
        let own = format!("/proc/{}/fd/11", std::process::id());
        assert_eq!(named_by(Path::new(&own)), Some(11));
        assert_eq!(
            named_by(Path::new("/proc/self/fd/1")),
            None,
            "stdio is kept anyway"
        );
        assert_eq!(named_by(Path::new("/proc/1/ns/user")), None);
        assert_eq!(named_by(Path::new("/proc/self/fd/x")), None);
    }

    #[test]
    fn inherited_fds_are_found_and_closed_but_kept_ones_stay() {
        // Stand-ins for inherited fds (the harness has others open too: they are not closed,
        // only the ones this test made are checked).
        let a = std::fs::File::open("/").unwrap().into_raw_fd();
        let b = std::fs::File::open("/").unwrap().into_raw_fd();
        let snap = snapshot(&[b]);
        assert!(snap.fds().contains(&a));
        assert!(!snap.fds().contains(&b), "kept");
        assert!(snap.fds().iter().all(|&fd| fd > 2));
        let only_a = Inherited(vec![a]);
        assert_eq!(only_a.close(), 1);
        assert!(!is_open(a));
        assert!(is_open(b));
        // SAFETY: b was made above and is owned by this test only.
        unsafe { libc::close(b) };
        let f = std::fs::File::open("/").unwrap();
        assert!(is_open(f.as_raw_fd()));
    }
}
