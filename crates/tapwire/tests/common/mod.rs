//! Integration-test harness: private namespaces, the daemon under test, servers and helpers.
//!
//! Theory of operation
//! -------------------
//! Every test builds its own world and tears it down on `Drop`, so tests run in parallel and
//! nothing is left behind (no `ip netns` names, no files outside a per-test temp dir):
//!
//! ```text
//!   test process (init netns; only creates namespaces and sockets *inside* them)
//!     |
//!     +-- HostNs  holder: `unshare --net --mount --propagation private sleep infinity`
//!     |     lo up, NO default route, /etc/resolv.conf bind-mounted to <tmp>/resolv.conf
//!     |     ("nameserver 127.0.0.1"), so nothing can leave it. The daemon under test, dnsmasq,
//!     |     and host-side servers live here; "host loopback" means this namespace's 127.0.0.1.
//!     |
//!     +-- Guest   holder: `unshare --user --map-root-user --net sleep infinity` (spawned in HostNs)
//!     |     the daemon attaches to it (`-c ... PID tap0`); shell tools run in it via nsenter.
//!     |
//!     +-- Peer    holder: `unshare --net sleep infinity`, veth to HostNs: 192.168.77.1 (host
//!           side) <-> 192.168.77.2 (peer): a "remote" test host that only HostNs can reach.
//! ```
//!
//! Socket-level checks do not shell out: a thread can `setns(CLONE_NEWNET)` on its own, and a
//! socket belongs for life to the netns it was created in. So `HostNs::in_ns`, `Guest::in_ns`
//! and `Peer::in_ns` run a closure on a fresh thread inside that namespace; the sockets it
//! returns are then used from any thread. This gives exact errno checks (ENETUNREACH,
//! ECONNREFUSED) and fast sha256-checked transfers without extra processes.
//!
//! Every spawned process gets its own process group and `PR_SET_PDEATHSIG(SIGKILL)` (so a killed
//! test run leaves no holder behind), and is killed (whole group) on `Drop`. Every wait has a
//! deadline: a hanging test is worse than a failing one.
//!
//! The binary under test is `$TAPWIRE_TEST_BIN` (a path or a name in $PATH, e.g. `slirp4netns`)
//! or else the tapwire binary Cargo built. Missing prerequisites (not root, missing tool, no
//! /dev/net/tun) fail the test with "skipping: <why>" unless `TAPWIRE_ALLOW_SKIP=1`, in which case
//! the test returns early after printing the reason (on the real stderr, never captured).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Generous deadline for anything that should be instant (namespace setup, a ready fd).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one bulk transfer (50 MB through a userspace stack on a slow 2-core VM).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);
/// Read/write timeout set on every test socket, so a stuck peer never blocks a thread forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The default virtual network (slirp4netns conventions).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The peer namespace's address and the host namespace's end of the veth.
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const PEER_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

// ---------------------------------------------------------------------------------------------
// Preflight: root, tools, the binary under test.
// ---------------------------------------------------------------------------------------------

/// The binary under test: `$TAPWIRE_TEST_BIN` (path, or name looked up in $PATH) or tapwire.
pub fn bin() -> PathBuf {
    match std::env::var_os("TAPWIRE_TEST_BIN") {
        Some(b) if !b.is_empty() => which(&b).unwrap_or_else(|| PathBuf::from(b)),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_tapwire")),
    }
}

/// True unless the binary under test is slirp4netns (used for tapwire-only expectations).
pub fn testing_tapwire() -> bool {
    bin().file_name().and_then(OsStr::to_str) != Some("slirp4netns")
}

