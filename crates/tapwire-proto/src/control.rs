//! The control protocol: slirp4netns's JSON API, parsed and answered without I/O.
//!
//! # Theory of operation
//! A client connects to the UNIX socket, writes one JSON request (at most [`MAX_REQUEST`]
//! bytes), shuts down its write side and reads one reply: `{"return":...}` or
//! `{"error":{"desc":"..."}}`, serialized without spaces, then the server closes. The I/O side
//! lives in `control`; this module only turns request bytes into a [`Request`] (or the exact
//! error desc slirp4netns would give) and values into reply strings.
//!
//! Requests (slirp4netns's three, plus four of ours):
//!
//! | execute | arguments | return |
//! |---|---|---|
//! | `add_hostfwd` | proto, host_addr (default 0.0.0.0), host_port, guest_addr (default network+100), guest_port | `{"id":N}` |
//! | `list_hostfwd` | - | `{"entries":[{id,proto,host_addr,host_port,guest_addr,guest_port}...]}` |
//! | `remove_hostfwd` | id | `{}` |
//! | `list_connections` | - | `{"connections":[...]}` (see `engine`) |
//! | `get_stats` | - | counters (see `engine`) |
//! | `start_capture` | path (absolute), max_bytes (optional, >= 4096), rotate (optional, 0..=100 older files kept; needs max_bytes) | `{}` |
//! | `stop_capture` | - | `{"path":...,"frames":N,"bytes":N}` |
//!
//! `host_addr` may be IPv6 (`::`, `::1`) even for an IPv4 guest: slirp4netns refuses it, users
//! publish on `[::]`. [`Forwards`] assigns ids from 1, increasing, never reused; automatic
//! forwards (`-p auto`) are entries with `"auto":true` and, while their host port cannot be
//! opened, `"error"`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Map, Value};

use crate::config::{Forward, Proto};

pub mod clients;

/// Largest request accepted; slirp4netns reads into a 4096-byte buffer and refuses a full one.
pub const MAX_REQUEST: usize = 4095;

/// Error desc for a request that is too large.
pub const TOO_LARGE: &str = "bad request: too large message";

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `add_hostfwd`; `guest` is `None` when guest_addr was not given.
    AddHostfwd {
        proto: Proto,
        host: SocketAddr,
        guest_addr: Option<IpAddr>,
        guest_port: u16,
    },
    ListHostfwd,
    RemoveHostfwd {
        id: u64,
    },
    ListConnections,
    GetStats,
    /// `start_capture`: write every frame crossing the TAP to `path` (see [`Capture`]).
    StartCapture(Capture),
    StopCapture,
}

/// Longest capture path accepted (PATH_MAX less the terminating NUL).
pub const MAX_CAPTURE_PATH: usize = 4095;
/// Smallest `max_bytes`: the file header and a few frames.
pub const MIN_CAPTURE_BYTES: u64 = 4096;
/// Most older capture files `rotate` may keep.
pub const MAX_CAPTURE_ROTATE: u32 = 100;

/// A packet capture request: where, how large, how many older files to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Absolute path of the pcap file (created or truncated).
    pub path: String,
    /// Size at which the file is full: with `rotate`, it becomes `path.1` (and so on) and a
    /// new file starts; without, the capture stops there.
    pub max_bytes: Option<u64>,
    /// Older files kept (`path.1` is the newest of them).
    pub rotate: u32,
}

impl Capture {
    /// Check a capture's values; the error is the `desc` to reply with.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.path.starts_with('/')
            || self.path.len() > MAX_CAPTURE_PATH
            || self.path.contains('\0')
            || self.path.ends_with('/')
        {
            return Err("bad request: start_capture: bad arguments.path");
        }
        if self.max_bytes.is_some_and(|m| m < MIN_CAPTURE_BYTES) {
            return Err("bad request: start_capture: bad arguments.max_bytes");
        }
        if self.rotate > MAX_CAPTURE_ROTATE || (self.rotate > 0 && self.max_bytes.is_none()) {
            return Err("bad request: start_capture: bad arguments.rotate");
        }
        Ok(())
    }
}

fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn start_capture(args: &Map<String, Value>) -> Result<Request, &'static str> {
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or("bad request: start_capture: bad arguments.path")?
        .to_owned();
    let max_bytes = match args.get("max_bytes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(whole(v).ok_or("bad request: start_capture: bad arguments.max_bytes")?),
    };
    let rotate = match args.get("rotate") {
        None | Some(Value::Null) => 0,
        Some(v) => whole(v)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("bad request: start_capture: bad arguments.rotate")?,
    };
    let c = Capture {
        path,
        max_bytes,
        rotate,
    };
    c.validate()?;
    Ok(Request::StartCapture(c))
}

fn port(v: Option<&Value>) -> Option<u16> {
    let v = v?;
    let n = v.as_u64().or_else(|| {
        // slirp4netns's parser takes numbers as doubles; accept 8080.0, reject 8080.5.
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    })?;
    u16::try_from(n).ok().filter(|&p| p != 0)
}

fn addr(v: Option<&Value>) -> Result<Option<IpAddr>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

/// Parse one request; the error is the `desc` to reply with.
pub fn parse(bytes: &[u8]) -> Result<Request, &'static str> {
    if bytes.len() > MAX_REQUEST {
        return Err(TOO_LARGE);
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|_| "bad request: cannot parse JSON")?;
    let obj = v.as_object().ok_or("bad request: json_object() failed")?;
    let execute = obj
        .get("execute")
        .and_then(Value::as_str)
        .ok_or("bad request: no execute found")?;
    let empty = Map::new();
    let args = obj
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match execute {
        "add_hostfwd" => {
            let proto = match args.get("proto").and_then(Value::as_str) {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                _ => return Err("bad request: add_hostfwd: bad arguments.proto"),
            };
            let host_addr = addr(args.get("host_addr"))
                .map_err(|_| "bad request: add_hostfwd: bad arguments.host_addr")?
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let host_port = port(args.get("host_port"))
                .ok_or("bad request: add_hostfwd: bad arguments.host_port")?;
            let guest_addr = addr(args.get("guest_addr"))
                .map_err(|_| "bad request: add_hostfwd: bad arguments.guest_addr")?;
            let guest_port = port(args.get("guest_port"))
                .ok_or("bad request: add_hostfwd: bad arguments.guest_port")?;
            Ok(Request::AddHostfwd {
                proto,
                host: SocketAddr::new(host_addr, host_port),
                guest_addr,
                guest_port,
            })
        }
        "list_hostfwd" => Ok(Request::ListHostfwd),
        "remove_hostfwd" => {
            let id = args
                .get("id")
                .and_then(|v| {
                    v.as_u64().or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                })
                .ok_or("bad request: remove_hostfwd: bad arguments.id")?;
            Ok(Request::RemoveHostfwd { id })
        }
        "list_connections" => Ok(Request::ListConnections),
        "get_stats" => Ok(Request::GetStats),
        "start_capture" => start_capture(args),
        "stop_capture" => Ok(Request::StopCapture),
        _ => Err("bad request: unknown execute"),
    }
}

/// A success reply.
pub fn reply_ok(value: Value) -> String {
    json!({ "return": value }).to_string()
}

/// An error reply.
pub fn reply_error(desc: &str) -> String {
    json!({ "error": { "desc": desc } }).to_string()
}

/// The JSON entry of one forward, as `list_hostfwd` shows it.
pub fn forward_entry(id: u64, f: &Forward) -> Value {
    json!({
        "id": id,
        "proto": f.proto.as_str(),
        "host_addr": f.host.ip().to_string(),
        "host_port": f.host.port(),
        "guest_addr": f.guest.ip().to_string(),
        "guest_port": f.guest.port(),
    })
}

/// The registry of forwards: ids from 1, increasing, never reused. Automatic forwards
/// (`-p auto`) are listed with `"auto":true` and, when their host port could not be opened,
/// `"error"`; explicit ones keep slirp4netns's exact entry.
#[derive(Debug)]
pub struct Forwards {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    fwd: Forward,
    auto: bool,
    /// Why the host socket is not open (automatic forwards only).
    error: Option<String>,
}

