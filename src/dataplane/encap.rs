//! The sans-IO packet core: VXLAN encapsulation of IP packets read from the TUN, and
//! decapsulation of datagrams from peers ([RFC 7348]).
//!
//! Both directions work in place on caller buffers and allocate nothing:
//! - [`Encapsulator::encapsulate_read`] is the outbound entry point: it takes one TUN
//!   read (with or without a virtio-net header) and pushes its datagrams into a
//!   [`TxBatch`]. A plain packet ([`Encapsulator::encapsulate`]) gets the VXLAN header
//!   and inner Ethernet header written into the `HEADROOM` bytes in front of it, so
//!   the payload is never copied; a TSO/USO super-packet is split into segments
//!   ([`offload::segment`]). The outer UDP/IP headers are the socket's.
//! - [`Decapsulator::decapsulate`] checks a datagram and returns the range of the inner
//!   IP packet inside it, to be written to the TUN from the same buffer.
//!
//! Every packet that is not forwarded is counted in [`Stats`] under one
//! [`DropReason`]; nothing here logs or panics on packet contents. Per-peer traffic
//! counters are shared by every worker, so each half sums a run of packets of one
//! peer and adds it once (one atomic add per peer per batch, not per packet); the
//! caller ends a batch with `flush_peer_stats`.
//!
//! [RFC 7348]: https://www.rfc-editor.org/rfc/rfc7348

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use super::batch::{TxBatch, TxDest};
use super::fib::{Fib, Peer, PeerState};
use super::flow::flow_hash;
use super::offload::{self, VnetHdr, VNET_HDR_LEN};
use super::stats::{DropReason, Stats};
use super::wire::vxlan::VxlanRepr;
use super::wire::{self, EtherType, EthernetFrame, IpHeader, MacAddr, VxlanPacket};

/// Bytes the caller leaves in front of an outbound IP packet: the VXLAN header and
/// the inner Ethernet header.
pub const HEADROOM: usize = wire::vxlan::HEADER_LEN + wire::ethernet::HEADER_LEN;
// A virtio-net header fits in the headroom in front of the IP packet.
const _: () = assert!(HEADROOM >= VNET_HDR_LEN);

/// Encapsulation overhead on the underlay for an IPv4 underlay: outer IPv4 (20), UDP
/// (8), VXLAN (8) and inner Ethernet (14). The overlay MTU is the underlay MTU less this.
pub(crate) const OVERHEAD_V4: u32 = 20 + 8 + HEADROOM as u32;
/// The same for an IPv6 underlay (outer IPv6 header of 40 bytes).
pub(crate) const OVERHEAD_V6: u32 = 40 + 8 + HEADROOM as u32;

/// What to send after a successful encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's underlay address and VXLAN port.
    pub dst: SocketAddr,
    /// The datagram is `buf[..len]`.
    pub len: usize,
    /// The inner flow's hash ([`flow_hash`]), from which the driver picks the outer
    /// UDP source port (RFC 7348 §5).
    pub flow: u32,
}

/// Settings shared by both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapConfig {
    /// Our VNI.
    pub vni: u32,
    /// Our VTEP MAC: the inner source MAC we send, and the inner destination we accept.
    pub local_mac: MacAddr,
}

/// Packets and bytes of one peer (by index in the FIB) not yet added to its
/// shared counters.
#[derive(Debug, Clone, Copy)]
struct PeerTally {
    peer: u32,
    packets: u64,
    bytes: u64,
}

impl PeerTally {
    const EMPTY: PeerTally = PeerTally {
        peer: u32::MAX,
        packets: 0,
        bytes: 0,
    };

    /// Counts traffic of the tally's peer.
    #[inline(always)]
    fn add(&mut self, packets: u64, bytes: usize) {
        self.packets += packets;
        self.bytes += bytes as u64;
    }

    /// Adds the tally to `peer`'s counters in `fib` and empties it.
    fn flush(&mut self, fib: &Fib, tx: bool) {
        let t = std::mem::replace(self, PeerTally::EMPTY);
        if let (Some(p), true) = (fib.peers().get(t.peer as usize), t.packets > 0) {
            let flow = if tx { &p.stats.tx } else { &p.stats.rx };
            flow.add_shared(t.packets, t.bytes as usize);
        }
    }
}

