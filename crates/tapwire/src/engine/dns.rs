//! The DNS forwarder's upstream, read from the host's resolv.conf.
//!
//! # Theory of operation
//! [`Resolver`] owns the file side of [`tapwire_proto::dns`]: it re-reads the file when it
//! changes (its inode, modification time or size; checked at most once a second of the
//! engine's clock), so a host that switches networks is followed without a restart, also
//! inside the sandbox: there `/etc/resolv.conf` is a bind mount of the file's inode, which a
//! replacement by rename (NetworkManager, systemd-resolved) leaves behind unlinked, so the
//! resolver also holds the real directory open (`O_PATH`, taken before the sandbox; the old
//! root stays reachable through it) and reads the file by name there whenever the path leads
//! to an unlinked file, and leaves the choice of nameserver
//! and the failover to [`Upstreams`] (on a refusal, or on silence: `Engine::dns_timeouts`
//! re-sends a query unanswered after `QUERY_TIMEOUT_MS` to the next nameserver). [`is_dns`] tells which guest destinations are the
//! forwarder (the engine maps them to the current upstream; see `host`).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;

use tapwire_proto::config::NetConfig;
use tapwire_proto::destination::{self, Kind};
use tapwire_proto::dns::{parse_resolv_conf, Pending, Upstreams};

use super::udp::UdpKey;
use super::Engine;

/// Whether the guest sent this to our DNS forwarder (network+3 or PREFIX::3, port 53, in any
/// spelling: `::ffff:10.0.2.3` is the forwarder too, see `tapwire_proto::destination`).
pub fn is_dns(net: &NetConfig, dst: SocketAddr) -> bool {
    let family_on = dst.is_ipv4() || net.enable_ipv6;
    family_on
        && dst.port() == 53
        && !net.disable_dns
        && destination::classify(net, dst.ip()).kind == Kind::Dns
}

impl Engine {
    /// The directory fd the resolver reads a renamed resolv.conf through: the seccomp filter
    /// must let `openat` use it (`confine::pins::Pins::read_dirs`).
    pub fn pinned_read_dirs(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let watch = self.host.resolver.watch.as_ref();
        watch.map(|(dir, _)| dir.as_raw_fd()).into_iter().collect()
    }
}

/// The upstream nameserver, tracked from a resolv.conf file.
#[derive(Debug)]
pub struct Resolver {
    path: PathBuf,
    /// The file's real directory (opened at start, before any sandbox) and name, to find a
    /// replacement by name where `path` no longer leads to it.
    watch: Option<(OwnedFd, OsString)>,
    upstreams: Upstreams,
    /// (device, inode, modification time, size) of the contents in use.
    key: Option<FileKey>,
    missing_warned: bool,
    checked_ms: Option<u64>,
    /// UDP queries relayed and not answered yet (a silent nameserver fails over).
    pub(super) pending: Pending<UdpKey>,
}

type FileKey = (u64, u64, Option<SystemTime>, u64);

