//! Tests of the encrypted packet path: two nodes' tunnel tables and packet cores
//! talking to each other in memory, through real WireGuard handshakes.

use std::net::SocketAddr;
use std::sync::Arc;

use etherparse::PacketBuilder;

use super::key::KeyPair;
use super::path::{flush_queue, Arena, Opened, Opener, Sealer};
use super::tunnels::{TunnelTable, Tunnels, HANDSHAKE_QUEUE, HANDSHAKE_RATE_LIMIT};
use crate::dataplane::batch::TxBatch;
use crate::dataplane::encap::HEADROOM;
use crate::dataplane::fib::{Fib, Peer, PeerOrigin, PeerState};
use crate::dataplane::offload::{VnetHdr, VNET_GSO_TCPV4, VNET_HDR_LEN};
use crate::dataplane::stats::{DropReason, Stats};
use crate::dataplane::wire::MacAddr;

const A_ADDR: &str = "198.18.0.1:51820";
/// What a node sends back, and where.
type Replies = Vec<(SocketAddr, Vec<u8>)>;
const B_ADDR: &str = "198.18.0.2:51820";

/// One node: its tunnels to the other and its packet cores.
pub(crate) struct Node {
    pub(crate) table: TunnelTable,
    pub(crate) tunnels: Arc<Tunnels>,
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    pub(crate) stats: Arc<Stats>,
    pub(crate) addr: SocketAddr,
    vnet: bool,
}

fn peer(name: &str, subnet: &str, addr: &str, key: [u8; 32]) -> Peer {
    Peer {
        name: name.into(),
        subnet: subnet.parse().unwrap(),
        underlay: addr.parse().unwrap(),
        vtep_mac: MacAddr([0; 6]),
        state: PeerState::Alive,
        origin: PeerOrigin::Gossip,
        subnet_v6: None,
        allow_any_source: false,
        wg_key: Some(key),
        stats: Arc::default(),
    }
}

impl Node {
    fn new(pair: KeyPair, addr: &str, peers: Vec<Peer>, vnet: bool) -> Node {
        let mut table = TunnelTable::new(pair);
        let tunnels = table.build(Arc::new(Fib::new(peers).unwrap()));
        let stats = Arc::new(Stats::default());
        Node {
            table,
            tunnels,
            sealer: Sealer::new(stats.clone(), vnet),
            opener: Opener::new(stats.clone()),
            stats,
            addr: addr.parse().unwrap(),
            vnet,
        }
    }

    /// Seals one TUN read (`read`: what the TUN gave, virtio header first if the
    /// node has one); returns the datagrams to send.
    fn seal(&mut self, read: &[u8]) -> Result<Vec<Vec<u8>>, DropReason> {
        let off = if self.vnet {
            HEADROOM - VNET_HDR_LEN
        } else {
            HEADROOM
        };
        let mut buf = vec![0u8; off + read.len()];
        buf[off..].copy_from_slice(read);
        let idx = self.sealer.route(&self.tunnels, &buf, read.len())?;
        let peer = self.tunnels.peer(idx).unwrap().clone();
        let mut arena = Arena::new(64, 1500);
        let mut batch = TxBatch::new(0);
        let mut tunn = peer.lock();
        self.sealer.seal(
            &peer,
            &mut tunn,
            &mut buf,
            read.len(),
            &mut arena,
            &mut batch,
        )?;
        Ok(batch
            .datagrams()
            .iter()
            .map(|d| arena.get(d.buf, d.len()).to_vec())
            .collect())
    }

