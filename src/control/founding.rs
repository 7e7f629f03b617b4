//! Founding a new cluster by agreement: single-decree Paxos over the initial peers.
//!
//! A node that starts with no lease state and is not told to found alone takes part
//! in choosing one *founder*: the node that creates the cluster's subnet space. The
//! value chosen is a [`Founder`] (a name and a random cluster id). Acceptors persist
//! their promise and their accepted value before they answer, so a value once chosen
//! is never replaced, even when every node restarts.
//!
//! A set of answering nodes counts as a quorum when it is *closed*
//! ([`InitialSet::satisfied_by`]): it holds a majority of the initial set of every one
//! of its members (this node plus its `--peers`, by address), or, for members started
//! with `--bootstrap-expect N`, a majority of N such members. `docs/founding.md`
//! argues when two closed sets must intersect, which is what Paxos needs.
//!
//! The module is sans-IO: messages go to and come from node names, membership is told
//! through [`Founding::set_members`], and `now` is always passed in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Who may be counted towards a quorum, as the node was configured at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitialSet {
    /// The node's own gossip address and its `--peers`, resolved to addresses.
    Peers(BTreeSet<SocketAddr>),
    /// `--bootstrap-expect N`: any N nodes started with the same N.
    Expect(u32),
}

/// A node that may be counted towards a quorum: its name, gossip address and initial set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Participant {
    /// Node name.
    pub(crate) name: String,
    /// Gossip address the node advertises.
    pub(crate) addr: SocketAddr,
    /// The node's initial set.
    pub(crate) initial: InitialSet,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl InitialSet {
    /// How many members of this set a quorum must hold.
    pub(crate) fn needed(&self) -> usize {
        match self {
            InitialSet::Peers(s) => majority(s.len()),
            InitialSet::Expect(n) => majority(*n as usize),
        }
    }

    /// How many of `group` count towards this set.
    pub(crate) fn present(&self, group: &[Participant]) -> usize {
        match self {
            InitialSet::Peers(s) => group.iter().filter(|p| s.contains(&p.addr)).count(),
            InitialSet::Expect(n) => group
                .iter()
                .filter(|p| p.initial == InitialSet::Expect(*n))
                .count(),
        }
    }

    /// Whether `group` holds a majority of this set.
    pub(crate) fn satisfied_by(&self, group: &[Participant]) -> bool {
        self.present(group) >= self.needed()
    }
}

/// Whether `group` is a quorum: it holds a majority of the initial set of each member.
pub(crate) fn is_quorum(group: &[Participant]) -> bool {
    !group.is_empty() && group.iter().all(|p| p.initial.satisfied_by(group))
}

/// A proposal number: higher rounds win; the proposer's name breaks ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    /// Round number, starting at 1.
    pub(crate) round: u64,
    /// The proposing node.
    pub proposer: String,
}

/// The value agreed on: which node founds, and the id of the cluster it founds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Founder {
    /// The founding node's name (empty: unknown, see [`Founder::legacy`]).
    pub(crate) name: String,
    /// A random id, fixed at founding, that names the cluster (0: unknown).
    pub(crate) cluster_id: u64,
}

impl Founder {
    /// The founder of a cluster founded before founding by agreement existed: unknown
    /// name, cluster id 0. It never conflicts with any other cluster id.
    pub(crate) fn legacy() -> Self {
        Founder {
            name: String::new(),
            cluster_id: 0,
        }
    }
}

/// A value an acceptor accepted, with the ballot it came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The ballot of the accept.
    pub(crate) ballot: Ballot,
    /// The value.
    pub founder: Founder,
}

/// What a node persists about founding (part of `lease.json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FoundingState {
    /// The highest ballot promised: no lower prepare or accept is answered yes.
    pub(crate) promised: Option<Ballot>,
    /// The last value accepted.
    pub(crate) accepted: Option<Accepted>,
    /// The founder of the cluster this node belongs to, once known.
    pub decided: Option<Founder>,
}

/// Founding messages between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundingMsg {
    /// Proposer → all: phase 1.
    Prepare {
        /// The proposal number.
        ballot: Ballot,
    },
    /// Acceptor → proposer: a promise to answer no lower ballot, with what it accepted.
    Promise {
        /// Echo of the ballot.
        ballot: Ballot,
        /// The acceptor's last accepted value.
        accepted: Option<Accepted>,
        /// The acceptor's gossip address and initial set.
        addr: SocketAddr,
        /// The acceptor's initial set.
        initial: InitialSet,
    },
    /// Proposer → promisers: phase 2.
    Accept {
        /// The proposal number.
        ballot: Ballot,
        /// The value to accept.
        founder: Founder,
    },
    /// Acceptor → proposer: the value was accepted and saved.
    Accepted {
        /// Echo of the ballot.
        ballot: Ballot,
        /// The acceptor's gossip address.
        addr: SocketAddr,
        /// The acceptor's initial set.
        initial: InitialSet,
    },
    /// Acceptor → proposer: a higher ballot was promised.
    Nack {
        /// Echo of the ballot refused.
        ballot: Ballot,
        /// The ballot promised instead.
        promised: Ballot,
    },
    /// Anyone → anyone: the founder is chosen (or the sender already belongs to a
    /// founded cluster).
    Decided {
        /// The chosen value.
        founder: Founder,
    },
}

