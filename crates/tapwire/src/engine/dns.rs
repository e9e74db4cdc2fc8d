//! The DNS forwarder's upstream, read from the host's resolv.conf.
//!
//! # Theory of operation
//! [`Resolver`] owns the file side of [`tapwire_proto::dns`]: it re-reads the file when its
//! modification time changes (checked at most once a second of the engine's clock), so a host
//! that switches networks is followed without a restart, and leaves the choice of nameserver
//! and the failover to [`Upstreams`]. [`is_dns`] tells which guest destinations are the
//! forwarder (the engine maps them to the current upstream; see `host`).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use tapwire_proto::config::NetConfig;
use tapwire_proto::destination::{self, Kind};
use tapwire_proto::dns::{parse_resolv_conf, Upstreams};

/// Whether the guest sent this to our DNS forwarder (network+3 or PREFIX::3, port 53, in any
/// spelling: `::ffff:10.0.2.3` is the forwarder too, see `tapwire_proto::destination`).
pub fn is_dns(net: &NetConfig, dst: SocketAddr) -> bool {
    let family_on = dst.is_ipv4() || net.enable_ipv6;
    family_on
        && dst.port() == 53
        && !net.disable_dns
        && destination::classify(net, dst.ip()).kind == Kind::Dns
}

/// The upstream nameserver, tracked from a resolv.conf file.
#[derive(Debug)]
pub struct Resolver {
    path: PathBuf,
    upstreams: Upstreams,
    mtime: Option<SystemTime>,
    checked_ms: Option<u64>,
}

impl Resolver {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Resolver {
            path: path.into(),
            upstreams: Upstreams::default(),
            mtime: None,
            checked_ms: None,
        }
    }

    /// A resolver with a fixed list (tests, or a configured upstream).
    pub fn fixed(servers: Vec<IpAddr>) -> Self {
        Resolver {
            path: PathBuf::new(),
            upstreams: Upstreams::new(servers),
            mtime: None,
            checked_ms: Some(u64::MAX),
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

    fn reload(&mut self) {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime == self.mtime {
            return;
        }
        self.mtime = mtime;
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
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
