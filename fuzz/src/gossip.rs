//! Control-plane harnesses: the gossip frame, its authentication and its two body
//! codecs, and a whole node, with or without the cluster key, receiving a sequence
//! of datagrams.
//!
//! Time is fixed: nodes and authenticators are told the wall clock is [`WALL_MS`]
//! at the start, so signed seed datagrams stay fresh and runs are repeatable.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::Codec;
use overlayd::control::auth::{Reject, AUTH_LEN};
use overlayd::control::message::{parse_frame, Kind, MAX_DATAGRAM};
use overlayd::control::meta::{get_meta, meta_len, put_meta, MetaCodec};
use overlayd::control::{
    Authenticator, Controller, ControllerConfig, KeySet, LeaseConfig, LeaseDatagram, LeaseMsg,
    MembershipConfig, NodeMeta,
};

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
        second: None,
        lease: None,
        has_free: false,
        bump: 0,
        cluster_id: None,
        bootstrap_expect: None,
        wg: None,
    }
}

/// The wall-clock time (unix ms) of every harness at its start: 2023-11-14.
pub const WALL_MS: u64 = 1_700_000_000_000;

/// The cluster key of the keyed targets and seeds (a `--secret-file` with one key).
pub const CLUSTER_KEY: &str = "fuzz cluster key 0123456789abcdef";

/// The fuzz cluster's key set.
pub fn keys() -> KeySet {
    KeySet::parse(CLUSTER_KEY).expect("a valid key")
}

