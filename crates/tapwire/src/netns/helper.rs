//! Daemon mode: open the TAP inside a PID's or a path's namespaces ([`open_tap`]).
//!
//! Theory of operation: the namespace files are opened *in the parent*, before the fork, so a
//! bad PID or path gives an error naming the file, and the child only has to `setns()` by fd.
//! The user namespace is skipped when it is already ours (same st_dev and st_ino as
//! `/proc/self/ns/user`), because `setns()` into one's own user namespace fails. The forked
//! helper joins the user namespace, then the network namespace, opens the TAP, configures it
//! (`-c`), for `-p auto` opens the guest's sock_diag socket (`link::sock_diag`), sends the
//! fd(s) back over the [`super::channel`] (then, with `--threads N`, the TAP's other queues;
//! then, with `--forward-to-host`, the listeners on
//! the namespace's loopback: [`super::loopback`]) and exits; the parent waits for it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use super::channel::{
    describe, die_with_parent, exit_now, recv_queues, recv_reply, send_error, send_fd,
    seqpacket_pair, wait_child, Reply,
};
use super::loopback::{open_listeners, recv_listeners, send_listeners};
use super::{errno, setup_err, NetnsError, Target};
use crate::link::tap::{self, Tap};
use crate::link::{netlink, sock_diag};
use tapwire_proto::config::IfConfig;

/// The namespaces the helper joins.
struct Namespaces<'a> {
    user: Option<&'a NsFile>,
    net: &'a NsFile,
}

/// A namespace file opened by the parent, with its path for error messages.
struct NsFile {
    fd: OwnedFd,
    path: PathBuf,
}

fn open_ns(kind: &'static str, path: &Path) -> Result<NsFile, NetnsError> {
    let file = std::fs::File::open(path).map_err(|source| NetnsError::OpenNs {
        kind,
        path: path.to_owned(),
        source,
    })?;
    Ok(NsFile {
        fd: OwnedFd::from(file),
        path: path.to_owned(),
    })
}

/// Whether the namespace behind `ns` is the one `/proc/self/ns/<name>` refers to.
fn is_own_ns(ns: &NsFile, own: &str) -> Result<bool, NetnsError> {
    let theirs = nix::sys::stat::fstat(&ns.fd).map_err(|e| NetnsError::Stat {
        path: ns.path.clone(),
        source: errno(e),
    })?;
    let ours = nix::sys::stat::stat(own).map_err(|e| NetnsError::Stat {
        path: PathBuf::from(own),
        source: errno(e),
    })?;
    Ok(theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino)
}

/// Forks a helper (the caller must still be single-threaded) that joins the target's user
/// namespace, then its network namespace, opens TAP `tapname`, runs
/// [`netlink::configure`] when `cfg` is `Some`, opens a sock_diag socket there when `diag`
/// (`-p auto`), and passes the fd(s) back.
///
/// User namespace: `userns_path` if `Some`; otherwise, for [`Target::Pid`],
/// `/proc/PID/ns/user`; for [`Target::Path`], none. It is skipped when it is the caller's own.
/// Network namespace: `/proc/PID/ns/net` or the path.
///
/// Errors from the helper come back as [`NetnsError::Child`] with the helper's message, e.g.
/// `setns into user namespace /proc/42/ns/user: Operation not permitted`.
pub fn open_tap(
    target: &Target,
    userns_path: Option<&Path>,
    tapname: &str,
    cfg: Option<&IfConfig>,
) -> Result<OwnedFd, NetnsError> {
    open_tap_with(target, userns_path, tapname, cfg, &[], false, 1).map(|t| t.tap)
}

/// [`open_tap`], and with `--forward-to-host` the helper also opens listeners on the guest
/// ports `to_host` on the namespace's 127.0.0.1 and ::1 ([`super::loopback`]), returned
/// with the TAP; with `diag` (`-p auto`) also a sock_diag socket of the target's network
/// namespace (`link::sock_diag::open`), made by the same helper.
pub fn open_tap_with(
    target: &Target,
    userns_path: Option<&Path>,
    tapname: &str,
    cfg: Option<&IfConfig>,
    to_host: &[u16],
    diag: bool,
    queues: usize,
) -> Result<TapFds, NetnsError> {
    tap::check_name(tapname)?;
    let (net_path, user_path) = match target {
        Target::Pid(pid) => {
            if *pid <= 0 {
                return Err(NetnsError::InvalidPid(*pid));
            }
            let user = userns_path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/ns/user")));
            (PathBuf::from(format!("/proc/{pid}/ns/net")), Some(user))
        }
        Target::Path(path) => (path.clone(), userns_path.map(Path::to_path_buf)),
    };
    let user = match user_path {
        Some(path) => {
            let ns = open_ns("user namespace", &path)?;
            if is_own_ns(&ns, "/proc/self/ns/user")? {
                None
            } else {
                Some(ns)
            }
        }
        None => None,
    };
    let net = open_ns("network namespace", &net_path)?;

    let (parent_sock, child_sock) = seqpacket_pair()?;
    let parent_pid = getpid();
    // SAFETY: the child branch only makes syscalls on values prepared before the fork
    // (namespace fds, the socket, the name and config) and always ends in `_exit`
    // (helper_main returns `!`), never returning into the caller's code; it takes no locks
    // that another thread of the parent could hold (no logging, no std stdio).
    match unsafe { fork() } {
        Err(e) => Err(NetnsError::Fork(errno(e))),
        Ok(ForkResult::Child) => {
            drop(parent_sock);
            let ns = Namespaces {
                user: user.as_ref(),
                net: &net,
            };
            let wants = Wants {
                to_host,
                diag,
                queues,
            };
            helper_main(&child_sock, parent_pid, ns, tapname, cfg, wants)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(child_sock);
            let reply = recv_reply(&parent_sock, child);
            let extra = match &reply {
                Ok(Reply::Fd(..)) => recv_queues(parent_sock.as_fd(), child, queues),
                _ => Ok(Vec::new()),
            };
            let listeners = match &reply {
                Ok(Reply::Fd(..)) if !to_host.is_empty() && extra.is_ok() => {
                    recv_listeners(parent_sock.as_fd(), child, to_host.len() * 2)
                }
                _ => Ok(Vec::new()),
            };
            drop(parent_sock);
            let status = wait_child(child);
            match reply? {
                Reply::Fd(tap, diag_fd) if diag_fd.is_some() == diag => Ok(TapFds {
                    tap,
                    queues: extra?,
                    listeners: listeners?,
                    diag: diag_fd,
                }),
                Reply::Fd(..) => Err(NetnsError::BadReply {
                    pid: child,
                    reason: "wrong number of file descriptors",
                }),
                Reply::Error(message) => Err(NetnsError::Child {
                    pid: child,
                    message,
                }),
                Reply::Eof => Err(NetnsError::ChildDied {
                    pid: child,
                    how: describe(status?),
                }),
            }
        }
    }
}

