//! DHCPv4 server for guests that configure themselves (sans-IO).
//!
//! # Theory of operation
//! Without `-c` the guest runs a DHCP client (udhcpc, dhclient, systemd-networkd). Like
//! slirp4netns we lease network+15 .. network+30 from the gateway address, offering the
//! router (network+2), the DNS forwarder (network+3, unless `--disable-dns`), the subnet mask,
//! the interface MTU (option 26) and a lease time. Leases are keyed by the client's hardware
//! address so a client that asks again gets the same address.
//!
//! Messages handled: DISCOVER -> OFFER, REQUEST -> ACK (or NAK for an address we cannot give),
//! RELEASE and DECLINE free the lease, INFORM -> ACK without an address. A REQUEST naming
//! another server is ignored. Replies are broadcast (IP 255.255.255.255, MAC ff:ff:...), which
//! every client accepts, so no ARP entry for an unconfigured client is needed.
//!
//! Malformed messages (short, not BOOTREQUEST, wrong hardware type/length, no magic cookie,
//! truncated or missing options, no message type) return `Err` and the caller counts them.
//! Parsing never panics: every option is bounds-checked.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use crate::config::NetConfig;

/// First address leased: network+15.
pub const POOL_START: u32 = 15;
/// Number of addresses leased: network+15 ..= network+30.
pub const POOL_SIZE: usize = 16;
/// Lease time offered, seconds.
pub const LEASE_SECS: u32 = 86_400;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header length (through the magic cookie).
const HEADER_LEN: usize = 240;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

/// Why a message was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpError {
    /// Not a well-formed DHCP request.
    Malformed,
    /// Well-formed but not for us (another server, or no address left).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    mac: [u8; 6],
    expires_s: u64,
}

/// The server state: one lease slot per pool address.
#[derive(Debug)]
pub struct DhcpServer {
    server: Ipv4Addr,
    dns: Option<Ipv4Addr>,
    mask: Ipv4Addr,
    network: Ipv4Addr,
    mtu: u16,
    leases: [Option<Lease>; POOL_SIZE],
}

struct Parsed<'a> {
    msg_type: u8,
    xid: [u8; 4],
    flags: [u8; 2],
    ciaddr: Ipv4Addr,
    chaddr: [u8; 6],
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    _options: &'a [u8],
}

fn parse(msg: &[u8]) -> Result<Parsed<'_>, DhcpError> {
    if msg.len() < HEADER_LEN
        || msg[0] != BOOTREQUEST
        || msg[1] != 1
        || msg[2] != 6
        || msg[236..240] != MAGIC
    {
        return Err(DhcpError::Malformed);
    }
    let ip = |o: usize| Ipv4Addr::new(msg[o], msg[o + 1], msg[o + 2], msg[o + 3]);
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&msg[28..34]);
    let options = &msg[HEADER_LEN..];
    let (mut msg_type, mut requested, mut server_id) = (None, None, None);
    let mut i = 0;
    let mut ended = false;
    while i < options.len() {
        let code = options[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => {
                ended = true;
                break;
            }
            _ => {}
        }
        let len = usize::from(*options.get(i + 1).ok_or(DhcpError::Malformed)?);
        let value = options
            .get(i + 2..i + 2 + len)
            .ok_or(DhcpError::Malformed)?;
        let as_ip = || <[u8; 4]>::try_from(value).ok().map(Ipv4Addr::from);
        match code {
            53 if len == 1 => msg_type = Some(value[0]),
            50 => requested = Some(as_ip().ok_or(DhcpError::Malformed)?),
            54 => server_id = Some(as_ip().ok_or(DhcpError::Malformed)?),
            _ => {}
        }
        i += 2 + len;
    }
    if !ended {
        return Err(DhcpError::Malformed);
    }
    Ok(Parsed {
        msg_type: msg_type.ok_or(DhcpError::Malformed)?,
        xid: [msg[4], msg[5], msg[6], msg[7]],
        flags: [msg[10], msg[11]],
        ciaddr: ip(12),
        chaddr,
        requested,
        server_id,
        _options: options,
    })
}

