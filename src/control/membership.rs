//! Gossip membership: a sans-IO wrapper around [foca]'s SWIM implementation.
//!
//! Each node's identity is a [`NodeMeta`]: its name, underlay addresses, VXLAN settings,
//! the cluster parameters it was started with and the subnet it currently uses. foca
//! disseminates identities with infection-style gossip, detects failures with SWIM's
//! direct and indirect probes plus suspicion, and hands a joining node a feed of
//! members. A node that changes its published lease changes its identity (same name,
//! higher `bump`), which foca gossips as a rename.
//!
//! This module leaves out the lease protocol ([`super::lease`]) and all I/O: datagrams
//! and `now` come in, datagrams and a deadline go out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use foca::{
    AccumulatingRuntime, Codec, Config, Foca, Header, Identity, Incarnation, Member, Message,
    NoCustomBroadcast, OwnedNotification, State, Timer,
};
use ipnet::IpNet;
use rand_foca::{rngs::StdRng, SeedableRng};

use super::message::{emit_frame_header, get_str, Kind, WireError};

/// What a node publishes about itself through gossip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeMeta {
    /// Unique node name.
    pub name: String,
    /// Address and port of the node's gossip socket.
    pub gossip: SocketAddr,
    /// UDP port of the node's VXLAN socket (on the gossip address).
    pub vxlan_port: u16,
    /// VXLAN network identifier.
    pub vni: u32,
    /// MAC address of the node's VTEP.
    pub vtep_mac: [u8; 6],
    /// The cluster CIDR the node was started with.
    pub cluster_cidr: IpNet,
    /// The per-node subnet prefix length it was started with.
    pub subnet_len: u8,
    /// The subnet the node uses now: index in the cluster CIDR and ownership version.
    pub lease: Option<(u32, u64)>,
    /// Whether the node owns free subnets it can hand out.
    pub has_free: bool,
    /// Identity generation: the highest `bump` for a name wins.
    pub bump: u16,
}

impl NodeMeta {
    /// Describes the first cluster parameter in which `other` differs from `self`.
    pub fn mismatch(&self, other: &NodeMeta) -> Option<String> {
        if self.cluster_cidr != other.cluster_cidr {
            Some(format!(
                "cluster CIDR {} here, {} on {}",
                self.cluster_cidr, other.cluster_cidr, other.name
            ))
        } else if self.subnet_len != other.subnet_len {
            Some(format!(
                "subnet length /{} here, /{} on {}",
                self.subnet_len, other.subnet_len, other.name
            ))
        } else if self.vni != other.vni {
            Some(format!(
                "VNI {} here, {} on {}",
                self.vni, other.vni, other.name
            ))
        } else {
            None
        }
    }
}

impl Identity for NodeMeta {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeMeta {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.bump.wrapping_sub(adversary.bump) as i16) > 0
    }
}

/// foca's codec for [`NodeMeta`], hand-written. It refuses identities whose cluster
/// parameters differ from ours, so a misconfigured node never enters the member list.
#[derive(Debug, Clone)]
pub struct MetaCodec {
    ours: NodeMeta,
    /// The last identity refused for a cluster mismatch, with the reason. Shared
    /// with [`Membership`], because foca owns the codec.
    last_mismatch: Arc<Mutex<Option<(NodeMeta, String)>>>,
}

/// Errors of [`MetaCodec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not form a valid payload.
    #[error("malformed membership payload: {0}")]
    Wire(#[from] WireError),
    /// A member's cluster parameters differ from ours.
    #[error("cluster mismatch")]
    Mismatch,
}

fn need(buf: &impl Buf, n: usize) -> Result<(), WireError> {
    if buf.remaining() < n {
        Err(WireError::UnexpectedEnd)
    } else {
        Ok(())
    }
}

fn put_ip(ip: IpAddr, out: &mut impl BufMut) {
    match ip {
        IpAddr::V4(a) => {
            out.put_u8(4);
            out.put_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.put_u8(6);
            out.put_slice(&a.octets());
        }
    }
}

fn get_ip(buf: &mut impl Buf) -> Result<IpAddr, WireError> {
    need(buf, 1)?;
    match buf.get_u8() {
        4 => {
            need(buf, 4)?;
            let mut o = [0u8; 4];
            buf.copy_to_slice(&mut o);
            Ok(IpAddr::V4(Ipv4Addr::from(o)))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0u8; 16];
            buf.copy_to_slice(&mut o);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => Err(WireError::Malformed),
    }
}

