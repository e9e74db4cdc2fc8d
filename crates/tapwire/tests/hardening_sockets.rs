//! The daemon's UNIX sockets and descriptors under hostile local use (issue 12, items 2, 4, 6):
//!
//! - the API answers 200 clients that all send their request at the same moment (none is
//!   evicted for waiting its turn), and a full table of stalled clients does not lock it;
//! - the API socket is never created through a symlink;
//! - the `--seccomp-listener` socket is 0600 whatever the umask, refuses peers of another uid
//!   (`SO_PEERCRED`) and container states naming a pid the peer did not start;
//! - confinement (`--enable-sandbox --enable-seccomp`) closes the fds the daemon inherited.
//!
//! The filter's pinning of `kill`/`openat` arguments is checked in the unit tests of
//! `confine::allowlist` (a forked child runs the filter). Everything runs in the private
//! namespaces of tests/common (root needed).

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bypass::{preflight_bypass, python3};
use common::hardening::sandboxed;
use common::*;

// ---- item 4: concurrent API clients ----------------------------------------------------------

/// Clients connected so far, and when to send anyway: once all are connected, or after 3 s
/// (a server that serves one connection at a time, slirp4netns, keeps the rest from
/// connecting until it is answered; waiting for all would deadlock).
struct Start {
    connected: AtomicUsize,
    n: usize,
    deadline: Instant,
}

impl Start {
    fn wait(&self) {
        self.connected.fetch_add(1, Ordering::SeqCst);
        while self.connected.load(Ordering::SeqCst) < self.n && Instant::now() < self.deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One request per connection, from a thread; the reply or the error it met.
fn ask(path: &Path, req: &[u8], start: &Start) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    start.wait(); // every client is connected: all send at the same moment
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e} (got {out:?})"))?;
    Ok(out)
}

