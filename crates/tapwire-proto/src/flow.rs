//! The flow table: keyed flows with stable indices and idle expiry (sans-IO).
//!
//! # Theory of operation
//! Every proxied conversation (a TCP connection, a UDP NAT binding, an ICMP echo binding) is a
//! flow: a key the guest's packets carry (addresses, ports or echo identifier), a value owned
//! by the protocol module (its host socket and state), and the time it last moved. Flows live
//! in a slab so their index is stable for the flow's lifetime; the index is what goes into the
//! event loop's token, so a host-socket event finds its flow in O(1) without hashing. The key
//! index (a hash map) is used only for packets from the guest.
//!
//! The flows are also kept on a doubly linked list in the order they last moved (threaded
//! through the slab by index, so [`FlowTable::touch`] is O(1) and allocates nothing):
//! [`FlowTable::oldest`] walks it from the least recently used flow, which is what a full table
//! evicts (see `udp_lifetime`).
//!
//! Limits: the table has a fixed capacity; [`FlowTable::insert`] refuses beyond it and the
//! caller counts the refusal (or evicts the oldest flow first). Expiry is driven by the caller's clock (`now` in milliseconds of
//! a monotonic clock), so tests run with a fake clock.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::Hash;

use slab::Slab;

/// No neighbour on the use-order list.
const NIL: usize = usize::MAX;

struct Entry<K, V> {
    key: K,
    value: V,
    last_ms: u64,
    born_ms: u64,
    /// Neighbours on the use-order list: `prev` moved less recently, `next` more recently.
    prev: usize,
    next: usize,
}

/// Keyed flows with stable indices; see the module documentation.
pub struct FlowTable<K, V> {
    slab: Slab<Entry<K, V>>,
    index: HashMap<K, usize>,
    capacity: usize,
    /// Least and most recently used flows (ends of the use-order list), `NIL` when empty.
    head: usize,
    tail: usize,
}

