//! Gossip membership: a sans-IO wrapper around [foca]'s SWIM implementation.
//!
//! Each node's identity is a [`NodeMeta`]: its name, underlay addresses, VXLAN settings,
//! the cluster parameters it was started with and the subnet it currently uses. foca
//! disseminates identities with infection-style gossip, detects failures with SWIM's
//! direct and indirect probes plus suspicion, and hands a joining node a feed of
//! members. A node that changes its published lease changes its identity (same name,
//! higher `bump`), which foca gossips as a rename.
//!
//! This module leaves out the identity's wire codec ([`super::meta`]), the lease
//! protocol ([`super::lease`]) and all I/O: datagrams and `now` come in, datagrams
//! and a deadline go out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, Foca, NoCustomBroadcast, OwnedNotification, Timer};
use rand_foca::{rngs::StdRng, SeedableRng};

use super::founding::Founder;
use super::message::{emit_frame_header, Datagram, Kind, Owned};
use super::meta::{MetaCodec, Mismatch, NodeMeta};

/// Liveness of a member as seen by this node (the dataplane's view of a peer is
/// [`crate::dataplane::fib::PeerState`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; still treated as alive until declared dead.
    Suspect,
    /// Declared dead by the cluster.
    Dead,
}

/// A peer's latest identity and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownMember {
    /// The identity it published last.
    pub(crate) meta: NodeMeta,
    /// Its liveness.
    pub(crate) state: MemberState,
}

/// When a foca timer fires; `seq` keeps timers due at the same instant apart, in
/// the order they were scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimerKey {
    at: Instant,
    seq: u64,
}

/// Settings of the membership layer.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often each node gossips updates to a few random members.
    pub(crate) gossip_interval: Duration,
    /// Members each gossip round goes to.
    pub(crate) gossip_fanout: usize,
    /// SWIM probe period.
    pub(crate) probe_period: Duration,
    /// Expected cluster size, for foca's retransmission and suspicion tuning.
    pub(crate) cluster_size_hint: u32,
    /// Seed for foca's random choices (deterministic in the simulator).
    pub(crate) rng_seed: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            probe_period: Duration::from_secs(1),
            cluster_size_hint: 100,
            rng_seed: 0,
        }
    }
}

/// An event from the membership layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MembershipEvent {
    /// A peer appeared or changed its identity.
    Up(NodeMeta),
    /// A peer was declared dead.
    Down(NodeMeta),
    /// A peer became suspect, or a suspect one was heard from again (foca raises no
    /// notification for either): [`Membership::peers`] changed.
    Suspicion,
    /// A peer with different cluster parameters was refused.
    Mismatch {
        /// The refused peer's name.
        peer: String,
        /// Its gossip address.
        addr: SocketAddr,
        /// What differs.
        reason: String,
    },
}

/// The membership state machine of one node.
pub struct Membership {
    foca: Foca<NodeMeta, MetaCodec, StdRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<NodeMeta>,
    timers: BTreeMap<TimerKey, Timer<NodeMeta>>,
    timer_seq: u64,
    next_gossip: Option<Instant>,
    gossip_interval: Duration,
    /// Latest identity and state of every known peer, by name.
    peers: HashMap<String, KnownMember>,
    events: Vec<MembershipEvent>,
    mismatch: Arc<Mutex<Option<Mismatch>>>,
    /// Our founder, as the codec compares it with every identity it decodes.
    founder: Arc<Mutex<Option<Founder>>>,
    /// Datagrams foca rejected (malformed or mismatched).
    pub(crate) dropped: u64,
    catch_up: Option<CatchUp>,
    /// Whether foca is connected (it probes and answers). A change of identity
    /// disconnects it until a message addressed to the new identity arrives; see
    /// [`Membership::reconnect_round`].
    connected: bool,
    rng: u64,
    /// foca's settings, kept to retune suspicion as the cluster grows or shrinks.
    config: Config,
    /// Member count the suspicion timeout was last computed for.
    tuned_for: usize,
    /// The members foca held suspect after its last input, to raise
    /// [`MembershipEvent::Suspicion`] when that changes.
    suspect: HashSet<String>,
}

/// After joining, a node asks several members per gossip round for a feed until the
/// number of peers it knows stops growing: foca's feeds are random samples of about
/// 15 members, and one periodic announce every 5 s would take minutes at 1,000 nodes.
#[derive(Debug, Clone, Copy)]
struct CatchUp {
    known: usize,
    grew_at: Instant,
}

