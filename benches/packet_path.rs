//! Criterion benchmarks of the sans-IO packet path: encapsulation and decapsulation
//! per packet at several sizes (bytes/s), FIB lookup with many peers, and the
//! offload path: splitting TSO super-packets into VXLAN datagrams and merging
//! received TCP segments into super-packets (bytes/s of inner payload), merging
//! small UDP datagrams into USO writes (datagrams/s) and the flow hash.
//!
//! `cargo bench --bench packet_path`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use overlayd::dataplane::batch::TxBatch;
use overlayd::dataplane::flow::flow_hash;
use overlayd::dataplane::offload::{self, Coalescer, VnetHdr};
use overlayd::dataplane::wire::{checksum, MacAddr};
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
            subnet_v6: None,
            allow_any_source: false,
            wg_key: None,
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

/// A TCP/IPv4 packet with `payload` bytes, 12 bytes of options (timestamps), a valid
/// checksum, and sequence number `seq`.
fn tcp_packet(seq: u32, payload: usize) -> Vec<u8> {
    let hl = 20 + 32;
    let mut p = ipv4_packet(hl + payload, [10, 0, 0, 5], [10, 0, 1, 7]);
    p[9] = 6;
    for (i, b) in p[hl..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let t = &mut p[20..hl];
    t[0..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&77u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x10;
    t[14..16].copy_from_slice(&1000u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    // Header checksum (IP header changed: protocol).
    p[10] = 0;
    p[11] = 0;
    let c = checksum::finish(checksum::add(0, &p[..20]));
    p[10..12].copy_from_slice(&c);
    let len = (p.len() - 20) as u32;
    let sum = checksum::add(checksum::pseudo(&p, 6, len), &p[20..]);
    let c = checksum::finish(sum);
    p[36..38].copy_from_slice(&c);
    p
}

const MSS: usize = 1398;

fn segmentation(c: &mut Criterion) {
    let mut group = c.benchmark_group("tso_segment");
    let fib = Arc::new(Fib::new(peers(10)).unwrap());
    let config = EncapConfig {
        vni: 1,
        local_mac: LOCAL,
    };
    let mut enc = Encapsulator::new(config, fib, Arc::new(Stats::default()));
    let mut batch = TxBatch::new(2048);
    for payload in [MSS * 4, MSS * 16, 65_535 - 52] {
        let mut packet = tcp_packet(1, payload);
        // As the TUN hands it over: partial checksum, virtio header in front.
        let partial = checksum::fold(checksum::pseudo(&packet, 6, (packet.len() - 20) as u32));
        packet[36..38].copy_from_slice(&partial.to_ne_bytes());
        let hdr = VnetHdr {
            flags: offload::VNET_F_NEEDS_CSUM,
            gso_type: offload::VNET_GSO_TCPV4,
            hdr_len: 52,
            gso_size: MSS as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut buf = vec![0u8; HEADROOM + packet.len()];
        hdr.emit(&mut buf[HEADROOM - offload::VNET_HDR_LEN..HEADROOM]);
        buf[HEADROOM..].copy_from_slice(&packet);
        // The TUN read: the virtio header and the packet.
        let read = offload::VNET_HDR_LEN + packet.len();
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_with_input(BenchmarkId::from_parameter(payload), &read, |b, &read| {
            b.iter(|| {
                batch.clear();
                black_box(
                    enc.encapsulate_read(black_box(&mut buf), read, true, 0, &mut batch)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

fn coalescing(c: &mut Criterion) {
    let mut group = c.benchmark_group("gro_coalesce");
    for segments in [4usize, 16, 46] {
        // Segments laid out as a UDP GRO receive leaves them: one stride apart, each
        // behind its 22 bytes of VXLAN and Ethernet headers.
        let stride = HEADROOM + 52 + MSS;
        let mut buf = vec![0u8; stride * segments];
        let mut ranges = Vec::new();
        for i in 0..segments {
            let p = tcp_packet(1 + (i * MSS) as u32, MSS);
            let at = i * stride + HEADROOM;
            buf[at..at + p.len()].copy_from_slice(&p);
            ranges.push(at..at + p.len());
        }
        let mut coalescer = Coalescer::new(true, false);
        group.throughput(Throughput::Bytes((segments * MSS) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(segments), &segments, |b, _| {
            b.iter(|| {
                coalescer.clear();
                for r in &ranges {
                    coalescer.push(0, r.clone(), black_box(&buf[r.clone()]));
                }
                coalescer.finish(std::slice::from_mut(&mut buf));
                black_box(coalescer.writes().count())
            })
        });
    }
    group.finish();
}

/// An IPv4/UDP datagram with `payload` bytes and a valid UDP checksum.
fn udp_packet(payload: usize) -> Vec<u8> {
    let mut p = ipv4_packet(28 + payload, [10, 0, 0, 5], [10, 0, 1, 7]);
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let len = (p.len() - 20) as u16;
    p[20..28].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0]);
    p[24..26].copy_from_slice(&len.to_be_bytes());
    let sum = checksum::add(checksum::pseudo(&p, 17, u32::from(len)), &p[20..]);
    let c = checksum::finish(sum);
    p[26..28].copy_from_slice(&c);
    p
}

/// Small UDP datagrams of one flow merged into USO writes (64-byte payloads, as
/// `iperf3 -u -l 64` sends), and the flow hash that picks the outer source port.
fn udp_coalescing(c: &mut Criterion) {
    let mut group = c.benchmark_group("gro_coalesce_udp64");
    for datagrams in [16usize, 64] {
        let stride = HEADROOM + 28 + 64;
        let mut buf = vec![0u8; stride * datagrams];
        let mut ranges = Vec::new();
        for i in 0..datagrams {
            let p = udp_packet(64);
            let at = i * stride + HEADROOM;
            buf[at..at + p.len()].copy_from_slice(&p);
            ranges.push(at..at + p.len());
        }
        let mut coalescer = Coalescer::new(true, true);
        group.throughput(Throughput::Elements(datagrams as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(datagrams),
            &datagrams,
            |b, _| {
                b.iter(|| {
                    coalescer.clear();
                    for r in &ranges {
                        coalescer.push(0, r.clone(), black_box(&buf[r.clone()]));
                    }
                    coalescer.finish(std::slice::from_mut(&mut buf));
                    black_box(coalescer.writes().count())
                })
            },
        );
    }
    group.finish();
    let packet = tcp_packet(1, 64);
    c.bench_function("flow_hash/tcp4", |b| {
        b.iter(|| black_box(flow_hash(black_box(&packet))))
    });
}

criterion_group!(
    benches,
    encap,
    decap,
    fib_lookup,
    segmentation,
    coalescing,
    udp_coalescing
);
criterion_main!(benches);
