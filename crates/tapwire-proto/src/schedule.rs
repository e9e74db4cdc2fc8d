//! Which TCP flows need attention this turn: a dirty list and a timer heap (sans-IO).
//!
//! # Theory of operation
//! Each TCP flow owns a one-socket smoltcp `SocketSet`, so smoltcp's per-call scans (ingress
//! matching, egress, `poll_at`) cost O(1) whatever the number of flows. The engine then needs
//! to know which flows to pump and let transmit. A flow is *dirty* when something may have
//! changed for it: a segment from the guest, host-socket readiness, a new connection. It is
//! *due* when smoltcp asked to be polled at a time (retransmission, TIME-WAIT, keep-alive,
//! the idle timeout) and that time has come. Every turn the engine takes the dirty list,
//! services each flow once, and asks smoltcp when that flow next wants a poll.
//!
//! The heap holds `(deadline, flow)`; each flow remembers the one deadline it is waiting for,
//! so a new, *earlier* deadline pushes a fresh entry and a later one is ignored until the
//! earlier fires (that firing services the flow, which reschedules it at its true time).
//! Entries whose deadline no longer matches the flow's are stale and skipped. Indices are the
//! flow table's slab indices and may be reused: a stale entry then services a new flow once,
//! which is harmless.
//!
//! Times are microseconds of the engine's clock. Nothing here allocates once the vectors have
//! grown to the largest flow index.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The dirty list and timer heap; see the module documentation.
#[derive(Default)]
pub struct Schedule {
    dirty: Vec<usize>,
    queued: Vec<bool>,
    deadline: Vec<Option<i64>>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Schedule {
    fn grow(&mut self, idx: usize) {
        if idx >= self.queued.len() {
            self.queued.resize(idx + 1, false);
            self.deadline.resize(idx + 1, None);
        }
    }

    /// Service flow `idx` on the next [`take_dirty`](Self::take_dirty).
    pub fn mark(&mut self, idx: usize) {
        self.grow(idx);
        if !self.queued[idx] {
            self.queued[idx] = true;
            self.dirty.push(idx);
        }
    }

    /// Whether some flow is waiting to be serviced.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Flow `idx` wants a poll at `at` (or earlier, if it already waits for an earlier time).
    pub fn schedule(&mut self, idx: usize, at: i64) {
        self.grow(idx);
        if self.deadline[idx].is_none_or(|cur| at < cur) {
            self.deadline[idx] = Some(at);
            self.heap.push(Reverse((at, idx)));
        }
    }

    /// Mark every flow whose deadline is at or before `now`.
    pub fn expire(&mut self, now: i64) {
        while let Some(&Reverse((at, idx))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.deadline.get(idx) == Some(&Some(at)) {
                self.deadline[idx] = None;
                self.mark(idx);
            }
        }
    }

    /// The earliest live deadline, dropping stale entries on the way.
    pub fn next_deadline(&mut self) -> Option<i64> {
        while let Some(&Reverse((at, idx))) = self.heap.peek() {
            if self.deadline.get(idx) == Some(&Some(at)) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Move the dirty flows into `out` (cleared first); marks made while servicing them land
    /// in the next turn's list.
    pub fn take_dirty(&mut self, out: &mut Vec<usize>) {
        out.clear();
        std::mem::swap(out, &mut self.dirty);
        for &idx in out.iter() {
            self.queued[idx] = false;
        }
    }

    /// Flow `idx` is gone: forget its deadline (a queued mark services its successor once).
    pub fn forget(&mut self, idx: usize) {
        if let Some(d) = self.deadline.get_mut(idx) {
            *d = None;
        }
    }

    /// Heap entries, live and stale.
    #[cfg(test)]
    pub fn pending_timers(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(s: &mut Schedule) -> Vec<usize> {
        let mut v = Vec::new();
        s.take_dirty(&mut v);
        v.sort_unstable();
        v
    }

    #[test]
    fn marks_once_per_turn() {
        let mut s = Schedule::default();
        s.mark(3);
        s.mark(3);
        s.mark(0);
        assert!(s.has_dirty());
        assert_eq!(dirty(&mut s), vec![0, 3]);
        assert!(!s.has_dirty());
        assert_eq!(dirty(&mut s), Vec::<usize>::new());
        s.mark(3);
        assert_eq!(dirty(&mut s), vec![3]);
    }

    #[test]
    fn deadlines_fire_in_order_and_only_when_due() {
        let mut s = Schedule::default();
        s.schedule(1, 500);
        s.schedule(2, 100);
        assert_eq!(s.next_deadline(), Some(100));
        s.expire(99);
        assert_eq!(dirty(&mut s), Vec::<usize>::new());
        s.expire(100);
        assert_eq!(dirty(&mut s), vec![2]);
        assert_eq!(s.next_deadline(), Some(500));
        s.expire(1_000);
        assert_eq!(dirty(&mut s), vec![1]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn earlier_deadline_wins_later_waits() {
        let mut s = Schedule::default();
        s.schedule(7, 1_000);
        s.schedule(7, 2_000); // later: ignored until 1_000 fires
        assert_eq!(s.pending_timers(), 1);
        s.schedule(7, 300); // earlier: replaces
        assert_eq!(s.next_deadline(), Some(300));
        s.expire(300);
        assert_eq!(dirty(&mut s), vec![7]);
        // The 1_000 entry is stale now: it neither fires nor counts as the next deadline.
        assert_eq!(s.next_deadline(), None);
        s.expire(5_000);
        assert_eq!(dirty(&mut s), Vec::<usize>::new());
        assert_eq!(s.pending_timers(), 0);
    }

    #[test]
    fn forgotten_flow_does_not_fire() {
        let mut s = Schedule::default();
        s.schedule(4, 10);
        s.forget(4);
        s.forget(99); // never seen: no panic
        s.expire(20);
        assert_eq!(dirty(&mut s), Vec::<usize>::new());
    }

    #[test]
    fn marks_during_service_go_to_next_turn() {
        let mut s = Schedule::default();
        s.mark(1);
        let mut turn = Vec::new();
        s.take_dirty(&mut turn);
        s.mark(1); // re-marked while being serviced
        assert_eq!(turn, vec![1]);
        assert_eq!(dirty(&mut s), vec![1]);
    }

    #[test]
    fn due_flow_already_dirty_is_listed_once() {
        let mut s = Schedule::default();
        s.mark(5);
        s.schedule(5, 10);
        s.expire(10);
        assert_eq!(dirty(&mut s), vec![5]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_fired_flow_can_be_rescheduled_later() {
        let mut s = Schedule::default();
        s.schedule(1, 100);
        s.expire(150);
        assert_eq!(dirty(&mut s), vec![1]);
        // The deadline was consumed: a later time is accepted again.
        s.schedule(1, 400);
        assert_eq!(s.next_deadline(), Some(400));
        s.expire(399);
        assert!(!s.has_dirty());
        s.expire(400);
        assert_eq!(dirty(&mut s), vec![1]);
        // Negative clocks (the engine's epoch) order like any other.
        s.schedule(2, -5);
        s.schedule(3, -10);
        assert_eq!(s.next_deadline(), Some(-10));
        s.expire(-6);
        assert_eq!(dirty(&mut s), vec![3]);
    }
}
