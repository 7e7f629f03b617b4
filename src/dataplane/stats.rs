//! Dataplane counters: packets, bytes and drops by reason, each direction on its own
//! cache line.
//!
//! Each worker has its own [`Stats`], whose counters are relaxed atomics with exactly
//! one writer (that worker), so an increment is a plain load and store, not a locked
//! read-modify-write. [`NodeStats`] holds every worker's and sums them when `status`
//! and metrics read, without ordering. Per-peer counters ([`PeerStats`]) are shared
//! by the workers, so they are added with `fetch_add`, once per packet or TSO
//! super-packet.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

/// Why the dataplane dropped a packet. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Outbound: no peer owns the destination address.
    UnknownSubnet,
    /// Outbound: the peer that owns the destination is declared dead.
    PeerDead,
    /// Outbound: the TUN gave a packet that is not well-formed IPv4/IPv6.
    MalformedOutbound,
    /// Inbound: the datagram is shorter than VXLAN + Ethernet headers.
    ShortDatagram,
    /// Inbound: VXLAN flags other than the I flag alone.
    BadFlags,
    /// Inbound: a VNI other than ours.
    BadVni,
    /// Inbound: the sender's address is not a known peer.
    UnknownSender,
    /// Inbound: the sender is a peer declared dead (it must rejoin first).
    DeadSender,
    /// Inbound: the inner destination MAC is not our VTEP MAC.
    WrongDstMac,
    /// Inbound: the inner frame is not IPv4 or IPv6 (ARP, VLAN, ...).
    NotIp,
    /// Inbound: the inner IP header is malformed or its length lies.
    MalformedInner,
    /// Inbound: the inner source address is outside the sending peer's subnet.
    SpoofedSource,
    /// Either way: the kernel refused the send or the TUN write.
    IoError,
    /// Inbound, encrypted: a data message whose authentication tag does not verify
    /// (forged, corrupted, or sealed with another key).
    BadTag,
    /// Inbound, encrypted: a data message whose counter was seen before or is too old
    /// for the replay window.
    Replay,
    /// Inbound, encrypted: a handshake from a key that is no peer's.
    UnknownKey,
    /// Inbound, encrypted: a data message for no session we hold (expired, or from
    /// before a restart or a key rotation).
    NoSession,
    /// Inbound, encrypted: a handshake message that fails its MAC, timestamp or
    /// rate limit, or is malformed.
    BadHandshake,
    /// Inbound, encrypted: a datagram that is no WireGuard message.
    NotWireguard,
    /// Outbound, encrypted: a packet for a peer with no session while
    /// [`crate::dataplane::wg::tunnels::HANDSHAKE_QUEUE`] packets already wait for
    /// the handshake.
    HandshakeQueueFull,
    /// Outbound, encrypted: packets that waited for a handshake that never completed
    /// (WireGuard gives up after 90 s).
    NoHandshake,
}

impl DropReason {
    /// Every reason, in a fixed order (the index of each counter).
    pub const ALL: [DropReason; 21] = [
        DropReason::UnknownSubnet,
        DropReason::PeerDead,
        DropReason::MalformedOutbound,
        DropReason::ShortDatagram,
        DropReason::BadFlags,
        DropReason::BadVni,
        DropReason::UnknownSender,
        DropReason::DeadSender,
        DropReason::WrongDstMac,
        DropReason::NotIp,
        DropReason::MalformedInner,
        DropReason::SpoofedSource,
        DropReason::IoError,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::UnknownKey,
        DropReason::NoSession,
        DropReason::BadHandshake,
        DropReason::NotWireguard,
        DropReason::HandshakeQueueFull,
        DropReason::NoHandshake,
    ];

