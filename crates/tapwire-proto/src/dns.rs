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
//! Limits: a nameserver that stays silent (no refusal) is not detected; the guest's own
//! retries go to the same one (libslirp does no better).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

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
                "nameserver {server} refused a query; using {:?} from now on",
                self.servers.get(self.current)
            );
        }
        self.current().filter(|next| next.ip() != server)
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
}