/// Settings of the founding machine.
#[derive(Debug, Clone)]
pub(crate) struct FoundingConfig {
    /// This node's name.
    pub(crate) name: String,
    /// This node's gossip address.
    pub(crate) addr: SocketAddr,
    /// This node's initial set.
    pub(crate) initial: InitialSet,
    /// How long a proposer waits for a phase before it gives up and retries.
    pub(crate) phase_timeout: Duration,
    /// Base delay before a node that is not the lowest-named candidate proposes.
    pub(crate) backoff: Duration,
    /// Propose at once, as if we were the lowest-named candidate (the node lists
    /// itself first in `--peers`). Only speed depends on it, never safety.
    pub propose_first: bool,
}

/// What the node waits for, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundingWait {
    /// Not enough of the initial set has been heard from.
    Peers {
        /// How many members of our initial set are present (us included).
        present: usize,
        /// How many there are (or `--bootstrap-expect`).
        of: usize,
        /// How many are needed.
        needed: usize,
        /// Initial peers not heard from, by address (Peers mode only).
        missing: Vec<SocketAddr>,
    },
    /// A majority is present; agreement is under way (our ballot, if we propose).
    Agreeing {
        /// The proposer we last heard from, or us.
        proposer: Option<String>,
    },
}

/// A member that belongs to a founded cluster, and the cluster id it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundedPeer {
    /// The member's name.
    pub(crate) name: String,
    /// The cluster id it publishes (0: founded before founding by agreement).
    pub(crate) cluster_id: u64,
}

/// A founding message and the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundingTransmit {
    /// The receiver's node name.
    pub(crate) to: String,
    /// The message.
    pub(crate) msg: FoundingMsg,
}

/// A promise a proposer collected: who promised, and what it had accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PromiseFrom {
    participant: Participant,
    accepted: Option<Accepted>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Preparing {
        ballot: Ballot,
        promises: BTreeMap<String, PromiseFrom>,
        deadline: Instant,
    },
    Accepting {
        ballot: Ballot,
        founder: Founder,
        accepts: BTreeMap<String, Participant>,
        deadline: Instant,
    },
}

/// The founding state machine of one node.
#[derive(Debug)]
pub(crate) struct Founding {
    cfg: FoundingConfig,
    st: FoundingState,
    members: Vec<Participant>,
    founded_peers: Vec<String>,
    phase: Phase,
    max_round: u64,
    next_try: Instant,
    attempts: u32,
    /// Questions sent to members of a founded cluster (picks the next one).
    queries: u64,
    /// This node already belongs to a founded cluster (it holds lease state) but has
    /// not learned the founder yet: it asks, and neither proposes nor accepts.
    in_cluster: bool,
    last_proposer: Option<String>,
    outbox: VecDeque<FoundingTransmit>,
    to_self: VecDeque<FoundingMsg>,
    dirty: bool,
    rng: u64,
}

impl Founding {
    /// Starts from persisted state. `seed` seeds the cluster id and the retry jitter.
    pub(crate) fn new(cfg: FoundingConfig, st: FoundingState, seed: u64, now: Instant) -> Self {
        let max_round = st
            .promised
            .as_ref()
            .map_or(0, |b| b.round)
            .max(st.accepted.as_ref().map_or(0, |a| a.ballot.round));
        Founding {
            cfg,
            st,
            members: Vec::new(),
            founded_peers: Vec::new(),
            phase: Phase::Idle,
            max_round,
            next_try: now,
            attempts: 0,
            queries: 0,
            in_cluster: false,
            last_proposer: None,
            outbox: VecDeque::new(),
            to_self: VecDeque::new(),
            dirty: false,
            rng: seed | 1,
        }
    }

    /// The persisted state.
    pub(crate) fn state(&self) -> &FoundingState {
        &self.st
    }

    /// The founder, once chosen.
    pub(crate) fn decided(&self) -> Option<&Founder> {
        self.st.decided.as_ref()
    }

