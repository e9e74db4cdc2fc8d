//! Namespace helper and TAP configuration, for real.
//!
//! Each test creates its own namespace holder (`unshare --user --map-root-user --net sleep 60`,
//! killed by a drop guard), so tests can run in parallel without sharing interfaces. Nothing
//! here routes to a real network: every address lives inside the private namespaces.
//!
//! Needs root. Without it the tests print "skipping: needs root" and fail, unless
//! `TAPWIRE_ALLOW_SKIP=1` is set.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitStatus};
use tapwire::cli::Target;
use tapwire::link::tap::Tap;
use tapwire::netns::{open_tap, spawn_run, NetnsError};
use tapwire_proto::config::{IfConfig, NetConfig};

const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const MAC_STR: &str = "02:11:22:33:44:55";

/// True if the test may run; false if it should be skipped (only with TAPWIRE_ALLOW_SKIP=1).
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root");
    if std::env::var_os("TAPWIRE_ALLOW_SKIP").is_some_and(|v| v == "1") {
        return false;
    }
    panic!("skipping: needs root (set TAPWIRE_ALLOW_SKIP=1 to allow skipping)");
}

fn cfg() -> IfConfig {
    IfConfig::from_net(&NetConfig {
        mtu: 65520,
        guest_mac: Some(MAC),
        ..Default::default()
    })
}

/// A process sitting in fresh user + network namespaces.
struct Holder {
    child: Child,
}

