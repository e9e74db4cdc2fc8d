//! RootlessKit (`--net=slirp4netns --port-driver=slirp4netns`) with the binary under test as
//! its slirp4netns: the real client of the CLI, the ready fd and the JSON API.
//!
//! RootlessKit refuses to run as root, so each test prepares an unprivileged user inside its
//! private host namespace (see tests/common) without touching the machine:
//!
//! - `/etc` is covered by an overlay (or, without overlayfs, a bind-mounted copy) in the host
//!   namespace's private mount namespace; the test user and its subordinate id ranges are added
//!   to that view of passwd, group, subuid and subgid only;
//! - a 0666 `/dev/net/tun` node is bind-mounted over the real one in the same namespace (the
//!   usual distribution default; this machine's may be 0600);
//! - the binary under test is copied to the test's temp dir, where the user can run it.
//!
//! Then, as that user, in the private host netns:
//! `rootlesskit --net=slirp4netns --slirp4netns-binary=BIN --port-driver=slirp4netns
//!  -p 127.0.0.1:HOSTPORT:GUESTPORT/tcp [flags] -- python3 server.py`, and the test moves 20 MB
//! each way through the published port (sha256 on both ends). The server inside also reports
//! the client address it saw and whether the host's loopback is reachable through 10.0.2.2
//! (it must not be with `--disable-host-loopback`). While it runs, the test reads the command
//! line RootlessKit gave the forwarder (`--api-socket`, and `--enable-sandbox
//! --enable-seccomp` when RootlessKit detected them in `--help`).
//!
//! Needs root, rootlesskit, uidmap (newuidmap/newgidmap), setpriv, python3 at /usr/bin;
//! see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MB: usize = 1 << 20;
/// The test user (exists only in the test's mount namespace).
const UID: u32 = 42420;
const USER: &str = "twrootless";
/// Deadline for a whole RootlessKit run.
const RK_TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_TCP: u16 = 8000;
const GUEST_UDP: u16 = 8001;

/// The server run by RootlessKit inside its namespaces. argv: dir (ready file, result files),
/// host-loopback probe port. It probes 10.0.2.2:<probe port>, serves one TCP exchange on
/// 0.0.0.0:8000 (an 8-byte little-endian length and that many bytes, answered with
/// "<sha256> <bytes> <client ip>\n" then the contents of <dir>/down.bin; it exits once the
/// client closed) and echoes UDP on 0.0.0.0:8001 until then.
const SERVER: &str = include_str!("py/rootlesskit_server.py");

fn python3() -> Option<&'static str> {
    Path::new("/usr/bin/python3")
        .exists()
        .then_some("/usr/bin/python3")
}

/// Preflight plus what RootlessKit needs. Returns false to return early (skip allowed).
fn preflight_rk() -> bool {
    if !preflight(&[
        "rootlesskit",
        "newuidmap",
        "newgidmap",
        "setpriv",
        "mknod",
        "env",
    ]) {
        return false;
    }
    if python3().is_none() {
        return skip("/usr/bin/python3 is needed (the test user cannot use a per-user python)");
    }
    true
}

/// The unprivileged user's world inside a private host namespace.
struct Rootless {
    host: HostNs,
    /// Owned by the test user: ready file, server script, download file, state dir.
    work: PathBuf,
    /// The forwarder binary, copied where the test user can execute it.
    exe: PathBuf,
}

