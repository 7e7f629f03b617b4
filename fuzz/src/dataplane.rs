//! Dataplane harnesses: the wire views, the receive path (decapsulation), the send
//! path (encapsulation, plain and with a virtio-net header), TSO segmentation, GSO
//! grouping and TCP coalescing.
//!
//! Every target builds the same small forwarding table ([`fib`]) so that decap and
//! encap reach their deep paths: two IPv4 peers (one allowed any inner source), an
//! IPv6 peer, a dead peer and a wider /16, so longest-prefix match has two levels.
//!
//! Checksums stop a fuzzer at the first mutation, so several inputs carry a flag that
//! makes the harness recompute the inner IPv4 header and TCP/UDP checksums
//! ([`fix_checksums`]) before the packet goes in; without it the packet goes in as is.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use overlayd::dataplane::batch::{self, Head, TxBatch, TxDatagram, TxDest};
use overlayd::dataplane::flow::{flow_hash, source_index};
use overlayd::dataplane::offload::{self, Coalescer, TunWrite, VnetHdr, VNET_HDR_LEN};
use overlayd::dataplane::stats::PeerStats;
use overlayd::dataplane::wire::checksum;
use overlayd::dataplane::wire::vxlan::VxlanRepr;
use overlayd::dataplane::wire::{
    EthernetFrame, IpHeader, Ipv4Packet, Ipv6Packet, MacAddr, VxlanPacket,
};
use overlayd::dataplane::{
    Decapsulator, DropReason, EncapConfig, Encapsulator, Fib, Peer, PeerOrigin, PeerState, Stats,
    HEADROOM,
};

use crate::records::records;

/// Our VNI.
pub const VNI: u32 = 1;
/// Our VTEP MAC.
pub const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
/// Our underlay address, as the peers know us.
pub const LOCAL_UNDERLAY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

/// Senders the first byte of a `vxlan_decap` input picks from (low three bits): the
/// peers of [`fib`], the v4-mapped form of n2, and two strangers.
pub const SENDERS: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 6)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 4)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0002)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

fn peer(name: &str, subnet: &str, underlay: &str, mac: u8) -> Peer {
    Peer {
        name: name.into(),
        subnet: subnet.parse().expect("literal subnet"),
        underlay: underlay.parse().expect("literal address"),
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, mac]),
        state: PeerState::Alive,
        origin: PeerOrigin::Gossip,
        subnet_v6: None,
        allow_any_source: false,
        wg_key: None,
        stats: Arc::new(PeerStats::default()),
    }
}

/// The forwarding table of every dataplane target.
pub fn fib() -> Fib {
    let mut n3 = peer("n3", "10.244.3.0/24", "198.18.0.3:4789", 3);
    n3.allow_any_source = true;
    let mut n4 = peer("n4", "10.244.4.0/24", "198.18.0.4:4789", 4);
    n4.state = PeerState::Dead;
    let mut wide = peer(
        "static:10.245.0.0/16",
        "10.245.0.0/16",
        "198.18.0.5:4789",
        5,
    );
    wide.origin = PeerOrigin::Static;
    Fib::new(vec![
        peer("n2", "10.244.2.0/24", "198.18.0.2:4789", 2),
        n3,
        peer("n6", "fd00:0:0:6::/64", "[2001:db8::6]:4789", 6),
        n4,
        wide,
    ])
    .expect("the fuzz FIB is consistent")
}

fn config() -> EncapConfig {
    EncapConfig {
        vni: VNI,
        local_mac: LOCAL_MAC,
    }
}

