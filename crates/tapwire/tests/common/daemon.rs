//! The daemon under test (tapwire or `$TAPWIRE_TEST_BIN`): its flags, ready/exit fds, output
//! and shutdown.

use super::*;

// The daemon under test.
// ---------------------------------------------------------------------------------------------

/// How to start the daemon. Defaults: `-c -r 3 PID tap0`.
#[derive(Clone, Debug)]
pub struct DaemonCfg {
    /// Extra flags (before the positional arguments).
    pub args: Vec<String>,
    /// `-c`.
    pub configure: bool,
    /// Pass a pipe as fd 3 and `-r 3`; [`Daemon::start`] waits for it.
    pub ready_fd: bool,
    /// Pass a pipe's read end as fd 4 and `-e 4`; the test holds the write end.
    pub exit_fd: bool,
    /// Positional arguments instead of `GUEST_PID tap0`.
    pub positional: Option<Vec<String>>,
}

impl Default for DaemonCfg {
    fn default() -> Self {
        DaemonCfg {
            args: Vec::new(),
            configure: true,
            ready_fd: true,
            exit_fd: false,
            positional: None,
        }
    }
}

impl DaemonCfg {
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
}

pub(super) const READY_FD: i32 = 3;
pub(super) const EXIT_FD: i32 = 4;

/// `$TAPWIRE_TEST_EXTRA_FLAGS` (whitespace-separated), appended to every daemon's flags: CI
/// runs the tap-mode and API suites once more with `--enable-sandbox --enable-seccomp`.
pub fn extra_flags() -> Vec<String> {
    std::env::var("TAPWIRE_TEST_EXTRA_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The binary under test, running in a host namespace, attached to a guest.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub cmdline: String,
    ready_r: Option<File>,
    exit_w: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Start with `cfg` and wait for the ready fd to say "1".
    pub fn start(host: &HostNs, guest: &Guest, cfg: DaemonCfg) -> Daemon {
        let ready = cfg.ready_fd;
        let mut d = Daemon::spawn(host, guest, cfg);
        if ready {
            let got = d.read_ready(SETUP_TIMEOUT);
            assert!(
                got.starts_with(b"1"),
                "daemon did not report ready (read {:?}); {}",
                String::from_utf8_lossy(&got),
                d.describe()
            );
        }
        d
    }

    /// `-c -r 3 [args] PID tap0`, ready.
    pub fn with_args(host: &HostNs, guest: &Guest, args: &[&str]) -> Daemon {
        Daemon::start(host, guest, DaemonCfg::default().args(args))
    }

    /// Spawn without waiting.
    pub fn spawn(host: &HostNs, guest: &Guest, cfg: DaemonCfg) -> Daemon {
        let log = host.dir.path().join(format!(
            "daemon-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let logf = File::create(&log).unwrap();
        let mut cmd = host.cmd(bin());
        if cfg.configure {
            cmd.arg("-c");
        }
        let (ready_r, ready_w) = if cfg.ready_fd {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            cmd.arg("-r").arg(READY_FD.to_string());
            (Some(File::from(r)), Some(w))
        } else {
            (None, None)
        };
        let (exit_r, exit_w) = if cfg.exit_fd {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            cmd.arg("-e").arg(EXIT_FD.to_string());
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        cmd.args(&cfg.args);
        cmd.args(extra_flags());
        match &cfg.positional {
            Some(p) => {
                cmd.args(p);
            }
            None => {
                cmd.arg(guest.pid().to_string()).arg("tap0");
            }
        }
        let cmdline = describe(&cmd);
        cmd.stdout(logf.try_clone().unwrap()).stderr(logf);
        harden(&mut cmd);
        let moves: Vec<(i32, i32)> = [
            ready_w.as_ref().map(|w| (w.as_raw_fd(), READY_FD)),
            exit_r.as_ref().map(|r| (r.as_raw_fd(), EXIT_FD)),
        ]
        .into_iter()
        .flatten()
        .collect();
        // SAFETY: runs in the forked child before exec; only fcntl/dup2/close on fds that are
        // open in the child (the pipe ends above, still owned by the parent's OwnedFds, whose
        // numbers are copied into `moves`). First every source is moved above 100 so that a
        // source numbered 3 or 4 cannot be clobbered by the other dup2.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [-1i32; 2];
                for (i, (src, _)) in moves.iter().enumerate() {
                    high[i] = libc::fcntl(*src, libc::F_DUPFD, 100);
                    if high[i] < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (i, (_, dst)) in moves.iter().enumerate() {
                    // dup2 clears FD_CLOEXEC on the target: it survives exec.
                    if libc::dup2(high[i], *dst) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(high[i]);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{cmdline}`: {e}"));
        // Our copies of the child's ends must go, or EOF/hangup is never seen.
        drop(ready_w);
        drop(exit_r);
        Daemon {
            child,
            log,
            cmdline,
            ready_r,
            exit_w,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Read the ready pipe until "1" arrives, EOF, or `timeout`. Returns what was read.
    pub fn read_ready(&mut self, timeout: Duration) -> Vec<u8> {
        let r = self
            .ready_r
            .as_mut()
            .expect("daemon started without a ready fd");
        read_until(r, timeout, |buf| !buf.is_empty()).0
    }

    /// Read the ready pipe to EOF (with a deadline): (bytes, saw_eof).
    pub fn read_ready_to_eof(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let r = self
            .ready_r
            .as_mut()
            .expect("daemon started without a ready fd");
        read_until(r, timeout, |_| false)
    }

    /// Close our end of the exit-fd pipe (the daemon should then exit).
    pub fn close_exit_fd(&mut self) {
        self.exit_w
            .take()
            .expect("daemon started without an exit fd");
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("kill daemon");
    }

    /// Wait for exit up to `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Number of open fds of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd of the daemon")
            .count()
    }

    /// Bytes the daemon has obtained from read-like syscalls so far (`rchar` of
    /// /proc/PID/io): TAP frames included, so a test can tell that frames were consumed.
    pub fn rchar(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid()))
            .expect("read /proc/PID/io of the daemon");
        io.lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/PID/io")
    }

    /// The daemon's stdout+stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Command line, status and log, for failure messages.
    pub fn describe(&mut self) -> String {
        let st = self.wait_timeout(Duration::ZERO);
        format!(
            "daemon `{}` (status: {})\n--- daemon log ---\n{}",
            self.cmdline,
            st.map_or("running".into(), |s| s.to_string()),
            self.output()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            let d = self.describe();
            eprintln!("{d}");
        }
        if self.wait_timeout(Duration::ZERO).is_none() {
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
            if self.wait_timeout(Duration::from_secs(3)).is_none() {
                kill_group(&mut self.child);
            }
        }
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
    }
}

/// Read from `f` (a pipe) until `done(buf)`, EOF or `timeout`. Returns (bytes, eof_seen).
pub(super) fn read_until(
    f: &mut File,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let start = Instant::now();
    let mut buf = Vec::new();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (buf, false);
        }
        let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap();
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
        let mut chunk = [0u8; 64];
        match f.read(&mut chunk) {
            Ok(0) => return (buf, true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if done(&buf) {
                    return (buf, false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read pipe: {e}"),
        }
    }
}