    /// Returns true once after each change that must be saved before messages go out.
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn me(&self) -> Participant {
        Participant {
            name: self.cfg.name.clone(),
            addr: self.cfg.addr,
            initial: self.cfg.initial.clone(),
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: only jitter and cluster ids, seeded by the caller.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Tells the machine which live members it can talk to (with their gossip
    /// addresses and initial sets, as published), and which live members already
    /// belong to a founded cluster. A node that has not decided asks those members
    /// for the founder ([`Founding::handle_timeout`]) instead of proposing: their
    /// value was chosen, and they answer with `Decided`.
    pub(crate) fn set_members(&mut self, members: Vec<Participant>, founded: Vec<FoundedPeer>) {
        self.members = members;
        self.founded_peers = founded.into_iter().map(|f| f.name).collect();
    }

    /// Founds at once with this node as the founder (the explicit ways: no `--peers`,
    /// or this node first in them), unless a founder is already known.
    pub(crate) fn found_alone(&mut self) {
        if self.st.decided.is_none() {
            let founder = Founder {
                name: self.cfg.name.clone(),
                cluster_id: self.next_rand().max(1),
            };
            self.decide(founder);
        }
    }

    /// Tells the machine that this node already belongs to a founded cluster (it
    /// received a subnet before it learned the founder): it only asks members for
    /// the founder from now on.
    pub(crate) fn set_in_cluster(&mut self) {
        if self.st.decided.is_none() && !self.in_cluster {
            self.in_cluster = true;
            self.phase = Phase::Idle;
        }
    }

    /// Marks a node whose lease state predates founding (it owned, knew or used a
    /// subnet) as founded, with the unknown founder [`Founder::legacy`].
    pub(crate) fn adopt_legacy(&mut self) {
        self.decide(Founder::legacy());
    }

    fn decide(&mut self, founder: Founder) {
        if self.st.decided.as_ref() == Some(&founder) {
            return;
        }
        if self.st.decided.is_none() {
            self.st.decided = Some(founder);
            self.dirty = true;
            self.phase = Phase::Idle;
        }
    }

    /// Handles a founding message from `from`.
    pub(crate) fn handle_message(&mut self, from: &str, msg: FoundingMsg, now: Instant) {
        self.process(from, msg, now);
        self.drain_self(now);
    }

    /// Messages this node sends itself (its own acceptor) are handled at once.
    fn drain_self(&mut self, now: Instant) {
        while let Some(msg) = self.to_self.pop_front() {
            let me = self.cfg.name.clone();
            self.process(&me, msg, now);
        }
    }

    fn process(&mut self, from: &str, msg: FoundingMsg, now: Instant) {
        match msg {
            // Round 0 is a question from a node that sees our published cluster id.
            FoundingMsg::Prepare { ballot } if ballot.round == 0 => {
                if let Some(f) = self.st.decided.clone() {
                    self.send(from, FoundingMsg::Decided { founder: f });
                }
            }
            FoundingMsg::Prepare { .. } | FoundingMsg::Accept { .. }
                if self.in_cluster && self.st.decided.is_none() => {}
            // The last round leaves no higher one to propose in: promising it (or
            // raising `max_round` to it) would stop every later proposal, and a round
            // that wraps to 0 is a question. No honest proposer gets there.
            FoundingMsg::Prepare { ballot } | FoundingMsg::Accept { ballot, .. }
                if ballot.round == u64::MAX => {}
            FoundingMsg::Nack { promised, .. } if promised.round == u64::MAX => {}
            FoundingMsg::Prepare { ballot } => self.on_prepare(from, ballot),
            FoundingMsg::Accept { ballot, founder } => self.on_accept(from, ballot, founder),
            FoundingMsg::Promise {
                ballot,
                accepted,
                addr,
                initial,
            } => self.on_promise(from, ballot, accepted, addr, initial, now),
            FoundingMsg::Accepted {
                ballot,
                addr,
                initial,
            } => self.on_accepted(from, ballot, addr, initial),
            FoundingMsg::Nack { ballot, promised } => {
                self.max_round = self.max_round.max(promised.round);
                let ours = match &self.phase {
                    Phase::Preparing { ballot: b, .. } | Phase::Accepting { ballot: b, .. } => {
                        Some(b.clone())
                    }
                    Phase::Idle => None,
                };
                if ours == Some(ballot) {
                    self.phase = Phase::Idle;
                    self.schedule_retry(now);
                }
            }
            FoundingMsg::Decided { founder } => self.decide(founder),
        }
    }

    /// Acceptor: a proposer asks us to promise `ballot`.
    fn on_prepare(&mut self, from: &str, ballot: Ballot) {
        self.max_round = self.max_round.max(ballot.round);
        self.last_proposer = Some(ballot.proposer.clone());
        if let Some(f) = self.st.decided.clone() {
            self.send(from, FoundingMsg::Decided { founder: f });
        } else if self.admits(&ballot) {
            if self.st.promised.as_ref() != Some(&ballot) {
                self.st.promised = Some(ballot.clone());
                self.dirty = true;
            }
            let reply = FoundingMsg::Promise {
                ballot,
                accepted: self.st.accepted.clone(),
                addr: self.cfg.addr,
                initial: self.cfg.initial.clone(),
            };
            self.send(from, reply);
        } else {
            self.refuse(from, ballot);
        }
    }

    /// Acceptor: a proposer asks us to accept `founder` at `ballot`.
    fn on_accept(&mut self, from: &str, ballot: Ballot, founder: Founder) {
        self.max_round = self.max_round.max(ballot.round);
        if let Some(f) = self.st.decided.clone() {
            self.send(from, FoundingMsg::Decided { founder: f });
        } else if self.admits(&ballot) {
            let acc = Accepted {
                ballot: ballot.clone(),
                founder,
            };
            if self.st.accepted.as_ref() != Some(&acc) || self.st.promised.as_ref() != Some(&ballot)
            {
                self.st.promised = Some(ballot.clone());
                self.st.accepted = Some(acc);
                self.dirty = true;
            }
            let reply = FoundingMsg::Accepted {
                ballot,
                addr: self.cfg.addr,
                initial: self.cfg.initial.clone(),
            };
            self.send(from, reply);
        } else {
            self.refuse(from, ballot);
        }
    }

    /// Proposer: `from` promised our ballot (and tells what it accepted before).
    fn on_promise(
        &mut self,
        from: &str,
        ballot: Ballot,
        accepted: Option<Accepted>,
        addr: SocketAddr,
        initial: InitialSet,
        now: Instant,
    ) {
        let Phase::Preparing {
            ballot: ours,
            promises,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if ballot != *ours {
            return;
        }
        let participant = Participant {
            name: from.to_string(),
            addr,
            initial,
        };
        promises.insert(
            from.to_string(),
            PromiseFrom {
                participant,
                accepted,
            },
        );
        self.try_phase2(now);
    }

    /// Proposer: `from` accepted our founder; a quorum decides it.
    fn on_accepted(&mut self, from: &str, ballot: Ballot, addr: SocketAddr, initial: InitialSet) {
        let Phase::Accepting {
            ballot: ours,
            accepts,
            founder,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if ballot != *ours {
            return;
        }
        accepts.insert(
            from.to_string(),
            Participant {
                name: from.to_string(),
                addr,
                initial,
            },
        );
        let group: Vec<Participant> = accepts.values().cloned().collect();
        if is_quorum(&group) {
            let f = founder.clone();
            self.decide(f.clone());
            for m in self.members.clone() {
                if m.name != self.cfg.name {
                    self.send(&m.name, FoundingMsg::Decided { founder: f.clone() });
                }
            }
        }
    }

    fn try_phase2(&mut self, now: Instant) {
        let Phase::Preparing {
            ballot, promises, ..
        } = &self.phase
        else {
            return;
        };
        let group: Vec<Participant> = promises.values().map(|p| p.participant.clone()).collect();
        if !is_quorum(&group) {
            return;
        }
        let ballot = ballot.clone();
        let prior = promises
            .values()
            .filter_map(|p| p.accepted.clone())
            .max_by(|a, b| a.ballot.cmp(&b.ballot));
        let names: Vec<String> = promises.keys().cloned().collect();
        let founder = match prior {
            Some(a) => a.founder,
            None => Founder {
                name: self.cfg.name.clone(),
                cluster_id: self.next_rand().max(1),
            },
        };
        self.phase = Phase::Accepting {
            ballot: ballot.clone(),
            founder: founder.clone(),
            accepts: BTreeMap::new(),
            deadline: now + self.cfg.phase_timeout,
        };
        for n in names {
            let msg = FoundingMsg::Accept {
                ballot: ballot.clone(),
                founder: founder.clone(),
            };
            self.send(&n, msg);
        }
    }

    /// Whether our acceptor answers yes to `ballot`: it is at least as high as our promise.
    fn admits(&self, ballot: &Ballot) -> bool {
        self.st.promised.as_ref().is_none_or(|p| ballot >= p)
    }

    /// Tells the proposer of `ballot` which higher ballot we promised instead.
    fn refuse(&mut self, from: &str, ballot: Ballot) {
        if let Some(promised) = self.st.promised.clone() {
            self.send(from, FoundingMsg::Nack { ballot, promised });
        }
    }

    fn send(&mut self, to: &str, msg: FoundingMsg) {
        if to == self.cfg.name {
            // Our own acceptor answers through the same code, before we return.
            self.to_self.push_back(msg);
        } else {
            self.outbox.push_back(FoundingTransmit {
                to: to.to_string(),
                msg,
            });
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.attempts = self.attempts.saturating_add(1);
        let base = self.cfg.backoff.as_millis() as u64;
        let exp = base.saturating_mul(1 << self.attempts.min(4));
        let jitter = self.next_rand() % (base.max(1));
        self.next_try = now + Duration::from_millis(exp + jitter);
    }

    /// Whether we are the lowest-named present candidate, who proposes first.
    fn first_candidate(&self) -> bool {
        self.cfg.propose_first
            || self
                .members
                .iter()
                .filter(|m| !self.founded_peers.contains(&m.name))
                .all(|m| m.name >= self.cfg.name)
    }

    /// Runs timers: starts a proposal when a quorum seems present, retries on timeouts.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.st.decided.is_some() {
            return;
        }
        let expired = match &self.phase {
            Phase::Idle => false,
            Phase::Preparing { deadline, .. } | Phase::Accepting { deadline, .. } => {
                now >= *deadline
            }
        };
        if expired {
            self.phase = Phase::Idle;
            self.schedule_retry(now);
        }
        if self.phase != Phase::Idle || now < self.next_try {
            return;
        }
        if !self.founded_peers.is_empty() {
            // A founded cluster is in reach: ask one of its members for the founder
            // (a decided acceptor answers any prepare with `Decided`; round 0 changes
            // no state anywhere), one member per try, in turn.
            let i = (self.queries as usize) % self.founded_peers.len();
            self.queries = self.queries.wrapping_add(1);
            let to = self.founded_peers[i].clone();
            let ballot = Ballot {
                round: 0,
                proposer: self.cfg.name.clone(),
            };
            self.send(&to, FoundingMsg::Prepare { ballot });
            self.next_try = now + self.cfg.backoff;
            return;
        }
        if self.in_cluster {
            self.next_try = now + self.cfg.backoff;
            return;
        }
        // Propose only when our own initial set is satisfied by who we can see, and
        // (unless we have waited a while) when we are the first candidate.
        let mut group = self.candidates();
        group.push(self.me());
        if !self.cfg.initial.satisfied_by(&group) {
            // Look again after a while: members come and go between calls.
            self.next_try = now + self.cfg.backoff;
            return;
        }
        if !self.first_candidate() && self.attempts == 0 {
            self.attempts = 1;
            let d = self.cfg.backoff * 2;
            self.next_try = now + d;
            return;
        }
        // Rounds come from peers and the state file; never wrap to 0 (a question).
        let Some(round) = self.max_round.checked_add(1) else {
            self.next_try = now + self.cfg.backoff;
            return;
        };
        self.max_round = round;
        let ballot = Ballot {
            round: self.max_round,
            proposer: self.cfg.name.clone(),
        };
        self.phase = Phase::Preparing {
            ballot: ballot.clone(),
            promises: BTreeMap::new(),
            deadline: now + self.cfg.phase_timeout,
        };
        self.next_try = now + self.cfg.phase_timeout;
        let mut names: Vec<String> = self.candidates().into_iter().map(|m| m.name).collect();
        names.push(self.cfg.name.clone());
        for n in names {
            self.send(
                &n,
                FoundingMsg::Prepare {
                    ballot: ballot.clone(),
                },
            );
        }
        self.drain_self(now);
    }

    fn candidates(&self) -> Vec<Participant> {
        self.members
            .iter()
            .filter(|m| m.name != self.cfg.name && !self.founded_peers.contains(&m.name))
            .cloned()
            .collect()
    }

    /// The next instant [`Founding::handle_timeout`] must run.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.st.decided.is_some() {
            return None;
        }
        Some(match &self.phase {
            Phase::Idle => self.next_try,
            Phase::Preparing { deadline, .. } | Phase::Accepting { deadline, .. } => *deadline,
        })
    }

    /// The next message to send, if any.
    pub(crate) fn poll_transmit(&mut self) -> Option<FoundingTransmit> {
        self.outbox.pop_front()
    }

    /// What the node waits for, while no founder is chosen.
    pub(crate) fn waiting(&self) -> Option<FoundingWait> {
        if self.st.decided.is_some() || self.in_cluster {
            return None;
        }
        let mut group = self.candidates();
        group.push(self.me());
        let present = self.cfg.initial.present(&group);
        let needed = self.cfg.initial.needed();
        if present < needed {
            let (of, missing) = match &self.cfg.initial {
                InitialSet::Peers(s) => (
                    s.len(),
                    s.iter()
                        .filter(|a| !group.iter().any(|p| p.addr == **a))
                        .copied()
                        .collect(),
                ),
                InitialSet::Expect(n) => (*n as usize, Vec::new()),
            };
            return Some(FoundingWait::Peers {
                present,
                of,
                needed,
                missing,
            });
        }
        let proposer = match &self.phase {
            Phase::Idle => self.last_proposer.clone(),
            _ => Some(self.cfg.name.clone()),
        };
        Some(FoundingWait::Agreeing { proposer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i as u8 + 1], 7946))
    }

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    /// Initial sets from seed lists: node i names `seeds[i]`.
    fn peers_sets(seeds: &[Vec<usize>]) -> Vec<InitialSet> {
        seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut set: BTreeSet<SocketAddr> = s.iter().map(|&j| addr(j)).collect();
                set.insert(addr(i));
                InitialSet::Peers(set)
            })
            .collect()
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A message on its way.
    #[derive(Clone)]
    struct InFlight {
        from: usize,
        to: usize,
        msg: FoundingMsg,
    }

