//! Bypass mode: seccomp user-notify hands a container host sockets at `connect`/`bind`.
//!
//! # Theory of operation
//! The decision is sans-IO ([`tapwire_proto::bypass`]); this folder does the OS side:
//! - [`rules`]: the filter's rule table, the BPF program built from it, its installation;
//! - [`notify`]: the seccomp listener's ioctls (receive, answer, install an fd);
//! - [`memory`]: reading and writing the trapped program's memory;
//! - [`supervisor`]: the thread that answers notifications (one file per call family).
//!
//! The generic system calls it uses (pidfds, socket calls on raw bytes, SCM_RIGHTS) are in
//! [`crate::sys`]. Bypass takes its configuration as plain values ([`Options`],
//! [`DaemonOptions`]) built by the caller, not from the command-line layer. `unsafe` is allowed
//! per file, only in [`rules`] and [`notify`] (the seccomp interfaces themselves).
use std::path::Path;

use tapwire_proto::bypass::Cidr;
use tapwire_proto::config::{NetConfig, Publish};

pub mod memory;
pub mod notify;
pub mod rules;
pub mod supervisor;

/// What the supervisor decides with: the network, the `-p` forwards, `--ignore`.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub net: &'a NetConfig,
    /// `-p`: published TCP ports are served by the program's own bind on a host socket.
    pub publish: &'a [Publish],
    /// `--ignore`: destinations never bypassed.
    pub ignore: &'a [Cidr],
}

/// The daemon's `--seccomp-listener`: bypass for OCI runtimes' containers.
#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions<'a> {
    pub bypass: Options<'a>,
    /// The UNIX socket runtimes connect to (`--seccomp-listener PATH`).
    pub listener_path: &'a Path,
    /// `--enable-sandbox` (not supported together with bypass yet).
    pub sandbox: bool,
    /// `--enable-seccomp`: the daemon's own filter will be in place when containers' listeners
    /// arrive (it does not allow switching them to synchronous wake-ups).
    pub seccomp: bool,
}