/// Look `name` up in $PATH (or accept it if it contains a slash and exists).
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = Path::new(name.as_ref());
    if name.components().count() > 1 {
        return name.exists().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn allow_skip() -> bool {
    std::env::var("TAPWIRE_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Report a missing prerequisite: on the real stderr (not captured by the test harness), then
/// fail the test, unless TAPWIRE_ALLOW_SKIP=1 (then return false: the caller returns early).
pub fn skip(why: &str) -> bool {
    let msg = format!("skipping: {why}");
    let _ = writeln!(io::stderr().lock(), "{msg}");
    if allow_skip() {
        false
    } else {
        panic!("{msg} (set TAPWIRE_ALLOW_SKIP=1 to let such tests pass without running)");
    }
}

/// Check root, /dev/net/tun, the base tools plus `tools`, and the binary under test.
/// Returns false if the test must return early (only with TAPWIRE_ALLOW_SKIP=1).
pub fn preflight(tools: &[&str]) -> bool {
    init_process();
    if !nix::unistd::geteuid().is_root() {
        return skip("integration tests need root (they create namespaces and veths)");
    }
    if !Path::new("/dev/net/tun").exists() {
        return skip("/dev/net/tun does not exist (modprobe tun / mknod /dev/net/tun c 10 200)");
    }
    for t in ["nsenter", "unshare", "ip", "mount", "sleep", "sh"]
        .iter()
        .chain(tools)
    {
        if which(t).is_none() {
            return skip(&format!(
                "`{t}` not found in PATH (see .ci/run for the apt packages)"
            ));
        }
    }
    let b = bin();
    if !b.is_file() {
        return skip(&format!("binary under test {} does not exist", b.display()));
    }
    true
}

/// For behaviour only tapwire has (run mode, exit status on SIGTERM, ...).
pub fn tapwire_only(what: &str) -> bool {
    if testing_tapwire() {
        true
    } else {
        skip(&format!(
            "{what} is tapwire-only; TAPWIRE_TEST_BIN={}",
            bin().display()
        ))
    }
}

/// Once per test binary: raise RLIMIT_NOFILE (500-connection tests hold >1000 sockets; the
/// daemon inherits the limit too).
fn init_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which lives on our stack.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max.min(65536);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
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

fn describe(cmd: &Command) -> String {
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

fn kill_group(child: &mut Child) {
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

// ---------------------------------------------------------------------------------------------
// Namespaces.
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A per-test temp dir, removed on Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tapwire-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ns_file(pid: u32, ns: &str) -> File {
    File::open(format!("/proc/{pid}/ns/{ns}")).unwrap_or_else(|e| panic!("open ns of {pid}: {e}"))
}

fn ns_id(path: &str) -> PathBuf {
    std::fs::read_link(path).unwrap_or_else(|e| panic!("readlink {path}: {e}"))
}

/// Run `f` on a fresh thread that has joined the network namespace `ns`.
pub fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns(CLONE_NEWNET)");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The private "host" network + mount namespace of one test. Drop kills everything in it.
pub struct HostNs {
    holder: Proc,
    netns: File,
    pub dir: TempDir,
}

impl HostNs {
    pub fn new() -> HostNs {
        let dir = TempDir::new("host");
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        let mut holder = Proc::spawn(Command::new("unshare").args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sleep",
            "infinity",
        ]));
        holder.wait_comm("sleep");
        let pid = holder.pid();
        // Safety net: never run anything "inside" a namespace that is really the machine's.
        assert_ne!(
            ns_id(&format!("/proc/{pid}/ns/net")),
            ns_id("/proc/self/ns/net"),
            "host holder did not get a private netns"
        );
        assert_ne!(
            ns_id(&format!("/proc/{pid}/ns/mnt")),
            ns_id("/proc/self/ns/mnt"),
            "host holder did not get a private mount ns"
        );
        let netns = ns_file(pid, "net");
        let host = HostNs { holder, netns, dir };
        let resolv = host.dir.join("resolv.conf");
        let script = format!(
            "mount --bind {} /etc/resolv.conf && ip link set lo up",
            resolv.display()
        );
        run(host.cmd("sh").args(["-c", &script]), SETUP_TIMEOUT).ok();
        let routes = run(host.cmd("ip").args(["-4", "route", "show"]), SETUP_TIMEOUT).ok();
        assert!(
            !routes.stdout.contains("default"),
            "private host ns has a default route: {}",
            routes.stdout
        );
        let rc = run(host.cmd("cat").arg("/etc/resolv.conf"), SETUP_TIMEOUT).ok();
        assert_eq!(
            rc.stdout.trim(),
            "nameserver 127.0.0.1",
            "resolv.conf bind mount"
        );
        host
    }

    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// Prepare this host namespace for tests as uid 65534: a world-usable /dev/net/tun (only
    /// inside our private mount namespace) and a copy of the binary under test that uid 65534
    /// can execute (the checkout may be under a private home directory). Returns the copy, or
    /// `None` (after [`skip`]) where unprivileged user namespaces are not allowed.
    pub fn unprivileged_binary(&self) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let tun = self.dir.join("tun");
        self.sh(&format!(
            "mknod -m 0666 {t} c 10 200 && mount --bind {t} /dev/net/tun",
            t = tun.display()
        ))
        .ok();
        let probe = run(
            self.cmd("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["unshare", "--user", "--map-root-user", "--net", "true"]),
            SETUP_TIMEOUT,
        );
        if !probe.success() {
            skip(&format!(
                "unprivileged user namespaces are not allowed here: {probe}"
            ));
            return None;
        }
        let exe = self.dir.join("tapwire");
        // cp, not std::fs::copy: a child forked meanwhile by a parallel test would inherit our
        // write fd on the copy until it execs, and executing the copy then fails with ETXTBSY.
        run(Command::new("cp").arg(bin()).arg(&exe), SETUP_TIMEOUT).ok();
        for p in [self.dir.path(), exe.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Some(exe)
    }

    /// A command that runs in this host namespace (net + mount, so it sees our resolv.conf).
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-n", "-m", "--"])
            .arg(prog);
        c
    }

    /// Run a shell snippet in the host namespace, with a timeout.
    pub fn sh(&self, script: &str) -> Out {
        run(self.cmd("sh").args(["-c", script]), SETUP_TIMEOUT)
    }

    /// Run `f` on a thread inside the host netns (sockets it creates live there).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns, f)
    }

    /// A TCP listener on host loopback 127.0.0.1:port.
    pub fn listen(&self, port: u16) -> TcpListener {
        self.in_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("host listen 127.0.0.1:{port}: {e}"))
    }

    /// A UDP socket on host loopback 127.0.0.1:port.
    pub fn udp(&self, port: u16) -> UdpSocket {
        self.in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("host udp bind 127.0.0.1:{port}: {e}"))
    }

    /// The guest namespace: `unshare --user --map-root-user --net`, started from this host ns.
    pub fn guest(&self) -> Guest {
        let mut holder = Proc::spawn(self.cmd("unshare").args([
            "--user",
            "--map-root-user",
            "--net",
            "--",
            "sleep",
            "infinity",
        ]));
        holder.wait_comm("sleep");
        let pid = holder.pid();
        assert_ne!(
            ns_id(&format!("/proc/{pid}/ns/net")),
            ns_id(&format!("/proc/{}/ns/net", self.pid())),
            "guest holder did not get its own netns"
        );
        let netns = ns_file(pid, "net");
        Guest { holder, netns }
    }

    /// A third namespace joined to this one by a veth (192.168.77.1 here, .2 there).
    pub fn peer(&self) -> Peer {
        self.peer_link("twhost0", "twpeer0", PEER_HOST_ADDR, PEER_ADDR)
    }

    /// Like [`HostNs::peer`] with other names and addresses (all /24): a second peer behind
    /// another interface, e.g. `peer_link("twhost1", "twpeer1", 192.168.78.1, 192.168.78.2)`.
    pub fn peer_link(
        &self,
        host_if: &str,
        peer_if: &str,
        host_addr: Ipv4Addr,
        peer_addr: Ipv4Addr,
    ) -> Peer {
        let mut holder =
            Proc::spawn(Command::new("unshare").args(["--net", "--", "sleep", "infinity"]));
        holder.wait_comm("sleep");
        let pid = holder.pid();
        self.sh(&format!(
            "ip link add {host_if} type veth peer name {peer_if} netns {pid} && \
             ip addr add {host_addr}/24 dev {host_if} && ip link set {host_if} up"
        ))
        .ok();
        run(
            Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-n", "--", "sh", "-c"])
                .arg(format!(
                    "ip link set lo up && ip addr add {peer_addr}/24 dev {peer_if} && \
                     ip link set {peer_if} up"
                )),
            SETUP_TIMEOUT,
        )
        .ok();
        let netns = ns_file(pid, "net");
        Peer {
            holder,
            netns,
            addr: peer_addr,
        }
    }

    /// dnsmasq on 127.0.0.1:53 of this namespace answering `tapwire.test` with 10.9.8.7
    /// (and nothing else: no upstream, no /etc/hosts).
    pub fn dnsmasq(&self) -> Proc {
        let log = File::create(self.dir.join("dnsmasq.log")).unwrap();
        let pidfile = self.dir.join("dnsmasq.pid");
        let mut p = Proc::spawn(
            self.cmd("dnsmasq")
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--port=53",
                    "--user=root",
                    "--address=/tapwire.test/10.9.8.7",
                    "--log-queries",
                    "--log-facility=-",
                ])
                .arg(format!("--pid-file={}", pidfile.display()))
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        wait_until(SETUP_TIMEOUT, "dnsmasq to listen on 127.0.0.1:53", || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "dnsmasq exited: {st}\n{}",
                    std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
                );
            }
            self.in_ns(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                .is_ok()
        });
        p
    }
}

