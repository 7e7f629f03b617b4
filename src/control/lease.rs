//! Per-node subnet leases: a sans-IO state machine on top of the membership layer.
//!
//! The cluster CIDR is cut into `2^(subnet_len - prefix)` subnets, numbered from 0.
//! Every subnet has at most one owner and an ownership version; only the owner
//! changes it (grants it to a requester, or hands everything to a witness when it
//! leaves). A node uses one owned subnet as its lease, and only while a majority of
//! each of its witness sets has acknowledged a recent beat. The witnesses of a node
//! that stays silent longer than `reclaim_after` attest it; when a majority of one
//! witness set attests, the set's first member (the beneficiary) takes the space over
//! with a higher version. `docs/leases.md` argues why no two nodes ever use the same
//! subnet at once.
//!
//! The module leaves out transport and membership: messages go to and come from node
//! names, and `now` is always passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::founding::FoundingState;
use super::message::{LeaseMsg, Owned, View, WitnessConfig};

/// Settings of the lease state machine.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This node's name.
    pub(crate) name: String,
    /// Number of subnets in the cluster CIDR.
    pub(crate) subnet_count: u32,
    /// Whether this node creates the cluster's space (owns every subnet at version 1)
    /// when it starts without persisted state.
    pub(crate) founder: bool,
    /// A witness attests an owner dead after this long without a beat (`--reclaim-after`).
    pub(crate) reclaim_after: Duration,
    /// An owner stops using its lease when it has had no majority acknowledgement for
    /// this long. Must be at most `reclaim_after / 2` (see `docs/leases.md`).
    pub(crate) fence_after: Duration,
    /// How often beats go to witnesses; also the tick of the state machine.
    pub(crate) beat_interval: Duration,
    /// How often a node without a lease asks again.
    pub(crate) request_interval: Duration,
    /// Number of witnesses each owner keeps.
    pub(crate) witnesses: usize,
}

impl LeaseConfig {
    /// Defaults for the daemon: 24 h reclaim, 12 h fence, 1 s beats, 3 witnesses.
    pub fn new(name: impl Into<String>, subnet_count: u32, founder: bool) -> Self {
        LeaseConfig {
            name: name.into(),
            subnet_count,
            founder,
            reclaim_after: Duration::from_secs(24 * 3600),
            fence_after: Duration::from_secs(12 * 3600),
            beat_interval: Duration::from_secs(1),
            request_interval: Duration::from_secs(1),
            witnesses: 3,
        }
    }

    /// Sets `reclaim_after` and a fence bound of half of it.
    pub fn with_reclaim_after(mut self, r: Duration) -> Self {
        self.reclaim_after = r;
        self.fence_after = r / 2;
        self
    }
}

/// What a witness remembers about an owner it watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The owner's epoch.
    pub(crate) epoch: u64,
    /// The newest witness sets the owner sent.
    pub(crate) view: View,
    /// The newest ownership version the owner sent.
    pub(crate) state_version: u64,
    /// The ownership set at that version.
    pub owned: Vec<Owned>,
}

/// A transfer waiting for the giver's witnesses, then for the receiver's ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingGrant {
    /// Receiver.
    pub(crate) to: String,
    /// Subnets and their new versions.
    pub(crate) subnets: Vec<Owned>,
    /// The giver's state version that no longer contains them.
    pub(crate) after_version: u64,
}

/// The format of the persisted [`LeaseState`] this build writes. A newer format is
/// refused on load, by name, rather than misread.
pub(crate) const STATE_FORMAT: u32 = 1;

fn first_format() -> u32 {
    1
}

/// Everything the lease state machine persists under `--state-dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LeaseState {
    /// The file format ([`STATE_FORMAT`]). Files written before it existed have
    /// none and are format 1.
    #[serde(default = "first_format")]
    pub format: u32,
    /// Incremented each time this node learns it was reclaimed.
    pub epoch: u64,
    /// Incremented on every start; makes beat sequence numbers unique.
    pub boot: u64,
    /// Incremented on every change to `owned`.
    pub state_version: u64,
    /// Owned subnets and their versions.
    pub owned: BTreeMap<u32, u64>,
    /// The highest version this node has owned or given away, per subnet. A late
    /// duplicate of an old grant never brings back a subnet that was passed on.
    #[serde(default)]
    pub known: BTreeMap<u32, u64>,
    /// The owned subnet this node uses as its lease.
    pub lease: Option<u32>,
    /// Witness sets not yet retired; the last one is current.
    pub view: View,
    /// Owners this node witnesses.
    pub watching: BTreeMap<String, Watch>,
    /// Owner epochs this node attested dead; it never acknowledges them again.
    pub attested: BTreeSet<(String, u64)>,
    /// Owner epochs this node took over as beneficiary.
    pub reclaimed: BTreeSet<(String, u64)>,
    /// Outgoing transfers.
    pub pending_grants: Vec<PendingGrant>,
    /// Founding by agreement: promises, the accepted value and the decided founder
    /// (`docs/founding.md`). Absent in files written before founding existed.
    #[serde(default)]
    pub founding: FoundingState,
}

impl LeaseState {
    /// Whether this node ever owned, knew or used a subnet: it belongs to a founded
    /// cluster, whatever its founding state says.
    pub(crate) fn has_history(&self) -> bool {
        !self.owned.is_empty() || !self.known.is_empty() || self.lease.is_some()
    }
}

/// An event for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The subnet this node uses changed (`None`: none, lost or fenced).
    Using(Option<u32>),
    /// No peer is known to have free space; the node keeps asking.
    Exhausted,
    /// This node took over a silent node's space.
    Reclaimed {
        /// The silent node.
        node: String,
        /// The subnets taken over.
        subnets: Vec<u32>,
    },
    /// Our witnesses declared this node's space reclaimed; it starts over.
    Lost,
}

/// A silent owner's state as one witness saw it.
#[derive(Debug, Clone)]
struct Attestation {
    /// The owner's latest state version the witness saw.
    state_version: u64,
    /// The ownership set at that version.
    owned: Vec<Owned>,
    /// When the witness last sent it.
    at: Instant,
}

/// Attestations received as beneficiary, by witness.
type Attestations = BTreeMap<String, Attestation>;