    /// Receives `msg` from `from` as a worker does; returns the inner packets
    /// delivered and what the node sends back.
    fn receive(&mut self, from: SocketAddr, msg: &[u8]) -> (Vec<Vec<u8>>, Replies) {
        let mut out = vec![0u8; 65_600];
        let mut sent = Vec::new();
        let mut inner = Vec::new();
        match Opener::data_peer(&self.tunnels, msg) {
            Some(idx) => {
                let peer = self.tunnels.peer(idx).unwrap().clone();
                let mut tunn = peer.lock();
                match self.opener.open_data(
                    &self.tunnels,
                    idx,
                    &peer,
                    &mut tunn,
                    from,
                    msg,
                    &mut out,
                ) {
                    Ok(Opened::Inner(len)) => inner.push(out[..len].to_vec()),
                    Ok(Opened::Send { to, len }) => sent.push((to, out[..len].to_vec())),
                    _ => {}
                }
                // As the worker does after a run of data messages.
                flush_queue(&self.stats, &peer, &mut tunn, &mut out, &mut |to, m| {
                    sent.push((to, m.to_vec()))
                });
            }
            None => self
                .opener
                .open_control(&self.tunnels, from, msg, &mut out, &mut |to, m| {
                    sent.push((to, m.to_vec()))
                }),
        }
        (inner, sent)
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.stats.rx.drops(reason)
    }
}

/// Two nodes that know each other's keys: A owns 10.244.1.0/24, B 10.244.2.0/24.
fn pair(vnet: bool) -> (Node, Node) {
    let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
    let a = Node::new(
        ka.clone(),
        A_ADDR,
        vec![peer("b", "10.244.2.0/24", B_ADDR, kb.public_bytes())],
        vnet,
    );
    let b = Node::new(
        kb,
        B_ADDR,
        vec![peer("a", "10.244.1.0/24", A_ADDR, ka.public_bytes())],
        vnet,
    );
    (a, b)
}

/// Passes datagrams back and forth until nothing more is sent; returns what each
/// side delivered (A's, B's).
fn exchange(a: &mut Node, b: &mut Node, from_a: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut to_b: Vec<Vec<u8>> = from_a;
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    for _ in 0..10 {
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for m in std::mem::take(&mut to_b) {
            let (inner, sent) = b.receive(a.addr, &m);
            got_b.extend(inner);
            to_a.extend(sent.into_iter().map(|(_, m)| m));
        }
        for m in std::mem::take(&mut to_a) {
            let (inner, sent) = a.receive(b.addr, &m);
            got_a.extend(inner);
            to_b.extend(sent.into_iter().map(|(_, m)| m));
        }
    }
    (got_a, got_b)
}

fn udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let builder = PacketBuilder::ipv4(src, dst, 64).udp(4000, 5000);
    let mut p = Vec::with_capacity(builder.size(len));
    builder.write(&mut p, &payload).unwrap();
    p
}

/// A and B with a session, A → B having carried one packet.
fn connected(vnet: bool) -> (Node, Node) {
    let (mut a, mut b) = pair(vnet);
    let p = udp([10, 244, 1, 2], [10, 244, 2, 2], 10);
    let read = if vnet { with_vnet_none(&p) } else { p.clone() };
    let first = a.seal(&read).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].len(),
        148,
        "no session yet: a handshake initiation"
    );
    let (_, got_b) = exchange(&mut a, &mut b, first);
    assert_eq!(
        got_b,
        vec![p],
        "the queued packet arrives once the handshake is done"
    );
    (a, b)
}

fn with_vnet_none(p: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v.extend_from_slice(p);
    v
}

#[test]
fn a_sealed_packet_opens_on_the_peer_as_the_same_bytes() {
    let (mut a, mut b) = connected(false);
    for len in [0, 64, 512, 1400] {
        let p = udp([10, 244, 1, 2], [10, 244, 2, 9], len);
        let sealed = a.seal(&p).unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0][0], 4, "a data message");
        assert_eq!(sealed[0].len(), p.len() + 32);
        assert!(
            !sealed[0].windows(8).any(|w| w == &p[p.len() - 8..]) || len < 8,
            "no clear text on the wire"
        );
        let (inner, _) = b.receive(a.addr, &sealed[0]);
        assert_eq!(inner, vec![p]);
    }
    // And back.
    let p = udp([10, 244, 2, 9], [10, 244, 1, 2], 100);
    let sealed = b.seal(&p).unwrap();
    assert_eq!(a.receive(b.addr, &sealed[0]).0, vec![p]);
    let peer_stats = &a.tunnels.fib().peers()[0].stats;
    assert_eq!(peer_stats.wg.snapshot().failures.len(), 0);
}