impl Default for HostNs {
    fn default() -> Self {
        Self::new()
    }
}

/// The guest network namespace (with its own user namespace), as a container would have.
pub struct Guest {
    holder: Proc,
    netns: File,
}

impl Guest {
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// A command run as root of the guest's user namespace, in its network namespace.
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-U", "-n", "--preserve-credentials", "--"])
            .arg(prog);
        c
    }

    /// Run a shell snippet in the guest with a timeout.
    pub fn sh(&self, script: &str, timeout: Duration) -> Out {
        run(self.cmd("sh").args(["-c", script]), timeout)
    }

    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns, f)
    }

    /// connect() from the guest (socket created in the guest netns).
    pub fn connect(&self, addr: impl Into<SocketAddr>, timeout: Duration) -> io::Result<TcpStream> {
        let addr = addr.into();
        let s = self.in_ns(|| TcpStream::connect_timeout(&addr, timeout))?;
        set_timeouts(&s);
        Ok(s)
    }

    /// `python3 -c SCRIPT ARGS...` in the guest (root of its user ns: it may open AF_PACKET
    /// sockets on tap0), with a timeout.
    pub fn python(&self, script: &str, args: &[&str], timeout: Duration) -> Out {
        run(
            self.cmd("python3").arg("-c").arg(script).args(args),
            timeout,
        )
    }

    /// A UDP socket in the guest, connect()ed to `addr`.
    pub fn udp_to(&self, addr: impl Into<SocketAddr>) -> UdpSocket {
        let addr = addr.into();
        self.in_ns(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect(addr)?;
            Ok::<_, io::Error>(s)
        })
        .expect("guest udp socket")
    }
}