/// 200 clients connect, then all send a complete request and shut down their write side at
/// once. Every one must get the right reply. Old tapwire accepted the whole backlog and evicted
/// the oldest beyond 64 clients (ECONNRESET/EPIPE for clients merely waiting their turn);
/// slirp4netns serves them one by one and passes.
#[test]
fn api_answers_200_simultaneous_clients() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    // One forward, so the reply is not trivially short.
    common::api::add(&sock, "tcp", None, 24001, 80);
    const N: usize = 200;
    let start = Arc::new(Start {
        connected: AtomicUsize::new(0),
        n: N,
        deadline: Instant::now() + Duration::from_secs(3),
    });
    let t0 = Instant::now();
    let workers: Vec<_> = (0..N)
        .map(|_| {
            let (sock, start) = (sock.clone(), start.clone());
            std::thread::spawn(move || ask(&sock, br#"{"execute":"list_hostfwd"}"#, &start))
        })
        .collect();
    let mut bad = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let got = w.join().expect("client thread");
        let ok = got.as_ref().is_ok_and(|r| {
            serde_json::from_str::<serde_json::Value>(r)
                .ok()
                .and_then(|v| {
                    // slirp4netns 1.2 answers list_hostfwd without the "return" wrapper.
                    v.pointer("/return/entries/0/host_port")
                        .or_else(|| v.pointer("/entries/0/host_port"))
                        .and_then(|p| p.as_u64())
                })
                == Some(24001)
        });
        if !ok {
            bad.push((i, got));
        }
    }
    // A figure for the report (a server that serves one at a time also waits out the 3 s
    // start deadline).
    eprintln!(
        "{N} simultaneous API clients: {} answered in {:?}",
        N - bad.len(),
        t0.elapsed()
    );
    assert!(
        bad.is_empty(),
        "{} of {N} clients got no correct reply; first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

/// A full table of clients that connect and send nothing cannot lock the API: a client that
/// comes after them is answered within a few seconds (a stalled one is evicted for it).
/// Passes on old main too (it evicted the oldest at once); guards the new accept policy.
#[test]
fn stalled_clients_do_not_lock_the_api() {
    if !preflight(&[]) || !tapwire_only("stalled-client eviction (slirp4netns blocks)") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    let stalled: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&sock).expect("connect a stalled client"))
        .collect();
    let t0 = Instant::now();
    let reply = common::api::call_raw(&sock, br#"{"execute":"list_hostfwd"}"#);
    assert_eq!(reply, r#"{"return":{"entries":[]}}"#);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        t0.elapsed()
    );
    drop(stalled);
}

// ---- item 2: the sockets' files ----------------------------------------------------------------

/// A symlink at the API socket's path is refused: the daemon fails with a clear error and the
/// link and its target are left alone. Old tapwire removed the link and bound a socket there;
/// slirp4netns unlinks whatever is at the path too (not tested against it: same weakness).
#[test]
fn api_socket_symlink_is_refused() {
    if !preflight(&[]) || !tapwire_only("refusing a symlinked API socket path") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let victim = host.dir.join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let link = host.dir.join("api.sock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut d = Daemon::spawn(
        &host,
        &guest,
        DaemonCfg::default().args(&["--api-socket", link.to_str().unwrap()]),
    );
    let got = d.read_ready(SETUP_TIMEOUT);
    assert!(!got.starts_with(b"1"), "daemon started: {}", d.describe());
    let st = d.wait_timeout(SETUP_TIMEOUT);
    assert!(st.is_some_and(|s| !s.success()), "{}", d.describe());
    assert!(
        d.output().contains("symbolic link"),
        "unclear error: {}",
        d.output()
    );
    let md = std::fs::symlink_metadata(&link).unwrap();
    assert!(md.file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
}

/// The daemon with `--seccomp-listener PATH` (and `-c`), started under `umask`.
fn listener_daemon(host: &HostNs, guest: &Guest, path: &Path, umask: u32) -> Daemon {
    let mode = nix::sys::stat::Mode::from_bits_truncate(umask);
    // The umask is inherited at fork: set it around the spawn only.
    let old = nix::sys::stat::umask(mode);
    let mut d = Daemon::spawn(
        host,
        guest,
        DaemonCfg::default().args(&["--seccomp-listener", path.to_str().unwrap()]),
    );
    nix::sys::stat::umask(old);
    let got = d.read_ready(SETUP_TIMEOUT);
    assert!(got.starts_with(b"1"), "not ready: {}", d.describe());
    d
}

/// Under umask 000 the runtimes' socket is still 0600 (old tapwire: 0777, so any local user
/// could hand it a listener). slirp4netns has no such socket.
#[test]
fn seccomp_listener_socket_is_0600_under_umask_000() {
    if !preflight_bypass(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let path = host.dir.join("oci.sock");
    let mut d = listener_daemon(&host, &guest, &path, 0);
    let md = std::fs::symlink_metadata(&path).expect("socket exists once ready");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()));
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "{}", d.describe());
    // A second daemon cannot take over the live socket's path.
    let guest2 = host.guest();
    let mut d2 = Daemon::spawn(
        &host,
        &guest2,
        DaemonCfg::default().args(&["--seccomp-listener", path.to_str().unwrap()]),
    );
    assert!(!d2.read_ready(SETUP_TIMEOUT).starts_with(b"1"));
    assert!(d2.wait_timeout(SETUP_TIMEOUT).is_some_and(|s| !s.success()));
    assert!(
        d2.output().contains("listening"),
        "second daemon: {}",
        d2.describe()
    );
    assert!(
        UnixStream::connect(&path).is_ok(),
        "first daemon's socket kept"
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_timeout(SETUP_TIMEOUT).is_some());
    assert!(!path.exists(), "socket removed at exit");
}

/// The container state an OCI runtime sends, naming `pid`.
fn state(pid: u32) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": "tapwire-bypass-v1 tcp",
        "state": {"ociVersion": "1.0.2", "id": format!("c{pid}"), "status": "creating", "pid": pid},
    })
    .to_string()
    .into_bytes()
}

/// Send `state(pid)` with a pipe's write end as the "listener"; true if the daemon kept the fd
/// (the pipe's read end sees no EOF within 2 s after our copy is closed), false if it dropped it.
fn daemon_keeps_listener(path: &Path, pid: u32) -> bool {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let s = UnixStream::connect(path).expect("connect to the seccomp listener socket");
    let msg = state(pid);
    let iov = [std::io::IoSlice::new(&msg)];
    let fds = [w.as_raw_fd()];
    sendmsg::<nix::sys::socket::UnixAddr>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg state + fd");
    s.shutdown(Shutdown::Write).unwrap();
    drop(w);
    let eof = eof_within(r, Duration::from_secs(2));
    drop(s);
    !eof
}

/// Whether the pipe's read end `r` reaches EOF within `timeout`.
fn eof_within(r: OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut f = std::fs::File::from(r);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap();
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let mut b = [0u8; 1];
        match f.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => panic!("read pipe: {e}"),
        }
    }
}