/// Outbound half: TUN packets to VXLAN datagrams.
#[derive(Debug)]
pub struct Encapsulator {
    config: EncapConfig,
    fib: Arc<Fib>,
    stats: Arc<Stats>,
    tally: PeerTally,
}

impl Encapsulator {
    /// An encapsulator routing with `fib` and counting into `stats`.
    pub fn new(config: EncapConfig, fib: Arc<Fib>, stats: Arc<Stats>) -> Encapsulator {
        Encapsulator {
            config,
            fib,
            stats,
            tally: PeerTally::EMPTY,
        }
    }

    /// Replaces the forwarding table (membership changed).
    pub(crate) fn set_fib(&mut self, fib: Arc<Fib>) {
        self.flush_peer_stats();
        self.fib = fib;
    }

    /// Adds the traffic counted since the last call to the peers' shared counters.
    pub fn flush_peer_stats(&mut self) {
        self.tally.flush(&self.fib, true);
    }

    #[inline(always)]
    fn count_peer(&mut self, peer: u32, packets: u64, bytes: usize) {
        if self.tally.peer != peer {
            self.switch_peer(peer);
        }
        self.tally.add(packets, bytes);
    }

    #[cold]
    #[inline(never)]
    fn switch_peer(&mut self, peer: u32) {
        self.tally.flush(&self.fib, true);
        self.tally.peer = peer;
    }

    /// Encapsulates the IP packet in `buf[HEADROOM..HEADROOM + len]` for the peer that
    /// owns its destination. On success the datagram to send is `buf[..transmit.len]`.
    /// On failure the packet is counted as dropped and the reason returned.
    #[inline]
    pub fn encapsulate(&mut self, buf: &mut [u8], len: usize) -> Result<Transmit, DropReason> {
        let result = self.encapsulate_inner(buf, len);
        if let Err(reason) = result {
            self.stats.tx.drop(reason);
        }
        result
    }

    /// Finds the live peer that owns the destination of the IP `packet` and writes the
    /// VXLAN and inner Ethernet headers for it into `prefix` (`HEADROOM` bytes). Shared
    /// by the plain and the offload paths; a dead peer's drop is counted against it.
    /// Returns the peer's index and underlay address.
    #[inline(always)]
    fn route_and_emit(
        &self,
        packet: &[u8],
        prefix: &mut [u8],
    ) -> Result<(u32, SocketAddr), DropReason> {
        let header = IpHeader::parse(packet).map_err(|_| DropReason::MalformedOutbound)?;
        let ethertype = match header.dst {
            IpAddr::V4(_) => EtherType::Ipv4,
            IpAddr::V6(_) => EtherType::Ipv6,
        };
        let idx = self
            .fib
            .lookup_index(header.dst)
            .ok_or(DropReason::UnknownSubnet)?;
        let peer: &Peer = &self.fib.peers()[idx as usize];
        if peer.state == PeerState::Dead {
            peer.stats.tx_dropped.add_shared(1, packet.len());
            return Err(DropReason::PeerDead);
        }
        let (vxlan, eth) = prefix.split_at_mut(wire::vxlan::HEADER_LEN);
        VxlanRepr {
            vni: self.config.vni,
        }
        .emit(&mut VxlanPacket::new_unchecked(vxlan));
        let mut frame = EthernetFrame::new_unchecked(eth);
        frame.set_dst_addr(peer.vtep_mac);
        frame.set_src_addr(self.config.local_mac);
        frame.set_ethertype(ethertype);
        Ok((idx, peer.underlay))
    }

    #[inline(always)]
    fn encapsulate_inner(&mut self, buf: &mut [u8], len: usize) -> Result<Transmit, DropReason> {
        let total = HEADROOM.checked_add(len).filter(|t| *t <= buf.len());
        let Some(total) = total else {
            return Err(DropReason::MalformedOutbound);
        };
        let (prefix, rest) = buf[..total].split_at_mut(HEADROOM);
        let (peer, underlay) = self.route_and_emit(rest, prefix)?;
        self.count_peer(peer, 1, len);
        self.stats.tx.forwarded.add(len);
        Ok(Transmit {
            dst: underlay,
            len: total,
            flow: flow_hash(rest),
        })
    }
}

