//! Segmentation and coalescing for a TUN with `IFF_VNET_HDR` offloads: the sans-IO
//! half of TSO in and GRO out of the TUN.
//!
//! - Outbound, the kernel hands us TCP (or UDP) super-packets up to 64 KiB behind a
//!   [`VnetHdr`]. [`Encapsulator::encapsulate_vnet`] splits them into MSS-sized inner
//!   packets, each with its own VXLAN and inner Ethernet header, into a [`TxBatch`]:
//!   headers go to a preallocated slot arena, payloads stay where they were read, so
//!   no payload byte is copied. [`TxBatch::groups`] then cuts the batch into runs that
//!   one `sendmsg` with UDP GSO can carry.
//! - Inbound, [`Coalescer`] merges consecutive in-order TCP segments of one flow
//!   (checksums verified first) into one super-packet description: a header in a slot
//!   followed by the payload ranges where they were received, for one `writev`. Where
//!   the TUN takes UDP segmentation offload (USO, Linux 6.2), consecutive datagrams
//!   of one UDP flow are merged the same way into one `VNET_GSO_UDP_L4` write, which
//!   the kernel splits back into the same datagrams.
//!
//! Nothing here touches an fd; the driver owns the buffers and passes them in. Packets
//! that cannot be segmented are counted drops; packets that cannot be coalesced are
//! passed through alone.
//!
//! [`Encapsulator::encapsulate_vnet`]: super::encap::Encapsulator::encapsulate_vnet

use std::net::SocketAddr;
use std::ops::Range;

use super::flow::source_index;

/// Length of the virtio-net header in front of every packet on an `IFF_VNET_HDR` TUN.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is partial and must be completed.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a super-packet.
pub const VNET_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const VNET_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP (USO), either IP version.
pub const VNET_GSO_UDP_L4: u8 = 5;
/// `gso_type` modifier: the TCP stream uses ECN.
pub const VNET_GSO_ECN: u8 = 0x80;

/// Largest number of inner segments one super-packet may produce (64 KiB at the
/// smallest MSS Linux allows, 48 bytes).
pub const MAX_SEGMENTS_PER_PACKET: usize = 1400;

/// The virtio-net header (`struct virtio_net_hdr`), in host byte order as the TUN
/// uses it on little- and big-endian hosts alike (legacy virtio).
///
/// ```text
///  0        1         2      4        6          8           10
/// +--------+---------+------+--------+----------+-----------+
/// | flags  |gso_type |hdr_len|gso_size|csum_start|csum_offset|
/// +--------+---------+------+--------+----------+-----------+
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`VNET_F_NEEDS_CSUM`] or 0.
    pub flags: u8,
    /// One of the `VNET_GSO_*` values.
    pub gso_type: u8,
    /// Length of the headers (IP + transport) of a super-packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed part starts (the transport header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header; `None` if `buf` is shorter than [`VNET_HDR_LEN`].
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into `buf[..VNET_HDR_LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`VNET_HDR_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Internet checksum ([RFC 1071]) helpers. Sums run over native-endian words, which
/// RFC 1071 allows; [`checksum::finish`] returns the value in the byte order that is
/// stored as is with `to_ne_bytes`.
///
/// [RFC 1071]: https://www.rfc-editor.org/rfc/rfc1071
pub mod checksum {
    /// Adds `data` to the running ones'-complement sum `acc`. Chunks must start at
    /// even offsets of the checksummed range (only the last one may be odd-sized).
    ///
    /// 32-bit words are added into eight independent 64-bit lanes, which cannot
    /// overflow for any packet and have no carry chain between them, so the loop
    /// runs several words per cycle (the compiler turns it into SIMD adds). Modulo
    /// 0xffff a 32-bit word is the sum of its two 16-bit halves, so the folded
    /// result is the RFC 1071 sum.
    #[inline]
    pub fn add(acc: u64, data: &[u8]) -> u64 {
        let word = |b: &[u8]| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        let mut lanes = [0u64; 8];
        let mut blocks = data.chunks_exact(32);
        for block in &mut blocks {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane += word(&block[4 * i..]);
            }
        }
        let mut total: u64 = lanes.iter().sum();
        let mut words = blocks.remainder().chunks_exact(4);
        for w in &mut words {
            total += word(w);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 4];
            last[..rest.len()].copy_from_slice(rest);
            total += word(&last);
        }
        let (s, carry) = acc.overflowing_add(total);
        s + u64::from(carry)
    }

    /// Folds a running sum to 16 bits (not complemented), as stored with `to_ne_bytes`.
    #[inline]
    pub fn fold(mut acc: u64) -> u16 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
        acc = (acc & 0xffff_ffff) + (acc >> 32);
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        acc as u16
    }

    /// The checksum field value for a sum over everything it covers (field zeroed).
    #[inline]
    pub fn finish(acc: u64) -> [u8; 2] {
        (!fold(acc)).to_ne_bytes()
    }

    /// The pseudo-header sum for TCP/UDP over `ip` (an IPv4 or IPv6 header) with
    /// transport protocol `proto` and transport length `len`.
    #[inline]
    pub fn pseudo(ip: &[u8], proto: u8, len: u32) -> u64 {
        if ip[0] >> 4 == 4 {
            let mut p = [0u8; 12];
            p[..8].copy_from_slice(&ip[12..20]);
            p[9] = proto;
            p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
            add(0, &p)
        } else {
            let mut p = [0u8; 40];
            p[..32].copy_from_slice(&ip[8..40]);
            p[32..36].copy_from_slice(&len.to_be_bytes());
            p[39] = proto;
            add(0, &p)
        }
    }

    /// Recomputes an IPv4 header checksum in place.
    #[inline]
    pub fn ipv4_header(ip: &mut [u8], ihl: usize) {
        ip[10] = 0;
        ip[11] = 0;
        let c = finish(add(0, &ip[..ihl]));
        ip[10..12].copy_from_slice(&c);
    }
}

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