    /// The reason's stable name, as status and metrics print it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSubnet => "unknown_subnet",
            DropReason::PeerDead => "peer_dead",
            DropReason::MalformedOutbound => "malformed_outbound",
            DropReason::ShortDatagram => "short_datagram",
            DropReason::BadFlags => "bad_flags",
            DropReason::BadVni => "bad_vni",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::DeadSender => "dead_sender",
            DropReason::WrongDstMac => "wrong_dst_mac",
            DropReason::NotIp => "not_ip",
            DropReason::MalformedInner => "malformed_inner",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::IoError => "io_error",
            DropReason::BadTag => "bad_tag",
            DropReason::Replay => "replay",
            DropReason::UnknownKey => "unknown_key",
            DropReason::NoSession => "no_session",
            DropReason::BadHandshake => "bad_handshake",
            DropReason::NotWireguard => "not_wireguard",
            DropReason::HandshakeQueueFull => "handshake_queue_full",
            DropReason::NoHandshake => "no_handshake",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Adds `n` to a counter that only the calling worker writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Packets and bytes one way, padded to a cache line. Written by one worker when
/// part of [`Stats`] (`add`), by any (`add_shared`) when part of [`PeerStats`].
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Flow {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Flow {
    /// Counts one packet of `bytes` bytes (single writer).
    #[inline]
    pub(crate) fn add(&self, bytes: usize) {
        bump(&self.packets, 1);
        bump(&self.bytes, bytes as u64);
    }

    /// Counts `packets` packets of `bytes` bytes in all (single writer).
    #[inline]
    pub(crate) fn add_many(&self, packets: u64, bytes: u64) {
        bump(&self.packets, packets);
        bump(&self.bytes, bytes);
    }

    /// Counts `packets` packets of `bytes` bytes in all; safe with several writers.
    #[inline]
    pub(crate) fn add_shared(&self, packets: u64, bytes: usize) {
        self.packets.fetch_add(packets, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Sets the counts to totals read elsewhere (the kernel dataplane copies the
    /// kernel's counters here; it is their one writer).
    pub(crate) fn set(&self, packets: u64, bytes: u64) {
        self.packets.store(packets, Relaxed);
        self.bytes.store(bytes, Relaxed);
    }

    /// (packets, bytes) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.packets.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Upper bounds of the batch-size histogram buckets (packets per wake-up).
pub const BATCH_BUCKETS: [u64; 5] = [1, 4, 16, 64, 256];

/// Counters of one direction: forwarded traffic, drops by reason, batch sizes.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct DirectionStats {
    /// Packets forwarded (inner IP bytes).
    pub forwarded: Flow,
    drops: [AtomicU64; DropReason::ALL.len()],
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len()],
    batch_count: AtomicU64,
    batch_sum: AtomicU64,
}

impl DirectionStats {
    /// Records that one wake-up handled `packets` packets.
    #[inline]
    pub(crate) fn record_batch(&self, packets: usize) {
        let n = packets as u64;
        if let Some(i) = BATCH_BUCKETS.iter().position(|b| n <= *b) {
            bump(&self.batch_buckets[i], 1);
        }
        bump(&self.batch_count, 1);
        bump(&self.batch_sum, n);
    }

    /// Counts one drop.
    #[inline]
    pub(crate) fn drop(&self, reason: DropReason) {
        bump(&self.drops[reason.index()], 1);
    }

    /// Counts `n` drops.
    #[inline]
    pub(crate) fn drop_many(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason.index()], n);
    }

    /// Sets the drops of `reason` to a total the kernel counted (kernel dataplane).
    pub fn set_drops(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].store(n, Relaxed);
    }

    /// Drops so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Relaxed)
    }
}

/// The dataplane counters of one worker.
#[derive(Debug, Default)]
pub struct Stats {
    /// TUN to peers.
    pub tx: DirectionStats,
    /// Peers to TUN.
    pub rx: DirectionStats,
}

/// Counters of one peer: traffic each way, written by every worker
/// ([`Flow::add_shared`]).
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Inner bytes sent to the peer.
    pub tx: Flow,
    /// Inner bytes received from the peer and written to the TUN.
    pub rx: Flow,
    /// Packets for the peer dropped on the way out (it is dead).
    pub tx_dropped: Flow,
    /// Datagrams from the peer dropped after it was identified (wrong MAC, not IP,
    /// malformed inner packet, spoofed source).
    pub rx_dropped: Flow,
    /// WireGuard state and decrypt failures (encrypted dataplane only).
    pub wg: WgPeerStats,
}

/// A peer's WireGuard session as the encrypted dataplane last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WgSession {
    /// No session and no handshake under way.
    None,
    /// A handshake initiation is out, no session yet.
    Handshaking,
    /// A session is established.
    Established,
}

impl WgSession {
    /// The state's stable name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WgSession::None => "none",
            WgSession::Handshaking => "handshaking",
            WgSession::Established => "established",
        }
    }
}

