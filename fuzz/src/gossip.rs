//! Control-plane harnesses: the gossip frame and its two body codecs, and a whole
//! node receiving a sequence of datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::Codec;
use overlayd::control::membership::{get_meta, meta_len, put_meta, MetaCodec};
use overlayd::control::message::{parse_frame, Kind, MAX_DATAGRAM};
use overlayd::control::{LeaseConfig, LeaseDatagram, MembershipConfig, Node, NodeConfig, NodeMeta};

use crate::records::records;

/// The identity of the node under test (`a`), and the cluster every target uses.
pub fn meta(name: &str, gossip: &str) -> NodeMeta {
    NodeMeta {
        name: name.into(),
        gossip: gossip.parse().expect("literal address"),
        vxlan_port: 4789,
        vni: 1,
        vtep_mac: [2, 0, 0, 0, 0, 1],
        cluster_cidr: "10.244.0.0/16".parse().expect("literal CIDR"),
        subnet_len: 24,
        lease: None,
        has_free: false,
        bump: 0,
    }
}

/// A node of the fuzz cluster, founder or not, starting without persisted state.
pub fn node(name: &str, gossip: &str, founder: bool, seeds: Vec<SocketAddr>, now: Instant) -> Node {
    let cfg = NodeConfig {
        meta: meta(name, gossip),
        seeds,
        founder,
        membership: MembershipConfig::default(),
        lease: LeaseConfig::new(name, 0, founder),
    };
    Node::new(cfg, None, now).expect("the fuzz node config is valid")
}

/// Gossip addresses a `gossip_node` record's tag picks the sender from (low two bits).
pub const SENDERS: [&str; 4] = [
    "10.0.0.2:7946",
    "10.0.0.3:7946",
    "[2001:db8::4]:7946",
    "10.0.0.1:7946",
];

/// A lease body that parses must emit and parse back to the same value.
fn lease_round_trip(body: &[u8]) {
    let Ok(d) = LeaseDatagram::parse(body) else {
        return;
    };
    let mut out = Vec::new();
    d.emit(&mut out);
    let (kind, again) = parse_frame(&out).expect("an emitted lease datagram frames");
    assert_eq!(kind, Kind::Lease);
    assert_eq!(
        LeaseDatagram::parse(again).as_ref(),
        Ok(&d),
        "lease round trip"
    );
}

/// A membership body through [`MetaCodec`] as foca calls it: a header, or a member
/// update. Whatever decodes must encode and decode to the same value.
fn membership_round_trip(body: &[u8]) {
    let mut codec = MetaCodec::new(meta("a", "10.0.0.1:7946"));
    if let Ok(h) = codec.decode_header(body) {
        let mut out = Vec::new();
        codec
            .encode_header(&h, &mut out)
            .expect("a decoded header encodes");
        assert_eq!(
            codec.decode_header(&out[..]).as_ref(),
            Ok(&h),
            "header round trip"
        );
    }
    if let Ok(m) = codec.decode_member(body) {
        let mut out = Vec::new();
        codec
            .encode_member(&m, &mut out)
            .expect("a decoded member encodes");
        assert_eq!(
            codec.decode_member(&out[..]).as_ref(),
            Ok(&m),
            "member round trip"
        );
    }
    if let Ok(m) = get_meta(&mut &body[..]) {
        let mut out = Vec::new();
        put_meta(&m, &mut out);
        assert_eq!(out.len(), meta_len(&m));
        assert_eq!(
            get_meta(&mut &out[..]).as_ref(),
            Ok(&m),
            "identity round trip"
        );
    }
}

/// `gossip_frame`: one datagram as the gossip socket receives it. `parse_frame`, then
/// the body by its kind (`LeaseDatagram::parse`, or the foca payload's header and
/// member codec); the raw bytes also go to both body decoders, so they are fuzzed
/// without having to find the frame header. Whatever parses must round-trip.
pub fn gossip_frame(data: &[u8]) {
    match parse_frame(data) {
        Ok((kind, body)) => {
            assert!(data.len() <= MAX_DATAGRAM);
            assert!(data.ends_with(body));
            match kind {
                Kind::Lease => lease_round_trip(body),
                Kind::Membership => membership_round_trip(body),
            }
        }
        Err(_) => {
            lease_round_trip(data);
            membership_round_trip(data);
        }
    }
}

/// Everything a node sends must be a frame a node accepts: it frames, is no longer
/// than [`MAX_DATAGRAM`], and its body decodes (foca payloads as far as their header).
fn drain(node: &mut Node, now: Instant) {
    let mut codec = MetaCodec::new(node.membership().me().clone());
    while let Some(t) = node.poll_transmit(now) {
        assert!(t.data.len() <= MAX_DATAGRAM, "sent {} bytes", t.data.len());
        let (kind, body) = parse_frame(&t.data).expect("a node's datagrams frame");
        match kind {
            Kind::Lease => {
                let d = LeaseDatagram::parse(body).expect("a node's lease datagrams parse");
                lease_round_trip(body);
                assert_eq!(d.from, node.name());
            }
            Kind::Membership => {
                codec
                    .decode_header(body)
                    .expect("a node's membership header decodes");
            }
        }
    }
    while node.poll_event().is_some() {}
}

/// `gossip_node`: a whole node receiving garbage. Byte 0, bit 0 set: the node is not
/// the founder (it starts without space and asks for a lease); then records (see
/// [`crate::records`]), each one datagram: tag bits 0-1 pick the sender from
/// [`SENDERS`], bits 2-7 advance the clock by that many 50 ms steps first. After each
/// datagram due timers run and every output is drained and checked as `drain` says;
/// status and the peer list must build.
pub fn gossip_node(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let start = Instant::now();
    let seeds = vec![SENDERS[0].parse().expect("literal address")];
    let mut n = node("a", "10.0.0.1:7946", ctl & 1 == 0, seeds, start);
    let mut now = start;
    n.handle_timeout(now);
    drain(&mut n, now);
    for rec in records(rest) {
        now += Duration::from_millis(50) * u32::from(rec.tag >> 2);
        let from: SocketAddr = SENDERS[usize::from(rec.tag & 3)]
            .parse()
            .expect("literal address");
        let dropped = n.dropped();
        n.handle_datagram(from, rec.data, now);
        assert!(n.dropped() >= dropped);
        if n.poll_timeout() <= now {
            n.handle_timeout(now);
        }
        drain(&mut n, now);
    }
    let status = n.status(now);
    assert_eq!(status.name, "a");
    let _ = n.peers();
}
