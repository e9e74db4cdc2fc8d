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
//!
//! ## Files
//! This file holds the thread: the poll set, dispatch by call, answering, parking calls in
//! progress. One `impl Supervisor` block per concern lives beside it: [`target`] (the trapped
//! thread: its fds, memory and sockets), [`connect`], [`bind`] (bind, listen, getpeername),
//! [`send`] (sendto/sendmsg/sendmmsg), [`route`] (the namespace's own routes), [`sockopt`] (what a socket is, the options carried to a
//! host socket) and [`oci`] (the OCI runtimes' socket and the profile they are given).
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

#![forbid(unsafe_code)]

mod bind;
mod connect;
pub mod oci;
mod route;
mod send;
mod sockopt;
mod target;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use slab::Slab;

use crate::bypass::notify::{self, Listener, Notif, Reply};
use crate::bypass::rules::{self, Call};
use crate::bypass::{DaemonOptions, Options};
use crate::sys::pidfd::ProcFs;
use crate::sys::socket;
use tapwire_proto::bypass::{PeerTable, Policy, Stats};

pub use oci::{parse_state, print_profile, ContainerState, OciServer};

use connect::Install;
use oci::OciClient;
use send::SendJob;
use sockopt::{take_error, OptionValues};

/// Calls in progress at once, over all listeners.
pub const MAX_PENDING: usize = 4096;
/// getpeername entries remembered.
pub const MAX_PEERS: usize = 65_536;

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

/// `tapwire run --bypass`: the supervisor for the command's listener.
pub fn prepare_run(opts: Options<'_>) -> Result<Prepared, SupervisorError> {
    let policy = Policy::new(opts.net, opts.ignore, opts.publish);
    prepare(policy, None)
}

/// The daemon's `--seccomp-listener PATH`.
pub fn prepare_daemon(opts: &DaemonOptions<'_>) -> Result<Prepared, SupervisorError> {
    if opts.sandbox {
        return Err(SupervisorError::Conflict(
            "--seccomp-listener cannot be combined with --enable-sandbox yet: serving a \
             container's seccomp listener needs ptrace rights over its processes \
             (CAP_SYS_PTRACE, or capabilities that cover the container's), which the sandbox drops",
        ));
    }
    let o = opts.bypass;
    let policy = Policy::new(o.net, o.ignore, o.publish);
    let mut prep = prepare(policy, Some(opts.listener_path))?;
    prep.late_sync = !opts.seccomp;
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
    notify::check_notif_sizes()
        .map_err(|e| SupervisorError::Unsupported(format!("seccomp user notification: {e}")))?;
    let probe = socket::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
        .map_err(|e| SupervisorError::Unsupported(format!("socket: {e}")))?;
    let host_cookie = socket::netns_cookie(probe.as_fd()).map_err(|e| {
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
    /// The supervisor's `/proc` fd (pinned in the daemon's filter).
    pub fn proc_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.proc.as_fd().as_raw_fd()
    }

    /// The runtimes' socket file, to remove at exit if still ours (the thread owning the
    /// socket is never joined).
    pub fn oci_socket(&self) -> Option<crate::sys::unix_listener::BoundPath> {
        self.oci.as_ref().map(OciServer::bound)
    }

    /// Start the supervisor thread for run mode's command: its listener, whether the filter
    /// traps sends (then UDP is bypassed too), and its namespace's route probe
    /// ([`crate::netns::Supervised::route`]).
    pub fn spawn(
        self,
        listener: OwnedFd,
        udp: bool,
        route: Option<(OwnedFd, u32)>,
    ) -> Result<std::thread::JoinHandle<()>, SupervisorError> {
        let mut sup = Supervisor::new(self);
        if route.is_none() {
            tracing::warn!(
                "bypass: no route probe in the command's namespace; its own routes (a VPN's) are not consulted"
            );
        }
        let route = route.map(|(fd, index)| route::RouteProbe::new(fd, index));
        sup.add_listener(
            Listener::new(listener),
            udp,
            "the command".to_owned(),
            true,
            route,
        );
        sup.start()
    }

    /// Start the supervisor thread with no listener yet: OCI runtimes bring theirs over
    /// `--seccomp-listener`.
    pub fn spawn_oci(self) -> Result<std::thread::JoinHandle<()>, SupervisorError> {
        Supervisor::new(self).start()
    }
}

impl Supervisor {
    fn start(self) -> Result<std::thread::JoinHandle<()>, SupervisorError> {
        let sup = self;
        std::thread::Builder::new()
            .name("tapwire-bypass".to_owned())
            .spawn(move || sup.run())
            .map_err(SupervisorError::Thread)
    }
}

/// One seccomp listener.
struct HostListener {
    fd: Listener,
    /// The filter traps sends with an address: UDP may be bypassed.
    udp: bool,
    name: String,
    /// A host socket was installed in one of its processes at least once.
    installed: bool,
    /// Run mode: asks the command's namespace where a destination goes ([`route`]).
    route: Option<route::RouteProbe>,
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

/// A call in progress.
struct Pending {
    lst: usize,
    id: u64,
    sock: OwnedFd,
    deadline: Option<Instant>,
    then: Then,
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

struct Supervisor {
    policy: Policy,
    proc: ProcFs,
    host_cookie: u64,
    listeners: Slab<HostListener>,
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

    fn add_listener(
        &mut self,
        fd: Listener,
        udp: bool,
        name: String,
        sync: bool,
        route: Option<route::RouteProbe>,
    ) {
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
        self.listeners.insert(HostListener {
            fd,
            udp,
            name,
            installed: false,
            route,
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

    fn on_notif(&mut self, li: usize, n: Notif) {
        self.stats.notifications += 1;
        let answer = if !rules::is_native(n.arch, n.nr) {
            Ok(Some(Reply::Error(libc::ENOSYS)))
        } else {
            match rules::classify(n.nr) {
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
                    rules::call_name(n.nr),
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
}

fn answer_of(err: i32) -> Reply {
    if err == 0 {
        Reply::Value(0)
    } else {
        Reply::Error(err)
    }
}
