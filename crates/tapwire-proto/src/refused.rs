//! A negative cache of host destinations that refused a TCP connect (sans-IO).
//!
//! # Theory of operation
//! Every guest SYN to a new (address, port) costs the engine a host socket and a `connect()`.
//! A guest that floods SYNs to a closed port would make it pay that for every SYN, only to
//! answer each with a RST. After a host connect to a destination is refused
//! ([`RefusedCache::refused`]), new SYNs to the same destination within [`REFUSED_TTL_MS`] are
//! answered with a RST at once ([`RefusedCache::is_refused`]), without a socket.
//!
//! The cache is a fixed array of [`REFUSED_SLOTS`] entries (destination, expiry), searched
//! linearly (only SYNs to new flows look it up): no allocation after creation, bounded memory.
//! A new destination takes an expired slot, or else the one that expires first (the oldest
//! refusal). A refused destination that refuses again has its expiry renewed. The TTL is
//! short, so a port that opens later is reachable again within about a second and a half.
//! Times are the caller's monotonic clock in milliseconds (tests use a fake one).
#![forbid(unsafe_code)]

use std::net::SocketAddr;

/// How long a refusal is remembered.
pub const REFUSED_TTL_MS: u64 = 1_500;
/// How many refused destinations are remembered at once.
pub const REFUSED_SLOTS: usize = 256;

/// The negative cache; see the module documentation.
#[derive(Debug, Clone)]
pub struct RefusedCache {
    /// (destination, expiry in ms); an expiry <= now is a free slot.
    slots: Vec<(Option<SocketAddr>, u64)>,
    ttl_ms: u64,
    /// SYNs answered from the cache.
    pub hits: u64,
}

impl Default for RefusedCache {
    fn default() -> Self {
        RefusedCache::new(REFUSED_SLOTS, REFUSED_TTL_MS)
    }
}

impl RefusedCache {
    /// A cache of `slots` destinations (at least one), each remembered for `ttl_ms`.
    pub fn new(slots: usize, ttl_ms: u64) -> RefusedCache {
        RefusedCache {
            slots: vec![(None, 0); slots.max(1)],
            ttl_ms,
            hits: 0,
        }
    }

    /// Whether a connect to `dst` was refused less than the TTL before `now_ms` (counted as a
    /// hit when it was).
    pub fn is_refused(&mut self, dst: SocketAddr, now_ms: u64) -> bool {
        let hit = self
            .slots
            .iter()
            .any(|&(d, until)| d == Some(dst) && until > now_ms);
        if hit {
            self.hits += 1;
        }
        hit
    }

    /// A host connect to `dst` was refused at `now_ms`.
    pub fn refused(&mut self, dst: SocketAddr, now_ms: u64) {
        let until = now_ms.saturating_add(self.ttl_ms);
        let mut pick = 0;
        for (i, &(d, exp)) in self.slots.iter().enumerate() {
            if d == Some(dst) {
                pick = i;
                break;
            }
            // Prefer a free (expired) slot, else the one that expires first.
            if exp < self.slots[pick].1 {
                pick = i;
            }
        }
        self.slots[pick] = (Some(dst), until);
    }

    /// Destinations remembered at `now_ms`.
    pub fn len(&self, now_ms: u64) -> usize {
        self.slots.iter().filter(|&&(_, exp)| exp > now_ms).count()
    }

    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn remembers_a_refusal_for_the_ttl_only() {
        let mut c = RefusedCache::default();
        assert!(!c.is_refused(addr(80), 1_000));
        c.refused(addr(80), 1_000);
        assert!(c.is_refused(addr(80), 1_000));
        assert!(c.is_refused(addr(80), 1_000 + REFUSED_TTL_MS - 1));
        assert!(!c.is_refused(addr(80), 1_000 + REFUSED_TTL_MS));
        assert_eq!(c.hits, 2);
        // Per destination: another port or address is not affected.
        c.refused(addr(80), 5_000);
        assert!(!c.is_refused(addr(81), 5_000));
        assert!(!c.is_refused(SocketAddr::from(([127, 0, 0, 2], 80)), 5_000));
        assert!(!c.is_empty(5_000));
        assert!(c.is_empty(5_000 + REFUSED_TTL_MS));
    }

    #[test]
    fn a_new_refusal_renews_the_entry_without_a_second_slot() {
        let mut c = RefusedCache::new(4, 100);
        c.refused(addr(1), 0);
        c.refused(addr(1), 50);
        assert_eq!(c.len(60), 1);
        assert!(c.is_refused(addr(1), 149));
        assert!(!c.is_refused(addr(1), 150));
    }

    #[test]
    fn bounded_the_oldest_refusal_goes_first() {
        let mut c = RefusedCache::new(3, 1_000);
        for (i, port) in [1, 2, 3].into_iter().enumerate() {
            c.refused(addr(port), i as u64 * 10);
        }
        c.refused(addr(4), 30);
        assert_eq!(c.len(30), 3);
        assert!(!c.is_refused(addr(1), 30), "the oldest entry was evicted");
        for port in [2, 3, 4] {
            assert!(c.is_refused(addr(port), 30));
        }
        // An expired slot is reused before a live one.
        c.refused(addr(5), 1_015); // port 2 (expired at 1010) makes room
        assert!(c.is_refused(addr(3), 1_015));
        assert!(c.is_refused(addr(4), 1_015));
        assert!(c.is_refused(addr(5), 1_015));
        // A flood of distinct destinations never grows the cache.
        for port in 100..10_000 {
            c.refused(addr(port), 2_000);
        }
        assert_eq!(c.len(2_000), 3);
        assert_eq!(c.slots.len(), 3);
    }

    #[test]
    fn zero_slots_still_works() {
        let mut c = RefusedCache::new(0, 10);
        c.refused(addr(1), 0);
        assert!(c.is_refused(addr(1), 5));
    }
}
