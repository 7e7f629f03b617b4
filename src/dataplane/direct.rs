//! Direct routing decisions (sans-IO): for each peer, whether its pod subnet is
//! routed directly on the underlay link or carried as VXLAN, and when to probe the
//! direct path. The facts and the argument are in `docs/direct-routing.md`.
//!
//! The driver feeds facts in (the kernel's route to the peer's underlay address, the
//! peer's offer from gossip, probe answers) with `now`, and takes actions out (send a
//! probe, a peer's path changed). Nothing here does I/O.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a candidate peer is probed.
pub(crate) const PROBE_PERIOD: Duration = Duration::from_secs(10);
/// How long a probe's answer may take and still count for the period it was sent in.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `--direct-routing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirectMode {
    /// Route a peer directly where the facts allow it.
    Auto,
    /// Never.
    Off,
}

/// The kernel's route to a peer's underlay address (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnderlayRoute {
    /// The route's gateway, if it has one.
    pub(crate) gateway: Option<IpAddr>,
    /// The output interface.
    pub(crate) ifindex: u32,
}

/// Why a peer is carried as VXLAN (or sealed) rather than routed directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `--direct-routing off`.
    Off,
    /// `--encrypt`: traffic stays sealed.
    Encrypted,
    /// The kernel has no route to the peer's underlay address.
    NoRoute,
    /// The peer is behind a router.
    BehindRouter {
        /// The router.
        via: IpAddr,
    },
    /// The peer is reached through another device than our underlay device.
    OtherDevice {
        /// That device's index.
        ifindex: u32,
    },
    /// The peer has not offered direct traffic (it runs with it off, encrypted, or
    /// an older release).
    NotOffered,
    /// No probe has been answered yet.
    ProbePending,
    /// The probes since this instant went unanswered.
    ProbeUnanswered {
        /// When the first unanswered probe was sent.
        since: Instant,
    },
}

/// How a peer's pod subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// A route via the peer's underlay address on the underlay device.
    Direct,
    /// Encapsulated (VXLAN, or WireGuard with `--encrypt`), and why.
    Tunnel(Reason),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a probe with `nonce` to `peer` over the direct path.
    Probe {
        /// The peer's name.
        peer: String,
        /// The nonce its answer must carry.
        nonce: u64,
    },
    /// `peer`'s path changed: reprogram its route.
    PathChanged {
        /// The peer's name.
        peer: String,
        /// The new path.
        path: Path,
    },
}

/// What is known about one peer.
#[derive(Debug, Clone)]
struct PeerPath {
    route: Option<UnderlayRoute>,
    offered: bool,
    /// The probe in flight: its nonce and when it was sent.
    outstanding: Option<(u64, Instant)>,
    /// When the last answered probe was sent.
    confirmed: Option<Instant>,
    /// When the first probe not answered since the last confirmation was sent.
    unanswered_since: Option<Instant>,
    next_probe: Option<Instant>,
    path: Path,
}

/// The per-peer direct-routing decisions of one node.
#[derive(Debug)]
pub(crate) struct Chooser {
    mode: DirectMode,
    encrypted: bool,
    /// Our underlay device.
    underlay: u32,
    peers: BTreeMap<String, PeerPath>,
    actions: VecDeque<Action>,
    next_nonce: u64,
}

impl Chooser {
    /// A chooser for a node with `mode`, encrypting or not, whose underlay device is
    /// `underlay`; `seed` starts the nonces (random, so a restart's probes are not
    /// mistaken for answers to old ones).
    pub(crate) fn new(mode: DirectMode, encrypted: bool, underlay: u32, seed: u64) -> Chooser {
        Chooser {
            mode,
            encrypted,
            underlay,
            peers: BTreeMap::new(),
            actions: VecDeque::new(),
            next_nonce: seed,
        }
    }

    /// Whether this node offers direct traffic to its peers.
    pub(crate) fn offers(&self) -> bool {
        self.mode == DirectMode::Auto && !self.encrypted
    }

    /// The kernel's route to `peer`'s underlay address changed (or is first known).
    pub(crate) fn set_route(&mut self, peer: &str, route: Option<UnderlayRoute>, now: Instant) {
        self.entry(peer).route = route;
        self.decide(peer, now);
    }

    /// Whether `peer` offers direct traffic (its `DirectOffer` in gossip).
    pub(crate) fn set_offered(&mut self, peer: &str, offered: bool, now: Instant) {
        self.entry(peer).offered = offered;
        self.decide(peer, now);
    }

