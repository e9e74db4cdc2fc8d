//! Docker rootless (Debian's docker.io: `dockerd-rootless.sh`, which runs RootlessKit with
//! `--net=slirp4netns` and the builtin port driver) with the binary under test as the
//! `slirp4netns` it finds in PATH, configured by the README's `contrib/docker/dockerd-rootless.env`.
//!
//! In a private host namespace with a rootless test user (tests/common/podman.rs, the same world
//! as the Podman suite), the test starts `dockerd-rootless.sh --storage-driver vfs`, imports the
//! busybox root filesystem as an image (`docker import`), and checks that a container
//! - moves 20 MiB each way to a server on host loopback through 10.0.2.2 (sha256-checked), and
//! - serves a published port (`-p 127.0.0.1:HP:8000`) to a host client, 20 MiB each way,
//!
//! while the forwarder RootlessKit started is the copy under test. If dockerd does not come up,
//! the test fails with its log: nothing here is skipped once the tools are installed.
//! Needs root, docker.io (dockerd, containerd, docker), rootlesskit, uidmap, iptables.
//!
//! Regression: the container sits behind Docker's bridge (docker0, MTU 1500) inside
//! RootlessKit's namespace, whose tap0 has MTU 65520. tapwire used to send it TCP frames
//! bigger than the MSS it announced (1460) as plain frames, which the kernel could not forward
//! (IpFragFails, ICMP "fragmentation needed"): host-to-container transfers stalled at once.
//! Now such frames are TSO super-segments at the guest's MSS (tapwire-proto vnet.rs).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::podman::*;
use common::*;

const MIB: usize = 1 << 20;
const BULK: usize = 20 * MIB;
/// The README's environment for dockerd-rootless.sh.
const DOCKER_ENV: &str = include_str!("../../../contrib/docker/dockerd-rootless.env");
/// The directory of the `slirp4netns` link in [`DOCKER_ENV`]'s PATH.
const ENV_BIN_DIR: &str = "/opt/tapwire/bin";
const SCRIPT: &str = "/usr/share/docker.io/contrib/dockerd-rootless.sh";
const DOCKER: &str = "/usr/bin/docker";

/// As in tests/podman.rs: reads BULK bytes, answers "<sha256> <client>\n", sends the download.
const PORT_SERVER: &str = r#"#!/bin/sh
peer=$(netstat -tn | awk '$4 ~ /:8000$/ && $6 == "ESTABLISHED" {print $5}' | head -n 1)
sha=$(head -c "$1" | sha256sum | cut -d' ' -f1)
echo "$sha $peer"
cat /tmp/down.bin
"#;

/// [`DOCKER_ENV`] as (name, value) pairs, with `bin` for the README's directory.
fn docker_env(bin: &Path) -> Vec<(String, String)> {
    let env: Vec<(String, String)> = DOCKER_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value lines");
            (
                k.to_owned(),
                v.replace(ENV_BIN_DIR, &bin.display().to_string()),
            )
        })
        .collect();
    assert!(
        env.iter()
            .any(|(k, v)| k == "PATH" && v.starts_with(&bin.display().to_string())),
        "contrib/docker/dockerd-rootless.env must put {ENV_BIN_DIR} first in PATH"
    );
    env
}

struct Dockerd {
    w: PodWorld,
    env: Vec<(String, String)>,
    _daemon: Proc,
    share: PathBuf,
}

