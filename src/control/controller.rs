//! [`Controller`]: one node's control plane, membership and leases behind one
//! sans-IO `handle_*`/`poll_*` interface. It authenticates and parses each datagram,
//! routes it to [`Membership`] or [`Lease`], turns their outputs into framed and
//! sealed [`Datagram`]s and [`Event`]s, and holds back lease messages while the lease
//! state is unsaved.
//!
//! Left out: sockets, clocks and the state file ([`super::driver`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::auth::{Authenticator, KeySet, Reject};
use super::error::Error;
#[cfg(any(test, feature = "sim"))]
use super::founding::Founder;
use super::founding::{
    FoundedPeer, Founding, FoundingConfig, FoundingTransmit, InitialSet, Participant,
};
use super::lease::{Lease, LeaseConfig, LeaseEvent, LeaseState, LeaseTransmit};
use super::membership::{KnownMember, MemberState, Membership, MembershipConfig, MembershipEvent};
use super::message::{self, Datagram, LeaseDatagram, LeaseMsg, Owned, WireError};
use super::meta::NodeMeta;
use super::offer::Offers;
use super::report::{GossipTraffic, LeaseWait, MemberReport, PeerInfo, Status, VersionRefusal};

/// An event for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The lease state machine reported something.
    Lease(LeaseEvent),
    /// The set of peers or their state (alive, suspect, dead) changed: re-read
    /// [`Controller::peers`].
    PeersChanged,
    /// A peer refused us for a configuration mismatch while we were still joining
    /// (no lease history): we must not join, and the driver stops.
    Refused {
        /// The peer.
        peer: String,
        /// What differs, from its point of view.
        reason: String,
    },
    /// A peer refused us for a configuration mismatch after we were established
    /// (we hold or handed out subnets): we keep serving our own cluster, since
    /// exiting would cut our pods off because some other cluster's node gossiped to
    /// us. Raised once per peer.
    RefusedWhileServing {
        /// The peer.
        peer: String,
        /// What differs, from its point of view.
        reason: String,
    },
    /// A leave ([`Controller::leave`]) ended: our space was handed over (or there
    /// was nobody to hand it to), or [`LEAVE_TIMEOUT`] passed first; the departure
    /// is announced to the membership. The driver flushes and stops.
    Left {
        /// The deadline passed before a witness took our space.
        timed_out: bool,
    },
    /// We refused a peer for a configuration mismatch.
    RefusedPeer {
        /// The peer.
        peer: String,
        /// What differs.
        reason: String,
    },
    /// No seed has answered for a while (reported after [`SEEDS_SILENT_AFTER`], then
    /// every minute while it lasts).
    SeedsSilent {
        /// The seeds we keep asking.
        seeds: Vec<SocketAddr>,
        /// How long we have been alone.
        for_secs: u64,
    },
    /// The authentication layer rejected a datagram. Reported at most once per
    /// [`REJECT_LOG_INTERVAL`] per source address, and at most
    /// [`REJECT_LOG_BUDGET`] times per interval in all; every rejection is counted.
    Rejected {
        /// The sender.
        from: SocketAddr,
        /// Why.
        reason: Reject,
    },
    /// An authenticated peer speaks a gossip protocol version this build cannot
    /// talk to. Reported at most once per [`REJECT_LOG_INTERVAL`] per sender; every
    /// datagram is counted in [`Status::refused_versions`].
    VersionRefused {
        /// The sender.
        from: SocketAddr,
        /// The version it speaks.
        version: u8,
    },
    /// A peer answered our direct-routing probe ([`Controller::probe_datagram`]):
    /// the path pod traffic would take to it directly carried the probe.
    ProbeAnswered {
        /// The peer.
        peer: String,
        /// The probe's nonce.
        nonce: u64,
    },
    /// [`REJECT_LOG_BUDGET`] rejections were reported in this interval: further ones
    /// are counted but not reported until it ends (many, or spoofed, sources).
    RejectReportsPaused,
    /// The interval after a pause ended: `unreported` rejections from addresses not
    /// reported before went unreported in it.
    RejectReportsResumed {
        /// Rejections that were not reported.
        unreported: u64,
    },
}

/// How long a leave waits for a witness to take our space before the node announces
/// its departure anyway ([`Event::Left`]).
pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a joining node waits for any seed before [`Event::SeedsSilent`].
pub(crate) const SEEDS_SILENT_AFTER: Duration = Duration::from_secs(10);

/// How often a rejected sender is reported again (see [`Event::Rejected`]).
pub(crate) const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Rejections reported per [`REJECT_LOG_INTERVAL`], whatever their sources: a flood
/// from many (or spoofed) addresses must not turn into a line per datagram.
pub(crate) const REJECT_LOG_BUDGET: u32 = 20;
/// Senders whose last report is remembered; the table is cleared when full.
const REJECT_LOG_SOURCES: usize = 1024;
/// Senders of a version we cannot accept that status lists; the oldest goes first.
const REFUSED_SOURCES: usize = 64;

/// What the controller remembers of a sender of a version it cannot accept.
#[derive(Debug, Clone)]
struct Refused {
    version: u8,
    datagrams: u64,
    last: Instant,
    reported: Option<Instant>,
}

/// Settings of one [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// What we publish (the lease fields are filled in by the lease machine).
    pub meta: NodeMeta,
    /// Seed gossip addresses (`--peers`).
    pub seeds: Vec<SocketAddr>,
    /// Whether we create the cluster's space at once if we start without state (no
    /// `--peers`, or this node first in them). Otherwise a founder is agreed on
    /// (`docs/founding.md`).
    pub founder: bool,
    /// Whether we propose at once in the founding agreement, rather than after the
    /// lowest-named candidate (we list ourselves first in `--peers`).
    pub propose_first: bool,
    /// `--bootstrap-expect N`: found once a majority of N nodes started with the same
    /// N have met. Without it, the initial set is this node plus its seeds.
    pub bootstrap_expect: Option<u32>,
    /// Membership settings.
    pub membership: MembershipConfig,
    /// Lease timing (`reclaim_after`, fence bound, beat interval, witness count).
    pub lease: LeaseConfig,
    /// The cluster keys (`--secret-file`); `None` runs unauthenticated.
    pub keys: Option<KeySet>,
    /// Random per process start: makes (session, counter) unique for replay checks.
    pub session: u64,
}

/// FNV-1a of the cluster parameters; lease datagrams from other clusters are dropped.
pub(crate) fn cluster_fingerprint(
    cidr: IpNet,
    subnet_len: u8,
    second: Option<super::SecondCidr>,
    vni: u32,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut s = format!("{cidr}/{subnet_len}/{vni}");
    if let Some(second) = second {
        s.push_str(&format!("/{}/{}", second.cidr, second.subnet_len));
    }
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The wall-clock time (unix ms) the driver last told the controller, and the
/// instant it was true at.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// The wall-clock time at `now`, counted from the last one told.
    fn at(&self, now: Instant) -> u64 {
        if now >= self.at {
            self.unix_ms
                .saturating_add(now.duration_since(self.at).as_millis() as u64)
        } else {
            self.unix_ms
                .saturating_sub(self.at.duration_since(now).as_millis() as u64)
        }
    }
}

/// The current interval of reports of rejected datagrams (see [`REJECT_LOG_BUDGET`]).
#[derive(Debug, Clone, Copy)]
struct ReportBudget {
    /// When the interval started.
    start: Instant,
    /// Rejections reported in it.
    reports: u32,
    /// Rejections from new sources not reported in it (past the budget).
    unreported: u64,
}

impl ReportBudget {
    fn new(start: Instant) -> Self {
        ReportBudget {
            start,
            reports: 0,
            unreported: 0,
        }
    }
}

/// How long a founding proposer waits for one phase before it retries.
pub(crate) const FOUNDING_PHASE_TIMEOUT: Duration = Duration::from_secs(1);
/// Base delay of founding retries, and of a candidate that does not propose first.
pub(crate) const FOUNDING_BACKOFF: Duration = Duration::from_millis(300);
/// First delay between announces to a seed outside our membership; it doubles up to
/// [`SEED_RETRY_MAX`], for as long as the node runs, so that islands merge.
pub(crate) const SEED_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between announces to a seed outside our membership.
pub(crate) const SEED_RETRY_MAX: Duration = Duration::from_secs(10);

