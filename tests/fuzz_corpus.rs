//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the
//! cargo-fuzz harnesses, compiled in from `fuzz/src/` with `#[path]`, so a regression
//! on those bytes fails plain `cargo test` without cargo-fuzz or nightly. The CNI
//! targets are replayed by `cni/tests/fuzz_corpus.rs`.
//!
//! The seeds are generated, not hand-written: `cargo test --test fuzz_corpus --
//! --ignored write_seeds` rewrites the `seed-*` files from real packets (built with
//! etherparse, as the unit tests do, and by our own encapsulator) and real gossip
//! datagrams of two nodes talking.

#[path = "../fuzz/src/dataplane.rs"]
mod dataplane;
#[path = "../fuzz/src/gossip.rs"]
mod gossip;
#[path = "../fuzz/src/records.rs"]
mod records;
#[path = "../fuzz/src/replay.rs"]
mod replay;
#[path = "../fuzz/src/wg.rs"]
mod wg;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use overlayd::control::message::{parse_frame, Kind};
use overlayd::control::meta::get_meta;
use overlayd::dataplane::offload::VnetHdr;
use overlayd::dataplane::wire::checksum;
use overlayd::dataplane::{offload, EncapConfig, Encapsulator, Fib, HEADROOM};

/// Where the committed corpora are.
fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn replay(target: &str, harness: fn(&[u8])) {
    replay::replay(&corpus_root(), target, harness);
}

#[test]
fn wire_parsers_corpus() {
    replay("wire_parsers", dataplane::wire_parsers);
}

#[test]
fn vxlan_decap_corpus() {
    replay("vxlan_decap", dataplane::vxlan_decap);
}

#[test]
fn encap_corpus() {
    replay("encap", dataplane::encap);
}

#[test]
fn offload_segment_corpus() {
    replay("offload_segment", dataplane::offload_segment);
}

#[test]
fn offload_coalesce_corpus() {
    replay("offload_coalesce", dataplane::offload_coalesce);
}

#[test]
fn gossip_frame_corpus() {
    replay("gossip_frame", gossip::gossip_frame);
}

#[test]
fn gossip_node_corpus() {
    replay("gossip_node", gossip::gossip_node);
}

#[test]
fn wg_open_corpus() {
    replay("wg_open", wg::wg_open);
}

// --- Seed generation -------------------------------------------------------------

/// Writes `fuzz/corpus/<target>/seed-<name>`.
fn write(target: &str, name: &str, data: &[u8]) {
    replay::write_seed(&corpus_root(), target, name, data);
}

fn ipv4_udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(40000, 53)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ipv4_tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    seq: u32,
    payload: &[u8],
    psh: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src, dst, 64)
        .tcp(sport, 5201, seq, 64240)
        .ack(77);
    if psh {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn ipv6_tcp(src: [u16; 8], dst: [u16; 8], seq: u32, payload: &[u8]) -> Vec<u8> {
    let bytes = |a: [u16; 8]| std::net::Ipv6Addr::from(a).octets();
    let mut out = Vec::new();
    PacketBuilder::ipv6(bytes(src), bytes(dst), 64)
        .tcp(40000, 443, seq, 64240)
        .ack(9)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"abcdefgh")
        .unwrap();
    out
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// A datagram as a Linux vxlan device (VNI 1) sends it: VXLAN, inner Ethernet to our
/// VTEP MAC from `src_mac`, the IP packet, Ethernet padding up to 60 bytes of frame.
fn kernel_datagram(src_mac: u8, ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&dataplane::LOCAL_MAC.0);
    d.extend_from_slice(&[0x02, 0, 0, 0, 0, src_mac]);
    d.extend_from_slice(&ethertype.to_be_bytes());
    d.extend_from_slice(inner);
    while d.len() < 8 + 60 {
        d.push(0);
    }
    d
}

