//! Automatic publishing (`-p auto`, `--publish auto:[HOST_ADDR:]RANGE[/tcp|/udp]`): which of
//! the guest's listening sockets get a host port, decided from a list of listeners without I/O.
//!
//! # Theory of operation
//! The daemon dumps the guest's listeners (see [`crate::sock_diag`]) and hands the list to
//! [`AutoPublish::plan`], which compares what *should* be published with what *is* and returns
//! [`Action`]s: open a forward, retry one whose host port was taken, close one. The daemon
//! executes them against its port forwards and reports back ([`AutoPublish::record`],
//! [`AutoPublish::retried`]).
//!
//! A listener is published when a rule matches its protocol and port (the first rule that
//! does decides the host address) and the guest can be reached at its address *through the
//! TAP*: `0.0.0.0`, a dual-stack `::` and the guest's own IPv4 address are reached at the
//! guest's IPv4 address (network+100, or the address it is bound to); an IPv6 address inside
//! the `-6` prefix at that address. A loopback-only listener (`127.0.0.1`, `::1`) is not:
//! forwarded connections arrive on the TAP, and the guest's kernel drops packets for
//! 127.0.0.0/8 that come from outside; nor is a `IPV6_V6ONLY` socket on `::` (tapwire does not
//! know the guest's SLAAC address). The host port is the guest's port, on the rule's address.
//!
//! Not published: a port an explicit forward (`-p`, `add_hostfwd`) already uses on the host
//! or in the guest (explicit forwards win), and a *pinned* port: `remove_hostfwd` on an
//! automatic forward pins its (protocol, port) off until the guest stops listening on it.
//! A forward whose host port cannot be bound stays in the list with its error (reported once
//! in the log and in `list_hostfwd`) and is retried on every plan; when the guest closes the
//! socket the forward is closed (open connections finish, as with `remove_hostfwd`).
//!
//! At most [`MAX_AUTO`] automatic forwards exist at once (the guest is hostile: one that
//! listens on every port must not spend the daemon's file descriptors); listeners beyond it
//! wait until others close.
//!
//! Without a protocol suffix a rule covers TCP and UDP; for UDP, "listening" means bound and
//! not connected, which includes a client's socket that sent from an ephemeral port with
//! `sendto` (give a RANGE to keep those out).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use crate::config::{parse_digits, Forward, NetConfig, Proto};
use crate::sock_diag::Listener;

/// One `auto` publish rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoRule {
    /// Where the host listens (default 0.0.0.0, as for `-p`).
    pub host_addr: IpAddr,
    /// Ports covered, inclusive.
    pub first: u16,
    pub last: u16,
    /// `None`: TCP and UDP.
    pub proto: Option<Proto>,
}

impl AutoRule {
    fn matches(&self, proto: Proto, port: u16) -> bool {
        self.proto.is_none_or(|p| p == proto) && (self.first..=self.last).contains(&port)
    }
}

/// `auto` or `auto:[HOST_ADDR:]RANGE[/tcp|/udp]`, RANGE being `PORT` or `FIRST-LAST`; an IPv6
/// HOST_ADDR in brackets (`auto:[::1]:8000-8999`).
impl FromStr for AutoRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const MSG: &str = "expected auto or auto:[HOST_ADDR:]RANGE[/tcp|/udp]";
        let rest = s.strip_prefix("auto").ok_or(MSG)?;
        let mut rule = AutoRule {
            host_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            first: 1,
            last: u16::MAX,
            proto: None,
        };
        if rest.is_empty() {
            return Ok(rule);
        }
        let spec = rest.strip_prefix(':').ok_or(MSG)?;
        let spec = match spec.rsplit_once('/') {
            Some((spec, proto)) => {
                rule.proto = Some(proto.parse()?);
                spec
            }
            None => spec,
        };
        let (addr, range) = match spec.rsplit_once(':') {
            Some((addr, range)) => (Some(addr), range),
            None => (None, spec),
        };
        if let Some(addr) = addr {
            let a = addr
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(addr);
            rule.host_addr = a
                .parse()
                .map_err(|_| format!("invalid host address '{addr}'"))?;
        }
        let port = |p: &str| {
            parse_digits::<u16>(p)
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port '{p}' (1-65535)"))
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(range)?, port(range)?),
        };
        if first > last {
            return Err(format!(
                "empty port range '{range}' (FIRST-LAST, FIRST <= LAST)"
            ));
        }
        (rule.first, rule.last) = (first, last);
        Ok(rule)
    }
}