impl Holder {
    fn new() -> Holder {
        let child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let holder = Holder { child };
        // Ready once unshare has exec'd sleep (namespaces and maps are in place by then).
        let comm = format!("/proc/{}/comm", holder.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "namespace holder never became ready"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Run `ip ARGS` inside the holder's namespaces and return stdout.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-U", "-n", "ip"])
            .args(args)
            .output()
            .expect("run nsenter ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `<FLAGS>` of `ip -o link show` output.
fn link_flags(link: &str) -> Vec<String> {
    let start = link.find('<').map_or(0, |i| i + 1);
    let end = link[start..].find('>').map_or(start, |i| start + i);
    link[start..end].split(',').map(str::to_owned).collect()
}

/// Check what `netlink::configure` should have done, as seen by iproute2.
fn check_configured(h: &Holder, tap: &str) {
    let link = h.ip(&["-o", "link", "show", tap]);
    assert!(link.contains("mtu 65520 "), "{tap} mtu: {link}");
    assert!(
        link.contains(&format!("link/ether {MAC_STR} ")),
        "{tap} mac: {link}"
    );
    assert!(
        link_flags(&link).iter().any(|f| f == "UP"),
        "{tap} up: {link}"
    );

    let lo = h.ip(&["-o", "link", "show", "lo"]);
    assert!(link_flags(&lo).iter().any(|f| f == "UP"), "lo up: {lo}");

    let addr = h.ip(&["-o", "-4", "addr", "show", "dev", tap]);
    assert!(addr.contains("inet 10.0.2.100/24 "), "{tap} addr: {addr}");
    assert!(addr.contains("brd 10.0.2.255 "), "{tap} broadcast: {addr}");

    let route = h.ip(&["route", "show", "default"]);
    assert!(
        route.contains(&format!("default via 10.0.2.2 dev {tap}")),
        "default route: {route}"
    );
}

/// Wait up to `timeout` for a frame on `tap` matching `pred`.
fn wait_frame(tap: &Tap, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + 14];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
            continue;
        }
        match tap.read(&mut buf) {
            Ok((_, n)) if pred(&buf[..n]) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read tap: {e}"),
        }
    }
    false
}

/// An ARP request from the guest for 10.0.2.2.
fn is_arp_for_gateway(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == [10, 0, 2, 2]
}

#[test]
fn open_tap_by_pid_configures_the_link() {
    if !have_root() {
        return;
    }
    let h = Holder::new();
    let fd: OwnedFd =
        open_tap(&Target::Pid(h.pid()), None, "tap0", Some(&cfg())).expect("open_tap by pid");
    check_configured(&h, "tap0");

    // The fd really is the namespace's tap0: traffic the guest sends to the gateway shows up
    // on it (an ARP request; it never leaves the namespace).
    let tap = Tap::from_fd(fd);
    tap.set_nonblocking(true).expect("nonblocking");
    let mut ping = Command::new("nsenter")
        .args(["-t", &h.pid().to_string(), "-U", "-n"])
        .args(["ping", "-c", "1", "-W", "2", "10.0.2.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ping");
    let seen = wait_frame(&tap, Duration::from_secs(15), is_arp_for_gateway);
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(seen, "no ARP request for 10.0.2.2 on the tap fd");

    // A second, non-multiqueue attach to the same tap fails inside the helper; its message
    // comes back intact.
    let err = open_tap(&Target::Pid(h.pid()), None, "tap0", None).unwrap_err();
    assert!(matches!(err, NetnsError::Child { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("TUNSETIFF tap0 (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) on /dev/net/tun: "),
        "{msg}"
    );

    // Closing the fd removes the (non-persistent) device. Children forked meanwhile by other
    // tests hold a copy of the fd until they exec or exit, so allow a little time.
    drop(tap);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let links = h.ip(&["-o", "link", "show"]);
        if !links.contains("tap0") {
            break;
        }
        assert!(Instant::now() < deadline, "tap0 still present: {links}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn open_tap_by_path_with_userns_path() {
    if !have_root() {
        return;
    }
    let h = Holder::new();
    let net = PathBuf::from(format!("/proc/{}/ns/net", h.pid()));
    let user = PathBuf::from(format!("/proc/{}/ns/user", h.pid()));
    let _fd =
        open_tap(&Target::Path(net), Some(&user), "tap1", Some(&cfg())).expect("open_tap by path");
    check_configured(&h, "tap1");
}

#[test]
fn open_tap_by_path_without_configuration() {
    if !have_root() {
        return;
    }
    let h = Holder::new();
    // No userns: host root may enter the netns directly.
    let net = PathBuf::from(format!("/proc/{}/ns/net", h.pid()));
    let _fd = open_tap(&Target::Path(net), None, "tap2", None).expect("open_tap unconfigured");
    let link = h.ip(&["-o", "link", "show", "tap2"]);
    assert!(!link_flags(&link).iter().any(|f| f == "UP"), "{link}");
    assert!(link.contains("mtu 1500 "), "{link}");
    let addr = h.ip(&["-o", "-4", "addr", "show", "dev", "tap2"]);
    assert!(addr.trim().is_empty(), "{addr}");
}

#[test]
fn open_tap_errors_name_the_namespace_file() {
    if !have_root() {
        return;
    }
    let err = open_tap(&Target::Pid(999_999_999), None, "tap0", None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/proc/999999999/ns/user"), "{msg}");

    let err = open_tap(
        &Target::Path(PathBuf::from("/nonexistent/tapwire-netns")),
        None,
        "tap0",
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("open network namespace /nonexistent/tapwire-netns: "),
        "{err}"
    );

    // A file that is not a network namespace: setns fails in the helper and says which file.
    let h = Holder::new();
    let user = format!("/proc/{}/ns/user", h.pid());
    let err = open_tap(&Target::Path(PathBuf::from(&user)), None, "tap0", None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("setns into network namespace {user}: ")),
        "{msg}"
    );
}

fn wait_exit(pid: nix::unistd::Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("unexpected wait status {other:?}"),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("tapwire-netns-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempFile(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn spawn_run_sets_up_namespaces_and_execs() {
    if !have_root() {
        return;
    }
    let out = TempFile::new("run");
    let script = format!(
        "{{ cat /etc/resolv.conf; ip -o addr show tap0; ip -o link show lo; ip route; id -u; }} \
         > {} 2>&1; exit 7",
        out.path().display()
    );
    let cmd = os(&["sh", "-c", &script]);
    let host_before = std::fs::read("/etc/resolv.conf").ok();
    let dns = NetConfig::default().dns();
    let mut child = spawn_run(&cmd, "tap0", &cfg(), dns).expect("spawn_run");
    // The command has not run yet.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!out.path().exists(), "command ran before start()");
    child.start().expect("start");
    assert!(matches!(
        child.start(),
        Err(NetnsError::AlreadyStarted { .. })
    ));
    assert_eq!(wait_exit(child.pid), 7);

    let text = std::fs::read_to_string(out.path()).expect("read command output");
    assert!(text.contains("nameserver 10.0.2.3\n"), "{text}");
    assert!(text.contains("inet 10.0.2.100/24 "), "{text}");
    assert!(text.contains("default via 10.0.2.2 dev tap0"), "{text}");
    let lo = text.lines().find(|l| l.contains(": lo:")).unwrap_or("");
    assert!(link_flags(lo).iter().any(|f| f == "UP"), "{text}");
    assert_eq!(text.lines().last(), Some("0"), "uid inside: {text}");
    // The host's resolv.conf is untouched.
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_before);
}

#[test]
fn spawn_run_exec_failure_exits_127() {
    if !have_root() {
        return;
    }
    let cmd = os(&["/nonexistent/tapwire-no-such-command"]);
    let mut child = spawn_run(&cmd, "tap0", &cfg(), NetConfig::default().dns()).expect("spawn_run");
    child.start().expect("start");
    assert_eq!(wait_exit(child.pid), 127);
}

#[test]
fn spawn_run_dropped_without_start_exits_1() {
    if !have_root() {
        return;
    }
    let out = TempFile::new("drop");
    let script = format!("touch {}", out.path().display());
    let cmd = os(&["sh", "-c", &script]);
    let child = spawn_run(&cmd, "tap0", &cfg(), NetConfig::default().dns()).expect("spawn_run");
    let pid = child.pid;
    drop(child);
    assert_eq!(wait_exit(pid), 1);
    assert!(!out.path().exists(), "command ran without start()");
}

#[test]
fn spawn_run_setup_error_comes_back() {
    if !have_root() {
        return;
    }
    // MTU 10 is below the Ethernet minimum: the kernel refuses it inside the child.
    let bad = IfConfig { mtu: 10, ..cfg() };
    let err = spawn_run(&os(&["true"]), "tap0", &bad, NetConfig::default().dns()).unwrap_err();
    assert!(matches!(err, NetnsError::Child { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("RTM_NEWLINK tap0 up mtu 10 "), "{msg}");
}
