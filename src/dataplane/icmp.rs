//! ICMP destination-unreachable replies for packets the dataplane cannot forward
//! (no peer owns the destination, or the owner is dead), so the sending pod's stack
//! learns at once instead of timing out. RFC 792 for ICMPv4, RFC 4443 for ICMPv6.
//!
//! Sans-IO: [`UnreachableReplies`] decides, for a packet the encapsulator dropped,
//! whether a reply is due (by drop reason, router address and a [`RateLimit`] token
//! bucket driven by the caller's `now`, so a flood to a dead peer costs at most `rate`
//! replies per second) and writes the whole TUN write, virtio-net header included,
//! into a caller buffer; [`unreachable`] writes the ICMP packet itself.
//!
//! ```text
//! ICMPv4 error: | IPv4 header (20) | type | code | checksum | unused (4) | original IP header + 8 bytes |
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use super::offload::VNET_HDR_LEN;
use super::stats::DropReason;
use super::wire::checksum;
use super::wire::{IpHeader, Ipv4Packet, Ipv6Packet};

/// Largest reply this module writes.
pub(crate) const MAX_REPLY: usize = 1280;

/// Why the destination is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// No peer owns the destination subnet (ICMPv4 net unreachable, ICMPv6 no route).
    NoRoute,
    /// The owner is declared dead (ICMPv4 host unreachable, ICMPv6 address unreachable).
    PeerDead,
}

/// Writes an ICMP destination-unreachable reply to `packet` into `out`, sent from
/// `router` (this node's gateway address of the same family). Returns its length, or
/// `None` when no reply is due: the packet is malformed, is itself an ICMP error, has
/// a multicast, broadcast or unspecified source, or `router` is of the other family.
pub(crate) fn unreachable(
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
    checksum::ipv4_header(out, 20);
    out[20] = 3;
    out[21] = match why {
        Unreachable::NoRoute => 0,
        Unreachable::PeerDead => 1,
    };
    out[28..].copy_from_slice(&packet[..quoted]);
    let icmp_sum = checksum::finish(checksum::add(0, &out[20..]));
    out[22..24].copy_from_slice(&icmp_sum);
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
    let (ip, message) = out.split_at_mut(40);
    let sum = checksum::add(checksum::pseudo(ip, 58, message.len() as u32), message);
    message[2..4].copy_from_slice(&checksum::finish(sum));
    Some(len)
}

/// ICMP unreachable replies per second at most, per worker.
pub(crate) const REPLY_RATE: u32 = 100;

/// Largest TUN write [`UnreachableReplies::handle_drop`] produces: a virtio-net header
/// and [`MAX_REPLY`].
pub(crate) const MAX_TUN_WRITE: usize = VNET_HDR_LEN + MAX_REPLY;

/// The node's gateway addresses on its bridge, where ICMP errors come from: its
/// subnet's, and dual-stack its IPv6 subnet's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Routers {
    /// The gateway of the node's subnet (the primary family's).
    pub(crate) primary: Option<IpAddr>,
    /// Dual-stack: the gateway of its IPv6 subnet (the second family's).
    pub(crate) second: Option<IpAddr>,
}

impl Routers {
    /// Only `primary`.
    #[cfg(test)]
    pub(crate) fn one(primary: IpAddr) -> Routers {
        Routers {
            primary: Some(primary),
            second: None,
        }
    }

    /// The router of the IPv4 (`v4`) or the IPv6 family, if the node has one.
    pub(crate) fn of_family(&self, v4: bool) -> Option<IpAddr> {
        [self.primary, self.second]
            .into_iter()
            .flatten()
            .find(|r| r.is_ipv4() == v4)
    }
}

/// The ICMP-unreachable side of one worker's outbound path: which drops get a reply,
/// from which address, how often, and the bytes to write to the TUN.
#[derive(Debug, Clone)]
pub(crate) struct UnreachableReplies {
    router: Routers,
    vnet: bool,
    limit: RateLimit,
}

impl UnreachableReplies {
    /// Replies at most `rate` times a second; with `vnet` every TUN write starts with
    /// a virtio-net header. No reply is sent until [`Self::set_router`] gives an address.
    pub(crate) fn new(rate: u32, vnet: bool) -> UnreachableReplies {
        UnreachableReplies {
            router: Routers::default(),
            vnet,
            limit: RateLimit::new(rate),
        }
    }

    /// Sets the addresses replies come from (the node's gateways); a packet of a
    /// family with none gets no reply.
    pub(crate) fn set_router(&mut self, router: Routers) {
        self.router = router;
    }

    /// The IP `packet` read from the TUN was dropped for `reason` at `now`. If a reply
    /// is due (the reason is [`DropReason::UnknownSubnet`] or [`DropReason::PeerDead`],
    /// a router address is set, the rate allows it and [`unreachable`] answers the
    /// packet), writes the TUN write into `out` (at least [`MAX_TUN_WRITE`] bytes for
    /// every reply to fit): a zero virtio-net header ("no GSO, checksum complete") if
    /// the TUN takes one, then the ICMP reply. Returns its length.
    pub(crate) fn handle_drop(
        &mut self,
        now: Instant,
        reason: DropReason,
        packet: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let why = match reason {
            DropReason::UnknownSubnet => Unreachable::NoRoute,
            DropReason::PeerDead => Unreachable::PeerDead,
            _ => return None,
        };
        let router = self.router.of_family(packet.first()? >> 4 == 4)?;
        if !self.limit.allow(now) {
            return None;
        }
        let head = if self.vnet { VNET_HDR_LEN } else { 0 };
        let (vnet_hdr, reply) = out.split_at_mut_checked(head)?;
        let n = unreachable(packet, why, router, reply)?;
        vnet_hdr.fill(0);
        Some(head + n)
    }
}