/// A peer's WireGuard counters: written by the workers (failures) and the timer
/// thread (state), read by status and metrics.
#[derive(Debug, Default)]
pub struct WgPeerStats {
    /// 0 none, 1 handshaking, 2 established.
    session: AtomicU64,
    /// Milliseconds since the session's handshake; `u64::MAX`: none.
    handshake_age_ms: AtomicU64,
    /// Handshake initiations sent since the last session was established.
    initiations: AtomicU64,
    /// Data messages whose tag did not verify.
    pub(crate) bad_tag: AtomicU64,
    /// Data messages replayed or too old.
    pub(crate) replay: AtomicU64,
    /// Handshakes from the peer's address with a key that is not the peer's.
    pub(crate) unknown_key: AtomicU64,
    /// Data messages for no session we hold.
    pub(crate) no_session: AtomicU64,
    /// Handshake messages refused (MAC, timestamp, rate limit, malformed).
    pub bad_handshake: AtomicU64,
}

/// A copy of [`WgPeerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WgPeerSnapshot {
    /// The session state.
    pub session: String,
    /// Milliseconds since the session's handshake, if there is a session.
    pub handshake_age_ms: Option<u64>,
    /// Initiations sent since the last session was established.
    pub initiations: u64,
    /// Decrypt and handshake failures by reason, zero counts left out.
    pub failures: std::collections::BTreeMap<String, u64>,
}

impl WgPeerStats {
    /// Records the session state and its handshake's age (the timer thread).
    pub(crate) fn set_session(&self, session: WgSession, age: Option<std::time::Duration>) {
        let code = match session {
            WgSession::None => 0,
            WgSession::Handshaking => 1,
            WgSession::Established => 2,
        };
        self.session.store(code, Relaxed);
        let ms = age.map_or(u64::MAX, |a| a.as_millis().min(u64::MAX as u128 - 1) as u64);
        self.handshake_age_ms.store(ms, Relaxed);
        if session == WgSession::Established {
            self.initiations.store(0, Relaxed);
        }
    }

    /// Initiations sent since the last session was established.
    pub(crate) fn initiations(&self) -> u64 {
        self.initiations.load(Relaxed)
    }

    /// Counts a handshake initiation sent.
    pub(crate) fn initiation_sent(&self) {
        self.initiations.fetch_add(1, Relaxed);
    }

    /// Counts a failure of `reason` (one of the encrypted reasons).
    pub(crate) fn fail(&self, reason: DropReason) {
        let c = match reason {
            DropReason::BadTag => &self.bad_tag,
            DropReason::Replay => &self.replay,
            DropReason::UnknownKey => &self.unknown_key,
            DropReason::NoSession => &self.no_session,
            _ => &self.bad_handshake,
        };
        c.fetch_add(1, Relaxed);
    }

    /// The session state.
    pub(crate) fn session(&self) -> WgSession {
        match self.session.load(Relaxed) {
            2 => WgSession::Established,
            1 => WgSession::Handshaking,
            _ => WgSession::None,
        }
    }

    /// A copy for status and metrics.
    pub(crate) fn snapshot(&self) -> WgPeerSnapshot {
        let age = self.handshake_age_ms.load(Relaxed);
        let failures = [
            ("bad_tag", &self.bad_tag),
            ("replay", &self.replay),
            ("unknown_key", &self.unknown_key),
            ("no_session", &self.no_session),
            ("bad_handshake", &self.bad_handshake),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Relaxed)))
        .filter(|(_, v)| *v > 0)
        .collect();
        WgPeerSnapshot {
            session: self.session().as_str().into(),
            handshake_age_ms: (age != u64::MAX).then_some(age),
            initiations: self.initiations.load(Relaxed),
            failures,
        }
    }
}

/// A point-in-time copy of [`Stats`], for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Packets sent to peers.
    pub tx_packets: u64,
    /// Inner bytes sent to peers.
    pub tx_bytes: u64,
    /// Packets received from peers and written to the TUN.
    pub rx_packets: u64,
    /// Inner bytes received from peers.
    pub rx_bytes: u64,
    /// Drops by reason name, both directions, zero counts left out.
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Copies the counters.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let (mut tx, mut rx) = (DirectionTotals::default(), DirectionTotals::default());
        tx.add(&self.tx);
        rx.add(&self.rx);
        StatsSnapshot::of(&tx, &rx)
    }
}

