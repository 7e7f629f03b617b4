//! GRO for the TUN (sans-IO): the [`Coalescer`] merges consecutive in-order TCP
//! segments of one flow (checksums verified first), and with USO consecutive UDP
//! datagrams of one flow, received in one batch, into one super-packet description:
//! a virtio-net header and the merged IP/transport headers in a head slot, followed
//! by the payload ranges where they were received, for one `writev`. Packets that
//! cannot be merged are written alone, in order, behind a zero virtio-net header
//! that [`Coalescer::finish`] writes into the headroom in front of them.
//!
//! **Partial checksums.** A Linux sender that offloads checksums (a kernel vxlan
//! node whose underlay is a veth, or a VM's virtio NIC) can hand us an inner TCP or
//! UDP packet whose checksum field holds only the pseudo-header sum, the seed the
//! device was to complete; its receiving kernel would still know that, but a UDP
//! socket gives us the bytes alone. A packet written alone whose field equals that
//! seed gets a `NEEDS_CSUM` virtio-net header, so the kernel completes the sum as it
//! would have (without virtio-net headers the sum is completed here). A complete
//! checksum equal to the seed by chance (1 in 65,536) is recomputed to the same
//! value, so nothing valid is harmed. Such a sender on a veth (or a virtio NIC with
//! tunnel GSO) can also hand over a whole TSO super-packet in one datagram; a TCP
//! one longer than the MTU goes to the TUN with a TSO header whose segments fit
//! the MTU, as the sender's device would have cut it. (A UDP super-packet's
//! datagram boundaries are not in the bytes: it is written as it came.)

use std::ops::Range;

use super::vnet::{
    complete_checksum, VnetHdr, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_TCPV6,
    VNET_GSO_UDP_L4, VNET_HDR_LEN,
};
use crate::dataplane::wire::checksum;

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
    /// One packet, as received: bytes `range` of buffer `buf`, one write. On a TUN
    /// with virtio-net headers (an enabled coalescer) the range starts with the zero
    /// [`VnetHdr`] that [`Coalescer::finish`] wrote in front of the packet.
    Single {
        /// Buffer index.
        buf: u32,
        /// The virtio-net header, if any, and the inner IP packet.
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
    /// The overlay MTU.
    mtu: u32,
}

impl Coalescer {
    /// A coalescer for a TUN that takes virtio-net headers (`enabled`, `IFF_VNET_HDR`)
    /// or not. With `enabled` false every packet is written alone and as is; with
    /// `udp` false (a TUN without USO) only TCP segments are merged.
    pub fn new(enabled: bool, udp: bool) -> Coalescer {
        Coalescer {
            enabled,
            udp: enabled && udp,
            items: Vec::with_capacity(1024),
            pieces: Vec::with_capacity(4096),
            ordered: Vec::with_capacity(4096),
            heads: Vec::with_capacity(1024 * GRO_SLOT),
            mtu: 1500,
        }
    }

    /// Sets the overlay MTU (1500 unless set): an inner TCP packet longer than it
    /// with a partial checksum is written as a TSO super-packet of segments that
    /// fit (see the module doc).
    pub(crate) fn with_mtu(mut self, mtu: u32) -> Coalescer {
        self.mtu = mtu;
        self
    }

    /// Whether TCP segments are merged (and every write starts with a virtio-net
    /// header).
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
    /// (already checked by the decapsulator). When enabled, `range` must have at
    /// least [`VNET_HDR_LEN`] bytes of its buffer in front of it (the decapsulated
    /// VXLAN and Ethernet headers), where [`Self::finish`] may write a virtio-net
    /// header.
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

