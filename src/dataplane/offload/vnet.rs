//! The virtio-net header (`struct virtio_net_hdr`) in front of every packet read
//! from or written to a TUN with `IFF_VNET_HDR`: its constants, a parse/emit view,
//! and the completion of a partial checksum the kernel leaves for us to finish.

use crate::dataplane::wire::checksum;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::offload::tests::{tcp_packet, tso};

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
}