/// Encoded length of a [`NodeMeta`].
pub fn meta_len(m: &NodeMeta) -> usize {
    let ip = |a: IpAddr| if a.is_ipv4() { 5 } else { 17 };
    1 + m.name.len().min(255)
        + ip(m.gossip.ip())
        + 2
        + 2
        + 4
        + 6
        + ip(m.cluster_cidr.addr())
        + 2
        + if m.lease.is_some() { 13 } else { 1 }
        + 3
}

fn fits(buf: &impl BufMut, n: usize) -> Result<(), CodecError> {
    if buf.remaining_mut() < n {
        Err(WireError::Oversized.into())
    } else {
        Ok(())
    }
}

/// Writes a [`NodeMeta`].
pub fn put_meta(m: &NodeMeta, out: &mut impl BufMut) {
    let name = m.name.as_bytes();
    let n = name.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&name[..n]);
    put_ip(m.gossip.ip(), out);
    out.put_u16(m.gossip.port());
    out.put_u16(m.vxlan_port);
    out.put_u32(m.vni);
    out.put_slice(&m.vtep_mac);
    put_ip(m.cluster_cidr.addr(), out);
    out.put_u8(m.cluster_cidr.prefix_len());
    out.put_u8(m.subnet_len);
    match m.lease {
        Some((idx, ver)) => {
            out.put_u8(1);
            out.put_u32(idx);
            out.put_u64(ver);
        }
        None => out.put_u8(0),
    }
    out.put_u8(u8::from(m.has_free));
    out.put_u16(m.bump);
}

/// Reads a [`NodeMeta`].
pub fn get_meta(buf: &mut impl Buf) -> Result<NodeMeta, WireError> {
    // Names are short: copy the chunk to reuse the slice reader.
    need(buf, 1)?;
    let n = buf.chunk()[0] as usize;
    need(buf, 1 + n)?;
    let name = {
        let mut tmp = vec![0u8; 1 + n];
        buf.copy_to_slice(&mut tmp);
        get_str(&mut &tmp[..])?
    };
    let ip = get_ip(buf)?;
    need(buf, 2 + 2 + 4 + 6)?;
    let gossip = SocketAddr::new(ip, buf.get_u16());
    let vxlan_port = buf.get_u16();
    let vni = buf.get_u32();
    let mut vtep_mac = [0u8; 6];
    buf.copy_to_slice(&mut vtep_mac);
    let cidr_ip = get_ip(buf)?;
    need(buf, 3)?;
    let cluster_cidr = IpNet::new(cidr_ip, buf.get_u8()).map_err(|_| WireError::Malformed)?;
    let subnet_len = buf.get_u8();
    let lease = match buf.get_u8() {
        0 => None,
        1 => {
            need(buf, 12)?;
            Some((buf.get_u32(), buf.get_u64()))
        }
        _ => return Err(WireError::Malformed),
    };
    need(buf, 3)?;
    let has_free = match buf.get_u8() {
        0 => false,
        1 => true,
        _ => return Err(WireError::Malformed),
    };
    let bump = buf.get_u16();
    Ok(NodeMeta {
        name,
        gossip,
        vxlan_port,
        vni,
        vtep_mac,
        cluster_cidr,
        subnet_len,
        lease,
        has_free,
        bump,
    })
}

impl MetaCodec {
    /// A codec that accepts only identities with the same cluster parameters as `ours`.
    pub fn new(ours: NodeMeta) -> Self {
        MetaCodec {
            ours,
            last_mismatch: Arc::new(Mutex::new(None)),
        }
    }

    fn checked_meta(&mut self, buf: &mut impl Buf) -> Result<NodeMeta, CodecError> {
        let m = get_meta(buf)?;
        if let Some(reason) = self.ours.mismatch(&m) {
            if let Ok(mut slot) = self.last_mismatch.lock() {
                *slot = Some((m, reason));
            }
            return Err(CodecError::Mismatch);
        }
        Ok(m)
    }
}