/// Where a TUN read goes in a packet buffer: at `HEADROOM - VNET_HDR_LEN` when the TUN
/// puts a virtio-net header in front of every packet (`vnet`), so that the IP packet
/// always starts at `HEADROOM`; at `HEADROOM` otherwise.
pub(crate) const fn tun_read_offset(vnet: bool) -> usize {
    if vnet {
        HEADROOM - VNET_HDR_LEN
    } else {
        HEADROOM
    }
}

impl Encapsulator {
    /// Encapsulates one TUN read into `batch`: the outbound entry point, with and
    /// without offloads. The read is `read` bytes at `buf[tun_read_offset(vnet)..]`,
    /// so the IP packet starts at `buf[HEADROOM..]`; with `vnet` a virtio-net header
    /// sits in front of it.
    ///
    /// A plain packet (its partial checksum completed if the kernel left one) is
    /// encapsulated in place as [`Self::encapsulate`] does; a TSO/USO super-packet is
    /// split into MSS-sized inner packets, each with its own headers in a slot of
    /// `batch`, payloads left where they are. `buf_id` names `buf` in the datagrams
    /// pushed. Returns how many datagrams were pushed; on failure the packet is
    /// counted as dropped and the reason returned.
    ///
    /// The caller keeps at least [`offload::MAX_SEGMENTS_PER_PACKET`] slots free;
    /// a super-packet that does not fit is dropped as malformed.
    #[inline]
    pub fn encapsulate_read(
        &mut self,
        buf: &mut [u8],
        read: usize,
        vnet: bool,
        buf_id: u32,
        batch: &mut TxBatch,
    ) -> Result<usize, DropReason> {
        let result = if vnet {
            match read.checked_sub(VNET_HDR_LEN) {
                Some(len) => self.encapsulate_vnet_inner(buf, len, buf_id, batch),
                None => Err(DropReason::MalformedOutbound),
            }
        } else {
            self.encapsulate_in_place(buf, read, buf_id, batch)
        };
        if let Err(reason) = result {
            self.stats.tx.drop(reason);
        }
        result
    }

    /// Encapsulates the plain IP packet in `buf[HEADROOM..HEADROOM + len]` in place
    /// and pushes it into `batch` as one datagram.
    #[inline(always)]
    fn encapsulate_in_place(
        &mut self,
        buf: &mut [u8],
        len: usize,
        buf_id: u32,
        batch: &mut TxBatch,
    ) -> Result<usize, DropReason> {
        let tx = self.encapsulate_inner(buf, len)?;
        let dst = TxDest {
            addr: tx.dst,
            flow: tx.flow,
        };
        batch.push_in_place(dst, buf_id, tx.len);
        Ok(1)
    }

    fn encapsulate_vnet_inner(
        &mut self,
        buf: &mut [u8],
        len: usize,
        buf_id: u32,
        batch: &mut TxBatch,
    ) -> Result<usize, DropReason> {
        let total = HEADROOM.checked_add(len).filter(|t| *t <= buf.len());
        let Some(total) = total else {
            return Err(DropReason::MalformedOutbound);
        };
        let hdr = VnetHdr::parse(&buf[HEADROOM - VNET_HDR_LEN..HEADROOM])
            .ok_or(DropReason::MalformedOutbound)?;
        if hdr.gso_type == offload::VNET_GSO_NONE {
            if hdr.flags & offload::VNET_F_NEEDS_CSUM != 0
                && !offload::complete_checksum(&hdr, &mut buf[HEADROOM..total])
            {
                return Err(DropReason::MalformedOutbound);
            }
            return self.encapsulate_in_place(buf, len, buf_id, batch);
        }
        let packet = &buf[HEADROOM..total];
        let mut prefix = [0u8; HEADROOM];
        let (peer, underlay) = self.route_and_emit(packet, &mut prefix)?;
        let first = batch.datagrams().len();
        let dst = TxDest {
            addr: underlay,
            flow: flow_hash(packet),
        };
        let n = offload::segment(&hdr, packet, &prefix, dst, buf_id, HEADROOM, batch)
            .map_err(|_| DropReason::MalformedOutbound)?;
        let mut bytes = 0;
        for d in &batch.datagrams()[first..] {
            let inner = d.len() - HEADROOM;
            bytes += inner;
            self.stats.tx.forwarded.add(inner);
        }
        self.count_peer(peer, n as u64, bytes);
        Ok(n)
    }
}

