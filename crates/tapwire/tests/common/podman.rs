//! Podman (rootful or rootless) in a private host namespace, with the binary under test as its
//! slirp4netns (`[engine] network_cmd_path`), for tests/podman.rs.
//!
//! Theory of operation: [`PodWorld::new`] builds one [`HostNs`] per test and, inside its
//! private mount namespace only:
//!
//! - a tmpfs over `/run` (Podman's rootful state, `/run/netns`, `/run/libpod` stay private);
//! - for rootless, the test user with subuid/subgid ranges in an overlay over `/etc` and a
//!   0666 `/dev/net/tun` (the approach of tests/rootlesskit.rs), `XDG_RUNTIME_DIR` and `HOME`
//!   in the test's temp dir;
//! - a busybox-static root filesystem for `podman run --rootfs` (no image, no registry);
//! - `containers.conf` = `contrib/podman/containers.conf` (the README's file) with the path of
//!   the copy of the binary under test, plus this machine kind's quirks ([`CI_QUIRKS`]), and a
//!   `storage.conf` (vfs driver) in the temp dir, named by `CONTAINERS_CONF` and
//!   `CONTAINERS_STORAGE_CONF`.
//!
//! Drop removes every container (`podman rm -af`) and then kills whatever is still running in
//! the host namespace's netns or as the test user (conmon, Podman's rootless pause process),
//! before [`HostNs`] itself goes.

use std::os::unix::fs::PermissionsExt;

use super::*;

/// The README's containers.conf (README "Guides: Podman").
pub const CONTAINERS_CONF: &str = include_str!("../../../../contrib/podman/containers.conf");
/// The path of tapwire in [`CONTAINERS_CONF`], replaced by the binary under test.
pub const CONF_BINARY: &str = "/usr/bin/tapwire";
/// What this machine kind needs on top (README "Guides: Podman", "hosts like the CI VM"):
/// root lacks CAP_SYS_RESOURCE (Podman's default rlimits fail), crun refuses the hybrid
/// cgroup layout, and there is no systemd to manage cgroups.
pub const CI_QUIRKS_CONTAINERS: &str =
    "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n";
pub const CI_QUIRKS_ENGINE: &str = "runtime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n";

/// Deadline for one podman command.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(90);
/// Subordinate ids of the rootless test users (inside their mount namespace only).
const SUBID_BASE: u32 = 300000;

/// containers.conf for the binary at `exe`: the README file plus [`CI_QUIRKS_CONTAINERS`] and
/// [`CI_QUIRKS_ENGINE`] (the latter inserted under its `[engine]` table).
pub fn containers_conf(exe: &Path) -> String {
    assert!(
        CONTAINERS_CONF.contains(CONF_BINARY) && CONTAINERS_CONF.contains("\n[engine]\n"),
        "contrib/podman/containers.conf lost its [engine] network_cmd_path"
    );
    let conf = CONTAINERS_CONF
        .replace(CONF_BINARY, &exe.display().to_string())
        .replace("\n[engine]\n", &format!("\n[engine]\n{CI_QUIRKS_ENGINE}"));
    format!("{CI_QUIRKS_CONTAINERS}\n{conf}")
}

/// Podman in a private host namespace; rootful or as a test user.
pub struct PodWorld {
    pub host: HostNs,
    /// The test user's uid, for rootless.
    pub uid: Option<u32>,
    /// The copy of the binary under test that Podman starts.
    pub exe: PathBuf,
    /// The busybox root filesystem (`/tmp` in it is 1777: containers leave files there).
    pub rootfs: PathBuf,
    pub env: Vec<(String, String)>,
}

impl PodWorld {
    /// Set everything up; `None` after [`skip`] (only with TAPWIRE_ALLOW_SKIP=1).
    pub fn new(rootless: bool) -> Option<PodWorld> {
        Self::with_tools(rootless, &["podman", "runc", "conmon"])
    }