/// Which attestations count together: one owner epoch, seen through one view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AttestRound {
    about: String,
    epoch: u64,
    view_version: u64,
}

/// A witness of one witness set, for the time the first beat went to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetMember {
    config_id: u64,
    member: String,
}

/// Sent-beat bookkeeping: sequence number, local send time, state version and
/// config id.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at: Instant,
    state_version: u64,
    config_id: u64,
}

/// A lease message and the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseTransmit {
    /// The receiver's node name.
    pub(crate) to: String,
    /// The message.
    pub msg: LeaseMsg,
}

/// The lease state machine of one node.
#[derive(Debug)]
pub struct Lease {
    cfg: LeaseConfig,
    st: LeaseState,
    seq: u64,
    sent: VecDeque<Sent>,
    acks: HashMap<String, Sent>,
    heard: HashMap<String, Instant>,
    attest_sent: HashMap<String, Instant>,
    inbox: HashMap<AttestRound, Attestations>,
    live: Vec<String>,
    dead: Vec<String>,
    fresh: BTreeSet<u64>,
    first_sent: HashMap<SetMember, Instant>,
    free_holders: Vec<String>,
    outbox: VecDeque<LeaseTransmit>,
    /// Messages to ourselves, handled in place.
    pending_self: VecDeque<LeaseMsg>,
    events: VecDeque<LeaseEvent>,
    next_tick: Instant,
    next_request: Instant,
    requests: u64,
    /// The owner the last request went to.
    asked: Option<String>,
    reported_use: Option<u32>,
    exhausted: bool,
    dirty: bool,
    leaving: bool,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Lease {
    /// Starts the state machine from persisted state, or fresh.
    pub(crate) fn new(cfg: LeaseConfig, persisted: Option<LeaseState>, now: Instant) -> Self {
        let fresh = persisted.is_none();
        let mut st = persisted.unwrap_or_default();
        // `load_state` refuses a file whose boot counter cannot be incremented.
        st.boot = st.boot.saturating_add(1);
        if st.view.configs.is_empty() {
            st.view.configs.push(WitnessConfig::default());
        }
        if fresh && cfg.founder {
            st.owned = (0..cfg.subnet_count).map(|i| (i, 1)).collect();
            st.known = st.owned.clone();
            st.state_version = 1;
        }
        let heard = st.watching.keys().map(|k| (k.clone(), now)).collect();
        Lease {
            seq: st.boot << 32,
            st,
            cfg,
            sent: VecDeque::new(),
            acks: HashMap::new(),
            heard,
            attest_sent: HashMap::new(),
            inbox: HashMap::new(),
            live: Vec::new(),
            dead: Vec::new(),
            fresh: BTreeSet::new(),
            first_sent: HashMap::new(),
            free_holders: Vec::new(),
            outbox: VecDeque::new(),
            pending_self: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: now,
            next_request: now,
            requests: 0,
            asked: None,
            reported_use: None,
            exhausted: false,
            dirty: true,
            leaving: false,
        }
    }

    /// The persisted state.
    pub fn state(&self) -> &LeaseState {
        &self.st
    }

    /// Returns true once after each change that must be persisted before acting on it.
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Creates the cluster's space (owns every subnet at version 1), if this node
    /// never owned or knew a subnet. Returns whether it did. Called once the founding
    /// agreement names this node; a second call changes nothing.
    pub(crate) fn found(&mut self) -> bool {
        if self.st.has_history() || self.cfg.subnet_count == 0 {
            return false;
        }
        self.st.owned = (0..self.cfg.subnet_count).map(|i| (i, 1)).collect();
        self.st.known = self.st.owned.clone();
        self.st.state_version += 1;
        self.dirty = true;
        true
    }

    /// Replaces the founding part of the persisted state (saved with the rest).
    pub(crate) fn set_founding(&mut self, founding: FoundingState) {
        if self.st.founding != founding {
            self.st.founding = founding;
            self.dirty = true;
        }
    }

    /// The owner the last request for a subnet went to, while this node has none.
    pub(crate) fn asking(&self) -> Option<&str> {
        if self.st.lease.is_some() || self.exhausted {
            return None;
        }
        self.asked.as_deref()
    }

    /// Tells the machine which peers are alive, which are declared dead, and which
    /// have free space.
    pub(crate) fn set_peers(
        &mut self,
        mut live: Vec<String>,
        mut dead: Vec<String>,
        mut free_holders: Vec<String>,
    ) {
        live.sort();
        dead.sort();
        free_holders.sort();
        self.live = live;
        self.dead = dead;
        self.free_holders = free_holders;
    }

    /// Whether this node owns subnets besides its lease.
    pub(crate) fn has_free(&self) -> bool {
        !self.leaving && self.free().next().is_some()
    }

    fn free(&self) -> impl Iterator<Item = u32> + '_ {
        let lease = self.st.lease;
        self.st
            .owned
            .keys()
            .copied()
            .filter(move |i| Some(*i) != lease)
    }

    /// The lease and its version, as published through gossip while in use.
    pub(crate) fn published(&self, now: Instant) -> Option<Owned> {
        let s = self.using(now)?;
        Some((s, self.st.owned.get(&s).copied().unwrap_or(0)))
    }

    /// The local instant until which a majority of every witness set vouches for us.
    /// `None` means no witness set constrains us (a cluster of one).
    fn valid_until(&self, now: Instant) -> Option<Instant> {
        let mut until: Option<Instant> = None;
        for c in &self.st.view.configs {
            if c.members.is_empty() {
                continue;
            }
            // A set created since this boot also counts, for each member, the first
            // beat sent to it: a witness can only attest with a view holding this set
            // after receiving such a beat, hence at least `R` after it.
            let fresh = self.fresh.contains(&c.id);
            let mut times: Vec<Instant> = c
                .members
                .iter()
                .filter_map(|m| {
                    let real = self.acks.get(m).map(|s| s.at);
                    let first = fresh
                        .then(|| {
                            let key = SetMember {
                                config_id: c.id,
                                member: m.clone(),
                            };
                            self.first_sent.get(&key).copied()
                        })
                        .flatten();
                    real.max(first).map(|t| t + self.cfg.fence_after)
                })
                .collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            let t = match times.get(majority(c.members.len()) - 1) {
                Some(t) => *t,
                None => return Some(now),
            };
            until = Some(until.map_or(t, |u: Instant| u.min(t)));
        }
        until
    }

