//! The bypass supervisor: answers the container's trapped socket calls on its own thread.
//!
//! # Theory of operation
//! One thread, one `poll(2)` set (level-triggered) over: the seccomp listeners (one per
//! `tapwire run --bypass` command or per container that runc/crun handed us), the sockets of
//! calls still in progress, and, with `--seccomp-listener`, the UNIX socket OCI runtimes connect
//! to plus their half-read connections. It never blocks anywhere else and never touches the
//! engine's thread, so the packet path's latency is unaffected and a slow connect never stalls
//! other notifications.
//!
//! ## One notification, step by step
//! 1. `RECV` gives the thread id, the syscall and its raw arguments. A call from a foreign ABI
//!    (i386/x32) gets `ENOSYS` (the filter already refuses those; runtimes' profiles may not).
//! 2. Memory is read once (`process_vm_readv`), then `ID_VALID` proves the thread is still the
//!    one that made the call (a thread id can be reused once its thread is gone). A pidfd is
//!    opened *before* that check, so it refers to the same thread.
//! 3. `pidfd_getfd` gives a copy of the socket: same open file description, so its
//!    domain/type/protocol, `O_NONBLOCK`, options and netns (`SO_NETNS_COOKIE`) are read
//!    straight from it. setsockopt and fcntl are never trapped.
//! 4. The decision is [`tapwire_proto::bypass::Policy`]'s. For an IP socket *every* connect, bind and
//!    listen is performed by the supervisor on the object it inspected, with the address it
//!    read: the kernel is never asked to re-read the program's memory for them (no CONTINUE), so
//!    a racing thread can neither rewrite the address nor swap the socket after the check.
//!    - bypass: a host socket of the same domain/type/protocol, the container socket's options
//!      that differ from a fresh socket's copied over, `--outbound-addr` applied, connected by
//!      us; installed over the program's fd number with `ADDFD`+`SETFD` (keeping its
//!      close-on-exec flag) once the connect succeeded (blocking socket) or started
//!      (`O_NONBLOCK`: the program gets `EINPROGRESS` and polls the host socket itself).
//!    - tap: the connect runs on the container's own socket (the copy), in its namespace.
//!    - refuse: the errno (e.g. `ENETUNREACH` for the gateway with `--disable-host-loopback`).
//!    - a socket that already is a host socket (bypassed before, or inherited): reconnects and
//!      sends go through the same policy; a destination that would be on the tap is refused
//!      with `ENETUNREACH`, because a host socket cannot reach the container's network.
//!
//!    Calls on other sockets (UNIX, netlink...) are continued: their addresses need the
//!    caller's own filesystem view.
//! 5. Blocking calls never block us: the socket is made non-blocking just for the call (the
//!    container socket's flag is restored at once) and, if the connect is in progress, parked
//!    as `Pending` until `POLLOUT`, its `SO_SNDTIMEO` deadline (then `EINPROGRESS`, as the
//!    kernel does) or the thread's death.
//! 6. `SEND` answers; `ENOENT` from SEND/ADDFD means the thread went away: dropped quietly.
//!
//! Each notification is a round trip between the program's thread and ours; the listener is
//! switched to synchronous wake-ups (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6) so the
//! kernel hands the CPU over rather than scheduling a wake-up.
//!
//! ## State
//! Per listener: nothing but its fd and whether its filter traps sends (UDP bypass). Pending
//! calls are bounded ([`MAX_PENDING`]) and checked with `ID_VALID` every second. The
//! getpeername table ([`PeerTable`]) is keyed by socket inode, bounded. A listener that reports
//! `POLLHUP` (no task uses the filter any more) is dropped with its pending calls.
//!
//! ## Sends (UDP bypass)
//! A bypassed UDP socket lives in the host's namespace, so every send that carries an address
//! is trapped (the filter lets `send`/`write` without one pass): on an IP socket the supervisor
//! reads the message once (name, iovecs up to 64 KiB per datagram or 1 MiB per stream call,
//! control data), checks the destination against the policy if the socket is a host socket
//! (re-encoding it; an AF_UNSPEC address on an AF_INET socket is an address too), and sends it
//! itself (non-blocking; a blocking socket without room waits in `Pending`, `SO_SNDTIMEO`
//! gives `EAGAIN`). sendmmsg sends the first message and writes its `msg_len` back (the kernel
//! may send fewer than asked; the program goes on with the rest). A stream socket may see a
//! short write, which programs handle.
//!
//! ## Limits
//! - `getsockname` on a bypassed socket shows the host address (e.g. 127.0.0.1:port).
//! - `ADDFD`+`SETFD` replaces one fd number in the calling process: copies of the socket made
//!   before the connect (`dup`, or inherited by another process) stay the unconnected
//!   container socket.
//! - Calls on non-IP sockets are continued, so the kernel looks their fd up again: a program
//!   that swaps (`dup2`) one of its bypassed sockets onto that fd number in the window between
//!   our answer and the kernel's lookup would run that call on the host socket unchecked. This
//!   needs a race against its own other thread and a bypassed socket it already holds; UNIX
//!   socket paths can only be resolved in the caller's own file-system view, which is why those
//!   calls are not performed here.
//! - Bind/listen on a container socket are performed by the supervisor, whose credentials
//!   count for the privileged-port check (it owns the container's namespaces).
//!
//! ## OCI runtimes
//! runc/crun with `linux.seccomp.listenerPath` connect to our socket after creating the
//! container and send the container process state (JSON, `"fds": ["seccompFd"]`) with the
//! listener as SCM_RIGHTS, then close. The profile's `listenerMetadata` (written by
//! `tapwire seccomp-profile`) says whether the sends are trapped; only then is UDP bypassed.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use slab::Slab;

use crate::bypass::seccomp::{self, Call, Listener, Notif, ProcFs, Reply};
use tapwire_proto::bypass::{
    self, decode_connect, decode_inet, encode, normalize, to_family, Dest, PeerTable, Policy,
    Route, Stats, SOCKADDR_MAX,
};
use tapwire_proto::config::Outbound;

/// Calls in progress at once, over all listeners.
pub const MAX_PENDING: usize = 4096;
/// getpeername entries remembered.
pub const MAX_PEERS: usize = 65_536;
/// OCI runtime connections being read at once, and how long each may take.
const MAX_OCI_CLIENTS: usize = 64;
const OCI_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest container state message accepted.
const MAX_OCI_STATE: usize = 1 << 20;
/// Most bytes the supervisor sends in one call for the program (UDP bypass traps every
/// sendmsg): a whole datagram, or a chunk of a stream (a short write, which the program
/// continues).
const MAX_SEND_DGRAM: usize = 65_536;
const MAX_SEND_STREAM: usize = 1 << 20;
/// Largest iovec array / control buffer read from the program.
const MAX_IOV: usize = 1024;
const MAX_CONTROL: usize = 64 * 1024;

/// Errors that prevent the supervisor from starting.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The kernel lacks something bypass needs.
    #[error("bypass mode is not supported here: {0}")]
    Unsupported(String),
    /// The OCI listener socket could not be created.
    #[error("--seccomp-listener {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    /// The thread could not be started.
    #[error("start the bypass thread: {0}")]
    Thread(#[source] io::Error),
    /// Options that cannot be combined.
    #[error("{0}")]
    Conflict(&'static str),
}

/// `tapwire seccomp-profile`: print the profile; returns the exit status.
pub fn print_profile(args: &crate::cli::ProfileArgs) -> i32 {
    let profile = seccomp::oci_profile(args.udp, &args.listener_path.to_string_lossy());
    match serde_json::to_string_pretty(&profile) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("tapwire: {e}");
            1
        }
    }
}