    /// A value accepted in one ballot, and by whom.
    struct AcceptedBy {
        founder: Founder,
        by: Vec<Participant>,
    }

    /// A tiny network: nodes, persisted states, in-flight messages, links and crashes.
    struct Net {
        nodes: Vec<Option<Founding>>,
        saved: Vec<FoundingState>,
        initial: Vec<InitialSet>,
        flight: Vec<InFlight>,
        cut: HashMap<(usize, usize), bool>,
        now: Instant,
        rng: Rng,
        loss: u64,
        /// Chance (1 in `slow`) that a message in flight is delivered in a step.
        slow: u64,
        phase_timeout: Duration,
        backoff: Duration,
        decided_ever: Vec<Founder>,
    }

    impl Net {
        fn new(initial: Vec<InitialSet>, seed: u64) -> Net {
            let n = initial.len();
            let now = Instant::now();
            let mut net = Net {
                nodes: (0..n).map(|_| None).collect(),
                saved: vec![FoundingState::default(); n],
                initial,
                flight: Vec::new(),
                cut: HashMap::new(),
                now,
                rng: Rng(seed | 1),
                loss: 0,
                slow: 3,
                phase_timeout: Duration::from_millis(500),
                backoff: Duration::from_millis(200),
                decided_ever: Vec::new(),
            };
            for i in 0..n {
                net.start(i);
            }
            net
        }

