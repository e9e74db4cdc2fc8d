//! The global TCP buffer budget: how much ring memory each new flow is offered (sans-IO).
//!
//! # Theory of operation
//! Every TCP flow the engine proxies holds two rings: what the guest sent and the host has not
//! taken yet (its size is the receive window the guest is offered), and what the host sent and
//! the guest has not acknowledged yet. A flow whose two ends stop reading fills both, so the
//! rings of stalled flows are real memory, not capacity: without a bound, a guest that opens
//! many flows to a peer that never reads pins two full rings per flow.
//!
//! The budget bounds the sum of the ring sizes of all live flows by `max` bytes:
//!
//! - A new flow gets **full** rings (the size the link wants for bulk throughput) while the
//!   full-size flows together stay within a quarter of the budget and [`FULL_CAP`] (with
//!   offloads, 1 MiB rings: 8 such flows at once).
//! - Past that it gets **small** rings ([`SMALL_RING`] each), enough for interactive traffic
//!   and a modest window, counted as *shrunk*.
//! - When even small rings would exceed `max`, the flow is **refused** (the engine answers
//!   the SYN with a RST) and counted.
//! - A flow's rings go back to the budget when it is removed ([`BufferBudget::release`]).
//!
//! So a guest that stalls thousands of flows pins at most `max` bytes of rings, and each
//! stalled flow past the first few costs two small rings, while the first flows (the usual
//! bulk transfer) keep full rings. Small rings cost a single bulk transfer about a quarter of
//! its throughput (measured with iperf3 at 64 KiB against 1 MiB), so they are for the flows
//! that arrive while many others hold full rings. Ring sizes are decided when the flow is
//! created because smoltcp's rings are fixed for a socket's life (the receive ring also fixes
//! the window scale announced in the SYN-ACK).
//!
//! Pure bookkeeping: no clock, no I/O; the caller allocates the rings it is granted.
#![forbid(unsafe_code)]

/// The size of each ring of a flow shrunk by the budget (the largest unscaled TCP window).
pub const SMALL_RING: usize = 64 << 10;
/// The smallest budget accepted.
pub const MIN_BUDGET: u64 = 4 << 20;
/// The most ring memory full-size flows may take together, whatever the budget.
pub const FULL_CAP: u64 = 16 << 20;

/// The ring sizes granted to one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rings {
    /// Guest -> host ring (the window offered to the guest).
    pub rx: usize,
    /// Host -> guest ring.
    pub tx: usize,
    /// Counted in the full-size share.
    pub full: bool,
}

impl Rings {
    /// Both rings together.
    pub fn bytes(self) -> u64 {
        (self.rx + self.tx) as u64
    }
}

/// Counters of the budget (for `get_stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget (`--max-buffer-memory`).
    pub max: u64,
    /// Ring bytes of the live flows.
    pub budgeted: u64,
    /// The most that was ever budgeted at once.
    pub peak: u64,
    /// Flows that got small rings because the budget was filling.
    pub flows_shrunk: u64,
    /// Flows refused because the budget was full.
    pub flows_refused: u64,
}

/// The budget; see the module documentation.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    max: u64,
    /// Ring bytes of all live flows.
    budgeted: u64,
    /// Ring bytes of the live flows that got full rings.
    full: u64,
    stats: BudgetStats,
}

impl BufferBudget {
    /// Full-size rings may take this fraction (1/N) of the budget.
    pub const FULL_SHARE: u64 = 4;

    /// A budget of `max` bytes (at least [`MIN_BUDGET`]).
    pub fn new(max: u64) -> BufferBudget {
        let max = max.max(MIN_BUDGET);
        BufferBudget {
            max,
            budgeted: 0,
            full: 0,
            stats: BudgetStats {
                max,
                ..BudgetStats::default()
            },
        }
    }

    /// The default budget for a machine with `total_ram` bytes: 1/16 of it, within
    /// 64 MiB..=2 GiB (with 4 GiB: 256 MiB; full rings of 1 MiB for 8 flows at once, and
    /// 1920 flows with small rings).
    pub fn default_max(total_ram: u64) -> u64 {
        (total_ram / 16).clamp(64 << 20, 2 << 30)
    }

    /// The ring bytes full-size flows may take together.
    fn full_share(&self) -> u64 {
        (self.max / Self::FULL_SHARE).min(FULL_CAP)
    }

    /// Rings for a new flow whose link wants `full` bytes per ring, or `None` (refused).
    pub fn grant(&mut self, full: usize) -> Option<Rings> {
        let full_rings = Rings {
            rx: full,
            tx: full,
            full: true,
        };
        let small = SMALL_RING.min(full);
        let small_rings = Rings {
            rx: small,
            tx: small,
            full: false,
        };
        let rings = if self.full + full_rings.bytes() <= self.full_share()
            && self.budgeted + full_rings.bytes() <= self.max
        {
            self.full += full_rings.bytes();
            full_rings
        } else if self.budgeted + small_rings.bytes() <= self.max {
            if small < full {
                self.stats.flows_shrunk += 1;
            }
            small_rings
        } else {
            self.stats.flows_refused += 1;
            return None;
        };
        self.budgeted += rings.bytes();
        self.stats.peak = self.stats.peak.max(self.budgeted);
        Some(rings)
    }