/// `tapwire run --bypass`: the prepared supervisor and whether UDP is bypassed.
pub fn prepare_run(
    args: &crate::cli::RunArgs,
) -> Result<Option<(Prepared, bool)>, SupervisorError> {
    let Some(b) = &args.bypass else {
        return Ok(None);
    };
    let policy = Policy::new(&args.net, &b.ignore, &args.publish);
    Ok(Some((prepare(policy, None)?, b.udp)))
}

/// The daemon's `--seccomp-listener PATH`.
pub fn prepare_daemon(
    args: &crate::cli::DaemonArgs,
    path: &Path,
) -> Result<Prepared, SupervisorError> {
    if args.enable_sandbox {
        return Err(SupervisorError::Conflict(
            "--seccomp-listener cannot be combined with --enable-sandbox yet: serving a \
             container's seccomp listener needs ptrace rights over its processes \
             (CAP_SYS_PTRACE, or capabilities that cover the container's), which the sandbox drops",
        ));
    }
    let policy = Policy::new(&args.net, &args.ignore, &args.publish);
    let mut prep = prepare(policy, Some(path))?;
    prep.late_sync = !args.enable_seccomp;
    Ok(prep)
}

/// The `-p` forwards the engine serves: with bypass, TCP ones are served by the program's own
/// bind on a host socket instead (both cannot listen on the same host port).
pub fn tap_publishes(
    publish: &[tapwire_proto::config::Publish],
    bypass: bool,
) -> Vec<tapwire_proto::config::Publish> {
    publish
        .iter()
        .filter(|p| !bypass || p.proto != tapwire_proto::config::Proto::Tcp)
        .copied()
        .collect()
}

/// Everything the supervisor needs from the file system and the kernel, gathered before the
/// daemon confines itself (the sandbox leaves no `/proc` and may forbid new binds) and before
/// any thread exists.
#[derive(Debug)]
pub struct Prepared {
    policy: Policy,
    proc: ProcFs,
    host_cookie: u64,
    oci: Option<OciServer>,
    /// Listeners that arrive later (OCI) may be switched to synchronous wake-ups: false when
    /// the daemon's own seccomp filter will be in place by then and does not allow that ioctl.
    late_sync: bool,
}

/// Check that the kernel has what bypass needs (notification structures, netns cookies), open
/// `/proc`, and bind the OCI runtimes' socket if `oci_path` is given.
pub fn prepare(policy: Policy, oci_path: Option<&Path>) -> Result<Prepared, SupervisorError> {
    seccomp::check_notif_sizes()
        .map_err(|e| SupervisorError::Unsupported(format!("seccomp user notification: {e}")))?;
    let probe = seccomp::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
        .map_err(|e| SupervisorError::Unsupported(format!("socket: {e}")))?;
    let host_cookie = seccomp::netns_cookie(probe.as_fd()).map_err(|e| {
        SupervisorError::Unsupported(format!("SO_NETNS_COOKIE (Linux >= 5.14): {e}"))
    })?;
    let proc =
        ProcFs::open().map_err(|e| SupervisorError::Unsupported(format!("open /proc: {e}")))?;
    let oci = oci_path.map(OciServer::bind).transpose()?;
    Ok(Prepared {
        policy,
        proc,
        host_cookie,
        oci,
        late_sync: true,
    })
}

impl Prepared {
    /// Start the supervisor thread. `listeners`: fds with whether their filter traps sends
    /// (then UDP is bypassed too).
    pub fn spawn(
        self,
        listeners: Vec<(OwnedFd, bool)>,
    ) -> Result<std::thread::JoinHandle<()>, SupervisorError> {
        let mut sup = Supervisor::new(self);
        for (fd, udp) in listeners {
            sup.add_listener(Listener::new(fd), udp, "the command".to_owned(), true);
        }
        std::thread::Builder::new()
            .name("tapwire-bypass".to_owned())
            .spawn(move || sup.run())
            .map_err(SupervisorError::Thread)
    }
}

/// The OCI runtimes' socket (`--seccomp-listener PATH`), bound before the thread starts so
/// that a bad path is a start-up error.
#[derive(Debug)]
pub struct OciServer {
    listener: UnixListener,
    path: PathBuf,
}

