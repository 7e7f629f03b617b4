//! The harness of the `wg_open` target: the encrypted receive path (`--encrypt`)
//! of node B, whose session with node A was set up by a real WireGuard handshake.
//!
//! Byte 0 picks what reaches B, the rest is its material:
//! - `ctl & 3 == 0`: the rest as a raw datagram, from A's address (bit 2 clear) or a
//!   stranger's (bit 2 set): junk, forged handshakes, truncated messages (the
//!   static keys are fixed, [`A_SECRET`], [`B_SECRET`], so a committed handshake
//!   message to B passes MAC1);
//! - `1`: A seals an IPv4/UDP packet carrying the rest, from inside A's subnet (bit 2
//!   clear) or spoofing B's (bit 2 set); with bit 3 one byte of the message, at the
//!   index given by byte 1, is flipped before B gets it;
//! - `2`: as `1` without flips, delivered twice (a replay);
//! - `3`: A seals, then the rest overwrites the message's tail from byte 16 on
//!   (a forged ciphertext under a valid header).
//!
//! Invariants: nothing panics; each datagram is delivered, counted once under one
//! drop reason, or answered as a handshake message, never two of these; a sealed
//! packet from inside A's subnet, untouched, arrives as the same bytes; a spoofed,
//! flipped, forged or replayed one never arrives.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use overlayd::dataplane::batch::TxBatch;
use overlayd::dataplane::stats::DropReason;
use overlayd::dataplane::wg::key::KeyPair;
use overlayd::dataplane::wg::path::{Arena, Opened, Opener, Sealer};
use overlayd::dataplane::wg::tunnels::{TunnelTable, Tunnels};
use overlayd::dataplane::wire::MacAddr;
use overlayd::dataplane::{Fib, Peer, PeerOrigin, PeerState, Stats, HEADROOM};

/// A's WireGuard endpoint.
pub const A: &str = "198.18.0.1:51820";
/// B's WireGuard endpoint.
pub const B: &str = "198.18.0.2:51820";
const STRANGER: &str = "198.18.0.77:51820";

/// One node's tunnels to the other and its packet cores (also the benchmark's,
/// `benches/wg.rs`).
pub struct Node {
    /// Its tunnel to the other node.
    pub tunnels: Arc<Tunnels>,
    /// Its outbound core.
    pub sealer: Sealer,
    /// Its inbound core.
    pub opener: Opener,
    stats: Arc<Stats>,
    _table: TunnelTable,
}

/// What one datagram did at B.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered(Vec<u8>),
    Dropped(DropReason),
    Answered,
    Nothing,
}

fn node(pair: KeyPair, peer_subnet: &str, peer_addr: &str, peer_key: [u8; 32]) -> Node {
    let peer = Peer {
        name: "peer".into(),
        subnet: peer_subnet.parse().unwrap(),
        underlay: peer_addr.parse().unwrap(),
        vtep_mac: MacAddr([0; 6]),
        state: PeerState::Alive,
        origin: PeerOrigin::Gossip,
        subnet_v6: None,
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
        opener: Opener::new(stats.clone()),
        stats,
        _table: table,
    }
}

impl Node {
    /// Seals IP packet `packet`; the datagrams to send.
    fn seal(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; HEADROOM + packet.len()];
        buf[HEADROOM..].copy_from_slice(packet);
        let Ok(idx) = self.sealer.route(&self.tunnels, &buf, packet.len()) else {
            return Vec::new();
        };
        let peer = self.tunnels.peer(idx).unwrap().clone();
        let mut arena = Arena::new(4, 1500);
        let mut batch = TxBatch::new(0);
        let mut tunn = peer.lock();
        let _ = self.sealer.seal(
            &peer,
            &mut tunn,
            &mut buf,
            packet.len(),
            &mut arena,
            &mut batch,
        );
        batch
            .datagrams()
            .iter()
            .map(|d| arena.get(d.buf, d.len()).to_vec())
            .collect()
    }

    /// What the worker does with one datagram; what it sends back goes to `replies`.
    fn receive(&mut self, from: SocketAddr, msg: &[u8], replies: &mut Vec<Vec<u8>>) -> Outcome {
        let before = self.counts();
        let mut out = vec![0u8; 65_600];
        let mut sent = false;
        match Opener::data_peer(&self.tunnels, msg) {
            Some(idx) => {
                let peer = self.tunnels.peer(idx).unwrap().clone();
                let mut tunn = peer.lock();
                let r = self.opener.open_data(
                    &self.tunnels,
                    idx,
                    &peer,
                    &mut tunn,
                    from,
                    msg,
                    &mut out,
                );
                match r {
                    Ok(Opened::Inner(len)) => {
                        let after = self.counts();
                        assert_eq!(after.0, before.0 + 1, "delivered counts as received");
                        assert_eq!(after.1, before.1, "and not as dropped");
                        return Outcome::Delivered(out[..len].to_vec());
                    }
                    Ok(Opened::Send { len, .. }) => {
                        replies.push(out[..len].to_vec());
                        sent = true;
                    }
                    _ => {}
                }
            }
            None => self
                .opener
                .open_control(&self.tunnels, from, msg, &mut out, &mut |_, m| {
                    replies.push(m.to_vec());
                    sent = true;
                }),
        }
        let after = self.counts();
        assert_eq!(
            after.0, before.0,
            "nothing delivered is counted as received"
        );
        let dropped: Vec<DropReason> = DropReason::ALL
            .iter()
            .copied()
            .filter(|r| after.2[*r as usize] != before.2[*r as usize])
            .collect();
        assert!(dropped.len() <= 1, "counted under one reason: {dropped:?}");
        for r in &dropped {
            assert_eq!(
                after.2[*r as usize],
                before.2[*r as usize] + 1,
                "counted once"
            );
        }
        match (dropped.first(), sent) {
            (Some(r), _) => Outcome::Dropped(*r),
            (None, true) => Outcome::Answered,
            (None, false) => Outcome::Nothing,
        }
    }

    fn counts(&self) -> (u64, u64, Vec<u64>) {
        let rx = self.stats.rx.forwarded.get().0;
        let drops: Vec<u64> = DropReason::ALL
            .iter()
            .map(|r| self.stats.rx.drops(*r))
            .collect();
        (rx, drops.iter().sum(), drops)
    }
}

