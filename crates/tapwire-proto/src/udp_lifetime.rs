//! How long a UDP NAT binding lives, and which one a full table gives up (sans-IO).
//!
//! # Theory of operation
//! UDP has no connection to follow, so a binding (guest endpoint, destination) ⇄ host socket
//! lives while datagrams move and ends after a quiet spell. Too short and a tunnel or game
//! that sits idle loses its mapping (the peer's next datagram finds nobody: issue 14 saw a
//! WireGuard session die after 80 s idle); too long and one-shot datagrams keep host sockets
//! open. The rules follow libslirp (slirp4netns) and Linux conntrack:
//!
//! | binding | idle timeout | why |
//! |---|---|---|
//! | DNS (to port 53) | [`DNS_MS`] = 10 s | libslirp's `SO_EXPIREFAST`: one query, one answer |
//! | no reply seen yet | [`UNREPLIED_MS`] = 240 s | libslirp's `SO_EXPIRE` (it has a single state) |
//! | datagrams seen both ways ("assured") | [`ASSURED_MS`] = 300 s | longer than conntrack's 180 s `udp_timeout_stream`, so a binding that works through the host's own NAT is never the first to forget |
//!
//! Every datagram either way restarts the timer. The table is bounded
//! (`engine::udp::MAX_FLOWS`); when it is full a new destination does not get refused: the
//! binding that moved least recently goes, preferring one that never saw a reply among the
//! [`EVICT_SCAN`] oldest (conntrack's early drop spares assured entries the same way), so a
//! flood of new destinations recycles its own bindings and leaves established ones alone.
#![forbid(unsafe_code)]

use crate::flow::FlowTable;

/// Idle timeout of a DNS binding.
pub const DNS_MS: u64 = 10_000;
/// Idle timeout of a binding that has not seen a reply.
pub const UNREPLIED_MS: u64 = 240_000;
/// Idle timeout of a binding with datagrams seen in both directions.
pub const ASSURED_MS: u64 = 300_000;
/// How many of the oldest bindings eviction looks at for an unreplied one.
pub const EVICT_SCAN: usize = 64;

/// What the lifetime of a binding depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// The binding is a DNS exchange (short-lived by design).
    pub dns: bool,
    /// Datagrams from the guest, and to the guest.
    pub out: u64,
    pub into: u64,
}

impl Traffic {
    /// Datagrams have moved both ways.
    #[inline]
    pub fn assured(&self) -> bool {
        self.out > 0 && self.into > 0
    }

    /// How long the binding may sit idle.
    #[inline]
    pub fn idle_timeout_ms(&self) -> u64 {
        if self.dns {
            DNS_MS
        } else if self.assured() {
            ASSURED_MS
        } else {
            UNREPLIED_MS
        }
    }
}

/// The binding a full table gives up for a new one: among the [`EVICT_SCAN`] least recently
/// used, the oldest without a reply, else the least recently used of all. `None` if the
/// table is empty.
pub fn victim<K: std::hash::Hash + Eq + Copy, V>(
    table: &FlowTable<K, V>,
    traffic: impl Fn(&V) -> Traffic,
) -> Option<usize> {
    let mut first = None;
    for idx in table.oldest(EVICT_SCAN) {
        first.get_or_insert(idx);
        if table.get(idx).is_some_and(|v| !traffic(v).assured()) {
            return Some(idx);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dns: bool, out: u64, into: u64) -> Traffic {
        Traffic { dns, out, into }
    }

    #[test]
    fn timeouts_by_state() {
        assert_eq!(t(true, 1, 1).idle_timeout_ms(), DNS_MS);
        assert_eq!(t(false, 1, 0).idle_timeout_ms(), UNREPLIED_MS);
        // Inbound through a forward: the guest has not answered yet.
        assert_eq!(t(false, 0, 3).idle_timeout_ms(), UNREPLIED_MS);
        assert_eq!(t(false, 5, 1).idle_timeout_ms(), ASSURED_MS);
        // Never shorter than slirp4netns's 240 s, assured longer than conntrack's 180 s.
        const { assert!(UNREPLIED_MS >= 240_000 && ASSURED_MS > 180_000) };
    }

    /// A WireGuard-like session: handshake both ways, then 250 s of silence (issue 14: the
    /// peer's next packet must still reach the guest), then expiry after the assured timeout.
    #[test]
    fn idle_tunnel_survives_250_s_with_fake_clock() {
        let mut table: FlowTable<u16, Traffic> = FlowTable::new(16);
        let wg = table.insert(51820, t(false, 1, 0), 0).unwrap();
        let dns = table.insert(53, t(true, 1, 1), 0).unwrap();
        let oneshot = table.insert(9, t(false, 1, 0), 0).unwrap();
        // The reply arrives.
        table.get_mut(wg).unwrap().into += 1;
        table.touch(wg, 50);
        let sweep = |table: &mut FlowTable<u16, Traffic>, now| -> Vec<u16> {
            table
                .expire(now, |v| v.idle_timeout_ms())
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(sweep(&mut table, 10_001), vec![53]);
        assert_eq!(table.get(dns), None);
        assert!(sweep(&mut table, 240_000).is_empty());
        assert_eq!(sweep(&mut table, 240_001), vec![9]);
        assert_eq!(table.get(oneshot), None);
        // 250 s after the last datagram: still there.
        assert!(sweep(&mut table, 250_050).is_empty());
        assert_eq!(table.find(&51820), Some(wg));
        assert!(sweep(&mut table, 300_050).is_empty());
        assert_eq!(sweep(&mut table, 300_051), vec![51820]);
    }

    #[test]
    fn full_table_evicts_oldest_unreplied_first() {
        let mut table: FlowTable<u32, Traffic> = FlowTable::new(4);
        assert_eq!(victim(&table, |v| *v), None);
        let a = table.insert(1, t(false, 3, 3), 0).unwrap(); // assured, oldest
        let b = table.insert(2, t(false, 1, 0), 1).unwrap(); // unreplied
        let c = table.insert(3, t(false, 1, 0), 2).unwrap();
        let d = table.insert(4, t(false, 2, 2), 3).unwrap();
        assert!(table.is_full());
        assert_eq!(victim(&table, |v| *v), Some(b));
        // Touching b makes c the oldest unreplied one.
        table.touch(b, 4);
        assert_eq!(victim(&table, |v| *v), Some(c));
        // Only assured bindings left: the least recently used goes.
        table.remove(b);
        table.remove(c);
        assert_eq!(victim(&table, |v| *v), Some(a));
        table.touch(a, 5);
        assert_eq!(victim(&table, |v| *v), Some(d));
    }

    /// A flood of new destinations recycles its own bindings: the established ones outlive
    /// any number of one-shot datagrams.
    #[test]
    fn flood_keeps_established_bindings() {
        let cap = 256;
        let mut table: FlowTable<u32, Traffic> = FlowTable::new(cap);
        let keep: Vec<usize> = (0..8)
            .map(|k| table.insert(k, t(false, 1, 1), 0).unwrap())
            .collect();
        for (now, k) in (100u32..100_000).enumerate() {
            if table.is_full() {
                let v = victim(&table, |v| *v).unwrap();
                assert!(
                    !table.get(v).unwrap().assured(),
                    "evicted an assured binding"
                );
                table.remove(v);
            }
            table.insert(k, t(false, 1, 0), now as u64 + 1).unwrap();
            assert!(table.len() <= cap);
        }
        for (k, idx) in keep.iter().enumerate() {
            assert_eq!(table.find(&(k as u32)), Some(*idx));
        }
    }
}