impl OciServer {
    /// Bind `path` (a stale socket file left by an earlier run is replaced).
    pub fn bind(path: &Path) -> Result<OciServer, SupervisorError> {
        let err = |source| SupervisorError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(OciServer {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for OciServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One seccomp listener.
struct Lst {
    fd: Listener,
    /// The filter traps sends with an address: UDP may be bypassed.
    udp: bool,
    name: String,
    /// A host socket was installed in one of its processes at least once.
    installed: bool,
}

/// What a parked call does when its socket is ready.
enum Then {
    /// A fresh host socket connecting for a blocking connect: install it on success.
    Install(Install),
    /// A connect performed on an existing socket (the container's, or a host socket being
    /// reconnected): answer with its result.
    Answer,
    /// A send on a blocking socket that had no room: try again.
    Send(SendJob),
}

/// A send performed for the program.
struct SendJob {
    /// The destination as the kernel gets it (already checked for a host socket).
    name: Option<Vec<u8>>,
    data: Vec<Vec<u8>>,
    control: Vec<u8>,
    flags: i32,
    /// sendmmsg: where the first message's `msg_len` goes.
    mmsg_len_at: Option<u64>,
    tid: i32,
}

/// A host socket to install in the program.
struct Install {
    newfd: RawFd,
    cloexec: bool,
    nonblock: bool,
    /// The address the program asked for, when it differs from the host target.
    original: Option<SocketAddr>,
}

/// A call in progress.
struct Pending {
    lst: usize,
    id: u64,
    sock: OwnedFd,
    deadline: Option<Instant>,
    then: Then,
}

/// A runtime's connection, until its state message is complete.
struct OciClient {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    deadline: Instant,
}

/// Why a call could not be answered normally.
enum Fail {
    /// The thread left the call (killed, interrupted): drop the notification.
    Gone,
    /// Answer with this errno.
    Errno(i32),
    /// We may not inspect this thread (no ptrace rights over it).
    Blind,
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        match e.raw_os_error() {
            Some(libc::ESRCH) => Fail::Gone,
            Some(n) => Fail::Errno(n),
            None => Fail::Errno(libc::EIO),
        }
    }
}

type Answer = Result<Option<Reply>, Fail>;

/// What poll slot `i` is.
#[derive(Clone, Copy)]
enum Slot {
    Listener(usize),
    /// Slab index and notification id (an index may be reused within one loop turn).
    Pending(usize, u64),
    OciServer,
    OciClient(usize),
}

/// The socket of a trapped call, as read from the copy.
#[derive(Clone, Copy, Debug)]
struct SockInfo {
    domain: i32,
    ty: i32,
    proto: i32,
    /// Lives in our (the host's) network namespace.
    host: bool,
    /// F_GETFL of the shared open file description.
    flags: OFlag,
}

impl SockInfo {
    fn v6(&self) -> bool {
        self.domain == libc::AF_INET6
    }
    fn nonblock(&self) -> bool {
        self.flags.contains(OFlag::O_NONBLOCK)
    }
    fn tcp(&self) -> bool {
        self.ty == libc::SOCK_STREAM && self.proto == libc::IPPROTO_TCP
    }
    fn udp(&self) -> bool {
        self.ty == libc::SOCK_DGRAM && self.proto == libc::IPPROTO_UDP
    }
}

struct Supervisor {
    policy: Policy,
    proc: ProcFs,
    host_cookie: u64,
    listeners: Slab<Lst>,
    pending: Slab<Pending>,
    oci: Option<OciServer>,
    oci_clients: Slab<OciClient>,
    peers: PeerTable,
    defaults: HashMap<(i32, i32, i32), OptionValues>,
    stats: Stats,
    last_sweep: Instant,
    warned_getfd: bool,
    /// See [`Prepared`]: OCI listeners get synchronous wake-ups.
    late_sync: bool,
}

impl Supervisor {
    fn new(p: Prepared) -> Supervisor {
        let Prepared {
            policy,
            proc,
            host_cookie,
            oci,
            late_sync,
        } = p;
        Supervisor {
            policy,
            proc,
            host_cookie,
            listeners: Slab::new(),
            pending: Slab::new(),
            oci,
            oci_clients: Slab::new(),
            peers: PeerTable::new(MAX_PEERS),
            defaults: HashMap::new(),
            stats: Stats::default(),
            last_sweep: Instant::now(),
            warned_getfd: false,
            late_sync,
        }
    }

    fn add_listener(&mut self, fd: Listener, udp: bool, name: String, sync: bool) {
        // Measured here: ~25% more connects per second with synchronous wake-ups.
        if sync {
            if let Err(e) = fd.set_sync_wakeup() {
                tracing::debug!("bypass: synchronous wake-ups not available: {e}");
            }
        }
        tracing::info!(
            "bypass: serving seccomp listener of {name} (UDP {})",
            if udp { "bypassed" } else { "on the tap" }
        );
        self.listeners.insert(Lst {
            fd,
            udp,
            name,
            installed: false,
        });
    }

    fn run(mut self) {
        let mut slots: Vec<Slot> = Vec::new();
        let mut ready: Vec<(Slot, PollFlags)> = Vec::new();
        loop {
            if self.listeners.is_empty() && self.oci.is_none() {
                tracing::debug!(
                    "bypass: no listener left; supervisor stops ({:?})",
                    self.stats
                );
                return;
            }
            slots.clear();
            slots.extend(self.listeners.iter().map(|(i, _)| Slot::Listener(i)));
            slots.extend(self.pending.iter().map(|(i, p)| Slot::Pending(i, p.id)));
            if self.oci.is_some() {
                slots.push(Slot::OciServer);
            }
            slots.extend(self.oci_clients.iter().map(|(i, _)| Slot::OciClient(i)));
            let timeout = self.next_timeout();
            ready.clear();
            {
                let mut pfds: Vec<PollFd<'_>> = slots
                    .iter()
                    .filter_map(|s| {
                        let (fd, ev) = self.slot_fd(*s)?;
                        Some(PollFd::new(fd, ev))
                    })
                    .collect();
                match poll(&mut pfds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("bypass: poll: {e}; the supervisor stops");
                        return;
                    }
                }
                for (slot, p) in slots.iter().zip(pfds.iter()) {
                    if let Some(r) = p.revents() {
                        if !r.is_empty() {
                            ready.push((*slot, r));
                        }
                    }
                }
            }
            for &(slot, r) in &ready {
                match slot {
                    Slot::Listener(i) => self.listener_event(i, r),
                    Slot::Pending(i, id) => self.pending_ready(i, id),
                    Slot::OciServer => self.oci_accept(),
                    Slot::OciClient(i) => self.oci_read(i),
                }
            }
            self.sweep();
        }
    }

    fn slot_fd(&self, s: Slot) -> Option<(BorrowedFd<'_>, PollFlags)> {
        match s {
            Slot::Listener(i) => Some((self.listeners.get(i)?.fd.as_fd(), PollFlags::POLLIN)),
            Slot::Pending(i, _) => Some((self.pending.get(i)?.sock.as_fd(), PollFlags::POLLOUT)),
            Slot::OciServer => Some((self.oci.as_ref()?.listener.as_fd(), PollFlags::POLLIN)),
            Slot::OciClient(i) => {
                Some((self.oci_clients.get(i)?.stream.as_fd(), PollFlags::POLLIN))
            }
        }
    }

    fn next_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let mut t = Duration::from_secs(1);
        for (_, p) in &self.pending {
            if let Some(d) = p.deadline {
                t = t.min(d.saturating_duration_since(now));
            }
        }
        for (_, c) in &self.oci_clients {
            t = t.min(c.deadline.saturating_duration_since(now));
        }
        PollTimeout::try_from(t.as_millis().min(1000) as i32 + 1).unwrap_or(PollTimeout::MAX)
    }

    /// Deadlines, dead notifications, stale runtime connections.
    fn sweep(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(i, _)| i)
            .collect();
        for i in expired {
            self.pending_timeout(i);
        }
        let stale: Vec<usize> = self
            .oci_clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            tracing::warn!("bypass: an OCI runtime connection sent no complete state in time");
            self.oci_clients.remove(i);
        }
        if now.duration_since(self.last_sweep) < Duration::from_secs(1) {
            return;
        }
        self.last_sweep = now;
        let dead: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                self.listeners
                    .get(p.lst)
                    .is_none_or(|l| !l.fd.id_valid(p.id))
            })
            .map(|(i, _)| i)
            .collect();
        for i in dead {
            self.pending.remove(i);
            self.stats.dead += 1;
        }
    }

    // --- listeners ------------------------------------------------------------------------

    fn listener_event(&mut self, li: usize, r: PollFlags) {
        if r.contains(PollFlags::POLLIN) {
            let Some(l) = self.listeners.get(li) else {
                return;
            };
            match l.fd.recv() {
                Ok(n) => self.on_notif(li, n),
                Err(e) => match e.raw_os_error() {
                    // Cancelled between poll and recv (the thread was killed), or a signal.
                    Some(libc::ENOENT) | Some(libc::EINTR) => {}
                    _ => {
                        tracing::warn!("bypass: receive from listener of {}: {e}", l.name);
                        self.drop_listener(li);
                    }
                },
            }
        } else if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            self.drop_listener(li);
        }
    }

    fn drop_listener(&mut self, li: usize) {
        if let Some(l) = self.listeners.try_remove(li) {
            tracing::info!(
                "bypass: listener of {} closed (its processes are gone)",
                l.name
            );
            self.pending.retain(|_, p| p.lst != li);
        }
    }

    fn respond(&mut self, li: usize, id: u64, reply: Reply) {
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        if let Err(e) = l.fd.respond(id, reply) {
            if e.raw_os_error() == Some(libc::ENOENT) {
                self.stats.dead += 1;
            } else {
                tracing::debug!("bypass: answer {id}: {e}");
            }
        }
    }

    /// The thread seems to have left its call. It might not have (e.g. a thread we cannot see
    /// in /proc): answer anyway, so it can never hang; if it did leave, the kernel refuses the
    /// answer (ENOENT), which is harmless.
    fn gone(&mut self, li: usize, id: u64) {
        self.stats.dead += 1;
        if let Some(l) = self.listeners.get(li) {
            let _ = l.fd.respond(id, Reply::Error(libc::EPERM));
        }
    }

    /// Whether the program's fd `fd` is close-on-exec (`EBADF` if it is gone meanwhile).
    fn cloexec(&self, li: usize, n: &Notif, fd: RawFd) -> Result<bool, Fail> {
        match seccomp::fd_cloexec(&self.proc, n.tid, fd) {
            Ok(c) => Ok(c),
            Err(_) if self.id_valid(li, n.id) => Err(Fail::Errno(libc::EBADF)),
            Err(_) => Err(Fail::Gone),
        }
    }

    fn id_valid(&self, li: usize, id: u64) -> bool {
        self.listeners.get(li).is_some_and(|l| l.fd.id_valid(id))
    }

    fn on_notif(&mut self, li: usize, n: Notif) {
        self.stats.notifications += 1;
        let answer = if !seccomp::is_native(n.arch, n.nr) {
            Ok(Some(Reply::Error(libc::ENOSYS)))
        } else {
            match seccomp::classify(n.nr) {
                Some(Call::Connect) => self.on_connect(li, &n),
                Some(Call::Bind) => self.on_bind(li, &n),
                Some(Call::Listen) => self.on_listen(li, &n),
                Some(Call::GetPeerName) => self.on_getpeername(li, &n),
                Some(Call::SendTo) => self.on_sendto(li, &n),
                Some(Call::SendMsg) => self.on_sendmsg(li, &n),
                Some(Call::SendMmsg) => self.on_sendmmsg(li, &n),
                None => Ok(Some(Reply::Continue)),
            }
        };
        // Without ptrace rights over the thread we cannot tell what its fd is. As long as no
        // host socket was ever handed to these processes, none of their fds can be one: let the
        // call through. Otherwise fail closed.
        let answer = match answer {
            Err(Fail::Blind) => match self.listeners.get(li) {
                Some(l) if !l.installed => Ok(Some(Reply::Continue)),
                _ => Err(Fail::Errno(libc::EPERM)),
            },
            other => other,
        };
        match answer {
            Ok(Some(reply)) => {
                if reply == Reply::Continue {
                    self.stats.continued += 1;
                }
                tracing::trace!(
                    "bypass: {} tid {} -> {reply:?}",
                    seccomp::call_name(n.nr),
                    n.tid
                );
                self.respond(li, n.id, reply);
            }
            Ok(None) => {}
            Err(Fail::Gone) => self.gone(li, n.id),
            Err(Fail::Errno(e)) => {
                self.stats.errors += 1;
                self.respond(li, n.id, Reply::Error(e));
            }
            Err(Fail::Blind) => self.respond(li, n.id, Reply::Error(libc::EPERM)),
        }
    }

    // --- the target -----------------------------------------------------------------------

    /// Read `buf.len()` bytes of the target's memory, then prove the thread is still in the
    /// call. `EFAULT` if unreadable (as the kernel would say), `Gone` if the thread left.
    fn read(&self, li: usize, n: &Notif, addr: u64, buf: &mut [u8]) -> Result<(), Fail> {
        let r = seccomp::read_mem(n.tid, addr, buf);
        if !self.id_valid(li, n.id) {
            return Err(Fail::Gone);
        }
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => Fail::Blind,
            _ => Fail::Errno(libc::EFAULT),
        })
    }

    /// Write to the target's memory through `/proc/TID/mem`, opened before the `ID_VALID`
    /// check, so the write cannot land in another process that reused the thread id.
    fn write(&self, li: usize, tid: i32, id: u64, addr: u64, data: &[u8]) -> Result<(), Fail> {
        let mem = self
            .proc
            .file(&format!("{tid}/mem"), true)
            .map_err(|_| Fail::Gone)?;
        if !self.id_valid(li, id) {
            return Err(Fail::Gone);
        }
        match mem.write_at(data, addr) {
            Ok(k) if k == data.len() => Ok(()),
            _ => Err(Fail::Errno(libc::EFAULT)),
        }
    }

    /// A pidfd for the calling thread; only valid once an `ID_VALID` after it succeeded.
    fn pidfd(&self, n: &Notif) -> Result<OwnedFd, Fail> {
        seccomp::pidfd_open(&self.proc, n.tid).map_err(|_| Fail::Gone)
    }

    /// A copy of the target's fd `fd`. The pidfd is opened before `ID_VALID`, so it is the
    /// calling thread's.
    ///
    /// `pidfd`: one from [`Self::pidfd`] that a later [`Self::read`] already proved to be the
    /// calling thread's (saves an `ID_VALID`), or `None`.
    fn getfd(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        pidfd: Option<OwnedFd>,
    ) -> Result<OwnedFd, Fail> {
        let pidfd = match pidfd {
            Some(p) => p,
            None => {
                let p = self.pidfd(n)?;
                if !self.id_valid(li, n.id) {
                    return Err(Fail::Gone);
                }
                p
            }
        };
        match seccomp::pidfd_getfd(pidfd.as_fd(), fd) {
            Ok(f) => Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.warned_getfd {
                    self.warned_getfd = true;
                    tracing::warn!(
                        "bypass: pidfd_getfd on thread {} is not permitted (ptrace rights); calls go through unchanged",
                        n.tid
                    );
                }
                Err(Fail::Blind)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sock_info(&self, sock: &OwnedFd) -> Result<Option<SockInfo>, Fail> {
        let fd = sock.as_fd();
        let domain = seccomp::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Ok(None);
        }
        let ty = seccomp::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let proto = seccomp::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        let host = seccomp::netns_cookie(fd)? == self.host_cookie;
        let flags =
            OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        Ok(Some(SockInfo {
            domain,
            ty,
            proto,
            host,
            flags,
        }))
    }

    /// Fetch (fd, info) for a call whose first argument is the socket; `Ok(None)` means "not an
    /// IP socket: let the kernel do it".
    fn target_socket(
        &mut self,
        li: usize,
        n: &Notif,
        pidfd: Option<OwnedFd>,
    ) -> Result<Option<(RawFd, OwnedFd, SockInfo)>, Fail> {
        let fd = n.args[0] as i32;
        let sock = self.getfd(li, n, fd, pidfd)?;
        match self.sock_info(&sock)? {
            Some(info) => Ok(Some((fd, sock, info))),
            None => Ok(None),
        }
    }

    // --- connect --------------------------------------------------------------------------

    fn on_connect(&mut self, li: usize, n: &Notif) -> Answer {
        let len = n.args[2] as u32 as i32;
        if len < 0 || len as usize > SOCKADDR_MAX {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let pidfd = self.pidfd(n)?;
        let mut buf = [0u8; SOCKADDR_MAX];
        let raw = buf.get_mut(..len as usize).unwrap_or(&mut []);
        self.read(li, n, n.args[1], raw)?;
        let raw: &[u8] = raw;
        let Some((fd, sock, info)) = self.target_socket(li, n, Some(pidfd))? else {
            return Ok(Some(Reply::Continue));
        };
        if info.host {
            return self.reconnect_host(li, n, sock, info, raw);
        }
        let eligible = info.tcp() || (info.udp() && self.listeners.get(li).is_some_and(|l| l.udp));
        if eligible {
            if let Ok(Dest::Inet(dst)) = decode_connect(raw, info.v6(), info.udp()) {
                let ndst = normalize(dst);
                match self.policy.connect(ndst) {
                    Route::Host(target) => {
                        if self.bypassable(&sock, info, ndst)? {
                            return self.bypass_connect(li, n, fd, &sock, info, dst, target);
                        }
                    }
                    Route::Refuse(e) => {
                        self.stats.refused += 1;
                        return Ok(Some(Reply::Error(e)));
                    }
                    Route::Tap => {}
                }
            }
        }
        self.stats.tap += 1;
        self.connect_on(li, n, sock, info, raw, Then::Answer)
    }

    /// Whether a container socket may be replaced: not bound to a local port yet (the program
    /// would expect to keep it), not a dual-stack-disabled socket asked for an IPv4 address,
    /// and for TCP not connected or connecting.
    fn bypassable(&self, sock: &OwnedFd, info: SockInfo, ndst: SocketAddr) -> Result<bool, Fail> {
        if bound(sock) {
            return Ok(false);
        }
        if info.v6() && ndst.is_ipv4() {
            let v6only =
                seccomp::getsockopt_int(sock.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
            if v6only != 0 {
                return Ok(false);
            }
        }
        if info.tcp() {
            let mut ti = [0u8; 8];
            seccomp::getsockopt_raw(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti)?;
            const TCP_CLOSE: u8 = 7;
            if ti[0] != TCP_CLOSE {
                return Ok(false);
            }
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn bypass_connect(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        guest: &OwnedFd,
        info: SockInfo,
        dst: SocketAddr,
        target: SocketAddr,
    ) -> Answer {
        let host = self.host_socket(guest, info, Some(target))?;
        let cloexec = self.cloexec(li, n, fd)?;
        let original = (normalize(dst) != normalize(target)).then_some(dst);
        let inst = Install {
            newfd: fd,
            cloexec,
            nonblock: info.nonblock(),
            original,
        };
        let raw = encode(&to_family(target, info.v6()));
        self.stats.bypassed += 1;
        tracing::debug!("bypass: tid {} fd {fd}: {dst} -> host {target}", n.tid);
        match seccomp::connect_raw(host.as_fd(), raw.as_bytes()) {
            Ok(()) => self
                .install(li, n.id, host, &inst)
                .map(|()| Some(Reply::Value(0))),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                if info.nonblock() {
                    self.install(li, n.id, host, &inst)?;
                    return Ok(Some(Reply::Error(libc::EINPROGRESS)));
                }
                if ready_now(&host) {
                    return self.finish_install(li, n.id, host, inst);
                }
                let deadline = send_timeout(guest).map(|t| Instant::now() + t);
                self.park(li, n.id, host, deadline, Then::Install(inst))
            }
            // Refused, unreachable...: the program's socket stays as it was.
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    /// A blocking bypassed connect finished: install on success, else report the error.
    fn finish_install(&mut self, li: usize, id: u64, host: OwnedFd, inst: Install) -> Answer {
        match take_error(&host) {
            0 => self
                .install(li, id, host, &inst)
                .map(|()| Some(Reply::Value(0))),
            e => Ok(Some(Reply::Error(e))),
        }
    }

    /// Put the host socket in the program's fd table at `inst.newfd`.
    fn install(&mut self, li: usize, id: u64, host: OwnedFd, inst: &Install) -> Result<(), Fail> {
        // Host sockets are made non-blocking (socket() with SOCK_NONBLOCK), nothing else.
        if !inst.nonblock {
            fcntl(host.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(io::Error::from)?;
        }
        let ino = inst.original.and_then(|_| inode(&host));
        if let (Some(orig), Some(ino)) = (inst.original, ino) {
            self.peers.insert(ino, orig);
        }
        let Some(l) = self.listeners.get_mut(li) else {
            return Err(Fail::Gone);
        };
        l.installed = true;
        match l.fd.addfd_at(id, host.as_fd(), inst.newfd, inst.cloexec) {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(ino) = ino {
                    self.peers.remove(ino);
                }
                match e.raw_os_error() {
                    Some(libc::ENOENT) => Err(Fail::Gone),
                    Some(n) => Err(Fail::Errno(n)),
                    None => Err(Fail::Errno(libc::EIO)),
                }
            }
        }
    }

    /// connect on an existing socket (the container's own, or a host socket), without ever
    /// blocking: a blocking socket is switched to non-blocking for the call only.
    fn connect_on(
        &mut self,
        li: usize,
        n: &Notif,
        sock: OwnedFd,
        info: SockInfo,
        raw: &[u8],
        then: Then,
    ) -> Answer {
        let r = if info.nonblock() {
            seccomp::connect_raw(sock.as_fd(), raw)
        } else {
            fcntl(
                sock.as_fd(),
                FcntlArg::F_SETFL(info.flags | OFlag::O_NONBLOCK),
            )
            .map_err(io::Error::from)?;
            let r = seccomp::connect_raw(sock.as_fd(), raw);
            let _ = fcntl(sock.as_fd(), FcntlArg::F_SETFL(info.flags));
            r
        };
        match r {
            Ok(()) => Ok(Some(Reply::Value(0))),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) && !info.nonblock() => {
                if ready_now(&sock) {
                    return Ok(Some(answer_of(take_error(&sock))));
                }
                let deadline = send_timeout(&sock).map(|t| Instant::now() + t);
                self.park(li, n.id, sock, deadline, then)
            }
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    /// connect on a socket that already lives in the host's namespace: only to destinations
    /// the policy sends to the host.
    fn reconnect_host(
        &mut self,
        li: usize,
        n: &Notif,
        sock: OwnedFd,
        info: SockInfo,
        raw: &[u8],
    ) -> Answer {
        let dest = match decode_connect(raw, info.v6(), info.udp()) {
            Ok(d) => d,
            Err(e) => return Ok(Some(Reply::Error(e))),
        };
        let ino = inode(&sock);
        match dest {
            Dest::Unspec => {
                if let Some(ino) = ino {
                    self.peers.remove(ino);
                }
                self.connect_on(li, n, sock, info, raw, Then::Answer)
            }
            Dest::Inet(dst) => match self.policy.connect(normalize(dst)) {
                Route::Host(target) => {
                    if let Some(ino) = ino {
                        if normalize(dst) != normalize(target) {
                            self.peers.insert(ino, dst);
                        } else {
                            self.peers.remove(ino);
                        }
                    }
                    let raw = encode(&to_family(target, info.v6()));
                    self.connect_on(li, n, sock, info, raw.as_bytes(), Then::Answer)
                }
                Route::Tap => {
                    self.stats.refused += 1;
                    Ok(Some(Reply::Error(libc::ENETUNREACH)))
                }
                Route::Refuse(e) => {
                    self.stats.refused += 1;
                    Ok(Some(Reply::Error(e)))
                }
            },
        }
    }

    fn park(
        &mut self,
        li: usize,
        id: u64,
        sock: OwnedFd,
        deadline: Option<Instant>,
        then: Then,
    ) -> Answer {
        if self.pending.len() >= MAX_PENDING {
            return Ok(Some(Reply::Error(libc::EAGAIN)));
        }
        self.pending.insert(Pending {
            lst: li,
            id,
            sock,
            deadline,
            then,
        });
        Ok(None)
    }

    fn pending_ready(&mut self, i: usize, id: u64) {
        if self.pending.get(i).is_none_or(|p| p.id != id) {
            return; // answered and replaced earlier in this turn
        }
        let Some(p) = self.pending.try_remove(i) else {
            return;
        };
        let answer = match p.then {
            Then::Install(inst) => self.finish_install(p.lst, p.id, p.sock, inst),
            Then::Answer => Ok(Some(answer_of(take_error(&p.sock)))),
            Then::Send(job) => self.try_send(p.lst, p.id, p.sock, job, Some(p.deadline)),
        };
        self.finish(p.lst, p.id, answer);
    }

    /// `SO_SNDTIMEO` ran out: the kernel answers a blocking connect with `EINPROGRESS` and
    /// leaves it running; so do we (a bypassed socket is installed first).
    fn pending_timeout(&mut self, i: usize) {
        let Some(p) = self.pending.try_remove(i) else {
            return;
        };
        let answer = match p.then {
            Then::Install(inst) => self
                .install(p.lst, p.id, p.sock, &inst)
                .map(|()| Some(Reply::Error(libc::EINPROGRESS))),
            Then::Answer => Ok(Some(Reply::Error(libc::EINPROGRESS))),
            // A blocking send's SO_SNDTIMEO: EAGAIN, as the kernel says.
            Then::Send(_) => Ok(Some(Reply::Error(libc::EAGAIN))),
        };
        self.finish(p.lst, p.id, answer);
    }

    fn finish(&mut self, li: usize, id: u64, answer: Answer) {
        match answer {
            Ok(Some(r)) => self.respond(li, id, r),
            Ok(None) => {}
            Err(Fail::Gone) => self.gone(li, id),
            Err(Fail::Errno(e)) => self.respond(li, id, Reply::Error(e)),
            Err(Fail::Blind) => self.respond(li, id, Reply::Error(libc::EPERM)),
        }
    }

    // --- host sockets ---------------------------------------------------------------------

    /// A fresh host socket like `guest` (domain, type, protocol), with the options that differ
    /// from a fresh socket's copied over and, for a non-loopback `target`, `--outbound-addr`.
    fn host_socket(
        &mut self,
        guest: &OwnedFd,
        info: SockInfo,
        target: Option<SocketAddr>,
    ) -> Result<OwnedFd, Fail> {
        let host = seccomp::socket(info.domain, info.ty, info.proto)?;
        let key = (info.domain, info.ty, info.proto);
        let defaults = self
            .defaults
            .entry(key)
            .or_insert_with(|| read_options(&host, info));
        copy_options(guest, &host, info, defaults);
        if let Some(t) = target {
            if !t.ip().is_loopback() {
                self.bind_outbound(&host, info, t)?;
            }
        }
        Ok(host)
    }

    fn bind_outbound(
        &self,
        host: &OwnedFd,
        info: SockInfo,
        target: SocketAddr,
    ) -> Result<(), Fail> {
        let net = self.policy.net();
        let (addr, dev): (Option<IpAddr>, Option<&str>) = match target {
            SocketAddr::V4(_) => match &net.outbound4 {
                Some(Outbound::Addr(a)) => (Some((*a).into()), None),
                Some(Outbound::Device(d)) => (None, Some(d)),
                None => (None, None),
            },
            SocketAddr::V6(_) => match &net.outbound6 {
                Some(Outbound::Addr(a)) => (Some((*a).into()), None),
                Some(Outbound::Device(d)) => (None, Some(d)),
                None => (None, None),
            },
        };
        if let Some(a) = addr {
            let raw = encode(&to_family(SocketAddr::new(a, 0), info.v6()));
            seccomp::bind_raw(host.as_fd(), raw.as_bytes())?;
        }
        if let Some(d) = dev {
            seccomp::setsockopt_raw(
                host.as_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                d.as_bytes(),
            )?;
        }
        Ok(())
    }

    // --- bind, listen, getpeername ----------------------------------------------------------

    fn on_bind(&mut self, li: usize, n: &Notif) -> Answer {
        let len = n.args[2] as u32 as i32;
        if len < 0 || len as usize > SOCKADDR_MAX {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let pidfd = self.pidfd(n)?;
        let mut buf = [0u8; SOCKADDR_MAX];
        let raw = buf.get_mut(..len as usize).unwrap_or(&mut []);
        self.read(li, n, n.args[1], raw)?;
        let raw: &[u8] = raw;
        let Some((fd, sock, info)) = self.target_socket(li, n, Some(pidfd))? else {
            return Ok(Some(Reply::Continue));
        };
        if info.host {
            // Host sockets are bound by us (connect, publish); nothing else may bind them.
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let family_ok = bypass::family(raw)
            == Some(if info.v6() {
                libc::AF_INET6
            } else {
                libc::AF_INET
            } as u16);
        if info.tcp() && family_ok && !bound(&sock) {
            if let Some(local) = decode_inet(raw) {
                if let Some(host_addr) = self.policy.bind(normalize(local), info.v6()) {
                    return self.publish_bind(li, n, fd, &sock, info, host_addr);
                }
            }
        }
        Ok(Some(match seccomp::bind_raw(sock.as_fd(), raw) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)),
        }))
    }

    fn publish_bind(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        guest: &OwnedFd,
        info: SockInfo,
        host_addr: SocketAddr,
    ) -> Answer {
        let host = self.host_socket(guest, info, None)?;
        seccomp::bind_raw(host.as_fd(), encode(&host_addr).as_bytes())?;
        let cloexec = self.cloexec(li, n, fd)?;
        let inst = Install {
            newfd: fd,
            cloexec,
            nonblock: info.nonblock(),
            original: None,
        };
        self.install(li, n.id, host, &inst)?;
        self.stats.published += 1;
        tracing::debug!(
            "bypass: tid {} fd {fd}: bind served on host {host_addr}",
            n.tid
        );
        Ok(Some(Reply::Value(0)))
    }

    fn on_listen(&mut self, li: usize, n: &Notif) -> Answer {
        let backlog = n.args[1] as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if info.host {
            let mut name = [0u8; 128];
            let len = seccomp::getsockname_raw(sock.as_fd(), &mut name)?;
            let ok = decode_inet(name.get(..len).unwrap_or(&[]))
                .is_some_and(|a| self.policy.listen_ok(normalize(a)));
            if !ok {
                self.stats.refused += 1;
                return Ok(Some(Reply::Error(libc::EINVAL)));
            }
        }
        Ok(Some(match seccomp::listen(sock.as_fd(), backlog) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)),
        }))
    }

    fn on_getpeername(&mut self, li: usize, n: &Notif) -> Answer {
        if self.peers.is_empty() {
            return Ok(Some(Reply::Continue));
        }
        let fd = n.args[0] as i32;
        let sock = match self.getfd(li, n, fd, None) {
            Ok(s) => s,
            Err(Fail::Gone) => return Err(Fail::Gone),
            Err(_) => return Ok(Some(Reply::Continue)),
        };
        let Some(orig) = inode(&sock).and_then(|i| self.peers.get(i)) else {
            return Ok(Some(Reply::Continue));
        };
        // Still connected? Otherwise the kernel's answer (ENOTCONN) is the right one.
        if !connected(&sock) {
            return Ok(Some(Reply::Continue));
        }
        let mut lenb = [0u8; 4];
        self.read(li, n, n.args[2], &mut lenb)?;
        let len = i32::from_ne_bytes(lenb);
        if len < 0 {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let raw = encode(&orig);
        let bytes = raw.as_bytes();
        let k = bytes.len().min(len as usize);
        self.write(li, n.tid, n.id, n.args[1], bytes.get(..k).unwrap_or(&[]))?;
        self.write(
            li,
            n.tid,
            n.id,
            n.args[2],
            &(bytes.len() as u32).to_ne_bytes(),
        )?;
        Ok(Some(Reply::Value(0)))
    }

    // --- sends (UDP bypass) ------------------------------------------------------------------

    /// sendto with a destination. On an IP socket it is performed here with the address read
    /// once; on other sockets continued.
    fn on_sendto(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[3] as i32;
        let len = n.args[5] as u32 as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if len < 0 || len as usize > SOCKADDR_MAX {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let mut name = vec![0u8; len as usize];
        self.read(li, n, n.args[4], &mut name)?;
        let size = (n.args[2] as usize).min(max_send(info));
        let mut data = vec![0u8; size];
        self.read(li, n, n.args[1], &mut data)?;
        let job = SendJob {
            name: Some(name),
            data: vec![data],
            control: Vec::new(),
            flags,
            mmsg_len_at: None,
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    fn on_sendmsg(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[2] as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        let msg = self.read_msghdr(li, n, n.args[1], max_send(info))?;
        let job = SendJob {
            name: msg.name,
            data: msg.data,
            control: msg.control,
            flags,
            mmsg_len_at: None,
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    /// sendmmsg on an IP socket: the first message only (the kernel may send fewer than asked;
    /// the program sends the rest again), with its `msg_len` written back.
    fn on_sendmmsg(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[3] as i32;
        let vlen = n.args[2] as u32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if vlen == 0 {
            return Ok(Some(Reply::Value(0)));
        }
        let msg = self.read_msghdr(li, n, n.args[1], max_send(info))?;
        let job = SendJob {
            name: msg.name,
            data: msg.data,
            control: msg.control,
            flags,
            // struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; }
            mmsg_len_at: Some(n.args[1] + size_of_msghdr() as u64),
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    /// Read a `struct msghdr` and everything it points to (name, up to `max` bytes of data,
    /// control), once.
    fn read_msghdr(&self, li: usize, n: &Notif, addr: u64, max: usize) -> Result<MsgCopy, Fail> {
        let mut hdr = [0u8; 56];
        self.read(li, n, addr, &mut hdr)?;
        let u64_at = |o: usize| {
            hdr.get(o..o + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(0)
        };
        let u32_at = |o: usize| {
            hdr.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .unwrap_or(0)
        };
        // struct msghdr (LP64): name@0, namelen@8, iov@16, iovlen@24, control@32,
        // controllen@40, flags@48.
        let (name_p, name_len) = (u64_at(0), u32_at(8) as usize);
        let (iov_p, iov_len) = (u64_at(16), u64_at(24) as usize);
        let (ctl_p, ctl_len) = (u64_at(32), u64_at(40) as usize);
        let name = if name_p != 0 && name_len != 0 {
            if name_len > SOCKADDR_MAX {
                return Err(Fail::Errno(libc::EINVAL));
            }
            let mut b = vec![0u8; name_len];
            self.read(li, n, name_p, &mut b)?;
            Some(b)
        } else {
            None
        };
        if iov_len > MAX_IOV {
            return Err(Fail::Errno(libc::EMSGSIZE));
        }
        let mut iovs = vec![0u8; iov_len * 16];
        self.read(li, n, iov_p, &mut iovs)?;
        let mut data = Vec::new();
        let mut total = 0usize;
        for c in iovs.chunks_exact(16) {
            let base = u64::from_ne_bytes(c[..8].try_into().unwrap_or([0; 8]));
            let len = u64::from_ne_bytes(c[8..].try_into().unwrap_or([0; 8])) as usize;
            let take = len.min(max - total);
            if take == 0 {
                continue;
            }
            let mut b = vec![0u8; take];
            self.read(li, n, base, &mut b)?;
            total += take;
            data.push(b);
            if total >= max {
                break;
            }
        }
        let control = if ctl_p != 0 && ctl_len != 0 {
            if ctl_len > MAX_CONTROL {
                return Err(Fail::Errno(libc::ENOBUFS));
            }
            let mut b = vec![0u8; ctl_len];
            self.read(li, n, ctl_p, &mut b)?;
            b
        } else {
            Vec::new()
        };
        Ok(MsgCopy {
            name,
            data,
            control,
        })
    }

    /// Perform a send for the program on `sock` (its own socket or a host socket). On a host
    /// socket the destination is checked (only destinations the policy sends to the host) and
    /// re-encoded, never passed as the program wrote it; on a container socket it is passed as
    /// given (the kernel checks it there, in the container's namespace).
    fn send_as(
        &mut self,
        li: usize,
        id: u64,
        sock: OwnedFd,
        info: SockInfo,
        mut job: SendJob,
    ) -> Answer {
        if job.flags & libc::MSG_FASTOPEN != 0 && info.tcp() {
            return Ok(Some(Reply::Error(libc::EOPNOTSUPP)));
        }
        if info.host {
            job.name = match job.name.take() {
                // TCP ignores the address of a send (without MSG_FASTOPEN): pass none.
                _ if !info.udp() => None,
                None => None,
                Some(raw) => match bypass::decode_send(&raw, info.v6()) {
                    Ok(None) => None,
                    Ok(Some(dst)) => match self.policy.connect(normalize(dst)) {
                        Route::Host(t) => {
                            Some(encode(&to_family(t, info.v6())).as_bytes().to_vec())
                        }
                        Route::Tap => {
                            self.stats.refused += 1;
                            return Ok(Some(Reply::Error(libc::ENETUNREACH)));
                        }
                        Route::Refuse(e) => {
                            self.stats.refused += 1;
                            return Ok(Some(Reply::Error(e)));
                        }
                    },
                    Err(e) => return Ok(Some(Reply::Error(e))),
                },
            };
        }
        self.stats.sends += 1;
        let deadline = if info.nonblock() || job.flags & libc::MSG_DONTWAIT != 0 {
            None
        } else {
            Some(send_timeout(&sock).map(|t| Instant::now() + t))
        };
        self.try_send(li, id, sock, job, deadline)
    }

    /// One non-blocking attempt; a blocking socket without room waits in [`Pending`]
    /// (`deadline`: `None` = the program's socket is non-blocking; `Some(None)` = no timeout).
    fn try_send(
        &mut self,
        li: usize,
        id: u64,
        sock: OwnedFd,
        job: SendJob,
        deadline: Option<Option<Instant>>,
    ) -> Answer {
        let iov: Vec<IoSlice<'_>> = job.data.iter().map(|d| IoSlice::new(d)).collect();
        let r = seccomp::sendmsg_raw(
            sock.as_fd(),
            job.name.as_deref(),
            &iov,
            &job.control,
            job.flags | libc::MSG_DONTWAIT,
        );
        drop(iov);
        match r {
            Ok(k) => match job.mmsg_len_at {
                Some(at) => {
                    self.write(li, job.tid, id, at, &(k as u32).to_ne_bytes())?;
                    Ok(Some(Reply::Value(1)))
                }
                None => Ok(Some(Reply::Value(k as i64))),
            },
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => match deadline {
                Some(d) => self.park(li, id, sock, d, Then::Send(job)),
                None => Ok(Some(Reply::Error(libc::EAGAIN))),
            },
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    // --- OCI runtimes ---------------------------------------------------------------------

    fn oci_accept(&mut self) {
        let Some(srv) = &self.oci else {
            return;
        };
        loop {
            match srv.listener.accept() {
                Ok((stream, _)) => {
                    if self.oci_clients.len() >= MAX_OCI_CLIENTS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    self.oci_clients.insert(OciClient {
                        stream,
                        buf: Vec::new(),
                        fds: Vec::new(),
                        deadline: Instant::now() + OCI_TIMEOUT,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("bypass: accept on the seccomp listener socket: {e}");
                    return;
                }
            }
        }
    }

    fn oci_read(&mut self, i: usize) {
        let Some(c) = self.oci_clients.get_mut(i) else {
            return;
        };
        let mut chunk = vec![0u8; 64 * 1024];
        let (n, eof) = match seccomp::recv_with_fds(c.stream.as_fd(), &mut chunk, &mut c.fds) {
            Ok(n) => (n, n == 0),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return
            }
            Err(_) => (0, true),
        };
        c.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        let parsed = parse_state(&c.buf);
        if parsed.is_err() && !eof && c.buf.len() <= MAX_OCI_STATE {
            return; // wait for more
        }
        let Some(c) = self.oci_clients.try_remove(i) else {
            return;
        };
        match parsed {
            Ok(state) => {
                let mut fds = c.fds;
                let Some(idx) = state.seccomp_fd_index else {
                    tracing::warn!("bypass: container state names no \"seccompFd\"; ignored");
                    return;
                };
                if idx >= fds.len() {
                    tracing::warn!(
                        "bypass: container state names fd {idx} but {} came",
                        fds.len()
                    );
                    return;
                }
                let fd = fds.swap_remove(idx);
                let udp = state.metadata.as_deref() == Some(seccomp::profile_metadata(true));
                if state.metadata.as_deref() != Some(seccomp::profile_metadata(true))
                    && state.metadata.as_deref() != Some(seccomp::profile_metadata(false))
                {
                    tracing::warn!(
                        "bypass: container {}: its seccomp profile was not made by `tapwire seccomp-profile` (listenerMetadata {:?}); UDP stays on the tap",
                        state.id,
                        state.metadata
                    );
                }
                let name = format!("container {} (pid {})", state.id, state.pid);
                let sync = self.late_sync;
                self.add_listener(Listener::new(fd), udp, name, sync);
            }
            Err(e) => tracing::warn!("bypass: bad container state from an OCI runtime: {e}"),
        }
    }
}

/// The value of each [`OPTIONS`] entry on one socket (None: not applicable or unreadable).
type OptionValues = Vec<Option<Vec<u8>>>;

/// What `read_msghdr` copied.
struct MsgCopy {
    name: Option<Vec<u8>>,
    data: Vec<Vec<u8>>,
    control: Vec<u8>,
}

fn max_send(info: SockInfo) -> usize {
    if info.ty == libc::SOCK_STREAM {
        MAX_SEND_STREAM
    } else {
        MAX_SEND_DGRAM
    }
}

fn size_of_msghdr() -> usize {
    std::mem::size_of::<libc::msghdr>()
}

/// The container process state an OCI runtime sends (the parts we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub pid: i64,
    /// Position of "seccompFd" in `fds` (= in the SCM_RIGHTS array).
    pub seccomp_fd_index: Option<usize>,
    /// `listenerMetadata` from the profile.
    pub metadata: Option<String>,
}

/// Parse the runtime's JSON (`{"ociVersion", "fds": [..], "pid", "metadata", "state": {..}}`).
pub fn parse_state(bytes: &[u8]) -> Result<ContainerState, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let fds = v
        .get("fds")
        .and_then(|f| f.as_array())
        .ok_or("no \"fds\" array")?;
    let seccomp_fd_index = fds.iter().position(|f| f.as_str() == Some("seccompFd"));
    let pid = v
        .get("pid")
        .and_then(|p| p.as_i64())
        .or_else(|| v.pointer("/state/pid").and_then(|p| p.as_i64()))
        .unwrap_or(0);
    let id = v
        .pointer("/state/id")
        .and_then(|s| s.as_str())
        .unwrap_or("?")
        .to_owned();
    let metadata = v
        .get("metadata")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    Ok(ContainerState {
        id,
        pid,
        seccomp_fd_index,
        metadata,
    })
}

// --- small socket helpers --------------------------------------------------------------------

/// `poll(fd, POLLOUT, 0)`: a connect that finished at once (loopback usually does).
fn ready_now(sock: &OwnedFd) -> bool {
    let mut p = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// `SO_ERROR` (clears it).
fn take_error(sock: &OwnedFd) -> i32 {
    seccomp::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
        .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn answer_of(err: i32) -> Reply {
    if err == 0 {
        Reply::Value(0)
    } else {
        Reply::Error(err)
    }
}

/// The socket's `SO_SNDTIMEO`, if set: a blocking connect gives up after it.
fn send_timeout(sock: &OwnedFd) -> Option<Duration> {
    let mut tv = [0u8; 16];
    let n =
        seccomp::getsockopt_raw(sock.as_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &mut tv).ok()?;
    if n < 16 {
        return None;
    }
    let sec = i64::from_ne_bytes(tv[..8].try_into().ok()?);
    let usec = i64::from_ne_bytes(tv[8..].try_into().ok()?);
    let d = Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.max(0) as u64);
    (!d.is_zero()).then_some(d)
}

fn inode(fd: &OwnedFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino)
}

/// Whether the socket is bound to a local port (explicitly, or by an earlier connect/send).
fn bound(sock: &OwnedFd) -> bool {
    let mut name = [0u8; 128];
    seccomp::getsockname_raw(sock.as_fd(), &mut name)
        .ok()
        .and_then(|n| decode_inet(name.get(..n).unwrap_or(&[])))
        .is_some_and(|a| a.port() != 0)
}

/// Whether the socket has a peer (is connected).
fn connected(sock: &OwnedFd) -> bool {
    nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(sock.as_raw_fd()).is_ok()
}

/// Which sockets an option is carried for (besides its level: TCP options for TCP...).
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    Any,
    Stream,
    Dgram,
}
use For::{Any, Dgram, Stream};

/// Socket options carried from the container's socket to the host socket: (level, name,
/// bytes, sockets). Buffer sizes are reported doubled by the kernel and set halved. Left out:
/// SO_MARK and SO_BINDTODEVICE (they name things of the container's namespace), TCP_REPAIR,
/// TCP_FASTOPEN_CONNECT (the supervisor performs the connect), filters (not readable).
/// Every connect reads each applicable one (one getsockopt each): the list is what matters,
/// not everything that exists.
const OPTIONS: &[(i32, i32, usize, For)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4, Any),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4, Any),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4, Any),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8, Any),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, 4, Any),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, 4, Any),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16, Any),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16, Any),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4, Stream),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, 4, Any),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4, Any),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 4, Dgram),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_CORK, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 4, Any),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16, Any),
    (libc::IPPROTO_IP, libc::IP_TOS, 4, Any),
    (libc::IPPROTO_IP, libc::IP_TTL, 4, Any),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, 4, Any),
    (libc::IPPROTO_IP, libc::IP_RECVERR, 4, Any),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 4, Any),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 4, Dgram),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 4, Any),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 4, Dgram),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 4, Dgram),
    (libc::IPPROTO_UDP, libc::UDP_SEGMENT, 4, Any),
    (libc::IPPROTO_UDP, libc::UDP_GRO, 4, Any),
    (libc::IPPROTO_UDP, libc::UDP_CORK, 4, Any),
];

