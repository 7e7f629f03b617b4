//! Offloads of a TUN with `IFF_VNET_HDR` (sans-IO): TSO/USO in, GRO out.
//!
//! - [`vnet`]: the virtio-net header in front of every TUN read and write.
//! - [`segment`]: splits a TSO/USO super-packet read from the TUN into inner packets
//!   for a [`TxBatch`](super::batch::TxBatch).
//! - [`coalesce`]: merges received TCP segments (and UDP datagrams, with USO) into
//!   super-packets to write to the TUN.
//!
//! Nothing here touches an fd; the driver owns the buffers and passes them in. Packets
//! that cannot be segmented are counted drops; packets that cannot be coalesced are
//! written alone.

pub mod coalesce;
pub mod segment;
pub mod vnet;

pub use coalesce::{Coalescer, Piece, TunWrite, MAX_COALESCE};
pub use segment::{segment, SegmentError, MAX_SEGMENTS_PER_PACKET};
pub use vnet::{
    complete_checksum, VnetHdr, VNET_F_NEEDS_CSUM, VNET_GSO_ECN, VNET_GSO_NONE, VNET_GSO_TCPV4,
    VNET_GSO_TCPV6, VNET_GSO_UDP_L4, VNET_HDR_LEN,
};

/// Packets and batch helpers shared by the offload tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataplane::batch::{Head, TxBatch, TxDatagram};
    use crate::dataplane::wire::checksum;
    use etherparse::PacketBuilder;

    pub(crate) fn tcp_packet(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
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

    pub(crate) fn tcp6_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 5201, seq, 1000)
            .ack(77);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// A super-packet as the kernel hands it over: full length, partial checksum.
    pub(crate) fn tso(mut p: Vec<u8>, gso_size: u16, v4: bool) -> (VnetHdr, Vec<u8>) {
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

    pub(crate) fn datagram_bytes(batch: &TxBatch, d: &TxDatagram, packet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Head::Slot(n) = d.head {
            out.extend_from_slice(batch.slot(n, d.head_len));
        }
        out.extend_from_slice(&packet[d.body.start as usize..d.body.end as usize]);
        out
    }

    pub(crate) fn udp_packet(src_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .udp(src_port, 5201)
            .write(&mut out, payload)
            .unwrap();
        out
    }
}
