//! `--forward-to-host`: which of the guest's own loopback ports lead to which port on the
//! host's 127.0.0.1.
//!
//! # Theory of operation
//! A value is `[GUEST_PORT:]HOST_PORT[/tcp]` ([`ToHost::Port`]; without `GUEST_PORT` both are
//! the same) or `auto` ([`ToHost::Auto`]: every TCP port the host listens on that 127.0.0.1
//! reaches). The daemon binds 127.0.0.1:GUEST_PORT and \[::1\]:GUEST_PORT inside the guest's
//! network namespace and splices each accepted connection to a connection it makes to
//! 127.0.0.1:HOST_PORT on the host. Only TCP is forwarded: `/udp` is refused with a message
//! saying so.
//!
//! `auto` is resolved once, at start-up, from the text of the host's `/proc/net/tcp` and
//! `/proc/net/tcp6` ([`loopback_listeners`], a pure function of the file contents, so the
//! tests feed it bytes): sockets in state LISTEN bound to 127.0.0.1, 0.0.0.0, `::` or
//! `::ffff:127.0.0.1`. Listeners that appear later are not added. [`resolve`] merges explicit
//! ports and `auto` into one list without duplicate guest ports (an explicit value wins over
//! `auto`; two explicit values for one guest port are an error) and caps it at [`MAX_PORTS`]
//! (each port is two listening sockets passed over one `SCM_RIGHTS` message).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// Most guest ports one daemon forwards to the host (two listeners each; `SCM_MAX_FD` is 253).
pub const MAX_PORTS: usize = 64;

/// One guest loopback port and the host loopback port it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ToHostPort {
    pub guest_port: u16,
    pub host_port: u16,
}

/// One `--forward-to-host` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToHost {
    Port(ToHostPort),
    /// Whatever listens on the host's loopback at start-up.
    Auto,
}

impl fmt::Display for ToHostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/tcp", self.guest_port, self.host_port)
    }
}

fn port(p: &str) -> Result<u16, String> {
    (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .then(|| p.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("invalid port '{p}' (1-65535)"))
}

impl FromStr for ToHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ToHost::Auto);
        }
        let spec = match s.rsplit_once('/') {
            None => s,
            Some((spec, "tcp")) => spec,
            Some((_, "udp")) => {
                return Err("/udp is not supported (only TCP is forwarded to the host)".to_owned())
            }
            Some((_, other)) => return Err(format!("invalid protocol '{other}' (expected tcp)")),
        };
        if spec.is_empty() {
            return Err("expected [GUEST_PORT:]HOST_PORT[/tcp] or auto".to_owned());
        }
        let (guest_port, host_port) = match spec.split_once(':') {
            None => {
                let p = port(spec)?;
                (p, p)
            }
            Some((g, h)) => (port(g)?, port(h)?),
        };
        Ok(ToHost::Port(ToHostPort {
            guest_port,
            host_port,
        }))
    }
}

/// The TCP ports a connection to the host's 127.0.0.1 reaches, from the text of
/// `/proc/net/tcp` or `/proc/net/tcp6` (either; the address width tells them apart). Lines
/// that do not parse are skipped. Sorted, without duplicates.
pub fn loopback_listeners(proc_net_tcp: &str) -> Vec<u16> {
    const LISTEN: &str = "0A";
    let mut ports: Vec<u16> = proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok().filter(|&p| p != 0)?;
            reaches_loopback4(addr)?.then_some(port)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The address bytes of a `/proc/net/tcp{,6}` address field: 32-bit words printed in hex as
/// the kernel holds them (network byte order read as a host integer), so `to_ne_bytes`
/// restores the wire order. `None` when malformed.
fn addr_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 8 != 0 || !hex.is_ascii() {
        return None;
    }
    let mut out = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(8) {
        let word = u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?;
        out.extend_from_slice(&word.to_ne_bytes());
    }
    Some(out)
}

/// Whether a listener bound to `addr` accepts a connection to 127.0.0.1 (`None`: malformed).
fn reaches_loopback4(addr: &str) -> Option<bool> {
    let b = addr_bytes(addr)?;
    Some(match b.len() {
        4 => b == [127, 0, 0, 1] || b == [0; 4],
        16 => {
            let mapped_lo = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
            b == [0; 16] || b == mapped_lo
        }
        _ => return None,
    })
}