/// A token bucket: at most `rate` replies per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    rate: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl RateLimit {
    /// A limiter allowing `rate` replies per second.
    pub(crate) fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate,
            tokens: rate,
            last: None,
        }
    }

    /// True if a reply may be sent at `now` (and takes a token).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
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
    fn a_dual_stack_node_answers_each_family_from_its_own_gateway() {
        let mut v6 = Vec::new();
        PacketBuilder::ipv6(
            "fd00:1::5".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00:9::9".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .udp(40000, 53)
        .write(&mut v6, b"query")
        .unwrap();
        let mut replies = UnreachableReplies::new(REPLY_RATE, false);
        let mut out = vec![0u8; MAX_TUN_WRITE];
        let t0 = Instant::now();
        replies.set_router(Routers::one("10.244.1.1".parse().unwrap()));
        assert_eq!(
            replies.handle_drop(t0, DropReason::UnknownSubnet, &v6, &mut out),
            None,
            "no IPv6 gateway: no reply"
        );
        replies.set_router(Routers {
            primary: Some("10.244.1.1".parse().unwrap()),
            second: Some("fd00:1::1".parse().unwrap()),
        });
        let n = replies
            .handle_drop(t0, DropReason::UnknownSubnet, &v6, &mut out)
            .unwrap();
        let reply = out[..n].to_vec();
        let sliced = SlicedPacket::from_ip(&reply).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip.header().source_addr(),
            "fd00:1::1".parse::<Ipv6Addr>().unwrap()
        );
        let n = replies
            .handle_drop(t0, DropReason::UnknownSubnet, &udp4(), &mut out)
            .unwrap();
        let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 244, 1, 1));
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

    #[test]
    fn replies_by_drop_reason_only_with_a_router() {
        let t0 = Instant::now();
        let packet = udp4();
        let mut out = [0u8; MAX_TUN_WRITE];
        let mut replies = UnreachableReplies::new(REPLY_RATE, false);
        // No router yet: silence, and no token spent.
        assert_eq!(
            replies.handle_drop(t0, DropReason::UnknownSubnet, &packet, &mut out),
            None
        );
        replies.set_router(Routers::one("10.244.1.1".parse().unwrap()));
        let mut expected = [0u8; MAX_REPLY];
        for (reason, why) in [
            (DropReason::UnknownSubnet, Unreachable::NoRoute),
            (DropReason::PeerDead, Unreachable::PeerDead),
        ] {
            let n = replies.handle_drop(t0, reason, &packet, &mut out).unwrap();
            let m = unreachable(&packet, why, "10.244.1.1".parse().unwrap(), &mut expected);
            assert_eq!(Some(n), m);
            assert_eq!(&out[..n], &expected[..n]);
        }
        // Other drops get no reply.
        for reason in [
            DropReason::MalformedOutbound,
            DropReason::IoError,
            DropReason::SpoofedSource,
        ] {
            assert_eq!(replies.handle_drop(t0, reason, &packet, &mut out), None);
        }
        // With virtio headers the reply sits behind a zero one.
        let mut vnet = UnreachableReplies::new(REPLY_RATE, true);
        vnet.set_router(Routers::one("10.244.1.1".parse().unwrap()));
        out.fill(0xee);
        let n = vnet
            .handle_drop(t0, DropReason::PeerDead, &packet, &mut out)
            .unwrap();
        assert_eq!(&out[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        let m = unreachable(
            &packet,
            Unreachable::PeerDead,
            "10.244.1.1".parse().unwrap(),
            &mut expected,
        )
        .unwrap();
        assert_eq!(&out[VNET_HDR_LEN..n], &expected[..m]);
        // A buffer too small for the header: no reply, no panic.
        assert_eq!(
            vnet.handle_drop(t0, DropReason::PeerDead, &packet, &mut out[..4]),
            None
        );
    }

    #[test]
    fn replies_are_rate_limited_on_the_callers_clock() {
        let t0 = Instant::now();
        let packet = udp4();
        let mut out = [0u8; MAX_TUN_WRITE];
        let mut replies = UnreachableReplies::new(REPLY_RATE, false);
        replies.set_router(Routers::one("10.244.1.1".parse().unwrap()));
        let mut sent = |at: Duration, n: usize| {
            (0..n)
                .filter(|_| {
                    replies
                        .handle_drop(t0 + at, DropReason::PeerDead, &packet, &mut out)
                        .is_some()
                })
                .count()
        };
        // A burst of the whole rate, then nothing until time passes.
        assert_eq!(sent(Duration::ZERO, 1000), REPLY_RATE as usize);
        assert_eq!(sent(Duration::from_millis(5), 10), 0);
        // 100 ms refill 10 tokens at 100 a second.
        assert_eq!(sent(Duration::from_millis(105), 1000), 10);
        // A long pause refills the bucket to the rate, not beyond.
        assert_eq!(sent(Duration::from_secs(60), 1000), REPLY_RATE as usize);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let mut out = [0u8; MAX_REPLY];
            let _ = unreachable(&bytes, Unreachable::NoRoute, "10.244.1.1".parse().unwrap(), &mut out);
        }
    }
}
