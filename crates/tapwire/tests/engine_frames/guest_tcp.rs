//! A minimal guest TCP endpoint written against the frames, just enough to drive the engine:
//! in-order receive (out-of-order segments are dropped and re-ACKed), go-back-N send with a
//! stall timer, window probes, and knobs to stop ACKing or to shrink the advertised window.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::frames::{self, Seg, TcpSeg, ACK, FIN, PSH, RST, SYN};
use crate::harness::{deadline, Harness};

/// Our MSS (the default MTU's).
pub const MSS: usize = 1460;
/// Resend from the first unacknowledged byte after this long without progress.
const STALL: Duration = Duration::from_millis(250);

pub struct Conn<'h> {
    pub h: &'h Harness,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// Sequence number of our first data byte (ISS + 1).
    pub base: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    /// Highest sequence number sent so far.
    pub snd_max: u32,
    pub rcv_nxt: u32,
    /// The peer's window in bytes (scaled).
    pub peer_wnd: u32,
    pub peer_ws: u8,
    /// Smallest window the peer advertised since the last [`Conn::reset_min_wnd`].
    pub min_peer_wnd: u32,
    /// Our advertised window (we send window scale 0, so bytes).
    pub wnd: u16,
    /// Right edge of the window we last advertised.
    pub rcv_adv: u32,
    /// The application does not read: the window's right edge stays where it was.
    pub app_stalled: bool,
    /// Whether to ACK what arrives.
    pub acking: bool,
    /// In-order data received.
    pub received: Vec<u8>,
    /// Highest sequence number + length seen from the peer (retransmissions included).
    pub highest_end: u32,
    pub peer_syn: u32,
    pub fin_received: bool,
    pub rst_received: Option<TcpSeg>,
    last_progress: Instant,
}

fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl<'h> Conn<'h> {
    /// Send a SYN (MSS 1460, window scale 0) from `local_port` to `remote`; returns the
    /// connection in SYN-SENT.
    pub fn syn(h: &'h Harness, local_port: u16, remote: SocketAddrV4, wnd: u16) -> Conn<'h> {
        let iss = u32::from(local_port).wrapping_mul(2_654_435_761);
        let c = Conn {
            h,
            local: h.guest_at(local_port),
            remote,
            base: iss.wrapping_add(1),
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_max: iss.wrapping_add(1),
            rcv_nxt: 0,
            peer_wnd: 0,
            peer_ws: 0,
            min_peer_wnd: u32::MAX,
            wnd,
            rcv_adv: 0,
            app_stalled: false,
            acking: true,
            received: Vec::new(),
            highest_end: 0,
            peer_syn: 0,
            fin_received: false,
            rst_received: None,
            last_progress: Instant::now(),
        };
        // MSS 1460, NOP, window scale 0.
        let opts = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 0];
        c.emit(SYN, iss, 0, opts, &[]);
        c
    }

    /// SYN, wait for the SYN-ACK (checked), ACK it; we advertise a 64 KiB window.
    pub fn connect(h: &'h Harness, local_port: u16, remote: SocketAddrV4) -> Conn<'h> {
        Conn::connect_wnd(h, local_port, remote, 65_535)
    }

    /// [`Conn::connect`] advertising `wnd`.
    pub fn connect_wnd(h: &'h Harness, port: u16, remote: SocketAddrV4, wnd: u16) -> Conn<'h> {
        let mut c = Conn::syn(h, port, remote, wnd);
        let s = c.wait_segment(deadline());
        assert!(
            s.has(SYN) && s.has(ACK) && !s.has(RST),
            "expected a SYN-ACK, got {s:?}"
        );
        assert_eq!(s.ack, c.base, "SYN-ACK acknowledges our SYN");
        assert!(s.mss.is_some_and(|m| m >= 536), "SYN-ACK MSS: {:?}", s.mss);
        c.peer_ws = s.ws.expect("SYN-ACK answers our window scale");
        c.peer_syn = s.seq;
        c.rcv_nxt = s.seq.wrapping_add(1);
        c.highest_end = c.rcv_nxt;
        c.snd_una = c.base;
        c.peer_wnd = u32::from(s.wnd); // never scaled in a SYN
        c.ack_now();
        c
    }

    fn emit(&self, flags: u8, seq: u32, ack: u32, opts: Vec<u8>, data: &[u8]) {
        let seg = Seg {
            flags,
            seq,
            ack,
            wnd: self.adv(),
            opts,
            data,
        };
        let t = frames::tcp4(self.local, self.remote, &seg);
        let f = frames::ipv4(
            self.h.host_mac,
            *self.local.ip(),
            *self.remote.ip(),
            frames::TCP,
            &t,
        );
        self.h.send(&f);
    }

    /// ACK everything received so far, with our current window.
    /// The window to advertise now.
    fn adv(&self) -> u16 {
        if self.app_stalled {
            self.rcv_adv.wrapping_sub(self.rcv_nxt).min(65_535) as u16
        } else {
            self.wnd
        }
    }

    pub fn ack_now(&mut self) {
        if !self.app_stalled {
            self.rcv_adv = self.rcv_nxt.wrapping_add(u32::from(self.wnd));
        }
        self.emit(ACK, self.snd_nxt, self.rcv_nxt, Vec::new(), &[]);
    }

    pub fn send_fin(&mut self) {
        self.emit(FIN | ACK, self.snd_nxt, self.rcv_nxt, Vec::new(), &[]);
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.snd_max = self.snd_nxt;
    }

    pub fn send_rst(&self) {
        self.emit(RST | ACK, self.snd_nxt, self.rcv_nxt, Vec::new(), &[]);
    }

    pub fn reset_min_wnd(&mut self) {
        self.min_peer_wnd = u32::MAX;
    }

    /// The next segment of this connection (others are discarded), not yet processed.
    pub fn wait_segment(&self, until: Instant) -> TcpSeg {
        self.next_segment(until)
            .unwrap_or_else(|| panic!("{}: timed out waiting for a segment", self.local))
    }

    fn next_segment(&self, until: Instant) -> Option<TcpSeg> {
        loop {
            let f = self.h.recv(until)?;
            let Some(s) = frames::parse_tcp(&f) else {
                continue;
            };
            if s.src == self.remote && s.dst == self.local {
                return Some(s);
            }
        }
    }

    /// Process one segment: ACK, window, in-order data, FIN, RST.
    pub fn handle(&mut self, s: &TcpSeg) {
        if s.has(RST) {
            self.rst_received = Some(s.clone());
            return;
        }
        if s.has(SYN) {
            // A retransmitted SYN-ACK: our ACK was lost.
            self.ack_now();
            return;
        }
        if s.has(ACK) {
            if after(s.ack, self.snd_una) && !after(s.ack, self.snd_max) {
                self.snd_una = s.ack;
                if after(s.ack, self.snd_nxt) {
                    self.snd_nxt = s.ack;
                }
                self.last_progress = Instant::now();
            }
            self.peer_wnd = u32::from(s.wnd) << self.peer_ws;
            self.min_peer_wnd = self.min_peer_wnd.min(self.peer_wnd);
        }
        let len = s.data.len() as u32;
        let end = s.seq.wrapping_add(len);
        if after(end, self.highest_end) {
            self.highest_end = end;
        }
        let mut consumed = false;
        let fits = !after(end, self.rcv_adv);
        if len > 0 && s.seq == self.rcv_nxt && self.acking && fits {
            self.received.extend_from_slice(&s.data);
            self.rcv_nxt = end;
            consumed = true;
        }
        if s.has(FIN) && end == self.rcv_nxt && !self.fin_received && self.acking {
            self.fin_received = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            consumed = true;
        }
        if self.acking && (consumed || len > 0 || s.has(FIN)) {
            // Also answers out-of-order data and probes beyond our window: a duplicate ACK.
            self.ack_now();
        }
    }

    /// Receive and process segments until `cond` holds; false if `until` passed first.
    pub fn pump_until(&mut self, until: Instant, mut cond: impl FnMut(&Self) -> bool) -> bool {
        while !cond(self) {
            match self.next_segment(until) {
                Some(s) => self.handle(&s),
                None => return false,
            }
        }
        true
    }

    /// Until `n` bytes have been received in order.
    pub fn recv_exact(&mut self, n: usize, until: Instant) {
        let ok = self.pump_until(until, |c| c.received.len() >= n);
        assert!(ok, "received {} of {n} bytes", self.received.len());
    }

    /// Bytes of `data` acknowledged so far.
    pub fn acked(&self) -> usize {
        self.snd_una.wrapping_sub(self.base) as usize
    }

    /// One step of sending `data` (the whole stream, from its start): fill the peer's window,
    /// then process what comes back for a moment; resend after a stall, probe a closed window.
    pub fn send_step(&mut self, data: &[u8]) {
        let total = data.len() as u32;
        let end = self.base.wrapping_add(total);
        if self.snd_una != self.snd_max && self.last_progress.elapsed() > STALL {
            self.snd_nxt = self.snd_una; // go back N
            self.last_progress = Instant::now();
        }
        let limit = self.snd_una.wrapping_add(self.peer_wnd);
        while after(end, self.snd_nxt) && after(limit, self.snd_nxt) {
            let off = self.snd_nxt.wrapping_sub(self.base) as usize;
            let room = limit.wrapping_sub(self.snd_nxt) as usize;
            let n = MSS.min(room).min(data.len() - off);
            self.emit(
                PSH | ACK,
                self.snd_nxt,
                self.rcv_nxt,
                Vec::new(),
                &data[off..off + n],
            );
            self.snd_nxt = self.snd_nxt.wrapping_add(n as u32);
            if after(self.snd_nxt, self.snd_max) {
                self.snd_max = self.snd_nxt;
            }
        }
        if self.peer_wnd == 0
            && self.snd_una == self.snd_nxt
            && after(end, self.snd_una)
            && self.last_progress.elapsed() > STALL
        {
            // Zero-window probe: one byte; the answer carries the current window.
            let off = self.acked();
            self.emit(
                ACK,
                self.snd_una,
                self.rcv_nxt,
                Vec::new(),
                &data[off..off + 1],
            );
            if after(self.snd_una.wrapping_add(1), self.snd_max) {
                self.snd_max = self.snd_una.wrapping_add(1);
            }
            self.last_progress = Instant::now();
        }
        let t = Instant::now() + Duration::from_millis(20);
        while let Some(s) = self.next_segment(t) {
            self.handle(&s);
            if after(self.snd_una.wrapping_add(self.peer_wnd), self.snd_nxt)
                && after(end, self.snd_nxt)
            {
                break; // room to send more
            }
        }
    }

    /// Send all of `data` and wait until it is acknowledged.
    pub fn send_all(&mut self, data: &[u8], until: Instant) {
        while self.acked() < data.len() {
            assert!(
                Instant::now() < until,
                "sent {} of {} bytes",
                self.acked(),
                data.len()
            );
            assert!(self.rst_received.is_none(), "reset while sending");
            self.send_step(data);
        }
    }
}
