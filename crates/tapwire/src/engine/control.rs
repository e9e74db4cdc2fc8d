//! The control plane inside the event loop: accepting API clients, answering requests, and
//! the `list_connections` / `get_stats` reports.
//!
//! # Theory of operation
//! `control` owns the socket state machines; this file connects them to the engine: a
//! complete request is parsed by `api`, executed against the engine's tables, and the reply
//! queued on the client, all within one loop turn and without blocking (see `control`).
//! The reports read the flow tables and counters as they are at that moment.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;

use mio::Interest;

use super::host::{token, KIND_API, TOKEN_API};
use super::tcp::Phase;
use super::udp::UdpHost;
use super::Engine;
use crate::control::server::{Control, Readiness};
use crate::link::capture::{self, Capture};
use tapwire_proto::config::Forward;
use tapwire_proto::control::{parse, reply_error, reply_ok, Request};

impl Engine {
    /// Serve the JSON API on `path`.
    pub fn listen_api(&mut self, path: &std::path::Path) -> io::Result<()> {
        let mut control = Control::bind(path)?;
        self.host
            .registry()
            .register(control.listener(), TOKEN_API, Interest::READABLE)?;
        self.control = Some(control);
        Ok(())
    }

    pub(super) fn api_accept(&mut self) {
        let now_ms = self.clock.now_ms();
        let Some(control) = &mut self.control else {
            return;
        };
        let registry = self.host.registry();
        control.accept(now_ms, |idx, stream| {
            registry.register(
                stream,
                token(KIND_API, idx),
                Interest::READABLE | Interest::WRITABLE,
            )
        });
    }

    pub(super) fn api_event(&mut self, idx: usize, ev: &mio::event::Event) {
        self.api_client_event(idx, ev);
        // A client that left frees a slot for one waiting in the backlog.
        if self.control.as_ref().is_some_and(|c| c.backlog()) {
            self.api_accept();
        }
    }

    fn api_client_event(&mut self, idx: usize, ev: &mio::event::Event) {
        let Some(control) = &mut self.control else {
            return;
        };
        if ev.is_writable() {
            control.writable(idx);
        }
        if !(ev.is_readable() || ev.is_read_closed()) {
            return;
        }
        let Readiness::Request(bytes) = control.readable(idx) else {
            return;
        };
        let reply = self.handle_request(&bytes);
        if let Some(control) = &mut self.control {
            control.respond(idx, reply);
        }
    }

    /// The once-a-second sweep: drop expired clients, then admit waiting connections (a
    /// stalled client may be evicted for one; see `control::server`).
    pub(super) fn api_sweep(&mut self, now_ms: u64) {
        let Some(control) = &mut self.control else {
            return;
        };
        control.sweep(now_ms);
        if control.backlog() {
            self.api_accept();
        }
    }

    /// Answer one API request.
    pub fn handle_request(&mut self, bytes: &[u8]) -> String {
        let req = match parse(bytes) {
            Ok(r) => r,
            Err(desc) => return reply_error(desc),
        };
        match req {
            Request::AddHostfwd {
                proto,
                host,
                guest_addr,
                guest_port,
            } => {
                let guest_ip = guest_addr.unwrap_or(self.net.guest().into());
                let fwd = Forward {
                    proto,
                    host,
                    guest: SocketAddr::new(guest_ip, guest_port),
                };
                match self.add_forward(fwd) {
                    Ok(id) => reply_ok(serde_json::json!({ "id": id })),
                    Err(desc) => reply_error(&desc),
                }
            }
            Request::ListHostfwd => reply_ok(self.fwd.list.list()),
            Request::RemoveHostfwd { id } => {
                if self.auto_pin(id) {
                    tracing::info!(id, "automatic forward removed over the API; its port stays off while the guest listens");
                }
                if self.remove_forward(id) {
                    reply_ok(serde_json::json!({}))
                } else {
                    reply_error("bad request: remove_hostfwd: bad arguments.id")
                }
            }
            Request::ListConnections => reply_ok(self.all_connections_json()),
            Request::GetStats => reply_ok(self.all_stats_json()),
            Request::StartCapture(c) => self.api_start_capture(c),
            Request::StopCapture => match self.stop_capture() {
                Some(c) => reply_ok(serde_json::json!({
                    "path": c.path().display().to_string(),
                    "frames": c.frames,
                    "bytes": c.bytes,
                })),
                None => reply_error("bad request: stop_capture: no capture is running"),
            },
        }
    }

