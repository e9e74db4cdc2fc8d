//! rtnetlink configuration of the TAP inside the namespace (`-c`).
//!
//! Theory of operation:
//! - [`configure`] runs in the forked namespace helper (or the `tapwire run` child), after it
//!   joined the target network namespace and opened the TAP. It opens one `NETLINK_ROUTE` socket
//!   and sends four requests, each with `NLM_F_ACK`, waiting for the kernel's `NLMSG_ERROR` ack
//!   (matched by sequence number) before the next:
//!   1. `RTM_NEWLINK` lo: set `IFF_UP`.
//!   2. `RTM_NEWLINK` tap: `IFLA_ADDRESS` (if a MAC is given), `IFLA_MTU`, set `IFF_UP`. The
//!      kernel applies the address and MTU before the flags, so one message suffices.
//!   3. `RTM_NEWADDR` (`NLM_F_CREATE|NLM_F_REPLACE`): `IFA_LOCAL`/`IFA_ADDRESS` = guest
//!      address, prefix length, and `IFA_BROADCAST` for prefixes < 31 (what the
//!      `SIOCSIFADDR`/`SIOCSIFNETMASK` ioctls of slirp4netns produce).
//!   4. `RTM_NEWROUTE` (`NLM_F_CREATE`, main table, `RTPROT_BOOT`, universe scope): default
//!      route via the gateway out of the tap. Like slirp4netns's `SIOCADDRT` this adds a
//!      route rather than replacing one; an identical existing route (`EEXIST`) counts as done.
//!
//!   The link must be up before the address is added, or the kernel does not install the
//!   prefix route that makes the gateway reachable.
//! - Messages are encoded by hand into fixed stack buffers (no allocation on the success path,
//!   which matters because the caller is a child forked from a possibly threaded process).
//!   Every attribute is padded to 4 bytes (`RTA_ALIGN`); native byte order is used for the
//!   netlink headers and big-endian (network order) for addresses, as the kernel expects.
//! - The socket asks for extended acks (`NETLINK_EXT_ACK`, `NETLINK_CAP_ACK`); if the kernel
//!   returns a textual reason it is appended to the error message.
//!
//! Limits: IPv4 only; interfaces are looked up by name with `if_nametoindex(3)`.
//!
//! Syscalls: `socket(AF_NETLINK)`, `setsockopt`, `send`, `recv`, `ioctl(SIOCGIFINDEX)` (via
//! `if_nametoindex`).
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tapwire_proto::config::IfConfig;

// Values from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>.
// They are kernel ABI and never change; kept here so the encoding is self-contained.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// Room for the largest request we build (RTM_NEWLINK with MTU and MAC is 52 bytes).
const MSG_CAP: usize = 128;

