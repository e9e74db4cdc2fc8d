//! Coalescing a guest's plain UDP datagrams into `UDP_SEGMENT` trains for the host socket.
//!
//! # Theory of operation
//! A guest that sends without USO puts one datagram in each TAP frame. The engine queues the
//! payloads of one loop turn back to back in an arena (see the daemon's `udp_batch`); when
//! several datagrams of one binding lie next to each other there and have one size, they
//! can leave as one `UDP_SEGMENT` send, which the host kernel cuts into exactly those
//! datagrams (same payloads, same order, same 5-tuple). One send path, one route lookup
//! and, on loopback, one trip through the receive path replace N: this is the kernel's own
//! answer to per-datagram cost (`UDP_SEGMENT`, Linux >= 4.18), applied on the guest's
//! behalf.
//!
//! The rules are the kernel's for a GSO train: every datagram but the last has the train's
//! segment size, the last may be shorter (and then closes the train), none is empty, at most
//! [`MAX_SEGMENTS`] datagrams and [`MAX_BYTES`] of payload. A [`Train`] starts as a single
//! datagram (`seg` 0, sent as is) and becomes a train when a second one joins; the engine
//! feeds datagrams in their order and sends a train when [`Train::join`] refuses the next.
//! Datagrams too big for the host's path MTU make the kernel refuse the train
//! (`EMSGSIZE`/`EINVAL`); the engine then cuts it and stops coalescing on that binding.
#![forbid(unsafe_code)]

/// Most datagrams in one train (`UDP_MAX_SEGMENTS` of every kernel since 4.18).
pub const MAX_SEGMENTS: u16 = 64;
/// Most payload bytes in one train: an IPv4 datagram's room (65535 - 20 - 8) with margin
/// for IP options the host may add.
pub const MAX_BYTES: usize = 65_000;

/// One datagram, or a train of datagrams, at `start..start + len` of the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Train {
    pub start: usize,
    pub len: usize,
    /// The segment size once two or more datagrams are in the train; 0 for one datagram.
    pub seg: u16,
    /// Datagrams in the train.
    pub count: u16,
}

impl Train {
    /// A train of one datagram.
    pub fn one(start: usize, len: usize) -> Train {
        Train {
            start,
            len,
            seg: 0,
            count: 1,
        }
    }

    /// Append the datagram `start..start + len` if the train can take it: it follows the
    /// train in the arena, is not longer than the train's datagrams, and the train is still
    /// open (no shorter datagram yet, within the limits). Returns whether it joined.
    pub fn join(&mut self, start: usize, len: usize) -> bool {
        let size = if self.seg == 0 {
            self.len
        } else {
            usize::from(self.seg)
        };
        let open = self.len == size * usize::from(self.count);
        let fits = len != 0
            && len <= size
            && size <= usize::from(u16::MAX)
            && self.count < MAX_SEGMENTS
            && self.len + len <= MAX_BYTES;
        if !open || !fits || Some(start) != self.start.checked_add(self.len) {
            return false;
        }
        self.seg = size as u16;
        self.len += len;
        self.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `(start, len)` datagrams in order; the trains they make.
    fn coalesce(datagrams: &[(usize, usize)]) -> Vec<Train> {
        let mut out: Vec<Train> = Vec::new();
        for &(start, len) in datagrams {
            if let Some(t) = out.last_mut() {
                if t.join(start, len) {
                    continue;
                }
            }
            out.push(Train::one(start, len));
        }
        out
    }

    /// Back-to-back datagrams of the given sizes from offset 0.
    fn packed(sizes: &[usize]) -> Vec<(usize, usize)> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&s| {
                at += s;
                (at - s, s)
            })
            .collect()
    }

    #[test]
    fn equal_sizes_make_one_train() {
        let t = coalesce(&packed(&[64; 10]));
        assert_eq!(
            t,
            vec![Train {
                start: 0,
                len: 640,
                seg: 64,
                count: 10
            }]
        );
    }

    #[test]
    fn a_single_datagram_stays_plain() {
        assert_eq!(coalesce(&packed(&[100])), vec![Train::one(0, 100)]);
    }

    #[test]
    fn a_shorter_datagram_ends_the_train() {
        let t = coalesce(&packed(&[100, 100, 40, 100, 100]));
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].len, t[0].seg, t[0].count), (240, 100, 3));
        assert_eq!(
            (t[1].start, t[1].len, t[1].seg, t[1].count),
            (240, 200, 100, 2)
        );
    }

    #[test]
    fn a_longer_datagram_starts_a_new_train() {
        let t = coalesce(&packed(&[100, 100, 200]));
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].len, t[0].seg), (200, 100));
        assert_eq!(t[1], Train::one(200, 200));
    }

    #[test]
    fn a_gap_in_the_arena_starts_a_new_train() {
        // Another binding's datagram sits between the two.
        let t = coalesce(&[(0, 64), (128, 64)]);
        assert_eq!(t, vec![Train::one(0, 64), Train::one(128, 64)]);
    }

    #[test]
    fn empty_datagrams_never_join() {
        let t = coalesce(&packed(&[0, 0, 10, 0]));
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|t| t.count == 1 && t.seg == 0));
    }

    #[test]
    fn limits_hold() {
        let t = coalesce(&packed(&[10; 130]));
        assert_eq!(
            t.iter().map(|t| t.count).collect::<Vec<_>>(),
            vec![64, 64, 2]
        );
        let t = coalesce(&packed(&[1400; 100]));
        assert!(t.iter().all(|t| t.len <= MAX_BYTES));
        assert_eq!(t[0].count as usize, MAX_BYTES / 1400);
        assert_eq!(t.iter().map(|t| t.count as usize).sum::<usize>(), 100);
        // A datagram larger than a segment size can say is never a train's first.
        let t = coalesce(&packed(&[70_000, 70_000]));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn trains_reproduce_the_datagrams() {
        // Cutting every train by its segment size gives back the datagrams fed in.
        let sizes = [50, 50, 50, 7, 50, 9, 9, 9, 9, 1, 1, 1472, 1472, 1000];
        let input = packed(&sizes);
        let mut back = Vec::new();
        for t in coalesce(&input) {
            if t.seg == 0 {
                back.push((t.start, t.len));
            } else {
                for (off, len) in crate::vnet::udp_segments(t.len, usize::from(t.seg)) {
                    back.push((t.start + off, len));
                }
            }
        }
        assert_eq!(back, input);
    }
}
