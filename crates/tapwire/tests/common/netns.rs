//! Namespaces: the private host namespace of one test (`HostNs`), the guest (`Guest`), the peer
//! test host behind a veth (`Peer`), per-test temp dirs, and running closures inside a netns.

use super::*;

// Namespaces.
// ---------------------------------------------------------------------------------------------

pub(super) static COUNTER: AtomicU32 = AtomicU32::new(0);

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

pub(super) fn ns_file(pid: u32, ns: &str) -> File {
    File::open(format!("/proc/{pid}/ns/{ns}")).unwrap_or_else(|e| panic!("open ns of {pid}: {e}"))
}

pub(super) fn ns_id(path: &str) -> PathBuf {
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