/// Inbound half: VXLAN datagrams from peers to TUN packets.
#[derive(Debug)]
pub struct Decapsulator {
    config: EncapConfig,
    fib: Arc<Fib>,
    stats: Arc<Stats>,
    tally: PeerTally,
}

impl Decapsulator {
    /// A decapsulator accepting peers of `fib` and counting into `stats`.
    pub fn new(config: EncapConfig, fib: Arc<Fib>, stats: Arc<Stats>) -> Decapsulator {
        Decapsulator {
            config,
            fib,
            stats,
            tally: PeerTally::EMPTY,
        }
    }

    /// Replaces the forwarding table (membership changed).
    pub(crate) fn set_fib(&mut self, fib: Arc<Fib>) {
        self.flush_peer_stats();
        self.fib = fib;
    }

    /// Adds the traffic counted since the last call to the peers' shared counters.
    pub fn flush_peer_stats(&mut self) {
        self.tally.flush(&self.fib, false);
    }

    #[cold]
    #[inline(never)]
    fn switch_peer(&mut self, peer: u32) {
        self.tally.flush(&self.fib, false);
        self.tally.peer = peer;
    }

    /// Checks a datagram received from `from` and returns the range of its inner IP
    /// packet (Ethernet padding trimmed). A datagram is accepted only when its flags
    /// and VNI are ours, the sender is a known peer, the inner destination MAC is our
    /// VTEP MAC, and the inner packet is well-formed IPv4/IPv6 from inside the peer's
    /// subnet. Anything else is counted by reason and dropped.
    #[inline]
    pub fn decapsulate(
        &mut self,
        from: IpAddr,
        datagram: &[u8],
    ) -> Result<Range<usize>, DropReason> {
        let result = self.decapsulate_inner(from, datagram);
        if let Err(reason) = result {
            self.stats.rx.drop(reason);
        }
        result
    }

    fn decapsulate_inner(
        &mut self,
        from: IpAddr,
        datagram: &[u8],
    ) -> Result<Range<usize>, DropReason> {
        if datagram.len() < HEADROOM {
            return Err(DropReason::ShortDatagram);
        }
        let vxlan = VxlanPacket::new_unchecked(datagram);
        let repr = VxlanRepr::parse(&vxlan).map_err(|_| DropReason::BadFlags)?;
        if repr.vni != self.config.vni {
            return Err(DropReason::BadVni);
        }
        let idx = self
            .fib
            .underlay_index(from)
            .ok_or(DropReason::UnknownSender)?;
        let peer: &Peer = &self.fib.peers()[idx as usize];
        let len = match self.check_inner(peer, vxlan.payload()) {
            Ok(len) => len,
            Err(reason) => {
                peer.stats.rx_dropped.add_shared(1, datagram.len());
                return Err(reason);
            }
        };
        if self.tally.peer != idx {
            self.switch_peer(idx);
        }
        self.tally.add(1, len);
        self.stats.rx.forwarded.add(len);
        Ok(HEADROOM..HEADROOM + len)
    }