/// A state naming a process the peer did not start (pid 1) is refused and its fds closed;
/// the peer's own pid is accepted (so the check is not simply refusing everything). Old
/// tapwire accepted any state from anyone.
#[test]
fn seccomp_listener_refuses_a_pid_the_peer_did_not_start() {
    if !preflight_bypass(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let path = host.dir.join("oci.sock");
    let d = listener_daemon(&host, &guest, &path, 0o022);
    assert!(
        !daemon_keeps_listener(&path, 1),
        "a listener for pid 1 was accepted from pid {}",
        std::process::id()
    );
    assert!(
        d.output().contains("is not the sending runtime"),
        "{}",
        d.output()
    );
    assert!(
        daemon_keeps_listener(&path, std::process::id()),
        "the peer's own pid was refused: {}",
        d.output()
    );
}

/// A peer of another uid is refused at accept, even when the file's mode lets it connect
/// (here chmod 0666, as a umask of 000 made it before). Old tapwire served it.
#[test]
fn seccomp_listener_refuses_another_uid() {
    if !preflight_bypass(&["setpriv"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let path = host.dir.join("oci.sock");
    let d = listener_daemon(&host, &guest, &path, 0o022);
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = r#"
import json, os, select, socket, sys
r, w = os.pipe()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
pid = os.getpid()
st = {"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": pid,
      "metadata": "tapwire-bypass-v1 tcp", "state": {"id": "intruder", "pid": pid}}
try:
    socket.send_fds(s, [json.dumps(st).encode()], [w])
    s.shutdown(socket.SHUT_WR)
except (BrokenPipeError, ConnectionResetError):
    pass  # closed at accept, before the send: the fd never left
os.close(w)
ready, _, _ = select.select([r], [], [], 2)
print(json.dumps({"uid": os.getuid(), "released": bool(ready) and os.read(r, 1) == b""}))
"#;
    let out = run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([python3(), "-c", script, path.to_str().unwrap()]),
        SETUP_TIMEOUT,
    );
    assert!(out.success(), "sender: {out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("sender's JSON");
    assert_eq!(v["uid"], 65534);
    assert_eq!(
        v["released"],
        true,
        "the daemon kept a listener from uid 65534: {}",
        d.output()
    );
    assert!(
        d.output().contains("refused a connection"),
        "{}",
        d.output()
    );
    assert!(!d.output().contains("serving seccomp listener"));
}

// ---- item 6: inherited descriptors -------------------------------------------------------------

/// A directory fd of the host's / inherited without close-on-exec, at a number >= 200.
fn inherited_root_fd() -> OwnedFd {
    let root = std::fs::File::open("/").unwrap();
    // SAFETY: F_DUPFD (not _CLOEXEC) makes a new fd that this function then owns.
    let n = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_DUPFD, 200) };
    assert!(n >= 200, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: n was just returned by fcntl and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(n) }
}

fn has_fd(pid: u32, fd: i32) -> bool {
    Path::new(&format!("/proc/{pid}/fd/{fd}")).exists()
}

/// The confined daemon has closed the directory fd it inherited (old tapwire kept it: a
/// relative `openat` through it reached the host's file system past the sandbox). Without
/// confinement the fd is still there, which shows it really was inherited.
#[test]
fn confinement_closes_inherited_fds() {
    if !preflight(&[]) || !tapwire_only("--enable-sandbox closing inherited fds") {
        return;
    }
    let host = HostNs::new();
    for (confined, cfg) in [(false, DaemonCfg::default()), (true, sandboxed())] {
        let guest = host.guest();
        let fd = inherited_root_fd();
        let n = fd.as_raw_fd();
        let mut d = Daemon::spawn(&host, &guest, cfg);
        drop(fd);
        let got = d.read_ready(SETUP_TIMEOUT);
        assert!(got.starts_with(b"1"), "not ready: {}", d.describe());
        let target = std::fs::read_link(format!("/proc/{}/fd/{n}", d.pid()));
        assert_eq!(
            has_fd(d.pid(), n),
            !confined,
            "confined {confined}: fd {n} ({target:?}) in the daemon; {}",
            d.describe()
        );
        // The flags' fds survive: the ready fd worked; the daemon still answers stderr logs.
        assert!(d.wait_timeout(Duration::ZERO).is_none(), "{}", d.describe());
    }
}