    /// `peer` left the membership: it has no path any more.
    pub(crate) fn remove(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// `peer` answered the probe with `nonce`. An answer to anything but the probe in
    /// flight is ignored.
    pub(crate) fn handle_ack(&mut self, peer: &str, nonce: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        match p.outstanding {
            Some((n, sent)) if n == nonce && now < sent + PROBE_TIMEOUT => {
                p.outstanding = None;
                p.confirmed = Some(sent);
                p.unanswered_since = None;
            }
            _ => return,
        }
        self.decide(peer, now);
    }

    /// Sends the probes that are due and retires the ones that timed out.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.decide(&name, now);
        }
    }

    /// The next instant [`Chooser::handle_timeout`] must run, if any.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                [
                    p.next_probe,
                    p.outstanding.map(|(_, sent)| sent + PROBE_TIMEOUT),
                    p.confirmed.map(|c| c + PROBE_PERIOD + PROBE_TIMEOUT),
                ]
            })
            .flatten()
            .min()
    }

    /// The next action.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// `peer`'s path now (a peer not known yet is tunnelled, pending).
    pub(crate) fn path(&self, peer: &str) -> Path {
        self.peers.get(peer).map_or(
            Path::Tunnel(self.local_reason().unwrap_or(Reason::ProbePending)),
            |p| p.path,
        )
    }

    fn entry(&mut self, peer: &str) -> &mut PeerPath {
        self.peers.entry(peer.to_string()).or_insert(PeerPath {
            route: None,
            offered: false,
            outstanding: None,
            confirmed: None,
            unanswered_since: None,
            next_probe: None,
            path: Path::Tunnel(Reason::ProbePending),
        })
    }

    /// Why no peer can be routed directly, whatever its facts.
    fn local_reason(&self) -> Option<Reason> {
        match (self.mode, self.encrypted) {
            (DirectMode::Off, _) => Some(Reason::Off),
            (_, true) => Some(Reason::Encrypted),
            _ => None,
        }
    }

    /// Why `p` is not a candidate, if it is not: the facts other than the probe.
    fn not_candidate(&self, p: &PeerPath) -> Option<Reason> {
        if let Some(r) = self.local_reason() {
            return Some(r);
        }
        match p.route {
            None => Some(Reason::NoRoute),
            Some(UnderlayRoute {
                gateway: Some(via), ..
            }) => Some(Reason::BehindRouter { via }),
            Some(UnderlayRoute { ifindex, .. }) if ifindex != self.underlay => {
                Some(Reason::OtherDevice { ifindex })
            }
            _ if !p.offered => Some(Reason::NotOffered),
            _ => None,
        }
    }

    /// Probes `peer` if due, ages its probes and sets its path from the facts.
    fn decide(&mut self, peer: &str, now: Instant) {
        let Some(mut p) = self.peers.remove(peer) else {
            return;
        };
        let path = match self.not_candidate(&p) {
            Some(reason) => {
                p.outstanding = None;
                p.confirmed = None;
                p.unanswered_since = None;
                p.next_probe = None;
                Path::Tunnel(reason)
            }
            None => {
                if let Some((_, sent)) = p.outstanding {
                    if now >= sent + PROBE_TIMEOUT {
                        p.outstanding = None;
                        p.unanswered_since.get_or_insert(sent);
                    }
                }
                if p.next_probe.is_none_or(|t| now >= t) {
                    let nonce = self.next_nonce;
                    self.next_nonce = self.next_nonce.wrapping_add(1);
                    p.outstanding = Some((nonce, now));
                    p.next_probe = Some(now + PROBE_PERIOD);
                    self.actions.push_back(Action::Probe {
                        peer: peer.to_string(),
                        nonce,
                    });
                }
                match (p.confirmed, p.unanswered_since) {
                    (Some(c), _) if now < c + PROBE_PERIOD + PROBE_TIMEOUT => Path::Direct,
                    (_, Some(since)) => Path::Tunnel(Reason::ProbeUnanswered { since }),
                    _ => Path::Tunnel(Reason::ProbePending),
                }
            }
        };
        if path != p.path {
            p.path = path;
            self.actions.push_back(Action::PathChanged {
                peer: peer.to_string(),
                path,
            });
        }
        self.peers.insert(peer.to_string(), p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDERLAY: u32 = 2;

    fn on_link() -> Option<UnderlayRoute> {
        Some(UnderlayRoute {
            gateway: None,
            ifindex: UNDERLAY,
        })
    }

    fn drain(c: &mut Chooser) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn probe_nonce(actions: &[Action]) -> Option<u64> {
        actions.iter().find_map(|a| match a {
            Action::Probe { nonce, .. } => Some(*nonce),
            _ => None,
        })
    }

    /// A candidate peer is probed at once and goes direct when the answer comes.
    fn direct_peer(c: &mut Chooser, now: Instant) {
        c.set_route("n2", on_link(), now);
        c.set_offered("n2", true, now);
        let nonce = probe_nonce(&drain(c)).expect("a probe");
        c.handle_ack("n2", nonce, now + Duration::from_millis(1));
        assert_eq!(c.path("n2"), Path::Direct);
        assert_eq!(
            drain(c),
            [Action::PathChanged {
                peer: "n2".into(),
                path: Path::Direct
            }]
        );
    }

    #[test]
    fn a_peer_on_the_link_that_offers_and_answers_goes_direct() {
        let t0 = Instant::now();
        let mut c = Chooser::new(DirectMode::Auto, false, UNDERLAY, 7);
        assert!(c.offers());
        direct_peer(&mut c, t0);
    }

    #[test]
    fn each_fact_that_fails_keeps_the_peer_tunnelled_and_names_itself() {
        let t0 = Instant::now();
        let router: IpAddr = "198.18.0.254".parse().unwrap();
        let cases = [
            (DirectMode::Off, false, on_link(), true, Reason::Off),
            (DirectMode::Auto, true, on_link(), true, Reason::Encrypted),
            (DirectMode::Auto, false, None, true, Reason::NoRoute),
            (
                DirectMode::Auto,
                false,
                Some(UnderlayRoute {
                    gateway: Some(router),
                    ifindex: UNDERLAY,
                }),
                true,
                Reason::BehindRouter { via: router },
            ),
            (
                DirectMode::Auto,
                false,
                Some(UnderlayRoute {
                    gateway: None,
                    ifindex: 9,
                }),
                true,
                Reason::OtherDevice { ifindex: 9 },
            ),
            (
                DirectMode::Auto,
                false,
                on_link(),
                false,
                Reason::NotOffered,
            ),
        ];
        for (mode, encrypted, route, offered, reason) in cases {
            let mut c = Chooser::new(mode, encrypted, UNDERLAY, 1);
            c.set_route("n2", route, t0);
            c.set_offered("n2", offered, t0);
            assert_eq!(c.path("n2"), Path::Tunnel(reason));
            assert!(
                probe_nonce(&drain(&mut c)).is_none(),
                "no probe for a non-candidate ({reason:?})"
            );
        }
    }

    /// A link that drops foreign sources: the probe is never answered, the peer
    /// stays tunnelled and says since when.
    #[test]
    fn an_unanswered_probe_keeps_the_peer_tunnelled() {
        let t0 = Instant::now();
        let mut c = Chooser::new(DirectMode::Auto, false, UNDERLAY, 1);
        c.set_route("n2", on_link(), t0);
        c.set_offered("n2", true, t0);
        assert_eq!(c.path("n2"), Path::Tunnel(Reason::ProbePending));
        let t1 = c.poll_timeout().unwrap();
        assert_eq!(t1, t0 + PROBE_TIMEOUT);
        c.handle_timeout(t1);
        assert_eq!(
            c.path("n2"),
            Path::Tunnel(Reason::ProbeUnanswered { since: t0 })
        );
        // Probing goes on every period; a late answer to an old probe counts for nothing.
        c.handle_timeout(t0 + PROBE_PERIOD);
        let actions = drain(&mut c);
        assert!(probe_nonce(&actions).is_some(), "probed again: {actions:?}");
        c.handle_ack("n2", 1, t0 + PROBE_PERIOD);
        assert_eq!(
            c.path("n2"),
            Path::Tunnel(Reason::ProbeUnanswered { since: t0 })
        );
    }

    /// A direct peer whose probes stop being answered goes back to the tunnel at
    /// the end of the period it missed.
    #[test]
    fn a_direct_peer_falls_back_when_its_probes_go_unanswered() {
        let t0 = Instant::now();
        let mut c = Chooser::new(DirectMode::Auto, false, UNDERLAY, 1);
        direct_peer(&mut c, t0);
        c.handle_timeout(t0 + PROBE_PERIOD);
        assert!(probe_nonce(&drain(&mut c)).is_some());
        c.handle_timeout(t0 + PROBE_PERIOD + PROBE_TIMEOUT - Duration::from_millis(1));
        assert_eq!(c.path("n2"), Path::Direct, "still within its period");
        c.handle_timeout(t0 + PROBE_PERIOD + PROBE_TIMEOUT);
        assert_eq!(
            c.path("n2"),
            Path::Tunnel(Reason::ProbeUnanswered {
                since: t0 + PROBE_PERIOD
            })
        );
    }

    /// A peer moved behind a router leaves the direct path at once, without waiting
    /// for a probe, and comes back through a new probe when it returns.
    #[test]
    fn a_route_change_decides_again_at_once() {
        let t0 = Instant::now();
        let mut c = Chooser::new(DirectMode::Auto, false, UNDERLAY, 1);
        direct_peer(&mut c, t0);
        let via: IpAddr = "198.18.1.254".parse().unwrap();
        let t1 = t0 + Duration::from_secs(3);
        c.set_route(
            "n2",
            Some(UnderlayRoute {
                gateway: Some(via),
                ifindex: UNDERLAY,
            }),
            t1,
        );
        assert_eq!(
            drain(&mut c),
            [Action::PathChanged {
                peer: "n2".into(),
                path: Path::Tunnel(Reason::BehindRouter { via })
            }]
        );
        c.set_route("n2", on_link(), t1);
        assert_eq!(c.path("n2"), Path::Tunnel(Reason::ProbePending));
        let nonce = probe_nonce(&drain(&mut c)).expect("probed at once");
        c.handle_ack("n2", nonce, t1);
        assert_eq!(c.path("n2"), Path::Direct);
    }
}