/// Whether option `(level, _, _, for)` applies to a socket like `info`.
fn applies(level: i32, only: For, info: SockInfo) -> bool {
    let level_ok = match level {
        libc::IPPROTO_TCP => info.tcp(),
        libc::IPPROTO_UDP => info.udp(),
        libc::IPPROTO_IPV6 => info.v6(),
        _ => true,
    };
    level_ok
        && match only {
            Any => true,
            Stream => info.ty == libc::SOCK_STREAM,
            Dgram => info.ty == libc::SOCK_DGRAM,
        }
}

/// The value of every applicable option of `sock` (None: not applicable or unreadable).
fn read_options(sock: &OwnedFd, info: SockInfo) -> OptionValues {
    OPTIONS
        .iter()
        .map(|&(level, name, size, only)| {
            if !applies(level, only, info) {
                return None;
            }
            let mut b = vec![0u8; size];
            let n = seccomp::getsockopt_raw(sock.as_fd(), level, name, &mut b).ok()?;
            b.truncate(n);
            Some(b)
        })
        .collect()
}

/// Set on `host` every option of `guest` that differs from a fresh socket's (`defaults`).
/// Failures are ignored: an option the host refuses (e.g. SO_MARK without privileges) is one
/// the container's namespace granted but the host does not.
fn copy_options(guest: &OwnedFd, host: &OwnedFd, info: SockInfo, defaults: &[Option<Vec<u8>>]) {
    let mut b = [0u8; 16];
    for (i, &(level, name, size, only)) in OPTIONS.iter().enumerate() {
        if !applies(level, only, info) {
            continue;
        }
        let Some(buf) = b.get_mut(..size) else {
            continue;
        };
        let Ok(n) = seccomp::getsockopt_raw(guest.as_fd(), level, name, buf) else {
            continue;
        };
        let val = buf.get(..n).unwrap_or(&[]);
        if defaults.get(i).and_then(|d| d.as_deref()) == Some(val) {
            continue;
        }
        let r = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_RCVBUF) | (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
                let v = i32::from_ne_bytes(val.try_into().unwrap_or([0; 4])) / 2;
                seccomp::setsockopt_raw(host.as_fd(), level, name, &v.to_ne_bytes())
            }
            (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                let end = val.iter().position(|&c| c == 0).unwrap_or(val.len());
                seccomp::setsockopt_raw(host.as_fd(), level, name, val.get(..end).unwrap_or(&[]))
            }
            _ => seccomp::setsockopt_raw(host.as_fd(), level, name, val),
        };
        if let Err(e) = r {
            tracing::debug!("bypass: option ({level}, {name}) not carried to the host socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_state_is_parsed() {
        let json = br#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":4242,"metadata":"tapwire-bypass-v1 udp","state":{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":4242,"bundle":"/b","annotations":{}}}"#;
        let s = parse_state(json).unwrap();
        assert_eq!(s.id, "c1");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.seccomp_fd_index, Some(0));
        assert_eq!(s.metadata.as_deref(), Some("tapwire-bypass-v1 udp"));
        let s =
            parse_state(br#"{"fds":["other","seccompFd"],"state":{"id":"x","pid":7}}"#).unwrap();
        assert_eq!((s.seccomp_fd_index, s.pid), (Some(1), 7));
        assert_eq!(
            parse_state(br#"{"fds":[]}"#).unwrap().seccomp_fd_index,
            None
        );
        assert!(parse_state(b"{").is_err());
        assert!(parse_state(br#"{"pid":1}"#).is_err());
        assert!(parse_state(b"").is_err());
    }

    #[test]
    fn options_table_has_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for &(l, n, s, _) in OPTIONS {
            assert!(seen.insert((l, n)), "({l}, {n}) twice");
            assert!(s <= 16);
        }
    }
}
