//! The inner flow of a packet, as a hash: it picks the outer UDP source port
//! ([RFC 7348 §5]: "it is recommended that the UDP source port number be calculated
//! using a hash of fields from the inner packet"), as the Linux vxlan driver does
//! with `udp_flow_src_port`.
//!
//! The hash covers the inner addresses, the protocol and, for TCP, UDP, SCTP and
//! UDP-Lite packets that are not fragments, the ports. Every packet of one flow (and
//! every segment of one TSO super-packet) hashes the same, so a flow keeps one outer
//! source port and stays on one receive queue or worker of the peer, in order, while
//! different flows spread over them. Pure code, no allocation; the driver maps the
//! hash to one of its source ports with [`source_index`].
//!
//! [RFC 7348 §5]: https://www.rfc-editor.org/rfc/rfc7348#section-5

/// Hashes the flow of the IP `packet` (IPv4 or IPv6 header first). Packets too short
/// to carry what is hashed hash what they have; the result is only ever a spread.
#[inline]
pub fn flow_hash(packet: &[u8]) -> u32 {
    let (addrs, tail) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let addrs = u64::from_ne_bytes(packet[12..20].try_into().unwrap_or_default());
            let proto = packet[9];
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            (addrs, ports(packet, ihl, proto, fragment))
        }
        Some(6) if packet.len() >= 40 => {
            let word =
                |i: usize| u64::from_ne_bytes(packet[i..i + 8].try_into().unwrap_or_default());
            let addrs = word(8)
                ^ word(16).rotate_left(16)
                ^ word(24).rotate_left(32)
                ^ word(32).rotate_left(48);
            (addrs, ports(packet, 40, packet[6], false))
        }
        _ => (0, 0),
    };
    mix(addrs, tail)
}

/// The protocol, and the ports when it has them and the packet is not a fragment.
#[inline]
fn ports(packet: &[u8], at: usize, proto: u8, fragment: bool) -> u64 {
    let ports = match packet.get(at..at + 4) {
        Some(p) if !fragment && has_ports(proto) => u32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
        _ => 0,
    };
    u64::from(ports) << 8 | u64::from(proto)
}

/// TCP, UDP, SCTP and UDP-Lite carry 16-bit ports in their first four bytes.
#[inline]
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// Two multiplications by odd constants (from splitmix64/wyhash) fold 104 bits into
/// 32 whose high bits, which [`source_index`] uses, depend on every input bit.
#[inline]
fn mix(a: u64, b: u64) -> u32 {
    let h = (a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((h >> 32) ^ h) as u32
}

/// Maps `hash` onto `0..n` (n ≥ 1) without a division, as the kernel's
/// `reciprocal_scale` does: the high bits of `hash * n`.
#[inline]
pub fn source_index(hash: u32, n: usize) -> usize {
    ((u64::from(hash) * n as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(src_port, dst_port, 1, 1000)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn one_flow_one_hash_whatever_the_payload() {
        let a = flow_hash(&tcp(40000, 5201, b"first"));
        let b = flow_hash(&tcp(40000, 5201, &[7u8; 1000]));
        assert_eq!(a, b);
        assert_ne!(a, flow_hash(&tcp(40001, 5201, b"first")));
    }

    #[test]
    fn fragments_hash_on_addresses_only() {
        let mut first = tcp(40000, 5201, b"x");
        let mut other = tcp(40001, 5202, b"x");
        // More-fragments on both, as a first fragment would carry it.
        first[6] |= 0x20;
        other[6] |= 0x20;
        assert_eq!(flow_hash(&first), flow_hash(&other));
    }

    #[test]
    fn ipv6_flows_differ_by_port() {
        let v6 = |port| {
            let mut out = Vec::new();
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
                .udp(port, 53)
                .write(&mut out, b"q")
                .unwrap();
            out
        };
        assert_eq!(flow_hash(&v6(1000)), flow_hash(&v6(1000)));
        assert_ne!(flow_hash(&v6(1000)), flow_hash(&v6(1001)));
    }

    #[test]
    fn flows_spread_over_source_ports() {
        // 4,000 client ports over 16 source ports: each gets its share within 30 %.
        let mut counts = [0usize; 16];
        for port in 30000..34000 {
            counts[source_index(flow_hash(&tcp(port, 5201, b"")), 16)] += 1;
        }
        for c in counts {
            assert!((175..=325).contains(&c), "uneven spread: {counts:?}");
        }
        assert_eq!(source_index(u32::MAX, 16), 15);
        assert_eq!(source_index(0, 16), 0);
    }

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..48 {
            let mut p = vec![0x45u8; len];
            let _ = flow_hash(&p);
            if let Some(b) = p.first_mut() {
                *b = 0x6f;
            }
            let _ = flow_hash(&p);
        }
    }
}