/// When to announce to one seed next, while it is not in our membership.
#[derive(Debug, Clone, Copy)]
struct SeedRetry {
    addr: SocketAddr,
    next: Instant,
    delay: Duration,
}

/// One node's control plane: membership and leases behind one sans-IO interface.
#[derive(Debug)]
pub struct Controller {
    membership: Membership,
    lease: Lease,
    founding: Founding,
    seed_retries: Vec<SeedRetry>,
    fingerprint: u64,
    seeds: Vec<SocketAddr>,
    next_join: Instant,
    out: VecDeque<Datagram>,
    /// Messages of the lease machine: sent only once the state they follow from is
    /// saved (see [`Controller::set_state_saved`]).
    lease_out: VecDeque<Datagram>,
    events: VecDeque<Event>,
    dropped: u64,
    deaths: u64,
    held: u64,
    names: HashMap<String, SocketAddr>,
    peers_dirty: bool,
    /// Peers whose refusal an established node has reported (once each); at most
    /// [`REJECT_LOG_SOURCES`] names, after which new refusers are not reported (the
    /// names come from the datagrams, so a sender must not grow this without bound).
    refused_by: BTreeSet<String>,
    /// A leave in progress ends at this instant at the latest.
    leave_deadline: Option<Instant>,
    /// The lease state in memory is newer than the one on disk.
    unsaved: bool,
    /// The lease (subnet index) in the last state on disk.
    saved_lease: Option<u32>,
    auth: Authenticator,
    wall: WallClock,
    reported: HashMap<IpAddr, Instant>,
    report_budget: ReportBudget,
    /// Authenticated senders of a protocol version we cannot accept, newest first
    /// kept (at most [`REFUSED_SOURCES`]).
    refused: HashMap<SocketAddr, Refused>,
    alone_since: Option<Instant>,
    silent_reported: Option<Instant>,
    /// Direct-routing offers, ours and the members' (`docs/direct-routing.md`).
    offers: Offers,
}

impl Controller {
    /// Creates a controller from its settings and persisted lease state.
    pub fn new(
        cfg: ControllerConfig,
        persisted: Option<LeaseState>,
        now: Instant,
    ) -> Result<Self, Error> {
        let count = cfg.meta.lease_count()?;
        let saved_lease = persisted.as_ref().and_then(|p| p.lease);
        if cfg.lease.fence_after * 2 > cfg.lease.reclaim_after {
            return Err(Error::BadTimers {
                reclaim_after: cfg.lease.reclaim_after,
                fence_after: cfg.lease.fence_after,
            });
        }
        let mut lc = cfg.lease.clone();
        lc.name = cfg.meta.name.clone();
        lc.subnet_count = count;
        // Genesis goes through the founding machine (`Lease::found`).
        lc.founder = false;
        let saved_founding = persisted
            .as_ref()
            .map(|p| p.founding.clone())
            .unwrap_or_default();
        let history = persisted.as_ref().is_some_and(LeaseState::has_history);
        let mut lease = Lease::new(lc, persisted, now);
        let initial = match cfg.bootstrap_expect {
            Some(n) => InitialSet::Expect(n),
            None => {
                let mut set: BTreeSet<SocketAddr> = cfg.seeds.iter().copied().collect();
                set.insert(cfg.meta.gossip);
                InitialSet::Peers(set)
            }
        };
        let fc = FoundingConfig {
            name: cfg.meta.name.clone(),
            addr: cfg.meta.gossip,
            initial,
            phase_timeout: FOUNDING_PHASE_TIMEOUT,
            backoff: FOUNDING_BACKOFF,
            propose_first: cfg.propose_first,
        };
        let mut founding = Founding::new(fc, saved_founding, cfg.session ^ 0xf0_4e_d1_46, now);
        if history {
            founding.adopt_legacy();
        }
        if cfg.founder {
            founding.found_alone();
        }
        if founding.take_dirty() {
            lease.set_founding(founding.state().clone());
        }
        if founding.decided().is_some_and(|f| f.name == cfg.meta.name) {
            lease.found();
        }
        let mut meta = cfg.meta.clone();
        meta.cluster_id = founding.decided().map(|f| f.cluster_id);
        meta.bootstrap_expect = cfg.bootstrap_expect;
        // A restarted node must out-bump the identities it published before.
        meta.bump = (lease.state().boot as u16).wrapping_mul(1024);
        meta.lease = lease.published(now);
        meta.has_free = lease.has_free();
        let fingerprint =
            cluster_fingerprint(meta.cluster_cidr, meta.subnet_len, meta.second, meta.vni);
        let (lease_now, free_now) = (meta.lease, meta.has_free);
        let mut membership = Membership::new(meta, &cfg.membership);
        // Tells the codec our founder, so other clusters are refused from the start.
        membership.set_meta(lease_now, free_now, founding.decided(), now);
        let auth = Authenticator::new(cfg.keys, cfg.session);
        let seed_retries = cfg
            .seeds
            .iter()
            .map(|&addr| SeedRetry {
                addr,
                next: now,
                delay: SEED_RETRY_MIN,
            })
            .collect();
        Ok(Controller {
            membership,
            lease,
            founding,
            seed_retries,
            fingerprint,
            seeds: cfg.seeds,
            next_join: now,
            out: VecDeque::new(),
            lease_out: VecDeque::new(),
            events: VecDeque::new(),
            dropped: 0,
            deaths: 0,
            held: 0,
            names: HashMap::new(),
            peers_dirty: true,
            refused_by: BTreeSet::new(),
            leave_deadline: None,
            unsaved: false,
            saved_lease,
            auth,
            wall: WallClock {
                at: now,
                unix_ms: 0,
            },
            reported: HashMap::new(),
            report_budget: ReportBudget::new(now),
            refused: HashMap::new(),
            alone_since: Some(now),
            silent_reported: None,
            offers: Offers::default(),
        })
    }

    /// Our name.
    pub fn name(&self) -> &str {
        &self.membership.me().name
    }