    /// Whether this node may use its lease and act as an owner at `now`. It stops two
    /// beat intervals early, so that an event emitted on the next tick is never late.
    pub(crate) fn in_good_standing(&self, now: Instant) -> bool {
        if self.leaving {
            return false;
        }
        let has_members = self.st.view.configs.iter().any(|c| !c.members.is_empty());
        if !has_members {
            return true;
        }
        match self.valid_until(now) {
            None => true,
            Some(t) => t > now + 2 * self.cfg.beat_interval,
        }
    }

    /// The subnet this node may use at `now`.
    pub(crate) fn using(&self, now: Instant) -> Option<u32> {
        let l = self.st.lease?;
        self.in_good_standing(now).then_some(l)
    }

    /// Next instant [`Lease::handle_timeout`] must run.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// Next message to send, with the receiver's name.
    pub(crate) fn poll_transmit(&mut self) -> Option<LeaseTransmit> {
        self.outbox.pop_front()
    }

    /// Next event.
    pub(crate) fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, to: &str, msg: LeaseMsg) {
        if to == self.cfg.name {
            // Messages to ourselves (the beneficiary attesting) are handled in place.
            self.pending_self.push_back(msg);
            return;
        }
        self.outbox.push_back(LeaseTransmit {
            to: to.to_owned(),
            msg,
        });
    }

    fn report_use(&mut self, now: Instant) {
        let u = self.using(now);
        if u != self.reported_use {
            self.reported_use = u;
            self.events.push_back(LeaseEvent::Using(u));
        }
    }

    /// Handles a lease message from node `from`.
    pub(crate) fn handle_message(&mut self, from: &str, msg: LeaseMsg, now: Instant) {
        self.dispatch(from, msg, now);
        self.drain_self(now);
        self.report_use(now);
    }

    fn drain_self(&mut self, now: Instant) {
        while let Some(msg) = self.pending_self.pop_front() {
            let me = self.cfg.name.clone();
            self.dispatch(&me, msg, now);
        }
    }

    /// Whether every subnet of a peer's ownership set is one of ours, at a version a
    /// later owner can still exceed. Anything else (a bug or a forged message) would
    /// take over a subnet outside the cluster CIDR, or wrap its version to 0.
    fn plausible(&self, owned: &[Owned]) -> bool {
        owned
            .iter()
            .all(|&(idx, ver)| idx < self.cfg.subnet_count && ver < u64::MAX)
    }

    /// How many attestation rounds are kept at once. An owner worth reclaiming holds
    /// a subnet, and a subnet has one owner; a witness that finds no room attests
    /// again five beats later.
    fn max_rounds(&self) -> usize {
        (self.cfg.subnet_count as usize).max(1)
    }

    fn dispatch(&mut self, from: &str, msg: LeaseMsg, now: Instant) {
        match msg {
            LeaseMsg::Beat {
                epoch,
                seq,
                view,
                state_version,
                owned,
            } => self.on_beat(from, epoch, seq, view, state_version, owned, now),
            LeaseMsg::BeatAck {
                epoch,
                seq,
                reclaimed,
            } => self.on_beat_ack(from, epoch, seq, reclaimed, now),
            LeaseMsg::Attest {
                about,
                epoch,
                view,
                state_version,
                owned,
            } => self.on_attest(from, about, epoch, view, state_version, owned, now),
            LeaseMsg::AttestAck { about, epoch } => {
                if self
                    .st
                    .watching
                    .get(&about)
                    .is_some_and(|w| w.epoch == epoch)
                {
                    self.st.watching.remove(&about);
                    self.heard.remove(&about);
                    self.attest_sent.remove(&about);
                    self.dirty = true;
                }
            }
            LeaseMsg::Request => self.on_request(from, now),
            LeaseMsg::Grant { subnets } => self.on_grant(from, subnets, now),
            LeaseMsg::GrantAck { subnets } => {
                let before = self.st.pending_grants.len();
                self.st
                    .pending_grants
                    .retain(|g| !(g.to == from && g.subnets == subnets));
                if before != self.st.pending_grants.len() {
                    self.dirty = true;
                    self.finish_leave();
                }
            }
            // Handled by the controller before the lease machine sees anything.
            LeaseMsg::Refuse { .. }
            | LeaseMsg::Founding(_)
            | LeaseMsg::DirectOffer { .. }
            | LeaseMsg::Probe { .. }
            | LeaseMsg::ProbeAck { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_beat(
        &mut self,
        from: &str,
        epoch: u64,
        seq: u64,
        view: View,
        state_version: u64,
        owned: Vec<Owned>,
        now: Instant,
    ) {
        if !self.plausible(&owned) {
            return;
        }
        let dead = self
            .st
            .attested
            .range((from.to_owned(), epoch)..=(from.to_owned(), u64::MAX))
            .next()
            .is_some();
        if dead {
            self.send(
                from,
                LeaseMsg::BeatAck {
                    epoch,
                    seq,
                    reclaimed: true,
                },
            );
            return;
        }
        let w = self
            .st
            .watching
            .entry(from.to_owned())
            .or_insert_with(|| Watch {
                epoch,
                view: view.clone(),
                state_version,
                owned: owned.clone(),
            });
        if w.epoch > epoch {
            return;
        }
        if w.epoch < epoch {
            *w = Watch {
                epoch,
                view: view.clone(),
                state_version,
                owned: owned.clone(),
            };
        }
        if view.version > w.view.version {
            w.view = view;
            self.dirty = true;
        }
        if state_version > w.state_version {
            w.state_version = state_version;
            w.owned = owned;
            self.dirty = true;
        }
        self.heard.insert(from.to_owned(), now);
        self.send(
            from,
            LeaseMsg::BeatAck {
                epoch,
                seq,
                reclaimed: false,
            },
        );
    }

    fn on_beat_ack(&mut self, from: &str, epoch: u64, seq: u64, reclaimed: bool, now: Instant) {
        if epoch != self.st.epoch {
            return;
        }
        if reclaimed {
            // A witness declared this epoch dead: everything we owned may be someone
            // else's by now. Start over with nothing.
            self.st.epoch += 1;
            self.st.owned.clear();
            self.st.lease = None;
            self.st.state_version += 1;
            self.st.view.configs = vec![WitnessConfig::default()];
            self.st.view.version += 1;
            self.st.pending_grants.clear();
            self.acks.clear();
            self.sent.clear();
            self.fresh.clear();
            self.first_sent.clear();
            self.dirty = true;
            self.events.push_back(LeaseEvent::Lost);
            return;
        }
        let Some(sent) = self.sent.iter().find(|s| s.seq == seq).copied() else {
            return;
        };
        let newer = self.acks.get(from).is_none_or(|a| a.at <= sent.at);
        if newer {
            self.acks.insert(from.to_owned(), sent);
        }
        self.retire_configs();
        let _ = now;
    }

    /// Drops witness sets a majority of which acknowledged a beat of a later set.
    fn retire_configs(&mut self) {
        while self.st.view.configs.len() > 1 {
            let c = &self.st.view.configs[0];
            let moved = c
                .members
                .iter()
                .filter(|m| self.acks.get(*m).is_some_and(|a| a.config_id > c.id))
                .count();
            if c.members.is_empty() || moved >= majority(c.members.len()) {
                let id = self.st.view.configs.remove(0).id;
                self.first_sent.retain(|k, _| k.config_id != id);
                self.st.view.version += 1;
                self.dirty = true;
            } else {
                break;
            }
        }
    }

    /// Whether a majority of every witness set has seen state `version` or later.
    fn witnessed(&self, version: u64) -> bool {
        self.st.view.configs.iter().all(|c| {
            c.members.is_empty()
                || c.members
                    .iter()
                    .filter(|m| {
                        self.acks
                            .get(*m)
                            .is_some_and(|a| a.state_version >= version)
                    })
                    .count()
                    >= majority(c.members.len())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_attest(
        &mut self,
        from: &str,
        about: String,
        epoch: u64,
        view: View,
        state_version: u64,
        owned: Vec<Owned>,
        now: Instant,
    ) {
        let key = (about.clone(), epoch);
        if self.st.reclaimed.contains(&key) {
            self.send(from, LeaseMsg::AttestAck { about, epoch });
            return;
        }
        if view.beneficiary() != Some(self.cfg.name.as_str())
            || !view.contains(from)
            || !self.plausible(&owned)
        {
            return;
        }
        let round = AttestRound {
            about: about.clone(),
            epoch,
            view_version: view.version,
        };
        if !self.inbox.contains_key(&round) && self.inbox.len() >= self.max_rounds() {
            // Forget rounds no witness attested in lately (witnesses attest every five
            // beats while the owner stays silent), then drop what still does not fit.
            let stale = self.cfg.beat_interval * 20;
            self.inbox.retain(|_, votes| {
                votes
                    .values()
                    .any(|a| now.saturating_duration_since(a.at) < stale)
            });
            if self.inbox.len() >= self.max_rounds() {
                return;
            }
        }
        let votes = self.inbox.entry(round).or_default();
        votes.insert(
            from.to_owned(),
            Attestation {
                state_version,
                owned,
                at: now,
            },
        );
        // Every witness attests once per owner epoch, with the view it saw last, so
        // two views can never both gather a majority of a set they share. Members are
        // counted once each: a view that lists a witness twice (`[me, x, x]`) must not
        // let that witness make a majority alone.
        let enough = view.configs.iter().all(|c| {
            let members: BTreeSet<&String> = c.members.iter().collect();
            members.is_empty()
                || members.iter().filter(|m| votes.contains_key(**m)).count()
                    >= majority(members.len())
        });
        if !enough {
            return;
        }
        // The attesting majority intersects every majority that acknowledged a
        // transfer, so the newest state among them has every transfer the owner made.
        let newest = votes
            .values()
            .max_by_key(|a| a.state_version)
            .map(|a| a.owned.clone())
            .unwrap_or_default();
        let mut taken = Vec::new();
        for (idx, ver) in newest {
            if ver.checked_add(1).is_some_and(|v| self.take(idx, v)) {
                taken.push(idx);
            }
        }
        self.st.state_version += 1;
        self.st.reclaimed.insert(key.clone());
        self.st.attested.insert(key);
        self.inbox
            .retain(|k, _| k.about != about || k.epoch != epoch);
        self.dirty = true;
        self.events.push_back(LeaseEvent::Reclaimed {
            node: about.clone(),
            subnets: taken,
        });
        self.send(from, LeaseMsg::AttestAck { about, epoch });
        let _ = now;
    }

    /// Takes ownership of `idx` at `ver` unless this node already knew a version at
    /// least as new. Never a subnet outside the cluster CIDR, nor at the last version:
    /// it could never be passed on at a higher one.
    fn take(&mut self, idx: u32, ver: u64) -> bool {
        if idx >= self.cfg.subnet_count
            || ver == u64::MAX
            || self.st.known.get(&idx).is_some_and(|k| *k >= ver)
        {
            return false;
        }
        self.st.known.insert(idx, ver);
        self.st.owned.insert(idx, ver);
        true
    }

    fn on_request(&mut self, from: &str, now: Instant) {
        if !self.in_good_standing(now) || self.st.pending_grants.iter().any(|g| g.to == from) {
            return;
        }
        let Some(idx) = self.free().next() else {
            return;
        };
        // Only a corrupt state file holds the last version: nothing to grant it at.
        let Some(ver) = self.st.owned.get(&idx).copied().unwrap_or(0).checked_add(1) else {
            return;
        };
        self.st.owned.remove(&idx);
        self.st.known.insert(idx, ver);
        self.st.state_version += 1;
        self.st.pending_grants.push(PendingGrant {
            to: from.to_owned(),
            subnets: vec![(idx, ver)],
            after_version: self.st.state_version,
        });
        self.dirty = true;
    }

    fn on_grant(&mut self, from: &str, subnets: Vec<Owned>, now: Instant) {
        let mut changed = false;
        for &(idx, ver) in &subnets {
            if idx < self.cfg.subnet_count && self.take(idx, ver) {
                changed = true;
            }
        }
        if changed {
            self.st.state_version += 1;
            self.dirty = true;
            self.pick_lease(now);
        }
        self.send(from, LeaseMsg::GrantAck { subnets });
    }

    fn pick_lease(&mut self, _now: Instant) {
        if self.st.lease.is_none() && !self.leaving {
            let first = self.free().next();
            if let Some(idx) = first {
                self.st.lease = Some(idx);
                self.dirty = true;
            }
        }
    }

    /// Runs periodic work: beats, witness checks, grants, requests.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            self.report_use(now);
            return;
        }
        self.next_tick = now + self.cfg.beat_interval;
        self.retire_configs();
        self.maybe_reconfigure();
        self.beat(now);
        self.watch(now);
        self.grants(now);
        self.pick_lease(now);
        self.request(now);
        self.drain_self(now);
        self.report_use(now);
    }

    fn maybe_reconfigure(&mut self) {
        if self.st.view.configs.len() != 1 || self.leaving {
            return;
        }
        let cur = &self.st.view.configs[0];
        // Only witnesses the membership declared dead are replaced; one we have not
        // heard of yet (just after a restart) stays.
        let mut members: Vec<String> = cur
            .members
            .iter()
            .filter(|m| self.dead.binary_search(m).is_err())
            .cloned()
            .collect();
        // Fill up with our successors on the ring of live names.
        let start = self.live.partition_point(|n| *n <= self.cfg.name);
        let n = self.live.len();
        for i in 0..n {
            if members.len() >= self.cfg.witnesses {
                break;
            }
            let cand = &self.live[(start + i) % n];
            if *cand != self.cfg.name && !members.contains(cand) {
                members.push(cand.clone());
            }
        }
        // Never an empty set: an empty set is "retired" without anyone knowing, and
        // the safety argument needs every retired set to have told a majority.
        if !members.is_empty() && members != cur.members {
            let id = cur.id + 1;
            self.st.view.configs.push(WitnessConfig { id, members });
            self.st.view.version += 1;
            self.fresh.insert(id);
            self.dirty = true;
        }
    }

    fn beat(&mut self, now: Instant) {
        let mut to: BTreeSet<String> = BTreeSet::new();
        for c in &self.st.view.configs {
            to.extend(c.members.iter().cloned());
        }
        if to.is_empty() {
            return;
        }
        self.seq += 1;
        let view = self.st.view.clone();
        let config_id = view.configs.last().map_or(0, |c| c.id);
        self.sent.push_back(Sent {
            seq: self.seq,
            at: now,
            state_version: self.st.state_version,
            config_id,
        });
        while self.sent.len() > 64 {
            self.sent.pop_front();
        }
        let owned: Vec<Owned> = self.st.owned.iter().map(|(k, v)| (*k, *v)).collect();
        for c in &self.st.view.configs {
            if self.fresh.contains(&c.id) {
                for m in &c.members {
                    let key = SetMember {
                        config_id: c.id,
                        member: m.clone(),
                    };
                    self.first_sent.entry(key).or_insert(now);
                }
            }
        }
        for m in to {
            self.send(
                &m,
                LeaseMsg::Beat {
                    epoch: self.st.epoch,
                    seq: self.seq,
                    view: view.clone(),
                    state_version: self.st.state_version,
                    owned: owned.clone(),
                },
            );
        }
    }

    fn watch(&mut self, now: Instant) {
        let me = self.cfg.name.clone();
        let mut attest = Vec::new();
        let mut forget = Vec::new();
        for (owner, w) in &self.st.watching {
            let heard = *self.heard.entry(owner.clone()).or_insert(now);
            if now.saturating_duration_since(heard) < self.cfg.reclaim_after {
                continue;
            }
            if !w.view.contains(&me) {
                forget.push(owner.clone());
                continue;
            }
            let due = self
                .attest_sent
                .get(owner)
                .is_none_or(|t| now.saturating_duration_since(*t) >= self.cfg.beat_interval * 5);
            if due {
                attest.push((owner.clone(), w.clone()));
            }
        }
        for o in forget {
            self.st.watching.remove(&o);
            self.heard.remove(&o);
            self.dirty = true;
        }
        for (owner, w) in attest {
            if self.st.attested.insert((owner.clone(), w.epoch)) {
                self.dirty = true;
            }
            self.attest_sent.insert(owner.clone(), now);
            let Some(to) = w.view.beneficiary().map(str::to_owned) else {
                continue;
            };
            self.send(
                &to,
                LeaseMsg::Attest {
                    about: owner,
                    epoch: w.epoch,
                    view: w.view,
                    state_version: w.state_version,
                    owned: w.owned,
                },
            );
        }
    }

    fn grants(&mut self, now: Instant) {
        let _ = now;
        let ready: Vec<PendingGrant> = self
            .st
            .pending_grants
            .iter()
            .filter(|g| self.witnessed(g.after_version))
            .cloned()
            .collect();
        for g in ready {
            self.send(&g.to, LeaseMsg::Grant { subnets: g.subnets });
        }
    }

    fn request(&mut self, now: Instant) {
        if self.st.lease.is_some() || self.leaving || now < self.next_request {
            return;
        }
        self.next_request = now + self.cfg.request_interval;
        if self.free_holders.is_empty() {
            if !self.exhausted {
                self.exhausted = true;
                self.events.push_back(LeaseEvent::Exhausted);
            }
            self.asked = None;
            return;
        }
        self.exhausted = false;
        let i = (self.requests as usize) % self.free_holders.len();
        self.requests += 1;
        let to = self.free_holders[i].clone();
        self.asked = Some(to.clone());
        self.send(&to, LeaseMsg::Request);
    }

    /// Whether the last request round found no free space.
    #[cfg(test)]
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted && self.st.lease.is_none()
    }

    /// Leaves on purpose: stops using the lease and hands every owned subnet to the
    /// first live witness (once our witnesses have seen the hand-over).
    pub(crate) fn leave(&mut self, now: Instant) {
        self.leaving = true;
        self.st.lease = None;
        let to = self
            .st
            .view
            .configs
            .last()
            .and_then(|c| {
                c.members
                    .iter()
                    .find(|m| self.live.binary_search(m).is_ok())
            })
            .cloned();
        if let Some(to) = to {
            // A subnet at the last version (only from a corrupt state file) cannot be
            // passed on; it is dropped rather than handed over at version 0.
            let subnets: Vec<Owned> = std::mem::take(&mut self.st.owned)
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.checked_add(1)?)))
                .collect();
            self.st.known.extend(subnets.iter().copied());
            if !subnets.is_empty() {
                self.st.state_version += 1;
                self.st.pending_grants.push(PendingGrant {
                    to,
                    subnets,
                    after_version: self.st.state_version,
                });
            }
        }
        self.dirty = true;
        self.next_tick = now;
        self.finish_leave();
        self.report_use(now);
    }

    /// Once everything is handed over, a later start is a new epoch: witnesses then
    /// forget the old one instead of attesting it. Not earlier: a witness that has
    /// attested the old epoch must never acknowledge a hand-over of its space.
    fn finish_leave(&mut self) {
        if self.leaving && self.st.pending_grants.is_empty() && self.st.owned.is_empty() {
            self.st.epoch += 1;
            self.st.view = View {
                version: self.st.view.version + 1,
                configs: vec![WitnessConfig::default()],
            };
            self.dirty = true;
        }
    }

    /// Whether a leave has handed everything over (or had no one to hand it to).
    pub(crate) fn leave_done(&self) -> bool {
        self.leaving && self.st.pending_grants.is_empty()
    }

    /// `rmpeer`: takes over what `node` owned as far as this node knows, without
    /// waiting for attestations. Unsafe if `node` is alive: see `docs/leases.md`.
    pub(crate) fn force_reclaim(&mut self, node: &str, published: Option<Owned>) -> Vec<u32> {
        let mut known: Vec<Owned> = self
            .st
            .watching
            .get(node)
            .map(|w| w.owned.clone())
            .unwrap_or_default();
        known.extend(published);
        let mut taken = Vec::new();
        for (idx, ver) in known {
            if ver.checked_add(1).is_some_and(|v| self.take(idx, v)) {
                taken.push(idx);
            }
        }
        if let Some(w) = self.st.watching.remove(node) {
            self.st.attested.insert((node.to_owned(), w.epoch));
        }
        self.st.state_version += 1;
        self.dirty = true;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SUBNETS: u32 = 4;

    fn config(name: &str, founder: bool) -> LeaseConfig {
        LeaseConfig::new(name, SUBNETS, founder).with_reclaim_after(Duration::from_secs(20))
    }

    /// A few lease machines that deliver each other's messages at once, in order,
    /// except those from the nodes in `silent` (they still hear the others).
    struct Net {
        nodes: BTreeMap<String, Lease>,
        silent: HashSet<String>,
        now: Instant,
        events: Vec<(String, LeaseEvent)>,
    }

    impl Net {
        fn new(nodes: &[(&str, bool)]) -> Net {
            let now = Instant::now();
            Net {
                nodes: nodes
                    .iter()
                    .map(|(n, founder)| (n.to_string(), Lease::new(config(n, *founder), None, now)))
                    .collect(),
                silent: HashSet::new(),
                now,
                events: Vec::new(),
            }
        }

        fn node(&self, name: &str) -> &Lease {
            &self.nodes[name]
        }

        fn using(&self, name: &str) -> Option<u32> {
            self.nodes[name].using(self.now)
        }

        /// One beat interval: peers, timers, then every message until none is left.
        fn step(&mut self) {
            self.now += Duration::from_secs(1);
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            let free: Vec<String> = names
                .iter()
                .filter(|n| self.nodes[*n].has_free())
                .cloned()
                .collect();
            for (name, lease) in &mut self.nodes {
                let others = |v: &[String]| v.iter().filter(|n| *n != name).cloned().collect();
                lease.set_peers(others(&names), vec![], others(&free));
                lease.handle_timeout(self.now);
            }
            loop {
                let mut msgs = Vec::new();
                for (name, lease) in &mut self.nodes {
                    while let Some(t) = lease.poll_transmit() {
                        msgs.push((name.clone(), t.to, t.msg));
                    }
                    while let Some(ev) = lease.poll_event() {
                        self.events.push((name.clone(), ev));
                    }
                }
                if msgs.is_empty() {
                    break;
                }
                for (from, to, msg) in msgs {
                    if self.silent.contains(&from) {
                        continue;
                    }
                    if let Some(lease) = self.nodes.get_mut(&to) {
                        lease.handle_message(&from, msg, self.now);
                    }
                }
            }
        }

        fn run(&mut self, secs: u64) {
            for _ in 0..secs {
                self.step();
            }
        }

        fn events_of(&self, name: &str) -> Vec<&LeaseEvent> {
            self.events
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, e)| e)
                .collect()
        }
    }

    #[test]
    fn a_founder_alone_owns_every_subnet_and_uses_the_first() {
        let now = Instant::now();
        let mut a = Lease::new(config("a", true), None, now);
        assert_eq!(a.state().owned, (0..SUBNETS).map(|i| (i, 1)).collect());
        assert!(a.take_dirty(), "a fresh state must be saved");
        assert!(!a.take_dirty());
        a.handle_timeout(now);
        assert_eq!(a.state().lease, Some(0));
        // No witnesses: a cluster of one is in good standing.
        assert_eq!(a.using(now), Some(0));
        assert_eq!(a.published(now), Some((0, 1)));
        assert!(a.has_free());
        assert_eq!(a.poll_event(), Some(LeaseEvent::Using(Some(0))));
        assert_eq!(a.poll_transmit(), None, "nobody to beat or ask");
    }

    #[test]
    fn a_node_without_space_says_so_and_asks_nobody() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        assert!(b.state().owned.is_empty());
        b.handle_timeout(now);
        assert_eq!(b.using(now), None);
        assert!(b.exhausted());
        assert_eq!(b.poll_event(), Some(LeaseEvent::Exhausted));
        assert_eq!(b.poll_transmit(), None);
    }

    #[test]
    fn a_request_is_granted_once_the_witnesses_saw_it() {
        let mut net = Net::new(&[("a", true), ("b", false)]);
        net.run(10);
        assert_eq!(net.using("a"), Some(0));
        assert_eq!(net.using("b"), Some(1), "b leases a's first free subnet");
        // The subnet moved with a higher version, and a no longer owns it.
        assert_eq!(net.node("b").state().owned.get(&1), Some(&2));
        assert!(!net.node("a").state().owned.contains_key(&1));
        assert!(
            net.node("a").state().pending_grants.is_empty(),
            "the grant was acked"
        );
        // Each witnesses the other.
        let witnesses = |n: &str| {
            net.node(n)
                .state()
                .view
                .configs
                .last()
                .unwrap()
                .members
                .clone()
        };
        assert_eq!(witnesses("a"), ["b"]);
        assert_eq!(witnesses("b"), ["a"]);
        assert!(net.node("a").state().watching.contains_key("b"));
        assert!(net.events_of("b").contains(&&LeaseEvent::Using(Some(1))));
    }

    #[test]
    fn a_grant_needs_an_owner_in_good_standing_and_a_duplicate_changes_nothing() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        b.handle_message(
            "a",
            LeaseMsg::Grant {
                subnets: vec![(2, 5)],
            },
            now,
        );
        assert_eq!(b.state().owned.get(&2), Some(&5));
        assert_eq!(b.state().lease, Some(2));
        assert_eq!(
            b.poll_transmit(),
            Some(LeaseTransmit {
                to: "a".into(),
                msg: LeaseMsg::GrantAck {
                    subnets: vec![(2, 5)]
                }
            })
        );
        let version = b.state().state_version;
        // The same grant again (a duplicate datagram) is acked but changes nothing,
        // and a subnet outside the cluster CIDR is never taken.
        b.handle_message(
            "a",
            LeaseMsg::Grant {
                subnets: vec![(2, 5), (SUBNETS, 1)],
            },
            now,
        );
        assert_eq!(b.state().state_version, version);
        assert!(!b.state().owned.contains_key(&SUBNETS));
        assert!(matches!(
            b.poll_transmit(),
            Some(LeaseTransmit {
                msg: LeaseMsg::GrantAck { .. },
                ..
            })
        ));
        // An owner that is not in good standing (fenced) grants nothing.
        let mut a = Lease::new(config("a", true), None, now);
        a.set_peers(vec!["c".into()], vec![], vec![]);
        a.handle_timeout(now);
        let later = now + Duration::from_secs(60);
        assert!(!a.in_good_standing(later), "c never acknowledged a beat");
        let before = a.state().clone();
        a.handle_message("d", LeaseMsg::Request, later);
        assert_eq!(a.state().pending_grants, before.pending_grants);
        assert!(a.state().pending_grants.is_empty());
    }

    #[test]
    fn an_owner_cut_off_from_a_majority_of_its_witnesses_stops_using_its_lease() {
        let mut net = Net::new(&[("a", true), ("b", false), ("c", false)]);
        net.run(10);
        let a_lease = net.using("a");
        assert_eq!(a_lease, Some(0));
        assert_eq!(
            net.node("a").state().view.configs.last().unwrap().members,
            ["b", "c"]
        );
        // A majority of two witnesses is both of them.
        net.silent.insert("c".into());
        net.run(6);
        assert_eq!(
            net.using("a"),
            Some(0),
            "still within the fence bound (10 s)"
        );
        net.run(4);
        assert_eq!(
            net.using("a"),
            None,
            "fenced: only one of two witnesses answers"
        );
        assert!(net.events_of("a").contains(&&LeaseEvent::Using(None)));
        // Back in touch (before reclaim-after): the lease is usable again.
        net.silent.clear();
        net.run(2);
        assert_eq!(net.using("a"), Some(0));
    }

    #[test]
    fn a_silent_owner_is_reclaimed_by_its_witnesses_and_starts_over() {
        let mut net = Net::new(&[("a", true), ("b", false), ("c", false)]);
        net.run(15);
        net.using("c").expect("c has a lease");
        let c_versions = net.node("c").state().owned.clone();
        let c_owned: Vec<u32> = c_versions.keys().copied().collect();
        let c_epoch = net.node("c").state().epoch;
        let beneficiary = net
            .node("c")
            .state()
            .view
            .beneficiary()
            .unwrap()
            .to_string();
        net.silent.insert("c".into());
        // Silent longer than reclaim-after (20 s): the witnesses attest.
        net.run(25);
        let reclaimed: Vec<&LeaseEvent> = net
            .events_of(&beneficiary)
            .into_iter()
            .filter(|e| matches!(e, LeaseEvent::Reclaimed { .. }))
            .collect();
        assert_eq!(
            reclaimed,
            [&LeaseEvent::Reclaimed {
                node: "c".into(),
                subnets: c_owned.clone()
            }]
        );
        for idx in &c_owned {
            assert!(net.node(&beneficiary).state().owned.contains_key(idx));
        }
        assert!(net
            .node(&beneficiary)
            .state()
            .reclaimed
            .contains(&("c".to_string(), c_epoch)));
        // c, fenced long before, never used its lease at the same time.
        assert_eq!(net.using("c"), None);
        // c comes back: its witnesses refuse its old epoch, and it starts over.
        net.silent.clear();
        net.run(3);
        assert!(net.events_of("c").contains(&&LeaseEvent::Lost));
        assert!(net.node("c").state().epoch > c_epoch);
        for (idx, ver) in &net.node("c").state().owned {
            assert!(
                c_versions.get(idx).is_none_or(|old| ver > old),
                "c never gets a subnet back at its old version"
            );
        }
        // And it gets a subnet again, through the ordinary request.
        net.run(10);
        assert!(net.using("c").is_some());
        let mut used: Vec<u32> = ["a", "b", "c"]
            .iter()
            .filter_map(|n| net.using(n))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), 3, "no subnet is used twice");
    }

    #[test]
    fn a_restart_keeps_the_lease_but_waits_for_its_witnesses_before_using_it() {
        let mut net = Net::new(&[("a", true), ("b", false)]);
        net.run(10);
        let saved = net.node("b").state().clone();
        assert_eq!(saved.lease, Some(1));
        let now = net.now;
        let b = Lease::new(config("b", false), Some(saved.clone()), now);
        assert_eq!(b.state().boot, saved.boot + 1);
        assert_eq!(b.state().lease, Some(1));
        assert_eq!(b.state().owned, saved.owned);
        assert_eq!(
            b.using(now),
            None,
            "no witness has acknowledged this boot yet"
        );
        net.nodes.insert("b".into(), b);
        net.run(2);
        assert_eq!(net.using("b"), Some(1));
        // A restart without state is not a founder: it owns nothing.
        let fresh = Lease::new(config("b", false), None, now);
        assert!(fresh.state().owned.is_empty());
    }

    #[test]
    fn a_node_that_leaves_hands_its_space_to_a_witness() {
        let mut net = Net::new(&[("a", true), ("b", false)]);
        net.run(10);
        let b_owned: Vec<u32> = net.node("b").state().owned.keys().copied().collect();
        let now = net.now;
        net.nodes.get_mut("b").unwrap().leave(now);
        assert_eq!(net.using("b"), None);
        net.run(3);
        assert!(net.node("b").leave_done());
        assert!(net.node("b").state().owned.is_empty());
        for idx in b_owned {
            assert!(net.node("a").state().owned.contains_key(&idx));
        }
    }

    fn view_of(members: &[&str]) -> View {
        View {
            version: 1,
            configs: vec![WitnessConfig {
                id: 1,
                members: members.iter().map(|m| m.to_string()).collect(),
            }],
        }
    }

    fn attest(about: &str, view: View, owned: Vec<Owned>) -> LeaseMsg {
        LeaseMsg::Attest {
            about: about.into(),
            epoch: 0,
            view,
            state_version: 1,
            owned,
        }
    }

    #[test]
    fn a_witness_listed_twice_does_not_make_a_majority_alone() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        // x lists itself twice next to b: three members, two of them x.
        b.handle_message(
            "x",
            attest("a", view_of(&["b", "x", "x"]), vec![(0, 1)]),
            now,
        );
        assert!(b.state().owned.is_empty(), "x alone reclaimed a's space");
        assert!(b.poll_event().is_none());
        // With b's own vote the (two distinct) members make a majority.
        b.handle_message(
            "b",
            attest("a", view_of(&["b", "x", "x"]), vec![(0, 1)]),
            now,
        );
        assert_eq!(b.state().owned.get(&0), Some(&2));
    }

    #[test]
    fn attested_subnets_outside_the_cidr_or_at_the_last_version_are_not_taken() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        let view = view_of(&["b", "c", "d"]);
        for owned in [
            vec![(SUBNETS, 1)],
            vec![(1, u64::MAX)],
            vec![(1, u64::MAX - 1)],
        ] {
            for w in ["c", "d"] {
                b.handle_message(w, attest("a", view.clone(), owned.clone()), now);
            }
        }
        assert!(b.state().owned.is_empty(), "{:?}", b.state().owned);
        assert!(b.state().known.values().all(|v| *v != 0));
        // A plausible attestation is still taken over at the next version.
        let later = LeaseMsg::Attest {
            about: "a".into(),
            epoch: 1,
            view: view.clone(),
            state_version: 1,
            owned: vec![(1, 4)],
        };
        b.handle_message("c", later.clone(), now);
        b.handle_message("d", later, now);
        assert_eq!(b.state().owned.get(&1), Some(&5));
    }

    #[test]
    fn a_beat_with_a_subnet_outside_the_cidr_or_at_the_last_version_is_dropped() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        for owned in [vec![(SUBNETS, 1)], vec![(0, u64::MAX)]] {
            b.handle_message(
                "a",
                LeaseMsg::Beat {
                    epoch: 0,
                    seq: 1,
                    view: view_of(&["b"]),
                    state_version: 1,
                    owned,
                },
                now,
            );
        }
        assert!(b.state().watching.is_empty());
        assert_eq!(b.poll_transmit(), None);
    }

    #[test]
    fn versions_never_wrap_to_zero() {
        let now = Instant::now();
        // A grant at the last version could never be passed on: refused.
        let mut b = Lease::new(config("b", false), None, now);
        b.handle_message(
            "a",
            LeaseMsg::Grant {
                subnets: vec![(2, u64::MAX)],
            },
            now,
        );
        assert!(b.state().owned.is_empty());
        // rmpeer of a peer that published the last version takes nothing.
        assert!(b.force_reclaim("gone", Some((3, u64::MAX))).is_empty());
        assert!(b.state().owned.is_empty());
        // A (corrupt) state file with a subnet at the last version: no grant of it.
        let st = LeaseState {
            owned: [(0, 1), (2, u64::MAX)].into_iter().collect(),
            lease: Some(0),
            ..LeaseState::default()
        };
        let mut a = Lease::new(config("a", false), Some(st), now);
        a.handle_timeout(now);
        a.handle_message("d", LeaseMsg::Request, now);
        assert!(a.state().pending_grants.is_empty());
        assert_eq!(a.state().owned.get(&2), Some(&u64::MAX));
    }

    #[test]
    fn attestation_rounds_are_bounded() {
        let now = Instant::now();
        let mut b = Lease::new(config("b", false), None, now);
        let view = view_of(&["b", "c", "d"]);
        for i in 0..100 {
            b.handle_message("c", attest(&format!("x{i}"), view.clone(), vec![]), now);
        }
        assert_eq!(b.inbox.len(), SUBNETS as usize);
        // Rounds nobody attested in for a while make room; live ones stay.
        let later = now + Duration::from_secs(60);
        b.handle_message("c", attest("y", view.clone(), vec![(1, 1)]), later);
        b.handle_message("d", attest("y", view, vec![(1, 1)]), later);
        assert_eq!(b.state().owned.get(&1), Some(&2));
    }

    #[test]
    fn rmpeer_takes_over_at_a_higher_version() {
        let now = Instant::now();
        let mut a = Lease::new(config("a", false), None, now);
        let taken = a.force_reclaim("gone", Some((3, 7)));
        assert_eq!(taken, [3]);
        assert_eq!(a.state().owned.get(&3), Some(&8));
        // The same again takes nothing: this node already knows version 8.
        assert!(a.force_reclaim("gone", Some((3, 7))).is_empty());
    }
}
