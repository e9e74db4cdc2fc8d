//! The filter's runtime-pinned entries: system calls allowed only with arguments that are known
//! once the daemon is running (its own pid, the numbers of the few directory fds it keeps).
//!
//! # Theory of operation
//! [`super::allowlist`] is reviewed, static data. Three calls cannot be narrowed enough there,
//! because the safe argument is a number only known at start-up; they are built here from a
//! [`Pins`] just before the filter is installed:
//!
//! | call | allowed only when | why |
//! |---|---|---|
//! | `kill` | pid == our pid (or one of [`Pins::signal_pids`]) | the confined daemon is root of the host's pid namespace; it must not signal anyone else |
//! | `tgkill` | tgid == our pid and sig == SIGABRT | std's abort on panic (`raise`) |
//! | `openat` | dirfd == one of [`Pins::read_dirs`], read-only; dirfd == [`Pins::proc_dir`] (bypass) | a relative open through any other inherited or stray directory fd would reach the host's file system past the sandbox |
//!
//! `openat(AT_FDCWD, ..)` read-only stays in the static list: inside the sandbox the working
//! directory and `/` are the empty tmpfs. Absolute paths ignore the dirfd and resolve in that
//! root too. Every fd the daemon inherited and does not need was closed before
//! ([`super::inherited`]), so the only directory fds left are the ones pinned here.
//!
//! **One extra directory fd** (e.g. the DNS forwarder keeping resolv.conf's directory open to
//! re-read a file replaced by rename): add its number to [`Pins::read_dirs`] before
//! [`super::allowlist::apply`]; it is then allowed for read-only `openat` and nothing else.
//! The list takes any number, but each one costs a few BPF instructions.
use std::os::fd::RawFd;

use super::allowlist::{Cond, Op, READ_ONLY};

/// A call allowed under runtime conditions (alternatives, each a conjunction).
#[derive(Debug, Clone)]
pub struct Pinned {
    pub nr: i64,
    pub name: &'static str,
    pub rules: Vec<Vec<Cond>>,
}

/// The runtime values the filter pins arguments to.
#[derive(Debug, Clone)]
pub struct Pins {
    /// The daemon's pid (as it sees itself).
    pub own_pid: i32,
    /// Other processes the daemon may signal (none in daemon mode).
    pub signal_pids: Vec<i32>,
    /// Directory fds that `openat` may open relative to, read-only.
    pub read_dirs: Vec<RawFd>,
    /// The bypass supervisor's `/proc` fd: `openat` relative to it with any flags (it writes
    /// `/proc/TID/mem`).
    pub proc_dir: Option<RawFd>,
}

impl Pins {
    /// Pins for this process: its own pid, nothing else.
    pub fn this_process() -> Pins {
        Pins {
            own_pid: std::process::id() as i32,
            signal_pids: Vec::new(),
            read_dirs: Vec::new(),
            proc_dir: None,
        }
    }

    /// The pinned entries (the `/proc` one only with `bypass`).
    pub fn entries(&self, bypass: bool) -> Vec<Pinned> {
        let eq = |arg: u8, v: i64| Cond {
            arg,
            op: Op::Eq(v as u32 as u64),
        };
        let pids = std::iter::once(self.own_pid).chain(self.signal_pids.iter().copied());
        let kill = Pinned {
            nr: libc::SYS_kill,
            name: "kill",
            rules: pids
                .filter(|&p| p > 0)
                .map(|p| vec![eq(0, p.into())])
                .collect(),
        };
        let tgkill = Pinned {
            nr: libc::SYS_tgkill,
            name: "tgkill",
            rules: vec![vec![
                eq(0, self.own_pid.into()),
                eq(2, libc::SIGABRT.into()),
            ]],
        };
        let mut open: Vec<Vec<Cond>> = self
            .read_dirs
            .iter()
            .filter(|&&fd| fd >= 0)
            .map(|&fd| vec![eq(0, fd.into()), READ_ONLY])
            .collect();
        if bypass {
            if let Some(fd) = self.proc_dir.filter(|&fd| fd >= 0) {
                open.push(vec![eq(0, fd.into())]);
            }
        }
        // Never an empty rule list: that would allow the call unconditionally.
        let mut out = Vec::new();
        if !kill.rules.is_empty() {
            out.push(kill);
        }
        if self.own_pid > 0 {
            out.push(tgkill);
        }
        if !open.is_empty() {
            out.push(Pinned {
                nr: libc::SYS_openat,
                name: "openat",
                rules: open,
            });
        }
        debug_assert!(out.iter().all(|p| !p.rules.is_empty()));
        out
    }
}