impl Rootless {
    /// Prepare the user, subordinate ids, /dev/net/tun and a copy of `forwarder`.
    fn new(forwarder: &Path) -> Option<Rootless> {
        let host = HostNs::new();
        let d = host.dir.path().to_owned();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = format!(
            r#"set -e
D={d}
mkdir -p $D/etc-up $D/etc-work
if ! mount -t overlay overlay -o lowerdir=/etc,upperdir=$D/etc-up,workdir=$D/etc-work /etc 2>/dev/null; then
    cp -a /etc $D/etc-copy
    mount --bind $D/etc-copy /etc
fi
# The overlay hides the harness's bind mount of resolv.conf: restore it.
mount --bind $D/resolv.conf /etc/resolv.conf
echo '{USER}:x:{UID}:{UID}:tapwire test:{d}/work:/bin/sh' >>/etc/passwd
echo '{USER}:x:{UID}:' >>/etc/group
echo '{USER}:300000:65536' >>/etc/subuid
echo '{USER}:300000:65536' >>/etc/subgid
chmod 0644 /etc/subuid /etc/subgid
mknod -m 0666 $D/tun c 10 200
mount --bind $D/tun /dev/net/tun
mkdir -p $D/work
chown {UID}:{UID} $D/work
"#,
            d = d.display()
        );
        host.sh(&script).ok();
        // The machine's own /etc is untouched.
        let real = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        assert!(
            !real.contains(USER),
            "the test user leaked into the machine's /etc/passwd"
        );
        let seen = host.sh("getent passwd twrootless; cat /etc/subuid").ok();
        assert!(
            seen.stdout.contains(&format!("{USER}:x:{UID}"))
                && seen.stdout.contains(&format!("{USER}:300000:65536")),
            "test user not visible in the host namespace: {seen}"
        );
        let exe = d.join("forwarder");
        std::fs::copy(forwarder, &exe).expect("copy the forwarder binary");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = d.join("work");
        std::fs::write(work.join("server.py"), SERVER).unwrap();
        let rk = Rootless { host, work, exe };
        // Can this user make a user namespace with the subordinate ranges at all?
        let probe = run(
            rk.as_user()
                .args(["unshare", "--user", "--map-root-user", "--net", "true"]),
            SETUP_TIMEOUT,
        );
        if !probe.success() {
            skip(&format!(
                "unprivileged user namespaces are not allowed here: {probe}"
            ));
            return None;
        }
        Some(rk)
    }

    /// A command run as the test user in the host namespace.
    fn as_user(&self) -> std::process::Command {
        let mut c = self.host.cmd("setpriv");
        c.args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "--",
            "env",
        ])
        .arg(format!("HOME={}", self.work.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", self.work.display()))
        .arg(format!("USER={USER}"))
        .arg(format!("LOGNAME={USER}"));
        c
    }
}

/// What one RootlessKit run produced.
struct RkRun {
    out: Out,
    /// The forwarder's argv as RootlessKit started it.
    forwarder_argv: Vec<String>,
    /// The forwarder's real uid.
    forwarder_uid: Option<u32>,
}

/// argv of the running process whose argv[0] is `exe`, with its uid.
fn find_process(exe: &Path) -> Option<(Vec<String>, Option<u32>)> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.first().map(Path::new) == Some(exe) {
            let uid = std::fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
                })
                .and_then(|u| u.parse().ok());
            return Some((argv, uid));
        }
    }
    None
}