/// An automatic forward's key: one per protocol and port.
pub type Key = (Proto, u16);

/// What the daemon is to do after a [`AutoPublish::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a new forward; report the outcome with [`AutoPublish::record`].
    Open(Key, Forward),
    /// Open again the forward `id`, which could not be opened before (host port taken);
    /// report with [`AutoPublish::retried`].
    Retry(u64, Forward),
    /// Close and remove the forward `id` (the guest stopped listening).
    Close(u64),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    fwd: Forward,
    open: bool,
}

/// The automatic forwards; see the module documentation.
#[derive(Debug, Default)]
pub struct AutoPublish {
    rules: Vec<AutoRule>,
    entries: BTreeMap<Key, Entry>,
    pinned: BTreeSet<Key>,
    /// The last plan left listeners out because of [`MAX_AUTO`].
    capped: bool,
}

/// Most automatic forwards at once: each holds a host socket, and a hostile guest could
/// otherwise listen on every port and spend the daemon's file descriptors.
pub const MAX_AUTO: usize = 1024;

impl AutoPublish {
    pub fn new(rules: Vec<AutoRule>) -> Self {
        AutoPublish {
            rules,
            ..AutoPublish::default()
        }
    }

    /// Where in the guest a connection to this listener goes, if it can get there through
    /// the TAP.
    pub fn target(l: &Listener, net: &NetConfig) -> Option<IpAddr> {
        match l.addr {
            IpAddr::V4(a) if a.is_unspecified() => Some(net.guest().into()),
            IpAddr::V4(a) if !a.is_loopback() && net.contains(a) => Some(a.into()),
            IpAddr::V4(_) => None,
            IpAddr::V6(a) if a.is_unspecified() => (!l.v6only).then(|| net.guest().into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if net.contains(v4) => Some(v4.into()),
                Some(_) => None,
                None => (net.enable_ipv6 && net.contains6(a)).then_some(a.into()),
            },
        }
    }

    /// Compare the guest's `listeners` with the automatic forwards; `explicit` are the other
    /// forwards (they take precedence).
    pub fn plan(
        &mut self,
        listeners: &[Listener],
        net: &NetConfig,
        explicit: &[Forward],
    ) -> Vec<Action> {
        let mut want: BTreeMap<Key, Forward> = BTreeMap::new();
        for l in listeners {
            let key = (l.proto, l.port);
            let Some(rule) = self.rules.iter().find(|r| r.matches(l.proto, l.port)) else {
                continue;
            };
            let Some(guest) = Self::target(l, net) else {
                continue;
            };
            if explicit.iter().any(|f| {
                f.proto == l.proto && (f.host.port() == l.port || f.guest.port() == l.port)
            }) {
                continue;
            }
            let fwd = Forward {
                proto: l.proto,
                host: SocketAddr::new(rule.host_addr, l.port),
                guest: SocketAddr::new(guest, l.port),
            };
            // Several sockets on one port (v4 and v6): the IPv4 target, which always works.
            let e = want.entry(key).or_insert(fwd);
            if e.guest.is_ipv6() && guest.is_ipv4() {
                *e = fwd;
            }
        }
        self.pinned.retain(|k| want.contains_key(k));
        want.retain(|k, _| !self.pinned.contains(k));
        let mut actions = Vec::new();
        self.entries.retain(|k, e| {
            let keep = want.get(k) == Some(&e.fwd);
            if !keep {
                actions.push(Action::Close(e.id));
            }
            keep
        });
        let mut count = self.entries.len();
        self.capped = false;
        for (k, f) in want {
            match self.entries.get(&k) {
                Some(e) if !e.open => actions.push(Action::Retry(e.id, f)),
                Some(_) => {}
                None if count >= MAX_AUTO => self.capped = true,
                None => {
                    count += 1;
                    actions.push(Action::Open(k, f));
                }
            }
        }
        actions
    }

