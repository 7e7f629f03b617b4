//! Criterion benchmarks of the encrypted packet path (`--encrypt`): sealing one
//! inner IPv4 packet into a WireGuard data message (route, copy, ChaCha20-Poly1305
//! seal, batch entry) and opening one (tunnel lookup, ChaCha20-Poly1305 open, replay
//! window, cryptokey check), at 64, 512 and 1400 bytes of inner packet (bytes/s of
//! inner packet). Both run after a real handshake between two in-memory nodes, the
//! `wg_open` fuzz harness's pair (compiled in with `#[path]`).
//!
//! `cargo bench --bench wg`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use overlayd::dataplane::batch::TxBatch;
use overlayd::dataplane::wg::path::{Arena, Opened, Opener};
use overlayd::dataplane::HEADROOM;

#[path = "../fuzz/src/wg.rs"]
#[allow(dead_code)]
mod harness;

const SIZES: [usize; 3] = [64, 512, 1400];

/// A's outbound state: the arena and batch a worker seals into.
struct Seal {
    arena: Arena,
    batch: TxBatch,
}

impl Seal {
    fn new() -> Seal {
        Seal {
            arena: Arena::new(64, 1500),
            batch: TxBatch::new(0),
        }
    }

    /// Seals the IP packet in `buf[HEADROOM..]` as `a`'s worker does; returns the
    /// datagram's length, which stays in the arena's slot 0 until the next call.
    fn seal(&mut self, a: &mut harness::Node, buf: &mut [u8], len: usize) -> usize {
        self.arena.clear();
        self.batch.clear();
        let idx = a.sealer.route(&a.tunnels, buf, len).unwrap();
        let peer = a.tunnels.peer(idx).unwrap();
        let mut tunn = peer.lock();
        a.sealer
            .seal(peer, &mut tunn, buf, len, &mut self.arena, &mut self.batch)
            .unwrap();
        self.batch.datagrams()[0].len()
    }
}

/// An IPv4/UDP packet of `size` bytes from inside A's subnet to B's, at HEADROOM.
fn packet_buf(size: usize) -> Vec<u8> {
    let packet = harness::ipv4_udp([10, 244, 1, 2], &vec![0u8; size - 28]);
    let mut buf = vec![0u8; HEADROOM + size];
    buf[HEADROOM..].copy_from_slice(&packet);
    buf
}

fn seal(c: &mut Criterion) {
    let mut p = harness::Pair::new();
    let mut s = Seal::new();
    let mut g = c.benchmark_group("wg_seal");
    for size in SIZES {
        let mut buf = packet_buf(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, &size| {
            bench.iter(|| black_box(s.seal(&mut p.a, black_box(&mut buf), size)))
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let harness::Pair { mut a, mut b } = harness::Pair::new();
    let mut s = Seal::new();
    let from: SocketAddr = harness::A.parse().unwrap();
    let mut out = vec![0u8; 65_600];
    let mut g = c.benchmark_group("wg_open");
    for size in SIZES {
        let mut buf = packet_buf(size);
        g.throughput(Throughput::Bytes(size as u64));
        // Every message may be opened once (the replay window): each iteration opens
        // a fresh one, sealed in the untimed setup.
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, &size| {
            bench.iter_batched(
                || {
                    let len = s.seal(&mut a, &mut buf, size);
                    s.arena.get(0, len).to_vec()
                },
                |msg| {
                    let idx = Opener::data_peer(&b.tunnels, &msg).unwrap();
                    let peer = b.tunnels.peer(idx).unwrap();
                    let mut tunn = peer.lock();
                    let r = b
                        .opener
                        .open_data(&b.tunnels, idx, peer, &mut tunn, from, &msg, &mut out);
                    assert_eq!(r, Ok(Opened::Inner(size)));
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