/// A datagram built by our own encapsulator on node n2 for us.
fn our_datagram(inner: &[u8]) -> Vec<u8> {
    let us = overlayd::dataplane::Peer {
        name: "n1".into(),
        subnet: "10.244.1.0/24".parse().unwrap(),
        underlay: "198.18.0.1:4789".parse().unwrap(),
        vtep_mac: dataplane::LOCAL_MAC,
        state: overlayd::dataplane::PeerState::Alive,
        origin: overlayd::dataplane::PeerOrigin::Gossip,
        subnet_v6: None,
        allow_any_source: false,
        wg_key: None,
        stats: Arc::default(),
    };
    let config = EncapConfig {
        vni: dataplane::VNI,
        local_mac: overlayd::dataplane::wire::MacAddr([2, 0, 0, 0, 0, 2]),
    };
    let mut enc = Encapsulator::new(
        config,
        Arc::new(Fib::new(vec![us]).unwrap()),
        Arc::default(),
    );
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let tx = enc.encapsulate(&mut buf, inner.len()).unwrap();
    buf.truncate(tx.len);
    buf
}

/// A super-packet as the kernel hands it to an `IFF_VNET_HDR` TUN: virtio header,
/// then the packet with the pseudo-header sum in its checksum field.
fn tso(mut p: Vec<u8>, gso_type: u8, gso_size: u16) -> Vec<u8> {
    let v4 = p[0] >> 4 == 4;
    let ip_len = if v4 { 20 } else { 40 };
    let (proto, l4_len, field) = if gso_type == offload::VNET_GSO_UDP_L4 {
        (17, 8, 6)
    } else {
        (6, usize::from(p[ip_len + 12] >> 4) * 4, 16)
    };
    let partial = checksum::fold(checksum::pseudo(&p, proto, (p.len() - ip_len) as u32));
    p[ip_len + field..ip_len + field + 2].copy_from_slice(&partial.to_ne_bytes());
    let hdr = VnetHdr {
        flags: offload::VNET_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (ip_len + l4_len) as u16,
        gso_size,
        csum_start: ip_len as u16,
        csum_offset: field as u16,
    };
    let mut out = vec![0u8; offload::VNET_HDR_LEN];
    hdr.emit(&mut out);
    out.extend_from_slice(&p);
    out
}

/// A plain packet behind a zero virtio header (no offload).
fn plain(p: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; offload::VNET_HDR_LEN];
    out.extend_from_slice(p);
    out
}

fn with_ctl(ctl: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![ctl];
    out.extend_from_slice(data);
    out
}

