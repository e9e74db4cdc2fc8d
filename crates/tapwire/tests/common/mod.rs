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
//!
//! Layout: `preflight` (root, tools, skip policy), `process` (spawning with deadlines), `netns`
//! (HostNs, Guest, Peer), `daemon` (the binary under test), `traffic` (random data, SHA-256 via
//! `sha2`, checked transfers), `dns` (A queries), all re-exported here; per-suite helpers in
//! `api`, `tap_mode`, `hardening`, `bypass` and `ipv6`, imported explicitly by those suites.
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

pub mod api;
pub mod bypass;
mod daemon;
mod dns;
pub mod hardening;
pub mod ipv6;
mod netns;
pub mod podman;
mod preflight;
mod process;
pub mod tap_mode;
mod traffic;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use self::{daemon::*, dns::*, netns::*, preflight::*, process::*, traffic::*};