impl Resolver {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let watch = watch_dir(&path);
        Resolver {
            path,
            watch,
            upstreams: Upstreams::default(),
            key: None,
            missing_warned: false,
            checked_ms: None,
            pending: Pending::default(),
        }
    }

    /// A resolver with a fixed list (tests, or a configured upstream).
    pub fn fixed(servers: Vec<IpAddr>) -> Self {
        Resolver {
            path: PathBuf::new(),
            watch: None,
            upstreams: Upstreams::new(servers),
            key: None,
            missing_warned: false,
            checked_ms: Some(u64::MAX),
            pending: Pending::default(),
        }
    }

    /// The current nameserver's port 53, re-reading the file if it changed (at most once a
    /// second of `now_ms`).
    pub fn upstream(&mut self, now_ms: u64) -> Option<SocketAddr> {
        let due = match self.checked_ms {
            None => true,
            Some(u64::MAX) => false,
            Some(t) => now_ms.saturating_sub(t) >= 1000,
        };
        if due {
            self.checked_ms = Some(now_ms);
            self.reload();
        }
        self.upstreams.current()
    }

    /// `server` refused a query; see [`Upstreams::failed`].
    pub fn failed(&mut self, server: IpAddr) -> Option<SocketAddr> {
        self.upstreams.failed(server)
    }

    /// The live file: `path`, unless what it leads to has been unlinked (the sandbox's bind
    /// mount of a file replaced by rename on the host), then the same name in the directory
    /// opened at start.
    fn open_live(&self) -> Option<File> {
        if let Ok(f) = File::open(&self.path) {
            if f.metadata().is_ok_and(|m| m.nlink() > 0) {
                return Some(f);
            }
        }
        let (dir, name) = self.watch.as_ref()?;
        let fd = openat(
            dir,
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(File::from(fd))
    }

    fn reload(&mut self) {
        let Some(mut file) = self.open_live() else {
            if !self.missing_warned {
                tracing::warn!(
                    "reading {}: not found; DNS forwarding has no upstream",
                    self.path.display()
                );
                self.missing_warned = true;
            }
            self.key = None;
            self.upstreams.set(Vec::new());
            return;
        };
        self.missing_warned = false;
        let key = file
            .metadata()
            .ok()
            .map(|m| (m.dev(), m.ino(), m.modified().ok(), m.len()));
        if key.is_some() && key == self.key {
            return;
        }
        self.key = key;
        let mut text = String::new();
        match file.read_to_string(&mut text) {
            Ok(_) => {
                self.upstreams.set(parse_resolv_conf(&text));
                tracing::debug!(servers = ?self.upstreams.servers(), path = %self.path.display(), "nameservers loaded");
            }
            Err(e) => {
                tracing::warn!(
                    "reading {}: {e}; DNS forwarding has no upstream",
                    self.path.display()
                );
                self.upstreams.set(Vec::new());
            }
        }
    }
}

/// The real directory of `path` (symlinks resolved) opened `O_PATH`, and the file's name in it.
fn watch_dir(path: &Path) -> Option<(OwnedFd, OsString)> {
    let real = std::fs::canonicalize(path).ok().or_else(|| {
        let dir = std::fs::canonicalize(path.parent()?).ok()?;
        Some(dir.join(path.file_name()?))
    })?;
    let name = real.file_name()?.to_os_string();
    let dir = open(
        real.parent()?,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some((dir, name))
}

impl Engine {
    /// Fail over the UDP queries no nameserver answered in time (from the once-a-second
    /// sweep): the binding moves to the next nameserver and re-sends the query, whose clock
    /// starts again.
    pub(super) fn dns_timeouts(&mut self, now_ms: u64) {
        while let Some(key) = self.host.resolver.pending.expired(now_ms) {
            let Some(idx) = self.udp.find(&key) else {
                continue;
            };
            if self.dns_failover(idx) {
                self.host.resolver.pending.sent(key, now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarder_in_every_spelling() {
        let net = NetConfig {
            enable_ipv6: true,
            ..Default::default()
        };
        let dns = |s: &str| is_dns(&net, s.parse().unwrap());
        assert!(dns("10.0.2.3:53"));
        assert!(dns("[::ffff:10.0.2.3]:53"));
        assert!(dns("[fd00::3]:53"));
        assert!(!dns("10.0.2.3:54"));
        assert!(!dns("10.0.2.2:53"));
        assert!(!dns("[::ffff:127.0.0.1]:53"));
        let v4only = NetConfig::default();
        assert!(!is_dns(&v4only, "[fd00::3]:53".parse().unwrap()));
        assert!(is_dns(&v4only, "10.0.2.3:53".parse().unwrap()));
    }

    #[test]
    fn fixed_resolver() {
        let mut r = Resolver::fixed(vec!["10.1.1.1".parse().unwrap()]);
        assert_eq!(r.upstream(0), Some("10.1.1.1:53".parse().unwrap()));
        let mut none = Resolver::fixed(vec![]);
        assert_eq!(none.upstream(0), None);
    }

    #[test]
    fn missing_file_has_no_upstream() {
        let mut r = Resolver::new("/nonexistent/resolv.conf");
        assert_eq!(r.upstream(0), None);
    }

    #[test]
    fn follows_the_file() {
        let dir = std::env::temp_dir().join(format!("tapwire-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 10.1.1.1\n").unwrap();
        let mut r = Resolver::new(&path);
        assert_eq!(r.upstream(0), Some("10.1.1.1:53".parse().unwrap()));
        std::fs::write(&path, "nameserver 10.2.2.2\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        // Not re-read within the second; re-read after it.
        assert_eq!(r.upstream(500), Some("10.1.1.1:53".parse().unwrap()));
        assert_eq!(r.upstream(1500), Some("10.2.2.2:53".parse().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