fn write_dataplane_seeds() {
    let n1 = [10, 244, 1, 7];
    let n2 = [10, 244, 2, 5];
    let n3 = [10, 244, 3, 9];
    let n6: [u16; 8] = [0xfd00, 0, 0, 6, 0, 0, 0, 5];
    let n1v6: [u16; 8] = [0xfd00, 0, 0, 1, 0, 0, 0, 7];
    let udp = ipv4_udp(n2, n1, b"hello");
    let tcp6 = ipv6_tcp(n6, n1v6, 1, &payload(40));
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 244, 2, 5, 0, 0, 0, 0, 0, 0, 10, 244, 1, 7,
    ];

    // wire_parsers: whole datagrams, so every offset lands on a header.
    write(
        "wire_parsers",
        "kernel-vxlan-udp",
        &kernel_datagram(2, 0x0800, &udp),
    );
    write(
        "wire_parsers",
        "vxlan-tcp6",
        &kernel_datagram(6, 0x86dd, &tcp6),
    );
    write(
        "wire_parsers",
        "vnet-tso",
        &tso(ipv4_tcp(n1, n2, 1, 7, &payload(64), false), 1, 32),
    );
    write("wire_parsers", "mac", b"02:42:ac:11:00:02");

    // vxlan_decap: byte 0 picks the sender (0 n2, 1 n3, 2 n6, 3 dead n4).
    write(
        "vxlan_decap",
        "n2-kernel-udp",
        &with_ctl(0, &kernel_datagram(2, 0x0800, &udp)),
    );
    write(
        "vxlan_decap",
        "n2-ours-tcp",
        &with_ctl(
            0,
            &our_datagram(&ipv4_tcp(n2, n1, 4000, 1, &payload(100), true)),
        ),
    );
    write(
        "vxlan_decap",
        "n3-any-source",
        &with_ctl(
            1,
            &kernel_datagram(3, 0x0800, &ipv4_udp([172, 17, 0, 2], n1, b"x")),
        ),
    );
    write(
        "vxlan_decap",
        "n6-tcp6",
        &with_ctl(2, &kernel_datagram(6, 0x86dd, &tcp6)),
    );
    write(
        "vxlan_decap",
        "n4-dead-icmp",
        &with_ctl(
            0x83,
            &kernel_datagram(4, 0x0800, &icmp_echo([10, 244, 4, 2], n1)),
        ),
    );
    write(
        "vxlan_decap",
        "n2-arp",
        &with_ctl(0, &kernel_datagram(2, 0x0806, &arp)),
    );

    // encap: byte 0 bit 0 fixes checksums; then what the TUN gives.
    write("encap", "udp-n2", &with_ctl(0, &ipv4_udp(n1, n2, b"hello")));
    write(
        "encap",
        "tcp-n3",
        &with_ctl(0, &ipv4_tcp(n1, n3, 4000, 9, &payload(60), true)),
    );
    write(
        "encap",
        "tcp6-n6",
        &with_ctl(0, &ipv6_tcp(n1v6, n6, 1, &payload(30))),
    );
    write(
        "encap",
        "icmp-dead-n4",
        &with_ctl(1, &icmp_echo(n1, [10, 244, 4, 2])),
    );
    write(
        "encap",
        "udp-wide",
        &with_ctl(0, &ipv4_udp(n1, [10, 245, 7, 1], b"w")),
    );
    write(
        "encap",
        "udp-unknown",
        &with_ctl(0, &ipv4_udp(n1, [10, 99, 0, 1], b"?")),
    );

    // offload_segment: records of virtio header + packet.
    let mut s = Vec::new();
    records::push(
        &mut s,
        0,
        &tso(
            ipv4_tcp(n1, n2, 4000, 1000, &payload(2500), true),
            offload::VNET_GSO_TCPV4,
            1000,
        ),
    );
    records::push(&mut s, 0, &plain(&ipv4_udp(n1, n2, b"between")));
    records::push(
        &mut s,
        0,
        &tso(
            ipv4_tcp(n1, n2, 4001, 5, &payload(1300), false),
            offload::VNET_GSO_TCPV4,
            1000,
        ),
    );
    write("offload_segment", "tso4-batch", &s);
    let mut s = Vec::new();
    records::push(
        &mut s,
        0,
        &tso(
            ipv6_tcp(n1v6, n6, 77, &payload(2000)),
            offload::VNET_GSO_TCPV6,
            700,
        ),
    );
    write("offload_segment", "tso6", &s);
    let mut s = Vec::new();
    records::push(
        &mut s,
        0,
        &tso(
            ipv4_udp(n1, n3, &payload(1500)),
            offload::VNET_GSO_UDP_L4,
            500,
        ),
    );
    write("offload_segment", "uso4", &s);
    let mut s = Vec::new();
    let csum = tso(
        ipv4_tcp(n1, n2, 4000, 1, &payload(300), true),
        offload::VNET_GSO_NONE,
        0,
    );
    records::push(&mut s, 0, &csum);
    records::push(&mut s, 0, &plain(&icmp_echo(n1, [10, 244, 4, 2])));
    records::push(&mut s, 0, &plain(&ipv4_udp(n1, [10, 245, 0, 1], b"w")));
    write("offload_segment", "plain-mix", &s);

    // offload_coalesce: records of inner packets as decapsulation returns them.
    let mut s = Vec::new();
    for i in 0..4u32 {
        records::push(
            &mut s,
            0,
            &ipv4_tcp(n2, n1, 4000, 500 + 700 * i, &payload(700), i == 3),
        );
    }
    write("offload_coalesce", "flow4", &s);
    let mut s = Vec::new();
    for i in 0..3u32 {
        for port in [4000, 4001] {
            records::push(
                &mut s,
                0,
                &ipv4_tcp(n2, n1, port, 300 * i, &payload(300), false),
            );
        }
    }
    records::push(
        &mut s,
        2,
        &ipv4_tcp(n2, n1, 4000, 900, &payload(300), false),
    );
    records::push(
        &mut s,
        0,
        &ipv4_tcp(n2, n1, 4000, 1200, &payload(300), true),
    );
    write("offload_coalesce", "interleaved-two-batches", &s);
    let mut s = Vec::new();
    for i in 0..3u32 {
        records::push(&mut s, 0, &ipv6_tcp(n6, n1v6, 1 + 600 * i, &payload(600)));
    }
    write("offload_coalesce", "flow6", &s);
    let mut s = Vec::new();
    records::push(&mut s, 0, &ipv4_udp(n2, n1, b"dns"));
    records::push(&mut s, 0, &ipv4_tcp(n2, n1, 4000, 0, &payload(200), false));
    records::push(
        &mut s,
        0,
        &ipv4_tcp(n2, n1, 4000, 400, &payload(200), false),
    );
    let mut bad = ipv4_tcp(n2, n1, 4000, 600, &payload(200), false);
    *bad.last_mut().unwrap() ^= 0xff;
    records::push(&mut s, 0, &bad);
    let mut syn = ipv4_tcp(n2, n1, 4000, 800, &payload(200), false);
    syn[33] |= 0x02;
    records::push(&mut s, 1, &syn);
    write("offload_coalesce", "no-merge-mix", &s);
}

