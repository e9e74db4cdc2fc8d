//! Processes with deadlines: hardened spawning, `run` with a timeout, background `Proc`s,
//! `wait_until` and deadline-bound `Task`s.

use super::*;

// Processes with deadlines.
// ---------------------------------------------------------------------------------------------

/// Make `cmd` safe to spawn from a test: own process group (so Drop kills its children too)
/// and SIGKILL when the spawning test thread dies.
pub fn harden(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

pub(super) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What a finished (or timed out) command produced.
#[derive(Debug)]
pub struct Out {
    pub cmdline: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    /// Exit code, or None if killed by a signal / timed out.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// Panic with everything we know unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: status {:?}{} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Run `cmd` to completion, killing its whole process group after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let cmdline = describe(cmd);
    harden(cmd).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{cmdline}`: {e}"));
    let pipe_reader = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_t = pipe_reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err_t = pipe_reader(child.stderr.take().map(|s| Box::new(s) as _));
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > timeout {
            timed_out = true;
            kill_group(&mut child);
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    // A grandchild may still hold the pipes; the group was killed on timeout, and on a normal
    // exit we kill any leftovers of the group so the readers see EOF.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    Out {
        cmdline,
        status,
        timed_out,
        elapsed,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

pub(super) fn kill_group(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// A background process, killed (whole process group) on Drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let name = describe(cmd);
        harden(cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{name}`: {e}"));
        Proc { child, name }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Wait until the process has exec'd `comm` (e.g. holders: unshare has finished and exec'd
    /// sleep, so its namespaces are final).
    pub fn wait_comm(&mut self, comm: &str) {
        let path = format!("/proc/{}/comm", self.pid());
        wait_until(
            SETUP_TIMEOUT,
            &format!("`{}` to exec {comm}", self.name),
            || {
                if let Ok(Some(st)) = self.child.try_wait() {
                    panic!("`{}` exited early: {st}", self.name);
                }
                std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == comm)
            },
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Poll `cond` every few ms until it holds; panic naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A closure running on its own thread with a deadline for its result.
pub struct Task<T> {
    rx: mpsc::Receiver<thread::Result<T>>,
    name: String,
}

/// Run `f` on a new thread; collect with [`Task::join`].
pub fn task<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn thread");
    Task {
        rx,
        name: name.to_string(),
    }
}

impl<T> Task<T> {
    /// The task's result; re-raises its panic; panics if it is not done within `timeout`.
    #[track_caller]
    pub fn join(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(v)) => v,
            Ok(Err(p)) => std::panic::resume_unwind(p),
            Err(_) => panic!("task `{}` did not finish within {timeout:?}", self.name),
        }
    }
}

/// Exit status as "code N" / "signal N" for messages.
pub fn status_str(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}