impl Default for Forwards {
    fn default() -> Self {
        Forwards {
            next_id: 1,
            entries: BTreeMap::new(),
        }
    }
}

impl Forwards {
    /// Whether an open forward already uses this host endpoint and protocol.
    pub fn conflicts(&self, f: &Forward) -> bool {
        self.holder(f).is_some()
    }

    /// The open forward that uses this host endpoint and protocol, and whether it is automatic.
    pub fn holder(&self, f: &Forward) -> Option<(u64, bool)> {
        self.entries
            .iter()
            .find(|(_, e)| e.error.is_none() && e.fwd.proto == f.proto && e.fwd.host == f.host)
            .map(|(id, e)| (*id, e.auto))
    }

    /// Record a forward whose host socket is already open; returns its id.
    pub fn add(&mut self, f: Forward) -> u64 {
        self.insert(f, false, None)
    }

    /// Record an automatic forward; `error`: why its host socket could not be opened.
    pub fn add_auto(&mut self, f: Forward, error: Option<String>) -> u64 {
        self.insert(f, true, error)
    }

    fn insert(&mut self, fwd: Forward, auto: bool, error: Option<String>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(id, Entry { fwd, auto, error });
        id
    }

    /// Set or clear the error of forward `id`.
    pub fn set_error(&mut self, id: u64, error: Option<String>) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.error = error;
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Forward> {
        self.entries.remove(&id).map(|e| e.fwd)
    }

    pub fn get(&self, id: u64) -> Option<&Forward> {
        self.entries.get(&id).map(|e| &e.fwd)
    }

    /// The forwards that are not automatic.
    pub fn explicit(&self) -> Vec<Forward> {
        self.entries
            .values()
            .filter(|e| !e.auto)
            .map(|e| e.fwd)
            .collect()
    }

