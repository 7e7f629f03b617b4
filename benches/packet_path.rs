//! Criterion benchmarks of the sans-IO packet path: encapsulation and decapsulation
//! per packet at several sizes (bytes/s), and FIB lookup with many peers.
//!
//! `cargo bench --bench packet_path`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use overlayd::dataplane::wire::MacAddr;
use overlayd::dataplane::{
    Decapsulator, EncapConfig, Encapsulator, Fib, Peer, PeerOrigin, PeerState, Stats, HEADROOM,
};

const LOCAL: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const REMOTE: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

fn peers(n: u32) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer {
            name: format!("n{i}"),
            // /24s out of 10.0.0.0/8, one per peer.
            subnet: format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap(),
            underlay: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i + 1)), 4789),
            vtep_mac: REMOTE,
            state: PeerState::Alive,
            origin: PeerOrigin::Gossip,
            allow_any_source: false,
            stats: Arc::default(),
        })
        .collect()
}

/// An IPv4/UDP packet of `size` bytes from 10.0.0.5 to 10.0.1.7 with a valid header checksum.
fn ipv4_packet(size: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let sum: u32 = p[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

const SIZES: [usize; 3] = [64, 512, 1400];

fn encap(c: &mut Criterion) {
    let mut group = c.benchmark_group("encap");
    let fib = Arc::new(Fib::new(peers(10)).unwrap());
    let config = EncapConfig {
        vni: 1,
        local_mac: LOCAL,
    };
    let mut enc = Encapsulator::new(config, fib, Arc::new(Stats::default()));
    for size in SIZES {
        let packet = ipv4_packet(size, [10, 0, 0, 5], [10, 0, 1, 7]);
        let mut buf = vec![0u8; HEADROOM + size];
        buf[HEADROOM..].copy_from_slice(&packet);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| black_box(enc.encapsulate(black_box(&mut buf), size).unwrap()))
        });
    }
    group.finish();
}

fn decap(c: &mut Criterion) {
    let mut group = c.benchmark_group("decap");
    let mut list = peers(10);
    list[1].vtep_mac = REMOTE;
    let from = list[1].underlay.ip();
    let fib = Arc::new(Fib::new(list).unwrap());
    let config = EncapConfig {
        vni: 1,
        local_mac: LOCAL,
    };
    let mut dec = Decapsulator::new(config, fib, Arc::new(Stats::default()));
    for size in SIZES {
        let packet = ipv4_packet(size, [10, 0, 1, 7], [10, 0, 0, 5]);
        let mut datagram = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        datagram.extend_from_slice(&LOCAL.0);
        datagram.extend_from_slice(&REMOTE.0);
        datagram.extend_from_slice(&[0x08, 0x00]);
        datagram.extend_from_slice(&packet);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| black_box(dec.decapsulate(from, black_box(&datagram)).unwrap()))
        });
    }
    group.finish();
}

fn fib_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib_lookup");
    for n in [10u32, 1_000, 10_000] {
        let fib = Fib::new(peers(n)).unwrap();
        let dsts: Vec<IpAddr> = (0..1024u32)
            .map(|i| {
                let p = (i * 7919) % n;
                IpAddr::V4(Ipv4Addr::new(10, (p / 256) as u8, (p % 256) as u8, 9))
            })
            .collect();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("peers", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(fib.lookup(black_box(dsts[i])).is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encap, decap, fib_lookup);
criterion_main!(benches);