/// One direction's counters summed over every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DirectionTotals {
    /// (packets, bytes) forwarded.
    pub(crate) forwarded: (u64, u64),
    drops: [u64; DropReason::ALL.len()],
    batch_buckets: [u64; BATCH_BUCKETS.len()],
    batch_count: u64,
    batch_sum: u64,
}

impl DirectionTotals {
    fn add(&mut self, d: &DirectionStats) {
        let (p, b) = d.forwarded.get();
        self.forwarded.0 += p;
        self.forwarded.1 += b;
        for (t, c) in self.drops.iter_mut().zip(&d.drops) {
            *t += c.load(Relaxed);
        }
        for (t, c) in self.batch_buckets.iter_mut().zip(&d.batch_buckets) {
            *t += c.load(Relaxed);
        }
        self.batch_count += d.batch_count.load(Relaxed);
        self.batch_sum += d.batch_sum.load(Relaxed);
    }

    /// Drops so far for `reason`.
    pub(crate) fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Batch-size histogram: (sum, count, cumulative counts per bucket of [`BATCH_BUCKETS`]).
    pub(crate) fn batches(&self) -> (u64, u64, [u64; BATCH_BUCKETS.len()]) {
        let mut cumulative = self.batch_buckets;
        for i in 1..cumulative.len() {
            cumulative[i] += cumulative[i - 1];
        }
        (self.batch_sum, self.batch_count, cumulative)
    }
}

/// The counters of every worker of a node, summed when read.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    workers: Vec<Arc<Stats>>,
}

impl NodeStats {
    /// Counters for `workers` workers, all zero.
    pub(crate) fn new(workers: usize) -> NodeStats {
        NodeStats {
            workers: (0..workers.max(1)).map(|_| Arc::default()).collect(),
        }
    }

    /// The counters of worker `i` (its only writer); `i` wraps around.
    pub(crate) fn worker(&self, i: usize) -> Arc<Stats> {
        self.workers[i % self.workers.len()].clone()
    }

    /// Outbound totals (TUN to peers).
    pub(crate) fn tx(&self) -> DirectionTotals {
        let mut t = DirectionTotals::default();
        self.workers.iter().for_each(|w| t.add(&w.tx));
        t
    }

    /// Inbound totals (peers to TUN).
    pub(crate) fn rx(&self) -> DirectionTotals {
        let mut t = DirectionTotals::default();
        self.workers.iter().for_each(|w| t.add(&w.rx));
        t
    }

    /// Copies the summed counters.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot::of(&self.tx(), &self.rx())
    }
}

impl StatsSnapshot {
    fn of(tx: &DirectionTotals, rx: &DirectionTotals) -> StatsSnapshot {
        let drops = DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), tx.drops(*r) + rx.drops(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        StatsSnapshot {
            tx_packets: tx.forwarded.0,
            tx_bytes: tx.forwarded.1,
            rx_packets: rx.forwarded.0,
            rx_bytes: rx.forwarded.1,
            drops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_counter() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let stats = Stats::default();
        stats.rx.drop(DropReason::BadVni);
        stats.rx.drop(DropReason::BadVni);
        stats.tx.drop(DropReason::UnknownSubnet);
        let snap = stats.snapshot();
        assert_eq!(snap.drops.get("bad_vni"), Some(&2));
        assert_eq!(snap.drops.get("unknown_subnet"), Some(&1));
        assert_eq!(snap.drops.len(), 2);
    }

    #[test]
    fn node_stats_sum_every_worker() {
        let node = NodeStats::new(3);
        node.worker(0).tx.forwarded.add(100);
        node.worker(2).tx.forwarded.add(50);
        node.worker(1).rx.drop(DropReason::BadVni);
        node.worker(2).rx.drop(DropReason::BadVni);
        node.worker(0).rx.record_batch(3);
        node.worker(1).rx.record_batch(20);
        let snap = node.snapshot();
        assert_eq!((snap.tx_packets, snap.tx_bytes), (2, 150));
        assert_eq!(snap.drops.get("bad_vni"), Some(&2));
        assert_eq!(node.rx().batches(), (23, 2, [0, 1, 1, 2, 2]));
        let peer = PeerStats::default();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| (0..1000).for_each(|_| peer.tx.add_shared(1, 10)));
            }
        });
        assert_eq!(peer.tx.get(), (2000, 20000));
    }
}
