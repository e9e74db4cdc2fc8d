//! The daemon's lifeline: one fd for the engine's exit condition that becomes readable when the
//! caller closes `--exit-fd` *or* the guest's process exits.
//!
//! # Theory of operation
//! slirp4netns runs until it is killed or its exit fd is closed; when the guest's namespace
//! dies without either (a crashed runtime, `kill -9` of the namespace's holder), it lingers
//! forever. tapwire cannot learn that the namespace is gone from the TAP: the open TAP fd
//! itself holds a reference on the network namespace, so the device never goes away while we
//! read it. With `--netns-type=pid` (the default) the target process is the namespace's owner
//! in every real setup (RootlessKit's child, `unshare ... sleep`, a container's init), so its
//! exit is the signal: a pidfd of it (Linux >= 5.3) becomes readable when it exits.
//!
//! The engine takes a single exit fd. An epoll instance is itself pollable (readable while any
//! of its members is ready), so the lifeline is an epoll fd holding the pidfd and the caller's
//! exit fd (hangup counts as ready for a pipe whose writer closed); the engine polls it like
//! any other fd and exits with status 0. The event loop makes no extra system call for it.
//!
//! With `--netns-type=path` there is no process to watch (the namespace file may be
//! bind-mounted with no process inside yet): a `/proc/PID/ns/net` path gives its PID, and a
//! bind mount is watched by the engine until it is unmounted (`engine::lifecycle`). A kernel
//! without pidfds keeps the old behaviour, with a warning.
//!
//! Syscalls (start-up only): `pidfd_open` ([`crate::sys::pidfd`]), `epoll_create1`, `epoll_ctl`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::pidfd::pidfd_open;

/// The fd to hand to the engine, and what must stay open as long as it is used.
#[derive(Debug)]
pub struct Lifeline {
    /// The engine's exit fd.
    pub fd: OwnedFd,
    /// Members of the epoll set: keep them open as long as `fd` is used (closing one would
    /// silently drop it from the set).
    pub members: Vec<OwnedFd>,
}

/// A lifeline from the caller's `--exit-fd` (if any) and the guest's process (if any).
/// `None` when there is nothing to watch.
pub fn new(exit_fd: Option<OwnedFd>, guest_pid: Option<i32>) -> io::Result<Option<Lifeline>> {
    let pidfd = match guest_pid.map(pidfd_open).transpose() {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            tracing::warn!("pidfd_open: {e}; the daemon will not notice the guest's exit");
            None
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("watching the guest process {}: {e}", guest_pid.unwrap_or(0)),
            ))
        }
    };
    let members: Vec<OwnedFd> = exit_fd.into_iter().chain(pidfd).collect();
    if members.len() <= 1 {
        return Ok(members.into_iter().next().map(|fd| Lifeline {
            fd,
            members: Vec::new(),
        }));
    }
    // SAFETY: epoll_create1 takes flags only.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: epoll_create1 just returned this fd (checked >= 0); nothing else owns it.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for m in &members {
        add(&ep, m.as_raw_fd())?;
    }
    Ok(Some(Lifeline { fd: ep, members }))
}

fn add(ep: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLHUP) as u32,
        u64: fd as u64,
    };
    // SAFETY: both fds are open; `ev` is a live epoll_event the kernel only reads.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `fd` becomes readable within `ms`. A positive wait is needed: a test running
    /// in parallel may fork (Command::spawn) while our pipe's write end is open, and the child
    /// holds its copy until it execs (O_CLOEXEC), so the hangup can come a moment late.
    fn readable_within(fd: &OwnedFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, bounded timeout.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    fn readable(fd: &OwnedFd) -> bool {
        readable_within(fd, 10_000)
    }

    fn idle(fd: &OwnedFd) -> bool {
        !readable_within(fd, 0)
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r, w)
    }

    #[test]
    fn nothing_to_watch() {
        assert!(new(None, None).unwrap().is_none());
    }

    #[test]
    fn exit_fd_alone_is_passed_through() {
        let (r, w) = pipe();
        let raw = r.as_raw_fd();
        let l = new(Some(r), None).unwrap().unwrap();
        assert_eq!(l.fd.as_raw_fd(), raw);
        assert!(idle(&l.fd));
        drop(w);
        assert!(readable(&l.fd));
    }

    #[test]
    fn fires_on_exit_fd_hangup_or_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (r, w) = pipe();
        let l = new(Some(r), Some(child.id() as i32)).unwrap().unwrap();
        assert!(idle(&l.fd));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(readable(&l.fd), "process exit");
        drop(w);

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (r, w) = pipe();
        let l = new(Some(r), Some(child.id() as i32)).unwrap().unwrap();
        drop(w);
        assert!(readable(&l.fd), "exit fd hangup");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
