//! The direct-routing offers between members (`docs/direct-routing.md`, "Gossip"):
//! our own offer and when it is due again, the offers members made us and when they
//! expire, and which senders speak a gossip protocol that has the messages. Sans-IO:
//! [`super::controller`] feeds it what it hears and sends what it says.
//!
//! Left out: choosing a peer's path ([`crate::dataplane::direct`]) and the probes'
//! sockets (the daemon).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::DIRECT_VERSION;

/// How often a node repeats its offer to every member.
pub(crate) const OFFER_PERIOD: Duration = Duration::from_secs(10);
/// An offer not renewed within this is dropped: three periods and a half, so one or
/// two lost datagrams never withdraw it.
pub(crate) const OFFER_EXPIRY: Duration = Duration::from_secs(35);
/// Senders whose protocol version is remembered; the table starts over when full
/// (the addresses come from datagrams, which must not grow it without bound).
const VERSION_SOURCES: usize = 4096;

/// An offer a member made us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    mac: [u8; 6],
    expires: Instant,
}

/// The offers of one node (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Offers {
    ours: Option<[u8; 6]>,
    next_send: Option<Instant>,
    versions: HashMap<SocketAddr, u8>,
    held: HashMap<String, Held>,
}

impl Offers {
    /// Records the version of an authenticated datagram from `from`. A sender newly
    /// heard speaking [`DIRECT_VERSION`] or later gets our offer at once rather than
    /// at the next period.
    pub(crate) fn heard(&mut self, from: SocketAddr, version: u8, now: Instant) {
        if self.versions.len() >= VERSION_SOURCES && !self.versions.contains_key(&from) {
            self.versions.clear();
        }
        let before = self.versions.insert(from, version);
        let new_speaker = version >= DIRECT_VERSION && before.is_none_or(|v| v < DIRECT_VERSION);
        if new_speaker && self.ours.is_some() {
            self.next_send = Some(now);
        }
    }

    /// Whether the node at `addr` was last heard speaking a version with the messages.
    pub(crate) fn speaks_offers(&self, addr: SocketAddr) -> bool {
        self.versions
            .get(&addr)
            .is_some_and(|v| *v >= DIRECT_VERSION)
    }

    /// Sets what we offer (`None`: nothing), sent at once if it changed.
    pub(crate) fn set_ours(&mut self, mac: Option<[u8; 6]>, now: Instant) {
        if mac != self.ours {
            self.ours = mac;
            self.next_send = mac.map(|_| now);
        }
    }

    /// What we offer.
    pub(crate) fn ours(&self) -> Option<[u8; 6]> {
        self.ours
    }

    /// Our offer if it is due at `now` (then the next one is a period later).
    pub(crate) fn due(&mut self, now: Instant) -> Option<[u8; 6]> {
        let mac = self.ours?;
        if self.next_send.is_some_and(|t| now >= t) {
            self.next_send = Some(now + OFFER_PERIOD);
            return Some(mac);
        }
        None
    }

    /// Takes member `name`'s offer; true if it is new or its MAC changed.
    pub(crate) fn receive(&mut self, name: &str, mac: [u8; 6], now: Instant) -> bool {
        let expires = now + OFFER_EXPIRY;
        match self.held.get_mut(name) {
            Some(h) => {
                let changed = h.mac != mac;
                *h = Held { mac, expires };
                changed
            }
            None => {
                self.held.insert(name.to_owned(), Held { mac, expires });
                true
            }
        }
    }

    /// Drops the offer of `name` (a member that died or left); true if it had one.
    pub(crate) fn forget(&mut self, name: &str) -> bool {
        self.held.remove(name).is_some()
    }

    /// Drops the offers not renewed in time; true if any was dropped.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.held.len();
        self.held.retain(|_, h| now < h.expires);
        self.held.len() != before
    }

    /// The offer member `name` holds out (as of the last [`Offers::expire`]).
    pub(crate) fn of(&self, name: &str) -> Option<[u8; 6]> {
        self.held.get(name).map(|h| h.mac)
    }

    /// The next instant something is due: our offer or an expiry.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.held.values().map(|h| h.expires).min();
        match (self.next_send.filter(|_| self.ours.is_some()), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    #[test]
    fn our_offer_is_due_at_once_then_every_period() {
        let now = Instant::now();
        let mut o = Offers::default();
        assert_eq!(o.due(now), None, "nothing offered");
        o.set_ours(Some(MAC), now);
        assert_eq!(o.due(now), Some(MAC));
        assert_eq!(o.due(now + OFFER_PERIOD / 2), None);
        assert_eq!(o.poll_timeout(), Some(now + OFFER_PERIOD));
        assert_eq!(o.due(now + OFFER_PERIOD), Some(MAC));
        // A new speaker of the version brings the next one forward.
        let later = now + OFFER_PERIOD + Duration::from_secs(1);
        o.heard("198.18.0.2:7946".parse().unwrap(), DIRECT_VERSION, later);
        assert_eq!(o.due(later), Some(MAC));
        o.set_ours(None, later);
        assert_eq!(o.due(later + OFFER_PERIOD), None);
        assert_eq!(o.poll_timeout(), None);
    }

    #[test]
    fn held_offers_expire_unless_renewed_and_go_with_their_member() {
        let now = Instant::now();
        let mut o = Offers::default();
        assert!(o.receive("b", MAC, now));
        assert!(!o.receive("b", MAC, now + OFFER_PERIOD), "a renewal");
        assert!(
            o.receive("b", [2, 0, 0, 0, 0, 8], now + OFFER_PERIOD),
            "a new MAC"
        );
        assert_eq!(o.poll_timeout(), Some(now + OFFER_PERIOD + OFFER_EXPIRY));
        assert!(!o.expire(now + OFFER_EXPIRY));
        assert_eq!(o.of("b"), Some([2, 0, 0, 0, 0, 8]));
        assert!(o.expire(now + OFFER_PERIOD + OFFER_EXPIRY));
        assert_eq!(o.of("b"), None);
        assert!(o.receive("c", MAC, now));
        assert!(o.forget("c"));
        assert!(!o.forget("c"));
    }

    #[test]
    fn versions_are_remembered_per_sender_and_bounded() {
        let now = Instant::now();
        let mut o = Offers::default();
        let a: SocketAddr = "198.18.0.1:7946".parse().unwrap();
        o.heard(a, 1, now);
        assert!(!o.speaks_offers(a));
        o.heard(a, DIRECT_VERSION, now);
        assert!(o.speaks_offers(a));
        for i in 0..VERSION_SOURCES as u32 + 10 {
            let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
            o.heard(SocketAddr::new(ip.into(), 1), 2, now);
        }
        assert!(o.versions.len() <= VERSION_SOURCES);
    }
}
