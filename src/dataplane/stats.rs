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
}

impl DropReason {
    /// Every reason, in a fixed order (the index of each counter).
    pub const ALL: [DropReason; 13] = [
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
    ];

    /// The reason's stable name, as status and metrics print it.
    pub fn as_str(self) -> &'static str {
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
    pub fn add(&self, bytes: usize) {
        bump(&self.packets, 1);
        bump(&self.bytes, bytes as u64);
    }

    /// Counts `packets` packets of `bytes` bytes in all; safe with several writers.
    #[inline]
    pub fn add_shared(&self, packets: u64, bytes: usize) {
        self.packets.fetch_add(packets, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Sets the counts to totals read elsewhere (the kernel dataplane copies the
    /// kernel's counters here; it is their one writer).
    pub fn set(&self, packets: u64, bytes: u64) {
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
    pub fn record_batch(&self, packets: usize) {
        let n = packets as u64;
        if let Some(i) = BATCH_BUCKETS.iter().position(|b| n <= *b) {
            bump(&self.batch_buckets[i], 1);
        }
        bump(&self.batch_count, 1);
        bump(&self.batch_sum, n);
    }

    /// Batch-size histogram: (sum, count, cumulative counts per bucket of [`BATCH_BUCKETS`]).
    pub fn batches(&self) -> (u64, u64, [u64; BATCH_BUCKETS.len()]) {
        let mut cumulative = [0u64; BATCH_BUCKETS.len()];
        let mut acc = 0;
        for (i, b) in self.batch_buckets.iter().enumerate() {
            acc += b.load(Relaxed);
            cumulative[i] = acc;
        }
        (
            self.batch_sum.load(Relaxed),
            self.batch_count.load(Relaxed),
            cumulative,
        )
    }

    /// Counts one drop.
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        bump(&self.drops[reason.index()], 1);
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
    pub fn snapshot(&self) -> StatsSnapshot {
        let (mut tx, mut rx) = (DirectionTotals::default(), DirectionTotals::default());
        tx.add(&self.tx);
        rx.add(&self.rx);
        StatsSnapshot::of(&tx, &rx)
    }
}

/// One direction's counters summed over every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionTotals {
    /// (packets, bytes) forwarded.
    pub forwarded: (u64, u64),
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
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Batch-size histogram: (sum, count, cumulative counts per bucket of [`BATCH_BUCKETS`]).
    pub fn batches(&self) -> (u64, u64, [u64; BATCH_BUCKETS.len()]) {
        let mut cumulative = self.batch_buckets;
        for i in 1..cumulative.len() {
            cumulative[i] += cumulative[i - 1];
        }
        (self.batch_sum, self.batch_count, cumulative)
    }
}

/// The counters of every worker of a node, summed when read.
#[derive(Debug, Default)]
pub struct NodeStats {
    workers: Vec<Arc<Stats>>,
}

impl NodeStats {
    /// Counters for `workers` workers, all zero.
    pub fn new(workers: usize) -> NodeStats {
        NodeStats {
            workers: (0..workers.max(1)).map(|_| Arc::default()).collect(),
        }
    }

    /// The counters of worker `i` (its only writer); `i` wraps around.
    pub fn worker(&self, i: usize) -> Arc<Stats> {
        self.workers[i % self.workers.len()].clone()
    }

    /// Outbound totals (TUN to peers).
    pub fn tx(&self) -> DirectionTotals {
        let mut t = DirectionTotals::default();
        self.workers.iter().for_each(|w| t.add(&w.tx));
        t
    }

    /// Inbound totals (peers to TUN).
    pub fn rx(&self) -> DirectionTotals {
        let mut t = DirectionTotals::default();
        self.workers.iter().for_each(|w| t.add(&w.rx));
        t
    }

    /// Copies the summed counters.
    pub fn snapshot(&self) -> StatsSnapshot {
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