/// Datagrams, each with the 50 ms step it was sent on.
type Timed = Vec<(u32, Vec<u8>)>;

/// Runs node a (as `gossip_node` builds it: founder or not, keyed or not, with b as
/// its seed) and node b (the other role, the same key, with a as its seed) for
/// `steps` 50 ms steps. Returns every datagram b sent a, with the step it was sent
/// on, and every datagram a sent b.
fn two_nodes(a_founder: bool, keyed: bool, steps: u32) -> (Timed, Vec<Vec<u8>>) {
    let t0 = Instant::now();
    let a_addr = "10.0.0.1:7946".parse().unwrap();
    let b_addr = "10.0.0.2:7946".parse().unwrap();
    let mut a = gossip::node("a", "10.0.0.1:7946", a_founder, keyed, vec![b_addr], t0);
    let mut b = gossip::node("b", "10.0.0.2:7946", !a_founder, keyed, vec![a_addr], t0);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let now = t0 + Duration::from_millis(50) * step;
        for n in [&mut a, &mut b] {
            if n.poll_timeout() <= now {
                n.handle_timeout(now);
            }
        }
        while let Some(t) = b.poll_transmit(now) {
            a.handle_datagram(b_addr, &t.data, now);
            to_a.push((step, t.data));
        }
        while let Some(t) = a.poll_transmit(now) {
            b.handle_datagram(a_addr, &t.data, now);
            to_b.push(t.data);
        }
        while a.poll_event().is_some() || b.poll_event().is_some() {}
    }
    let end = t0 + Duration::from_millis(50) * steps;
    assert!(
        a.using(end).is_some() && b.using(end).is_some(),
        "both nodes have a lease"
    );
    assert_eq!(
        a.status(end).rejected.total() + b.status(end).rejected.total(),
        0
    );
    (to_a, to_b)
}

/// The datagrams b sent a as one `gossip_node` input: byte 0 says whether a is the
/// founder and keyed, then one record each, the tag advancing a's clock to when b
/// sent it.
fn node_input(a_founder: bool, keyed: bool, to_a: &Timed) -> Vec<u8> {
    let mut s = vec![u8::from(!a_founder) | (u8::from(keyed) << 1)];
    let mut last = 0;
    for (step, d) in to_a {
        let advance = u8::try_from(step - last).unwrap_or(63).min(63);
        records::push(&mut s, advance << 2, d);
        last = *step;
        if s.len() > 1200 {
            break;
        }
    }
    s
}

/// The kind and message tag of a gossip datagram, signed or not, to name its seed.
fn gossip_key(d: &[u8]) -> String {
    let (kind, body) = parse_frame(d).unwrap();
    let signed = if d[6] == 0 { "" } else { "signed-" };
    match kind {
        // Lease: the message tag after the name and cluster fingerprint.
        Kind::Lease => format!("{signed}lease-{}", body[usize::from(body[0]) + 9]),
        // Membership: the message tag after src, incarnation and dst identities.
        Kind::Membership => {
            let mut rest = body;
            get_meta(&mut rest).unwrap();
            let mut rest = &rest[2..];
            get_meta(&mut rest).unwrap();
            format!("{signed}membership-{}", rest[0])
        }
    }
}

