//! ICMP destination-unreachable replies for packets the dataplane cannot forward
//! (no peer owns the destination, or the owner is dead), so the sending pod's stack
//! learns at once instead of timing out. RFC 792 for ICMPv4, RFC 4443 for ICMPv6.
//!
//! Sans-IO: [`unreachable`] writes the reply into a caller buffer; [`RateLimit`] is a
//! token bucket driven by the caller's `now`, so a flood to a dead peer costs at most
//! `rate` replies per second.
//!
//! ```text
//! ICMPv4 error: | IPv4 header (20) | type | code | checksum | unused (4) | original IP header + 8 bytes |
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use super::wire::ipv4::{checksum, checksum_parts};
use super::wire::{IpHeader, Ipv4Packet, Ipv6Packet};

/// Largest reply this module writes.
pub const MAX_REPLY: usize = 1280;

/// Why the destination is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No peer owns the destination subnet (ICMPv4 net unreachable, ICMPv6 no route).
    NoRoute,
    /// The owner is declared dead (ICMPv4 host unreachable, ICMPv6 address unreachable).
    PeerDead,
}

/// Writes an ICMP destination-unreachable reply to `packet` into `out`, sent from
/// `router` (this node's gateway address of the same family). Returns its length, or
/// `None` when no reply is due: the packet is malformed, is itself an ICMP error, has
/// a multicast, broadcast or unspecified source, or `router` is of the other family.
pub fn unreachable(
    packet: &[u8],
    why: Unreachable,
    router: IpAddr,
    out: &mut [u8],
) -> Option<usize> {
    let header = IpHeader::parse(packet).ok()?;
    match (header.src, router) {
        (IpAddr::V4(src), IpAddr::V4(router)) => v4(packet, src, why, router, out),
        (IpAddr::V6(src), IpAddr::V6(router)) => v6(packet, src, why, router, out),
        _ => None,
    }
}

fn v4(
    packet: &[u8],
    src: Ipv4Addr,
    why: Unreachable,
    router: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let p = Ipv4Packet::new_checked(packet).ok()?;
    if src.is_multicast() || src.is_broadcast() || src.is_unspecified() {
        return None;
    }
    let hl = p.header_len();
    // Never answer an ICMP error with an error (RFC 1122 §3.2.2): types 3, 4, 5, 11, 12.
    if p.protocol() == 1 && matches!(packet.get(hl), Some(3 | 4 | 5 | 11 | 12)) {
        return None;
    }
    // Only the first fragment carries the headers a sender can match.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0 {
        return None;
    }
    let quoted = (hl + 8).min(usize::from(p.total_len()));
    let len = 20 + 8 + quoted;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&router.octets());
    out[16..20].copy_from_slice(&src.octets());
    let ip_sum = checksum(&out[..20]);
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out[20] = 3;
    out[21] = match why {
        Unreachable::NoRoute => 0,
        Unreachable::PeerDead => 1,
    };
    out[28..].copy_from_slice(&packet[..quoted]);
    let icmp_sum = checksum(&out[20..]);
    out[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(len)
}

fn v6(
    packet: &[u8],
    src: Ipv6Addr,
    why: Unreachable,
    router: Ipv6Addr,
    out: &mut [u8],
) -> Option<usize> {
    let p = Ipv6Packet::new_checked(packet).ok()?;
    if src.is_multicast() || src.is_unspecified() {
        return None;
    }
    // ICMPv6 errors have types below 128 (RFC 4443 §2.4 e.1).
    if p.next_header() == 58 && packet.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quoted = p.total_len().min(MAX_REPLY - 48);
    let len = 48 + quoted;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&router.octets());
    out[24..40].copy_from_slice(&src.octets());
    out[40] = 1;
    out[41] = match why {
        Unreachable::NoRoute => 0,
        Unreachable::PeerDead => 3,
    };
    out[48..].copy_from_slice(&packet[..quoted]);
    // Checksum over the pseudo-header (RFC 8200 §8.1) and the ICMPv6 message.
    let upper_len = ((len - 40) as u32).to_be_bytes();
    let (addrs, message) = out[8..len].split_at(32);
    let sum = checksum_parts(&[addrs, &upper_len, &[0, 0, 0, 58], message]);
    out[42..44].copy_from_slice(&sum.to_be_bytes());
    Some(len)
}