impl Codec<NodeMeta> for MetaCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeMeta>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        let extra = match &header.message {
            Message::PingReq { target: m, .. }
            | Message::IndirectPing { origin: m, .. }
            | Message::IndirectAck { target: m, .. }
            | Message::ForwardedAck { origin: m, .. } => meta_len(m) + 1,
            _ => 1,
        };
        fits(
            &buf,
            meta_len(&header.src) + 2 + meta_len(&header.dst) + 1 + extra,
        )?;
        put_meta(&header.src, &mut buf);
        buf.put_u16(header.src_incarnation);
        put_meta(&header.dst, &mut buf);
        match &header.message {
            Message::Ping(n) => buf.put_slice(&[1, *n]),
            Message::Ack(n) => buf.put_slice(&[2, *n]),
            Message::PingReq {
                target,
                probe_number,
            } => {
                buf.put_u8(3);
                put_meta(target, &mut buf);
                buf.put_u8(*probe_number);
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_u8(4);
                put_meta(origin, &mut buf);
                buf.put_u8(*probe_number);
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_u8(5);
                put_meta(target, &mut buf);
                buf.put_u8(*probe_number);
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_u8(6);
                put_meta(origin, &mut buf);
                buf.put_u8(*probe_number);
            }
            Message::Announce => buf.put_u8(7),
            Message::Feed => buf.put_u8(8),
            Message::Gossip => buf.put_u8(9),
            Message::Broadcast => buf.put_u8(10),
            Message::TurnUndead => buf.put_u8(11),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeMeta>, Self::Error> {
        let src = self.checked_meta(&mut buf)?;
        need(&buf, 2)?;
        let src_incarnation = buf.get_u16();
        let dst = get_meta(&mut buf)?;
        need(&buf, 1)?;
        let tag = buf.get_u8();
        let probe = |buf: &mut dyn Buf| -> Result<u8, CodecError> {
            need(&buf, 1)?;
            Ok(buf.get_u8())
        };
        let message = match tag {
            1 => Message::Ping(probe(&mut buf)?),
            2 => Message::Ack(probe(&mut buf)?),
            3..=6 => {
                let who = self.checked_meta(&mut buf)?;
                let probe_number = probe(&mut buf)?;
                match tag {
                    3 => Message::PingReq {
                        target: who,
                        probe_number,
                    },
                    4 => Message::IndirectPing {
                        origin: who,
                        probe_number,
                    },
                    5 => Message::IndirectAck {
                        target: who,
                        probe_number,
                    },
                    _ => Message::ForwardedAck {
                        origin: who,
                        probe_number,
                    },
                }
            }
            7 => Message::Announce,
            8 => Message::Feed,
            9 => Message::Gossip,
            10 => Message::Broadcast,
            11 => Message::TurnUndead,
            t => return Err(WireError::UnknownKind(t).into()),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeMeta>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        fits(&buf, meta_len(member.id()) + 3)?;
        put_meta(member.id(), &mut buf);
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeMeta>, Self::Error> {
        let id = self.checked_meta(&mut buf)?;
        need(&buf, 3)?;
        let inc: Incarnation = buf.get_u16();
        let state = match buf.get_u8() {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(WireError::Malformed.into()),
        };
        Ok(Member::new(id, inc, state))
    }
}

/// Liveness of a peer as seen by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Answering probes.
    Alive,
    /// Missed probes; still treated as alive until declared dead.
    Suspect,
    /// Declared dead by the cluster.
    Dead,
}

/// Settings of the membership layer.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often each node gossips updates to a few random members.
    pub gossip_interval: Duration,
    /// Members each gossip round goes to.
    pub gossip_fanout: usize,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// Expected cluster size, for foca's retransmission and suspicion tuning.
    pub cluster_size_hint: u32,
    /// Seed for foca's random choices (deterministic in the simulator).
    pub rng_seed: u64,
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
pub enum MembershipEvent {
    /// A peer appeared or changed its identity.
    Up(NodeMeta),
    /// A peer was declared dead.
    Down(NodeMeta),
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
    timers: BTreeMap<(Instant, u64), Timer<NodeMeta>>,
    timer_seq: u64,
    next_gossip: Option<Instant>,
    gossip_interval: Duration,
    /// Latest identity and state of every known peer, by name.
    peers: HashMap<String, (NodeMeta, PeerState)>,
    events: Vec<MembershipEvent>,
    mismatch: Arc<Mutex<Option<(NodeMeta, String)>>>,
    /// Datagrams foca rejected (malformed or mismatched).
    pub dropped: u64,
    catch_up: Option<CatchUp>,
    rng: u64,
    /// foca's settings, kept to retune suspicion as the cluster grows or shrinks.
    config: Config,
    /// Member count the suspicion timeout was last computed for.
    tuned_for: usize,
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
    pub fn new(me: NodeMeta, cfg: &MembershipConfig) -> Self {
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
        let mismatch = codec.last_mismatch.clone();
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
            dropped: 0,
            catch_up: None,
            rng: cfg.rng_seed | 1,
            config: fc,
            tuned_for: usize::MAX,
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
    pub fn join(&mut self, seed: SocketAddr, now: Instant) {
        self.catch_up = Some(CatchUp {
            known: self.peers.len(),
            grew_at: now,
        });
        let mut s = self.me().clone();
        s.name = format!("seed:{seed}");
        s.gossip = seed;
        s.lease = None;
        if self.foca.announce(s, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        self.drain(now);
    }

    /// Changes what we publish (lease, free space). foca gossips it as a new identity.
    pub fn set_meta(&mut self, lease: Option<(u32, u64)>, has_free: bool, now: Instant) {
        let me = self.me();
        if me.lease == lease && me.has_free == has_free {
            return;
        }
        let new = NodeMeta {
            lease,
            has_free,
            bump: me.bump.wrapping_add(1),
            ..me.clone()
        };
        if self.foca.change_identity(new, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        self.drain(now);
    }

    /// Handles the body of a [`Kind::Membership`] datagram.
    pub fn handle_datagram(&mut self, body: &[u8], now: Instant) {
        if self.foca.handle_data(body, &mut self.rt).is_err() {
            self.dropped += 1;
        }
        if let Some((m, reason)) = self.codec_mismatch() {
            self.events.push(MembershipEvent::Mismatch {
                peer: m.name,
                addr: m.gossip,
                reason,
            });
        }
        self.drain(now);
    }

    fn codec_mismatch(&mut self) -> Option<(NodeMeta, String)> {
        self.mismatch.lock().ok()?.take()
    }

    /// Fires every foca timer due at `now` and the periodic gossip.
    pub fn handle_timeout(&mut self, now: Instant) {
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
            if entry.key().0 > now {
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
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.keys().next().map(|k| k.0);
        match (t, self.next_gossip) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves foca's outputs into our queues. Returns the datagrams to send.
    fn drain(&mut self, now: Instant) {
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => self.upsert(m, PeerState::Alive),
                OwnedNotification::Rename(_, m) => self.upsert(m, PeerState::Alive),
                OwnedNotification::MemberDown(m) => {
                    if let Some(e) = self.peers.get_mut(&m.name) {
                        if e.0.bump == m.bump {
                            e.1 = PeerState::Dead;
                            self.events.push(MembershipEvent::Down(m));
                        }
                    }
                }
                _ => {}
            }
        }
        self.retune();
    }

    fn upsert(&mut self, m: NodeMeta, state: PeerState) {
        if m.name == self.me().name {
            return;
        }
        let newer = match self.peers.get(&m.name) {
            Some((old, _)) => (m.bump.wrapping_sub(old.bump) as i16) >= 0,
            None => true,
        };
        if newer {
            self.peers.insert(m.name.clone(), (m.clone(), state));
            self.events.push(MembershipEvent::Up(m));
        }
    }

    /// Runs the periodic gossip if due, then returns the next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(t) = self.next_gossip {
            if t <= now {
                self.next_gossip = Some(now + self.gossip_interval);
                if self.foca.gossip(&mut self.rt).is_err() {
                    self.dropped += 1;
                }
                self.catch_up_round(now);
                self.drain(now);
            }
        }
        let (to, data) = self.rt.to_send()?;
        let mut out = Vec::with_capacity(data.len() + 8);
        emit_frame_header(Kind::Membership, &mut out);
        out.extend_from_slice(&data);
        Some((to.gossip, out))
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
            .filter(|(_, s)| *s != PeerState::Dead)
            .map(|(m, _)| m)
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

    /// Returns the next membership event.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The latest known identity and state of a peer.
    pub fn peer(&self, name: &str) -> Option<&(NodeMeta, PeerState)> {
        self.peers.get(name)
    }

    /// Every known peer with its state (suspicion comes from foca's member table).
    pub fn peers(&self) -> Vec<(NodeMeta, PeerState)> {
        let mut suspect = std::collections::HashSet::new();
        for m in self.foca.iter_membership_state() {
            if m.state() == State::Suspect {
                suspect.insert(m.id().name.clone());
            }
        }
        let mut v: Vec<_> = self
            .peers
            .values()
            .map(|(m, s)| {
                let s = if *s == PeerState::Alive && suspect.contains(&m.name) {
                    PeerState::Suspect
                } else {
                    *s
                };
                (m.clone(), s)
            })
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// Every known peer's latest identity and whether it is declared dead, without
    /// the suspicion lookup of [`Membership::peers`].
    pub fn peer_table(&self) -> impl Iterator<Item = (&NodeMeta, PeerState)> {
        self.peers.values().map(|(m, s)| (m, *s))
    }

    /// Names of peers currently alive or suspect.
    pub fn live_names(&self) -> impl Iterator<Item = &str> {
        self.peers
            .values()
            .filter(|(_, s)| *s != PeerState::Dead)
            .map(|(m, _)| m.name.as_str())
    }

    /// Leaves the cluster: foca tells a few members we are gone.
    pub fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn meta(name: &str) -> NodeMeta {
        NodeMeta {
            name: name.into(),
            gossip: "10.0.0.1:7946".parse().unwrap(),
            vxlan_port: 4789,
            vni: 1,
            vtep_mac: [2, 0, 0, 0, 0, 1],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            lease: Some((3, 1)),
            has_free: false,
            bump: 0,
        }
    }

    fn arb_meta() -> impl Strategy<Value = NodeMeta> {
        (
            "[a-z0-9-]{1,30}",
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u32>(),
            any::<[u8; 6]>(),
            proptest::option::of((any::<u32>(), any::<u64>())),
            any::<bool>(),
            any::<u16>(),
        )
            .prop_map(
                |(name, ip, port, vni, mac, lease, has_free, bump)| NodeMeta {
                    name,
                    gossip: SocketAddr::new(IpAddr::V4(ip.into()), port),
                    vxlan_port: port,
                    vni,
                    vtep_mac: mac,
                    cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                    subnet_len: 24,
                    lease,
                    has_free,
                    bump,
                },
            )
    }

    proptest! {
        #[test]
        fn meta_round_trip(m in arb_meta()) {
            let mut buf = Vec::new();
            put_meta(&m, &mut buf);
            prop_assert_eq!(buf.len(), meta_len(&m));
            prop_assert_eq!(get_meta(&mut &buf[..]).unwrap(), m);
        }

        #[test]
        fn header_round_trip(a in arb_meta(), b in arb_meta(), inc in any::<u16>(), p in any::<u8>(), tag in 0usize..11) {
            let b = NodeMeta { vni: a.vni, ..b };
            let mut codec = MetaCodec::new(a.clone());
            let message = match tag {
                0 => Message::Ping(p),
                1 => Message::Ack(p),
                2 => Message::PingReq { target: b.clone(), probe_number: p },
                3 => Message::IndirectPing { origin: b.clone(), probe_number: p },
                4 => Message::IndirectAck { target: b.clone(), probe_number: p },
                5 => Message::ForwardedAck { origin: b.clone(), probe_number: p },
                6 => Message::Announce,
                7 => Message::Feed,
                8 => Message::Gossip,
                9 => Message::Broadcast,
                _ => Message::TurnUndead,
            };
            let h = Header { src: a.clone(), src_incarnation: inc, dst: b.clone(), message };
            let mut buf = Vec::new();
            codec.encode_header(&h, &mut buf).unwrap();
            prop_assert_eq!(codec.decode_header(&buf[..]).unwrap(), h);
            let mem = Member::new(b.clone(), inc, State::Suspect);
            let mut buf = Vec::new();
            codec.encode_member(&mem, &mut buf).unwrap();
            prop_assert_eq!(codec.decode_member(&buf[..]).unwrap(), mem);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut m = Membership::new(meta("a"), &MembershipConfig::default());
            m.handle_datagram(&bytes, Instant::now());
        }
    }

    #[test]
    fn mismatched_cidr_is_refused_and_named() {
        let ours = meta("a");
        let mut theirs = meta("b");
        theirs.cluster_cidr = "10.99.0.0/16".parse().unwrap();
        let mut codec = MetaCodec::new(ours);
        let h = Header {
            src: theirs.clone(),
            src_incarnation: 0,
            dst: meta("a"),
            message: Message::Announce,
        };
        let mut buf = Vec::new();
        codec.encode_header(&h, &mut buf).unwrap();
        assert_eq!(codec.decode_header(&buf[..]), Err(CodecError::Mismatch));
        let (m, reason) = codec.last_mismatch.lock().unwrap().take().unwrap();
        assert_eq!(m.name, "b");
        assert_eq!(reason, "cluster CIDR 10.244.0.0/16 here, 10.99.0.0/16 on b");
    }
}
