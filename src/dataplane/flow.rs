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
    let mut h = Hasher::default();
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            h.word(&packet[12..16]);
            h.word(&packet[16..20]);
            let proto = packet[9];
            h.add(u32::from(proto));
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if !fragment && has_ports(proto) {
                if let Some(ports) = packet.get(ihl..ihl + 4) {
                    h.word(ports);
                }
            }
        }
        Some(6) if packet.len() >= 40 => {
            for w in packet[8..40].chunks_exact(4) {
                h.word(w);
            }
            let next = packet[6];
            h.add(u32::from(next));
            if has_ports(next) {
                if let Some(ports) = packet.get(40..44) {
                    h.word(ports);
                }
            }
        }
        _ => {}
    }
    h.finish()
}

/// TCP, UDP, SCTP and UDP-Lite carry 16-bit ports in their first four bytes.
#[inline]
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// Maps `hash` onto `0..n` (n ≥ 1) without a division, as the kernel's
/// `reciprocal_scale` does: the high bits of `hash * n`.
#[inline]
pub fn source_index(hash: u32, n: usize) -> usize {
    ((u64::from(hash) * n as u64) >> 32) as usize
}

/// A small multiplicative hash over 32-bit words with a final avalanche
/// (murmur3's `fmix32`), so that the high bits used by [`source_index`] depend on
/// every input bit.
#[derive(Default)]
struct Hasher(u32);

impl Hasher {
    #[inline]
    fn add(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9);
    }

    #[inline]
    fn word(&mut self, w: &[u8]) {
        self.add(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }

    #[inline]
    fn finish(self) -> u32 {
        let mut h = self.0;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
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