        fn start(&mut self, i: usize) {
            let cfg = FoundingConfig {
                name: name(i),
                addr: addr(i),
                initial: self.initial[i].clone(),
                phase_timeout: self.phase_timeout,
                backoff: self.backoff,
                propose_first: false,
            };
            let seed = self.rng.next();
            self.nodes[i] = Some(Founding::new(cfg, self.saved[i].clone(), seed, self.now));
        }

        fn crash(&mut self, i: usize) {
            self.nodes[i] = None;
            self.flight.retain(|m| m.to != i);
        }

        fn linked(&self, a: usize, b: usize) -> bool {
            !self
                .cut
                .get(&(a.min(b), a.max(b)))
                .copied()
                .unwrap_or(false)
        }

        fn idx(n: &str) -> usize {
            n[1..].parse().unwrap()
        }

        /// Membership as gossip would give it: live nodes we are linked to.
        fn refresh_members(&mut self) {
            let n = self.nodes.len();
            for i in 0..n {
                let members: Vec<Participant> = (0..n)
                    .filter(|&j| j != i && self.nodes[j].is_some() && self.linked(i, j))
                    .map(|j| Participant {
                        name: name(j),
                        addr: addr(j),
                        initial: self.initial[j].clone(),
                    })
                    .collect();
                let founded: Vec<FoundedPeer> = members
                    .iter()
                    .filter_map(|m| {
                        let d = self.nodes[Self::idx(&m.name)].as_ref()?.decided()?;
                        Some(FoundedPeer {
                            name: m.name.clone(),
                            cluster_id: d.cluster_id,
                        })
                    })
                    .collect();
                if let Some(f) = self.nodes[i].as_mut() {
                    f.set_members(members, founded);
                }
            }
        }