    /// Tells the node the wall-clock time (unix ms) at `now`, for the timestamps of
    /// authenticated datagrams. Call it before the `handle_*` and `poll_*` calls; the
    /// time in between is taken from `now`.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = WallClock { at: now, unix_ms };
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.wall.at(now)
    }

    /// Replaces the cluster keys (a reload of `--secret-file`).
    pub(crate) fn set_keys(&mut self, keys: Option<KeySet>) {
        self.auth.set_keys(keys);
    }

    /// Publishes our new WireGuard port and public key.
    pub(crate) fn set_wg(&mut self, wg: Option<super::meta::WgIdentity>, now: Instant) {
        self.membership.set_wg(wg, now);
    }

    /// Handles one datagram received on the gossip socket.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let frame = message::parse_frame(data);
        // The auth field does not depend on the version, so a datagram of a version
        // we cannot read is still checked: only a holder of the cluster key is
        // reported as a peer of another version.
        if matches!(frame, Ok(_) | Err(WireError::BadVersion(_))) {
            if let Err(reason) = self.auth.open(data, self.wall_ms(now), now) {
                self.report(from, reason, now);
                return;
            }
        }
        if let Err(WireError::BadVersion(version)) = frame {
            self.refuse_version(from, version, now);
            return;
        }
        if frame.is_ok() {
            // The version byte of an authenticated frame: which messages it takes.
            self.offers.heard(from, data[4], now);
        }
        match frame {
            Ok((message::Kind::Membership, body)) => {
                let before = self.membership.dropped;
                self.membership.handle_datagram(body, now);
                if self.membership.dropped != before {
                    self.dropped += 1;
                }
            }
            Ok((message::Kind::Lease, body)) => match LeaseDatagram::parse(body) {
                Ok(d) => self.handle_lease(from, d, now),
                Err(_) => self.dropped += 1,
            },
            Err(_) => self.dropped += 1,
        }
        self.after(now);
    }

    fn report(&mut self, from: SocketAddr, reason: Reject, now: Instant) {
        if let Some(t) = self.reported.get(&from.ip()) {
            if now.saturating_duration_since(*t) < REJECT_LOG_INTERVAL {
                return;
            }
        }
        let budget = &mut self.report_budget;
        if now.saturating_duration_since(budget.start) >= REJECT_LOG_INTERVAL {
            if budget.reports >= REJECT_LOG_BUDGET {
                self.events.push_back(Event::RejectReportsResumed {
                    unreported: budget.unreported,
                });
            }
            *budget = ReportBudget::new(now);
        }
        if budget.reports >= REJECT_LOG_BUDGET {
            budget.unreported += 1;
            return;
        }
        budget.reports += 1;
        let paused = budget.reports == REJECT_LOG_BUDGET;
        if self.reported.len() >= REJECT_LOG_SOURCES {
            self.reported.clear();
        }
        self.reported.insert(from.ip(), now);
        self.events.push_back(Event::Rejected { from, reason });
        if paused {
            self.events.push_back(Event::RejectReportsPaused);
        }
    }

    fn refuse_version(&mut self, from: SocketAddr, version: u8, now: Instant) {
        if !self.refused.contains_key(&from) && self.refused.len() >= REFUSED_SOURCES {
            let oldest = self
                .refused
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.refused.remove(&a);
            }
        }
        let r = self.refused.entry(from).or_insert(Refused {
            version,
            datagrams: 0,
            last: now,
            reported: None,
        });
        r.version = version;
        r.datagrams += 1;
        r.last = now;
        let due = r
            .reported
            .is_none_or(|t| now.saturating_duration_since(t) >= REJECT_LOG_INTERVAL);
        if due {
            r.reported = Some(now);
            self.events
                .push_back(Event::VersionRefused { from, version });
        }
    }

    fn handle_lease(&mut self, from: SocketAddr, d: LeaseDatagram, now: Instant) {
        if let LeaseMsg::Refuse { reason } = d.msg {
            let peer = d.from;
            if !self.is_established() {
                self.events.push_back(Event::Refused { peer, reason });
            } else if self.refused_by.len() < REJECT_LOG_SOURCES
                && self.refused_by.insert(peer.clone())
            {
                self.events
                    .push_back(Event::RefusedWhileServing { peer, reason });
            }
            return;
        }
        if d.cluster != self.fingerprint {
            self.dropped += 1;
            return;
        }
        if matches!(
            d.msg,
            LeaseMsg::DirectOffer { .. } | LeaseMsg::Probe { .. } | LeaseMsg::ProbeAck { .. }
        ) {
            // A probe comes from the sender's gateway address, not its gossip one:
            // it must not be learned as the member's address below.
            self.handle_path_message(d, now);
            return;
        }
        // Lease messages come only from members: a witness, owner or requester is one,
        // and the lease machine keeps state per sender (a `Watch` per beating name). A
        // name gossip does not know yet is dropped like a lost datagram; it retries.
        let member = self.membership.peer(&d.from).is_some();
        if member {
            self.names.entry(d.from.clone()).or_insert(from);
        }
        match d.msg {
            LeaseMsg::Founding(m) => self.founding.handle_message(&d.from, m, now),
            _ if !member => self.dropped += 1,
            msg => self.lease.handle_message(&d.from, msg, now),
        }
    }

    /// Handles the direct-routing messages of a member; a non-member's are dropped
    /// and counted.
    fn handle_path_message(&mut self, d: LeaseDatagram, now: Instant) {
        let gossip = match self.membership.peer(&d.from) {
            Some(k) if k.state != MemberState::Dead => k.meta.gossip,
            _ => {
                self.dropped += 1;
                return;
            }
        };
        match d.msg {
            LeaseMsg::DirectOffer { mac } if self.offers.receive(&d.from, mac, now) => {
                self.peers_dirty = true;
            }
            // Answered only while we offer: a stale offer elsewhere must not pass
            // its probe.
            LeaseMsg::Probe { nonce } if self.offers.ours().is_some() => {
                self.send_lease(gossip, LeaseMsg::ProbeAck { nonce });
            }
            LeaseMsg::ProbeAck { nonce } => self.events.push_back(Event::ProbeAnswered {
                peer: d.from,
                nonce,
            }),
            _ => {}
        }
    }

    /// Sets what we offer for direct routing: our underlay interface's MAC address,
    /// or `None` to offer nothing (members drop a withdrawn offer when it expires).
    /// A new offer goes to every member that speaks the version at once.
    // Driven by the daemon's direct-routing driver, issue 27's next part.
    #[allow(dead_code)]
    pub(crate) fn set_direct_offer(&mut self, mac: Option<[u8; 6]>, now: Instant) {
        self.offers.set_ours(mac, now);
        self.send_offers(now);
    }

    /// Sends our offer to every live member heard speaking a version that has it,
    /// when it is due.
    fn send_offers(&mut self, now: Instant) {
        let Some(mac) = self.offers.due(now) else {
            return;
        };
        let to: Vec<SocketAddr> = self
            .membership
            .peer_table()
            .filter(|k| k.state != MemberState::Dead && self.offers.speaks_offers(k.meta.gossip))
            .map(|k| k.meta.gossip)
            .collect();
        for addr in to {
            self.send_lease(addr, LeaseMsg::DirectOffer { mac });
        }
    }

    /// A sealed probe for the direct path to a peer (`docs/direct-routing.md`): the
    /// daemon sends it from our gateway address to the peer's, and the peer's answer
    /// comes back as [`Event::ProbeAnswered`] with the same `nonce`.
    // Driven by the daemon's direct-routing driver, issue 27's next part.
    #[allow(dead_code)]
    pub(crate) fn probe_datagram(&mut self, nonce: u64, now: Instant) -> Vec<u8> {
        let data = self.lease_datagram(LeaseMsg::Probe { nonce });
        self.auth.seal(data, self.wall_ms(now))
    }

    /// Runs timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_offers(now);
        if self.offers.expire(now) {
            self.peers_dirty = true;
        }
        if now >= self.next_join && !self.seeds.is_empty() {
            self.next_join = now + Duration::from_secs(2);
            if self.membership.live_names().next().is_none() {
                for s in self.seeds.clone() {
                    if s != self.membership.me().gossip {
                        self.membership.join(s, now);
                    }
                }
                let since = *self.alone_since.get_or_insert(now);
                let alone = now.saturating_duration_since(since);
                let due = self
                    .silent_reported
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60));
                if alone >= SEEDS_SILENT_AFTER && due {
                    self.silent_reported = Some(now);
                    self.events.push_back(Event::SeedsSilent {
                        seeds: self.seeds.clone(),
                        for_secs: alone.as_secs(),
                    });
                }
            } else {
                self.alone_since = None;
                self.silent_reported = None;
            }
        }
        self.reannounce_to_seeds(now);
        self.membership.handle_timeout(now);
        if now >= self.lease.poll_timeout() {
            self.sync_peers_to_lease();
            self.lease.handle_timeout(now);
        }
        if self.founding.poll_timeout().is_some_and(|t| now >= t) {
            self.sync_members_to_founding();
            self.founding.handle_timeout(now);
        }
        self.after(now);
    }

    /// Announces to every seed that is not a live member, with backoff, while we have
    /// other members (alone, the join above asks every seed). Two islands that share
    /// a seed merge this way.
    fn reannounce_to_seeds(&mut self, now: Instant) {
        if self.membership.live_names().next().is_none() {
            return;
        }
        let me = self.membership.me().gossip;
        for i in 0..self.seed_retries.len() {
            let r = self.seed_retries[i];
            if r.addr == me {
                continue;
            }
            if self.membership.has_live_addr(r.addr) {
                self.seed_retries[i] = SeedRetry {
                    addr: r.addr,
                    next: now + SEED_RETRY_MIN,
                    delay: SEED_RETRY_MIN,
                };
            } else if now >= r.next {
                self.membership.announce_to(r.addr, now);
                self.seed_retries[i] = SeedRetry {
                    addr: r.addr,
                    next: now + r.delay,
                    delay: (r.delay * 2).min(SEED_RETRY_MAX),
                };
            }
        }
    }

    /// Tells the founding machine who is present, while no founder is known.
    fn sync_members_to_founding(&mut self) {
        if self.founding.decided().is_some() {
            return;
        }
        let mut members = Vec::new();
        let mut founded = Vec::new();
        for k in self.membership.peer_table() {
            if k.state == MemberState::Dead {
                continue;
            }
            let m = &k.meta;
            if let Some(cluster_id) = m.cluster_id {
                founded.push(FoundedPeer {
                    name: m.name.clone(),
                    cluster_id,
                });
            }
            members.push(Participant {
                name: m.name.clone(),
                addr: m.gossip,
                // Only `--bootstrap-expect` is published; a member's `--peers` are
                // carried by its promises, where the quorum is checked.
                initial: match m.bootstrap_expect {
                    Some(n) => InitialSet::Expect(n),
                    None => InitialSet::Peers(BTreeSet::new()),
                },
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        founded.sort_by(|a, b| a.name.cmp(&b.name));
        self.founding.set_members(members, founded);
    }

    /// Moves the founding machine's outputs: its state into the lease state (saved
    /// together), genesis when the founder is this node, and its messages into the
    /// held-until-saved lease queue.
    fn after_founding(&mut self) {
        if self.founding.decided().is_none() {
            if self.lease.state().has_history() {
                // Granted a subnet before it learned the founder: it asks members.
                self.founding.set_in_cluster();
            }
            self.sync_members_to_founding();
        }
        if self.founding.take_dirty() {
            self.lease.set_founding(self.founding.state().clone());
            let me = self.membership.me().name.clone();
            if self.founding.decided().is_some_and(|f| f.name == me) {
                self.lease.found();
            }
        }
        while let Some(FoundingTransmit { to, msg }) = self.founding.poll_transmit() {
            if let Some(addr) = self.names.get(&to).copied() {
                let data = self.lease_datagram(LeaseMsg::Founding(msg));
                self.lease_out.push_back(Datagram { to: addr, data });
            }
        }
    }

    fn sync_peers_to_lease(&mut self) {
        let mut live = Vec::new();
        let mut dead = Vec::new();
        let mut free = Vec::new();
        for k in self.membership.peer_table() {
            if k.state == MemberState::Dead {
                dead.push(k.meta.name.clone());
            } else {
                if k.meta.has_free {
                    free.push(k.meta.name.clone());
                }
                live.push(k.meta.name.clone());
            }
        }
        self.lease.set_peers(live, dead, free);
    }

    /// Collects outputs of both machines after an input.
    fn after(&mut self, now: Instant) {
        while let Some(ev) = self.membership.poll_event() {
            match ev {
                MembershipEvent::Up(m) => {
                    self.names.insert(m.name.clone(), m.gossip);
                    self.peers_dirty = true;
                }
                MembershipEvent::Down(m) => {
                    self.deaths += 1;
                    self.offers.forget(&m.name);
                    self.peers_dirty = true;
                }
                MembershipEvent::Suspicion => self.peers_dirty = true,
                MembershipEvent::Mismatch { peer, addr, reason } => {
                    self.send_lease(
                        addr,
                        LeaseMsg::Refuse {
                            reason: reason.clone(),
                        },
                    );
                    self.events.push_back(Event::RefusedPeer { peer, reason });
                }
            }
        }
        self.after_founding();
        while let Some(ev) = self.lease.poll_event() {
            self.events.push_back(Event::Lease(ev));
        }
        let lease = self.published(now);
        let free = self.lease.has_free();
        let founder = self.founding.decided().cloned();
        self.membership.set_meta(lease, free, founder.as_ref(), now);
        while let Some(LeaseTransmit { to, msg }) = self.lease.poll_transmit() {
            // Messages to names we have no address for yet are lost, like a datagram.
            if let Some(addr) = self.names.get(&to).copied() {
                let data = self.lease_datagram(msg);
                self.lease_out.push_back(Datagram { to: addr, data });
            }
        }
        if self.peers_dirty {
            self.peers_dirty = false;
            self.events.push_back(Event::PeersChanged);
        }
        self.after_leave(now);
    }

    fn lease_datagram(&self, msg: LeaseMsg) -> Vec<u8> {
        let d = LeaseDatagram {
            from: self.membership.me().name.clone(),
            cluster: self.fingerprint,
            msg,
        };
        let mut data = Vec::with_capacity(64);
        d.emit(&mut data);
        data
    }

    fn send_lease(&mut self, to: SocketAddr, msg: LeaseMsg) {
        let data = self.lease_datagram(msg);
        self.out.push_back(Datagram { to, data });
    }

    /// Next datagram to send. While the lease state is unsaved, the lease machine's
    /// messages are dropped (and counted) instead: they may follow from state that a
    /// restart would not remember, and the protocol tolerates their loss.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Datagram> {
        let next = match self.out.pop_front() {
            Some(d) => d,
            None => {
                if self.unsaved {
                    self.held += self.lease_out.len() as u64;
                    self.lease_out.clear();
                }
                match self.lease_out.pop_front() {
                    Some(d) => d,
                    None => self.membership.poll_transmit(now)?,
                }
            }
        };
        let data = self.auth.seal(next.data, self.wall_ms(now));
        Some(Datagram { to: next.to, data })
    }

    /// Tells the node whether its lease state (see [`Controller::take_lease_dirty`]) is now
    /// saved. While it is not, lease messages are held back and the node uses no
    /// subnet but the one in the saved state, so a restart never forgets what it
    /// told others or used.
    pub fn set_state_saved(&mut self, saved: bool) {
        self.unsaved = !saved;
        if saved {
            self.saved_lease = self.lease.state().lease;
        }
    }

    /// Whether this node already belongs to a cluster: it owns, owned or used a subnet.
    /// Such a node keeps serving its cluster when a peer of another cluster refuses it.
    pub fn is_established(&self) -> bool {
        self.lease.state().has_history()
    }

    /// Whether the lease state in memory is newer than the saved one.
    pub fn state_unsaved(&self) -> bool {
        self.unsaved
    }

    /// Next instant [`Controller::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.lease.poll_timeout();
        if let Some(m) = self.membership.poll_timeout() {
            t = t.min(m);
        }
        if !self.seeds.is_empty() {
            t = t.min(self.next_join);
        }
        if let Some(f) = self.founding.poll_timeout() {
            t = t.min(f);
        }
        if let Some(d) = self.leave_deadline {
            t = t.min(d);
        }
        if let Some(o) = self.offers.poll_timeout() {
            t = t.min(o);
        }
        if self.membership.live_names().next().is_some() {
            let me = self.membership.me().gossip;
            for r in &self.seed_retries {
                if r.addr != me {
                    t = t.min(r.next);
                }
            }
        }
        t
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The subnet index this node may use at `now`: the lease machine's, and while
    /// the state is unsaved only if it is the saved lease.
    pub fn using(&self, now: Instant) -> Option<u32> {
        self.lease
            .using(now)
            .filter(|u| !self.unsaved || self.saved_lease == Some(*u))
    }

    /// What membership publishes as our lease: [`Controller::using`] and its version.
    fn published(&self, now: Instant) -> Option<Owned> {
        let (idx, ver) = self.lease.published(now)?;
        (self.using(now) == Some(idx)).then_some((idx, ver))
    }

    /// The subnet this node may use at `now`.
    pub(crate) fn using_subnet(&self, now: Instant) -> Option<IpNet> {
        Some(self.using_subnets(now)?.0)
    }

    /// The subnets this node may use at `now`: the first, and dual-stack the IPv6 one.
    pub(crate) fn using_subnets(&self, now: Instant) -> Option<(IpNet, Option<IpNet>)> {
        self.membership.me().subnets(self.using(now)?)
    }

    /// The lease machine (for persistence and inspection).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Returns true once after each change of the lease state that must be persisted.
    pub fn take_lease_dirty(&mut self) -> bool {
        self.lease.take_dirty()
    }

    /// The membership machine.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Datagrams dropped as malformed, oversized, from another cluster, or lease
    /// messages from a name that is not a member.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Peers with a subnet, for the FIB. When two peers publish the same subnet (a
    /// stale identity and its successor), the higher ownership version wins.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let me = self.membership.me();
        let mut by_subnet: BTreeMap<u32, (u64, PeerInfo)> = BTreeMap::new();
        for KnownMember { meta: m, state } in self.membership.peers() {
            let Some((idx, ver)) = self.published_by(&m) else {
                continue;
            };
            let Some((subnet, subnet_v6)) = me.subnets(idx) else {
                continue;
            };
            let info = PeerInfo {
                name: m.name.clone(),
                subnet,
                subnet_v6,
                underlay: SocketAddr::new(m.gossip.ip(), m.vxlan_port),
                vtep_mac: m.vtep_mac,
                vni: m.vni,
                state,
                wg: m.wg,
                direct: self.offers.of(&m.name),
            };
            let replace = by_subnet
                .get(&idx)
                .is_none_or(|(v, old)| ver > *v || (ver == *v && old.state == MemberState::Dead));
            if replace {
                by_subnet.insert(idx, (ver, info));
            }
        }
        by_subnet.into_values().map(|(_, p)| p).collect()
    }

    /// The lease `m` publishes, if its index numbers one of our subnets. A larger
    /// index (a bug or a forged identity) would name a subnet outside the cluster
    /// CIDR, or alias another node's; such a lease is ignored.
    fn published_by(&self, m: &NodeMeta) -> Option<Owned> {
        m.lease.filter(|(idx, _)| *idx < self.lease_subnet_count())
    }

    /// Every member gossip knows, with its state and published subnet (if any).
    pub(crate) fn members(&self) -> Vec<MemberReport> {
        let me = self.membership.me();
        self.membership
            .peers()
            .into_iter()
            .map(|KnownMember { meta: m, state }| {
                let subnets = self.published_by(&m).and_then(|(idx, _)| me.subnets(idx));
                MemberReport {
                    subnet: subnets.map(|s| s.0),
                    subnet_v6: subnets.and_then(|s| s.1),
                    name: m.name,
                    gossip: m.gossip,
                    state,
                }
            })
            .collect()
    }

    /// The founding machine (for inspection).
    #[cfg(test)]
    pub(crate) fn founding(&self) -> &Founding {
        &self.founding
    }

    /// The founder of our cluster, once known.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn founder(&self) -> Option<&Founder> {
        self.founding.decided()
    }

    /// Subnets in use as members publish them (live members and us), and in all.
    fn subnets_in_use(&self, now: Instant) -> (u64, u64) {
        let mut used: BTreeSet<u32> = self
            .membership
            .peer_table()
            .filter(|k| k.state != MemberState::Dead)
            .filter_map(|k| self.published_by(&k.meta).map(|(idx, _)| idx))
            .collect();
        if let Some(u) = self.using(now) {
            used.insert(u);
        }
        (used.len() as u64, u64::from(self.lease_subnet_count()))
    }

    fn lease_subnet_count(&self) -> u32 {
        self.membership.me().lease_count().unwrap_or(0)
    }

    /// What this node waits for while it uses no subnet (`None`: it uses one).
    pub(crate) fn waiting(&self, now: Instant) -> Option<LeaseWait> {
        if self.using(now).is_some() {
            return None;
        }
        if self.lease.state().lease.is_some() {
            return Some(LeaseWait::Fenced);
        }
        if let Some(w) = self.founding.waiting() {
            return Some(LeaseWait::Founding(w));
        }
        if self.lease.has_free() {
            return Some(LeaseWait::OwnSpace);
        }
        if let Some(owner) = self.lease.asking() {
            return Some(LeaseWait::Asking {
                owner: owner.to_string(),
            });
        }
        let (used, total) = self.subnets_in_use(now);
        let anyone_free = self
            .membership
            .peer_table()
            .any(|k| k.state != MemberState::Dead && k.meta.has_free);
        if !anyone_free && used >= total {
            Some(LeaseWait::Exhausted { used, total })
        } else if !anyone_free {
            Some(LeaseWait::NoFreeSpace { used, total })
        } else {
            // Free space is published, and the next request goes out on the next tick.
            let owner = self
                .membership
                .peer_table()
                .filter(|k| k.state != MemberState::Dead && k.meta.has_free)
                .map(|k| k.meta.name.clone())
                .min()
                .unwrap_or_default();
            Some(LeaseWait::Asking { owner })
        }
    }

    /// The status snapshot.
    pub fn status(&self, now: Instant) -> Status {
        let me = self.membership.me();
        let waiting = self.waiting(now);
        Status {
            name: me.name.clone(),
            lease: self.using_subnet(now),
            fenced: self.lease.state().lease.is_some() && self.lease.using(now).is_none(),
            exhausted: matches!(waiting, Some(LeaseWait::Exhausted { .. })),
            waiting,
            founder: self.founding.decided().cloned(),
            members: self.members(),
            witnesses: self
                .lease
                .state()
                .view
                .configs
                .last()
                .map(|c| c.members.clone())
                .unwrap_or_default(),
            peers: self.peers(),
            dropped: self.dropped,
            deaths: self.deaths,
            held: self.held,
            state_error: None,
            auth_keys: self.auth.key_ids(),
            rejected: self.auth.rejected(),
            traffic: GossipTraffic::default(),
            refused_versions: {
                let mut v: Vec<VersionRefusal> = self
                    .refused
                    .iter()
                    .map(|(from, r)| VersionRefusal {
                        from: *from,
                        version: r.version,
                        datagrams: r.datagrams,
                        ago_secs: now.saturating_duration_since(r.last).as_secs(),
                    })
                    .collect();
                v.sort_by_key(|r| r.from);
                v
            },
        }
    }

    /// Leaves on purpose: releases our space to a witness, then tells the cluster
    /// we are gone; [`Event::Left`] says when that is done (within
    /// [`LEAVE_TIMEOUT`]).
    pub(crate) fn leave(&mut self, now: Instant) {
        if self.leave_deadline.is_none() {
            self.leave_deadline = Some(now + LEAVE_TIMEOUT);
        }
        self.lease.leave(now);
        self.after(now);
    }

    /// Ends a leave in progress once the hand-over is done or its deadline passed.
    fn after_leave(&mut self, now: Instant) {
        let Some(deadline) = self.leave_deadline else {
            return;
        };
        let done = self.lease.leave_done();
        if done || now >= deadline {
            self.leave_deadline = None;
            self.membership.leave(now);
            self.events.push_back(Event::Left { timed_out: !done });
        }
    }

    /// `rmpeer NAME`: takes over `name`'s space now. Safe only if `name` is really
    /// gone; if it is alive behind a partition, both nodes use the same subnet.
    pub(crate) fn force_reclaim(&mut self, name: &str, now: Instant) -> Vec<u32> {
        let published = self
            .membership
            .peer(name)
            .and_then(|k| self.published_by(&k.meta));
        let taken = self.lease.force_reclaim(name, published);
        self.after(now);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> Controller {
        Controller::new(test_config(), None, Instant::now()).unwrap()
    }

    fn test_config() -> ControllerConfig {
        let meta = NodeMeta {
            name: "a".into(),
            gossip: "10.0.0.1:7946".parse().unwrap(),
            vxlan_port: 4789,
            vni: 1,
            vtep_mac: [2, 0, 0, 0, 0, 1],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            second: None,
            lease: None,
            has_free: false,
            bump: 0,
            cluster_id: None,
            bootstrap_expect: None,
            wg: None,
        };
        ControllerConfig {
            meta,
            seeds: vec![],
            founder: true,
            propose_first: false,
            bootstrap_expect: None,
            membership: MembershipConfig::default(),
            lease: LeaseConfig::new("a", 0, true),
            keys: None,
            session: 1,
        }
    }

    /// A `lease.json` written before founding by agreement has no `founding` key. It
    /// loads, and a node whose state shows a subnet counts as founded: it publishes
    /// cluster id 0 and never proposes, even without `founder` set.
    #[test]
    fn legacy_state_loads_and_counts_as_founded() {
        let json = r#"{"epoch":0,"boot":3,"state_version":2,"owned":{"5":2},
            "known":{"5":2},"lease":5,"view":{"version":0,"configs":[]},
            "watching":{},"attested":[],"reclaimed":[],"pending_grants":[]}"#;
        let st: LeaseState = serde_json::from_str(json).unwrap();
        assert_eq!(st.founding, Default::default());
        let mut cfg = test_config();
        cfg.founder = false;
        cfg.seeds = vec!["10.0.0.2:7946".parse().unwrap()];
        let n = Controller::new(cfg, Some(st), Instant::now()).unwrap();
        assert_eq!(n.founder(), Some(&Founder::legacy()));
        assert_eq!(n.membership().me().cluster_id, Some(0));
        assert!(n.founding().waiting().is_none());
        // A fresh node with the same settings waits to found instead.
        let mut cfg = test_config();
        cfg.founder = false;
        cfg.seeds = vec!["10.0.0.2:7946".parse().unwrap()];
        let n = Controller::new(cfg, None, Instant::now()).unwrap();
        assert_eq!(n.founder(), None);
        assert!(n.founding().waiting().is_some());
    }

    #[test]
    fn oversized_and_malformed_datagrams_are_counted() {
        let mut n = node();
        let now = Instant::now();
        let from: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let mut big = b"OVLD\x01\x01\x00".to_vec();
        big.resize(message::MAX_DATAGRAM + 1, 0);
        n.handle_datagram(from, &big, now);
        n.handle_datagram(from, b"OVLD\x01\x02\x00\x01", now);
        n.handle_datagram(from, b"GET / HTTP/1.1", now);
        n.handle_datagram(from, b"OVLD\x01\x01\x00\xff\xff", now);
        assert_eq!(n.dropped(), 4);
        assert_eq!(n.status(now).dropped, 4);
    }

    #[test]
    fn keyed_node_rejects_counts_and_reports_once_per_interval() {
        let now = Instant::now();
        let mut n = node();
        n.set_keys(Some(
            KeySet::parse("cluster key for the unit test").unwrap(),
        ));
        let from: SocketAddr = "10.0.0.9:7946".parse().unwrap();
        // A valid-looking lease datagram with no tag, three times.
        let d = LeaseDatagram {
            from: "rogue".into(),
            cluster: n.fingerprint,
            msg: LeaseMsg::Refuse {
                reason: "go away".into(),
            },
        };
        let mut data = Vec::new();
        d.emit(&mut data);
        for _ in 0..3 {
            n.handle_datagram(from, &data, now);
        }
        let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
        assert_eq!(
            events,
            vec![Event::Rejected {
                from,
                reason: Reject::Unsigned
            }],
            "the Refuse must not get through, and the report is not repeated"
        );
        assert_eq!(n.status(now).rejected.unsigned, 3);
        assert_eq!(n.dropped(), 0);
        n.handle_datagram(from, &data, now + REJECT_LOG_INTERVAL);
        assert!(matches!(n.poll_event(), Some(Event::Rejected { .. })));
    }

    /// A cluster member of a version we cannot accept is refused by name, counted,
    /// and reported once per interval; one of an adjacent version is not refused;
    /// a datagram of a foreign version without the cluster key is only a rejection.
    #[test]
    fn member_of_an_unacceptable_version_is_refused_and_shown() {
        let now = Instant::now();
        let key = "cluster key for the unit test";
        let mut n = node();
        n.set_keys(Some(KeySet::parse(key).unwrap()));
        n.set_wall_clock(now, 1_000_000);
        let mut peer =
            crate::control::auth::Authenticator::new(Some(KeySet::parse(key).unwrap()), 7);
        let framed = |peer: &mut crate::control::auth::Authenticator, version: u8| {
            let mut f = Vec::new();
            message::emit_frame_header(message::Kind::Membership, &mut f);
            f[4] = version;
            f.extend_from_slice(b"body of a newer protocol");
            peer.seal(f, 1_000_000)
        };
        let from: SocketAddr = "10.0.0.9:7946".parse().unwrap();
        let far = message::max_accepted() + 7;
        for _ in 0..3 {
            let d = framed(&mut peer, far);
            n.handle_datagram(from, &d, now);
        }
        let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
        assert_eq!(events, vec![Event::VersionRefused { from, version: far }]);
        let st = n.status(now + Duration::from_secs(2));
        assert_eq!(
            st.refused_versions,
            vec![VersionRefusal {
                from,
                version: far,
                datagrams: 3,
                ago_secs: 2
            }]
        );
        assert_eq!(
            st.dropped, 0,
            "refusals are counted apart from malformed datagrams"
        );
        // Reported again after the interval.
        let d = framed(&mut peer, far);
        n.handle_datagram(from, &d, now + REJECT_LOG_INTERVAL);
        assert!(matches!(n.poll_event(), Some(Event::VersionRefused { .. })));
        // The next version is accepted: not refused (its body is then parsed as ours).
        let other: SocketAddr = "10.0.0.10:7946".parse().unwrap();
        let d = framed(&mut peer, message::max_accepted());
        n.handle_datagram(other, &d, now);
        assert!(n
            .status(now)
            .refused_versions
            .iter()
            .all(|r| r.from != other));
        // Without the cluster key: a rejection, and no refusal to show.
        let mut stranger = crate::control::auth::Authenticator::new(
            Some(KeySet::parse("another cluster's key").unwrap()),
            8,
        );
        let stranger_addr: SocketAddr = "10.0.0.11:7946".parse().unwrap();
        let d = framed(&mut stranger, far);
        n.handle_datagram(stranger_addr, &d, now);
        let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e, Event::Rejected { .. })),
            "{events:?}"
        );
        assert!(n
            .status(now)
            .refused_versions
            .iter()
            .all(|r| r.from != stranger_addr));
    }

    #[test]
    fn reports_from_many_sources_stop_at_the_budget() {
        let now = Instant::now();
        let mut n = node();
        n.set_keys(Some(
            KeySet::parse("cluster key for the unit test").unwrap(),
        ));
        let mut data = Vec::new();
        message::emit_frame_header(message::Kind::Membership, &mut data);
        data.extend_from_slice(b"anything");
        // 3,000 senders, in turn, twice: more than the table of reported senders.
        for round in 0..2 {
            for i in 0..3000u32 {
                let from = SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 7946);
                n.handle_datagram(from, &data, now + Duration::from_millis(round));
            }
        }
        let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
        let reported = events
            .iter()
            .filter(|e| matches!(e, Event::Rejected { .. }))
            .count();
        assert_eq!(reported, REJECT_LOG_BUDGET as usize);
        assert_eq!(events.last(), Some(&Event::RejectReportsPaused));
        assert_eq!(n.status(now).rejected.unsigned, 6000);
        // The next interval says how many went unreported, and reports again.
        let later = now + REJECT_LOG_INTERVAL + Duration::from_secs(1);
        n.handle_datagram("10.9.9.9:7946".parse().unwrap(), &data, later);
        let events: Vec<_> = std::iter::from_fn(|| n.poll_event()).collect();
        assert_eq!(
            events[0],
            // The reported senders' repeats are not counted: they were reported.
            Event::RejectReportsResumed {
                unreported: 6000 - 2 * REJECT_LOG_BUDGET as u64
            }
        );
        assert!(matches!(events[1], Event::Rejected { .. }));
    }

    #[test]
    fn a_node_nobody_answers_says_so() {
        let start = Instant::now();
        let mut n = node();
        n.seeds = vec!["10.0.0.2:7946".parse().unwrap()];
        let mut silent = vec![];
        for s in 0..=80u64 {
            n.handle_timeout(start + Duration::from_millis(s * 1000));
            while n.poll_transmit(start).is_some() {}
            while let Some(ev) = n.poll_event() {
                if let Event::SeedsSilent { for_secs, .. } = ev {
                    silent.push(for_secs);
                }
            }
        }
        assert_eq!(silent.len(), 2, "{silent:?}");
        assert!((10..=12).contains(&silent[0]), "{silent:?}");
        assert!(silent[1] >= 70, "{silent:?}");
    }

    #[test]
    fn recorded_datagrams_cannot_be_replayed() {
        let now = Instant::now();
        let key = || Some(KeySet::parse("cluster key for the unit test").unwrap());
        let mut a = node();
        a.set_keys(key());
        a.set_wall_clock(now, 1_000_000);
        let mut b = node();
        b.set_keys(key());
        b.set_wall_clock(now, 1_000_000);
        let from: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        a.membership.join("10.0.0.2:7946".parse().unwrap(), now);
        let t = a.poll_transmit(now).expect("a join datagram");
        b.handle_datagram(from, &t.data, now);
        assert_eq!(b.status(now).rejected.total(), 0);
        b.handle_datagram(from, &t.data, now);
        assert_eq!(b.status(now).rejected.replay, 1);
        // Ten minutes later it is stale, even for a node that never saw it.
        let later = now + Duration::from_secs(600);
        let mut c = node();
        c.set_keys(key());
        c.set_wall_clock(later, 1_600_000);
        c.handle_datagram(from, &t.data, later);
        assert_eq!(c.status(later).rejected.stale, 1);
    }

    /// Runs two controllers for `steps` tenths of a second, delivering every datagram
    /// at once and saving state as the driver does.
    fn exchange(a: &mut Controller, b: &mut Controller, now: Instant, steps: u32) -> Instant {
        exchange_with(a, b, now, steps, |_| {}, |_| {})
    }

    /// [`exchange`], with `patch_b` applied to each of b's datagrams before a gets it
    /// and `seen_by_b` shown each of a's datagrams to b.
    fn exchange_with(
        a: &mut Controller,
        b: &mut Controller,
        mut now: Instant,
        steps: u32,
        patch_b: impl Fn(&mut Vec<u8>),
        mut seen_by_b: impl FnMut(&[u8]),
    ) -> Instant {
        let (aa, ba) = (a.membership().me().gossip, b.membership().me().gossip);
        for _ in 0..steps {
            now += Duration::from_millis(100);
            a.handle_timeout(now);
            b.handle_timeout(now);
            for _ in 0..100 {
                let mut moved = false;
                while let Some(d) = a.poll_transmit(now) {
                    moved = true;
                    if d.to == ba {
                        seen_by_b(&d.data);
                        b.handle_datagram(aa, &d.data, now);
                    }
                }
                while let Some(mut d) = b.poll_transmit(now) {
                    moved = true;
                    if d.to == aa {
                        patch_b(&mut d.data);
                        a.handle_datagram(ba, &d.data, now);
                    }
                }
                if !moved {
                    break;
                }
            }
            for n in [&mut *a, &mut *b] {
                if n.take_lease_dirty() {
                    n.set_state_saved(true);
                }
            }
        }
        now
    }

    /// b, whose state file says it uses subnet `idx` (a's /16 has 256 /24s).
    fn b_with_lease(idx: u32) -> Controller {
        let mut cfg = test_config();
        cfg.meta.name = "b".into();
        cfg.meta.gossip = "10.0.0.2:7946".parse().unwrap();
        cfg.founder = false;
        cfg.seeds = vec!["10.0.0.1:7946".parse().unwrap()];
        let st = LeaseState {
            owned: [(idx, 1)].into_iter().collect(),
            known: [(idx, 1)].into_iter().collect(),
            lease: Some(idx),
            ..LeaseState::default()
        };
        Controller::new(cfg, Some(st), Instant::now()).unwrap()
    }

    #[test]
    fn a_published_lease_past_the_subnet_count_is_no_peer_subnet() {
        let now = Instant::now();
        for (idx, expect) in [(300, None), (3, Some("10.244.3.0/24"))] {
            let mut a = node();
            let mut b = b_with_lease(idx);
            assert_eq!(b.membership().me().lease, Some((idx, 1)));
            let later = exchange(&mut a, &mut b, now, 30);
            let expect: Option<IpNet> = expect.map(|s| s.parse().unwrap());
            let members = a.members();
            let mb = members.iter().find(|m| m.name == "b").expect("a knows b");
            assert_eq!(mb.subnet, expect, "index {idx}");
            assert_eq!(a.peers().first().map(|p| p.subnet), expect, "index {idx}");
            assert_eq!(a.subnets_in_use(later).0, 1 + u64::from(expect.is_some()));
        }
    }

    fn drain(n: &mut Controller) -> Vec<Event> {
        std::iter::from_fn(|| n.poll_event()).collect()
    }

    fn refuse(to: &mut Controller, from: &str, now: Instant) {
        let d = LeaseDatagram {
            from: from.into(),
            cluster: 0,
            msg: LeaseMsg::Refuse {
                reason: "cluster CIDR differs".into(),
            },
        };
        let mut data = Vec::new();
        d.emit(&mut data);
        to.handle_datagram("10.0.0.9:7946".parse().unwrap(), &data, now);
    }

    /// A refusal stops a node still joining; an established node keeps serving and
    /// hears of each refusing peer once.
    #[test]
    fn a_refusal_is_fatal_only_to_a_node_still_joining() {
        let now = Instant::now();
        let mut cfg = test_config();
        cfg.founder = false;
        cfg.seeds = vec!["10.0.0.2:7946".parse().unwrap()];
        let mut joining = Controller::new(cfg, None, now).unwrap();
        assert!(!joining.is_established());
        drain(&mut joining);
        refuse(&mut joining, "x", now);
        assert!(
            drain(&mut joining).contains(&Event::Refused {
                peer: "x".into(),
                reason: "cluster CIDR differs".into()
            }),
            "a joining node must not join"
        );
        let mut serving = b_with_lease(3);
        assert!(serving.is_established());
        drain(&mut serving);
        for _ in 0..3 {
            refuse(&mut serving, "x", now);
        }
        refuse(&mut serving, "y", now);
        let refusals: Vec<_> = drain(&mut serving)
            .into_iter()
            .filter(|e| matches!(e, Event::Refused { .. } | Event::RefusedWhileServing { .. }))
            .collect();
        assert_eq!(
            refusals,
            ["x", "y"].map(|p| Event::RefusedWhileServing {
                peer: p.into(),
                reason: "cluster CIDR differs".into()
            })
        );
    }

    /// Refusals from ever new names are reported up to a bound, and remembered no
    /// further: a sender cannot grow the table one name per datagram.
    #[test]
    fn refusals_from_many_names_are_reported_up_to_a_bound() {
        let now = Instant::now();
        let mut serving = b_with_lease(3);
        drain(&mut serving);
        for i in 0..REJECT_LOG_SOURCES + 100 {
            refuse(&mut serving, &format!("x{i}"), now);
        }
        let reported = drain(&mut serving)
            .into_iter()
            .filter(|e| matches!(e, Event::RefusedWhileServing { .. }))
            .count();
        assert_eq!(reported, REJECT_LOG_SOURCES);
        assert_eq!(serving.refused_by.len(), REJECT_LOG_SOURCES);
    }

    /// A leave whose witness has gone silent ends at the deadline the core keeps,
    /// and asks to be woken for it; with nobody to hand to, it ends at once.
    #[test]
    fn a_leave_nobody_takes_ends_at_its_deadline() {
        let mut alone = b_with_lease(3);
        drain(&mut alone);
        alone.leave(Instant::now());
        assert!(drain(&mut alone).contains(&Event::Left { timed_out: false }));
        let mut a = node();
        let mut b = b_with_lease(3);
        let t0 = exchange(&mut a, &mut b, Instant::now(), 30);
        drain(&mut b);
        // a goes silent: b's hand-over to it is never confirmed.
        b.leave(t0);
        assert!(!drain(&mut b)
            .iter()
            .any(|e| matches!(e, Event::Left { .. })));
        assert!(b.poll_timeout() <= t0 + LEAVE_TIMEOUT);
        b.handle_timeout(t0 + LEAVE_TIMEOUT - Duration::from_millis(1));
        assert!(!drain(&mut b)
            .iter()
            .any(|e| matches!(e, Event::Left { .. })));
        b.handle_timeout(t0 + LEAVE_TIMEOUT);
        assert!(drain(&mut b).contains(&Event::Left { timed_out: true }));
        b.handle_timeout(t0 + LEAVE_TIMEOUT * 2);
        assert!(!drain(&mut b)
            .iter()
            .any(|e| matches!(e, Event::Left { .. })));
    }

    /// When a peer goes quiet it turns suspect before it is dead, and the core says
    /// so with an event (the driver republishes on it, no polling).
    #[test]
    fn a_peer_turning_suspect_raises_peers_changed() {
        let now = Instant::now();
        let mut a = node();
        let mut b = b_with_lease(3);
        let mut now = exchange(&mut a, &mut b, now, 30);
        assert!(a
            .peers()
            .iter()
            .any(|p| p.name == "b" && p.state == MemberState::Alive));
        drain(&mut a);
        // b goes silent: a's probes go unanswered.
        let mut saw = None;
        for _ in 0..600 {
            now += Duration::from_millis(100);
            a.handle_timeout(now);
            while a.poll_transmit(now).is_some() {}
            if drain(&mut a).contains(&Event::PeersChanged) {
                let state = a.peers().iter().find(|p| p.name == "b").map(|p| p.state);
                if state == Some(MemberState::Suspect) {
                    saw = Some(now);
                    break;
                }
            }
        }
        assert!(saw.is_some(), "no PeersChanged with b suspect");
    }

    #[test]
    fn lease_messages_from_strangers_are_dropped() {
        let now = Instant::now();
        let mut a = node();
        let from: SocketAddr = "10.0.0.9:7946".parse().unwrap();
        for i in 0..50 {
            let d = LeaseDatagram {
                from: format!("stranger{i}"),
                cluster: a.fingerprint,
                msg: LeaseMsg::Beat {
                    epoch: 0,
                    seq: 1,
                    view: Default::default(),
                    state_version: 1,
                    owned: vec![(0, 1)],
                },
            };
            let mut data = Vec::new();
            d.emit(&mut data);
            a.handle_datagram(from, &data, now);
        }
        assert!(a.lease().state().watching.is_empty());
        assert!(a.names.is_empty());
        assert_eq!(a.dropped(), 50);
        // A member's beat is handled.
        let mut b = b_with_lease(3);
        exchange(&mut a, &mut b, now, 30);
        assert!(a.lease().state().watching.contains_key("b"));
    }

    const MAC_B: [u8; 6] = [2, 0xbb, 0, 0, 0, 2];

    /// The lease message in a datagram, if it is one.
    fn lease_msg(data: &[u8]) -> Option<LeaseMsg> {
        match message::parse_frame(data) {
            Ok((message::Kind::Lease, body)) => LeaseDatagram::parse(body).ok().map(|d| d.msg),
            _ => None,
        }
    }

    fn direct_of(n: &Controller, name: &str) -> Option<[u8; 6]> {
        n.peers().into_iter().find(|p| p.name == name)?.direct
    }

    /// b's offer reaches a, is renewed while b offers, and expires once b stops.
    #[test]
    fn a_direct_offer_reaches_members_and_expires_when_withdrawn() {
        let mut a = node();
        let mut b = b_with_lease(3);
        let mut now = exchange(&mut a, &mut b, Instant::now(), 30);
        assert_eq!(direct_of(&a, "b"), None);
        b.set_direct_offer(Some(MAC_B), now);
        now = exchange(&mut a, &mut b, now, 5);
        assert_eq!(direct_of(&a, "b"), Some(MAC_B));
        assert!(drain(&mut a).contains(&Event::PeersChanged));
        // Renewed every period: still held well past one expiry.
        let expiry = super::super::offer::OFFER_EXPIRY;
        now = exchange(&mut a, &mut b, now, (expiry.as_millis() / 100) as u32 * 2);
        assert_eq!(direct_of(&a, "b"), Some(MAC_B));
        b.set_direct_offer(None, now);
        now = exchange(&mut a, &mut b, now, (expiry.as_millis() / 100) as u32 + 5);
        assert_eq!(direct_of(&a, "b"), None, "a withdrawn offer expires");
        assert!(a.peers().iter().any(|p| p.name == "b"), "b is still a peer");
        let _ = now;
    }

    /// A peer heard speaking gossip protocol 1 gets no offer: it would drop it as an
    /// unknown message and count it as malformed.
    #[test]
    fn no_offer_goes_to_a_peer_of_version_1() {
        let mut a = node();
        let mut b = b_with_lease(3);
        let speaks_1 = |d: &mut Vec<u8>| d[4] = 1;
        let now = exchange_with(&mut a, &mut b, Instant::now(), 30, speaks_1, |_| {});
        a.set_direct_offer(Some([2, 0xaa, 0, 0, 0, 1]), now);
        let mut offers = 0;
        let mut to_b = 0;
        exchange_with(&mut a, &mut b, now, 250, speaks_1, |d| {
            to_b += 1;
            if matches!(lease_msg(d), Some(LeaseMsg::DirectOffer { .. })) {
                offers += 1;
            }
        });
        assert!(to_b > 20, "a talked to b ({to_b} datagrams)");
        assert_eq!(offers, 0);
        // The same exchange with b speaking its own version does carry offers.
        let mut a = node();
        let mut b = b_with_lease(3);
        let now = exchange(&mut a, &mut b, Instant::now(), 30);
        a.set_direct_offer(Some([2, 0xaa, 0, 0, 0, 1]), now);
        exchange_with(
            &mut a,
            &mut b,
            now,
            250,
            |_| {},
            |d| {
                if matches!(lease_msg(d), Some(LeaseMsg::DirectOffer { .. })) {
                    offers += 1;
                }
            },
        );
        assert!(offers >= 2, "{offers} offers in 25 s");
    }

    /// a's probe comes to b from a's gateway address; b answers on the gossip path,
    /// to a's gossip address, only while b offers; a raises `ProbeAnswered`.
    #[test]
    fn a_probe_is_answered_on_the_gossip_path_while_the_peer_offers() {
        let mut a = node();
        let mut b = b_with_lease(3);
        let now = exchange(&mut a, &mut b, Instant::now(), 30);
        let gateway: SocketAddr = "10.244.0.1:7946".parse().unwrap();
        let a_gossip = a.membership().me().gossip;
        let probe = a.probe_datagram(77, now);
        b.handle_datagram(gateway, &probe, now);
        assert!(
            b.poll_transmit(now).is_none(),
            "b offers nothing: no answer"
        );
        b.set_direct_offer(Some(MAC_B), now);
        while b.poll_transmit(now).is_some() {}
        let probe = a.probe_datagram(78, now);
        b.handle_datagram(gateway, &probe, now);
        let ack = b.poll_transmit(now).expect("an answer");
        assert_eq!(ack.to, a_gossip, "answered to the gossip address");
        assert_eq!(lease_msg(&ack.data), Some(LeaseMsg::ProbeAck { nonce: 78 }));
        assert_eq!(
            b.names.get("a"),
            Some(&a_gossip),
            "the probe's address is not learned"
        );
        drain(&mut a);
        a.handle_datagram(b.membership().me().gossip, &ack.data, now);
        assert!(drain(&mut a).contains(&Event::ProbeAnswered {
            peer: "b".into(),
            nonce: 78
        }));
        // A stranger's probe and offer are dropped and counted.
        let before = b.dropped();
        for msg in [
            LeaseMsg::Probe { nonce: 1 },
            LeaseMsg::DirectOffer { mac: MAC_B },
        ] {
            let d = LeaseDatagram {
                from: "stranger".into(),
                cluster: b.fingerprint,
                msg,
            };
            let mut data = Vec::new();
            d.emit(&mut data);
            b.handle_datagram(gateway, &data, now);
        }
        assert_eq!(b.dropped(), before + 2);
        assert!(b.poll_transmit(now).is_none());
    }

    proptest! {
        #[test]
        fn random_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), kind in 0u8..4) {
            let mut n = node();
            let mut d = b"OVLD\x01".to_vec();
            d.push(kind);
            d.push(0);
            d.extend_from_slice(&bytes);
            n.handle_datagram("10.0.0.2:7946".parse().unwrap(), &d, Instant::now());
            n.handle_datagram("10.0.0.2:7946".parse().unwrap(), &bytes, Instant::now());
        }
    }
}
