//! Flow lookup: `FlowTable::find` for the key of a guest TCP segment, with 1 and 10,000 flows
//! in the table (the per-packet cost must not grow with the number of flows), hits and misses.
//! For comparison, the same lookups in a `HashMap` with a fast non-cryptographic hasher (FxHash,
//! written out below): what the index would cost without SipHash.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tapwire_proto::flow::FlowTable;

type Key = (SocketAddr, SocketAddr);

fn key(i: usize) -> Key {
    let guest = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 2, 100),
        (10_000 + i % 50_000) as u16,
    ));
    let dst = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(192, 0, 2, (i / 50_000) as u8 + 1),
        443,
    ));
    (guest, dst)
}

/// rustc's FxHasher: one multiply per word.
#[derive(Default)]
struct Fx(u64);
impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_find");
    for n in [1usize, 10_000] {
        let mut t: FlowTable<Key, u64> = FlowTable::new(n + 1);
        let mut fx: HashMap<Key, usize, BuildHasherDefault<Fx>> = HashMap::default();
        for i in 0..n {
            let idx = t.insert(key(i), i as u64, 0).expect("capacity");
            fx.insert(key(i), idx);
        }
        let probe = key(n / 2);
        let miss = key(n + 7);
        g.bench_with_input(BenchmarkId::new("hit", n), &probe, |b, k| {
            b.iter(|| t.find(black_box(k)))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, k| {
            b.iter(|| t.find(black_box(k)))
        });
        g.bench_with_input(BenchmarkId::new("hit_fxhash", n), &probe, |b, k| {
            b.iter(|| fx.get(black_box(k)).copied())
        });
        // A lookup followed by touching the flow, as the engine does per segment.
        g.bench_with_input(BenchmarkId::new("find_touch", n), &probe, |b, k| {
            b.iter(|| {
                if let Some(i) = t.find(black_box(k)) {
                    t.touch(i, 1);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