/// Merge the values into the list to open: `auto` expands to `listening` (guest port = host
/// port). An explicit value wins over `auto` for its guest port; two explicit values for one
/// guest port, or more than [`MAX_PORTS`] ports, are an error. Sorted by guest port.
pub fn resolve(values: &[ToHost], listening: &[u16]) -> Result<Vec<ToHostPort>, String> {
    let mut explicit: Vec<ToHostPort> = Vec::new();
    for v in values {
        if let ToHost::Port(p) = v {
            if let Some(other) = explicit.iter().find(|e| e.guest_port == p.guest_port) {
                if other != p {
                    return Err(format!(
                        "guest port {} is given twice ({other} and {p})",
                        p.guest_port
                    ));
                }
                continue;
            }
            explicit.push(*p);
        }
    }
    let mut all = explicit.clone();
    if values.contains(&ToHost::Auto) {
        for &p in listening {
            if !explicit.iter().any(|e| e.guest_port == p) {
                all.push(ToHostPort {
                    guest_port: p,
                    host_port: p,
                });
            }
        }
    }
    if all.len() > MAX_PORTS {
        return Err(format!(
            "{} ports to forward, at most {MAX_PORTS} are supported",
            all.len()
        ));
    }
    all.sort_unstable();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(guest_port: u16, host_port: u16) -> ToHostPort {
        ToHostPort {
            guest_port,
            host_port,
        }
    }

    #[test]
    fn parses_ports_auto_and_tcp() {
        assert_eq!("8080".parse(), Ok(ToHost::Port(p(8080, 8080))));
        assert_eq!("80:8080".parse(), Ok(ToHost::Port(p(80, 8080))));
        assert_eq!("80:8080/tcp".parse(), Ok(ToHost::Port(p(80, 8080))));
        assert_eq!("5432/tcp".parse(), Ok(ToHost::Port(p(5432, 5432))));
        assert_eq!("auto".parse(), Ok(ToHost::Auto));
        assert_eq!(p(1, 2).to_string(), "1:2/tcp");
    }

    #[test]
    fn rejects_bad_values_with_the_reason() {
        let err = |s: &str| s.parse::<ToHost>().unwrap_err();
        assert_eq!(err("0"), "invalid port '0' (1-65535)");
        assert_eq!(err("65536"), "invalid port '65536' (1-65535)");
        assert_eq!(err("+80"), "invalid port '+80' (1-65535)");
        assert_eq!(err("80:"), "invalid port '' (1-65535)");
        assert_eq!(err("a:80"), "invalid port 'a' (1-65535)");
        assert_eq!(err("1:2:3"), "invalid port '2:3' (1-65535)");
        assert_eq!(err(""), "expected [GUEST_PORT:]HOST_PORT[/tcp] or auto");
        assert_eq!(err("/tcp"), "expected [GUEST_PORT:]HOST_PORT[/tcp] or auto");
        assert!(err("53/udp").contains("/udp is not supported"));
        assert_eq!(err("80/sctp"), "invalid protocol 'sctp' (expected tcp)");
        assert_eq!(err("AUTO"), "invalid port 'AUTO' (1-65535)");
    }

    /// A little-endian host's `/proc/net/tcp`: 127.0.0.1:8080 listening, 0.0.0.0:22 listening,
    /// 127.0.0.2:9000 listening (not reached by 127.0.0.1), 10.0.0.1:443 listening,
    /// 127.0.0.1:5000 established, a garbage line.
    const TCP_LE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0200007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100000A:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   4: 0100007F:1388 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   5: garbage
";

    /// `/proc/net/tcp6`: [::]:3000 listening, [::1]:4000 listening (not reached by 127.0.0.1),
    /// [::ffff:127.0.0.1]:5000 listening.
    const TCP6_LE: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:0FA0 00000000000000000000000000000000:0000 0A 0
   2: 0000000000000000FFFF00000100007F:1388 00000000000000000000000000000000:0000 0A 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_listeners_loopback_reaches() {
        assert_eq!(loopback_listeners(TCP_LE), [22, 8080]);
        assert_eq!(loopback_listeners(TCP6_LE), [3000, 5000]);
        assert!(loopback_listeners("").is_empty());
        assert!(loopback_listeners("header\n 0: 0100007F:zz 0 0A\n").is_empty());
    }

    #[test]
    fn resolve_merges_auto_and_explicit_values() {
        let v = [ToHost::Port(p(22, 2222)), ToHost::Auto];
        assert_eq!(resolve(&v, &[22, 80]), Ok(vec![p(22, 2222), p(80, 80)]));
        assert_eq!(resolve(&[ToHost::Auto], &[]), Ok(vec![]));
        // Without auto the listeners are ignored; a repeated identical value is one port.
        let v = [ToHost::Port(p(5, 6)), ToHost::Port(p(5, 6))];
        assert_eq!(resolve(&v, &[80]), Ok(vec![p(5, 6)]));
        let v = [ToHost::Port(p(5, 6)), ToHost::Port(p(5, 7))];
        assert_eq!(
            resolve(&v, &[]).unwrap_err(),
            "guest port 5 is given twice (5:6/tcp and 5:7/tcp)"
        );
        let many: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
        assert!(resolve(&[ToHost::Auto], &many)
            .unwrap_err()
            .contains("at most 64"));
    }
}