#[test]
fn an_inner_source_outside_the_peers_subnet_is_dropped_as_spoofed() {
    let (mut a, mut b) = connected(false);
    // A seals a packet claiming a source in B's own subnet.
    let p = udp([10, 244, 2, 66], [10, 244, 2, 9], 20);
    let sealed = a.seal(&p).unwrap();
    let (inner, _) = b.receive(a.addr, &sealed[0]);
    assert!(inner.is_empty());
    assert_eq!(b.drops(DropReason::SpoofedSource), 1);
}

#[test]
fn a_replayed_message_is_dropped_and_counted() {
    let (mut a, mut b) = connected(false);
    let p = udp([10, 244, 1, 2], [10, 244, 2, 9], 20);
    let sealed = a.seal(&p).unwrap();
    assert_eq!(b.receive(a.addr, &sealed[0]).0.len(), 1);
    assert!(b.receive(a.addr, &sealed[0]).0.is_empty());
    assert!(b.receive(a.addr, &sealed[0]).0.is_empty());
    assert_eq!(b.drops(DropReason::Replay), 2);
    let failures = b.tunnels.fib().peers()[0].stats.wg.snapshot().failures;
    assert_eq!(failures.get("replay"), Some(&2));
}

#[test]
fn a_flipped_ciphertext_byte_fails_the_tag() {
    let (mut a, mut b) = connected(false);
    let p = udp([10, 244, 1, 2], [10, 244, 2, 9], 200);
    let mut sealed = a.seal(&p).unwrap().remove(0);
    sealed[40] ^= 1;
    assert!(b.receive(a.addr, &sealed).0.is_empty());
    assert_eq!(b.drops(DropReason::BadTag), 1);
    // The genuine message still opens: a failed tag does not advance the window.
    sealed[40] ^= 1;
    assert_eq!(b.receive(a.addr, &sealed).0, vec![p]);
}

#[test]
fn a_handshake_from_a_key_no_peer_has_is_counted_as_unknown_key() {
    let (_, mut b) = pair(false);
    // C knows B's public key but is not B's peer.
    let kb = b.tunnels.local().public_bytes();
    let mut c = Node::new(
        KeyPair::generate(),
        "198.18.0.3:51820",
        vec![peer("b", "10.244.2.0/24", B_ADDR, kb)],
        false,
    );
    let init = c
        .seal(&udp([10, 244, 3, 2], [10, 244, 2, 2], 10))
        .unwrap()
        .remove(0);
    let (inner, sent) = b.receive(c.addr, &init);
    assert!(
        inner.is_empty() && sent.is_empty(),
        "no answer to a stranger"
    );
    assert_eq!(b.drops(DropReason::UnknownKey), 1);
}

#[test]
fn junk_and_data_for_no_session_are_counted() {
    let (_, mut b) = pair(false);
    let (inner, sent) = b.receive(A_ADDR.parse().unwrap(), b"hello, world");
    assert!(inner.is_empty() && sent.is_empty());
    assert_eq!(b.drops(DropReason::NotWireguard), 1);
    // A data message for a receiver index B never handed out, from A's address:
    // counted, and B starts a handshake with A.
    let mut msg = vec![4u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    msg.extend_from_slice(&[0u8; 40]);
    let (inner, sent) = b.receive(A_ADDR.parse().unwrap(), &msg);
    assert!(inner.is_empty());
    assert_eq!(b.drops(DropReason::NoSession), 1);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, A_ADDR.parse().unwrap());
    assert_eq!(sent[0].1.len(), 148, "a handshake initiation to A");
}