    /// The forward of an [`Action::Open`] got `id`; `open`: its host socket is open.
    pub fn record(&mut self, key: Key, fwd: Forward, id: u64, open: bool) {
        self.entries.insert(key, Entry { id, fwd, open });
    }

    /// The outcome of an [`Action::Retry`].
    pub fn retried(&mut self, id: u64, open: bool) {
        if let Some(e) = self.entries.values_mut().find(|e| e.id == id) {
            e.open = open;
        }
    }

    /// Whether the last plan left listeners unpublished because [`MAX_AUTO`] forwards exist.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Whether `id` is an automatic forward.
    pub fn is_auto(&self, id: u64) -> bool {
        self.entries.values().any(|e| e.id == id)
    }

    /// `remove_hostfwd` on an automatic forward: forget it and keep its port off while the
    /// guest listens there. False if `id` is not automatic.
    pub fn pin(&mut self, id: u64) -> bool {
        let Some(key) = self
            .entries
            .iter()
            .find(|(_, e)| e.id == id)
            .map(|(k, _)| *k)
        else {
            return false;
        };
        self.entries.remove(&key);
        self.pinned.insert(key);
        true
    }

    /// Forget `id` without pinning (an explicit forward took its host port over).
    pub fn forget(&mut self, id: u64) {
        self.entries.retain(|_, e| e.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(proto: Proto, addr: &str, port: u16, v6only: bool) -> Listener {
        Listener {
            proto,
            addr: addr.parse().unwrap(),
            port,
            v6only,
        }
    }

    fn fwd(proto: Proto, host: &str, guest: &str) -> Forward {
        Forward {
            proto,
            host: host.parse().unwrap(),
            guest: guest.parse().unwrap(),
        }
    }

    #[test]
    fn rule_forms() {
        let r: AutoRule = "auto".parse().unwrap();
        assert_eq!((r.first, r.last, r.proto), (1, 65535, None));
        assert_eq!(r.host_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let r: AutoRule = "auto:8000-8999/tcp".parse().unwrap();
        assert_eq!((r.first, r.last, r.proto), (8000, 8999, Some(Proto::Tcp)));
        let r: AutoRule = "auto:127.0.0.1:53/udp".parse().unwrap();
        assert_eq!((r.first, r.last, r.proto), (53, 53, Some(Proto::Udp)));
        assert_eq!(r.host_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        let r: AutoRule = "auto:[::1]:1-1024".parse().unwrap();
        assert_eq!(r.host_addr, "::1".parse::<IpAddr>().unwrap());
        assert!(r.matches(Proto::Udp, 1024) && !r.matches(Proto::Tcp, 1025));
    }

    #[test]
    fn rule_errors() {
        let err = |s: &str| s.parse::<AutoRule>().unwrap_err();
        assert_eq!(
            err("autox"),
            "expected auto or auto:[HOST_ADDR:]RANGE[/tcp|/udp]"
        );
        assert_eq!(err("auto:"), "invalid port '' (1-65535)");
        assert_eq!(err("auto:0-10"), "invalid port '0' (1-65535)");
        assert_eq!(
            err("auto:9-8"),
            "empty port range '9-8' (FIRST-LAST, FIRST <= LAST)"
        );
        assert_eq!(err("auto:1-70000"), "invalid port '70000' (1-65535)");
        assert_eq!(err("auto:80/sctp"), "unknown protocol 'sctp' (tcp or udp)");
        assert_eq!(err("auto:x:80"), "invalid host address 'x'");
        assert_eq!(err("auto:+1-2"), "invalid port '+1' (1-65535)");
    }

    #[test]
    fn targets() {
        let mut net = NetConfig::default();
        let t = |l: Listener, net: &NetConfig| AutoPublish::target(&l, net);
        let g: IpAddr = "10.0.2.100".parse().unwrap();
        assert_eq!(t(l(Proto::Tcp, "0.0.0.0", 80, false), &net), Some(g));
        assert_eq!(t(l(Proto::Tcp, "::", 80, false), &net), Some(g));
        assert_eq!(t(l(Proto::Tcp, "::", 80, true), &net), None);
        assert_eq!(t(l(Proto::Tcp, "127.0.0.1", 80, false), &net), None);
        assert_eq!(t(l(Proto::Tcp, "::1", 80, true), &net), None);
        let dhcp: IpAddr = "10.0.2.15".parse().unwrap();
        assert_eq!(t(l(Proto::Udp, "10.0.2.15", 80, false), &net), Some(dhcp));
        assert_eq!(t(l(Proto::Udp, "192.168.1.1", 80, false), &net), None);
        assert_eq!(
            t(l(Proto::Udp, "::ffff:10.0.2.15", 80, false), &net),
            Some(dhcp)
        );
        assert_eq!(t(l(Proto::Tcp, "fd00::1234", 80, true), &net), None);
        net.enable_ipv6 = true;
        let v6: IpAddr = "fd00::1234".parse().unwrap();
        assert_eq!(t(l(Proto::Tcp, "fd00::1234", 80, true), &net), Some(v6));
    }

    #[test]
    fn appear_conflict_retry_disappear() {
        let net = NetConfig::default();
        let mut a = AutoPublish::new(vec!["auto".parse().unwrap()]);
        let ls = [
            l(Proto::Tcp, "0.0.0.0", 8080, false),
            l(Proto::Udp, "::", 5353, false),
            l(Proto::Tcp, "127.0.0.1", 9000, false),
        ];
        let acts = a.plan(&ls, &net, &[]);
        let f1 = fwd(Proto::Tcp, "0.0.0.0:8080", "10.0.2.100:8080");
        let f2 = fwd(Proto::Udp, "0.0.0.0:5353", "10.0.2.100:5353");
        assert_eq!(
            acts,
            [
                Action::Open((Proto::Tcp, 8080), f1),
                Action::Open((Proto::Udp, 5353), f2)
            ]
        );
        a.record((Proto::Tcp, 8080), f1, 1, true);
        // The UDP host port is taken: kept, retried on every plan.
        a.record((Proto::Udp, 5353), f2, 2, false);
        assert_eq!(a.plan(&ls, &net, &[]), [Action::Retry(2, f2)]);
        a.retried(2, true);
        assert!(a.plan(&ls, &net, &[]).is_empty());
        assert!(a.is_auto(1) && a.is_auto(2) && !a.is_auto(3));
        // The guest closes the TCP listener.
        assert_eq!(a.plan(&ls[1..], &net, &[]), [Action::Close(1)]);
        assert!(!a.is_auto(1));
        assert_eq!(a.plan(&[], &net, &[]), [Action::Close(2)]);
    }

    #[test]
    fn ranges_rules_and_explicit_forwards() {
        let net = NetConfig::default();
        let mut a = AutoPublish::new(vec![
            "auto:127.0.0.1:8000-8999/tcp".parse().unwrap(),
            "auto:[::]:8000-9999".parse().unwrap(),
        ]);
        let ls = [
            l(Proto::Tcp, "0.0.0.0", 8080, false),
            l(Proto::Udp, "0.0.0.0", 8080, false),
            l(Proto::Tcp, "0.0.0.0", 10000, false),
            l(Proto::Tcp, "0.0.0.0", 9000, false),
            l(Proto::Tcp, "0.0.0.0", 9001, false),
        ];
        let explicit = [fwd(Proto::Tcp, "0.0.0.0:9001", "10.0.2.100:22")];
        let acts = a.plan(&ls, &net, &explicit);
        assert_eq!(
            acts,
            [
                Action::Open(
                    (Proto::Tcp, 8080),
                    fwd(Proto::Tcp, "127.0.0.1:8080", "10.0.2.100:8080")
                ),
                Action::Open(
                    (Proto::Tcp, 9000),
                    fwd(Proto::Tcp, "[::]:9000", "10.0.2.100:9000")
                ),
                Action::Open(
                    (Proto::Udp, 8080),
                    fwd(Proto::Udp, "[::]:8080", "10.0.2.100:8080")
                ),
            ]
        );
    }

    #[test]
    fn a_guest_listening_everywhere_gets_max_auto_forwards() {
        let net = NetConfig::default();
        let mut a = AutoPublish::new(vec!["auto".parse().unwrap()]);
        let ls: Vec<Listener> = (1..=2000)
            .map(|p| l(Proto::Tcp, "0.0.0.0", p, false))
            .collect();
        let acts = a.plan(&ls, &net, &[]);
        assert_eq!(acts.len(), MAX_AUTO);
        assert!(a.capped());
        for (i, act) in acts.into_iter().enumerate() {
            let Action::Open(k, f) = act else {
                panic!("{act:?}")
            };
            a.record(k, f, i as u64 + 1, true);
        }
        assert!(a.plan(&ls, &net, &[]).is_empty() && a.capped());
        // One closes: the next listener gets its place.
        let acts = a.plan(&ls[1..], &net, &[]);
        assert_eq!(acts.len(), 2, "{acts:?}");
        assert_eq!(acts[0], Action::Close(1));
        assert!(matches!(acts[1], Action::Open((Proto::Tcp, 1025), _)));
    }

    #[test]
    fn pinning_lasts_while_the_guest_listens() {
        let net = NetConfig::default();
        let mut a = AutoPublish::new(vec!["auto:80/tcp".parse().unwrap()]);
        let ls = [l(Proto::Tcp, "0.0.0.0", 80, false)];
        let f = fwd(Proto::Tcp, "0.0.0.0:80", "10.0.2.100:80");
        assert_eq!(a.plan(&ls, &net, &[]), [Action::Open((Proto::Tcp, 80), f)]);
        a.record((Proto::Tcp, 80), f, 7, true);
        assert!(!a.pin(8));
        assert!(a.pin(7));
        assert!(a.plan(&ls, &net, &[]).is_empty());
        assert!(a.plan(&ls, &net, &[]).is_empty());
        // Closed and opened again: published again.
        assert!(a.plan(&[], &net, &[]).is_empty());
        assert_eq!(a.plan(&ls, &net, &[]), [Action::Open((Proto::Tcp, 80), f)]);
    }

    #[test]
    fn v4_target_wins_and_a_changed_target_reopens() {
        let net = NetConfig {
            enable_ipv6: true,
            ..NetConfig::default()
        };
        let mut a = AutoPublish::new(vec!["auto".parse().unwrap()]);
        let v6 = l(Proto::Tcp, "fd00::5", 80, true);
        let v4 = l(Proto::Tcp, "0.0.0.0", 80, false);
        let f6 = fwd(Proto::Tcp, "0.0.0.0:80", "[fd00::5]:80");
        let f4 = fwd(Proto::Tcp, "0.0.0.0:80", "10.0.2.100:80");
        assert_eq!(
            a.plan(&[v6, v4], &net, &[]),
            [Action::Open((Proto::Tcp, 80), f4)]
        );
        a.record((Proto::Tcp, 80), f4, 1, true);
        assert_eq!(
            a.plan(&[v6], &net, &[]),
            [Action::Close(1), Action::Open((Proto::Tcp, 80), f6)]
        );
    }
}
