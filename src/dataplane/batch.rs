//! The transmit batch: outbound VXLAN datagrams collected from several TUN reads,
//! and their grouping into runs that one `sendmsg` with UDP GSO can carry.
//!
//! A datagram is either written in place in its packet buffer (the VXLAN and inner
//! Ethernet headers in the headroom in front of an IP packet) or split across a
//! header slot of the batch's preallocated arena and a payload range of a packet
//! buffer (a TSO segment), so no payload byte is copied. [`TxBatch::groups`] cuts the
//! batch into GSO runs by destination, source port and size. Sans-IO: the driver
//! owns the packet buffers and the sockets, and sends the groups.

use std::net::SocketAddr;
use std::ops::Range;

use super::flow::source_index;

/// Where a datagram's first part lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// In the packet buffer itself, headers written in place in front of the packet.
    InPlace,
    /// In slot `n` of the [`TxBatch`] header arena.
    Slot(u32),
}

/// One VXLAN datagram of a [`TxBatch`]: `head` bytes, then `body` bytes of packet
/// buffer `buf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxDatagram {
    /// The peer's underlay address and port.
    pub dst: SocketAddr,
    /// The inner flow's hash ([`super::flow::flow_hash`]): picks the source port.
    pub flow: u32,
    /// The packet buffer (the driver's index) holding the payload.
    pub buf: u32,
    /// Where the first part is.
    pub head: Head,
    /// With [`Head::InPlace`], the whole datagram in `buf`; with [`Head::Slot`], the
    /// length of the slot's bytes is `head_len` and this is the payload in `buf`.
    pub body: Range<u32>,
    /// Bytes of the first part in the slot (0 for [`Head::InPlace`]).
    pub head_len: u16,
}

impl TxDatagram {
    /// Total datagram length.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + (self.body.end - self.body.start) as usize
    }

    /// Whether the datagram is empty (never, for a pushed datagram).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes per header slot: VXLAN + Ethernet (22) + IP (up to 60) + TCP (up to 60).
pub const SLOT_LEN: usize = 160;

/// Outbound datagrams collected from several TUN reads, to be sent in as few
/// syscalls as possible. Preallocated; [`TxBatch::clear`] empties it for reuse.
#[derive(Debug)]
pub struct TxBatch {
    slots: Box<[u8]>,
    used_slots: usize,
    datagrams: Vec<TxDatagram>,
}

/// Where a datagram goes: the peer, and the inner flow whose hash picks the outer
/// source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxDest {
    /// The peer's underlay address and port.
    pub addr: SocketAddr,
    /// The inner flow's hash ([`super::flow::flow_hash`]).
    pub flow: u32,
}

/// A run of datagrams that one GSO send can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxGroup {
    /// Where they go.
    pub dst: SocketAddr,
    /// Which of the sender's source ports they leave from
    /// ([`super::flow::source_index`] of their flow).
    pub source: usize,
    /// Size of every datagram but the last, which may be shorter.
    pub segment_size: usize,
    /// Indices into [`TxBatch::datagrams`].
    pub range: Range<usize>,
}

/// Most datagrams per GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older
/// kernels, 128 on newer ones).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most UDP payload bytes per GSO send (65535 less IPv6 and UDP headers).
pub const MAX_GSO_BYTES: usize = 65_535 - 40 - 8;

impl TxBatch {
    /// A batch with room for `slots` segmented datagrams.
    pub fn new(slots: usize) -> TxBatch {
        TxBatch {
            slots: vec![0u8; slots * SLOT_LEN].into_boxed_slice(),
            used_slots: 0,
            datagrams: Vec::with_capacity(slots.max(64)),
        }
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.used_slots = 0;
        self.datagrams.clear();
    }

    /// Header slots still free.
    pub fn free_slots(&self) -> usize {
        self.slots.len() / SLOT_LEN - self.used_slots
    }

    /// The datagrams, in the order they were pushed.
    pub fn datagrams(&self) -> &[TxDatagram] {
        &self.datagrams
    }

    /// The bytes of header slot `n`, `len` long.
    pub fn slot(&self, n: u32, len: u16) -> &[u8] {
        let start = n as usize * SLOT_LEN;
        &self.slots[start..start + usize::from(len)]
    }