#[test]
fn a_tso_super_packet_is_sealed_as_equal_segments_that_open_as_valid_tcp() {
    let (mut a, mut b) = connected(true);
    // A 4000-byte TCP payload with MSS 1000: four segments.
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let builder = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 9], 64)
        .tcp(4000, 80, 1_000_000, 65_000)
        .ack(5)
        .psh();
    let mut p = Vec::new();
    builder.write(&mut p, &payload).unwrap();
    // The kernel hands TSO packets over with the IP total length of the whole.
    let hdr = VnetHdr {
        flags: crate::dataplane::offload::VNET_F_NEEDS_CSUM,
        gso_type: VNET_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut read);
    read.extend_from_slice(&p);
    let sealed = a.seal(&read).unwrap();
    assert_eq!(sealed.len(), 4);
    assert!(
        sealed.iter().all(|s| s.len() == 40 + 1000 + 32),
        "equal sizes: one GSO run"
    );
    let mut got = Vec::new();
    for s in &sealed {
        let (inner, _) = b.receive(a.addr, s);
        assert_eq!(inner.len(), 1);
        let seg = etherparse::SlicedPacket::from_ip(&inner[0]).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = seg.transport else {
            panic!("not TCP")
        };
        let Some(etherparse::NetSlice::Ipv4(ip)) = seg.net else {
            panic!("not IPv4")
        };
        let want = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap();
        assert_eq!(tcp.checksum(), want, "valid TCP checksum");
        assert_eq!(ip.header().total_len() as usize, inner[0].len());
        got.extend_from_slice(tcp.payload());
    }
    assert_eq!(got, payload, "the segments carry the payload in order");
}

#[test]
fn a_rotated_key_is_adopted_when_the_peer_hands_shake_with_it() {
    let (mut a, mut b) = connected(false);
    let new = KeyPair::generate();
    let new_public = new.public_bytes();
    a.table.rotate(new, std::time::Instant::now());
    a.tunnels = a.table.build(a.tunnels.fib().clone());
    // The old session still works.
    let p = udp([10, 244, 1, 2], [10, 244, 2, 9], 30);
    let sealed = a.seal(&p).unwrap();
    assert_eq!(b.receive(a.addr, &sealed[0]).0, vec![p.clone()]);
    // B learns A's new key (a new tunnel) and hands shake with it.
    let mut fib_peers = b.tunnels.fib().peers().to_vec();
    fib_peers[0].wg_key = Some(new_public);
    b.tunnels = b.table.build(Arc::new(Fib::new(fib_peers).unwrap()));
    let q = udp([10, 244, 2, 9], [10, 244, 1, 2], 30);
    let init = b.seal(&q).unwrap();
    assert_eq!(init[0].len(), 148);
    let (got_b, got_a) = exchange(&mut b, &mut a, init);
    assert!(got_b.is_empty());
    assert_eq!(got_a, vec![q], "A answered with its new key");
    // A's tunnel is on the new key now: its packets open on B's new tunnel.
    let sealed = a.seal(&p).unwrap();
    assert_eq!(b.receive(a.addr, &sealed[0]).0, vec![p]);
}

#[test]
fn the_old_key_retires_when_the_table_says_it_is_due() {
    use super::tunnels::RETIRE_AFTER;
    let (mut a, _b) = connected(false);
    let old = a.table.public();
    let new = KeyPair::generate();
    let new_public = new.public_bytes();
    let t0 = std::time::Instant::now();
    assert!(
        !a.table.retire_due(t0),
        "nothing to retire before a rotation"
    );
    a.table.rotate(new, t0);
    assert_eq!(a.table.public(), old, "the old key serves until it retires");
    assert!(!a
        .table
        .retire_due(t0 + RETIRE_AFTER - std::time::Duration::from_millis(1)));
    assert!(a.table.retire_due(t0 + RETIRE_AFTER));
    assert_eq!(
        a.table.public(),
        new_public,
        "the new key is the node's key"
    );
    assert!(!a.table.retire_due(t0 + RETIRE_AFTER * 2), "retired once");
}