/// A test host behind a veth, reachable from the host ns (not from the machine).
pub struct Peer {
    holder: Proc,
    netns: File,
    /// This peer's address on its veth (PEER_ADDR for [`HostNs::peer`]).
    pub addr: Ipv4Addr,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns, f)
    }
    /// Run a shell snippet in the peer's network namespace, with a timeout.
    pub fn sh(&self, script: &str) -> Out {
        run(
            Command::new("nsenter").args([
                "-t",
                &self.pid().to_string(),
                "-n",
                "--",
                "sh",
                "-c",
                script,
            ]),
            SETUP_TIMEOUT,
        )
    }
    pub fn listen(&self, port: u16) -> TcpListener {
        let addr = self.addr;
        self.in_ns(|| TcpListener::bind((addr, port)))
            .unwrap_or_else(|e| panic!("peer listen {addr}:{port}: {e}"))
    }
    pub fn udp(&self, port: u16) -> UdpSocket {
        let addr = self.addr;
        self.in_ns(|| UdpSocket::bind((addr, port)))
            .unwrap_or_else(|e| panic!("peer udp bind {addr}:{port}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
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

const READY_FD: i32 = 3;
const EXIT_FD: i32 = 4;

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
fn read_until(f: &mut File, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
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

// ---------------------------------------------------------------------------------------------
// Data, hashing, transfers.
// ---------------------------------------------------------------------------------------------

/// `n` pseudo-random bytes (xorshift64*, seeded): incompressible and reproducible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Streaming SHA-256 (FIPS 180-4), small and self-contained.
#[derive(Clone)]
pub struct Sha256 {
    h: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    total: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: [0; 64],
            buf_len: 0,
            total: 0,
        }
    }

    fn block(&mut self, b: &[u8]) {
        let mut w = [0u32; 64];
        for (i, c) in b.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b_, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b_) ^ (a & c) ^ (b_ & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b_;
            b_ = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.h.iter_mut().zip([a, b_, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let n = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == 64 {
                let b = self.buf;
                self.block(&b);
                self.buf_len = 0;
            }
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            self.block(c);
        }
        let rest = chunks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len += rest.len();
    }

    /// The digest as lowercase hex (what `sha256sum` prints).
    pub fn hex(mut self) -> String {
        let bits = self.total.wrapping_mul(8);
        self.update(&[0x80]);
        while self.buf_len != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut s = String::with_capacity(64);
        for v in self.h {
            let _ = write!(s, "{v:08x}");
        }
        s
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.hex()
}

pub fn set_timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// accept() with a deadline; the stream gets IO timeouts.
pub fn accept_timeout(l: &TcpListener, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                set_timeouts(&s);
                return Ok((s, a));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read to EOF, hashing: (bytes, sha256 hex).
pub fn read_hash(s: &mut TcpStream) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((n, h.hex())),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Host-side server task: accept one connection, read to EOF, return (bytes, sha256, peer).
pub fn serve_sink(l: TcpListener) -> Task<(u64, String, SocketAddr)> {
    task("sink-server", move || {
        let (mut s, peer) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("sink accept");
        let (n, h) = read_hash(&mut s).expect("sink read");
        (n, h, peer)
    })
}

/// Host-side server task: accept one connection, send `data`, close.
pub fn serve_source(l: TcpListener, data: std::sync::Arc<Vec<u8>>) -> Task<()> {
    task("source-server", move || {
        let (mut s, _) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("source accept");
        s.write_all(&data).expect("source write");
        s.shutdown(Shutdown::Write).expect("source shutdown");
        // Wait for the client to close so no data is lost to an early RST.
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink);
    })
}

/// Upload `data` from the guest to a sink listening on host `listener`, reached at `target`.
/// Asserts the byte count and sha256 seen by the server.
#[track_caller]
pub fn check_upload(guest: &Guest, listener: TcpListener, target: SocketAddr, data: &[u8]) {
    let want = sha256_hex(data);
    let server = serve_sink(listener);
    let start = Instant::now();
    let mut c = guest
        .connect(target, SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest connect {target}: {e}"));
    c.write_all(data).expect("guest upload write");
    c.shutdown(Shutdown::Write)
        .expect("guest shutdown(SHUT_WR)");
    let (n, got, _) = server.join(TRANSFER_TIMEOUT);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, data.len() as u64, "bytes received by the server");
    assert_eq!(got, want, "sha256 of the uploaded data");
    eprintln!(
        "upload {} MB to {target}: {:.2} Gbit/s",
        data.len() >> 20,
        n as f64 * 8.0 / secs / 1e9
    );
}

/// Download `data` from a source on host `listener` into the guest via `target`; sha256 check.
#[track_caller]
pub fn check_download(guest: &Guest, listener: TcpListener, target: SocketAddr, data: Vec<u8>) {
    let want = sha256_hex(&data);
    let len = data.len() as u64;
    let server = serve_source(listener, std::sync::Arc::new(data));
    let start = Instant::now();
    let mut c = guest
        .connect(target, SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest connect {target}: {e}"));
    let (n, got) = read_hash(&mut c).expect("guest download read");
    let secs = start.elapsed().as_secs_f64();
    drop(c);
    server.join(TRANSFER_TIMEOUT);
    assert_eq!(n, len, "bytes received by the guest");
    assert_eq!(got, want, "sha256 of the downloaded data");
    eprintln!(
        "download {} MB from {target}: {:.2} Gbit/s",
        len >> 20,
        n as f64 * 8.0 / secs / 1e9
    );
}

/// A server task on `sock` that answers a datagram holding a decimal size with that many bytes
/// of `random_bytes(size, size)`, until 3 s pass with nothing; returns how many it answered.
pub fn serve_udp_big_replies(sock: UdpSocket) -> Task<usize> {
    task("udp-big-replies", move || {
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            let size: usize = String::from_utf8_lossy(&buf[..k]).parse().unwrap();
            sock.send_to(&random_bytes(size, size as u64), from)
                .unwrap();
            n += 1;
        }
        n
    })
}

/// Ask a [`serve_udp_big_replies`] server reached by the connected socket `s` for a `size`-byte
/// reply (3 tries of 2 s) and check its length and sha256.
#[track_caller]
pub fn check_big_udp_reply(s: &UdpSocket, size: usize, buf: &mut [u8]) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = None;
    for _ in 0..3 {
        s.send(size.to_string().as_bytes()).unwrap();
        if let Ok(k) = s.recv(buf) {
            got = Some(k);
            break;
        }
    }
    let k = got.unwrap_or_else(|| panic!("no {size} B reply reached the guest (3 tries)"));
    assert_eq!(k, size, "size of the reply datagram");
    assert_eq!(
        sha256_hex(&buf[..k]),
        sha256_hex(&random_bytes(size, size as u64)),
        "{size} B reply corrupted"
    );
}

/// UDP echo server task on `sock`: echoes every datagram until `quiet` passes with nothing.
pub fn serve_udp_echo(sock: UdpSocket, quiet: Duration) -> Task<usize> {
    task("udp-echo", move || {
        sock.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..k], from).expect("udp echo send");
            n += 1;
        }
        n
    })
}