/// Announces per gossip round while catching up.
const CATCH_UP_FANOUT: usize = 8;
/// Announces per gossip round while foca is not connected.
const RECONNECT_FANOUT: usize = 3;
/// Catching up stops after this long without learning a new peer.
const CATCH_UP_QUIET: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Membership {
    /// Creates the membership state of node `me`; nothing is sent until
    /// [`Membership::join`] or [`Membership::handle_timeout`].
    pub(crate) fn new(me: NodeMeta, cfg: &MembershipConfig) -> Self {
        let size = NonZeroU32::new(cfg.cluster_size_hint.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut fc = Config::new_lan(size);
        // Room for the frame header and the auth field within foca's LAN budget.
        fc.max_packet_size = NonZeroUsize::new(
            fc.max_packet_size.get() - super::message::HEADER_LEN - super::auth::AUTH_LEN,
        )
        .unwrap_or(fc.max_packet_size);
        fc.probe_period = cfg.probe_period;
        fc.probe_rtt = cfg.probe_period / 2;
        fc.periodic_gossip = Some(foca::PeriodicParams {
            frequency: cfg.gossip_interval,
            num_members: NonZeroUsize::new(cfg.gossip_fanout.max(1)).unwrap_or(NonZeroUsize::MIN),
        });
        fc.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::MIN,
        });
        fc.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        // gossip() uses num_indirect_probes as its fanout.
        fc.num_indirect_probes =
            NonZeroUsize::new(cfg.gossip_fanout.max(1)).unwrap_or(NonZeroUsize::MIN);
        let codec = MetaCodec::new(me.clone());
        let mismatch = codec.mismatches();
        let founder = codec.founder_slot();
        let foca = Foca::new(me, fc.clone(), StdRng::seed_from_u64(cfg.rng_seed), codec);
        let mut m = Membership {
            foca,
            rt: AccumulatingRuntime::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_gossip: None,
            gossip_interval: cfg.gossip_interval,
            peers: HashMap::new(),
            events: Vec::new(),
            mismatch,
            founder,
            dropped: 0,
            catch_up: None,
            connected: false,
            rng: cfg.rng_seed | 1,
            config: fc,
            tuned_for: usize::MAX,
            suspect: HashSet::new(),
        };
        m.retune();
        m
    }

    /// Scales the suspicion timeout with the number of members actually known, as
    /// memberlist does: 4 × max(1, log10(n)) probe periods. A fixed size hint would
    /// make a 5-node cluster wait as long as a 100-node one (8 s) before declaring a
    /// dead node; with the real count it takes 4 s, and large clusters stay patient.
    fn retune(&mut self) {
        let n = self.foca.num_members() + 1;
        if n == self.tuned_for {
            return;
        }
        self.tuned_for = n;
        let factor = f64::max(1.0, (n as f64).log10()) * 4.0;
        let wanted = self.config.probe_period.mul_f64(factor);
        if wanted != self.config.suspect_to_down_after {
            let mut next = self.config.clone();
            next.suspect_to_down_after = wanted;
            if self.foca.set_config(next.clone()).is_ok() {
                self.config = next;
            }
        }
    }

    /// Our current identity.
    pub fn me(&self) -> &NodeMeta {
        self.foca.identity()
    }

    /// Sends an announce to a seed. The seed's identity is a placeholder with only
    /// its address filled in: foca replies with a feed of members.
    pub(crate) fn join(&mut self, seed: SocketAddr, now: Instant) {
        self.catch_up = Some(CatchUp {
            known: self.peers.len(),
            grew_at: now,
        });
        self.announce_to(seed, now);
    }

    /// Sends an announce to a seed without starting a catch-up: a node that already
    /// has members re-announces to seeds outside its membership, so that islands
    /// merge. The reply (a feed) and the gossip that follows do the rest.
    pub(crate) fn announce_to(&mut self, seed: SocketAddr, now: Instant) {
        let mut s = self.me().clone();
        s.name = format!("seed:{seed}");
        s.gossip = seed;
        s.lease = None;
        if self.foca.announce(s, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        self.drain(now);
    }

    /// Changes what we publish (lease, free space, founder). foca gossips it as a new
    /// identity. From then on, identities founded by another founder are refused.
    pub(crate) fn set_meta(
        &mut self,
        lease: Option<Owned>,
        has_free: bool,
        founder: Option<&Founder>,
        now: Instant,
    ) {
        if let Ok(mut slot) = self.founder.lock() {
            *slot = founder.cloned();
        }
        let me = self.me();
        let cluster_id = founder.map(|f| f.cluster_id);
        if me.lease == lease && me.has_free == has_free && me.cluster_id == cluster_id {
            return;
        }
        let new = NodeMeta {
            lease,
            has_free,
            cluster_id,
            ..me.clone()
        };
        self.publish(new, now);
    }

    /// Gossips `new` (with a higher bump than ours) as our identity.
    fn publish(&mut self, new: NodeMeta, now: Instant) {
        let new = NodeMeta {
            bump: self.me().bump.wrapping_add(1),
            ..new
        };
        if self.foca.change_identity(new, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        // foca resets its connection on a new identity.
        self.connected = false;
        self.drain(now);
    }

    /// Publishes a new WireGuard identity (`overlayd rotate-key`): foca gossips it
    /// as a new identity, as for a lease change.
    pub(crate) fn set_wg(&mut self, wg: Option<super::meta::WgIdentity>, now: Instant) {
        let me = self.me();
        if me.wg == wg {
            return;
        }
        let new = NodeMeta { wg, ..me.clone() };
        self.publish(new, now);
    }

    /// Handles the body of a [`Kind::Membership`] datagram.
    pub(crate) fn handle_datagram(&mut self, body: &[u8], now: Instant) {
        if self.foca.handle_data(body, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        if let Some(refused) = self.codec_mismatch() {
            self.events.push(MembershipEvent::Mismatch {
                peer: refused.meta.name,
                addr: refused.meta.gossip,
                reason: refused.reason,
            });
        }
        self.drain(now);
    }

    fn codec_mismatch(&mut self) -> Option<Mismatch> {
        self.mismatch.lock().ok()?.take()
    }

    /// Fires every foca timer due at `now` and the periodic gossip.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_gossip.is_none() {
            self.next_gossip = Some(now + self.gossip_interval);
            // Kick off probing; foca schedules everything else itself.
            if self
                .foca
                .handle_timer(Timer::ProbeRandomMember(0), &mut self.rt)
                .is_err()
            {
                self.dropped += 1;
            }
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().at > now {
                break;
            }
            let timer = entry.remove();
            if self.foca.handle_timer(timer, &mut self.rt).is_err() {
                self.dropped += 1;
            }
            self.drain(now);
        }
        self.drain(now);
    }

    /// The next instant at which [`Membership::handle_timeout`] must run.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.keys().next().map(|k| k.at);
        match (t, self.next_gossip) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves foca's outputs into our queues. Returns the datagrams to send.
    fn drain(&mut self, now: Instant) {
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            let key = TimerKey {
                at: now + after,
                seq: self.timer_seq,
            };
            self.timers.insert(key, timer);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => self.upsert(m, MemberState::Alive),
                OwnedNotification::Rename(_, m) => self.upsert(m, MemberState::Alive),
                OwnedNotification::Active => self.connected = true,
                OwnedNotification::Idle
                | OwnedNotification::Defunct
                | OwnedNotification::Rejoin(_) => self.connected = false,
                OwnedNotification::MemberDown(m) => {
                    if let Some(e) = self.peers.get_mut(&m.name) {
                        if e.meta.bump == m.bump {
                            e.state = MemberState::Dead;
                            self.events.push(MembershipEvent::Down(m));
                        }
                    }
                }
            }
        }
        self.follow_suspicion();
        self.retune();
    }

    /// Raises [`MembershipEvent::Suspicion`] when the set of suspect members differs
    /// from the one after the last input. Allocates only when it changed.
    fn follow_suspicion(&mut self) {
        let mut count = 0;
        let mut same = true;
        for m in self.foca.iter_membership_state() {
            if m.state() == foca::State::Suspect {
                count += 1;
                same = same && self.suspect.contains(&m.id().name);
            }
        }
        if same && count == self.suspect.len() {
            return;
        }
        self.suspect = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| m.id().name.clone())
            .collect();
        self.events.push(MembershipEvent::Suspicion);
    }

    fn upsert(&mut self, m: NodeMeta, state: MemberState) {
        if m.name == self.me().name {
            return;
        }
        let newer = match self.peers.get(&m.name) {
            Some(old) => (m.bump.wrapping_sub(old.meta.bump) as i16) >= 0,
            None => true,
        };
        if newer {
            let entry = KnownMember {
                meta: m.clone(),
                state,
            };
            self.peers.insert(m.name.clone(), entry);
            self.events.push(MembershipEvent::Up(m));
        }
    }

    /// Runs the periodic gossip if due, then returns the next datagram to send.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Datagram> {
        if let Some(t) = self.next_gossip {
            if t <= now {
                self.next_gossip = Some(now + self.gossip_interval);
                if self.foca.gossip(&mut self.rt).is_err() {
                    self.dropped += 1;
                }
                self.catch_up_round(now);
                self.reconnect_round(now);
                self.drain(now);
            }
        }
        let (to, data) = self.rt.to_send()?;
        let mut out = Vec::with_capacity(data.len() + 8);
        emit_frame_header(Kind::Membership, &mut out);
        out.extend_from_slice(&data);
        Some(Datagram {
            to: to.gossip,
            data: out,
        })
    }

    fn catch_up_round(&mut self, now: Instant) {
        let Some(mut c) = self.catch_up else { return };
        if self.peers.len() > c.known {
            c = CatchUp {
                known: self.peers.len(),
                grew_at: now,
            };
        }
        if now.saturating_duration_since(c.grew_at) > CATCH_UP_QUIET {
            self.catch_up = None;
            return;
        }
        self.catch_up = Some(c);
        let mut live: Vec<&NodeMeta> = self
            .peers
            .values()
            .filter(|k| k.state != MemberState::Dead)
            .map(|k| &k.meta)
            .collect();
        if live.is_empty() {
            return;
        }
        live.sort_by(|a, b| a.name.cmp(&b.name));
        let mut targets = Vec::new();
        for _ in 0..CATCH_UP_FANOUT.min(live.len()) {
            // xorshift64: deterministic under the simulator's seed.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            targets.push(live[(self.rng % live.len() as u64) as usize].clone());
        }
        for t in targets {
            if self.foca.announce(t, &mut self.rt).is_err() {
                self.dropped += 1;
            }
        }
        self.drain(now);
    }

    /// While foca is not connected but peers are known, announces to a few of them
    /// each gossip round. After a change of identity foca answers only messages
    /// addressed to the new identity; when every peer changed its identity at the
    /// same time (a founder was adopted), each side addresses the other's old one and
    /// nothing gets through. An announce is accepted by address, and its feed
    /// reconnects us.
    fn reconnect_round(&mut self, now: Instant) {
        if self.connected {
            return;
        }
        let mut live: Vec<NodeMeta> = self
            .peers
            .values()
            .filter(|k| k.state != MemberState::Dead)
            .map(|k| k.meta.clone())
            .collect();
        if live.is_empty() {
            return;
        }
        live.sort_by(|a, b| a.name.cmp(&b.name));
        for _ in 0..RECONNECT_FANOUT.min(live.len()) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let t = live[(self.rng % live.len() as u64) as usize].clone();
            if self.foca.announce(t, &mut self.rt).is_err() {
                self.dropped += 1;
            }
        }
        let _ = now;
    }

    /// Returns the next membership event.
    pub(crate) fn poll_event(&mut self) -> Option<MembershipEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The latest known identity and state of a peer.
    pub(crate) fn peer(&self, name: &str) -> Option<&KnownMember> {
        self.peers.get(name)
    }

    /// Every known peer with its state (suspicion comes from foca's member table).
    pub(crate) fn peers(&self) -> Vec<KnownMember> {
        let mut suspect = std::collections::HashSet::new();
        for m in self.foca.iter_membership_state() {
            if m.state() == foca::State::Suspect {
                suspect.insert(m.id().name.clone());
            }
        }
        let mut v: Vec<_> = self
            .peers
            .values()
            .map(|k| {
                let state = if k.state == MemberState::Alive && suspect.contains(&k.meta.name) {
                    MemberState::Suspect
                } else {
                    k.state
                };
                KnownMember {
                    meta: k.meta.clone(),
                    state,
                }
            })
            .collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    /// Every known peer's latest identity and whether it is declared dead, without
    /// the suspicion lookup of [`Membership::peers`].
    pub(crate) fn peer_table(&self) -> impl Iterator<Item = &KnownMember> {
        self.peers.values()
    }

    /// Names of peers currently alive or suspect.
    pub(crate) fn live_names(&self) -> impl Iterator<Item = &str> {
        self.peers
            .values()
            .filter(|k| k.state != MemberState::Dead)
            .map(|k| k.meta.name.as_str())
    }

    /// Whether a live (alive or suspect) peer has this gossip address.
    pub(crate) fn has_live_addr(&self, addr: SocketAddr) -> bool {
        self.peers
            .values()
            .any(|k| k.state != MemberState::Dead && k.meta.gossip == addr)
    }

    /// Leaves the cluster: foca tells a few members we are gone.
    pub(crate) fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::meta::tests::meta;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut m = Membership::new(meta("a"), &MembershipConfig::default());
            m.handle_datagram(&bytes, Instant::now());
        }
    }
}