/// Recomputes the IPv4 header checksum and the TCP or UDP checksum of `p` in place,
/// as far as its headers allow; leaves anything else alone.
pub fn fix_checksums(p: &mut [u8]) {
    let (ip_len, total, proto) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || ihl > p.len() {
                return;
            }
            checksum::ipv4_header(p, ihl);
            let fragment = (p[6] & 0x3f) != 0 || p[7] != 0;
            if fragment {
                return;
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
            (ihl, total, p[9])
        }
        Some(6) if p.len() >= 40 => {
            let total = (40 + usize::from(u16::from_be_bytes([p[4], p[5]]))).min(p.len());
            (40, total, p[6])
        }
        _ => return,
    };
    let field = match proto {
        6 => 16,
        17 => 6,
        _ => return,
    };
    if total < ip_len + field + 2 {
        return;
    }
    let (ip, rest) = p[..total].split_at_mut(ip_len);
    rest[field] = 0;
    rest[field + 1] = 0;
    let sum = checksum::add(checksum::pseudo(ip, proto, rest.len() as u32), rest);
    let mut c = checksum::finish(sum);
    if proto == 17 && c == [0, 0] {
        c = [0xff, 0xff];
    }
    rest[field..field + 2].copy_from_slice(&c);
}

/// Whether the TCP/UDP checksum of the IP packet `p` (IP header `ip_len` long) holds.
fn l4_checksum_ok(p: &[u8], ip_len: usize, proto: u8) -> bool {
    let l4 = &p[ip_len..];
    checksum::fold(checksum::add(
        checksum::pseudo(p, proto, l4.len() as u32),
        l4,
    )) == 0xffff
}