fn write_gossip_seeds() {
    // gossip_frame: one datagram per kind and message tag seen, unsigned; and a few
    // signed ones.
    let (to_a, to_b) = two_nodes(true, false, 200);
    let mut seen = std::collections::BTreeSet::new();
    for d in to_a.iter().map(|(_, d)| d).chain(&to_b) {
        let key = gossip_key(d);
        if seen.insert(key.clone()) {
            write("gossip_frame", &key, d);
        }
    }
    let (to_a, _) = two_nodes(true, true, 200);
    for (_, d) in &to_a {
        let key = gossip_key(d);
        if [
            "signed-lease-5",
            "signed-membership-7",
            "signed-membership-1",
        ]
        .contains(&key.as_str())
            && seen.insert(key.clone())
        {
            write("gossip_frame", &key, d);
        }
    }
    // gossip_node: what b sent a, with a the founder (b joins) and not (a joins),
    // a founder whose state cannot be saved, and the keyed cluster.
    write(
        "gossip_node",
        "b-joins-founder-a",
        &node_input(true, false, &to_a_of(true, false)),
    );
    write(
        "gossip_node",
        "a-joins-founder-b",
        &node_input(false, false, &to_a_of(false, false)),
    );
    let mut saves_fail = node_input(true, false, &to_a_of(true, false));
    saves_fail[0] |= 4;
    write("gossip_node", "b-joins-founder-a-saves-fail", &saves_fail);
    write(
        "gossip_node",
        "keyed-b-joins-founder-a",
        &node_input(true, true, &to_a),
    );
}

fn to_a_of(a_founder: bool, keyed: bool) -> Timed {
    two_nodes(a_founder, keyed, 200).0
}

#[test]
#[ignore = "rewrites the committed seed corpus; run by hand after a format change"]
fn write_seeds() {
    write_dataplane_seeds();
    write_gossip_seeds();
    write_wg_seeds();
}

/// Seeds of `wg_open`: every mode once. The session keys are made afresh in each
/// run, so a seed carries what to seal or forge, not a sealed message; the raw ones
/// are junk and a real handshake initiation from a key B does not know.
fn write_wg_seeds() {
    use overlayd::dataplane::wg::key::KeyPair;
    let payload = b"ping across the overlay".to_vec();
    let with = |ctl: u8, rest: &[u8]| [&[ctl][..], rest].concat();
    write("wg_open", "sealed", &with(1, &payload));
    write("wg_open", "sealed-spoofed", &with(1 | 4, &payload));
    write("wg_open", "sealed-flipped", &with(1 | 8, &[40, 1, 2, 3]));
    write("wg_open", "replayed", &with(2, &payload));
    write("wg_open", "forged-tail", &with(3, &[0xaa; 64]));
    write("wg_open", "junk", &with(0, b"not wireguard"));
    write(
        "wg_open",
        "short-data",
        &with(0, &[4, 0, 0, 0, 1, 2, 3, 4, 0, 0]),
    );
    // Initiations as raw datagrams: from a stranger's key to a random responder
    // (fails MAC1) and to B (passes it: B's key is the harness's fixed one, so the
    // key lookup refuses it), and from A to B, older than the harness's own
    // handshake (its timestamp is stale).
    let b = KeyPair::from_secret(wg::B_SECRET);
    let initiation = |from: KeyPair, to: boringtun::x25519::PublicKey| {
        let mut t = boringtun::noise::Tunn::new(from.secret, to, None, None, 1, None);
        let mut out = [0u8; 256];
        match t.format_handshake_initiation(&mut out, false) {
            boringtun::noise::TunnResult::WriteToNetwork(init) => init.to_vec(),
            _ => panic!("no initiation"),
        }
    };
    let stranger = KeyPair::generate;
    write(
        "wg_open",
        "stranger-initiation",
        &with(4, &initiation(stranger(), stranger().public)),
    );
    write(
        "wg_open",
        "stranger-initiation-to-b",
        &with(4, &initiation(stranger(), b.public)),
    );
    write(
        "wg_open",
        "peer-initiation-stale",
        &with(0, &initiation(KeyPair::from_secret(wg::A_SECRET), b.public)),
    );
}