        /// Saves dirty state, then collects what each node sends.
        fn flush(&mut self, i: usize) {
            let Some(f) = self.nodes[i].as_mut() else {
                return;
            };
            if f.take_dirty() {
                self.saved[i] = f.state().clone();
            }
            if let Some(d) = f.decided() {
                if !self.decided_ever.contains(d) {
                    self.decided_ever.push(d.clone());
                }
            }
            while let Some(FoundingTransmit { to, msg }) = f.poll_transmit() {
                self.flight.push(InFlight {
                    from: i,
                    to: Self::idx(&to),
                    msg,
                });
            }
        }

        fn step(&mut self) {
            self.now += Duration::from_millis(10);
            self.refresh_members();
            for i in 0..self.nodes.len() {
                if let Some(f) = self.nodes[i].as_mut() {
                    if f.poll_timeout().is_some_and(|t| t <= self.now) {
                        f.handle_timeout(self.now);
                    }
                }
                self.flush(i);
            }
            // Deliver a random subset of what is in flight, in random order.
            let mut k = self.flight.len();
            while k > 0 {
                k -= 1;
                if self.rng.below(self.slow) != 0 {
                    continue;
                }
                let j = self.rng.below(self.flight.len() as u64) as usize;
                let InFlight { from, to, msg } = self.flight.swap_remove(j);
                if self.rng.below(100) < self.loss || !self.linked(from, to) {
                    continue;
                }
                if self.rng.below(20) == 0 {
                    // Duplicate.
                    self.flight.push(InFlight {
                        from,
                        to,
                        msg: msg.clone(),
                    });
                }
                if let Some(f) = self.nodes[to].as_mut() {
                    f.handle_message(&name(from), msg, self.now);
                }
                self.flush(to);
                if k > self.flight.len() {
                    k = self.flight.len();
                }
            }
        }