impl DhcpServer {
    pub fn new(net: &NetConfig) -> Self {
        DhcpServer {
            server: net.gateway(),
            dns: (!net.disable_dns).then(|| net.dns()),
            mask: net.netmask(),
            network: net.network,
            mtu: u16::try_from(net.mtu).unwrap_or(u16::MAX),
            leases: [None; POOL_SIZE],
        }
    }

    fn pool_addr(&self, slot: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + POOL_START + slot as u32)
    }

    fn slot_of(&self, addr: Ipv4Addr) -> Option<usize> {
        let off = u32::from(addr).checked_sub(u32::from(self.network) + POOL_START)?;
        (off < POOL_SIZE as u32).then_some(off as usize)
    }

    /// The slot this client holds, or a free (or expired) one.
    fn slot_for(&self, mac: [u8; 6], now_s: u64) -> Option<usize> {
        self.slot_of_mac(mac).or_else(|| {
            self.leases
                .iter()
                .position(|l| l.is_none_or(|l| l.expires_s <= now_s))
        })
    }

    /// The slot leased (or offered) to `mac`.
    fn slot_of_mac(&self, mac: [u8; 6]) -> Option<usize> {
        self.leases
            .iter()
            .position(|l| matches!(l, Some(l) if l.mac == mac))
    }

    /// Free whatever `mac` holds.
    fn forget(&mut self, mac: [u8; 6]) {
        if let Some(s) = self.slot_of_mac(mac) {
            self.leases[s] = None;
        }
    }

    /// The address currently leased to `mac`, if any.
    pub fn lease_of(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.slot_of_mac(mac).map(|s| self.pool_addr(s))
    }

    /// Handle one message (the UDP payload from port 68 to 67). On success the reply (a UDP
    /// payload for port 68, to be broadcast) is written to `out` and its length returned.
    pub fn handle(&mut self, msg: &[u8], now_s: u64, out: &mut [u8]) -> Result<usize, DhcpError> {
        let p = parse(msg)?;
        let (reply_type, yiaddr) = match p.msg_type {
            DISCOVER => {
                let slot = self.slot_for(p.chaddr, now_s).ok_or(DhcpError::Ignored)?;
                // Reserve briefly so two DISCOVERs in a row don't get the same address.
                self.leases[slot] = Some(Lease {
                    mac: p.chaddr,
                    expires_s: now_s + 60,
                });
                (OFFER, self.pool_addr(slot))
            }
            REQUEST => {
                if p.server_id.is_some_and(|s| s != self.server) {
                    // The client chose another server: forget our offer.
                    self.forget(p.chaddr);
                    return Err(DhcpError::Ignored);
                }
                let want = p.requested.unwrap_or(p.ciaddr);
                let ok_slot = self.slot_of(want).filter(|&s| match self.leases[s] {
                    None => true,
                    Some(l) => l.mac == p.chaddr || l.expires_s <= now_s,
                });
                match ok_slot {
                    Some(s) => {
                        // One address per client.
                        self.forget(p.chaddr);
                        self.leases[s] = Some(Lease {
                            mac: p.chaddr,
                            expires_s: now_s + u64::from(LEASE_SECS),
                        });
                        (ACK, want)
                    }
                    None => (NAK, Ipv4Addr::UNSPECIFIED),
                }
            }
            RELEASE | DECLINE => {
                self.forget(p.chaddr);
                return Err(DhcpError::Ignored);
            }
            INFORM => (ACK, Ipv4Addr::UNSPECIFIED),
            _ => return Err(DhcpError::Malformed),
        };
        self.build(&p, reply_type, yiaddr, out)
            .ok_or(DhcpError::Ignored)
    }

    fn build(
        &self,
        p: &Parsed<'_>,
        reply_type: u8,
        yiaddr: Ipv4Addr,
        out: &mut [u8],
    ) -> Option<usize> {
        let mut w = Writer { out, len: 0 };
        w.put(&[BOOTREPLY, 1, 6, 0])?;
        w.put(&p.xid)?;
        w.put(&[0, 0])?; // secs
        w.put(&p.flags)?;
        w.put(
            &(if reply_type == ACK && yiaddr.is_unspecified() {
                p.ciaddr
            } else {
                Ipv4Addr::UNSPECIFIED
            })
            .octets(),
        )?;
        w.put(&yiaddr.octets())?;
        w.put(&self.server.octets())?; // siaddr
        w.put(&[0; 4])?; // giaddr
        w.put(&p.chaddr)?;
        w.put(&[0; 10 + 64 + 128])?; // chaddr padding, sname, file
        w.put(&MAGIC)?;
        w.opt(53, &[reply_type])?;
        w.opt(54, &self.server.octets())?;
        if reply_type != NAK {
            if !yiaddr.is_unspecified() {
                w.opt(51, &LEASE_SECS.to_be_bytes())?;
                w.opt(58, &(LEASE_SECS / 2).to_be_bytes())?;
                w.opt(59, &(LEASE_SECS / 8 * 7).to_be_bytes())?;
            }
            w.opt(1, &self.mask.octets())?;
            w.opt(3, &self.server.octets())?;
            if let Some(dns) = self.dns {
                w.opt(6, &dns.octets())?;
            }
            w.opt(26, &self.mtu.to_be_bytes())?;
        }
        w.put(&[255])?;
        Some(w.len)
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        self.out
            .get_mut(self.len..self.len + b.len())?
            .copy_from_slice(b);
        self.len += b.len();
        Some(())
    }
    fn opt(&mut self, code: u8, value: &[u8]) -> Option<()> {
        self.put(&[code, u8::try_from(value.len()).ok()?])?;
        self.put(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    fn request(msg_type: u8, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[0] = BOOTREQUEST;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&[1, 2, 3, 4]);
        m[28..34].copy_from_slice(&MAC);
        m[236..240].copy_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, msg_type]);
        m.extend_from_slice(extra);
        m.push(255);
        m
    }

    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        let mut i = HEADER_LEN;
        while reply[i] != 255 {
            let len = reply[i + 1] as usize;
            v.push((reply[i], reply[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        v
    }

    fn opt(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    #[test]
    fn discover_request_release() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        let n = s.handle(&request(DISCOVER, &[]), 0, &mut out).unwrap();
        let offer = &out[..n];
        assert_eq!(offer[0], BOOTREPLY);
        assert_eq!(&offer[4..8], &[1, 2, 3, 4]);
        assert_eq!(&offer[16..20], &[10, 0, 2, 15]);
        assert_eq!(opt(offer, 53), Some(vec![OFFER]));
        assert_eq!(opt(offer, 3), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(offer, 6), Some(vec![10, 0, 2, 3]));
        assert_eq!(opt(offer, 1), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(offer, 26), Some(1500u16.to_be_bytes().to_vec()));
        assert_eq!(opt(offer, 51), Some(LEASE_SECS.to_be_bytes().to_vec()));

        let req = request(REQUEST, &[50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]);
        let n = s.handle(&req, 1, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        assert_eq!(&out[16..20], &[10, 0, 2, 15]);
        assert_eq!(s.lease_of(MAC), Some(Ipv4Addr::new(10, 0, 2, 15)));

        // Asking again gives the same address.
        let n = s.handle(&request(DISCOVER, &[]), 2, &mut out).unwrap();
        assert_eq!(&out[16..20], &[10, 0, 2, 15]);
        let _ = n;

        assert_eq!(
            s.handle(&request(RELEASE, &[]), 3, &mut out),
            Err(DhcpError::Ignored)
        );
        assert_eq!(s.lease_of(MAC), None);
    }

    #[test]
    fn nak_outside_pool_and_ignore_other_server() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        let req = request(REQUEST, &[50, 4, 10, 0, 2, 99]);
        let n = s.handle(&req, 0, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![NAK]));
        let req = request(REQUEST, &[50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 9]);
        assert_eq!(s.handle(&req, 0, &mut out), Err(DhcpError::Ignored));
    }

    #[test]
    fn pool_exhaustion() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        for i in 0..POOL_SIZE {
            let mut m = request(DISCOVER, &[]);
            m[33] = i as u8 + 100;
            s.handle(&m, 0, &mut out).unwrap();
        }
        let mut m = request(DISCOVER, &[]);
        m[33] = 1;
        assert_eq!(s.handle(&m, 0, &mut out), Err(DhcpError::Ignored));
        // Offers expire.
        assert!(s.handle(&m, 61, &mut out).is_ok());
    }

    #[test]
    fn no_dns_option_when_disabled() {
        let mut s = DhcpServer::new(&NetConfig {
            disable_dns: true,
            ..Default::default()
        });
        let mut out = [0u8; 600];
        let n = s.handle(&request(DISCOVER, &[]), 0, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 6), None);
    }

    #[test]
    fn malformed_never_panics() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        let good = request(REQUEST, &[50, 4, 10, 0, 2, 15]);
        for cut in 0..good.len() {
            assert!(s.handle(&good[..cut], 0, &mut out).is_err(), "cut {cut}");
        }
        let mut bad = good.clone();
        bad[0] = BOOTREPLY;
        assert_eq!(s.handle(&bad, 0, &mut out), Err(DhcpError::Malformed));
        let mut bad = good.clone();
        bad[236] = 0;
        assert_eq!(s.handle(&bad, 0, &mut out), Err(DhcpError::Malformed));
        // Option length running past the end.
        let mut bad = request(DISCOVER, &[]);
        bad.pop();
        bad.extend_from_slice(&[50, 200, 1]);
        assert_eq!(s.handle(&bad, 0, &mut out), Err(DhcpError::Malformed));
        // No message type.
        let mut bad = good.clone();
        bad[HEADER_LEN + 2] = 99;
        assert_eq!(s.handle(&bad, 0, &mut out), Err(DhcpError::Malformed));
        // Tiny output buffer: no panic, no reply.
        assert!(s
            .handle(&request(DISCOVER, &[]), 0, &mut [0u8; 10])
            .is_err());
    }

    /// `request` from another client.
    fn from(mac_last: u8, msg_type: u8, extra: &[u8]) -> Vec<u8> {
        let mut m = request(msg_type, extra);
        m[33] = mac_last;
        m
    }

    const WANT_15: [u8; 6] = [50, 4, 10, 0, 2, 15];

    #[test]
    fn inform_acks_without_an_address() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        let mut m = request(INFORM, &[]);
        m[12..16].copy_from_slice(&[10, 0, 2, 100]); // ciaddr: configured by hand
        m[10] = 0x80; // broadcast flag
        let n = s.handle(&m, 0, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(opt(r, 53), Some(vec![ACK]));
        assert_eq!(&r[12..16], &[10, 0, 2, 100], "ciaddr echoed");
        assert_eq!(&r[16..20], &[0, 0, 0, 0], "no yiaddr");
        assert_eq!(&r[20..24], &[10, 0, 2, 2], "siaddr");
        assert_eq!(&r[10..12], &[0x80, 0], "flags echoed");
        assert_eq!(opt(r, 51), None, "no lease time");
        assert_eq!(opt(r, 3), Some(vec![10, 0, 2, 2]));
        assert_eq!(s.lease_of(MAC), None);
    }

    #[test]
    fn taken_addresses_nak_until_declined_or_expired() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        let n = s.handle(&from(1, REQUEST, &WANT_15), 0, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        // Another client asking for the same address.
        let n = s.handle(&from(2, REQUEST, &WANT_15), 10, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![NAK]));
        assert_eq!(&out[16..20], &[0, 0, 0, 0]);
        assert_eq!(opt(&out[..n], 51), None);
        // Still taken one second before the lease ends, free at its end.
        let end = u64::from(LEASE_SECS);
        let n = s
            .handle(&from(2, REQUEST, &WANT_15), end - 1, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![NAK]));
        let n = s
            .handle(&from(2, REQUEST, &WANT_15), end, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        // DECLINE frees it at once.
        assert_eq!(
            s.handle(&from(2, DECLINE, &[]), end + 1, &mut out),
            Err(DhcpError::Ignored)
        );
        let n = s
            .handle(&from(3, REQUEST, &WANT_15), end + 2, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
    }

    #[test]
    fn renewal_by_ciaddr_and_one_address_per_client() {
        let mut s = DhcpServer::new(&NetConfig::default());
        let mut out = [0u8; 600];
        s.handle(&request(REQUEST, &WANT_15), 0, &mut out).unwrap();
        // A renewing client names its address in ciaddr, without option 50.
        let mut renew = request(REQUEST, &[]);
        renew[12..16].copy_from_slice(&[10, 0, 2, 15]);
        let n = s.handle(&renew, 100, &mut out).unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        assert_eq!(&out[16..20], &[10, 0, 2, 15]);
        // Moving to another pool address frees the first.
        s.handle(&request(REQUEST, &[50, 4, 10, 0, 2, 20]), 200, &mut out)
            .unwrap();
        assert_eq!(s.lease_of(MAC), Some(Ipv4Addr::new(10, 0, 2, 20)));
        let n = s
            .handle(&from(9, REQUEST, &WANT_15), 300, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        // Pool edges: network+30 is the last address, network+31 is outside.
        let n = s
            .handle(&from(10, REQUEST, &[50, 4, 10, 0, 2, 30]), 0, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![ACK]));
        let n = s
            .handle(&from(11, REQUEST, &[50, 4, 10, 0, 2, 31]), 0, &mut out)
            .unwrap();
        assert_eq!(opt(&out[..n], 53), Some(vec![NAK]));
    }

    #[test]
    fn custom_network_and_mtu_are_offered() {
        let mut s = DhcpServer::new(&NetConfig {
            network: Ipv4Addr::new(192, 168, 0, 0),
            prefix: 16,
            mtu: 9000,
            ..Default::default()
        });
        let mut out = [0u8; 600];
        let n = s.handle(&request(DISCOVER, &[]), 0, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(&r[16..20], &[192, 168, 0, 15]);
        assert_eq!(opt(r, 1), Some(vec![255, 255, 0, 0]));
        assert_eq!(opt(r, 3), Some(vec![192, 168, 0, 2]));
        assert_eq!(opt(r, 54), Some(vec![192, 168, 0, 2]));
        assert_eq!(opt(r, 6), Some(vec![192, 168, 0, 3]));
        assert_eq!(opt(r, 26), Some(9000u16.to_be_bytes().to_vec()));
        assert_eq!(opt(r, 58), Some((LEASE_SECS / 2).to_be_bytes().to_vec()));
        assert_eq!(
            opt(r, 59),
            Some((LEASE_SECS / 8 * 7).to_be_bytes().to_vec())
        );
        // Pad options are skipped; an unknown message type is malformed.
        let mut padded = request(DISCOVER, &[]);
        padded.splice(HEADER_LEN..HEADER_LEN, [0, 0, 0]);
        assert!(s.handle(&padded, 1, &mut out).is_ok());
        assert_eq!(
            s.handle(&request(OFFER, &[]), 1, &mut out),
            Err(DhcpError::Malformed)
        );
        // A requested-address option of the wrong length is malformed.
        assert_eq!(
            s.handle(&request(REQUEST, &[50, 3, 1, 2, 3]), 1, &mut out),
            Err(DhcpError::Malformed)
        );
    }
}