/// Errors from configuring links, addresses and routes.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The interface name cannot name a Linux interface (empty, too long, NUL).
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// The configuration cannot be expressed (e.g. prefix > 32).
    #[error("invalid configuration for {ifname}: {reason}")]
    InvalidConfig {
        ifname: String,
        reason: &'static str,
    },
    /// `if_nametoindex` failed.
    #[error("look up interface {name}: {source}")]
    NoSuchInterface { name: String, source: io::Error },
    /// The NETLINK_ROUTE socket could not be created.
    #[error("open NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    /// Sending or receiving on the socket failed.
    #[error("{op}: netlink {dir}: {source}")]
    Io {
        op: String,
        dir: &'static str,
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("{op}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Kernel {
        op: String,
        source: io::Error,
        detail: Option<String>,
    },
    /// The kernel's reply could not be understood.
    #[error("{op}: malformed netlink reply: {reason}")]
    Protocol { op: String, reason: &'static str },
}

/// In the current netns: lo up; `ifname` MTU, MAC (if Some), up; IPv4 addr/prefix; default
/// route via gateway.
pub fn configure(ifname: &str, cfg: &IfConfig) -> Result<(), NetlinkError> {
    if cfg.prefix > 32 {
        return Err(NetlinkError::InvalidConfig {
            ifname: ifname.to_owned(),
            reason: "IPv4 prefix length above 32",
        });
    }
    let lo = ifindex("lo")?;
    let index = ifindex(ifname)?;
    let sock = Socket::open()?;

    sock.request(&link_request(1, lo, None, None), || {
        Op::LinkUp {
            ifname: "lo",
            mtu: None,
            mac: None,
        }
        .to_string()
    })?;
    sock.request(&link_request(2, index, Some(cfg.mtu), cfg.mac), || {
        Op::LinkUp {
            ifname,
            mtu: Some(cfg.mtu),
            mac: cfg.mac,
        }
        .to_string()
    })?;
    sock.request(&addr_request(3, index, cfg.addr, cfg.prefix), || {
        Op::Addr {
            ifname,
            addr: cfg.addr,
            prefix: cfg.prefix,
        }
        .to_string()
    })?;
    match sock.request(&route_request(4, index, cfg.gateway), || {
        Op::Route {
            ifname,
            gateway: cfg.gateway,
        }
        .to_string()
    }) {
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}

/// Human-readable description of a request, only formatted when it fails.
enum Op<'a> {
    LinkUp {
        ifname: &'a str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    },
    Addr {
        ifname: &'a str,
        addr: Ipv4Addr,
        prefix: u8,
    },
    Route {
        ifname: &'a str,
        gateway: Ipv4Addr,
    },
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::LinkUp { ifname, mtu, mac } => {
                write!(f, "RTM_NEWLINK {ifname} up")?;
                if let Some(mtu) = mtu {
                    write!(f, " mtu {mtu}")?;
                }
                if let Some(m) = mac {
                    write!(
                        f,
                        " address {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    )?;
                }
                Ok(())
            }
            Op::Addr {
                ifname,
                addr,
                prefix,
            } => {
                write!(f, "RTM_NEWADDR {addr}/{prefix} dev {ifname}")
            }
            Op::Route { ifname, gateway } => {
                write!(f, "RTM_NEWROUTE default via {gateway} dev {ifname}")
            }
        }
    }
}

/// For bypass mode's route questions ([`tapwire_proto::route`]): a `NETLINK_ROUTE` socket in
/// the current network namespace and the index of `ifname` there. Runs in the `tapwire run`
/// child, which hands both to the supervisor; the socket keeps asking this namespace's
/// kernel wherever its holder lives.
pub fn route_probe(ifname: &str) -> Result<(OwnedFd, u32), NetlinkError> {
    let index = ifindex(ifname)?;
    Ok((Socket::open()?.fd, index))
}

/// Interface index by name, without allocating.
fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= crate::link::tap::IFNAMSIZ || bytes.contains(&0) {
        return Err(NetlinkError::InvalidName(name.to_owned()));
    }
    let mut cname = [0u8; crate::link::tap::IFNAMSIZ];
    for (d, s) in cname.iter_mut().zip(bytes) {
        *d = *s;
    }
    // SAFETY: `cname` is NUL-terminated (at most 15 name bytes in a zeroed 16-byte array) and
    // lives across the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr().cast()) };
    if index == 0 {
        return Err(NetlinkError::NoSuchInterface {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// A netlink request being built in a fixed buffer.
struct Message {
    buf: [u8; MSG_CAP],
    len: usize,
}

impl Message {
    /// Start a request: `struct nlmsghdr` with the length patched by [`Message::bytes`].
    fn new(ty: u16, flags: u16, seq: u32) -> Message {
        let mut m = Message {
            buf: [0; MSG_CAP],
            len: 0,
        };
        m.put(&0u32.to_ne_bytes()); // nlmsg_len, patched later
        m.put(&ty.to_ne_bytes());
        m.put(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.put(&seq.to_ne_bytes());
        m.put(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel fills in our port id
        m
    }

    /// Append raw bytes. The requests built here are fixed-size and far below `MSG_CAP`;
    /// should that ever change, overflowing bytes are dropped and [`Message::bytes`] reports
    /// the truncation as an empty message (which the kernel rejects) instead of panicking.
    fn put(&mut self, data: &[u8]) {
        let end = self.len.saturating_add(data.len());
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                self.len = end;
            }
            None => self.len = usize::MAX,
        }
    }

    /// Append an rtattr: `{u16 len, u16 type}`, payload, zero padding to 4 bytes.
    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4usize.saturating_add(payload.len());
        self.put(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.put(&ty.to_ne_bytes());
        self.put(payload);
        let pad = align4(len).saturating_sub(len);
        self.put([0u8; 3].get(..pad).unwrap_or(&[]));
    }

    /// The finished message with `nlmsg_len` filled in.
    fn bytes(&self) -> &[u8] {
        let Some(msg) = self.buf.get(..self.len) else {
            return &[];
        };
        msg
    }

    fn finish(mut self) -> Message {
        if let Some(len_field) = self.buf.get_mut(0..4) {
            let len = u32::try_from(self.len).unwrap_or(0);
            len_field.copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// `RTM_NEWLINK` on `index`: set `IFF_UP`, plus MAC and MTU when given.
fn link_request(seq: u32, index: u32, mtu: Option<u32>, mac: Option<[u8; 6]>) -> Message {
    let mut m = Message::new(RTM_NEWLINK, 0, seq);
    // struct ifinfomsg
    m.put(&[AF_UNSPEC, 0]); // ifi_family, pad
    m.put(&0u16.to_ne_bytes()); // ifi_type
    m.put(&index.to_ne_bytes()); // ifi_index (int; indexes are positive)
    m.put(&IFF_UP.to_ne_bytes()); // ifi_flags
    m.put(&IFF_UP.to_ne_bytes()); // ifi_change: only touch IFF_UP
    if let Some(mac) = mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(mtu) = mtu {
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    m.finish()
}

/// `RTM_NEWADDR`: `addr/prefix` on `index`, with broadcast for prefixes < 31.
fn addr_request(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Message {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    // struct ifaddrmsg
    m.put(&[AF_INET, prefix, 0, RT_SCOPE_UNIVERSE]); // family, prefixlen, flags, scope
    m.put(&index.to_ne_bytes());
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    if prefix < 31 {
        let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
        m.attr(IFA_BROADCAST, &brd.octets());
    }
    m.finish()
}

/// `RTM_NEWROUTE`: 0.0.0.0/0 via `gateway` out of `index` in the main table.
fn route_request(seq: u32, index: u32, gateway: Ipv4Addr) -> Message {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE, seq);
    // struct rtmsg
    m.put(&[
        AF_INET,           // rtm_family
        0,                 // rtm_dst_len: default route
        0,                 // rtm_src_len
        0,                 // rtm_tos
        RT_TABLE_MAIN,     // rtm_table
        RTPROT_BOOT,       // rtm_protocol
        RT_SCOPE_UNIVERSE, // rtm_scope
        RTN_UNICAST,       // rtm_type
    ]);
    m.put(&0u32.to_ne_bytes()); // rtm_flags
    m.attr(RTA_GATEWAY, &gateway.octets());
    m.attr(RTA_OIF, &index.to_ne_bytes());
    m.finish()
}

/// Outcome of parsing one reply datagram.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    /// No ack for our sequence number in this datagram.
    NotYet,
    /// `NLMSG_ERROR` with error 0.
    Ok,
    /// `NLMSG_ERROR` with a negative errno, and the extended-ack message if any.
    Err(i32, Option<String>),
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Find the ack for `seq` in a datagram of one or more netlink messages.
fn parse_ack(buf: &[u8], seq: u32) -> Result<Ack, &'static str> {
    let mut off = 0usize;
    while off < buf.len() {
        let len = read_u32(buf, off).ok_or("truncated header")? as usize;
        let ty = read_u16(buf, off + 4).ok_or("truncated header")?;
        let flags = read_u16(buf, off + 6).ok_or("truncated header")?;
        let mseq = read_u32(buf, off + 8).ok_or("truncated header")?;
        let end = off.checked_add(len).ok_or("bad length")?;
        if len < NLMSG_HDRLEN || end > buf.len() {
            return Err("bad message length");
        }
        if ty == NLMSG_ERROR && mseq == seq {
            let msg = &buf[off..end];
            let err = read_u32(msg, NLMSG_HDRLEN).ok_or("truncated nlmsgerr")? as i32;
            if err == 0 {
                return Ok(Ack::Ok);
            }
            let detail = if flags & NLM_F_ACK_TLVS != 0 {
                ext_ack_msg(msg, flags)
            } else {
                None
            };
            return Ok(Ack::Err(err, detail));
        }
        off = align4(end);
    }
    Ok(Ack::NotYet)
}

/// The `NLMSGERR_ATTR_MSG` string of an extended ack, if present.
fn ext_ack_msg(msg: &[u8], flags: u16) -> Option<String> {
    // nlmsghdr, then struct nlmsgerr { int error; struct nlmsghdr msg; } and, unless the ack
    // is capped, the payload of the original request.
    let orig_len = read_u32(msg, NLMSG_HDRLEN + 4)? as usize;
    let mut off = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
    if flags & NLM_F_CAPPED == 0 {
        off = off.checked_add(align4(orig_len.checked_sub(NLMSG_HDRLEN)?))?;
    }
    while off < msg.len() {
        let alen = usize::from(read_u16(msg, off)?);
        let aty = read_u16(msg, off + 2)?;
        if alen < 4 {
            return None;
        }
        let payload = msg.get(off + 4..off.checked_add(alen)?)?;
        if aty & 0x3fff == NLMSGERR_ATTR_MSG {
            let text = payload.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        off = align4(off.checked_add(alen)?);
    }
    None
}

/// A NETLINK_ROUTE socket.
struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open() -> Result<Socket, NetlinkError> {
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: socket(2) just returned this fd (checked >= 0) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: `one` is a live c_int and the length passed is its size. Failure (old
            // kernels) is harmless: acks just carry less detail.
            let _ = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Socket { fd })
    }

    /// Send `msg` and wait for its ack. `op` describes the request for error messages.
    fn request(&self, msg: &Message, op: impl Fn() -> String) -> Result<(), NetlinkError> {
        let bytes = msg.bytes();
        let seq = read_u32(bytes, 8).ok_or_else(|| NetlinkError::Protocol {
            op: op(),
            reason: "request did not fit the message buffer",
        })?;
        loop {
            // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes during the call.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Io {
                    op: op(),
                    dir: "send",
                    source: e,
                });
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io {
                    op: op(),
                    dir: "recv",
                    source: e,
                });
            }
            if n == 0 {
                return Err(NetlinkError::Protocol {
                    op: op(),
                    reason: "socket closed before the ack",
                });
            }
            let got = buf.get(..n.unsigned_abs()).unwrap_or(&buf);
            match parse_ack(got, seq) {
                Ok(Ack::NotYet) => continue,
                Ok(Ack::Ok) => return Ok(()),
                Ok(Ack::Err(errno, detail)) => {
                    return Err(NetlinkError::Kernel {
                        op: op(),
                        source: io::Error::from_raw_os_error(errno.saturating_neg()),
                        detail,
                    })
                }
                Err(reason) => {
                    return Err(NetlinkError::Protocol { op: op(), reason });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_proto::config::NetConfig;

    fn cfg() -> IfConfig {
        IfConfig::from_net(&NetConfig {
            mtu: 65520,
            guest_mac: Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            ..Default::default()
        })
    }

    /// nlmsghdr in native byte order.
    fn hdr(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn newlink_bytes() {
        let c = cfg();
        let m = link_request(2, 7, Some(c.mtu), c.mac);
        let mut want = hdr(52, 16, 0x0001 | 0x0004, 2);
        want.extend_from_slice(&[0, 0, 0, 0]); // family, pad, type
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes()); // flags IFF_UP
        want.extend_from_slice(&1u32.to_ne_bytes()); // change IFF_UP
                                                     // MAC: 6-byte payload, 10-byte attribute, padded to 12.
        want.extend_from_slice(&10u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0]);
        want.extend_from_slice(&attr(4, &65520u32.to_ne_bytes()));
        assert_eq!(want.len(), 52);
        assert_eq!(m.bytes(), &want[..]);

        // lo: no attributes.
        let lo = link_request(1, 1, None, None);
        assert_eq!(lo.bytes().len(), 32);
        assert_eq!(&lo.bytes()[..4], &32u32.to_ne_bytes());
    }

    #[test]
    fn newaddr_bytes() {
        let c = cfg();
        let m = addr_request(3, 7, c.addr, c.prefix);
        let mut want = hdr(48, 20, 0x0001 | 0x0004 | 0x0400 | 0x0100, 3);
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&attr(2, &[10, 0, 2, 100]));
        want.extend_from_slice(&attr(1, &[10, 0, 2, 100]));
        want.extend_from_slice(&attr(4, &[10, 0, 2, 255]));
        assert_eq!(m.bytes(), &want[..]);

        // /31 and /32 have no broadcast; /0 broadcasts everywhere without overflow.
        assert_eq!(addr_request(1, 1, c.addr, 32).bytes().len(), 40);
        assert_eq!(addr_request(1, 1, c.addr, 31).bytes().len(), 40);
        let zero = addr_request(1, 1, c.addr, 0);
        assert_eq!(&zero.bytes()[44..48], &[255, 255, 255, 255]);
    }

    #[test]
    fn newroute_bytes() {
        let c = cfg();
        let m = route_request(4, 7, c.gateway);
        let mut want = hdr(44, 24, 0x0001 | 0x0004 | 0x0400, 4);
        want.extend_from_slice(&[2, 0, 0, 0, 254, 3, 0, 1]);
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&attr(5, &[10, 0, 2, 2]));
        want.extend_from_slice(&attr(4, &7u32.to_ne_bytes()));
        assert_eq!(m.bytes(), &want[..]);
    }

    #[test]
    fn attribute_alignment() {
        for n in 0..12usize {
            let mut m = Message::new(RTM_NEWLINK, 0, 1);
            m.attr(99, &vec![0xaa; n]);
            let m = m.finish();
            assert_eq!(m.bytes().len() % 4, 0);
            assert_eq!(m.bytes().len(), NLMSG_HDRLEN + align4(4 + n));
            // The attribute length field excludes padding.
            assert_eq!(read_u16(m.bytes(), NLMSG_HDRLEN), Some(4 + n as u16));
        }
    }

    #[test]
    fn overflow_does_not_panic() {
        let mut m = Message::new(RTM_NEWLINK, 0, 1);
        m.attr(1, &[0u8; 200]);
        let m = m.finish();
        assert!(m.bytes().is_empty());
    }

    fn ack(seq: u32, errno: i32, ext: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&errno.to_ne_bytes());
        body.extend_from_slice(&hdr(44, 24, 5, seq)); // capped original header
        let mut flags = NLM_F_CAPPED;
        if let Some(text) = ext {
            flags |= NLM_F_ACK_TLVS;
            let mut s = text.as_bytes().to_vec();
            s.push(0);
            body.extend_from_slice(&attr(NLMSGERR_ATTR_MSG, &s));
        }
        let mut v = hdr((16 + body.len()) as u32, NLMSG_ERROR, flags, seq);
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn parse_acks() {
        assert_eq!(parse_ack(&ack(4, 0, None), 4), Ok(Ack::Ok));
        assert_eq!(parse_ack(&ack(3, 0, None), 4), Ok(Ack::NotYet));
        assert_eq!(
            parse_ack(&ack(4, -17, Some("Route exists")), 4),
            Ok(Ack::Err(-17, Some("Route exists".into())))
        );
        assert_eq!(parse_ack(&ack(4, -1, None), 4), Ok(Ack::Err(-1, None)));
        // Two messages in one datagram.
        let mut two = ack(3, 0, None);
        two.extend_from_slice(&ack(4, -22, None));
        assert_eq!(parse_ack(&two, 4), Ok(Ack::Err(-22, None)));
        // Garbage never panics.
        assert!(parse_ack(&[1, 2, 3], 1).is_err());
        let mut bad = ack(4, 0, None);
        bad[0] = 200;
        assert!(parse_ack(&bad, 4).is_err());
        for cut in 0..ack(4, -1, Some("x")).len() {
            let _ = parse_ack(&ack(4, -1, Some("x"))[..cut], 4);
        }
    }

    #[test]
    fn error_messages_name_the_request() {
        let c = cfg();
        let op = Op::LinkUp {
            ifname: "tap0",
            mtu: Some(c.mtu),
            mac: c.mac,
        };
        assert_eq!(
            op.to_string(),
            "RTM_NEWLINK tap0 up mtu 65520 address 02:11:22:33:44:55"
        );
        let e = NetlinkError::Kernel {
            op: Op::Route {
                ifname: "tap0",
                gateway: c.gateway,
            }
            .to_string(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
            detail: Some("Nexthop has invalid gateway".into()),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("RTM_NEWROUTE default via 10.0.2.2 dev tap0: Network is unreachable"),
            "{s}"
        );
        assert!(s.ends_with("(Nexthop has invalid gateway)"), "{s}");
        assert!(configure("tap0", &IfConfig { prefix: 33, ..c })
            .unwrap_err()
            .to_string()
            .contains("prefix"));
    }
}
