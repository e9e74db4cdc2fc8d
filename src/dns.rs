//! The DNS forwarder's upstream: nameservers from the host's resolv.conf (sans-IO parsing).
//!
//! # Theory of operation
//! Queries the guest sends to network+3 (UDP and TCP, port 53) are relayed, unchanged, to the
//! current nameserver of the host's `/etc/resolv.conf` (the first, until it fails); the UDP and
//! TCP proxies do the relaying
//! as ordinary flows (see `nat`), so replies need no DNS parsing at all and a resolver on host
//! loopback (127.0.0.53, a dnsmasq on 127.0.0.1) works as any other. [`Resolver`] re-reads the
//! file when its modification time changes (checked at most once a second), so a host that
//! switches networks is followed without a restart.
//!
//! Failover: when the current nameserver refuses (ICMP port unreachable on UDP, a refused TCP
//! connect: typically a local resolver that is not running), [`Resolver::failed`] moves to
//! the next one in the file, and the engine re-sends the pending UDP query there, so the
//! guest sees no error. A changed file starts again from its first nameserver.
//!
//! Limits: a nameserver that stays silent (no refusal) is not detected; the guest's own
//! retries go to the same one (libslirp does no better).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

/// Nameserver addresses in resolv.conf text, in order. IPv6 zone suffixes (`%eth0`) are
/// dropped; malformed lines are ignored.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let addr = words.next()?;
            let addr = addr.split('%').next().unwrap_or(addr);
            addr.parse().ok()
        })
        .collect()
}

/// The upstream nameserver, tracked from a resolv.conf file.
#[derive(Debug)]
pub struct Resolver {
    path: PathBuf,
    servers: Vec<IpAddr>,
    /// Index of the nameserver in use.
    current: usize,
    mtime: Option<SystemTime>,
    checked_ms: Option<u64>,
}

impl Resolver {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Resolver {
            path: path.into(),
            servers: Vec::new(),
            current: 0,
            mtime: None,
            checked_ms: None,
        }
    }

    /// A resolver with a fixed list (tests, or a configured upstream).
    pub fn fixed(servers: Vec<IpAddr>) -> Self {
        Resolver {
            path: PathBuf::new(),
            servers,
            current: 0,
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
        self.current()
    }

    fn current(&self) -> Option<SocketAddr> {
        self.servers
            .get(self.current)
            .map(|ip| SocketAddr::new(*ip, 53))
    }

    /// `server` refused a query: if it is the one in use, move to the next nameserver
    /// (wrapping around). Returns the nameserver to use now, if it differs from `server`.
    pub fn failed(&mut self, server: IpAddr) -> Option<SocketAddr> {
        if self.servers.get(self.current) == Some(&server) {
            self.current = (self.current + 1) % self.servers.len();
            tracing::info!(
                "nameserver {server} refused a query; using {:?} from now on",
                self.servers.get(self.current)
            );
        }
        self.current().filter(|next| next.ip() != server)
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
                self.servers = parse_resolv_conf(&text);
                self.current = 0;
                tracing::debug!(servers = ?self.servers, path = %self.path.display(), "nameservers loaded");
            }
            Err(e) => {
                tracing::warn!(
                    "reading {}: {e}; DNS forwarding has no upstream",
                    self.path.display()
                );
                self.servers.clear();
                self.current = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let text = "# comment\nsearch tapwire.test\nnameserver 127.0.0.53\n  nameserver\t::1 # local\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
        assert!(parse_resolv_conf("nameserver").is_empty());
    }

    #[test]
    fn fixed_resolver() {
        let mut r = Resolver::fixed(vec!["10.1.1.1".parse().unwrap()]);
        assert_eq!(r.upstream(0), Some("10.1.1.1:53".parse().unwrap()));
        let mut none = Resolver::fixed(vec![]);
        assert_eq!(none.upstream(0), None);
    }

    #[test]
    fn failover_moves_to_the_next_and_wraps() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut r = Resolver::fixed(vec![ip("127.0.0.53"), ip("10.1.1.1"), ip("::1")]);
        assert_eq!(r.upstream(0), Some("127.0.0.53:53".parse().unwrap()));
        // A refusal from a server not in use changes nothing.
        assert_eq!(
            r.failed(ip("10.9.9.9")),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            r.failed(ip("127.0.0.53")),
            Some("10.1.1.1:53".parse().unwrap())
        );
        assert_eq!(r.upstream(5), Some("10.1.1.1:53".parse().unwrap()));
        assert_eq!(r.failed(ip("10.1.1.1")), Some("[::1]:53".parse().unwrap()));
        assert_eq!(r.failed(ip("::1")), Some("127.0.0.53:53".parse().unwrap()));
        // One server only: nowhere else to go.
        let mut one = Resolver::fixed(vec![ip("127.0.0.53")]);
        assert_eq!(one.failed(ip("127.0.0.53")), None);
        assert_eq!(one.upstream(0), Some("127.0.0.53:53".parse().unwrap()));
        let mut none = Resolver::fixed(vec![]);
        assert_eq!(none.failed(ip("127.0.0.53")), None);
    }

    #[test]
    fn missing_file_has_no_upstream() {
        let mut r = Resolver::new("/nonexistent/resolv.conf");
        assert_eq!(r.upstream(0), None);
    }
}