/// What [`open_tap_with`] brings back from the target's namespace.
#[derive(Debug)]
pub struct TapFds {
    /// The TAP (its first queue).
    pub tap: OwnedFd,
    /// `--threads N`: its other N-1 queues.
    pub queues: Vec<OwnedFd>,
    /// `--forward-to-host`: listeners on the guest's loopback.
    pub listeners: Vec<OwnedFd>,
    /// `-p auto`: a sock_diag socket of the target's network namespace.
    pub diag: Option<OwnedFd>,
}

/// What the helper opens besides the TAP.
struct Wants<'a> {
    to_host: &'a [u16],
    diag: bool,
    queues: usize,
}

/// Body of the [`open_tap`] helper child. Never returns.
fn helper_main(
    sock: &OwnedFd,
    parent: Pid,
    ns: Namespaces<'_>,
    tapname: &str,
    cfg: Option<&IfConfig>,
    wants: Wants<'_>,
) -> ! {
    let Namespaces { user, net } = ns;
    let Wants {
        to_host,
        diag,
        queues,
    } = wants;
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<_, NetnsError> {
        die_with_parent(parent)?;
        if let Some(ns) = user {
            setns(&ns.fd, CloneFlags::CLONE_NEWUSER).map_err(|e| NetnsError::Setns {
                kind: "user namespace",
                path: ns.path.clone(),
                source: errno(e),
            })?;
        }
        setns(&net.fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Setns {
            kind: "network namespace",
            path: net.path.clone(),
            source: errno(e),
        })?;
        let mut taps = Tap::open_queues(tapname, queues)?.into_iter();
        let tap = taps
            .next()
            .ok_or_else(|| setup_err("TAP queues", io::ErrorKind::NotFound))?;
        let rest: Vec<OwnedFd> = taps.map(OwnedFd::from).collect();
        if let Some(cfg) = cfg {
            netlink::configure(tapname, cfg)?;
        }
        let diag = match diag {
            true => Some(
                sock_diag::open()
                    .map_err(|e| setup_err("sock_diag socket (-p auto)", e))?
                    .0,
            ),
            false => None,
        };
        Ok((tap, rest, diag))
    }));
    let code = match result {
        Ok(Ok((tap, rest, diag))) => {
            let sent = send_fd(sock.as_fd(), tap.as_fd(), diag.as_ref().map(|d| d.as_fd()))
                .and_then(|()| match rest.is_empty() {
                    true => Ok(()),
                    false => send_listeners(sock.as_fd(), &rest),
                });
            match sent {
                Ok(()) if to_host.is_empty() => 0,
                Ok(()) => match catch_unwind(|| open_listeners(to_host)) {
                    Ok(Ok(fds)) => i32::from(send_listeners(sock.as_fd(), &fds).is_err()),
                    Ok(Err(e)) => {
                        send_error(sock.as_fd(), &e);
                        1
                    }
                    Err(_) => 1,
                },
                Err(_) => 1,
            }
        }
        Ok(Err(e)) => {
            send_error(sock.as_fd(), &e);
            1
        }
        Err(_) => 1,
    };
    exit_now(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pid_is_rejected_before_forking() {
        let err = open_tap(&Target::Pid(0), None, "tap0", None).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidPid(0)));
        assert!(err.to_string().contains("positive integer"));
    }

    #[test]
    fn missing_namespace_names_the_path() {
        let err = open_tap(&Target::Pid(999_999_999), None, "tap0", None).unwrap_err();
        let s = err.to_string();
        assert!(s.contains("/proc/999999999/ns/"), "{s}");
        assert!(s.contains("No such file or directory"), "{s}");
        let err = open_tap(
            &Target::Path(PathBuf::from("/nonexistent/netns")),
            None,
            "tap0",
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "open network namespace /nonexistent/netns: No such file or directory (os error 2)"
        );
    }
}
