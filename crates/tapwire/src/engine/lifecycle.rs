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
//!
//! # The end of a `--netns-type=path` namespace
//! The open TAP holds a reference on its network namespace, so the namespace never dies while
//! we run and the TAP never reports anything (measured: after the last process exited and the
//! file was unmounted, the TAP stayed readable-idle and the daemon ran on forever). What the
//! owner does do is release its handle: `ip netns delete`, podman and RootlessKit unmount the
//! bind mount. So [`Engine::watch_netns`] (called at start-up, before the sandbox) records the
//! namespace's nsfs inode and opens `/proc/self/mountinfo`, which keeps showing the mount
//! table of the mount namespace it was opened in (the sandbox's own comes later and does not
//! matter); once a second [`Exit::check_netns`] re-reads it (`lseek` and `read`, no new system
//! call for the seccomp filter) and ends the loop with 0 when no mount of that namespace is left.
//! A path that is no mount at all (`/proc/PID/ns/net`) is watched through PID instead
//! ([`proc_pid`], by the lifeline's pidfd); anything else is not watched (a warning says so).
//! Processes still inside a namespace whose last mount went away lose their network: the
//! owner gave it up.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
    /// `None` in the other `--threads` workers: only the first reads signals.
    pub signals: Option<SignalFd>,
    pub life: Lifecycle,
    /// The status to exit with; the loop stops at the start of the next turn.
    pub code: Option<i32>,
    /// `--netns-type=path`: the mount table to watch for the namespace's last mount.
    netns: Option<NetnsWatch>,
}

/// A network namespace known by its nsfs inode, and the mount table it is mounted in.
struct NetnsWatch {
    mountinfo: File,
    /// ` net:[INODE] `, as the mount's root appears in mountinfo.
    needle: String,
    buf: Vec<u8>,
}

/// Whether `mountinfo` text lists a mount whose root is `needle` (` net:[INODE] `).
fn mounted(mountinfo: &[u8], needle: &[u8]) -> bool {
    mountinfo.windows(needle.len()).any(|w| w == needle)
}

/// The PID of a `/proc/PID/ns/net` (or `/proc/PID/task/TID/ns/net`) path.
pub fn proc_pid(path: &Path) -> Option<i32> {
    let mut parts = path.strip_prefix("/proc").ok()?.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    let rest: Vec<_> = parts.map(|c| c.as_os_str().to_owned()).collect();
    let ns_net = |r: &[std::ffi::OsString]| r.len() == 2 && r[0] == "ns" && r[1] == "net";
    let ok = ns_net(&rest) || (rest.len() == 4 && rest[0] == "task" && ns_net(&rest[2..]));
    ok.then_some(pid)
}

impl NetnsWatch {
    /// Re-read the mount table: is the namespace still mounted? (An unreadable table counts
    /// as mounted: never exit on a doubt.)
    fn still_mounted(&mut self) -> bool {
        self.buf.clear();
        if self.mountinfo.seek(SeekFrom::Start(0)).is_err()
            || self.mountinfo.read_to_end(&mut self.buf).is_err()
        {
            return true;
        }
        mounted(&self.buf, self.needle.as_bytes())
    }
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
            signals: Some(signals),
            life,
            code: None,
            netns: None,
        })
    }

    /// A `--threads` worker's: no signals (the first worker reads them; the mask, inherited
    /// from the thread that made the workers, keeps them blocked), no exit fd, no command.
    pub fn worker() -> Exit {
        Exit {
            signals: None,
            life: Lifecycle::default(),
            code: None,
            netns: None,
        }
    }

    /// Once a second: end the loop if the watched namespace has no mount left.
    pub fn check_netns(&mut self) {
        if let Some(w) = &mut self.netns {
            if !w.still_mounted() {
                tracing::info!("the guest's network namespace is no longer mounted; exiting");
                self.code = Some(0);
                self.netns = None;
            }
        }
    }

    pub fn read_signals(&mut self) {
        // Lent out of `self` while the signals are handled.
        let Some(signals) = self.signals.take() else {
            return;
        };
        while let Ok(Some(info)) = signals.read_signal() {
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
        self.signals = Some(signals);
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

impl super::Engine {
    /// `--netns-type=path`: exit once the namespace at `path` is unmounted everywhere in our
    /// mount namespace (see the module documentation). Call before the sandbox.
    pub fn watch_netns(&mut self, path: &Path) -> io::Result<()> {
        let ino = std::fs::metadata(path)?.ino();
        let mountinfo = File::open("/proc/self/mountinfo")?;
        let mut w = NetnsWatch {
            mountinfo,
            needle: format!(" net:[{ino}] "),
            buf: Vec::new(),
        };
        if w.still_mounted() {
            tracing::debug!(path = %path.display(), "watching the namespace's mounts");
            self.exit.netns = Some(w);
        } else if proc_pid(path).is_none() {
            tracing::warn!(
                "{} is not a mount of the namespace: the daemon will not notice its end (use --exit-fd)",
                path.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_namespace_mount() {
        let text = b"25 1 0:23 / / rw - ext4 /dev/sda1 rw\n\
            300 25 0:4 net:[4026532288] /run/netns/g rw shared:5 - nsfs nsfs rw\n";
        assert!(mounted(text, b" net:[4026532288] "));
        assert!(!mounted(text, b" net:[402653228] "));
        assert!(!mounted(text, b" net:[4026532289] "));
        assert!(!mounted(b"", b" net:[1] "));
    }

    #[test]
    fn proc_paths() {
        assert_eq!(proc_pid(Path::new("/proc/123/ns/net")), Some(123));
        assert_eq!(proc_pid(Path::new("/proc/123/task/124/ns/net")), Some(123));
        assert_eq!(proc_pid(Path::new("/proc/self/ns/net")), None);
        assert_eq!(proc_pid(Path::new("/proc/123/ns/user")), None);
        assert_eq!(proc_pid(Path::new("/run/netns/x")), None);
        assert_eq!(proc_pid(Path::new("/proc/123")), None);
    }

    #[test]
    fn reads_the_mount_table() {
        // Our own netns is not mounted anywhere: nothing to watch (needs no privilege).
        let ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let mut w = NetnsWatch {
            mountinfo: File::open("/proc/self/mountinfo").unwrap(),
            needle: format!(" net:[{ino}] "),
            buf: Vec::new(),
        };
        let _ = w.still_mounted();
        assert!(!w.buf.is_empty(), "mountinfo read");
        // The root mount is always listed.
        assert!(mounted(&w.buf, b" / / "));
    }
}