        /// Values accepted by a quorum in the same ballot: Paxos's "chosen".
        fn chosen(&self) -> Vec<Founder> {
            let mut by_ballot: BTreeMap<Ballot, AcceptedBy> = BTreeMap::new();
            for i in 0..self.nodes.len() {
                let st = match &self.nodes[i] {
                    Some(f) => f.state().clone(),
                    None => self.saved[i].clone(),
                };
                if let Some(a) = st.accepted {
                    let e = by_ballot.entry(a.ballot).or_insert_with(|| AcceptedBy {
                        founder: a.founder.clone(),
                        by: Vec::new(),
                    });
                    e.by.push(Participant {
                        name: name(i),
                        addr: addr(i),
                        initial: self.initial[i].clone(),
                    });
                }
            }
            by_ballot
                .into_values()
                .filter(|a| is_quorum(&a.by))
                .map(|a| a.founder)
                .collect()
        }

        fn run(&mut self, steps: usize) {
            for _ in 0..steps {
                self.step();
                for f in self.chosen() {
                    if !self.decided_ever.contains(&f) {
                        self.decided_ever.push(f);
                    }
                }
                assert!(
                    self.decided_ever.len() <= 1,
                    "two founders: {:?}",
                    self.decided_ever
                );
            }
        }

        fn all_decided(&self) -> bool {
            self.nodes
                .iter()
                .all(|f| f.as_ref().is_some_and(|f| f.decided().is_some()))
        }
    }

    #[test]
    fn quorum_is_closed_majority() {
        let sets = peers_sets(&[vec![1], vec![2], vec![0]]);
        let p = |i: usize| Participant {
            name: name(i),
            addr: addr(i),
            initial: sets[i].clone(),
        };
        assert!(!is_quorum(&[p(0)]));
        assert!(!is_quorum(&[p(0), p(1)]), "n1 needs n2");
        assert!(is_quorum(&[p(0), p(1), p(2)]));
        let alone = peers_sets(&[vec![]]);
        assert!(is_quorum(&[Participant {
            name: name(0),
            addr: addr(0),
            initial: alone[0].clone()
        }]));
    }

    #[test]
    fn two_nodes_naming_each_other_agree_on_one_founder() {
        let mut net = Net::new(peers_sets(&[vec![1], vec![0]]), 7);
        net.run(300);
        assert!(net.all_decided());
        assert_eq!(net.decided_ever.len(), 1);
    }

    #[test]
    fn a_ring_of_three_agrees() {
        let mut net = Net::new(peers_sets(&[vec![1], vec![2], vec![0]]), 8);
        net.run(300);
        assert!(net.all_decided());
    }

    #[test]
    fn five_nodes_with_three_shared_seeds_agree() {
        let seeds = vec![
            vec![0, 1, 2],
            vec![2, 0, 1],
            vec![1, 2, 0],
            vec![2, 1, 0],
            vec![0, 2, 1],
        ];
        let mut net = Net::new(peers_sets(&seeds), 9);
        net.run(400);
        assert!(net.all_decided());
    }

    #[test]
    fn a_minority_never_founds_and_waits_for_its_peers() {
        let mut net = Net::new(peers_sets(&[vec![1, 2], vec![0, 2], vec![0, 1]]), 3);
        net.crash(1);
        net.crash(2);
        net.run(200);
        let f = net.nodes[0].as_ref().unwrap();
        assert!(f.decided().is_none());
        assert_eq!(
            f.waiting(),
            Some(FoundingWait::Peers {
                present: 1,
                of: 3,
                needed: 2,
                missing: vec![addr(1), addr(2)]
            })
        );
        net.start(1);
        net.run(300);
        assert!(net.nodes[0].as_ref().unwrap().decided().is_some());
    }