#[test]
fn under_a_handshake_flood_initiations_get_cookie_replies() {
    use boringtun::noise::{Tunn, TunnResult};
    let (_, mut b) = pair(false);
    let kb = b.tunnels.local().public;
    // A stranger floods B with initiations that pass MAC1 (it knows B's public key).
    let c = KeyPair::generate();
    let mut t = Tunn::new(c.secret, kb, None, None, 7, None);
    let from: SocketAddr = "198.18.0.3:51820".parse().unwrap();
    let mut cookies = 0;
    let mut buf = [0u8; 256];
    for _ in 0..HANDSHAKE_RATE_LIMIT + 20 {
        let TunnResult::WriteToNetwork(init) = t.format_handshake_initiation(&mut buf, true) else {
            panic!("no initiation")
        };
        let (inner, sent) = b.receive(from, init);
        assert!(inner.is_empty());
        for (to, m) in sent {
            assert_eq!(to, from, "the cookie goes back to the sender");
            assert_eq!((m[0], m.len()), (3, 64), "a cookie reply");
            cookies += 1;
        }
    }
    // Below the limit each is refused as unknown_key; past it, answered with a cookie.
    assert_eq!(b.drops(DropReason::UnknownKey), HANDSHAKE_RATE_LIMIT);
    assert_eq!(cookies, 20);
}

#[test]
fn packets_beyond_the_handshake_queue_are_counted_as_dropped_and_the_rest_as_sent() {
    let (mut a, mut b) = pair(false);
    let p = udp([10, 244, 1, 2], [10, 244, 2, 2], 10);
    let mut first = Vec::new();
    for _ in 0..300 {
        first.extend(a.seal(&p).unwrap());
    }
    assert_eq!(first.len(), 1, "one handshake initiation");
    let full = DropReason::HandshakeQueueFull;
    assert_eq!(a.stats.tx.drops(full), 300 - u64::from(HANDSHAKE_QUEUE));
    assert_eq!(
        a.stats.tx.forwarded.get(),
        (0, 0),
        "nothing sent before the handshake"
    );
    let (_, got_b) = exchange(&mut a, &mut b, first);
    assert_eq!(got_b.len(), HANDSHAKE_QUEUE as usize);
    assert!(got_b.iter().all(|g| *g == p));
    let q = u64::from(HANDSHAKE_QUEUE);
    let len = p.len() as u64;
    assert_eq!(a.stats.tx.forwarded.get(), (q, q * len));
    let to_b = &a.tunnels.fib().peers()[0].stats;
    assert_eq!(to_b.tx.get(), (q, q * len));
    assert_eq!(to_b.tx_dropped.get(), (300 - q, (300 - q) * len));
    assert!(a.tunnels.peer(0).unwrap().queue.is_empty());
}

#[test]
fn a_packet_queued_on_the_answering_side_goes_with_the_first_data_message() {
    let (mut a, mut b) = pair(false);
    let pa = udp([10, 244, 1, 2], [10, 244, 2, 2], 10);
    let pb = udp([10, 244, 2, 2], [10, 244, 1, 2], 20);
    let init_a = a.seal(&pa).unwrap();
    // B has a packet for A too; its own initiation is lost on the way.
    let init_b = b.seal(&pb).unwrap();
    assert_eq!(init_b.len(), 1);
    // B answers A's handshake, then holds pb until A's first data message makes
    // the session current on its side.
    let (got_a, got_b) = exchange(&mut a, &mut b, init_a);
    assert_eq!(got_b, vec![pa]);
    assert_eq!(got_a, vec![pb.clone()]);
    assert_eq!(b.stats.tx.forwarded.get(), (1, pb.len() as u64));
}

#[test]
fn a_peers_initiations_count_once_against_the_nodes_handshake_limit() {
    use boringtun::noise::TunnResult;
    let (a, mut b) = pair(false);
    let peer = a.tunnels.peer(0).unwrap().clone();
    let mut buf = [0u8; 256];
    let (mut responses, mut cookies) = (0, 0);
    // Below the limit in one second (the limiter's period): each one answered.
    for _ in 0..HANDSHAKE_RATE_LIMIT - 1 {
        let init = match peer.lock().format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("no initiation"),
        };
        for (_, m) in b.receive(a.addr, &init).1 {
            match m[0] {
                2 => responses += 1,
                3 => cookies += 1,
                t => panic!("message type {t}"),
            }
        }
    }
    assert_eq!(cookies, 0, "a peer's initiation was counted twice");
    assert_eq!(responses, HANDSHAKE_RATE_LIMIT - 1);
}