    /// Like [`PodWorld::new`], checking `engine_tools` instead of Podman's (Docker's suite).
    pub fn with_tools(rootless: bool, engine_tools: &[&str]) -> Option<PodWorld> {
        let mut tools = vec!["busybox", "env"];
        tools.extend(engine_tools);
        if rootless {
            tools.extend(["newuidmap", "newgidmap", "setpriv", "mknod"]);
        }
        if !preflight(&tools) {
            return None;
        }
        let host = HostNs::new();
        let d = host.dir.path().to_owned();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = rootless.then(|| 42500 + COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut script = format!(
            r#"set -e
D={d}
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p $D/rootfs/bin $D/rootfs/tmp $D/rootfs/etc $D/tmp
cp /bin/busybox $D/rootfs/bin/busybox
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox $D/rootfs/bin/$a; done
ln -s /proc/mounts $D/rootfs/etc/mtab
chmod 1777 $D/rootfs/tmp $D/tmp
"#,
            d = d.display()
        );
        if let Some(uid) = uid {
            script += &format!(
                r#"mkdir -p $D/etc-up $D/etc-work
if ! mount -t overlay overlay -o lowerdir=/etc,upperdir=$D/etc-up,workdir=$D/etc-work /etc 2>/dev/null; then
    cp -a /etc $D/etc-copy
    mount --bind $D/etc-copy /etc
fi
mount --bind $D/resolv.conf /etc/resolv.conf
echo 'twpod{uid}:x:{uid}:{uid}:tapwire podman test:'$D'/home:/bin/sh' >>/etc/passwd
echo 'twpod{uid}:x:{uid}:' >>/etc/group
echo 'twpod{uid}:{SUBID_BASE}:65536' >>/etc/subuid
echo 'twpod{uid}:{SUBID_BASE}:65536' >>/etc/subgid
chmod 0644 /etc/subuid /etc/subgid
mknod -m 0666 $D/tun c 10 200
mount --bind $D/tun /dev/net/tun
# A user's own root filesystem (its root is the user in the container).
chown -R {uid}:{uid} $D/rootfs
mkdir -p $D/home /run/user/{uid}
chown {uid}:{uid} $D/home /run/user/{uid}
chmod 0700 /run/user/{uid}
"#
            );
        }
        host.sh(&script).ok();
        if let Some(uid) = uid {
            let real = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            assert!(
                !real.contains(&format!("twpod{uid}")),
                "the test user leaked into the machine's /etc/passwd"
            );
        }
        let exe = d.join("forwarder");
        // cp, not std::fs::copy (see HostNs::unprivileged_binary: ETXTBSY from forked children).
        run(Command::new("cp").arg(bin()).arg(&exe), SETUP_TIMEOUT).ok();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = d.join("containers.conf");
        std::fs::write(&conf, containers_conf(&exe)).unwrap();
        let (graph, runroot) = match uid {
            Some(uid) => (
                d.join("home/storage"),
                PathBuf::from(format!("/run/user/{uid}/storage")),
            ),
            None => (d.join("storage"), d.join("runroot")),
        };
        let storage = d.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                graph.display(),
                runroot.display()
            ),
        )
        .unwrap();
        for f in [&conf, &storage] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut env = vec![
            ("CONTAINERS_CONF".into(), conf.display().to_string()),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                storage.display().to_string(),
            ),
            ("TMPDIR".into(), d.join("tmp").display().to_string()),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ];
        if let Some(uid) = uid {
            let user = format!("twpod{uid}");
            env.extend([
                ("HOME".into(), d.join("home").display().to_string()),
                // Short (the API socket's path must fit sun_path) and private (our /run).
                ("XDG_RUNTIME_DIR".into(), format!("/run/user/{uid}")),
                ("USER".into(), user.clone()),
                ("LOGNAME".into(), user),
            ]);
        }
        let rootfs = d.join("rootfs");
        let w = PodWorld {
            host,
            uid,
            exe,
            rootfs,
            env,
        };
        if uid.is_some() {
            let probe = run(
                w.as_user("unshare")
                    .args(["--user", "--map-root-user", "--net", "true"]),
                SETUP_TIMEOUT,
            );
            if !probe.success() {
                skip(&format!(
                    "unprivileged user namespaces are not allowed here: {probe}"
                ));
                return None;
            }
        }
        Some(w)
    }

    pub fn rootless(&self) -> bool {
        self.uid.is_some()
    }

    /// `prog` in the host namespace, as the test user for rootless, with Podman's environment.
    pub fn as_user(&self, prog: &str) -> Command {
        self.as_user_env(prog, &[])
    }

    /// [`PodWorld::as_user`] with more environment variables (later ones win).
    pub fn as_user_env(&self, prog: &str, extra: &[(String, String)]) -> Command {
        let mut c = match self.uid {
            Some(uid) => {
                let mut c = self.host.cmd("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    "env",
                    "-i",
                ]);
                c
            }
            None => {
                let mut c = self.host.cmd("env");
                c.arg("-i");
                c
            }
        };
        for (k, v) in self.env.iter().chain(extra) {
            c.arg(format!("{k}={v}"));
        }
        c.arg(prog);
        c
    }

    /// `podman ARGS` (with a deadline).
    pub fn podman(&self, args: &[&str]) -> Out {
        run(self.as_user("podman").args(args), PODMAN_TIMEOUT)
    }

    /// `podman ARGS`, panicking with its output unless it succeeds; its stdout, trimmed.
    #[track_caller]
    pub fn podman_ok(&self, args: &[&str]) -> String {
        self.podman(args).ok().stdout.trim().to_owned()
    }

    /// `podman run --rm --network NETWORK [extra...] --rootfs ROOTFS sh -c SCRIPT`.
    pub fn run_sh(&self, network: &str, extra: &[&str], script: &str) -> Out {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "--rm", "--network", network];
        args.extend(extra);
        args.extend(["--rootfs", &rootfs, "sh", "-c", script]);
        self.podman(&args)
    }

    /// `podman run -d ...`: the container id.
    #[track_caller]
    pub fn run_detached(&self, network: &str, extra: &[&str], script: &str) -> String {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "-d", "--network", network];
        args.extend(extra);
        args.extend(["--rootfs", &rootfs, "sh", "-c", script]);
        self.podman_ok(&args)
    }

    /// Write a file into the root filesystem (readable by every container user).
    pub fn put(&self, rel: &str, data: &[u8], mode: u32) {
        let p = self.rootfs.join(rel);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Wait until a container created `rel` in the root filesystem.
    #[track_caller]
    pub fn wait_file(&self, rel: &str, what: &str) {
        let p = self.rootfs.join(rel);
        wait_until(Duration::from_secs(60), what, || p.exists());
    }

    /// The running copy of the binary under test: (pid, argv).
    pub fn forwarders(&self) -> Vec<(u32, Vec<String>)> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if argv.first().map(Path::new) == Some(self.exe.as_path()) {
                found.push((pid, argv));
            }
        }
        found
    }

    /// Kill whatever still runs in this world: in the host netns, or as the test user.
    fn sweep(&self) {
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", self.host.pid())).ok();
        let holder = self.host.pid();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == holder || pid as u32 == std::process::id() {
                continue;
            }
            let ns = std::fs::read_link(e.path().join("ns/net")).ok();
            let uid = std::fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
                })
                .and_then(|u| u.parse::<u32>().ok());
            let mine = (ns.is_some() && ns == netns)
                || (uid.is_some() && uid == self.uid)
                || self.uid.is_some_and(|_| {
                    uid.is_some_and(|u| (SUBID_BASE..SUBID_BASE + 65536).contains(&u))
                });
            if mine {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for PodWorld {
    fn drop(&mut self) {
        let _ = run(
            self.as_user("podman").args(["rm", "-af", "-t", "0"]),
            PODMAN_TIMEOUT,
        );
        self.sweep();
    }
}

/// State of process `pid` (`R`, `S`, `Z`, ...), `None` once it is gone (reaped).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Wait up to `limit` for `pid` to exit (a zombie or gone). Returns (time to exit, time to
/// being reaped if that happened within `reap_limit`).
pub fn wait_exit(
    pid: u32,
    limit: Duration,
    reap_limit: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let start = Instant::now();
    let mut exited = None;
    loop {
        match proc_state(pid) {
            None => {
                let t = start.elapsed();
                return (Some(exited.unwrap_or(t)), Some(t));
            }
            Some('Z') | Some('X') if exited.is_none() => exited = Some(start.elapsed()),
            _ => {}
        }
        if start.elapsed() > limit.max(reap_limit)
            || (exited.is_some() && start.elapsed() > reap_limit)
        {
            return (exited, None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}