/// Run RootlessKit with `flags`, publish HOSTPORT -> 8000/tcp and HOSTPORT+1 -> 8001/udp,
/// move 20 MB each way through the TCP port and a datagram through the UDP port. Panics with
/// RootlessKit's whole output if anything fails.
fn rootlesskit_transfer(rk: &Rootless, host_port: u16, flags: &[&str], check_udp: bool) -> RkRun {
    let work = &rk.work;
    let down = random_bytes(20 * MB, host_port as u64);
    std::fs::write(work.join("down.bin"), &down).unwrap();
    std::fs::set_permissions(
        work.join("down.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let _ = std::fs::remove_file(work.join("ready"));
    // Host loopback probe target for the server's 10.0.2.2 check.
    let probe_port = host_port + 2;
    let probe = rk.host.listen(probe_port);

    let mut cmd = rk.as_user();
    cmd.arg("rootlesskit")
        .arg("--debug")
        .arg("--net=slirp4netns")
        .arg(format!("--slirp4netns-binary={}", rk.exe.display()))
        .arg("--port-driver=slirp4netns")
        .arg(format!("--state-dir={}", work.join("state").display()))
        .args([
            "-p",
            &format!("127.0.0.1:{host_port}:{GUEST_TCP}/tcp"),
            "-p",
            &format!("127.0.0.1:{}:{GUEST_UDP}/udp", host_port + 1),
        ])
        .args(flags)
        .arg("--")
        .arg(python3().unwrap())
        .arg(work.join("server.py"))
        .arg(work)
        .arg(probe_port.to_string());
    let up = random_bytes(20 * MB, host_port as u64 + 1000);
    let want_up = sha256_hex(&up);
    let host = &rk.host;
    let exe = rk.exe.clone();
    let ready = work.join("ready");
    // The client side runs on a thread while RootlessKit runs on this one.
    let client = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let start = Instant::now();
            while !ready.exists() {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err("the server inside RootlessKit never became ready".to_string());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let argv = find_process(&exe);
            // UDP through the published port.
            let u = host
                .in_ns(|| {
                    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
                    u.connect((Ipv4Addr::LOCALHOST, host_port + 1))?;
                    Ok::<_, std::io::Error>(u)
                })
                .map_err(|e| e.to_string())?;
            u.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut udp = None;
            for _ in 0..10 {
                u.send(b"rootless").unwrap();
                if let Ok(k) = u.recv(&mut buf) {
                    udp = Some(buf[..k].to_vec());
                    break;
                }
            }
            // 20 MB up, then the reply line and 20 MB down.
            let mut c = host
                .in_ns(|| {
                    TcpStream::connect_timeout(
                        &(Ipv4Addr::LOCALHOST, host_port).into(),
                        SETUP_TIMEOUT,
                    )
                })
                .map_err(|e| format!("connect to the published port: {e}"))?;
            set_timeouts(&c);
            let t = Instant::now();
            c.write_all(&(up.len() as u64).to_le_bytes())
                .and_then(|()| c.write_all(&up))
                .map_err(|e| format!("upload: {e}"))?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while c.read(&mut b).map_err(|e| format!("reply line: {e}"))? == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            let (n, h) = read_hash(&mut c).map_err(|e| format!("download: {e}"))?;
            eprintln!(
                "rootlesskit {flags:?}: 20 MB each way in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            Ok((String::from_utf8_lossy(&line).into_owned(), n, h, udp, argv))
        });
        let out = run(&mut cmd, RK_TIMEOUT);
        (out, client.join().unwrap())
    });
    let (out, client) = client;
    // A probe connection, if any, waits in the listener's queue.
    probe.set_nonblocking(true).unwrap();
    let probed = probe.accept().is_ok();
    let (line, n, h, udp, argv) = match client {
        Ok(v) => v,
        Err(e) => panic!("{e}\nrootlesskit: {out}"),
    };
    assert!(out.success(), "rootlesskit exited badly: {out}");
    let (forwarder_argv, forwarder_uid) = argv.unwrap_or_else(|| {
        panic!(
            "no process {} found while RootlessKit ran: {out}",
            rk.exe.display()
        )
    });
    // The server saw our 20 MB intact and a loopback client as the gateway.
    assert_eq!(
        line,
        format!("{want_up} {} 10.0.2.2", up.len()),
        "the server's view of the upload: {out}"
    );
    assert_eq!(
        (n, h),
        (down.len() as u64, sha256_hex(&down)),
        "download through the published port: {out}"
    );
    if check_udp {
        assert_eq!(
            udp.as_deref(),
            Some(&b"echo:rootless"[..]),
            "UDP through the published port: {out}"
        );
    } else {
        eprintln!("UDP through the published port (not checked): {udp:?}");
    }
    // The host-loopback probe agrees with --disable-host-loopback.
    let disabled = flags.contains(&"--disable-host-loopback");
    if disabled {
        assert!(
            out.stdout.contains("loopback: ENETUNREACH"),
            "10.0.2.2 must not reach host loopback with --disable-host-loopback: {out}"
        );
        assert!(!probed, "the host loopback probe listener was reached");
    } else {
        assert!(
            out.stdout.contains("loopback: reachable"),
            "10.0.2.2 reaches host loopback by default: {out}"
        );
        assert!(probed);
    }
    assert!(out.stdout.contains("served 10.0.2.2"), "{out}");
    RkRun {
        out,
        forwarder_argv,
        forwarder_uid,
    }
}