/// From the guest, send datagrams of `sizes` to `target` and expect each echoed back intact
/// (each retried up to 3 times, 2 s apart).
#[track_caller]
pub fn check_udp_echo(guest: &Guest, target: SocketAddr, sizes: &[usize]) {
    let s = guest.udp_to(target);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65536];
    for (i, &size) in sizes.iter().enumerate() {
        let msg = random_bytes(size, 1000 + i as u64);
        let mut ok = false;
        for _try in 0..3 {
            s.send(&msg)
                .unwrap_or_else(|e| panic!("guest udp send {size} B to {target}: {e}"));
            match s.recv(&mut buf) {
                Ok(k) if buf[..k] == msg[..] => {
                    ok = true;
                    break;
                }
                Ok(k) => panic!("udp echo of {size} B from {target}: got {k} B, different"),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => panic!("guest udp recv from {target}: {e}"),
            }
        }
        assert!(
            ok,
            "no udp echo of a {size} B datagram from {target} after 3 tries"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DNS wire format (just enough for an A query).
// ---------------------------------------------------------------------------------------------

/// A recursive A query for `name` with transaction id `id`.
pub fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; QDCOUNT=1
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE=A, QCLASS=IN
    q
}

/// The IPv4 addresses in the answer section of a DNS response with id `id`.
pub fn dns_answers(resp: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    if resp.len() < 12 {
        return Err(format!("short DNS response ({} B)", resp.len()));
    }
    if resp[0..2] != id.to_be_bytes() {
        return Err("DNS response id mismatch".into());
    }
    let rcode = resp[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("DNS rcode {rcode}"));
    }
    let qd = u16::from_be_bytes([resp[4], resp[5]]);
    let an = u16::from_be_bytes([resp[6], resp[7]]);
    let mut p = 12;
    let skip_name = |p: &mut usize| -> Result<(), String> {
        loop {
            let l = *resp.get(*p).ok_or("truncated name")? as usize;
            if l == 0 {
                *p += 1;
                return Ok(());
            }
            if l & 0xc0 == 0xc0 {
                *p += 2;
                return Ok(());
            }
            *p += 1 + l;
        }
    };
    for _ in 0..qd {
        skip_name(&mut p)?;
        p += 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        skip_name(&mut p)?;
        let f = resp.get(p..p + 10).ok_or("truncated answer")?;
        let (ty, len) = (
            u16::from_be_bytes([f[0], f[1]]),
            u16::from_be_bytes([f[8], f[9]]) as usize,
        );
        p += 10;
        let rd = resp.get(p..p + len).ok_or("truncated rdata")?;
        if ty == 1 && len == 4 {
            out.push(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]));
        }
        p += len;
    }
    Ok(out)
}

/// Exit status as "code N" / "signal N" for messages.
pub fn status_str(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

#[cfg(test)]
mod selftest {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let data = random_bytes(1_000_003, 7);
        let mut h = Sha256::new();
        for c in data.chunks(4097) {
            h.update(c);
        }
        assert_eq!(h.hex(), sha256_hex(&data));
    }
}