    #[test]
    fn random_schedules_never_choose_two_founders() {
        let configs: Vec<Vec<Vec<usize>>> = vec![
            vec![vec![1], vec![0]],
            vec![vec![1], vec![2], vec![0]],
            vec![
                vec![0, 1, 2],
                vec![2, 0],
                vec![1, 0],
                vec![2, 1, 0],
                vec![0, 2, 1],
            ],
            vec![
                vec![1, 2],
                vec![0, 2],
                vec![0, 1],
                vec![0, 1, 2],
                vec![1, 2, 0],
            ],
            vec![vec![1], vec![2], vec![3], vec![0], vec![2]],
        ];
        for seed in 1..=300u64 {
            let cfg = &configs[seed as usize % configs.len()];
            let n = cfg.len();
            let mut net = Net::new(peers_sets(cfg), seed);
            net.loss = seed % 20;
            // Short timeouts and slow delivery make proposers duel; restart every node so
            // that the settings apply from the start.
            net.slow = 2 + seed % 6;
            net.phase_timeout = Duration::from_millis(60 + 10 * (seed % 10));
            net.backoff = Duration::from_millis(10);
            for i in 0..n {
                net.start(i);
            }
            for round in 0..12 {
                // A random partition, crash or restart, then some steps.
                match net.rng.below(4) {
                    0 => {
                        let a = net.rng.below(n as u64) as usize;
                        let b = net.rng.below(n as u64) as usize;
                        let v = net.rng.below(2) == 0;
                        net.cut.insert((a.min(b), a.max(b)), v);
                    }
                    1 => {
                        let a = net.rng.below(n as u64) as usize;
                        net.crash(a);
                    }
                    2 => {
                        for i in 0..n {
                            if net.nodes[i].is_none() {
                                net.start(i);
                            }
                        }
                    }
                    _ => {}
                }
                let steps = 20 + net.rng.below(60) as usize;
                net.run(steps);
                let _ = round;
            }
            // Heal everything and restart every node (from its saved state) with the
            // default timeouts: every node must end up with the one founder.
            net.cut.clear();
            net.loss = 0;
            net.slow = 3;
            net.phase_timeout = Duration::from_millis(500);
            net.backoff = Duration::from_millis(200);
            for i in 0..n {
                net.crash(i);
                net.start(i);
            }
            net.run(1500);
            assert!(net.all_decided(), "seed {seed}: not every node decided");
        }
    }

    #[test]
    fn the_last_round_is_ignored_and_rounds_never_wrap() {
        let mut net = Net::new(peers_sets(&[vec![1], vec![0]]), 11);
        let last = Ballot {
            round: u64::MAX,
            proposer: name(1),
        };
        let now = net.now;
        let f = net.nodes[0].as_mut().unwrap();
        f.handle_message(
            &name(1),
            FoundingMsg::Prepare {
                ballot: last.clone(),
            },
            now,
        );
        let founder = Founder {
            name: name(1),
            cluster_id: 9,
        };
        f.handle_message(
            &name(1),
            FoundingMsg::Accept {
                ballot: last.clone(),
                founder,
            },
            now,
        );
        f.handle_message(
            &name(1),
            FoundingMsg::Nack {
                ballot: Ballot {
                    round: 1,
                    proposer: name(0),
                },
                promised: last.clone(),
            },
            now,
        );
        assert_eq!(f.state(), &FoundingState::default());
        assert_eq!(f.poll_transmit(), None);
        net.run(300);
        assert!(net.all_decided());
        // A state file that promised the last round: no proposal wraps to round 0.
        let sets = peers_sets(&[vec![1], vec![0]]);
        let cfg = FoundingConfig {
            name: name(0),
            addr: addr(0),
            initial: sets[0].clone(),
            phase_timeout: Duration::from_millis(500),
            backoff: Duration::from_millis(200),
            propose_first: true,
        };
        let st = FoundingState {
            promised: Some(last),
            ..FoundingState::default()
        };
        let mut f = Founding::new(cfg, st, 1, now);
        f.set_members(
            vec![Participant {
                name: name(1),
                addr: addr(1),
                initial: sets[1].clone(),
            }],
            vec![],
        );
        for i in 0..5u32 {
            f.handle_timeout(now + Duration::from_secs(i.into()));
            while let Some(t) = f.poll_transmit() {
                assert!(
                    !matches!(t.msg, FoundingMsg::Prepare { ref ballot } if ballot.round == 0),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn bootstrap_expect_needs_a_majority_of_n() {
        let sets = vec![InitialSet::Expect(3); 3];
        let mut net = Net::new(sets, 5);
        net.crash(2);
        net.crash(1);
        net.run(100);
        assert!(net.decided_ever.is_empty());
        net.start(1);
        net.run(300);
        assert_eq!(net.decided_ever.len(), 1);
    }
}