    pub(crate) fn push_in_place(&mut self, dst: TxDest, buf: u32, len: usize) {
        self.datagrams.push(TxDatagram {
            dst: dst.addr,
            flow: dst.flow,
            buf,
            head: Head::InPlace,
            body: 0..len as u32,
            head_len: 0,
        });
    }

    /// Takes a free slot, or `None` when the arena is full.
    pub(crate) fn take_slot(&mut self) -> Option<(u32, &mut [u8])> {
        if self.free_slots() == 0 {
            return None;
        }
        let n = self.used_slots;
        self.used_slots += 1;
        Some((n as u32, &mut self.slots[n * SLOT_LEN..(n + 1) * SLOT_LEN]))
    }

    pub(crate) fn push_slot(
        &mut self,
        dst: TxDest,
        buf: u32,
        slot: u32,
        head_len: usize,
        body: Range<usize>,
    ) {
        self.datagrams.push(TxDatagram {
            dst: dst.addr,
            flow: dst.flow,
            buf,
            head: Head::Slot(slot),
            body: body.start as u32..body.end as u32,
            head_len: head_len as u16,
        });
    }

    /// Cuts the batch into GSO runs: consecutive datagrams to one destination from
    /// one of `sources` source ports, all of one size but the last (which may be
    /// shorter and ends the run), at most `max_segments` of them and
    /// [`MAX_GSO_BYTES`] in all. With `max_segments == 1` every datagram is its own
    /// group.
    pub fn groups(
        &self,
        max_segments: usize,
        sources: usize,
    ) -> impl Iterator<Item = TxGroup> + '_ {
        let max_segments = max_segments.clamp(1, MAX_GSO_SEGMENTS);
        let sources = sources.max(1);
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = self.datagrams.get(i)?;
            let size = first.len();
            let source = source_index(first.flow, sources);
            let start = i;
            let mut bytes = size;
            i += 1;
            while i < self.datagrams.len() && i - start < max_segments {
                let d = &self.datagrams[i];
                let len = d.len();
                if d.dst != first.dst
                    || (d.flow != first.flow && source_index(d.flow, sources) != source)
                    || len > size
                    || bytes + len > MAX_GSO_BYTES
                {
                    break;
                }
                bytes += len;
                i += 1;
                if len < size {
                    break;
                }
            }
            Some(TxGroup {
                dst: first.dst,
                source,
                segment_size: size,
                range: start..i,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_on_destination_source_size_and_limits() {
        let a: SocketAddr = "198.18.0.2:4789".parse().unwrap();
        let b: SocketAddr = "198.18.0.3:4789".parse().unwrap();
        let to = |addr, flow| TxDest { addr, flow };
        let mut batch = TxBatch::new(4);
        for (dst, len) in [(a, 100), (a, 100), (a, 60), (a, 100), (b, 100), (b, 100)] {
            batch.push_in_place(to(dst, 0), 0, len);
        }
        let g: Vec<_> = batch
            .groups(64, 4)
            .map(|g| (g.dst, g.segment_size, g.range))
            .collect();
        assert_eq!(g, vec![(a, 100, 0..3), (a, 100, 3..4), (b, 100, 4..6)]);
        assert_eq!(batch.groups(1, 4).count(), 6);
        batch.clear();
        for _ in 0..50 {
            batch.push_in_place(to(a, 0), 0, 1472);
        }
        let sizes: Vec<_> = batch.groups(64, 4).map(|g| g.range.len()).collect();
        assert_eq!(sizes, vec![44, 6]);
        // Flows on different source ports split a run; flows sharing one do not.
        batch.clear();
        let (low, high, low2) = (0x1000_0000, 0xf000_0000, 0x2000_0000);
        for flow in [low, low2, high, high] {
            batch.push_in_place(to(a, flow), 0, 100);
        }
        let g: Vec<_> = batch.groups(64, 4).map(|g| (g.source, g.range)).collect();
        assert_eq!(g, vec![(0, 0..2), (3, 2..4)]);
        assert_eq!(batch.groups(64, 1).count(), 1);
    }
}
