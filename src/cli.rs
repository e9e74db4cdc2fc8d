//! Command line (stub: being written).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::config::NetConfig;

/// Which network namespace to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=pid` (default): /proc/PID/ns/{user,net}.
    Pid(i32),
    /// `--netns-type=path`: a netns file (e.g. /run/netns/x or /proc/N/ns/net).
    Path(PathBuf),
}

/// The slirp4netns-compatible daemon command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    pub target: Target,
    /// `--userns-path`: user namespace to join before the netns (else the PID's, or none for a path).
    pub userns_path: Option<PathBuf>,
    /// Name of the tap device (default "tap0").
    pub tapname: String,
    /// `-c`.
    pub configure: bool,
    pub exit_fd: Option<RawFd>,
    pub ready_fd: Option<RawFd>,
    pub api_socket: Option<PathBuf>,
    pub enable_sandbox: bool,
    pub enable_seccomp: bool,
    pub net: NetConfig,
}

/// `tapwire run [OPTIONS] [-- CMD [ARGS...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub tapname: String,
    pub net: NetConfig,
    /// Empty: the user's $SHELL (or /bin/sh).
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Daemon(Box<DaemonArgs>),
    Run(Box<RunArgs>),
}

/// Parse argv (including argv[0]). On error or --help/--version the clap error is returned;
/// the caller calls `.exit()` on it.
pub fn parse<I, T>(_args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    unimplemented!("cli::parse is being written")
}