    fn api_start_capture(&mut self, c: tapwire_proto::control::Capture) -> String {
        if self.confined {
            return reply_error(
                "start_capture: the daemon is sandboxed (--enable-sandbox) and cannot open files; start it with --pcap FILE instead",
            );
        }
        if !self.is_first() || self.shard.is_some() {
            return reply_error("bad request: start_capture: the packet capture needs --threads 1");
        }
        if self.stats.device.capture.is_some() {
            return reply_error("bad request: start_capture: a capture is already running");
        }
        let opts = capture::Options {
            path: c.path.into(),
            max_bytes: c.max_bytes,
            rotate: c.rotate,
        };
        match self.start_capture(opts) {
            Ok(()) => reply_ok(serde_json::json!({})),
            Err(e) => reply_error(&format!("start_capture: {e}")),
        }
    }

    /// Start writing every frame crossing the TAP to a pcap file (replacing any capture).
    pub fn start_capture(&mut self, opts: capture::Options) -> io::Result<()> {
        let path = opts.path.clone();
        let c = Capture::start(opts).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        tracing::info!(path = %path.display(), "packet capture started");
        self.stats.device.capture = Some(Box::new(c));
        Ok(())
    }

    /// Stop the packet capture (its file is flushed and closed); the capture, if one ran.
    pub fn stop_capture(&mut self) -> Option<Box<Capture>> {
        let mut c = self.stats.device.capture.take()?;
        c.flush();
        tracing::info!(path = %c.path().display(), frames = c.frames, "packet capture stopped");
        Some(c)
    }

    /// The sandbox is on: refuse requests that would open files by path.
    pub fn set_confined(&mut self) {
        self.confined = true;
    }

    pub(super) fn connections_json(&self) -> serde_json::Value {
        use serde_json::json;
        let now_ms = self.clock.now_ms();
        let age = |born: Option<u64>| now_ms.saturating_sub(born.unwrap_or(now_ms)) as f64 / 1000.0;
        let mut out = Vec::new();
        for (idx, _, slot) in self.tcp.flows.iter() {
            let f = &slot.flow;
            out.push(json!({
                "proto": "tcp",
                "state": match f.phase { Phase::Connecting => "connecting", Phase::Open => "open", Phase::Aborted => "aborted" },
                "guest": f.guest.to_string(),
                "remote": f.dst.to_string(),
                "host": f.target.to_string(),
                "bytes_from_guest": f.bytes_to_host,
                "bytes_to_guest": f.bytes_to_guest,
                "segments_from_guest": f.segments_from_guest,
                "age_s": age(self.tcp.flows.born_ms(idx)),
            }));
        }
        for (idx, _, f) in self.udp.iter() {
            let host = match &f.host {
                UdpHost::Connected(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                UdpHost::Forwarded { client, .. } => client.to_string(),
            };
            out.push(json!({
                "proto": "udp",
                "guest": f.guest.to_string(),
                "remote": f.dst.to_string(),
                "host": host,
                "packets_from_guest": f.datagrams_out,
                "packets_to_guest": f.datagrams_in,
                "age_s": age(self.udp.born_ms(idx)),
            }));
        }
        for (idx, _, f) in self.icmp.iter() {
            out.push(json!({
                "proto": "icmp",
                "guest": f.guest.to_string(),
                "remote": f.dst.to_string(),
                "ident": f.ident,
                "age_s": age(self.icmp.born_ms(idx)),
            }));
        }
        json!({ "connections": out })
    }

    pub(super) fn stats_json(&self) -> serde_json::Value {
        use serde_json::json;
        let s = &self.stats;
        let drops: serde_json::Map<String, serde_json::Value> = s
            .drops
            .iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        let mut out = json!({
            "frames_in": s.frames_in,
            "bytes_in": s.bytes_in,
            "frames_out": s.device.frames_out,
            "bytes_out": s.device.bytes_out,
            "tap_write_errors": s.device.write_errors,
            "uso": {
                "enabled": self.link.uso,
                "frames_in": s.uso_in,
                "frames_out": s.device.uso_out,
                "cut": s.uso_cut,
            },
            "udp_trains": {
                "enabled": self.net.udp_offload(),
                "sent": s.trains_out,
                "datagrams": s.train_datagrams,
                "cut": s.trains_cut,
                "to_guest": s.trains_in,
            },
            "drops": drops,
            "drops_total": s.drops.total(),
            "flows": {
                "tcp": self.tcp.flows.len(),
                "udp": self.udp.len(),
                "icmp": self.icmp.len(),
                "tcp_connecting": self.tcp.connecting,
            },
            "flows_total": {
                "tcp": s.tcp_flows,
                "udp": s.udp_flows,
                "icmp": s.icmp_flows,
            },
            "forwards": self.fwd.list.len(),
            "handed": self.handed_json(),
            "capture": self.stats.device.capture.as_ref().map(|c| json!({
                "path": c.path().display().to_string(),
                "frames": c.frames,
                "bytes": c.bytes,
                "ended": c.ended,
            })),
        });
        if let (Some(out), serde_json::Value::Object(tcp)) =
            (out.as_object_mut(), self.tcp.stats_json())
        {
            out.extend(tcp);
        }
        out
    }
}