    /// Finishes the batch: fixes the headers of merged items and, when enabled, writes
    /// a zero virtio-net header ("no GSO, checksum complete") in front of every packet
    /// written alone, in `bufs[buf]`, the receive buffers that [`Self::push`] named.
    /// Then [`Self::writes`] lists what to write, in order.
    ///
    /// # Panics
    /// If a pushed `buf` is not an index of `bufs`, or, when enabled, a packet
    /// written alone has fewer than [`VNET_HDR_LEN`] bytes in front of it.
    pub fn finish<B: AsMut<[u8]>>(&mut self, bufs: &mut [B]) {
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
                let (start, end) = (it.range.start as usize, it.range.end as usize);
                let buf = bufs[it.buf as usize].as_mut();
                let mtu = self.mtu as usize;
                let packet = &buf[start..end];
                let partial = partial_checksum(packet).map(|(at, offset)| {
                    let mut hdr = VnetHdr {
                        flags: VNET_F_NEEDS_CSUM,
                        gso_type: VNET_GSO_NONE,
                        hdr_len: 0,
                        gso_size: 0,
                        csum_start: at as u16,
                        csum_offset: offset as u16,
                    };
                    let tcp_len = packet.get(at + 12).map_or(0, |b| usize::from(b >> 4) * 4);
                    if offset == 16 && packet.len() > mtu && tcp_len >= 20 && at + tcp_len < mtu {
                        hdr.gso_type = if packet[0] >> 4 == 4 {
                            VNET_GSO_TCPV4
                        } else {
                            VNET_GSO_TCPV6
                        };
                        hdr.hdr_len = (at + tcp_len) as u16;
                        hdr.gso_size = (mtu - at - tcp_len) as u16;
                    }
                    hdr
                });
                match (self.enabled, partial) {
                    (true, Some(hdr)) => hdr.emit(&mut buf[start - VNET_HDR_LEN..start]),
                    (true, None) => buf[start - VNET_HDR_LEN..start].fill(0),
                    (false, Some(hdr)) => {
                        complete_checksum(&hdr, &mut buf[start..end]);
                    }
                    (false, None) => {}
                }
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
                let head = if self.enabled { VNET_HDR_LEN as u32 } else { 0 };
                TunWrite::Single {
                    buf: it.buf,
                    range: it.range.start - head..it.range.end,
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

/// Where the checksum of TCP or UDP packet `p` starts and where its field is, if
/// the field holds only the pseudo-header seed of a checksum left to the device
/// (see the module doc).
fn partial_checksum(p: &[u8]) -> Option<(usize, usize)> {
    let (ip_len, proto) = match p.first()? >> 4 {
        4 if p.len() >= 20 => (usize::from(p[0] & 0x0f) * 4, p[9]),
        6 if p.len() >= 40 => (40, p[6]),
        _ => return None,
    };
    let offset = match proto {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    if ip_len < 20 || p.len() < ip_len + offset + 2 {
        return None;
    }
    let l4_len = (p.len() - ip_len) as u32;
    let field = u16::from_ne_bytes([p[ip_len + offset], p[ip_len + offset + 1]]);
    if field == 0 {
        return None;
    }
    let seed = checksum::fold(checksum::pseudo(p, proto, l4_len));
    (field == seed).then_some((ip_len, offset))
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
    use crate::dataplane::batch::{TxBatch, TxDest};
    use crate::dataplane::offload::segment::segment;
    use crate::dataplane::offload::tests::{datagram_bytes, tcp_packet, udp_packet};
    use crate::dataplane::offload::VNET_GSO_UDP_L4;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    /// Places packets in one buffer as a receive batch would, 22 bytes apart (bytes
    /// 0xee, where the VXLAN and Ethernet headers were).
    fn rx_batch(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in packets {
            buf.extend_from_slice(&[0xeeu8; 22]);
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        (buf, ranges)
    }

    /// Pushes `packets`, one batch, into a coalescer that merges TCP (and UDP with
    /// `udp`) and returns what it writes.
    fn coalesce(packets: &[Vec<u8>], udp: bool) -> Vec<(Option<VnetHdr>, Vec<u8>)> {
        let (mut buf, ranges) = rx_batch(packets);
        let mut c = Coalescer::new(true, udp);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish(std::slice::from_mut(&mut buf));
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

    /// Reassembles what a TUN write would carry; checks that a packet written alone
    /// by an enabled coalescer has a zero virtio-net header in front.
    fn written(c: &Coalescer, buf: &[u8]) -> Vec<(Option<VnetHdr>, Vec<u8>)> {
        c.writes()
            .map(|w| match w {
                TunWrite::Single { range, .. } => {
                    let mut p = &buf[range.start as usize..range.end as usize];
                    if c.enabled() {
                        let (hdr, packet) = p.split_at(VNET_HDR_LEN);
                        assert_eq!(hdr, [0; VNET_HDR_LEN], "a zero virtio-net header");
                        p = packet;
                    }
                    (None, p.to_vec())
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

    /// A kernel sender that left the inner checksum to its device (a partial
    /// checksum: the pseudo-header seed) gets it completed: by the kernel, through a
    /// `NEEDS_CSUM` header, on a TUN with virtio-net headers; here otherwise. A
    /// complete checksum is left as it is.
    #[test]
    fn a_partial_checksum_written_alone_is_completed() {
        let full = tcp_packet(1, b"hello", false);
        let mut partial = full.clone();
        let seed = checksum::fold(checksum::pseudo(&partial, 6, (partial.len() - 20) as u32));
        partial[36..38].copy_from_slice(&seed.to_ne_bytes());
        assert_ne!(partial, full);
        for enabled in [true, false] {
            let (mut buf, ranges) = rx_batch(&[partial.clone(), full.clone()]);
            let mut c = Coalescer::new(enabled, false);
            for r in &ranges {
                c.push(0, r.clone(), &buf[r.clone()]);
            }
            c.finish(std::slice::from_mut(&mut buf));
            let writes: Vec<_> = c.writes().collect();
            assert_eq!(writes.len(), 2, "the partial one is not merged");
            for (w, hdr_flag) in writes.iter().zip([VNET_F_NEEDS_CSUM, 0]) {
                let TunWrite::Single { range, .. } = w else {
                    panic!("written alone: {w:?}")
                };
                let mut p = buf[range.start as usize..range.end as usize].to_vec();
                if enabled {
                    let hdr = VnetHdr::parse(&p).unwrap();
                    assert_eq!(hdr.flags, hdr_flag);
                    p.drain(..VNET_HDR_LEN);
                    if hdr_flag != 0 {
                        assert_eq!((hdr.csum_start, hdr.csum_offset), (20, 16));
                        assert!(complete_checksum(&hdr, &mut p));
                    }
                }
                assert_eq!(p, full, "enabled {enabled}");
            }
        }
    }

    /// A whole TSO super-packet in one datagram (a kernel sender on a veth), longer
    /// than the MTU, is written as TSO with segments that fit the MTU.
    #[test]
    fn a_partial_super_packet_is_written_as_tso_within_the_mtu() {
        let payload = vec![7u8; 3000];
        let mut p = tcp_packet(1, &payload, true);
        let seed = checksum::fold(checksum::pseudo(&p, 6, (p.len() - 20) as u32));
        p[36..38].copy_from_slice(&seed.to_ne_bytes());
        let (mut buf, ranges) = rx_batch(&[p]);
        let mut c = Coalescer::new(true, false).with_mtu(1450);
        c.push(0, ranges[0].clone(), &buf[ranges[0].clone()]);
        c.finish(std::slice::from_mut(&mut buf));
        let Some(TunWrite::Single { range, .. }) = c.writes().next() else {
            panic!("one packet written alone")
        };
        let hdr = VnetHdr::parse(&buf[range.start as usize..]).unwrap();
        assert_eq!(hdr.flags, VNET_F_NEEDS_CSUM);
        assert_eq!(hdr.gso_type, VNET_GSO_TCPV4);
        assert_eq!((hdr.hdr_len, hdr.gso_size), (40, 1410));
        assert_eq!((hdr.csum_start, hdr.csum_offset), (20, 16));
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

    #[test]
    fn coalesces_udp_datagrams_with_uso_and_splits_back() {
        let mut packets: Vec<Vec<u8>> = (0..4u8).map(|i| udp_packet(40000, &[i; 64])).collect();
        packets.push(udp_packet(40000, &[9; 30]));
        // After a shorter datagram the run ends: this one is written alone.
        packets.push(udp_packet(40000, &[10; 64]));
        let (mut buf, ranges) = rx_batch(&packets);
        let mut c = Coalescer::new(true, true);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish(std::slice::from_mut(&mut buf));
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
        plain.finish(std::slice::from_mut(&mut buf));
        assert_eq!(plain.writes().count(), packets.len());
        assert_all_alone(&written(&plain, &buf), &packets);
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
        // The packets sit in receive buffer 7.
        let mut bufs = vec![Vec::new(); 7];
        bufs.push(buf);
        let mut c = Coalescer::new(true, false);
        for r in &ranges {
            c.push(7, r.clone(), &bufs[7][r.clone()]);
        }
        c.finish(&mut bufs);
        assert!(c
            .writes()
            .all(|w| matches!(w, TunWrite::Single { buf: 7, .. })));
        let out = written(&c, &bufs[7]);
        assert_eq!(out.len(), 5);
        assert_all_alone(&out, &packets);
        let mut buf = bufs.pop().unwrap();
        let mut off = Coalescer::new(false, false);
        off.push(0, ranges[0].clone(), &buf[ranges[0].clone()]);
        off.finish(std::slice::from_mut(&mut buf));
        assert_eq!(off.writes().count(), 1);
        // Without virtio headers a packet is written as is, nothing in front.
        assert_eq!(
            off.writes().next(),
            Some(TunWrite::Single {
                buf: 0,
                range: ranges[0].start as u32..ranges[0].end as u32
            })
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
        let (mut buf, ranges) = rx_batch(&packets);
        let mut c = Coalescer::new(true, false);
        for r in &ranges {
            c.push(0, r.clone(), &buf[r.clone()]);
        }
        c.finish(std::slice::from_mut(&mut buf));
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