    /// A flow granted `rings` by [`grant`](Self::grant) is gone.
    pub fn release(&mut self, rings: Rings) {
        if rings.full {
            self.full = self.full.saturating_sub(rings.bytes());
        }
        self.budgeted = self.budgeted.saturating_sub(rings.bytes());
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            budgeted: self.budgeted,
            ..self.stats
        }
    }
}

/// Parse a size such as `256M`, `1G`, `65536`, `512k` (binary multiples; an optional `B`/`iB`
/// suffix). Errors say what is wrong.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim_end_matches(['B', 'b']);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 30),
        Some(b't' | b'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid size '{s}' (expected a number with an optional K, M, G or T suffix)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))?;
    if bytes < MIN_BUDGET {
        return Err(format!("size '{s}' is below the minimum of 4M"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn full_rings_until_a_quarter_then_small_then_refused() {
        let mut b = BufferBudget::new(16 << 20);
        // 4 MiB of full-size rings: 2 flows of 2 x 1 MiB.
        let full: Vec<_> = (0..2).map(|_| b.grant(MIB).unwrap()).collect();
        assert!(full
            .iter()
            .all(|r| (r.rx, r.tx, r.full) == (MIB, MIB, true)));
        // The rest: small rings, 12 MiB / 128 KiB = 96 flows.
        for _ in 0..96 {
            let r = b.grant(MIB).unwrap();
            assert_eq!((r.rx, r.tx, r.full), (SMALL_RING, SMALL_RING, false));
        }
        assert_eq!(b.grant(MIB), None);
        let s = b.stats();
        assert_eq!(s.budgeted, 16 << 20);
        assert_eq!(s.peak, 16 << 20);
        assert_eq!(s.flows_shrunk, 96);
        assert_eq!(s.flows_refused, 1);
        assert_eq!(s.max, 16 << 20);
    }

    #[test]
    fn released_rings_are_offered_again() {
        let mut b = BufferBudget::new(16 << 20);
        let a = b.grant(MIB).unwrap();
        let c = b.grant(MIB).unwrap();
        assert_eq!(c.rx, MIB);
        // A quarter of the budget is full-size: the next one is small.
        let s = b.grant(MIB).unwrap();
        assert_eq!(s.rx, SMALL_RING);
        b.release(a);
        // A full-size flow left: room for a full one again.
        assert_eq!(b.grant(MIB).unwrap().rx, MIB);
        b.release(s);
        b.release(c);
        assert_eq!(b.stats().budgeted, 2 * MIB as u64);
    }

    #[test]
    fn small_links_are_never_counted_as_shrunk() {
        let mut b = BufferBudget::new(4 << 20);
        while b.grant(32 << 10).is_some() {}
        let s = b.stats();
        assert_eq!(s.flows_shrunk, 0);
        assert_eq!(s.flows_refused, 1);
        assert_eq!(s.budgeted, 4 << 20);
    }

    #[test]
    fn equal_tiers_keep_the_full_share_exact() {
        // A link whose full size is the small size: the full share fills, then the same size
        // is granted outside it; releasing those must not free full-share room.
        let mut b = BufferBudget::new(4 << 20);
        let granted: Vec<_> = std::iter::from_fn(|| b.grant(SMALL_RING)).collect();
        assert_eq!(granted.len(), 32);
        assert_eq!(granted.iter().filter(|r| r.full).count(), 8);
        for r in granted.iter().filter(|r| !r.full) {
            b.release(*r);
        }
        // 24 small-tier flows released: the full share is still full.
        assert!(!b.grant(SMALL_RING).unwrap().full);
    }

    #[test]
    fn budget_has_a_floor_and_a_default() {
        assert_eq!(BufferBudget::new(0).stats().max, MIN_BUDGET);
        assert_eq!(BufferBudget::default_max(1 << 30), 64 << 20);
        assert_eq!(BufferBudget::default_max(8 << 30), 512 << 20);
        assert_eq!(BufferBudget::default_max(1 << 40), 2 << 30);
    }

    #[test]
    fn full_rings_are_capped_whatever_the_budget() {
        let mut b = BufferBudget::new(1 << 30);
        let full = std::iter::from_fn(|| b.grant(MIB))
            .take_while(|r| r.full)
            .count();
        assert_eq!(full as u64, FULL_CAP / (2 * MIB as u64));
        assert!(!b.grant(MIB).unwrap().full);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("8192k"), Ok(8 << 20));
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        for bad in ["", "M", "-1M", "1.5G", "12Q", " 1M", "1M ", "0x10M"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("1M").unwrap_err().contains("minimum"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