impl Dockerd {
    fn start() -> Option<Dockerd> {
        let w = PodWorld::with_tools(
            true,
            &[
                "dockerd",
                "containerd",
                "rootlesskit",
                "iptables",
                "tar",
                DOCKER,
                SCRIPT,
            ],
        )?;
        let uid = w.uid.unwrap();
        let d = w.host.dir.path().to_owned();
        // The README's layout: a directory with `slirp4netns` -> the binary under test.
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&w.exe, bin.join("slirp4netns")).unwrap();
        let share = d.join("share");
        std::fs::create_dir_all(&share).unwrap();
        std::os::unix::fs::chown(&share, Some(uid), Some(uid)).unwrap();
        let env = docker_env(&bin);
        let home = d.join("home");
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let daemon = Proc::spawn(
            w.as_user_env("sh", &env)
                .arg(SCRIPT)
                .arg(format!("--data-root={}", home.join("docker").display()))
                .arg("--storage-driver=vfs")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let sock = PathBuf::from(format!(
            "/proc/{}/root/run/user/{uid}/docker.sock",
            w.host.pid()
        ));
        let start = Instant::now();
        let mut daemon = daemon;
        while !sock.exists() {
            let log = || std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default();
            if let Ok(Some(st)) = daemon.child.try_wait() {
                panic!(
                    "dockerd-rootless.sh exited ({st}) before its socket appeared:\n{}",
                    log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "dockerd's socket did not appear within 90 s:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut env = env;
        env.push((
            "DOCKER_HOST".into(),
            format!("unix:///run/user/{uid}/docker.sock"),
        ));
        Some(Dockerd {
            w,
            env,
            _daemon: daemon,
            share,
        })
    }

    fn docker(&self, args: &[&str]) -> Out {
        run(
            self.w.as_user_env(DOCKER, &self.env).args(args),
            PODMAN_TIMEOUT,
        )
    }

    fn sh(&self, script: &str) -> Out {
        run(
            self.w.as_user_env("sh", &self.env).args(["-c", script]),
            PODMAN_TIMEOUT,
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.w.host.dir.join("dockerd.log")).unwrap_or_default()
    }
}

#[test]
fn docker_rootless_host_loopback_and_published_port() {
    let Some(dk) = Dockerd::start() else { return };
    let w = &dk.w;
    let down = random_bytes(BULK, 21);
    let down_sha = sha256_hex(&down);
    w.put("tmp/down.bin", &down, 0o644);
    w.put("srv.sh", PORT_SERVER.as_bytes(), 0o755);
    let imported = dk.sh(&format!(
        "tar -C {} -c . | {DOCKER} import - twbusybox:test",
        w.rootfs.display()
    ));
    assert!(
        imported.success(),
        "docker import: {imported}\n{}",
        dk.log()
    );

    // The forwarder RootlessKit runs is the copy under test.
    let fwd = w.forwarders();
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let ours = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| exe_of(pid).as_deref() == Some(w.exe.as_path()))
        .count();
    assert_eq!(
        ours,
        1,
        "one forwarder from {} (argv-matched: {fwd:?})",
        w.exe.display()
    );

    // 20 MiB each way with a server on host loopback, through 10.0.2.2.
    let (p_up, p_down) = (7501, 7502);
    let l_up = w.host.listen(p_up);
    let up = task("sink", move || {
        let (mut s, _) = accept_timeout(&l_up, TRANSFER_TIMEOUT).expect("accept");
        let mut buf = vec![0u8; BULK];
        s.read_exact(&mut buf).expect("read the upload");
        sha256_hex(&buf)
    });
    let src = serve_source(w.host.listen(p_down), std::sync::Arc::new(down.clone()));
    let start = Instant::now();
    let out = dk.docker(&[
        "run",
        "--rm",
        "twbusybox:test",
        "sh",
        "-c",
        &format!(
            "head -c {BULK} /dev/urandom >/tmp/up && sha256sum /tmp/up | sed 's/^/up=/' && \
             nc 10.0.2.2 {p_up} </tmp/up >/dev/null; \
             nc 10.0.2.2 {p_down} </dev/null | sha256sum | sed 's/^/down=/'"
        ),
    ]);
    let took = start.elapsed();
    assert!(out.success(), "docker run: {out}\n{}", dk.log());
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert_eq!(up.join(TRANSFER_TIMEOUT), field("up="), "upload sha256");
    src.join(TRANSFER_TIMEOUT);
    assert_eq!(field("down="), down_sha, "download sha256");
    eprintln!("docker rootless host loopback: 2 x 20 MiB in {took:?} (container start included)");

    // A published port, 20 MiB each way.
    let hp = 7510;
    let share = dk.share.display().to_string();
    let run = dk.docker(&[
        "run",
        "-d",
        "-p",
        &format!("127.0.0.1:{hp}:8000"),
        "-v",
        &format!("{share}:/share"),
        "twbusybox:test",
        "sh",
        "-c",
        &format!(
            "nc -ll -p 8000 -e /srv.sh {BULK} & \
             while ! netstat -tln | grep -q ':8000 '; do usleep 20000; done; \
             touch /share/ready; wait"
        ),
    ]);
    assert!(run.success(), "docker run -d: {run}\n{}", dk.log());
    wait_until(Duration::from_secs(60), "the container's server", || {
        dk.share.join("ready").exists()
    });
    let start = Instant::now();
    let s = w
        .host
        .in_ns(|| TcpStream::connect((Ipv4Addr::LOCALHOST, hp)))
        .expect("connect to the published port");
    set_timeouts(&s);
    let upload = random_bytes(BULK, 22);
    let want_up = sha256_hex(&upload);
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&upload))
    };
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("server's answer");
    writer.join().unwrap().expect("upload");
    assert_eq!(
        line.split_whitespace().next(),
        Some(want_up.as_str()),
        "upload sha256"
    );
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("download");
    assert_eq!(rest.len(), BULK, "download size");
    assert_eq!(sha256_hex(&rest), down_sha, "download sha256");
    let _ = s.shutdown(Shutdown::Both);
    eprintln!(
        "docker rootless published port: 2 x 20 MiB in {:?}; client seen as {}",
        start.elapsed(),
        line.split_whitespace().nth(1).unwrap_or("?")
    );
    let _ = dk.docker(&["rm", "-f", run.stdout.trim()]);
}
