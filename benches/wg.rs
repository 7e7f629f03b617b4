//! Criterion benchmarks of the encrypted packet path (`--encrypt`): sealing one
//! inner IPv4 packet into a WireGuard data message (route, copy, ChaCha20-Poly1305
//! seal, batch entry) and opening one (tunnel lookup, ChaCha20-Poly1305 open, replay
//! window, cryptokey check), at 64, 512 and 1400 bytes of inner packet (bytes/s of
//! inner packet). Both run after a real handshake between two in-memory nodes.
//!
//! `cargo bench --bench wg`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use overlayd::dataplane::batch::TxBatch;
use overlayd::dataplane::wg::key::KeyPair;
use overlayd::dataplane::wg::path::{Arena, Opened, Opener, Sealer};
use overlayd::dataplane::wg::tunnels::{TunnelTable, Tunnels};
use overlayd::dataplane::wire::MacAddr;
use overlayd::dataplane::{Fib, Peer, PeerOrigin, PeerState, Stats, HEADROOM};

const SIZES: [usize; 3] = [64, 512, 1400];

struct Node {
    tunnels: Arc<Tunnels>,
    sealer: Sealer,
    opener: Opener,
    addr: SocketAddr,
    arena: Arena,
    batch: TxBatch,
    out: Vec<u8>,
    _table: TunnelTable,
}

fn node(pair: KeyPair, addr: &str, peer_subnet: &str, peer_addr: &str, peer_key: [u8; 32]) -> Node {
    let peer = Peer {
        name: "peer".into(),
        subnet: peer_subnet.parse().unwrap(),
        underlay: peer_addr.parse().unwrap(),
        vtep_mac: MacAddr([0; 6]),
        state: PeerState::Alive,
        origin: PeerOrigin::Gossip,
        allow_any_source: false,
        wg_key: Some(peer_key),
        stats: Arc::default(),
    };
    let mut table = TunnelTable::new(pair);
    let tunnels = table.build(Arc::new(Fib::new(vec![peer]).unwrap()));
    let stats = Arc::new(Stats::default());
    Node {
        tunnels,
        sealer: Sealer::new(stats.clone(), false),
        opener: Opener::new(stats),
        addr: addr.parse().unwrap(),
        arena: Arena::new(64, 1500),
        batch: TxBatch::new(0),
        out: vec![0u8; 65_600],
        _table: table,
    }
}

impl Node {
    /// Seals the IP packet in `buf[HEADROOM..]`; returns the first datagram's length,
    /// which stays in the arena's slot 0 until the next call.
    fn seal(&mut self, buf: &mut [u8], len: usize) -> usize {
        self.arena.clear();
        self.batch.clear();
        let idx = self.sealer.route(&self.tunnels, buf, len).unwrap();
        let peer = self.tunnels.peer(idx).unwrap();
        let mut tunn = peer.lock();
        self.sealer
            .seal(peer, &mut tunn, buf, len, &mut self.arena, &mut self.batch)
            .unwrap();
        self.batch.datagrams()[0].len()
    }

    fn sealed(&self, len: usize) -> Vec<u8> {
        self.arena.get(0, len).to_vec()
    }

    /// Opens or handles `msg`; returns what to send back, if anything.
    fn receive(&mut self, from: SocketAddr, msg: &[u8]) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        match Opener::data_peer(&self.tunnels, msg) {
            Some(idx) => {
                let peer = self.tunnels.peer(idx).unwrap();
                let mut tunn = peer.lock();
                if let Ok(Opened::Send { len, .. }) = self.opener.open_data(
                    &self.tunnels,
                    idx,
                    peer,
                    &mut tunn,
                    from,
                    msg,
                    &mut self.out,
                ) {
                    sent.push(self.out[..len].to_vec());
                }
            }
            None => {
                self.opener
                    .open_control(&self.tunnels, from, msg, &mut self.out, &mut |_, m| {
                        sent.push(m.to_vec())
                    })
            }
        }
        sent
    }
}

/// An IPv4/UDP packet of `size` bytes from 10.244.1.2 to 10.244.2.2, at HEADROOM.
fn packet_buf(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + size];
    let p = &mut buf[HEADROOM..];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 2]);
    overlayd::dataplane::wire::checksum::ipv4_header(p, 20);
    buf
}

/// Two nodes with an established session (A seals, B opens).
fn connected() -> (Node, Node) {
    let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
    let mut a = node(
        ka.clone(),
        "198.18.0.1:51820",
        "10.244.2.0/24",
        "198.18.0.2:51820",
        kb.public_bytes(),
    );
    let mut b = node(
        kb,
        "198.18.0.2:51820",
        "10.244.1.0/24",
        "198.18.0.1:51820",
        ka.public_bytes(),
    );
    let mut buf = packet_buf(64);
    let len = a.seal(&mut buf, 64);
    let mut to_b = vec![a.sealed(len)];
    for _ in 0..5 {
        let mut to_a = Vec::new();
        for m in to_b.drain(..) {
            to_a.extend(b.receive(a.addr, &m));
        }
        for m in to_a {
            to_b.extend(a.receive(b.addr, &m));
        }
    }
    (a, b)
}

fn seal(c: &mut Criterion) {
    let (mut a, _b) = connected();
    let mut g = c.benchmark_group("wg_seal");
    for size in SIZES {
        let mut buf = packet_buf(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, &size| {
            bench.iter(|| black_box(a.seal(black_box(&mut buf), size)))
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let (mut a, mut b) = connected();
    let from = a.addr;
    let mut g = c.benchmark_group("wg_open");
    for size in SIZES {
        let mut buf = packet_buf(size);
        g.throughput(Throughput::Bytes(size as u64));
        // Every message may be opened once (the replay window): each iteration opens
        // a fresh one, sealed in the untimed setup.
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, &size| {
            bench.iter_batched(
                || {
                    let len = a.seal(&mut buf, size);
                    a.sealed(len)
                },
                |msg| {
                    let idx = Opener::data_peer(&b.tunnels, &msg).unwrap();
                    let peer = b.tunnels.peer(idx).unwrap();
                    let mut tunn = peer.lock();
                    let r = b
                        .opener
                        .open_data(&b.tunnels, idx, peer, &mut tunn, from, &msg, &mut b.out);
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