    /// Checks what a known `peer` sent (the inner Ethernet `frame`): the peer is
    /// alive, the frame is for our VTEP MAC and holds a well-formed IPv4/IPv6 packet
    /// from inside the peer's subnet. Returns the inner packet's length.
    #[inline(always)]
    fn check_inner(&self, peer: &Peer, frame: &[u8]) -> Result<usize, DropReason> {
        if peer.state == PeerState::Dead {
            return Err(DropReason::DeadSender);
        }
        let frame = EthernetFrame::new_unchecked(frame);
        if frame.dst_addr() != self.config.local_mac {
            return Err(DropReason::WrongDstMac);
        }
        let version_ok = match frame.ethertype() {
            EtherType::Ipv4 => 4,
            EtherType::Ipv6 => 6,
            EtherType::Other(_) => return Err(DropReason::NotIp),
        };
        let inner = frame.payload();
        if inner.first().map(|b| b >> 4) != Some(version_ok) {
            return Err(DropReason::MalformedInner);
        }
        let header = IpHeader::parse(inner).map_err(|_| DropReason::MalformedInner)?;
        if !peer.allow_any_source && !peer.owns(&header.src) {
            return Err(DropReason::SpoofedSource);
        }
        Ok(header.total_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fib::tests::peer;
    use etherparse::PacketBuilder;

    const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
    const PEER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

    fn setup() -> (Encapsulator, Decapsulator, Arc<Stats>) {
        let fib = Arc::new(
            Fib::new(vec![
                peer("n2", "10.244.2.0/24", "198.18.0.2:4789"),
                peer("n3", "10.244.3.0/24", "198.18.0.3:4789"),
            ])
            .unwrap(),
        );
        let stats = Arc::new(Stats::default());
        let config = EncapConfig {
            vni: 1,
            local_mac: LOCAL_MAC,
        };
        (
            Encapsulator::new(config, fib.clone(), stats.clone()),
            Decapsulator::new(config, fib, stats.clone()),
            stats,
        )
    }

    /// A UDP packet built by etherparse, an independent implementation.
    fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4(src, dst, 64).udp(1000, 2000);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// A datagram as a Linux vxlan device (VNI 1) sends it to us from peer n2.
    fn kernel_datagram(inner: &[u8]) -> Vec<u8> {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(&LOCAL_MAC.0);
        d.extend_from_slice(&PEER_MAC.0);
        d.extend_from_slice(&[0x08, 0x00]);
        d.extend_from_slice(inner);
        d
    }

    #[test]
    fn peer_counters_are_added_once_per_run_and_on_flush() {
        let (mut enc, mut dec, _) = setup();
        let to_n2 = udp_packet([10, 244, 1, 5], [10, 244, 2, 7], b"hello");
        let to_n3 = udp_packet([10, 244, 1, 5], [10, 244, 3, 7], b"hi");
        let mut buf = vec![0u8; 256];
        for p in [&to_n2, &to_n2, &to_n3, &to_n2] {
            buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
            enc.encapsulate(&mut buf, p.len()).unwrap();
        }
        let peers = enc.fib.clone();
        let (n2, n3) = (&peers.peers()[0].stats, &peers.peers()[1].stats);
        // The last run (one packet to n2) is still pending.
        assert_eq!(n2.tx.get(), (2, 2 * to_n2.len() as u64));
        assert_eq!(n3.tx.get(), (1, to_n3.len() as u64));
        enc.flush_peer_stats();
        enc.flush_peer_stats();
        assert_eq!(n2.tx.get(), (3, 3 * to_n2.len() as u64));
        let inner = udp_packet([10, 244, 2, 9], [10, 244, 1, 5], b"back");
        dec.decapsulate("198.18.0.2".parse().unwrap(), &kernel_datagram(&inner))
            .unwrap();
        assert_eq!(n2.rx.get(), (0, 0));
        // A new table flushes what the old one counted.
        dec.set_fib(peers.clone());
        assert_eq!(n2.rx.get(), (1, inner.len() as u64));
    }

    #[test]
    fn encapsulate_writes_headers_in_place() {
        let (mut enc, _, stats) = setup();
        let inner = udp_packet([10, 244, 1, 5], [10, 244, 3, 7], b"hello");
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let tx = enc.encapsulate(&mut buf, inner.len()).unwrap();
        assert_eq!(tx.dst, "198.18.0.3:4789".parse().unwrap());
        assert_eq!(tx.len, HEADROOM + inner.len());
        let d = &buf[..tx.len];
        assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&d[8..14], &PEER_MAC.0);
        assert_eq!(&d[14..20], &LOCAL_MAC.0);
        assert_eq!(&d[20..22], &[0x08, 0x00]);
        assert_eq!(&d[22..], &inner[..]);
        // The frame decodes with etherparse as Ethernet + IPv4 + UDP + payload.
        let sliced = etherparse::SlicedPacket::from_ethernet(&d[8..]).unwrap();
        match sliced.transport {
            Some(etherparse::TransportSlice::Udp(udp)) => assert_eq!(udp.payload(), b"hello"),
            other => panic!("not UDP: {other:?}"),
        }
        assert_eq!(stats.snapshot().tx_packets, 1);
    }

    #[test]
    fn encapsulate_read_pushes_what_encapsulate_writes() {
        use crate::dataplane::batch::Head;
        let (mut enc, _, stats) = setup();
        let inner = udp_packet([10, 244, 1, 5], [10, 244, 3, 7], b"hello");
        let mut plain = vec![0u8; 2048];
        plain[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let mut again = plain.clone();
        let mut batch = TxBatch::new(4);
        // Without a virtio header: one datagram, in place, as `encapsulate` makes it.
        assert_eq!(
            enc.encapsulate_read(&mut plain, inner.len(), false, 3, &mut batch),
            Ok(1)
        );
        let tx = enc.encapsulate(&mut again, inner.len()).unwrap();
        let d = &batch.datagrams()[0];
        assert_eq!(
            (d.dst, d.flow, d.buf, d.head),
            (tx.dst, tx.flow, 3, Head::InPlace)
        );
        assert_eq!(d.body, 0..tx.len as u32);
        assert_eq!(plain[..tx.len], again[..tx.len]);
        // With one: a zero header (no GSO) then the same packet.
        let mut vnet = vec![0u8; 2048];
        vnet[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let read = VNET_HDR_LEN + inner.len();
        assert_eq!(tun_read_offset(true) + read, HEADROOM + inner.len());
        assert_eq!(
            enc.encapsulate_read(&mut vnet, read, true, 4, &mut batch),
            Ok(1)
        );
        assert_eq!(batch.datagrams()[1].body, 0..tx.len as u32);
        assert_eq!(vnet[..tx.len], again[..tx.len]);
        // A read shorter than the virtio header is a counted drop that pushes nothing.
        assert_eq!(
            enc.encapsulate_read(&mut vnet, VNET_HDR_LEN - 1, true, 5, &mut batch),
            Err(DropReason::MalformedOutbound)
        );
        assert_eq!(batch.datagrams().len(), 2);
        let snap = stats.snapshot();
        assert_eq!(snap.tx_packets, 3);
        assert_eq!(snap.drops["malformed_outbound"], 1);
    }

    #[test]
    fn encapsulate_counts_drops() {
        let (mut enc, _, stats) = setup();
        let mut buf = vec![0u8; 2048];
        let inner = udp_packet([10, 244, 1, 5], [10, 244, 9, 7], b"x");
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        assert_eq!(
            enc.encapsulate(&mut buf, inner.len()),
            Err(DropReason::UnknownSubnet)
        );
        assert_eq!(
            enc.encapsulate(&mut buf, 3),
            Err(DropReason::MalformedOutbound)
        );
        assert_eq!(
            enc.encapsulate(&mut buf, 5000),
            Err(DropReason::MalformedOutbound)
        );
        let snap = stats.snapshot();
        assert_eq!(snap.drops["unknown_subnet"], 1);
        assert_eq!(snap.drops["malformed_outbound"], 2);
    }

    #[test]
    fn datagrams_from_a_dead_peer_are_dropped() {
        let mut dead = peer("n2", "10.244.2.0/24", "198.18.0.2:4789");
        dead.state = PeerState::Dead;
        let stats = Arc::new(Stats::default());
        let config = EncapConfig {
            vni: 1,
            local_mac: LOCAL_MAC,
        };
        let fib = Arc::new(Fib::new(vec![dead]).unwrap());
        let mut dec = Decapsulator::new(config, fib.clone(), stats.clone());
        let inner = udp_packet([10, 244, 2, 5], [10, 244, 1, 7], b"x");
        let d = kernel_datagram(&inner);
        assert_eq!(
            dec.decapsulate("198.18.0.2".parse().unwrap(), &d),
            Err(DropReason::DeadSender)
        );
        assert_eq!(stats.snapshot().drops["dead_sender"], 1);
        assert_eq!(
            fib.peer_by_underlay("198.18.0.2".parse().unwrap())
                .unwrap()
                .stats
                .rx_dropped
                .get()
                .0,
            1
        );
    }

    #[test]
    fn dead_peer_is_dropped() {
        let mut dead = peer("n2", "10.244.2.0/24", "198.18.0.2:4789");
        dead.state = PeerState::Dead;
        let stats = Arc::new(Stats::default());
        let config = EncapConfig {
            vni: 1,
            local_mac: LOCAL_MAC,
        };
        let mut enc = Encapsulator::new(
            config,
            Arc::new(Fib::new(vec![dead]).unwrap()),
            stats.clone(),
        );
        let inner = udp_packet([10, 244, 1, 5], [10, 244, 2, 7], b"x");
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        assert_eq!(
            enc.encapsulate(&mut buf, inner.len()),
            Err(DropReason::PeerDead)
        );
    }

    #[test]
    fn decapsulate_accepts_kernel_datagram() {
        let (_, mut dec, stats) = setup();
        let inner = udp_packet([10, 244, 2, 5], [10, 244, 1, 7], b"hi");
        let mut d = kernel_datagram(&inner);
        // Ethernet padding after the IP packet is trimmed.
        d.extend_from_slice(&[0; 6]);
        let range = dec.decapsulate("198.18.0.2".parse().unwrap(), &d).unwrap();
        assert_eq!(&d[range], &inner[..]);
        assert_eq!(stats.snapshot().rx_packets, 1);
    }

    #[test]
    fn round_trip_between_two_nodes() {
        let (mut enc, _, _) = setup();
        // Node n3 receives what we send; from its side we are peer "n1".
        let n3_fib = Arc::new(
            Fib::new(vec![{
                let mut p = peer("n1", "10.244.1.0/24", "198.18.0.1:4789");
                p.vtep_mac = LOCAL_MAC;
                p
            }])
            .unwrap(),
        );
        let n3_config = EncapConfig {
            vni: 1,
            local_mac: PEER_MAC,
        };
        let mut n3 = Decapsulator::new(n3_config, n3_fib, Arc::default());
        let inner = udp_packet([10, 244, 1, 5], [10, 244, 3, 7], &[7u8; 1000]);
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let tx = enc.encapsulate(&mut buf, inner.len()).unwrap();
        let range = n3
            .decapsulate("198.18.0.1".parse().unwrap(), &buf[..tx.len])
            .unwrap();
        assert_eq!(&buf[range], &inner[..]);
    }

    #[test]
    fn decapsulate_drops_by_reason() {
        let (_, mut dec, stats) = setup();
        let from = "198.18.0.2".parse().unwrap();
        let good = kernel_datagram(&udp_packet([10, 244, 2, 5], [10, 244, 1, 7], b"hi"));
        let cases: Vec<(Vec<u8>, IpAddr, DropReason)> = vec![
            (good[..10].to_vec(), from, DropReason::ShortDatagram),
            (
                {
                    let mut d = good.clone();
                    d[0] = 0x0c;
                    d
                },
                from,
                DropReason::BadFlags,
            ),
            (
                {
                    let mut d = good.clone();
                    d[6] = 2;
                    d
                },
                from,
                DropReason::BadVni,
            ),
            (
                good.clone(),
                "198.18.9.9".parse().unwrap(),
                DropReason::UnknownSender,
            ),
            (
                {
                    let mut d = good.clone();
                    d[8] = 0xff;
                    d
                },
                from,
                DropReason::WrongDstMac,
            ),
            (
                {
                    let mut d = good.clone();
                    d[20..22].copy_from_slice(&[0x08, 0x06]);
                    d
                },
                from,
                DropReason::NotIp,
            ),
            // The inner length lies: total length 200 in a 30-byte packet.
            (
                {
                    let mut d = good.clone();
                    d[24..26].copy_from_slice(&200u16.to_be_bytes());
                    d
                },
                from,
                DropReason::MalformedInner,
            ),
            // IPv6 EtherType over an IPv4 packet.
            (
                {
                    let mut d = good.clone();
                    d[20..22].copy_from_slice(&[0x86, 0xdd]);
                    d
                },
                from,
                DropReason::MalformedInner,
            ),
            (
                kernel_datagram(&udp_packet([10, 244, 3, 5], [10, 244, 1, 7], b"hi")),
                from,
                DropReason::SpoofedSource,
            ),
        ];
        for (datagram, from, reason) in &cases {
            assert_eq!(dec.decapsulate(*from, datagram), Err(*reason), "{reason:?}");
        }
        let snap = stats.snapshot();
        for (_, _, reason) in &cases {
            assert!(snap.drops[reason.as_str()] >= 1, "{reason:?} not counted");
        }
        assert_eq!(snap.rx_packets, 0);
    }

    proptest::proptest! {
        #[test]
        fn decapsulate_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let (_, mut dec, _) = setup();
            let _ = dec.decapsulate("198.18.0.2".parse().unwrap(), &bytes);
        }

        #[test]
        fn encapsulate_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), extra in 0usize..300) {
            let (mut enc, _, _) = setup();
            let mut buf = vec![0u8; HEADROOM + bytes.len()];
            buf[HEADROOM..].copy_from_slice(&bytes);
            let _ = enc.encapsulate(&mut buf, bytes.len() + extra % 3);
        }
    }
}