/// A node of the fuzz cluster, founder or not, with the cluster key or not, starting
/// without persisted state; its wall clock reads [`WALL_MS`] at `now`.
pub fn node(
    name: &str,
    gossip: &str,
    founder: bool,
    keyed: bool,
    seeds: Vec<SocketAddr>,
    now: Instant,
) -> Controller {
    let cfg = ControllerConfig {
        meta: meta(name, gossip),
        seeds,
        founder,
        propose_first: false,
        bootstrap_expect: None,
        membership: MembershipConfig::default(),
        lease: LeaseConfig::new(name, 0, founder),
        keys: keyed.then(keys),
        session: u64::from(name.as_bytes()[0]),
    };
    let mut n = Controller::new(cfg, None, now).expect("the fuzz node config is valid");
    n.set_wall_clock(now, WALL_MS);
    n
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

/// The authentication layer on a frame `parse_frame` accepted. A node without a key
/// accepts exactly the unsigned frames, and one with the key rejects them. A signed
/// frame that a keyed node accepts is accepted only once (then it is a replay). And
/// an unsigned frame, sealed by a keyed sender, frames again with the same kind and
/// body, opens once at a keyed receiver, is a replay the second time, and is
/// rejected after any one byte changes.
fn auth(data: &[u8], kind: Kind, body: &[u8]) {
    let now = Instant::now();
    let unsigned = data[6] == 0;
    let mut keyless = Authenticator::new(None, 1);
    assert_eq!(keyless.open(data, WALL_MS, now).is_ok(), unsigned);
    let mut keyed = Authenticator::new(Some(keys()), 1);
    match keyed.open(data, WALL_MS, now) {
        Ok(()) => {
            assert!(!unsigned);
            assert_eq!(keyed.open(data, WALL_MS, now), Err(Reject::Replay));
        }
        Err(reason) => assert!(!unsigned || reason == Reject::Unsigned),
    }
    if !unsigned || data.len() + AUTH_LEN > MAX_DATAGRAM {
        return;
    }
    let mut sender = Authenticator::new(Some(keys()), 2);
    let sealed = sender.seal(data.to_vec(), WALL_MS);
    assert_eq!(
        parse_frame(&sealed),
        Ok((kind, body)),
        "sealing keeps the frame"
    );
    let mut receiver = Authenticator::new(Some(keys()), 3);
    assert_eq!(receiver.open(&sealed, WALL_MS + 1000, now), Ok(()));
    assert_eq!(receiver.open(&sealed, WALL_MS, now), Err(Reject::Replay));
    // One changed byte, picked by the input, anywhere in the sealed frame.
    let at = data
        .iter()
        .fold(0usize, |a, b| a.wrapping_mul(31) ^ usize::from(*b))
        % sealed.len();
    let mut forged = sealed.clone();
    forged[at] ^= 0x01;
    let mut fresh = Authenticator::new(Some(keys()), 3);
    let opened = parse_frame(&forged).map(|_| fresh.open(&forged, WALL_MS, now));
    assert!(
        !matches!(opened, Ok(Ok(()))),
        "a changed byte at {at} is caught"
    );
}

/// `gossip_frame`: one datagram as the gossip socket receives it. `parse_frame`, the
/// authentication layer (see `auth`), then the body by its kind
/// (`LeaseDatagram::parse`, or the foca payload's header and member codec); the raw
/// bytes also go to both body decoders, so they are fuzzed without having to find the
/// frame header. Whatever parses must round-trip.
pub fn gossip_frame(data: &[u8]) {
    match parse_frame(data) {
        Ok((kind, body)) => {
            assert!(data.len() <= MAX_DATAGRAM);
            assert!(data.ends_with(body));
            auth(data, kind, body);
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

/// Saves the node's lease state if it changed (or, with `saves_fail`, fails to, as a
/// full disk would), then drains it. Everything a node sends must be a frame a node
/// accepts: it frames, is no longer than [`MAX_DATAGRAM`], passes `peer`'s
/// authentication (the same key, or none, as the node's), and its body decodes (foca
/// payloads as far as their header). While the state is unsaved no lease message but
/// a Refuse goes out, and a node that never saved uses no subnet.
fn drain(
    node: &mut Controller,
    peer: &mut Authenticator,
    saves_fail: bool,
    wall_ms: u64,
    now: Instant,
) {
    // Saving the lease state, as the driver does after every step.
    if node.take_lease_dirty() || node.state_unsaved() {
        node.set_state_saved(!saves_fail);
    }
    if saves_fail && node.state_unsaved() {
        assert_eq!(
            node.using(now),
            None,
            "a node that never saved uses no subnet"
        );
    }
    let mut codec = MetaCodec::new(node.membership().me().clone());
    while let Some(t) = node.poll_transmit(now) {
        assert!(t.data.len() <= MAX_DATAGRAM, "sent {} bytes", t.data.len());
        let (kind, body) = parse_frame(&t.data).expect("a node's datagrams frame");
        assert_eq!(
            peer.open(&t.data, wall_ms, now),
            Ok(()),
            "a peer with the same key (or none) accepts what a node sends"
        );
        match kind {
            Kind::Lease => {
                let d = LeaseDatagram::parse(body).expect("a node's lease datagrams parse");
                lease_round_trip(body);
                assert_eq!(d.from, node.name());
                assert!(
                    // Refusals and the direct-routing messages follow from no lease state.
                    !node.state_unsaved()
                        || matches!(
                            d.msg,
                            LeaseMsg::Refuse { .. }
                                | LeaseMsg::DirectOffer { .. }
                                | LeaseMsg::ProbeAck { .. }
                        ),
                    "lease messages wait for the state they follow from to be saved"
                );
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

/// `gossip_node`: a whole node receiving garbage. Byte 0: bit 0 set, the node is not
/// the founder (it starts without space and asks for a lease); bit 1 set, it has the
/// cluster key ([`CLUSTER_KEY`]), so every datagram must be signed, fresh and new;
/// bit 2 set, saving its lease state always fails.
/// Then records (see [`crate::records`]), each one datagram: tag bits 0-1 pick the
/// sender from [`SENDERS`], bits 2-7 advance the clock by that many 50 ms steps first.
/// After each datagram due timers run and every output is drained and checked as
/// `drain` says; rejected datagrams are counted, never dropped silently; status and
/// the peer list must build.
pub fn gossip_node(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let keyed = ctl & 2 != 0;
    let saves_fail = ctl & 4 != 0;
    let start = Instant::now();
    let seeds = vec![SENDERS[0].parse().expect("literal address")];
    let mut n = node("a", "10.0.0.1:7946", ctl & 1 == 0, keyed, seeds, start);
    let mut peer = Authenticator::new(keyed.then(keys), 0xfeed);
    let mut now = start;
    let mut rejected = 0;
    n.handle_timeout(now);
    drain(&mut n, &mut peer, saves_fail, WALL_MS, now);
    for rec in records(rest) {
        let step = Duration::from_millis(50) * u32::from(rec.tag >> 2);
        now += step;
        let wall_ms = WALL_MS + (now - start).as_millis() as u64;
        let from: SocketAddr = SENDERS[usize::from(rec.tag & 3)]
            .parse()
            .expect("literal address");
        let dropped = n.dropped();
        n.handle_datagram(from, rec.data, now);
        let now_rejected = n.status(now).rejected.total();
        assert!(n.dropped() >= dropped);
        assert!(
            (rejected..=rejected + 1).contains(&now_rejected),
            "one datagram, at most one rejection"
        );
        rejected = now_rejected;
        if n.poll_timeout() <= now {
            n.handle_timeout(now);
        }
        drain(&mut n, &mut peer, saves_fail, wall_ms, now);
    }
    let status = n.status(now);
    assert_eq!(status.name, "a");
    assert_eq!(status.auth_keys.len(), usize::from(keyed));
    let _ = n.peers();
}
