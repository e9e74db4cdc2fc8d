//! Cost of the per-frame work that happens before smoltcp: classification and validation
//! (checksums included) of a full-size TCP segment and of a small UDP datagram, and building
//! a UDP reply frame.
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapwire_proto::wire::{self, LinkInfo, L2, UDP_PAYLOAD};

const LINK: LinkInfo = LinkInfo {
    mac: [0x52, 0x55, 10, 0, 2, 2],
    gateway: Ipv4Addr::new(10, 0, 2, 2),
    dns: Ipv4Addr::new(10, 0, 2, 3),
    ipv6: None,
};
const TO_US: L2 = L2 {
    src: [2, 0, 0, 0, 0, 0x64],
    dst: LINK.mac,
};

fn udp_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xa5u8; UDP_PAYLOAD + len];
    let n = wire::finish_udp(
        &mut f,
        &TO_US,
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), 40000)),
        SocketAddr::V4(SocketAddrV4::new(LINK.gateway, 5201)),
        len,
        1,
    )
    .expect("frame fits");
    f.truncate(n);
    f
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for len in [64usize, 1472, 65000] {
        let f = udp_frame(len);
        g.throughput(Throughput::Bytes(f.len() as u64));
        g.bench_function(format!("udp_{len}"), |b| {
            b.iter(|| wire::classify(black_box(&f), &LINK))
        });
    }
    g.finish();

    let mut out = vec![0u8; UDP_PAYLOAD + 1472];
    c.bench_function("finish_udp_1472", |b| {
        b.iter(|| {
            wire::finish_udp(
                black_box(&mut out),
                &TO_US,
                SocketAddr::V4(SocketAddrV4::new(LINK.gateway, 53)),
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), 40000)),
                1472,
                7,
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
