//! A whole workspace under `tapwire run`: Podman inside it (README "Workspaces and CI jobs").
//!
//! `tapwire run --map-auto` maps more ids than root (tests/common/podman.rs builds the private
//! world: its own /run, storage, containers.conf and a busybox root filesystem), so rootful
//! Podman runs *inside* the run namespace, with runc creating containers in it. Checked:
//!
//! - the id maps: `0 0 65536` as root, `0 UID 1` + `1 SUBUID 65536` for a user with
//!   /etc/subuid and /etc/subgid ranges (through newuidmap/newgidmap), a clear error naming
//!   /etc/subuid for a user without one, and the single root map without the flag;
//! - a container with `--network host` (the workspace's network, served by tapwire) downloads
//!   8 MiB from a server on the host's 127.0.0.1 through the gateway 10.0.2.2 and uploads
//!   8 MiB back, sha256-checked on both ends;
//! - a container's server, published by `tapwire run -p`, serves 8 MiB to a client on the
//!   host's loopback, sha256-checked.
//!
//! Needs root, podman, runc, conmon, busybox-static, uidmap. See tests/common for the skip
//! policy.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::podman::*;
use common::*;

const MIB: usize = 1 << 20;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SIZE: usize = 8 * MIB;

fn lines(s: &str) -> Vec<Vec<String>> {
    s.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .filter(|l: &Vec<String>| !l.is_empty())
        .collect()
}

#[test]
fn map_auto_maps_the_hosts_ids_for_root_and_subordinate_ids_for_users() {
    let Some(w) = PodWorld::new(false) else {
        return;
    };
    let exe = w.exe.display().to_string();
    let map = |flags: &[&str]| {
        let out = run(
            w.host.cmd(&exe).arg("run").args(flags).args([
                "--",
                "sh",
                "-c",
                "cat /proc/self/uid_map /proc/self/gid_map",
            ]),
            RUN_TIMEOUT,
        )
        .ok();
        lines(&out.stdout)
    };
    assert_eq!(map(&[]), [["0", "0", "1"], ["0", "0", "1"]]);
    assert_eq!(
        map(&["--map-auto"]),
        [["0", "0", "65536"], ["0", "0", "65536"]]
    );

    // A user with subordinate ranges (the rootless world's test user).
    let Some(u) = PodWorld::new(true) else {
        return;
    };
    let uid = u.uid.unwrap();
    let out = run(
        u.as_user(&u.exe.display().to_string()).args([
            "run",
            "--map-auto",
            "--",
            "cat",
            "/proc/self/uid_map",
        ]),
        RUN_TIMEOUT,
    )
    .ok();
    assert_eq!(
        lines(&out.stdout),
        [
            vec!["0".to_owned(), uid.to_string(), "1".to_owned()],
            vec!["1".to_owned(), "300000".to_owned(), "65536".to_owned()]
        ],
        "{out}"
    );
    // nobody has no range: a clear error, nothing runs.
    let out = run(
        u.host
            .cmd("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&u.exe)
            .args(["run", "--map-auto", "--", "echo", "ran"]),
        RUN_TIMEOUT,
    );
    assert!(!out.success(), "{out}");
    assert!(!out.stdout.contains("ran"), "{out}");
    assert!(
        out.stderr.contains("--map-auto") && out.stderr.contains("/etc/subuid"),
        "the error names the flag and the file: {out}"
    );
}

#[test]
fn podman_inside_tapwire_run_reaches_host_loopback_and_publishes() {
    let Some(w) = PodWorld::new(false) else {
        return;
    };
    let d = w.host.dir.path().to_owned();
    let rootfs = w.rootfs.display().to_string();
    let exe = w.exe.display().to_string();

    // 1. --network host: the container uses the workspace's network (tapwire's).
    let data = Arc::new(random_bytes(SIZE, 41));
    let want_down = sha256_hex(&data);
    let (down_port, up_port) = (23010, 23011);
    let down = serve_source(w.host.listen(down_port), data.clone());
    let up = serve_sink(w.host.listen(up_port));
    let script = format!(
        "set -e
podman run --rm --network host --rootfs {rootfs} sh -c '
  nc 10.0.2.2 {down_port} </dev/null | sha256sum
  head -c {SIZE} /dev/urandom >/tmp/up.bin
  sha256sum </tmp/up.bin
  nc 10.0.2.2 {up_port} </tmp/up.bin
  rm /tmp/up.bin'"
    );
    let out = run(
        w.as_user(&exe)
            .args(["run", "--map-auto", "--", "sh", "-c", &script]),
        PODMAN_TIMEOUT,
    );
    assert!(out.success(), "podman inside tapwire run: {out}");
    down.join(TRANSFER_TIMEOUT);
    let (n_up, sha_up, _) = up.join(TRANSFER_TIMEOUT);
    let got = lines(&out.stdout);
    assert_eq!(
        got.first().map(|l| &l[0]),
        Some(&want_down),
        "download: {out}"
    );
    assert_eq!(n_up as usize, SIZE, "upload size: {out}");
    assert_eq!(got.get(1).map(|l| &l[0]), Some(&sha_up), "upload: {out}");

    // 2. A container's server, published on the host by `tapwire run -p`.
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let page = random_bytes(SIZE, 42);
    std::fs::write(www.join("blob"), &page).unwrap();
    let (ready, done) = (d.join("ready"), d.join("done"));
    let script = format!(
        "set -e
podman run -d --name web --network host -v {www}:/www --rootfs {rootfs} httpd -f -p 8080 -h /www
touch {ready}
i=0; until [ -e {done} ] || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
podman rm -f -t 0 web >/dev/null",
        www = www.display(),
        ready = ready.display(),
        done = done.display()
    );
    let mut inside = Proc::spawn(w.as_user(&exe).args([
        "run",
        "--map-auto",
        "-p",
        "23080:8080",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    wait_until(PODMAN_TIMEOUT, "the container's web server", || {
        ready.exists()
            && w.host
                .in_ns(|| TcpStream::connect((Ipv4Addr::LOCALHOST, 23080)))
                .and_then(|mut s| {
                    s.write_all(b"HEAD /blob HTTP/1.0\r\n\r\n")?;
                    let mut b = [0u8; 12];
                    s.read_exact(&mut b)?;
                    Ok(b.starts_with(b"HTTP/1.") && b.ends_with(b" 200"))
                })
                .unwrap_or(false)
    });
    let body = w.host.in_ns(|| -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, 23080))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"GET /blob HTTP/1.0\r\n\r\n")?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        Ok(all)
    });
    std::fs::write(&done, b"").unwrap();
    let mut status = None;
    wait_until(PODMAN_TIMEOUT, "tapwire run to exit", || {
        status = inside.child.try_wait().unwrap();
        status.is_some()
    });
    let body = body.expect("GET /blob through the published port");
    let split = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP header");
    assert!(
        body.starts_with(b"HTTP/1.") && body[8..].starts_with(b" 200"),
        "{:?}",
        String::from_utf8_lossy(&body[..split])
    );
    assert_eq!(
        sha256_hex(&body[split + 4..]),
        sha256_hex(&page),
        "the published container's blob"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "tapwire run with the web container: {status:?}"
    );
}
