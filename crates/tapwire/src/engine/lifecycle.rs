//! What ends the event loop: signals, the exit fd, the run-mode command.
//!
//! # Theory of operation
//! [`Exit::new`] blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD and reads them from a signalfd
//! that the loop registers like any socket. In daemon mode SIGTERM/SIGINT/SIGHUP end the loop
//! with status 0. In run mode ([`Lifecycle::child`]) they are forwarded to the command (except
//! SIGINT: the terminal's ^C reaches it directly), and SIGCHLD reaps it: its exit status, or
//! 128 + its signal, becomes ours. The exit fd ([`Lifecycle::exit_fd`]) becoming readable or
//! hung up ends the loop with 0; so does the TAP going away (see the loop). [`Exit::code`] is
//! checked once per loop turn.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// What ends the daemon besides signals.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// `-e FD`: exit when it becomes readable or hangs up.
    pub exit_fd: Option<OwnedFd>,
    /// Run mode: the command; its exit status becomes ours.
    pub child: Option<Pid>,
}

/// The signalfd, the lifecycle and the exit status once decided.
pub(super) struct Exit {
    pub signals: SignalFd,
    pub life: Lifecycle,
    /// The status to exit with; the loop stops at the start of the next turn.
    pub code: Option<i32>,
}

impl Exit {
    /// Block the signals we read (see the module documentation) and open their signalfd.
    pub fn new(life: Lifecycle) -> io::Result<Exit> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(io::Error::from)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Exit {
            signals,
            life,
            code: None,
        })
    }

    pub fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match (sig, self.life.child) {
                (Signal::SIGCHLD, _) => self.reap_child(),
                // Run mode: the terminal's ^C reaches the command itself; forward the rest.
                (Signal::SIGINT, Some(_)) => {}
                (_, Some(child)) => {
                    let _ = nix::sys::signal::kill(child, sig);
                }
                (_, None) => {
                    tracing::info!("{sig}; exiting");
                    self.code = Some(0);
                }
            }
        }
    }

    pub fn reap_child(&mut self) {
        let Some(child) = self.life.child else {
            return;
        };
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    self.code = Some(code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    self.code = Some(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