/// Why a super-packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// The virtio header and the packet disagree, or the packet is not TCP/UDP.
    Malformed,
    /// The batch has too few free slots (flush, then retry).
    Full,
}

/// Splits the super-packet `packet` (IP header first) described by `hdr` into
/// segments. For each, it writes `prefix` (the VXLAN and Ethernet headers) and the
/// fixed-up IP and transport headers into a slot of `batch`, and pushes a datagram
/// whose payload is the segment's range of `packet` offset by `base` in buffer `buf`.
/// Checksums of the inner headers are computed here (the payload is read once, never
/// copied). Returns the number of datagrams pushed.
pub fn segment(
    hdr: &VnetHdr,
    packet: &[u8],
    prefix: &[u8],
    dst: TxDest,
    buf: u32,
    base: usize,
    batch: &mut TxBatch,
) -> Result<usize, SegmentError> {
    let is_v4 = packet.first().map(|b| b >> 4) == Some(4);
    let base_type = hdr.gso_type & !VNET_GSO_ECN;
    let ip_len = usize::from(hdr.csum_start);
    let (proto, l4_len) = match base_type {
        VNET_GSO_TCPV4 | VNET_GSO_TCPV6 => {
            let doff = packet.get(ip_len + 12).ok_or(SegmentError::Malformed)?;
            (6u8, usize::from(doff >> 4) * 4)
        }
        VNET_GSO_UDP_L4 => (17u8, 8),
        _ => return Err(SegmentError::Malformed),
    };
    let ok_type = match base_type {
        VNET_GSO_TCPV4 => is_v4,
        VNET_GSO_TCPV6 => !is_v4,
        _ => true,
    };
    let hdr_len = ip_len + l4_len;
    let min_ip = if is_v4 { 20 } else { 40 };
    let gso_size = usize::from(hdr.gso_size);
    if !ok_type
        || ip_len < min_ip
        || l4_len < if proto == 6 { 20 } else { 8 }
        || hdr_len > packet.len()
        || prefix.len() + hdr_len > SLOT_LEN
        || gso_size == 0
        || (is_v4 && (usize::from(packet[0] & 0x0f) * 4 != ip_len || packet[9] != proto))
        || (!is_v4 && (ip_len != 40 || packet[6] != proto))
    {
        return Err(SegmentError::Malformed);
    }
    let payload_len = packet.len() - hdr_len;
    let count = payload_len.div_ceil(gso_size).max(1);
    if count > batch.free_slots() {
        return Err(SegmentError::Full);
    }
    let (seq0, id0) = if proto == 6 {
        let s = &packet[ip_len + 4..ip_len + 8];
        (u32::from_be_bytes([s[0], s[1], s[2], s[3]]), 0)
    } else {
        (0, 0)
    };
    let id0 = if is_v4 {
        u16::from_be_bytes([packet[4], packet[5]])
    } else {
        id0
    };
    let headers = &packet[..hdr_len];
    for i in 0..count {
        let start = hdr_len + i * gso_size;
        let end = (start + gso_size).min(packet.len());
        let seg = &packet[start..end];
        let seg_len = seg.len();
        let Some((slot, out)) = batch.take_slot() else {
            return Err(SegmentError::Full);
        };
        out[..prefix.len()].copy_from_slice(prefix);
        let h = &mut out[prefix.len()..prefix.len() + hdr_len];
        h.copy_from_slice(headers);
        let (ip, l4) = h.split_at_mut(ip_len);
        if is_v4 {
            ip[2..4].copy_from_slice(&((hdr_len + seg_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            checksum::ipv4_header(ip, ip_len);
        } else {
            ip[4..6].copy_from_slice(&((l4_len + seg_len) as u16).to_be_bytes());
        }
        let l4_total = (l4_len + seg_len) as u32;
        if proto == 6 {
            let seq = seq0.wrapping_add((i * gso_size) as u32);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            // FIN and PSH only on the last segment, CWR only on the first.
            if i + 1 < count {
                l4[13] &= !(0x01 | 0x08);
            }
            if i > 0 {
                l4[13] &= !0x80;
            }
            l4[16] = 0;
            l4[17] = 0;
            let sum = checksum::add(checksum::pseudo(ip, 6, l4_total), l4);
            let c = checksum::finish(checksum::add(sum, seg));
            l4[16..18].copy_from_slice(&c);
        } else {
            l4[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            l4[6] = 0;
            l4[7] = 0;
            let sum = checksum::add(checksum::pseudo(ip, 17, l4_total), l4);
            let mut c = checksum::finish(checksum::add(sum, seg));
            if c == [0, 0] {
                c = [0xff, 0xff];
            }
            l4[6..8].copy_from_slice(&c);
        }
        batch.push_slot(
            dst,
            buf,
            slot,
            prefix.len() + hdr_len,
            base + start..base + end,
        );
    }
    Ok(count)
}

/// Completes a partial checksum (`VNET_F_NEEDS_CSUM` without GSO): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the sum from `csum_start`
/// to the end, complemented, replaces it. Returns false if the offsets lie.
pub fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> bool {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return false;
    }
    let mut c = checksum::finish(checksum::add(0, &packet[start..]));
    if c == [0, 0] {
        c = [0xff, 0xff];
    }
    packet[field..field + 2].copy_from_slice(&c);
    true
}

/// A payload piece of a coalesced packet: bytes `range` of receive buffer `buf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The driver's buffer index.
    pub buf: u32,
    /// Byte range in that buffer.
    pub range: Range<u32>,
}

/// What to write to the TUN for one item of a [`Coalescer`] batch.
#[derive(Debug, PartialEq, Eq)]
pub enum TunWrite<'a> {
    /// One packet, as received: the caller writes a zero [`VnetHdr`] just in front of
    /// `range` in buffer `buf` (the VXLAN header room) and writes from there.
    Single {
        /// Buffer index.
        buf: u32,
        /// The inner IP packet.
        range: Range<u32>,
    },
    /// A TCP super-packet: `head` (virtio header and IP/TCP headers) followed by the
    /// payload of every piece, in order; one vectored write.
    Coalesced {
        /// Virtio header and the merged IP/TCP headers.
        head: &'a [u8],
        /// The payloads.
        pieces: &'a [Piece],
    },
}

#[derive(Debug)]
struct GroItem {
    buf: u32,
    range: Range<u32>,
    /// Merge candidate: IP header length, TCP or UDP header length; 0 if not one.
    ip_len: u8,
    tcp_len: u8,
    v4: bool,
    udp: bool,
    open: bool,
    psh: bool,
    count: u16,
    gso_size: u16,
    payload: u32,
    next_seq: u32,
    pieces: Range<usize>,
    /// Offset of the item's head slot in `heads` (merge candidates only).
    slot: usize,
}

/// Head slot size of the coalescer: virtio header + IP (60) + TCP (60).
const GRO_SLOT: usize = VNET_HDR_LEN + 120;
/// Most segments merged into one super-packet.
pub const MAX_COALESCE: usize = 64;
/// How many recent items a packet is matched against.
const LOOKBACK: usize = 8;

/// Merges in-order TCP segments of a flow, received in one batch, into super-packets
/// for a TUN with `IFF_VNET_HDR` (GRO out of the TUN), and with USO consecutive UDP
/// datagrams of a flow too. Everything else, and every segment that does not
/// continue its flow exactly, is written alone, in order.
///
/// A segment is merged only when its TCP checksum verifies, its IP header has no
/// options or extension headers and is not a fragment, its flags are ACK (PSH on the
/// last one), its ack number, reserved bits and AE, window, options, IP TOS/TTL and
/// header lengths equal those of the first, its sequence number continues the run
/// and its payload is no longer than the first's (a shorter one ends the run). The
/// merged packet carries the first segment's header, so a field that may differ would
/// be lost: a window update or an AccECN AE bit in a later segment, for two (Linux GRO
/// compares these too). A UDP datagram is merged when its checksum verifies (or is
/// absent, IPv4), its IP header is as plain and its TOS/DF/TTL equal the first's, and
/// its payload is no longer than the first's (a shorter one ends the run): the kernel
/// rebuilds the same datagrams, with valid checksums and consecutive IPv4 IDs.
#[derive(Debug)]
pub struct Coalescer {
    enabled: bool,
    udp: bool,
    items: Vec<GroItem>,
    /// Payload pieces tagged with their item, in arrival order.
    pieces: Vec<(u32, Piece)>,
    /// The same, grouped by item by [`Coalescer::finish`].
    ordered: Vec<Piece>,
    heads: Vec<u8>,
}

impl Coalescer {
    /// A coalescer; with `enabled` false every packet is written alone, with `udp`
    /// false (a TUN without USO) only TCP segments are merged.
    pub fn new(enabled: bool, udp: bool) -> Coalescer {
        Coalescer {
            enabled,
            udp: enabled && udp,
            items: Vec::with_capacity(1024),
            pieces: Vec::with_capacity(4096),
            ordered: Vec::with_capacity(4096),
            heads: Vec::with_capacity(1024 * GRO_SLOT),
        }
    }

    /// Whether TCP segments are merged.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Starts a new batch.
    pub fn clear(&mut self) {
        self.items.clear();
        self.pieces.clear();
        self.ordered.clear();
        self.heads.clear();
    }

    /// Adds the inner IP packet `packet`, found at `range` of receive buffer `buf`
    /// (already checked by the decapsulator).
    pub fn push(&mut self, buf: u32, range: Range<usize>, packet: &[u8]) {
        let range32 = range.start as u32..range.end as u32;
        let Some(c) = self.enabled.then(|| candidate(packet, self.udp)).flatten() else {
            if self.enabled {
                self.close_same_addresses(packet);
            }
            self.items.push(GroItem::single(buf, range32));
            return;
        };
        let payload_len = packet.len() - c.ip_len - c.tcp_len;
        let tcp = &packet[c.ip_len..];
        let (seq, psh) = if c.udp {
            (0, false)
        } else {
            (
                u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                tcp[13] & 0x08 != 0,
            )
        };
        // Newest item of the same flow among the last few.
        let lo = self.items.len().saturating_sub(LOOKBACK);
        let found = (lo..self.items.len())
            .rev()
            .find(|&i| self.items[i].ip_len != 0 && self.same_flow(i, packet, &c));
        if let Some(i) = found {
            if self.can_append(i, packet, &c, seq, payload_len) {
                self.pieces.push((
                    i as u32,
                    Piece {
                        buf,
                        range: (range.start + c.ip_len + c.tcp_len) as u32..range.end as u32,
                    },
                ));
                let it = &mut self.items[i];
                it.count += 1;
                it.payload += payload_len as u32;
                it.next_seq = seq.wrapping_add(payload_len as u32);
                if psh {
                    it.psh = true;
                    it.open = false;
                }
                if payload_len < usize::from(it.gso_size) {
                    it.open = false;
                }
                return;
            }
            self.items[i].open = false;
        }
        // Start a new item; keep a copy of its headers to compare later segments with.
        let slot = self.heads.len();
        self.heads.resize(slot + GRO_SLOT, 0);
        let hl = c.ip_len + c.tcp_len;
        self.heads[slot + VNET_HDR_LEN..slot + VNET_HDR_LEN + hl].copy_from_slice(&packet[..hl]);
        self.pieces.push((
            self.items.len() as u32,
            Piece {
                buf,
                range: (range.start + hl) as u32..range.end as u32,
            },
        ));
        self.items.push(GroItem {
            buf,
            range: range32,
            ip_len: c.ip_len as u8,
            tcp_len: c.tcp_len as u8,
            v4: c.v4,
            udp: c.udp,
            open: !psh,
            psh,
            count: 1,
            gso_size: payload_len as u16,
            payload: payload_len as u32,
            next_seq: seq.wrapping_add(payload_len as u32),
            pieces: 0..0,
            slot,
        });
    }

    /// Ends the recent runs between the addresses of `packet`, which is written alone:
    /// a later datagram of its flow must not be merged into a run written before it.
    fn close_same_addresses(&mut self, packet: &[u8]) {
        let addrs = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => 12..20,
            Some(6) if packet.len() >= 40 => 8..40,
            _ => return,
        };
        let lo = self.items.len().saturating_sub(LOOKBACK);
        for i in lo..self.items.len() {
            let it = &self.items[i];
            if it.open && it.ip_len != 0 && it.v4 == (addrs.start == 12) {
                let s = it.slot + VNET_HDR_LEN;
                if self.heads[s + addrs.start..s + addrs.end] == packet[addrs.clone()] {
                    self.items[i].open = false;
                }
            }
        }
    }

    fn head(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        let s = it.slot + VNET_HDR_LEN;
        &self.heads[s..s + usize::from(it.ip_len) + usize::from(it.tcp_len)]
    }

    fn same_flow(&self, i: usize, packet: &[u8], c: &Candidate) -> bool {
        let it = &self.items[i];
        if it.v4 != c.v4 || it.udp != c.udp {
            return false;
        }
        let h = self.head(i);
        let addrs = if c.v4 { 12..20 } else { 8..40 };
        h[addrs.clone()] == packet[addrs]
            && h[usize::from(it.ip_len)..usize::from(it.ip_len) + 4]
                == packet[c.ip_len..c.ip_len + 4]
    }

    fn can_append(
        &self,
        i: usize,
        packet: &[u8],
        c: &Candidate,
        seq: u32,
        payload_len: usize,
    ) -> bool {
        let it = &self.items[i];
        if !it.open
            || usize::from(it.count) >= MAX_COALESCE
            || usize::from(it.ip_len) != c.ip_len
            || usize::from(it.tcp_len) != c.tcp_len
            || (!c.udp && seq != it.next_seq)
            || payload_len > usize::from(it.gso_size)
            || usize::from(it.ip_len) + usize::from(it.tcp_len) + it.payload as usize + payload_len
                > 65_535
        {
            return false;
        }
        let h = self.head(i);
        let ip_same = if c.v4 {
            // TOS, DF/MF+offset, TTL.
            h[1] == packet[1] && h[6..8] == packet[6..8] && h[8] == packet[8]
        } else {
            h[..4] == packet[..4] && h[7] == packet[7]
        };
        let t = c.ip_len;
        if c.udp {
            return ip_same;
        }
        // Ack number, data offset with the reserved bits and AE, flags other than
        // PSH, window, then options.
        ip_same
            && h[t + 8..t + 13] == packet[t + 8..t + 13]
            && (h[t + 13] & !0x08) == (packet[t + 13] & !0x08)
            && h[t + 14..t + 16] == packet[t + 14..t + 16]
            && h[t + 20..t + c.tcp_len] == packet[t + 20..t + c.tcp_len]
    }

    /// Finishes the batch: fixes the headers of merged items. Then [`Self::writes`]
    /// lists what to write, in order.
    pub fn finish(&mut self) {
        // Group the pieces by item (a counting sort of small structs, no payload).
        let mut next = 0;
        for it in self.items.iter_mut() {
            let n = if it.ip_len == 0 {
                0
            } else {
                usize::from(it.count)
            };
            it.pieces = next..next;
            next += n;
        }
        self.ordered.clear();
        self.ordered.resize(
            next,
            Piece {
                buf: 0,
                range: 0..0,
            },
        );
        for (item, piece) in self.pieces.drain(..) {
            let it = &mut self.items[item as usize];
            self.ordered[it.pieces.end] = piece;
            it.pieces.end += 1;
        }
        for i in 0..self.items.len() {
            let it = &self.items[i];
            if it.ip_len == 0 || it.count < 2 {
                continue;
            }
            let (ip_len, tcp_len) = (usize::from(it.ip_len), usize::from(it.tcp_len));
            let hl = ip_len + tcp_len;
            let l4_total = (tcp_len as u32) + it.payload;
            let vnet = VnetHdr {
                flags: VNET_F_NEEDS_CSUM,
                gso_type: match (it.udp, it.v4) {
                    (true, _) => VNET_GSO_UDP_L4,
                    (false, true) => VNET_GSO_TCPV4,
                    (false, false) => VNET_GSO_TCPV6,
                },
                hdr_len: hl as u16,
                gso_size: it.gso_size,
                csum_start: ip_len as u16,
                csum_offset: if it.udp { 6 } else { 16 },
            };
            let (v4, psh, udp) = (it.v4, it.psh, it.udp);
            let s = it.slot;
            let slot = &mut self.heads[s..s + VNET_HDR_LEN + hl];
            vnet.emit(slot);
            let (ip, tcp) = slot[VNET_HDR_LEN..].split_at_mut(ip_len);
            if v4 {
                ip[2..4].copy_from_slice(&((hl as u32 + it.payload) as u16).to_be_bytes());
                checksum::ipv4_header(ip, ip_len);
            } else {
                ip[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            }
            if udp {
                tcp[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
                // Partial checksum: the pseudo-header sum, not complemented.
                let partial = checksum::fold(checksum::pseudo(ip, 17, l4_total));
                tcp[6..8].copy_from_slice(&partial.to_ne_bytes());
                continue;
            }
            if psh {
                tcp[13] |= 0x08;
            }
            // Partial checksum: the pseudo-header sum, not complemented.
            let partial = checksum::fold(checksum::pseudo(ip, 6, l4_total));
            tcp[16..18].copy_from_slice(&partial.to_ne_bytes());
        }
    }

    /// What to write to the TUN, in order.
    pub fn writes(&self) -> impl Iterator<Item = TunWrite<'_>> + '_ {
        self.items.iter().map(|it| {
            if it.ip_len == 0 || it.count < 2 {
                TunWrite::Single {
                    buf: it.buf,
                    range: it.range.clone(),
                }
            } else {
                let s = it.slot;
                let hl = usize::from(it.ip_len) + usize::from(it.tcp_len);
                TunWrite::Coalesced {
                    head: &self.heads[s..s + VNET_HDR_LEN + hl],
                    pieces: &self.ordered[it.pieces.clone()],
                }
            }
        })
    }
}

impl GroItem {
    fn single(buf: u32, range: Range<u32>) -> GroItem {
        GroItem {
            buf,
            range,
            ip_len: 0,
            tcp_len: 0,
            v4: false,
            udp: false,
            open: false,
            psh: false,
            count: 1,
            gso_size: 0,
            payload: 0,
            next_seq: 0,
            pieces: 0..0,
            slot: 0,
        }
    }
}

struct Candidate {
    v4: bool,
    udp: bool,
    ip_len: usize,
    /// TCP or UDP header length.
    tcp_len: usize,
}

/// A segment that may be merged: a TCP segment with a plain IP header, ACK (and
/// maybe PSH) only, non-empty payload and a valid checksum; with `udp`, also a UDP
/// datagram with a plain IP header, a non-empty payload and a valid (or, on IPv4,
/// no) checksum.
fn candidate(p: &[u8], udp: bool) -> Option<Candidate> {
    let v4 = match p.first()? >> 4 {
        4 => true,
        6 => false,
        _ => return None,
    };
    let (ip_len, proto) = if v4 {
        // No options, not a fragment.
        if p.len() < 28 || p[0] & 0x0f != 5 || (p[6] & 0x3f) != 0 || p[7] != 0 {
            return None;
        }
        (20, p[9])
    } else {
        if p.len() < 48 {
            return None;
        }
        (40, p[6])
    };
    match proto {
        6 => tcp_candidate(p, v4, ip_len),
        17 if udp => udp_candidate(p, v4, ip_len),
        _ => None,
    }
}

fn udp_candidate(p: &[u8], v4: bool, ip_len: usize) -> Option<Candidate> {
    let l4 = &p[ip_len..];
    if l4.len() <= 8 || usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
        return None;
    }
    let no_checksum = v4 && l4[6..8] == [0, 0];
    if !no_checksum {
        let sum = checksum::add(checksum::pseudo(p, 17, l4.len() as u32), l4);
        if checksum::fold(sum) != 0xffff {
            return None;
        }
    }
    Some(Candidate {
        v4,
        udp: true,
        ip_len,
        tcp_len: 8,
    })
}

fn tcp_candidate(p: &[u8], v4: bool, ip_len: usize) -> Option<Candidate> {
    if p.len() < ip_len + 20 {
        return None;
    }
    let tcp = &p[ip_len..];
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < 20 || tcp.len() <= tcp_len || tcp[13] & !0x08 != 0x10 {
        return None;
    }
    let sum = checksum::add(checksum::pseudo(p, 6, tcp.len() as u32), tcp);
    if checksum::fold(sum) != 0xffff {
        return None;
    }
    Some(Candidate {
        v4,
        udp: false,
        ip_len,
        tcp_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_packet(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 5201, seq, 1000)
            .ack(77);
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn tcp6_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 5201, seq, 1000)
            .ack(77);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// A super-packet as the kernel hands it over: full length, partial checksum.
    fn tso(mut p: Vec<u8>, gso_size: u16, v4: bool) -> (VnetHdr, Vec<u8>) {
        let ip_len = if v4 { 20 } else { 40 };
        let tcp_len = (p.len() - ip_len) as u32;
        let partial = checksum::fold(checksum::pseudo(&p, 6, tcp_len));
        p[ip_len + 16..ip_len + 18].copy_from_slice(&partial.to_ne_bytes());
        let hdr = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: if v4 { VNET_GSO_TCPV4 } else { VNET_GSO_TCPV6 },
            hdr_len: (ip_len + 20) as u16,
            gso_size,
            csum_start: ip_len as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    fn datagram_bytes(batch: &TxBatch, d: &TxDatagram, packet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Head::Slot(n) = d.head {
            out.extend_from_slice(batch.slot(n, d.head_len));
        }
        out.extend_from_slice(&packet[d.body.start as usize..d.body.end as usize]);
        out
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 60,
            gso_size: 1388,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn checksum_matches_naive_sum_at_every_length_and_split() {
        let data: Vec<u8> = (0..700u32).map(|i| (i * 151 + i / 7) as u8).collect();
        let naive = |d: &[u8]| {
            let mut s: u32 = 0;
            for c in d.chunks(2) {
                s += u32::from(u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        for n in 0..data.len() {
            let d = &data[..n];
            assert_eq!(checksum::fold(checksum::add(0, d)), naive(d), "n={n}");
            // Split at an even offset and continued from a running sum.
            let cut = (n / 3) & !1;
            let acc = checksum::add(checksum::add(u64::MAX - 3, &d[..cut]), &d[cut..]);
            let expect = naive(d) as u32 + 0xfffc;
            let expect = ((expect & 0xffff) + (expect >> 16)) as u16;
            assert_eq!(checksum::fold(acc), expect, "n={n} cut={cut}");
        }
    }

    #[test]
    fn checksum_matches_reference() {
        // RFC 1071 example bytes, and odd lengths.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0x12];
        for n in 0..=data.len() {
            let mut s: u32 = 0;
            for c in data[..n].chunks(2) {
                s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            let ours =
                u16::from_be_bytes(checksum::fold(checksum::add(0, &data[..n])).to_ne_bytes());
            assert_eq!(ours, s as u16, "n={n}");
        }
    }

    fn check_segments(v4: bool) {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let p = if v4 {
            tcp_packet(1_000_000, &payload, true)
        } else {
            tcp6_packet(1_000_000, &payload)
        };
        let (hdr, p) = tso(p, 1400, v4);
        let mut batch = TxBatch::new(64);
        let prefix = [0xabu8; 22];
        let dst = TxDest {
            addr: "198.18.0.2:4789".parse().unwrap(),
            flow: 7,
        };
        let n = segment(&hdr, &p, &prefix, dst, 3, 0, &mut batch).unwrap();
        assert_eq!(n, 4);
        let mut joined = Vec::new();
        for (i, d) in batch.datagrams().iter().enumerate() {
            assert_eq!((d.buf, d.flow), (3, 7));
            let bytes = datagram_bytes(&batch, d, &p);
            assert_eq!(&bytes[..22], &prefix);
            let inner = &bytes[22..];
            let sliced = SlicedPacket::from_ip(inner).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("not tcp")
            };
            assert_eq!(tcp.sequence_number(), 1_000_000 + 1400 * i as u32);
            assert_eq!(tcp.psh(), v4 && i == 3);
            let expected = match &sliced.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert_eq!(ip.header().total_len() as usize, inner.len());
                    tcp.to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                        .unwrap()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => tcp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                    .unwrap(),
                _ => panic!("no ip"),
            };
            assert_eq!(tcp.checksum(), expected);
            if v4 {
                let ip = etherparse::Ipv4HeaderSlice::from_slice(inner).unwrap();
                assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
            }
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
        let groups: Vec<_> = batch.groups(64, 16).collect();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].range, 0..4);
    }

    #[test]
    fn tso_ipv4_splits_into_valid_segments() {
        check_segments(true);
    }

    #[test]
    fn tso_ipv6_splits_into_valid_segments() {
        check_segments(false);
    }

    #[test]
    fn segment_rejects_lies_and_reports_full() {
        let (hdr, p) = tso(tcp_packet(1, &[0u8; 3000], false), 1000, true);
        let dst = TxDest {
            addr: "198.18.0.2:4789".parse().unwrap(),
            flow: 0,
        };
        let mut small = TxBatch::new(2);
        assert_eq!(
            segment(&hdr, &p, &[0; 22], dst, 0, 0, &mut small),
            Err(SegmentError::Full)
        );
        let mut batch = TxBatch::new(8);
        let bad = VnetHdr {
            csum_start: 200,
            ..hdr
        };
        assert_eq!(
            segment(&bad, &p, &[0; 22], dst, 0, 0, &mut batch),
            Err(SegmentError::Malformed)
        );
        let v6_on_v4 = VnetHdr {
            gso_type: VNET_GSO_TCPV6,
            ..hdr
        };
        assert_eq!(
            segment(&v6_on_v4, &p, &[0; 22], dst, 0, 0, &mut batch),
            Err(SegmentError::Malformed)
        );
        assert_eq!(
            segment(&hdr, &p[..30], &[0; 22], dst, 0, 0, &mut batch),
            Err(SegmentError::Malformed)
        );
    }

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

    #[test]
    fn complete_checksum_fills_partial_sum() {
        let mut p = tcp_packet(5, b"hello world", false);
        let good = p.clone();
        let (hdr, _) = tso(p.clone(), 1400, true);
        let partial = checksum::fold(checksum::pseudo(&p, 6, (p.len() - 20) as u32));
        p[36..38].copy_from_slice(&partial.to_ne_bytes());
        let hdr = VnetHdr {
            gso_type: VNET_GSO_NONE,
            ..hdr
        };
        assert!(complete_checksum(&hdr, &mut p));
        assert_eq!(p, good);
        let lie = VnetHdr {
            csum_offset: 500,
            ..hdr
        };
        assert!(!complete_checksum(&lie, &mut p));
    }

    /// Places packets in one buffer as a receive batch would, 22 bytes apart.
    fn rx_batch(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in packets {
            buf.extend_from_slice(&[0u8; 22]);
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        (buf, ranges)
    }

    /// Pushes `packets`, one batch, into a coalescer that merges TCP (and UDP with
    /// `udp`) and returns what it writes.
    fn coalesce(packets: &[Vec<u8>], udp: bool) -> Vec<(Option<VnetHdr>, Vec<u8>)> {
        let (buf, ranges) = rx_batch(packets);
        let mut c = Coalescer::new(true, udp);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish();
        written(&c, &buf)
    }

    /// Asserts that `out` is `packets`, each written alone and unchanged.
    fn assert_all_alone(out: &[(Option<VnetHdr>, Vec<u8>)], packets: &[Vec<u8>]) {
        assert_eq!(out.len(), packets.len());
        for ((hdr, p), orig) in out.iter().zip(packets) {
            assert!(hdr.is_none());
            assert_eq!(p, orig);
        }
    }

    /// Reassembles what a TUN write would carry.
    fn written(c: &Coalescer, buf: &[u8]) -> Vec<(Option<VnetHdr>, Vec<u8>)> {
        c.writes()
            .map(|w| match w {
                TunWrite::Single { range, .. } => {
                    (None, buf[range.start as usize..range.end as usize].to_vec())
                }
                TunWrite::Coalesced { head, pieces } => {
                    let mut p = head[VNET_HDR_LEN..].to_vec();
                    for piece in pieces {
                        p.extend_from_slice(
                            &buf[piece.range.start as usize..piece.range.end as usize],
                        );
                    }
                    (VnetHdr::parse(head), p)
                }
            })
            .collect()
    }

    #[test]
    fn coalesces_in_order_segments_and_splits_back() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 13) as u8).collect();
        let mut packets = Vec::new();
        for (i, chunk) in payload.chunks(1000).enumerate() {
            packets.push(tcp_packet(500 + 1000 * i as u32, chunk, i == 3));
        }
        let out = coalesce(&packets, false);
        assert_eq!(out.len(), 1);
        let (hdr, merged) = &out[0];
        let hdr = hdr.unwrap();
        assert_eq!(hdr.gso_type, VNET_GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1000);
        assert_eq!(hdr.hdr_len, 40);
        // Splitting the super-packet again gives back the original segments.
        let mut batch = TxBatch::new(8);
        let dst = "198.18.0.2:4789".parse().unwrap();
        let n = segment(
            &hdr,
            merged,
            &[],
            TxDest { addr: dst, flow: 0 },
            0,
            0,
            &mut batch,
        )
        .unwrap();
        assert_eq!(n, 4);
        for (d, orig) in batch.datagrams().iter().zip(&packets) {
            // Equal but for the IPv4 identification (the originals all use 0) and
            // with it the header checksum.
            let mut again = datagram_bytes(&batch, d, merged);
            assert_eq!(again.len(), orig.len());
            again[4..6].copy_from_slice(&orig[4..6]);
            checksum::ipv4_header(&mut again, 20);
            assert_eq!(&again, orig);
        }
    }

    fn udp_packet(src_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .udp(src_port, 5201)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn coalesces_udp_datagrams_with_uso_and_splits_back() {
        let mut packets: Vec<Vec<u8>> = (0..4u8).map(|i| udp_packet(40000, &[i; 64])).collect();
        packets.push(udp_packet(40000, &[9; 30]));
        // After a shorter datagram the run ends: this one is written alone.
        packets.push(udp_packet(40000, &[10; 64]));
        let (buf, ranges) = rx_batch(&packets);
        let mut c = Coalescer::new(true, true);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish();
        let out = written(&c, &buf);
        assert_eq!(out.len(), 2);
        let (hdr, merged) = &out[0];
        let hdr = hdr.unwrap();
        assert_eq!(
            (
                hdr.gso_type,
                hdr.gso_size,
                hdr.hdr_len,
                hdr.csum_start,
                hdr.csum_offset
            ),
            (VNET_GSO_UDP_L4, 64, 28, 20, 6)
        );
        assert_eq!(out[1], (None, packets[5].clone()));
        let mut batch = TxBatch::new(8);
        let dst = TxDest {
            addr: "198.18.0.2:4789".parse().unwrap(),
            flow: 0,
        };
        let n = segment(&hdr, merged, &[], dst, 0, 0, &mut batch).unwrap();
        assert_eq!(n, 5);
        for (d, orig) in batch.datagrams().iter().zip(&packets) {
            let mut again = datagram_bytes(&batch, d, merged);
            again[4..6].copy_from_slice(&orig[4..6]);
            checksum::ipv4_header(&mut again, 20);
            assert_eq!(&again, orig);
        }
        // Without USO the same datagrams are written one by one.
        let mut plain = Coalescer::new(true, false);
        for r in &ranges {
            plain.push(0, r.clone(), &buf[r.clone()]);
        }
        plain.finish();
        assert_eq!(plain.writes().count(), packets.len());
    }

    #[test]
    fn udp_runs_keep_order_around_datagrams_written_alone() {
        let mut bad = udp_packet(40000, &[2; 64]);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut no_sum = udp_packet(40001, &[5; 64]);
        no_sum[26..28].copy_from_slice(&[0, 0]);
        let packets = vec![
            udp_packet(40000, &[1; 64]),
            bad,
            udp_packet(40000, &[3; 64]),
            udp_packet(40000, &[4; 64]),
            no_sum.clone(),
            no_sum,
        ];
        let out = coalesce(&packets, true);
        // 1 | bad | 3+4 | both checksum-less datagrams merged.
        let counts: Vec<_> = out
            .iter()
            .map(|(h, p)| h.map_or(1, |h| (p.len() - 28) / usize::from(h.gso_size)))
            .collect();
        assert_eq!(counts, vec![1, 1, 2, 2]);
        assert_eq!(out[1].1, packets[1]);
    }

    #[test]
    fn does_not_coalesce_gaps_bad_checksums_or_other_flags() {
        let a = tcp_packet(0, &[1; 100], false);
        let gap = tcp_packet(200, &[2; 100], false);
        let mut bad = tcp_packet(300, &[3; 100], false);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut syn = tcp_packet(400, &[4; 100], false);
        syn[33] |= 0x02;
        let udp = {
            let mut out = Vec::new();
            PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
                .udp(1, 2)
                .write(&mut out, &[0; 64])
                .unwrap();
            out
        };
        let packets = vec![udp, a, gap, bad, syn];
        let (buf, ranges) = rx_batch(&packets);
        let mut c = Coalescer::new(true, false);
        for r in &ranges {
            c.push(7, r.clone(), &buf[r.clone()]);
        }
        c.finish();
        let out = written(&c, &buf);
        assert_eq!(out.len(), 5);
        assert_all_alone(&out, &packets);
        let mut off = Coalescer::new(false, false);
        off.push(0, ranges[0].clone(), &buf[ranges[0].clone()]);
        off.finish();
        assert_eq!(off.writes().count(), 1);
    }

    /// Found by the `offload_segment` fuzz target: a virtio header whose
    /// `csum_start` is not the IPv4 header length (20 here; 59 in the fuzzer's USO
    /// packet) made segments whose IP header checksum covered the wrong bytes.
    #[test]
    fn segment_rejects_csum_start_other_than_the_ipv4_header() {
        let dst = TxDest {
            addr: "198.18.0.2:4789".parse().unwrap(),
            flow: 0,
        };
        let mut batch = TxBatch::new(8);
        // 0x50 bytes read as a 20-byte TCP header wherever csum_start points.
        let (hdr, p) = tso(tcp_packet(1, &[0x50; 3000], false), 1000, true);
        for csum_start in [40, 59] {
            let lie = VnetHdr { csum_start, ..hdr };
            assert_eq!(
                segment(&lie, &p, &[0; 22], dst, 0, 0, &mut batch),
                Err(SegmentError::Malformed)
            );
        }
        let mut udp = Vec::new();
        PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .udp(1, 2)
            .write(&mut udp, &[7; 1500])
            .unwrap();
        let uso = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: VNET_GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 500,
            csum_start: 59,
            csum_offset: 6,
        };
        assert_eq!(
            segment(&uso, &udp, &[0; 22], dst, 0, 0, &mut batch),
            Err(SegmentError::Malformed)
        );
        assert_eq!(
            segment(
                &VnetHdr {
                    csum_start: 20,
                    ..uso
                },
                &udp,
                &[0; 22],
                dst,
                0,
                0,
                &mut batch
            ),
            Ok(3)
        );
    }

    /// Found by the `offload_coalesce` fuzz target: a segment whose reserved bits or
    /// AE flag (byte 12 of the TCP header, next to the data offset) differed was
    /// merged, and its bits replaced by the first segment's.
    #[test]
    fn reserved_bits_and_ae_end_the_run() {
        let a = tcp_packet(500, &[1; 300], false);
        let mut b = tcp_packet(800, &[2; 300], false);
        b[32] |= 0x0b;
        b[36..38].copy_from_slice(&[0, 0]);
        let sum = checksum::add(checksum::pseudo(&b, 6, (b.len() - 20) as u32), &b[20..]);
        b[36..38].copy_from_slice(&checksum::finish(sum));
        let packets = vec![a, b];
        let (buf, ranges) = rx_batch(&packets);
        let mut c = Coalescer::new(true, false);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish();
        assert_eq!(written(&c, &buf).len(), 2);
    }

    /// Found by the `offload_coalesce` fuzz target: a window update in the second
    /// segment was merged away, the super-packet carrying the first one's window.
    #[test]
    fn window_update_ends_the_run() {
        let a = tcp_packet(500, &[1; 300], false);
        let mut b = tcp_packet(800, &[2; 300], false);
        b[34..36].copy_from_slice(&51962u16.to_be_bytes());
        b[36..38].copy_from_slice(&[0, 0]);
        let sum = checksum::add(checksum::pseudo(&b, 6, (b.len() - 20) as u32), &b[20..]);
        b[36..38].copy_from_slice(&checksum::finish(sum));
        let packets = vec![a, b];
        let out = coalesce(&packets, false);
        assert_eq!(out.len(), 2);
        assert_all_alone(&out, &packets);
    }

    #[test]
    fn interleaved_flows_coalesce_separately_in_order() {
        let mk = |port: u16, seq: u32| {
            let mut out = Vec::new();
            PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
                .tcp(port, 5201, seq, 1000)
                .ack(1)
                .write(&mut out, &[port as u8; 500])
                .unwrap();
            out
        };
        let packets = vec![mk(1, 0), mk(2, 0), mk(1, 500), mk(2, 500), mk(1, 1000)];
        let out = coalesce(&packets, false);
        // Two super-packets, one per flow, each in order.
        assert_eq!(out.len(), 2);
        let seqs: Vec<(u16, u32, usize)> = out
            .iter()
            .map(|(_, p)| {
                let s = SlicedPacket::from_ip(p).unwrap();
                let Some(TransportSlice::Tcp(t)) = s.transport else {
                    panic!()
                };
                (t.source_port(), t.sequence_number(), t.payload().len())
            })
            .collect();
        let mut by_flow: std::collections::BTreeMap<u16, Vec<(u32, usize)>> = Default::default();
        for (port, seq, len) in seqs {
            by_flow.entry(port).or_default().push((seq, len));
        }
        for runs in by_flow.values() {
            let mut next = 0;
            for (seq, len) in runs {
                assert_eq!(*seq, next);
                next += *len as u32;
            }
            assert!(next >= 1000);
        }
    }
}