/// A token bucket: at most `rate` replies per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl RateLimit {
    /// A limiter allowing `rate` replies per second.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate,
            tokens: rate,
            last: None,
        }
    }

    /// True if a reply may be sent at `now` (and takes a token).
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            let refill = (elapsed.as_secs_f64() * f64::from(self.rate)) as u32;
            if refill > 0 {
                self.tokens = self.tokens.saturating_add(refill).min(self.rate);
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};
    use std::time::Duration;

    fn udp4() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 9, 9], 64)
            .udp(40000, 53)
            .write(&mut out, b"query")
            .unwrap();
        out
    }

    #[test]
    fn v4_reply_decodes_and_quotes_the_packet() {
        let packet = udp4();
        let mut out = [0u8; MAX_REPLY];
        let n = unreachable(
            &packet,
            Unreachable::PeerDead,
            "10.244.1.1".parse().unwrap(),
            &mut out,
        )
        .unwrap();
        let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 244, 1, 5));
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("not ICMP")
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(_)
        ));
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
        assert_eq!(icmp.payload(), &packet[..28]);
        // Our own IPv4 view agrees the header checksum is right.
        assert!(Ipv4Packet::new_checked(&out[..n])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn v6_reply_has_a_valid_checksum() {
        let mut packet = Vec::new();
        PacketBuilder::ipv6(
            "fd00:1::5".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00:9::9".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .udp(40000, 53)
        .write(&mut packet, b"query")
        .unwrap();
        let mut out = [0u8; MAX_REPLY];
        let n = unreachable(
            &packet,
            Unreachable::NoRoute,
            "fd00:1::1".parse().unwrap(),
            &mut out,
        )
        .unwrap();
        let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("not ICMPv6")
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::DestinationUnreachable(_)
        ));
        let expected = icmp
            .icmp_type()
            .calc_checksum(
                ip.header().source(),
                ip.header().destination(),
                icmp.payload(),
            )
            .unwrap();
        assert_eq!(expected, icmp.checksum());
    }

    #[test]
    fn no_reply_to_errors_garbage_or_other_family() {
        let mut out = [0u8; MAX_REPLY];
        let packet = udp4();
        let mut reply = [0u8; MAX_REPLY];
        let n = unreachable(
            &packet,
            Unreachable::NoRoute,
            "10.244.1.1".parse().unwrap(),
            &mut reply,
        )
        .unwrap();
        // An ICMP error about an ICMP error: silence.
        assert_eq!(
            unreachable(
                &reply[..n],
                Unreachable::NoRoute,
                "10.244.1.1".parse().unwrap(),
                &mut out
            ),
            None
        );
        assert_eq!(
            unreachable(
                &packet[..10],
                Unreachable::NoRoute,
                "10.244.1.1".parse().unwrap(),
                &mut out
            ),
            None
        );
        assert_eq!(
            unreachable(
                &packet,
                Unreachable::NoRoute,
                "fd00::1".parse().unwrap(),
                &mut out
            ),
            None
        );
        // Too small an output buffer: no reply, no panic.
        assert_eq!(
            unreachable(
                &packet,
                Unreachable::NoRoute,
                "10.244.1.1".parse().unwrap(),
                &mut out[..20]
            ),
            None
        );
    }

    #[test]
    fn rate_limit_refills_with_time() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(10);
        assert_eq!((0..20).filter(|_| rl.allow(t0)).count(), 10);
        assert!(!rl.allow(t0 + Duration::from_millis(50)));
        assert!(rl.allow(t0 + Duration::from_millis(150)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let mut out = [0u8; MAX_REPLY];
            let _ = unreachable(&bytes, Unreachable::NoRoute, "10.244.1.1".parse().unwrap(), &mut out);
        }
    }
}