/// `wire_parsers`: the raw bytes through every view of `wire` at offset 0, 8 and 22
/// (where VXLAN, Ethernet and IP headers sit in a datagram), and `VnetHdr`. Checks
/// that accessors of a checked view stay inside the buffer, that parse and emit
/// round-trip, that the Internet checksum agrees with a naive RFC 1071 sum of
/// big-endian words (whole and continued from an even split), and the MAC parser on
/// the bytes as text.
pub fn wire_parsers(data: &[u8]) {
    for off in [0, 8, 22] {
        let Some(buf) = data.get(off..) else { break };
        if let Ok(v) = VxlanPacket::new_checked(buf) {
            let _ = (v.flags(), v.vni(), v.payload().len());
            if let Ok(repr) = VxlanRepr::parse(&v) {
                let mut out = [0u8; 8];
                repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
                let again = VxlanRepr::parse(&VxlanPacket::new_unchecked(&out[..]));
                assert_eq!(again, Ok(repr), "VXLAN emit/parse round trip");
            }
        }
        if let Ok(f) = EthernetFrame::new_checked(buf) {
            let (dst, src, ty) = (f.dst_addr(), f.src_addr(), f.ethertype());
            assert_eq!(f.payload().len(), buf.len() - 14);
            let mut out = [0u8; 14];
            let mut g = EthernetFrame::new_unchecked(&mut out[..]);
            g.set_dst_addr(dst);
            g.set_src_addr(src);
            g.set_ethertype(ty);
            assert_eq!(&out[..], &buf[..14], "Ethernet setters rebuild the header");
        }
        if let Ok(p) = Ipv4Packet::new_checked(buf) {
            let (hl, tl) = (p.header_len(), usize::from(p.total_len()));
            assert!(
                20 <= hl && hl <= tl && tl <= buf.len(),
                "IPv4 lengths {hl} {tl}"
            );
            let _ = (
                p.protocol(),
                p.src_addr(),
                p.dst_addr(),
                p.verify_checksum(),
            );
        }
        if let Ok(p) = Ipv6Packet::new_checked(buf) {
            assert!(p.total_len() <= buf.len());
            let _ = (p.next_header(), p.src_addr(), p.dst_addr());
        }
        if let Ok(h) = IpHeader::parse(buf) {
            assert!(
                h.total_len <= buf.len(),
                "IpHeader total_len inside the buffer"
            );
            assert_eq!(h.src.is_ipv4(), h.dst.is_ipv4());
        }
    }
    if let Some(h) = VnetHdr::parse(data) {
        let mut out = [0u8; VNET_HDR_LEN];
        h.emit(&mut out);
        assert_eq!(&out[..], &data[..VNET_HDR_LEN], "virtio header round trip");
    }
    // RFC 1071: the lane-parallel sum against the textbook one.
    let naive = {
        let mut sum: u64 = data
            .chunks(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    let fast = u16::from_be_bytes(checksum::finish(checksum::add(0, data)));
    assert_eq!(fast, naive, "the Internet checksum is the RFC 1071 sum");
    let cut = (data.len() / 3) & !1;
    let split = checksum::add(checksum::add(0, &data[..cut]), &data[cut..]);
    assert_eq!(
        u16::from_be_bytes(checksum::finish(split)),
        naive,
        "a sum continued from an even split is the same"
    );
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(mac) = s.parse::<MacAddr>() {
            let printed = mac.to_string();
            assert_eq!(printed.parse::<MacAddr>().ok(), Some(mac));
        }
    }
}

/// `vxlan_decap`: the whole receive path on one datagram. Byte 0 picks the sender
/// from [`SENDERS`] (low three bits) and, with bit 7, fixes the inner checksums; the
/// rest is the UDP payload. An accepted datagram must come from a known live peer,
/// hold our VNI and a well-formed inner packet from inside the peer's subnet (unless
/// the peer may send any source), and the returned range must be that packet. Every
/// call is counted exactly once, as forwarded or under one drop reason, and the
/// per-peer counters add up to what was forwarded.
pub fn vxlan_decap(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let from = SENDERS[usize::from(ctl & 7)];
    let mut datagram = rest.to_vec();
    if ctl & 0x80 != 0 && datagram.len() > HEADROOM {
        fix_checksums(&mut datagram[HEADROOM..]);
    }
    DATAPLANE.with(|node| {
        let node = &mut *node.borrow_mut();
        let before = Counts::of(&node.stats);
        let result = node.dec.decapsulate(from, &datagram);
        let after = Counts::of(&node.stats);
        match result {
            Ok(range) => {
                assert_eq!(range.start, HEADROOM);
                assert!(range.end <= datagram.len());
                let repr = VxlanRepr::parse(&VxlanPacket::new_unchecked(&datagram[..]));
                assert_eq!(repr.map(|r| r.vni), Ok(VNI));
                let frame = EthernetFrame::new_unchecked(&datagram[8..]);
                assert_eq!(frame.dst_addr(), LOCAL_MAC);
                let inner = &datagram[range];
                let header = IpHeader::parse(inner).expect("an accepted inner packet parses");
                assert_eq!(header.total_len, inner.len(), "padding is trimmed");
                let peer = node
                    .fib
                    .peer_by_underlay(from)
                    .expect("accepted only from a peer");
                assert_ne!(peer.state, PeerState::Dead, "nothing from a dead peer");
                assert!(peer.allow_any_source || peer.subnet.contains(&header.src));
                assert_eq!(after.rx, before.rx + 1, "counted as received");
                assert_eq!(after.drops, before.drops, "and not as dropped");
            }
            Err(reason) => {
                assert_eq!(after.rx, before.rx, "a drop is not received");
                let mut expected = before.drops;
                expected[reason as usize] += 1;
                assert_eq!(after.drops, expected, "counted once, as {reason:?}");
            }
        }
        check_peer_counts(node);
    });
}

/// The decapsulator of `peer`'s node, which knows us as a peer that may send any
/// inner source.
fn peer_side(peer: &Peer) -> Decapsulator {
    let mut us = self::peer("us", "10.244.1.0/24", "198.18.0.1:4789", 0xaa);
    us.allow_any_source = true;
    let their_config = EncapConfig {
        vni: VNI,
        local_mac: peer.vtep_mac,
    };
    Decapsulator::new(
        their_config,
        Arc::new(Fib::new(vec![us]).expect("one peer")),
        Arc::default(),
    )
}

/// Drop counters by reason and packets forwarded, of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    tx: u64,
    rx: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl Counts {
    fn of(stats: &Stats) -> Counts {
        Counts {
            tx: stats.tx.forwarded.get().0,
            rx: stats.rx.forwarded.get().0,
            drops: DropReason::ALL.map(|r| stats.tx.drops(r) + stats.rx.drops(r)),
        }
    }
}

/// Our node's dataplane (encapsulator, decapsulator, forwarding table, counters) and
/// the decapsulators of its peers' nodes, built once per fuzzing thread: the FIB is immutable and the counters are compared before and
/// after each input, so nothing carries over from one input to the next.
struct DataplaneUnderTest {
    fib: Arc<Fib>,
    stats: Arc<Stats>,
    enc: Encapsulator,
    dec: Decapsulator,
    peer_sides: HashMap<String, Decapsulator>,
}

impl DataplaneUnderTest {
    fn new() -> DataplaneUnderTest {
        let fib = Arc::new(fib());
        let stats = Arc::new(Stats::default());
        DataplaneUnderTest {
            enc: Encapsulator::new(config(), fib.clone(), stats.clone()),
            dec: Decapsulator::new(config(), fib.clone(), stats.clone()),
            peer_sides: fib
                .peers()
                .iter()
                .map(|p| (p.name.clone(), peer_side(p)))
                .collect(),
            fib,
            stats,
        }
    }

    /// The decapsulator of `peer`'s node.
    fn peer_side(&mut self, peer: &Peer) -> &mut Decapsulator {
        self.peer_sides
            .get_mut(&peer.name)
            .expect("a peer of the FIB")
    }
}

thread_local! {
    static DATAPLANE: RefCell<DataplaneUnderTest> = RefCell::new(DataplaneUnderTest::new());
}

/// After the per-peer tallies are flushed, the peers' counters add up to what was
/// forwarded, packets and bytes, each way: no traffic is lost or counted twice when
/// a run of one peer ends.
fn check_peer_counts(node: &mut DataplaneUnderTest) {
    node.enc.flush_peer_stats();
    node.dec.flush_peer_stats();
    let sum = |f: fn(&PeerStats) -> (u64, u64)| {
        node.fib.peers().iter().fold((0, 0), |(p, b), peer| {
            let (pp, bb) = f(&peer.stats);
            (p + pp, b + bb)
        })
    };
    assert_eq!(sum(|s| s.tx.get()), node.stats.tx.forwarded.get(), "tx");
    assert_eq!(sum(|s| s.rx.get()), node.stats.rx.forwarded.get(), "rx");
}

/// The peer's decapsulator must accept a datagram we send it and give back the inner
/// packet we sent (trimmed to its IP length).
fn check_peer_accepts(theirs: &mut Decapsulator, datagram: &[u8]) {
    let inner = &datagram[HEADROOM..];
    let range = theirs
        .decapsulate(LOCAL_UNDERLAY, datagram)
        .expect("the peer accepts what we send it");
    let header = IpHeader::parse(inner).expect("we only send IP");
    assert_eq!(&datagram[range], &inner[..header.total_len]);
}

/// `encap`: one TUN read on a TUN without offloads, through
/// `Encapsulator::encapsulate_read` as the driver calls it. Byte 0, bit 0: fix
/// checksums; the rest is the IP packet. A packet that is sent is one datagram, in
/// place, carrying its flow hash, to the live peer owning its destination with our
/// VXLAN and Ethernet headers in front, and that peer's
/// decapsulator accepts it and returns the same packet. Every call is counted once,
/// and the per-peer counters add up to what was sent.
pub fn encap(data: &[u8]) {
    let Some((&ctl, packet)) = data.split_first() else {
        return;
    };
    let mut buf = vec![0u8; HEADROOM + packet.len() + 16];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    if ctl & 1 != 0 {
        fix_checksums(&mut buf[HEADROOM..HEADROOM + packet.len()]);
    }
    DATAPLANE.with(|node| {
        let node = &mut *node.borrow_mut();
        let before = Counts::of(&node.stats);
        let mut batch = TxBatch::new(1);
        let result = node
            .enc
            .encapsulate_read(&mut buf, packet.len(), false, 0, &mut batch);
        let after = Counts::of(&node.stats);
        match result {
            Ok(n) => {
                assert_eq!(n, 1);
                let d = &batch.datagrams()[0];
                assert_eq!(d.head, Head::InPlace, "a plain packet is sent in place");
                let len = d.len();
                assert_eq!(len, HEADROOM + packet.len());
                let header = IpHeader::parse(&buf[HEADROOM..len]).expect("only IP is sent");
                assert_eq!(d.flow, flow_hash(&buf[HEADROOM..len]));
                let fib = node.fib.clone();
                let peer = fib
                    .lookup(header.dst)
                    .expect("only routed packets are sent");
                assert_ne!(peer.state, PeerState::Dead);
                assert_eq!(d.dst, peer.underlay);
                check_peer_accepts(node.peer_side(peer), &buf[..len]);
                assert_eq!(after.tx, before.tx + 1, "counted as sent");
                assert_eq!(after.drops, before.drops, "and not as dropped");
            }
            Err(reason) => {
                assert!(batch.datagrams().is_empty(), "a drop pushes nothing");
                assert_eq!(after.tx, before.tx, "a drop is not sent");
                let mut expected = before.drops;
                expected[reason as usize] += 1;
                assert_eq!(after.drops, expected, "counted once, as {reason:?}");
            }
        }
        check_peer_counts(node);
    });
}

/// The bytes of datagram `d`: its header slot (if any), then its body.
fn datagram_bytes(batch: &TxBatch, d: &TxDatagram, bufs: &[Vec<u8>]) -> Vec<u8> {
    let body = &bufs[d.buf as usize][d.body.start as usize..d.body.end as usize];
    let mut out = Vec::with_capacity(d.len());
    if let Head::Slot(n) = d.head {
        out.extend_from_slice(batch.slot(n, d.head_len));
    }
    out.extend_from_slice(body);
    out
}

/// Header slots of the send batch, as the driver sizes it.
const TX_SLOTS: usize = 2048;

thread_local! {
    static TX_BATCH: RefCell<TxBatch> = RefCell::new(TxBatch::new(TX_SLOTS));
}

/// Checks the segments of one super-packet (`hdr`, IP packet `packet`) that
/// `encapsulate_read` pushed as `datagrams` for `peer`, whose node decapsulates
/// with `theirs`.
fn check_segments(
    hdr: &VnetHdr,
    packet: &[u8],
    datagrams: &[Vec<u8>],
    peer: &Peer,
    theirs: &mut Decapsulator,
) {
    let gso_size = usize::from(hdr.gso_size);
    let ip_len = usize::from(hdr.csum_start);
    let mut headers = None;
    let mut payload = 0;
    for (i, d) in datagrams.iter().enumerate() {
        let repr = VxlanRepr::parse(&VxlanPacket::new_unchecked(&d[..]));
        assert_eq!(repr.map(|r| r.vni), Ok(VNI));
        assert_eq!(
            EthernetFrame::new_unchecked(&d[8..]).dst_addr(),
            peer.vtep_mac
        );
        let inner = &d[HEADROOM..];
        let header = IpHeader::parse(inner).expect("every segment is a well-formed IP packet");
        assert_eq!(header.total_len, inner.len(), "segment {i} IP length");
        let (own_len, proto) = if inner[0] >> 4 == 4 {
            (usize::from(inner[0] & 0x0f) * 4, inner[9])
        } else {
            (40, inner[6])
        };
        assert_eq!(
            own_len, ip_len,
            "segment {i}: IP header length is csum_start"
        );
        let l4_len = match proto {
            6 => usize::from(inner[ip_len + 12] >> 4) * 4,
            17 => 8,
            p => panic!("segment of protocol {p}"),
        };
        assert!(l4_checksum_ok(inner, ip_len, proto), "segment {i} checksum");
        let seg_payload = inner.len() - ip_len - l4_len;
        assert!(
            seg_payload <= gso_size,
            "segment {i} carries more than gso_size"
        );
        if i + 1 < datagrams.len() {
            assert_eq!(seg_payload, gso_size, "only the last segment may be short");
        }
        assert_eq!(*headers.get_or_insert(ip_len + l4_len), ip_len + l4_len);
        payload += seg_payload;
        check_peer_accepts(theirs, d);
    }
    let headers = headers.expect("at least one segment");
    assert_eq!(
        headers + payload,
        packet.len(),
        "the segments carry the whole payload"
    );
}

/// Checks [`TxBatch::groups`] on the whole batch: the groups cover every datagram in
/// order, each goes to one destination, every datagram but the last has the group's
/// segment size, the last is no larger, and a group stays within the GSO limits.
fn check_groups(batch: &TxBatch) {
    for (max, sources) in [(1, 1), (8, 1), (64, 4), (1000, 2)] {
        let mut next = 0;
        for g in batch.groups(max, sources) {
            assert_eq!(g.range.start, next, "groups are contiguous");
            assert!(!g.range.is_empty());
            next = g.range.end;
            let ds = &batch.datagrams()[g.range.clone()];
            assert!(ds.len() <= max.clamp(1, batch::MAX_GSO_SEGMENTS));
            let (last, rest) = ds.split_last().expect("non-empty");
            for d in rest {
                assert_eq!(d.len(), g.segment_size);
            }
            assert!(last.len() <= g.segment_size);
            assert!(ds.iter().all(|d| d.dst == g.dst));
            assert!(g.source < sources, "a source port index in range");
            assert!(
                ds.iter().all(|d| source_index(d.flow, sources) == g.source),
                "a group leaves from the source port of each of its flows"
            );
            let bytes: usize = ds.iter().map(TxDatagram::len).sum();
            assert!(ds.len() == 1 || bytes <= batch::MAX_GSO_BYTES);
        }
        assert_eq!(next, batch.datagrams().len(), "groups cover the batch");
    }
}

/// `offload_segment`: TUN reads on a TUN with `IFF_VNET_HDR`, as records (see
/// [`crate::records`]): each is a 10-byte virtio-net header then the IP packet; tag
/// bit 0 fixes the IPv4 header checksum first. The reads go through
/// `Encapsulator::encapsulate_read` into one send batch, as the driver does. Every
/// segment of a super-packet is a well-formed IP packet with a valid transport
/// checksum, no more than `gso_size` of payload (all but the last exactly that),
/// carries and hashes to the super-packet's flow, and is accepted by the receiving
/// peer; the per-peer counters add up; then the GSO grouping of the batch is checked.
pub fn offload_segment(data: &[u8]) {
    DATAPLANE.with(|node| {
        TX_BATCH.with(|batch| {
            offload_segment_batch(data, &mut node.borrow_mut(), &mut batch.borrow_mut())
        })
    });
}

fn offload_segment_batch(data: &[u8], node: &mut DataplaneUnderTest, batch: &mut TxBatch) {
    batch.clear();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    for rec in records(data) {
        if batch.free_slots() < offload::MAX_SEGMENTS_PER_PACKET {
            break;
        }
        if rec.data.len() < VNET_HDR_LEN {
            continue;
        }
        let len = rec.data.len() - VNET_HDR_LEN;
        let mut buf = vec![0u8; HEADROOM + len];
        buf[HEADROOM - VNET_HDR_LEN..].copy_from_slice(rec.data);
        if rec.tag & 1 != 0 && len >= 20 && buf[HEADROOM] >> 4 == 4 {
            let ihl = (usize::from(buf[HEADROOM] & 0x0f) * 4).clamp(20, len);
            checksum::ipv4_header(&mut buf[HEADROOM..], ihl);
        }
        let hdr = VnetHdr::parse(rec.data).expect("length checked");
        let first = batch.datagrams().len();
        let id = bufs.len() as u32;
        let result = node
            .enc
            .encapsulate_read(&mut buf, VNET_HDR_LEN + len, true, id, batch);
        bufs.push(buf);
        let Ok(n) = result else {
            assert_eq!(batch.datagrams().len(), first, "a drop pushes nothing");
            continue;
        };
        assert_eq!(batch.datagrams().len(), first + n);
        let pushed = &batch.datagrams()[first..];
        let buf = &bufs[id as usize];
        let header = IpHeader::parse(&buf[HEADROOM..]).expect("only IP is sent");
        let fib = node.fib.clone();
        let peer = fib
            .lookup(header.dst)
            .expect("only routed packets are sent");
        assert!(pushed.iter().all(|d| d.dst == peer.underlay && d.buf == id));
        let bytes: Vec<Vec<u8>> = pushed
            .iter()
            .map(|d| datagram_bytes(batch, d, &bufs))
            .collect();
        let flow = flow_hash(&buf[HEADROOM..]);
        for (d, b) in pushed.iter().zip(&bytes) {
            assert_eq!(
                d.flow, flow,
                "every segment carries its super-packet's flow"
            );
            assert_eq!(
                flow_hash(&b[HEADROOM..]),
                flow,
                "and hashes the same itself"
            );
        }
        let theirs = node.peer_side(peer);
        if hdr.gso_type == offload::VNET_GSO_NONE {
            assert_eq!(n, 1);
            assert_eq!(pushed[0].head, Head::InPlace);
            check_peer_accepts(theirs, &bytes[0]);
        } else {
            check_segments(&hdr, &buf[HEADROOM..], &bytes, peer, theirs);
        }
    }
    check_peer_counts(node);
    check_groups(batch);
}

/// The receive buffer of a coalescing batch and the packets in it.
struct RxBatch {
    buf: Vec<u8>,
    packets: Vec<Range<usize>>,
}

/// Checks one finished coalescer batch: every packet is written exactly once; a
/// single write is the packet as received (behind a zero virtio-net header when the
/// coalescer is enabled); a coalesced write is a well-formed IP/TCP (or IP/UDP)
/// super-packet behind a GSO virtio header whose segmentation gives back exactly the
/// packets that were merged, in arrival order (but for fields segmentation rewrites;
/// see below).
fn check_coalesced(c: &Coalescer, rx: &RxBatch) {
    let by_end: HashMap<usize, usize> = rx
        .packets
        .iter()
        .enumerate()
        .map(|(i, r)| (r.end, i))
        .collect();
    let mut seen = vec![false; rx.packets.len()];
    let mut last_first = None;
    let mut mark = |i: usize| {
        assert!(!seen[i], "packet {i} written twice");
        seen[i] = true;
    };
    for w in c.writes() {
        match w {
            TunWrite::Single { buf, range } => {
                assert_eq!(buf, 0);
                let mut r = range.start as usize..range.end as usize;
                if c.enabled() {
                    assert_eq!(
                        rx.buf[r.start..r.start + VNET_HDR_LEN],
                        [0; VNET_HDR_LEN],
                        "a packet written alone has a zero virtio-net header in front"
                    );
                    r.start += VNET_HDR_LEN;
                }
                let i = by_end[&r.end];
                assert_eq!(r, rx.packets[i], "a single write is the packet as received");
                assert!(last_first < Some(i), "items keep arrival order");
                last_first = Some(i);
                mark(i);
            }
            TunWrite::Coalesced { head, pieces } => {
                assert!(pieces.len() >= 2);
                let hdr = VnetHdr::parse(head).expect("head holds a virtio header");
                assert_eq!(hdr.flags, offload::VNET_F_NEEDS_CSUM);
                let mut sp = head[VNET_HDR_LEN..].to_vec();
                assert_eq!(usize::from(hdr.hdr_len), sp.len());
                let mut order = Vec::new();
                for p in pieces {
                    assert_eq!(p.buf, 0);
                    order.push(by_end[&(p.range.end as usize)]);
                    sp.extend_from_slice(&rx.buf[p.range.start as usize..p.range.end as usize]);
                }
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "pieces in arrival order"
                );
                assert!(last_first < Some(order[0]), "items keep arrival order");
                last_first = Some(order[0]);
                let header = IpHeader::parse(&sp).expect("coalesced output parses");
                assert_eq!(header.total_len, sp.len());
                let mut batch = TxBatch::new(pieces.len());
                let dst = TxDest {
                    addr: SocketAddr::new(LOCAL_UNDERLAY, 4789),
                    flow: 0,
                };
                let n = offload::segment(&hdr, &sp, &[], dst, 0, 0, &mut batch)
                    .expect("a coalesced super-packet segments again");
                assert_eq!(n, pieces.len(), "as many segments as were merged");
                let ip_len = usize::from(hdr.csum_start);
                let udp = hdr.gso_type == offload::VNET_GSO_UDP_L4;
                for (d, &i) in batch.datagrams().iter().zip(&order) {
                    let mut seg = batch
                        .slot(
                            match d.head {
                                Head::Slot(s) => s,
                                Head::InPlace => unreachable!("segments use slots"),
                            },
                            d.head_len,
                        )
                        .to_vec();
                    seg.extend_from_slice(&sp[d.body.start as usize..d.body.end as usize]);
                    let orig = &rx.buf[rx.packets[i].clone()];
                    let h = IpHeader::parse(&seg).expect("a re-segmented packet parses");
                    assert_eq!(h.total_len, seg.len());
                    assert!(l4_checksum_ok(&seg, ip_len, if udp { 17 } else { 6 }));
                    // Normalise what segmentation may legitimately rewrite: the
                    // checksum, for TCP the urgent pointer (meaningless without URG,
                    // which is never merged; the first segment's is kept, as Linux
                    // GRO does), and the IPv4 ID and header checksum.
                    let t = if udp { ip_len + 6 } else { ip_len + 16 };
                    let n = if udp { 2 } else { 4 };
                    seg[t..t + n].copy_from_slice(&orig[t..t + n]);
                    if seg[0] >> 4 == 4 {
                        seg[4..6].copy_from_slice(&orig[4..6]);
                        seg[10..12].copy_from_slice(&orig[10..12]);
                    }
                    assert_eq!(seg, orig, "re-segmenting gives back packet {i}");
                    mark(i);
                }
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "every packet is written");
}

/// Pushes the batch into each coalescer, finishes and checks it, then empties them
/// and the batch for reuse. The headroom in front of every packet is refilled with
/// 0xee first, so that the virtio-net headers checked are the coalescer's.
fn finish_batch(cs: &mut [Coalescer], rx: &mut RxBatch) {
    for c in cs.iter_mut() {
        for r in &rx.packets {
            rx.buf[r.start - HEADROOM..r.start].fill(0xee);
            c.push(0, r.clone(), &rx.buf[r.clone()]);
        }
        c.finish(std::slice::from_mut(&mut rx.buf));
        check_coalesced(c, rx);
        c.clear();
    }
    rx.buf.clear();
    rx.packets.clear();
}

/// `offload_coalesce`: batches of inner packets, as the receive path hands them to
/// the coalescer after decapsulation. Records (see [`crate::records`]) each hold one
/// IP packet; tag bit 0 fixes its checksums, bit 1 ends the batch before it (finish,
/// check, clear and reuse the coalescer, as the driver does). Packets that the
/// decapsulator would drop (not IP, bad lengths or header checksum) are left out and
/// the others trimmed to their IP length, as decapsulation returns them. Each batch
/// is checked as described at [`check_coalesced`], twice (merging TCP only, and TCP
/// and UDP as with a USO-capable TUN), and against a disabled coalescer.
pub fn offload_coalesce(data: &[u8]) {
    let mut c = [Coalescer::new(true, false), Coalescer::new(true, true)];
    let mut rx = RxBatch {
        buf: Vec::new(),
        packets: Vec::new(),
    };
    for rec in records(data) {
        if rec.tag & 2 != 0 {
            finish_batch(&mut c, &mut rx);
        }
        let mut p = rec.data.to_vec();
        if rec.tag & 1 != 0 {
            fix_checksums(&mut p);
        }
        let Ok(header) = IpHeader::parse(&p) else {
            continue;
        };
        rx.buf.extend_from_slice(&[0xee; HEADROOM]);
        let start = rx.buf.len();
        rx.buf.extend_from_slice(&p[..header.total_len]);
        rx.packets.push(start..rx.buf.len());
    }
    let mut off = Coalescer::new(false, false);
    for r in &rx.packets {
        off.push(0, r.clone(), &rx.buf[r.clone()]);
    }
    off.finish(std::slice::from_mut(&mut rx.buf));
    let singles: Vec<_> = off
        .writes()
        .map(|w| match w {
            TunWrite::Single { range, .. } => range.start as usize..range.end as usize,
            TunWrite::Coalesced { .. } => panic!("a disabled coalescer merged"),
        })
        .collect();
    assert_eq!(singles, rx.packets);
    finish_batch(&mut c, &mut rx);
}