/// The table is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl<K: Hash + Eq + Copy, V> FlowTable<K, V> {
    pub fn new(capacity: usize) -> Self {
        FlowTable {
            slab: Slab::new(),
            index: HashMap::new(),
            capacity,
            head: NIL,
            tail: NIL,
        }
    }

    /// Take `idx` off the use-order list.
    fn unlink(&mut self, idx: usize) {
        let Some(e) = self.slab.get(idx) else {
            return;
        };
        let (prev, next) = (e.prev, e.next);
        match self.slab.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slab.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Put `idx` at the most recently used end of the list.
    fn push_newest(&mut self, idx: usize) {
        let old_tail = self.tail;
        if let Some(e) = self.slab.get_mut(idx) {
            e.prev = old_tail;
            e.next = NIL;
        }
        match self.slab.get_mut(old_tail) {
            Some(t) => t.next = idx,
            None => self.head = idx,
        }
        self.tail = idx;
    }

    /// Indices from the least recently used flow on (at most `n` of them).
    pub fn oldest(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let e = self.slab.get(at)?;
            let here = at;
            at = e.next;
            Some(here)
        })
        .take(n)
    }

    /// Whether the table is at capacity.
    pub fn is_full(&self) -> bool {
        self.slab.len() >= self.capacity
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Index of the flow with `key`.
    pub fn find(&self, key: &K) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Add a flow; `Err(Full)` at capacity. An existing flow with the same key is replaced
    /// in the index (the caller checks [`find`](Self::find) first).
    pub fn insert(&mut self, key: K, value: V, now_ms: u64) -> Result<usize, Full> {
        if self.slab.len() >= self.capacity {
            return Err(Full);
        }
        let idx = self.slab.insert(Entry {
            key,
            value,
            last_ms: now_ms,
            born_ms: now_ms,
            prev: NIL,
            next: NIL,
        });
        self.push_newest(idx);
        self.index.insert(key, idx);
        Ok(idx)
    }

    pub fn get(&self, idx: usize) -> Option<&V> {
        self.slab.get(idx).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, idx: usize) -> Option<&mut V> {
        self.slab.get_mut(idx).map(|e| &mut e.value)
    }

    pub fn key(&self, idx: usize) -> Option<&K> {
        self.slab.get(idx).map(|e| &e.key)
    }

    /// When the flow was created (the clock of [`insert`](Self::insert)).
    pub fn born_ms(&self, idx: usize) -> Option<u64> {
        self.slab.get(idx).map(|e| e.born_ms)
    }

    /// Record activity on a flow.
    pub fn touch(&mut self, idx: usize, now_ms: u64) {
        let Some(e) = self.slab.get_mut(idx) else {
            return;
        };
        e.last_ms = now_ms;
        if self.tail != idx {
            self.unlink(idx);
            self.push_newest(idx);
        }
    }

    /// When the flow last moved (the clock of its last [`touch`](Self::touch)).
    pub fn last_ms(&self, idx: usize) -> Option<u64> {
        self.slab.get(idx).map(|e| e.last_ms)
    }

    /// Remove a flow, returning its key and value.
    pub fn remove(&mut self, idx: usize) -> Option<(K, V)> {
        self.unlink(idx);
        let e = self.slab.try_remove(idx)?;
        if self.index.get(&e.key) == Some(&idx) {
            self.index.remove(&e.key);
        }
        Some((e.key, e.value))
    }

    /// Indices of all flows (a snapshot, so the caller may remove while iterating).
    pub fn indices(&self) -> Vec<usize> {
        self.slab.iter().map(|(i, _)| i).collect()
    }

    /// Fill `out` with the indices of all flows (reusing its allocation).
    pub fn indices_into(&self, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.slab.iter().map(|(i, _)| i));
    }

    /// Remove flows idle for longer than `idle_ms(value)`; returns them.
    pub fn expire(&mut self, now_ms: u64, idle_ms: impl Fn(&V) -> u64) -> Vec<(K, V)> {
        let stale: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.last_ms) > idle_ms(&e.value))
            .map(|(i, _)| i)
            .collect();
        stale.into_iter().filter_map(|i| self.remove(i)).collect()
    }

    /// Iterate over (index, key, value).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &K, &V)> {
        self.slab.iter().map(|(i, e)| (i, &e.key, &e.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove() {
        let mut t: FlowTable<u32, &str> = FlowTable::new(2);
        let a = t.insert(1, "a", 0).unwrap();
        let b = t.insert(2, "b", 0).unwrap();
        assert_eq!(t.insert(3, "c", 0), Err(Full));
        assert_eq!(t.find(&1), Some(a));
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.remove(a), Some((1, "a")));
        assert_eq!(t.find(&1), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.len(), 1);
        assert!(t.insert(3, "c", 0).is_ok());
    }

    #[test]
    fn expiry_uses_fake_clock() {
        let mut t: FlowTable<u32, u64> = FlowTable::new(10);
        let a = t.insert(1, 1000, 0).unwrap();
        t.insert(2, 5000, 0).unwrap();
        assert!(t.expire(1000, |v| *v).is_empty());
        t.touch(a, 900);
        let gone = t.expire(1901, |v| *v);
        assert_eq!(gone, vec![(1, 1000)]);
        let gone = t.expire(5001, |v| *v);
        assert_eq!(gone, vec![(2, 5000)]);
        assert!(t.is_empty());
    }

    #[test]
    fn replaced_key_keeps_newest_index() {
        let mut t: FlowTable<u32, u8> = FlowTable::new(10);
        let old = t.insert(7, 1, 0).unwrap();
        let new = t.insert(7, 2, 0).unwrap();
        assert_eq!(t.find(&7), Some(new));
        t.remove(old);
        assert_eq!(t.find(&7), Some(new));
    }

    #[test]
    fn expiry_boundary_and_per_flow_timeouts() {
        // Values are the flows' idle timeouts.
        let mut t: FlowTable<u32, u64> = FlowTable::new(10);
        let short = t.insert(1, 500, 1_000).unwrap();
        let long = t.insert(2, 60_000, 1_000).unwrap();
        // Idle for exactly the timeout: still alive; one millisecond more: gone.
        assert!(t.expire(1_500, |v| *v).is_empty());
        assert_eq!(t.expire(1_501, |v| *v), vec![(1, 500)]);
        assert_eq!((t.find(&1), t.get(short)), (None, None));
        // Touching moves the idle start but not the birth.
        t.touch(long, 50_000);
        assert_eq!(t.born_ms(long), Some(1_000));
        assert!(t.expire(110_000, |v| *v).is_empty());
        assert_eq!(t.expire(110_001, |v| *v), vec![(2, 60_000)]);
        // A clock earlier than the last activity never expires anything.
        let a = t.insert(3, 0, 10).unwrap();
        assert!(t.expire(5, |v| *v).is_empty());
        assert_eq!(t.key(a), Some(&3));
    }

    #[test]
    fn expiry_frees_capacity_and_unknown_indices_are_harmless() {
        let mut t: FlowTable<(u16, u16), u8> = FlowTable::new(1);
        let a = t.insert((1, 2), 9, 0).unwrap();
        assert_eq!(t.insert((3, 4), 9, 0), Err(Full));
        t.touch(a + 100, 1_000); // no such flow: nothing happens
        assert_eq!(t.born_ms(a + 100), None);
        assert_eq!(t.key(a + 100), None);
        assert!(t.get_mut(a + 100).is_none());
        assert_eq!(t.expire(1_000, |_| 999), vec![((1, 2), 9)]);
        let b = t.insert((3, 4), 7, 1_000).unwrap();
        if let Some(v) = t.get_mut(b) {
            *v += 1;
        }
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(b, &(3, 4), &8)]);
    }

    #[test]
    fn use_order_follows_touch_insert_and_remove() {
        let mut t: FlowTable<u32, ()> = FlowTable::new(4);
        let order = |t: &FlowTable<u32, ()>| -> Vec<u32> {
            t.oldest(usize::MAX).map(|i| *t.key(i).unwrap()).collect()
        };
        assert_eq!(order(&t), Vec::<u32>::new());
        let a = t.insert(1, (), 0).unwrap();
        let b = t.insert(2, (), 1).unwrap();
        let c = t.insert(3, (), 2).unwrap();
        assert_eq!(order(&t), vec![1, 2, 3]);
        t.touch(a, 3);
        assert_eq!(order(&t), vec![2, 3, 1]);
        t.touch(a, 4); // already the newest
        assert_eq!(order(&t), vec![2, 3, 1]);
        t.remove(c);
        assert_eq!(order(&t), vec![2, 1]);
        t.remove(b);
        assert_eq!(order(&t), vec![1]);
        // A reused slab index joins at the newest end.
        let d = t.insert(4, (), 5).unwrap();
        assert_eq!(order(&t), vec![1, 4]);
        assert_eq!(t.oldest(1).collect::<Vec<_>>(), vec![a]);
        assert_eq!(t.last_ms(d), Some(5));
        t.remove(a);
        t.remove(d);
        assert!(t.oldest(9).next().is_none());
        assert!(!t.is_full());
        // Expiry unlinks too.
        for k in 0..4 {
            t.insert(k, (), u64::from(k)).unwrap();
        }
        assert!(t.is_full());
        t.expire(10, |_| 7); // keys 0..=2 are idle more than 7 ms
        assert_eq!(order(&t), vec![3]);
    }

    #[test]
    fn indices_snapshot_and_reuse() {
        let mut t: FlowTable<u32, ()> = FlowTable::new(10);
        let ids: Vec<usize> = (0..4).map(|k| t.insert(k, (), 0).unwrap()).collect();
        assert_eq!(t.indices(), ids);
        let mut out = vec![99, 98];
        // Removing while walking a snapshot is allowed.
        for i in t.indices() {
            if i % 2 == 0 {
                t.remove(i);
            }
        }
        t.indices_into(&mut out);
        assert_eq!(out, vec![ids[1], ids[3]]);
        // A freed index is reused by the next flow, which the key index then finds.
        let again = t.insert(42, (), 0).unwrap();
        assert!(again == ids[0] || again == ids[2]);
        assert_eq!(t.find(&42), Some(again));
        assert_eq!(t.find(&0), None);
    }
}
