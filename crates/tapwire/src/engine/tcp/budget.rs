//! What TCP flows may cost: the ring budget and the refused-destination cache, and what
//! `get_stats` shows of them.
//!
//! # Theory of operation
//! Two guards sit in front of a new flow's host socket (see `new_tcp_flow`):
//!
//! - [`RefusedCache`]: a SYN to a host destination whose connect was refused within the last
//!   [`tapwire_proto::refused::REFUSED_TTL_MS`] gets a RST at once, with no socket or connect
//!   (a SYN flood to a closed port costs one connect per TTL, not one per SYN).
//! - [`BufferBudget`]: the flow's two smoltcp rings are sized by the budget
//!   (`--max-buffer-memory`, default 1/16 of the RAM): full size while full-size flows take
//!   less than a quarter of it (and 16 MiB), small past that, refused (RST) when it is spent. Rings go back when
//!   the flow is removed. Ring pages are backed only as data is written, so the budget bounds
//!   the memory of flows whose ends stop reading; flows that move data do not pin more.
//!   A flow with small rings also gets small fixed kernel buffers on its host socket
//!   ([`SMALL_HOST_BUFFER`]): the kernel's autotuning would otherwise let each stalled flow
//!   hold megabytes of socket memory (what the peer sent and we did not read, what we wrote
//!   and the peer did not read). Not RSS, but memory all the same.
//!
//! `get_stats` reports `tcp_buffers` (the budget, bytes budgeted and the peak, bytes queued in
//! the rings right now, flows shrunk and refused) and `tcp_connects` (host connects started,
//! SYNs answered from the refused cache, flows served by a finished flow's socket and rings,
//! sockets kept for that now: see `spare`). Port forwards' flows are opened by the host side and
//! are not budgeted.
#![forbid(unsafe_code)]

use tapwire_proto::budget::BufferBudget;

use super::TcpTable;
use smoltcp::socket::tcp as smol_tcp;

/// SO_RCVBUF and SO_SNDBUF of the host socket of a flow with small rings (the kernel doubles
/// them for its bookkeeping).
pub(super) const SMALL_HOST_BUFFER: usize = 64 << 10;

/// The RAM to size the default budget by when /proc/meminfo cannot be read.
const FALLBACK_RAM: u64 = 4 << 30;

/// The budget: `max` bytes, or the default for this machine's RAM.
pub(super) fn budget(max: Option<u64>) -> BufferBudget {
    BufferBudget::new(max.unwrap_or_else(|| BufferBudget::default_max(total_ram())))
}

/// `--threads N`: each worker's part of the TCP buffer budget (the whole of it for one).
pub fn budget_share(net: &tapwire_proto::config::NetConfig) -> Option<u64> {
    match net.threads {
        0 | 1 => net.max_buffer_memory,
        n => {
            let all = net
                .max_buffer_memory
                .unwrap_or_else(|| BufferBudget::default_max(total_ram()));
            Some(all / n as u64)
        }
    }
}

/// MemTotal from /proc/meminfo (read once, when the engine starts).
fn total_ram() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(FALLBACK_RAM)
}

impl TcpTable {
    /// Bytes queued in all flows' rings now (one pass over the flows; for `get_stats` only).
    pub fn buffer_in_use(&self) -> u64 {
        self.flows
            .iter()
            .map(|(_, _, slot)| {
                let s = slot.sockets.get::<smol_tcp::Socket>(slot.flow.handle);
                (s.recv_queue() + s.send_queue()) as u64
            })
            .sum()
    }

    /// The `get_stats` fields of this module.
    pub fn stats_json(&self) -> serde_json::Value {
        let b = self.budget.stats();
        serde_json::json!({
            "tcp_buffers": {
                "max": b.max,
                "budgeted": b.budgeted,
                "peak": b.peak,
                "in_use": self.buffer_in_use(),
                "flows_shrunk": b.flows_shrunk,
                "flows_refused": b.flows_refused,
            },
            "tcp_connects": {
                "started": self.host_connects,
                "refused_cached": self.refused.hits,
                "sockets_reused": self.spares.reused,
                "sockets_spare": self.spares.len(),
            },
        })
    }
}