fn check_common_argv(r: &RkRun, rk: &Rootless) {
    let argv = &r.forwarder_argv;
    let has = |f: &str| argv.iter().any(|a| a == f);
    assert!(
        has("--api-socket"),
        "RootlessKit passes --api-socket: {argv:?}"
    );
    assert!(has("-r") && has("--mtu"), "{argv:?}");
    assert_eq!(argv.last().map(String::as_str), Some("tap0"), "{argv:?}");
    assert_eq!(
        r.forwarder_uid,
        Some(UID),
        "the forwarder runs as the unprivileged user"
    );
    let _ = rk;
}

fn forwarder_under_test() -> PathBuf {
    bin()
}

#[test]
fn rootlesskit_port_driver_with_host_loopback() {
    if !preflight_rk() {
        return;
    }
    let Some(rk) = Rootless::new(&forwarder_under_test()) else {
        return;
    };
    let r = rootlesskit_transfer(&rk, 22000, &[], true);
    check_common_argv(&r, &rk);
    assert!(
        !r.forwarder_argv
            .iter()
            .any(|a| a == "--disable-host-loopback"),
        "{:?}",
        r.forwarder_argv
    );
    eprintln!("forwarder argv: {:?}", r.forwarder_argv);
    eprintln!("rootlesskit stderr:\n{}", r.out.stderr);
}

#[test]
fn rootlesskit_port_driver_disable_host_loopback() {
    if !preflight_rk() {
        return;
    }
    let Some(rk) = Rootless::new(&forwarder_under_test()) else {
        return;
    };
    let r = rootlesskit_transfer(&rk, 22010, &["--disable-host-loopback"], true);
    check_common_argv(&r, &rk);
    assert!(
        r.forwarder_argv
            .iter()
            .any(|a| a == "--disable-host-loopback"),
        "{:?}",
        r.forwarder_argv
    );
}

/// RootlessKit adds --enable-sandbox/--enable-seccomp when it finds them in `--help`
/// ("auto"), or demands them ("true"); the forwarder must accept them and keep working.
#[test]
fn rootlesskit_sandbox_and_seccomp_detected() {
    if !preflight_rk() {
        return;
    }
    let Some(rk) = Rootless::new(&forwarder_under_test()) else {
        return;
    };
    let help = run(
        std::process::Command::new(&rk.exe).arg("--help"),
        SETUP_TIMEOUT,
    );
    let text = format!("{}{}", help.stdout, help.stderr);
    for f in [
        "--netns-type",
        "--api-socket",
        "--disable-host-loopback",
        "--cidr",
        "--enable-sandbox",
        "--enable-seccomp",
        "--enable-ipv6",
    ] {
        assert!(
            text.contains(f),
            "--help lacks {f} (RootlessKit greps for it): {help}"
        );
    }
    for (port, mode) in [(22020, "auto"), (22030, "true")] {
        let sandbox = format!("--slirp4netns-sandbox={mode}");
        let seccomp = format!("--slirp4netns-seccomp={mode}");
        let r = rootlesskit_transfer(
            &rk,
            port,
            &["--disable-host-loopback", &sandbox, &seccomp],
            true,
        );
        check_common_argv(&r, &rk);
        for f in ["--enable-sandbox", "--enable-seccomp"] {
            assert!(
                r.forwarder_argv.iter().any(|a| a == f),
                "RootlessKit ({mode}) did not pass {f}: {:?}\n{}",
                r.forwarder_argv,
                r.out
            );
        }
    }
}

/// The same run with the real slirp4netns: validates this harness (if this fails, the test
/// is wrong, not tapwire).
#[test]
fn rootlesskit_with_slirp4netns_control() {
    if !preflight_rk() {
        return;
    }
    let Some(slirp) = which("slirp4netns") else {
        skip("slirp4netns not installed (the control run)");
        return;
    };
    let Some(rk) = Rootless::new(&slirp) else {
        return;
    };
    let r = rootlesskit_transfer(&rk, 22040, &[], true);
    check_common_argv(&r, &rk);
    // slirp4netns with --disable-host-loopback drops the guest's UDP replies to a loopback
    // client of a forward (they are addressed to 10.0.2.2), so UDP is not checked there.
    let r = rootlesskit_transfer(&rk, 22050, &["--disable-host-loopback"], false);
    check_common_argv(&r, &rk);
}
