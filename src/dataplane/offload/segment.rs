//! TSO/USO segmentation (sans-IO): splits a super-packet read from an `IFF_VNET_HDR`
//! TUN into MSS-sized inner packets, each behind its own VXLAN and inner Ethernet
//! header, into a [`TxBatch`]. The headers of each segment go to a slot of the
//! batch's arena with their lengths, IPv4 ID, TCP sequence number and flags fixed and
//! checksums computed; the payloads stay where the TUN read put them.

use super::vnet::{VnetHdr, VNET_GSO_ECN, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4};
use crate::dataplane::batch::{TxBatch, TxDest, SLOT_LEN};
use crate::dataplane::wire::checksum;

/// Largest number of inner segments one super-packet may produce (64 KiB at the
/// smallest MSS Linux allows, 48 bytes).
pub const MAX_SEGMENTS_PER_PACKET: usize = 1400;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::offload::tests::{datagram_bytes, tcp6_packet, tcp_packet, tso};
    use crate::dataplane::offload::VNET_F_NEEDS_CSUM;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

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
}
