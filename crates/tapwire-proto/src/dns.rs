//! DNS upstreams, sans I/O: the nameservers of a resolv.conf text and failover among them.
//!
//! # Theory of operation
//! Queries the guest sends to network+3 (UDP and TCP, port 53) are relayed, unchanged, to the
//! current nameserver of the host's `/etc/resolv.conf` (the first, until it fails); the UDP and
//! TCP proxies do the relaying as ordinary flows (see [`crate::nat`]), so replies need no DNS
//! parsing at all and a resolver on host loopback (127.0.0.53, a dnsmasq on 127.0.0.1) works as
//! any other. The daemon's `engine::dns::Resolver` reads the file and hands its text to
//! [`parse_resolv_conf`] and [`Upstreams::set`] when the file's modification time changes.
//!
//! Failover: when the current nameserver refuses (ICMP port unreachable on UDP, a refused TCP
//! connect: typically a local resolver that is not running), [`Upstreams::failed`] moves to
//! the next one in the file, and the engine re-sends the pending UDP query there, so the
//! guest sees no error. A changed file starts again from its first nameserver.
//!
//! A nameserver that stays silent fails over too: [`Pending`] remembers when each binding's
//! query went out (a guest's retry keeps the first time); a query unanswered after
//! [`QUERY_TIMEOUT_MS`] counts as a failure of that nameserver, and the query is re-sent to
//! the next one (libslirp keeps sending to the silent one). Limits: TCP queries only fail over
//! on a refused connect.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// How long a relayed UDP query may go unanswered before its nameserver counts as failed
/// (the guest's resolver waits 5 s by default before retrying; we are checked once a second).
pub const QUERY_TIMEOUT_MS: u64 = 2_000;
/// Most queries tracked at once (the oldest is forgotten: it then just gets no failover).
pub const PENDING_MAX: usize = 256;

/// Nameserver addresses in resolv.conf text, in order, in the form the host kernel uses
/// (`::ffff:127.0.0.53` is 127.0.0.53: [`crate::destination::host_form`], so that failover
/// recognises the refusing socket's peer and loopback upstreams are known as such). IPv6 zone
/// suffixes (`%eth0`) are dropped; malformed lines are ignored.
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
            addr.parse().ok().map(crate::destination::host_form)
        })
        .collect()
}

/// The nameservers in order and the one in use.
#[derive(Debug, Default, Clone)]
pub struct Upstreams {
    servers: Vec<IpAddr>,
    /// Index of the nameserver in use.
    current: usize,
}

impl Upstreams {
    pub fn new(servers: Vec<IpAddr>) -> Self {
        Upstreams {
            servers,
            current: 0,
        }
    }

    /// A new list (the file changed): start again from its first nameserver.
    pub fn set(&mut self, servers: Vec<IpAddr>) {
        self.servers = servers;
        self.current = 0;
    }

    pub fn servers(&self) -> &[IpAddr] {
        &self.servers
    }

    /// The current nameserver's port 53.
    pub fn current(&self) -> Option<SocketAddr> {
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
                "nameserver {server} refused or did not answer a query; using {:?} from now on",
                self.servers.get(self.current)
            );
        }
        self.current().filter(|next| next.ip() != server)
    }
}

/// Relayed queries not answered yet, by binding (`K`), oldest first.
#[derive(Debug, Clone)]
pub struct Pending<K> {
    queue: VecDeque<(K, u64)>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            queue: VecDeque::new(),
        }
    }
}

impl<K: PartialEq + Copy> Pending<K> {
    /// A query of binding `key` went out at `now_ms`; if one is already waiting, its time
    /// stands (a retry does not restart the clock).
    pub fn sent(&mut self, key: K, now_ms: u64) {
        if self.queue.iter().any(|(k, _)| *k == key) {
            return;
        }
        if self.queue.len() >= PENDING_MAX {
            self.queue.pop_front();
        }
        self.queue.push_back((key, now_ms));
    }

    /// Binding `key` got an answer.
    pub fn answered(&mut self, key: K) {
        if let Some(i) = self.queue.iter().position(|(k, _)| *k == key) {
            self.queue.remove(i);
        }
    }

    /// The next binding whose query has waited [`QUERY_TIMEOUT_MS`] at `now_ms` (removed).
    pub fn expired(&mut self, now_ms: u64) -> Option<K> {
        match self.queue.front() {
            Some(&(k, t)) if now_ms.saturating_sub(t) >= QUERY_TIMEOUT_MS => {
                self.queue.pop_front();
                Some(k)
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
        assert_eq!(
            parse_resolv_conf("nameserver ::ffff:127.0.0.53\nnameserver ::10.1.1.1\nnameserver 64:ff9b::a01:101\n"),
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "10.1.1.1".parse().unwrap(),
                "64:ff9b::a01:101".parse().unwrap()
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
        assert!(parse_resolv_conf("nameserver").is_empty());
    }

    #[test]
    fn failover_moves_to_the_next_and_wraps() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut r = Upstreams::new(vec![ip("127.0.0.53"), ip("10.1.1.1"), ip("::1")]);
        assert_eq!(r.current(), Some("127.0.0.53:53".parse().unwrap()));
        // A refusal from a server not in use changes nothing.
        assert_eq!(
            r.failed(ip("10.9.9.9")),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            r.failed(ip("127.0.0.53")),
            Some("10.1.1.1:53".parse().unwrap())
        );
        assert_eq!(r.current(), Some("10.1.1.1:53".parse().unwrap()));
        assert_eq!(r.failed(ip("10.1.1.1")), Some("[::1]:53".parse().unwrap()));
        assert_eq!(r.failed(ip("::1")), Some("127.0.0.53:53".parse().unwrap()));
        // A new list starts from its first nameserver.
        r.failed(ip("127.0.0.53"));
        r.set(vec![ip("10.2.2.2"), ip("10.3.3.3")]);
        assert_eq!(r.current(), Some("10.2.2.2:53".parse().unwrap()));
        // One server only: nowhere else to go.
        let mut one = Upstreams::new(vec![ip("127.0.0.53")]);
        assert_eq!(one.failed(ip("127.0.0.53")), None);
        assert_eq!(one.current(), Some("127.0.0.53:53".parse().unwrap()));
        let mut none = Upstreams::new(vec![]);
        assert_eq!(none.failed(ip("127.0.0.53")), None);
        assert_eq!(none.current(), None);
    }

    #[test]
    fn silent_queries_expire_in_order() {
        let mut p = Pending::default();
        p.sent(1u32, 0);
        p.sent(2, 500);
        p.sent(1, 1500); // a retry: the first time stands
        assert_eq!(p.len(), 2);
        assert_eq!(p.expired(QUERY_TIMEOUT_MS - 1), None);
        assert_eq!(p.expired(QUERY_TIMEOUT_MS), Some(1));
        assert_eq!(p.expired(QUERY_TIMEOUT_MS), None);
        p.answered(2);
        assert_eq!(p.expired(u64::MAX), None);
        assert!(p.is_empty());
        // Bounded: the oldest goes.
        for k in 0..(PENDING_MAX as u32 + 3) {
            p.sent(k, u64::from(k));
        }
        assert_eq!(p.len(), PENDING_MAX);
        assert_eq!(p.expired(u64::MAX), Some(3));
        // A clock that goes backwards never underflows.
        let mut q = Pending::default();
        q.sent(7u32, 10_000);
        assert_eq!(q.expired(0), None);
    }
}