/// A's private key. The static keys are fixed (the session keys are not), so a
/// committed raw handshake message to B passes MAC1 and reaches the key lookup
/// and the tunnel, as a real one does.
pub const A_SECRET: [u8; 32] = [0xa1; 32];
/// B's private key.
pub const B_SECRET: [u8; 32] = [0xb2; 32];

/// Node A (198.18.0.1, 10.244.1.0/24) and node B (198.18.0.2, 10.244.2.0/24).
pub struct Pair {
    /// A.
    pub a: Node,
    /// B.
    pub b: Node,
}

impl Pair {
    /// A and B after a handshake, A → B carrying one packet.
    pub fn new() -> Pair {
        let (ka, kb) = (
            KeyPair::from_secret(A_SECRET),
            KeyPair::from_secret(B_SECRET),
        );
        let mut a = node(ka.clone(), "10.244.2.0/24", B, kb.public_bytes());
        let mut b = node(kb, "10.244.1.0/24", A, ka.public_bytes());
        let mut to_b = a.seal(&ipv4_udp([10, 244, 1, 2], b"hello"));
        for _ in 0..5 {
            let mut to_a = Vec::new();
            for m in to_b.drain(..) {
                b.receive(A.parse().unwrap(), &m, &mut to_a);
            }
            let mut back = Vec::new();
            for m in to_a {
                a.receive(B.parse().unwrap(), &m, &mut back);
            }
            to_b = back;
        }
        Pair { a, b }
    }
}

thread_local! {
    static PAIR: RefCell<Pair> = RefCell::new(Pair::new());
}

/// An IPv4/UDP packet from `src` to 10.244.2.9 carrying `payload` (at most 1400
/// bytes of it), with a valid header checksum.
pub fn ipv4_udp(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1400)];
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 244, 2, 9]);
    overlayd::dataplane::wire::checksum::ipv4_header(&mut p, 20);
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// `wg_open`: see the module docs.
pub fn wg_open(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    PAIR.with(|pair| {
        let p = &mut *pair.borrow_mut();
        let a_addr: SocketAddr = A.parse().unwrap();
        let mut replies = Vec::new();
        match ctl & 3 {
            0 => {
                let from = if ctl & 4 == 0 {
                    a_addr
                } else {
                    STRANGER.parse().unwrap()
                };
                let outcome = p.b.receive(from, rest, &mut replies);
                // Raw bytes never carry a packet of A's: no session key is known.
                assert!(!matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
            }
            mode => {
                let spoofed = ctl & 4 != 0;
                let src = if spoofed {
                    [10, 244, 2, 66]
                } else {
                    [10, 244, 1, 2]
                };
                let packet = ipv4_udp(src, rest);
                for mut msg in p.a.seal(&packet) {
                    let tampered = match mode {
                        1 if ctl & 8 != 0 && !msg.is_empty() => {
                            let i = usize::from(rest.first().copied().unwrap_or(0)) % msg.len();
                            msg[i] ^= 0x5a;
                            true
                        }
                        3 if msg.len() > 16 && !rest.is_empty() => {
                            let tail = &mut msg[16..];
                            let n = tail.len().min(rest.len());
                            let changed = tail[..n] != rest[..n];
                            tail[..n].copy_from_slice(&rest[..n]);
                            changed
                        }
                        _ => false,
                    };
                    let outcome = p.b.receive(a_addr, &msg, &mut replies);
                    if msg.first() != Some(&4) {
                        continue;
                    }
                    match (&outcome, spoofed, tampered) {
                        (Outcome::Delivered(got), false, false) => assert_eq!(got, &packet),
                        (Outcome::Delivered(_), _, _) => {
                            panic!("a spoofed or tampered packet arrived: {outcome:?}")
                        }
                        (_, false, false) => panic!("a genuine packet was lost: {outcome:?}"),
                        (Outcome::Dropped(_), _, _) => {}
                        (o, _, _) => {
                            panic!("a bad packet was neither dropped nor delivered: {o:?}")
                        }
                    }
                    if mode == 2 {
                        let again = p.b.receive(a_addr, &msg, &mut replies);
                        assert_eq!(again, Outcome::Dropped(DropReason::Replay));
                    }
                }
            }
        }
        // Whatever B answered, A takes without panicking.
        let mut back = Vec::new();
        for r in replies {
            p.a.receive("198.18.0.2:51820".parse().unwrap(), &r, &mut back);
        }
    });
}