    pub fn list(&self) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|(id, e)| {
                let mut v = forward_entry(*id, &e.fwd);
                if let (true, Value::Object(m)) = (e.auto, &mut v) {
                    m.insert("auto".into(), Value::Bool(true));
                    if let Some(err) = &e.error {
                        m.insert("error".into(), Value::String(err.clone()));
                    }
                }
                v
            })
            .collect();
        json!({ "entries": entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_requests() {
        let r = parse(br#"{"execute":"start_capture","arguments":{"path":"/tmp/a.pcap"}}"#);
        assert_eq!(
            r,
            Ok(Request::StartCapture(Capture {
                path: "/tmp/a.pcap".into(),
                max_bytes: None,
                rotate: 0
            }))
        );
        let r = parse(
            br#"{"execute":"start_capture","arguments":{"path":"/c","max_bytes":1e6,"rotate":3}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::StartCapture(Capture {
                path: "/c".into(),
                max_bytes: Some(1_000_000),
                rotate: 3
            }))
        );
        assert_eq!(
            parse(br#"{"execute":"stop_capture"}"#),
            Ok(Request::StopCapture)
        );
        let bad: &[(&[u8], &str)] = &[
            (br#"{"execute":"start_capture"}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":"rel.pcap"}}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":""}}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":"/d/"}}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a\u0000b"}}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":7}}"#, "path"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":100}}"#, "max_bytes"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":-1}}"#, "max_bytes"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":"1"}}"#, "max_bytes"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":1e300}}"#, "max_bytes"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","rotate":2}}"#, "rotate"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":5000,"rotate":101}}"#, "rotate"),
            (br#"{"execute":"start_capture","arguments":{"path":"/a","max_bytes":5000,"rotate":1.5}}"#, "rotate"),
        ];
        for (req, arg) in bad {
            let want = format!("bad request: start_capture: bad arguments.{arg}");
            assert_eq!(
                parse(req),
                Err(want.as_str()),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
        let long = format!(
            r#"{{"execute":"start_capture","arguments":{{"path":"/{}"}}}}"#,
            "a".repeat(3000)
        );
        assert!(parse(long.as_bytes()).is_ok());
    }

    #[test]
    fn add_hostfwd_full_and_defaults() {
        let r = parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#).unwrap();
        assert_eq!(
            r,
            Request::AddHostfwd {
                proto: Proto::Tcp,
                host: "127.0.0.1:8080".parse().unwrap(),
                guest_addr: Some("10.0.2.100".parse().unwrap()),
                guest_port: 80
            }
        );
        let r = parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":5353,"guest_port":53}}"#).unwrap();
        assert_eq!(
            r,
            Request::AddHostfwd {
                proto: Proto::Udp,
                host: "0.0.0.0:5353".parse().unwrap(),
                guest_addr: None,
                guest_port: 53
            }
        );
        let r = parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::","host_port":8080.0,"guest_port":80}}"#).unwrap();
        assert!(
            matches!(r, Request::AddHostfwd { host, .. } if host == "[::]:8080".parse().unwrap())
        );
    }

    #[test]
    fn slirp_error_descs() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "bad request: cannot parse JSON"),
            (b"", "bad request: cannot parse JSON"),
            (b"[1]", "bad request: json_object() failed"),
            (b"{}", "bad request: no execute found"),
            (br#"{"execute":7}"#, "bad request: no execute found"),
            (br#"{"execute":"nope"}"#, "bad request: unknown execute"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.proto"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"x","host_port":1,"guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.host_addr"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.host_port"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.host_port"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"80","guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.host_port"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"1.2.3","guest_port":1}}"#, "bad request: add_hostfwd: bad arguments.guest_addr"),
            (br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1}}"#, "bad request: add_hostfwd: bad arguments.guest_port"),
            (br#"{"execute":"remove_hostfwd","arguments":{}}"#, "bad request: remove_hostfwd: bad arguments.id"),
            (br#"{"execute":"remove_hostfwd","arguments":{"id":-1}}"#, "bad request: remove_hostfwd: bad arguments.id"),
        ];
        for (req, desc) in cases {
            assert_eq!(parse(req), Err(*desc), "{}", String::from_utf8_lossy(req));
        }
        let big = vec![b' '; MAX_REQUEST + 1];
        assert_eq!(parse(&big), Err(TOO_LARGE));
    }

    #[test]
    fn replies_have_no_spaces() {
        assert_eq!(reply_ok(json!({"id": 1})), r#"{"return":{"id":1}}"#);
        assert_eq!(reply_ok(json!({})), r#"{"return":{}}"#);
        assert_eq!(
            reply_error("bad request: unknown execute"),
            r#"{"error":{"desc":"bad request: unknown execute"}}"#
        );
    }

    #[test]
    fn ids_increase_and_are_never_reused() {
        let mut f = Forwards::default();
        let fwd = Forward {
            proto: Proto::Tcp,
            host: "0.0.0.0:8080".parse().unwrap(),
            guest: "10.0.2.100:80".parse().unwrap(),
        };
        assert_eq!(f.add(fwd), 1);
        assert!(f.conflicts(&fwd));
        assert!(!f.conflicts(&Forward {
            proto: Proto::Udp,
            ..fwd
        }));
        assert_eq!(
            f.add(Forward {
                host: "0.0.0.0:8081".parse().unwrap(),
                ..fwd
            }),
            2
        );
        assert!(f.remove(2).is_some());
        assert!(f.remove(2).is_none());
        assert_eq!(f.add(fwd), 3);
        assert_eq!(
            f.list().to_string(),
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}"#
        );
    }

    #[test]
    fn argumentless_requests_and_remove_ids() {
        assert_eq!(
            parse(br#"{"execute":"list_hostfwd"}"#),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse(br#"{"execute":"list_connections","arguments":{}}"#),
            Ok(Request::ListConnections)
        );
        assert_eq!(parse(br#"{"execute":"get_stats"}"#), Ok(Request::GetStats));
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":3}}"#),
            Ok(Request::RemoveHostfwd { id: 3 })
        );
        // Numbers are doubles to slirp4netns: 3.0 is 3, 2.5 is no id.
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":3.0}}"#),
            Ok(Request::RemoveHostfwd { id: 3 })
        );
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":2.5}}"#),
            Err("bad request: remove_hostfwd: bad arguments.id")
        );
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#),
            Err("bad request: remove_hostfwd: bad arguments.id")
        );
    }

    #[test]
    fn add_hostfwd_argument_edges() {
        // Arguments that are not an object count as none.
        assert_eq!(
            parse(br#"{"execute":"add_hostfwd","arguments":[1]}"#),
            Err("bad request: add_hostfwd: bad arguments.proto")
        );
        // An empty host_addr is the default, a null guest_addr is "not given".
        assert_eq!(
            parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":65535,"guest_addr":null,"guest_port":1}}"#),
            Ok(Request::AddHostfwd {
                proto: Proto::Tcp,
                host: "0.0.0.0:65535".parse().unwrap(),
                guest_addr: None,
                guest_port: 1,
            })
        );
        for bad_port in ["8080.5", "-1", "null", "true", "65536"] {
            let req = format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"udp","host_port":1,"guest_port":{bad_port}}}}}"#
            );
            assert_eq!(
                parse(req.as_bytes()),
                Err("bad request: add_hostfwd: bad arguments.guest_port"),
                "{bad_port}"
            );
        }
        assert_eq!(
            parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":1,"host_port":1,"guest_port":1}}"#),
            Err("bad request: add_hostfwd: bad arguments.host_addr")
        );
        assert_eq!(
            parse(br#"{"execute":"add_hostfwd","arguments":{"proto":"TCP","host_port":1,"guest_port":1}}"#),
            Err("bad request: add_hostfwd: bad arguments.proto")
        );
    }

    #[test]
    fn size_limit_is_exactly_max_request() {
        let mut req = br#"{"execute":"get_stats"}"#.to_vec();
        req.resize(MAX_REQUEST, b' ');
        assert_eq!(parse(&req), Ok(Request::GetStats));
        req.push(b' ');
        assert_eq!(parse(&req), Err(TOO_LARGE));
        assert_eq!(
            reply_error(TOO_LARGE),
            r#"{"error":{"desc":"bad request: too large message"}}"#
        );
    }

    #[test]
    fn forward_entries_and_lookup() {
        let mut f = Forwards::default();
        assert!(f.is_empty());
        assert_eq!(f.list().to_string(), r#"{"entries":[]}"#);
        let fwd = Forward {
            proto: Proto::Udp,
            host: "[::1]:5353".parse().unwrap(),
            guest: "10.0.2.100:53".parse().unwrap(),
        };
        let id = f.add(fwd);
        assert_eq!((f.len(), f.get(id)), (1, Some(&fwd)));
        assert_eq!(f.get(id + 1), None);
        assert_eq!(
            forward_entry(id, &fwd).to_string(),
            r#"{"id":1,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}"#
        );
        assert_eq!(f.remove(id), Some(fwd));
        assert!(f.is_empty() && !f.conflicts(&fwd));
    }

    #[test]
    fn automatic_entries() {
        let mut f = Forwards::default();
        let fwd = Forward {
            proto: Proto::Tcp,
            host: "0.0.0.0:8080".parse().unwrap(),
            guest: "10.0.2.100:8080".parse().unwrap(),
        };
        let explicit = f.add(Forward {
            host: "0.0.0.0:22".parse().unwrap(),
            ..fwd
        });
        let id = f.add_auto(fwd, Some("Address already in use (os error 98)".into()));
        // A failed forward holds nothing.
        assert!(!f.conflicts(&fwd));
        assert_eq!(
            f.list().to_string(),
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":22,"guest_addr":"10.0.2.100","guest_port":8080},{"id":2,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":8080,"auto":true,"error":"Address already in use (os error 98)"}]}"#
        );
        f.set_error(id, None);
        assert_eq!(f.holder(&fwd), Some((id, true)));
        assert_eq!(f.explicit().len(), 1);
        assert_eq!(f.get(explicit).map(|g| g.host.port()), Some(22));
    }
}
