//! Gossip datagram framing and the lease protocol messages, with a hand-written
//! versioned codec.
//!
//! Every datagram on the gossip port starts with the same header:
//!
//! ```text
//!  0       4       5       6       7
//! +-------+-------+-------+-------+----------------+----------------------+
//! | magic | ver   | kind  | alen  | auth (alen B)  | body                 |
//! | OVLD  | V     | 1|2   | 0|44  | cluster key    | membership or lease  |
//! +-------+-------+-------+-------+----------------+----------------------+
//! ```
//!
//! `kind` 1 carries a foca (SWIM) payload encoded by
//! [`meta::MetaCodec`](super::meta::MetaCodec); `kind` 2 carries a
//! [`LeaseDatagram`]. `alen` is 0 without a cluster key and 44 with one: the auth field
//! ([`auth`](super::auth)) holds the key id, timestamp, session, counter and tag, and
//! is checked before the body is parsed. `ver` is the gossip protocol version of the
//! sender: a node accepts its own version and the adjacent ones
//! ([`MIN_ACCEPTED`]..=[`MAX_ACCEPTED`]), so version N and N+1 run in one cluster
//! during a rolling upgrade (docs/kubernetes.md, "Upgrades"). Parsing never panics: a datagram that is
//! too short, too long, or inconsistent returns a [`WireError`], and the caller counts
//! and drops it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};

use super::founding::{Accepted, Ballot, Founder, FoundingMsg, InitialSet};

/// First four bytes of every overlayd gossip datagram.
pub(crate) const MAGIC: [u8; 4] = *b"OVLD";
/// The gossip protocol version this build speaks and emits.
///
/// The contract between releases: version N+1 changes the wire only in ways that N
/// already parses or drops and counts, so N and N+1 run in one cluster; a change N
/// could misread skips a number, so both sides refuse each other by name instead.
pub(crate) const BUILD_VERSION: u8 = 2;

/// The first gossip protocol version with the direct-routing messages
/// ([`LeaseMsg::DirectOffer`], [`LeaseMsg::Probe`], [`LeaseMsg::ProbeAck`]): they are
/// sent only to peers heard speaking it or later (`docs/direct-routing.md`).
pub(crate) const DIRECT_VERSION: u8 = 2;

/// The version this process speaks: [`BUILD_VERSION`], unless the build has the
/// `test-wire-version` feature and `OVERLAYD_TEST_WIRE_VERSION` holds 1 to 254. The
/// upgrade and version-skew tests run images of versions 2 and 9 so, from one build;
/// without the feature the variable is not read.
pub(crate) fn version() -> u8 {
    static VERSION: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    if !cfg!(feature = "test-wire-version") {
        return BUILD_VERSION;
    }
    *VERSION.get_or_init(|| {
        std::env::var(TEST_VERSION_VAR)
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
            .filter(|v| (1..255).contains(v))
            .unwrap_or(BUILD_VERSION)
    })
}

/// The variable a `test-wire-version` build reads its version from.
pub(crate) const TEST_VERSION_VAR: &str = "OVERLAYD_TEST_WIRE_VERSION";

/// The oldest peer version this process accepts: the previous one.
pub(crate) fn min_accepted() -> u8 {
    version().saturating_sub(1).max(1)
}

/// The newest peer version this process accepts: the next one.
pub(crate) fn max_accepted() -> u8 {
    version().saturating_add(1)
}

/// Whether a peer speaking gossip protocol `version` can be talked to.
pub(crate) fn accepts(version: u8) -> bool {
    (min_accepted()..=max_accepted()).contains(&version)
}
/// Datagrams longer than this are dropped before parsing.
pub const MAX_DATAGRAM: usize = 16 * 1024;
/// Length of the fixed part of the header (magic, version, kind, auth length).
pub const HEADER_LEN: usize = 7;

/// What went wrong parsing a datagram. Small and `Copy`, like smoltcp's `wire::Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram ended before a field did.
    #[error("datagram truncated")]
    UnexpectedEnd,
    /// The datagram does not start with [`MAGIC`].
    #[error("bad magic number")]
    BadMagic,
    /// The version byte is outside [`min_accepted`]..=[`max_accepted`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The kind byte or a message tag is unknown.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The datagram is longer than [`MAX_DATAGRAM`].
    #[error("datagram longer than {MAX_DATAGRAM} bytes")]
    Oversized,
    /// A field holds a value that cannot be valid (bad UTF-8, trailing bytes, ...).
    #[error("malformed field")]
    Malformed,
}

/// The payload type of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A foca membership payload.
    Membership = 1,
    /// A [`LeaseDatagram`].
    Lease = 2,
}

/// Splits a datagram into its kind and body, checking magic, version and length.
pub fn parse_frame(buf: &[u8]) -> Result<(Kind, &[u8]), WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized);
    }
    if buf.len() < HEADER_LEN {
        return Err(WireError::UnexpectedEnd);
    }
    if buf[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if !accepts(buf[4]) {
        return Err(WireError::BadVersion(buf[4]));
    }
    let kind = match buf[5] {
        1 => Kind::Membership,
        2 => Kind::Lease,
        k => return Err(WireError::UnknownKind(k)),
    };
    let alen = buf[6] as usize;
    let body = buf
        .get(HEADER_LEN + alen..)
        .ok_or(WireError::UnexpectedEnd)?;
    Ok((kind, body))
}

/// Writes the frame header for `kind` (with an empty auth field, which
/// [`Authenticator::seal`](super::auth::Authenticator::seal) fills in) into `out`.
pub fn emit_frame_header(kind: Kind, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.push(version());
    out.push(kind as u8);
    out.push(0);
}

/// A framed gossip datagram to send (the control plane's output; the dataplane's is
/// [`crate::dataplane::Transmit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Destination gossip address.
    pub to: SocketAddr,
    /// The datagram, frame header included.
    pub data: Vec<u8>,
}

/// A set of witnesses a node has asked to watch its lease, numbered by the node.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct WitnessConfig {
    /// Increases by one each time the node changes its witnesses.
    pub(crate) id: u64,
    /// Witness names; the first one is the beneficiary of a reclaim.
    pub(crate) members: Vec<String>,
}

/// The witness sets of an owner that are not yet retired (at most two: the current
/// one and the one it replaces), numbered so that a witness keeps the newest.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct View {
    /// Increases on every change to `configs`.
    pub(crate) version: u64,
    /// Oldest first; the first member of the first set is the reclaim beneficiary.
    pub(crate) configs: Vec<WitnessConfig>,
}

impl View {
    /// The node that takes the space over when this view's witnesses attest.
    pub(crate) fn beneficiary(&self) -> Option<&str> {
        self.configs
            .iter()
            .find_map(|c| c.members.first())
            .map(String::as_str)
    }

    /// Whether `name` belongs to one of the sets.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.configs
            .iter()
            .any(|c| c.members.iter().any(|m| m == name))
    }
}

/// One owned subnet: its index in the cluster CIDR and its ownership version.
pub(crate) type Owned = (u32, u64);

/// A lease protocol message (see `docs/leases.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseMsg {
    /// Owner → witness: "I am alive, this is what I own, these are my witnesses".
    Beat {
        /// The owner's lease epoch (bumped when it learns it was reclaimed).
        epoch: u64,
        /// Sequence number, unique per owner epoch and boot.
        seq: u64,
        /// The owner's witness sets.
        view: View,
        /// Version of the owner's ownership set.
        state_version: u64,
        /// Every subnet the owner owns (its lease and free space).
        owned: Vec<Owned>,
    },
    /// Witness → owner: answer to a beat.
    BeatAck {
        /// Echo of the beat's epoch.
        epoch: u64,
        /// Echo of the beat's sequence number.
        seq: u64,
        /// Set when the witness has declared this epoch dead: the owner must start over.
        reclaimed: bool,
    },
    /// Witness → beneficiary: "`about` has been silent longer than reclaim-after".
    Attest {
        /// The silent owner.
        about: String,
        /// The owner's epoch that is declared dead.
        epoch: u64,
        /// The owner's witness sets as this witness last saw them.
        view: View,
        /// Latest ownership version of `about` this witness saw.
        state_version: u64,
        /// Ownership set at that version.
        owned: Vec<Owned>,
    },
    /// Beneficiary → witness: the attestation was received.
    AttestAck {
        /// The silent owner.
        about: String,
        /// Its dead epoch.
        epoch: u64,
    },
    /// Node without a lease → owner of free space: "please give me a subnet".
    Request,
    /// Owner → new owner: ownership transfer, already acknowledged by the giver's witnesses.
    Grant {
        /// The transferred subnets, with their new versions.
        subnets: Vec<Owned>,
    },
    /// New owner → giver: the grant arrived.
    GrantAck {
        /// The subnets received.
        subnets: Vec<Owned>,
    },
    /// Reply to a node whose cluster parameters differ from ours.
    Refuse {
        /// What differs, from the refusing node's point of view.
        reason: String,
    },
    /// Founding a new cluster by agreement (`docs/founding.md`).
    Founding(FoundingMsg),
    /// Member → member, every few seconds while it lasts: "I accept pod traffic
    /// routed to me directly, without a tunnel; it comes from this MAC address when I
    /// send it" (`docs/direct-routing.md`). An offer not renewed expires.
    DirectOffer {
        /// The sender's underlay interface MAC address: the source of its direct
        /// frames, which the receiver's anti-spoofing filter matches.
        mac: [u8; 6],
    },
    /// Sent on the path pod traffic would take directly (from the sender's gateway
    /// address to the receiver's): the receiver answers with a [`LeaseMsg::ProbeAck`]
    /// on the gossip path.
    Probe {
        /// Chosen by the sender, echoed in the answer.
        nonce: u64,
    },
    /// The answer to a [`LeaseMsg::Probe`]: the direct path carried it.
    ProbeAck {
        /// The probe's nonce.
        nonce: u64,
    },
}

/// The body of a [`Kind::Lease`] datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseDatagram {
    /// Sender's node name.
    pub from: String,
    /// Fingerprint of the sender's cluster CIDR, subnet length and VNI.
    pub cluster: u64,
    /// The message.
    pub msg: LeaseMsg,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&b[..n]);
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, WireError> {
    if buf.remaining() < 1 {
        return Err(WireError::UnexpectedEnd);
    }
    Ok(buf.get_u8())
}
fn get_u16(buf: &mut &[u8]) -> Result<u16, WireError> {
    if buf.remaining() < 2 {
        return Err(WireError::UnexpectedEnd);
    }
    Ok(buf.get_u16())
}
fn get_u32(buf: &mut &[u8]) -> Result<u32, WireError> {
    if buf.remaining() < 4 {
        return Err(WireError::UnexpectedEnd);
    }
    Ok(buf.get_u32())
}
fn get_u64(buf: &mut &[u8]) -> Result<u64, WireError> {
    if buf.remaining() < 8 {
        return Err(WireError::UnexpectedEnd);
    }
    Ok(buf.get_u64())
}
fn get_mac(buf: &mut &[u8]) -> Result<[u8; 6], WireError> {
    let mut mac = [0u8; 6];
    if buf.remaining() < mac.len() {
        return Err(WireError::UnexpectedEnd);
    }
    buf.copy_to_slice(&mut mac);
    Ok(mac)
}
pub(crate) fn get_str(buf: &mut &[u8]) -> Result<String, WireError> {
    let n = get_u8(buf)? as usize;
    if buf.remaining() < n {
        return Err(WireError::UnexpectedEnd);
    }
    let s = std::str::from_utf8(&buf[..n]).map_err(|_| WireError::Malformed)?;
    let s = s.to_owned();
    buf.advance(n);
    Ok(s)
}

/// Owned sets are written as runs of consecutive indices sharing a version, so a
/// founder's whole genesis space fits in a few bytes.
fn put_owned(out: &mut Vec<u8>, owned: &[Owned]) {
    let mut runs: Vec<(u32, u32, u64)> = Vec::new();
    for &(idx, ver) in owned {
        match runs.last_mut() {
            Some((start, len, v)) if *v == ver && start.checked_add(*len) == Some(idx) => *len += 1,
            _ => runs.push((idx, 1, ver)),
        }
    }
    out.put_u16(runs.len().min(u16::MAX as usize) as u16);
    for (start, len, ver) in runs.into_iter().take(u16::MAX as usize) {
        out.put_u32(start);
        out.put_u32(len);
        out.put_u64(ver);
    }
}

/// Upper bound on subnets in one owned set (a /8 split into /24s).
const MAX_OWNED: u64 = 1 << 16;

fn get_owned(buf: &mut &[u8]) -> Result<Vec<Owned>, WireError> {
    let runs = get_u16(buf)? as usize;
    if buf.remaining() < runs * 16 {
        return Err(WireError::UnexpectedEnd);
    }
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut next_min = 0u64;
    for _ in 0..runs {
        let start = get_u32(buf)?;
        let len = get_u32(buf)?;
        let ver = get_u64(buf)?;
        total += u64::from(len);
        // Runs are sorted, non-empty, non-overlapping and bounded.
        if len == 0 || u64::from(start) < next_min || total > MAX_OWNED {
            return Err(WireError::Malformed);
        }
        let end = u64::from(start) + u64::from(len);
        if end > u64::from(u32::MAX) + 1 {
            return Err(WireError::Malformed);
        }
        next_min = end;
        out.extend((start..=(end - 1) as u32).map(|i| (i, ver)));
    }
    Ok(out)
}

fn put_config(out: &mut Vec<u8>, c: &WitnessConfig) {
    out.put_u64(c.id);
    let n = c.members.len().min(255);
    out.put_u8(n as u8);
    for m in &c.members[..n] {
        put_str(out, m);
    }
}

fn get_config(buf: &mut &[u8]) -> Result<WitnessConfig, WireError> {
    let id = get_u64(buf)?;
    let n = get_u8(buf)?;
    let members = (0..n).map(|_| get_str(buf)).collect::<Result<_, _>>()?;
    Ok(WitnessConfig { id, members })
}

fn put_view(out: &mut Vec<u8>, v: &View) {
    out.put_u64(v.version);
    let n = v.configs.len().min(255);
    out.put_u8(n as u8);
    for c in &v.configs[..n] {
        put_config(out, c);
    }
}

fn get_view(buf: &mut &[u8]) -> Result<View, WireError> {
    let version = get_u64(buf)?;
    let n = get_u8(buf)?;
    let configs = (0..n).map(|_| get_config(buf)).collect::<Result<_, _>>()?;
    Ok(View { version, configs })
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(a.port());
}

fn get_addr(buf: &mut &[u8]) -> Result<SocketAddr, WireError> {
    let ip = match get_u8(buf)? {
        4 => {
            let mut o = [0u8; 4];
            if buf.remaining() < 4 {
                return Err(WireError::UnexpectedEnd);
            }
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            let mut o = [0u8; 16];
            if buf.remaining() < 16 {
                return Err(WireError::UnexpectedEnd);
            }
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(WireError::Malformed),
    };
    Ok(SocketAddr::new(ip, get_u16(buf)?))
}

/// Upper bound on the addresses of one initial set (`--peers`).
const MAX_INITIAL: usize = 1024;

fn put_initial(out: &mut Vec<u8>, i: &InitialSet) {
    match i {
        InitialSet::Peers(set) => {
            out.put_u8(1);
            let n = set.len().min(MAX_INITIAL);
            out.put_u16(n as u16);
            for a in set.iter().take(n) {
                put_addr(out, a);
            }
        }
        InitialSet::Expect(n) => {
            out.put_u8(2);
            out.put_u32(*n);
        }
    }
}

fn get_initial(buf: &mut &[u8]) -> Result<InitialSet, WireError> {
    match get_u8(buf)? {
        1 => {
            let n = get_u16(buf)? as usize;
            if n > MAX_INITIAL {
                return Err(WireError::Malformed);
            }
            let mut set = BTreeSet::new();
            for _ in 0..n {
                // A repeated address would make the set smaller than the count.
                if !set.insert(get_addr(buf)?) {
                    return Err(WireError::Malformed);
                }
            }
            Ok(InitialSet::Peers(set))
        }
        2 => Ok(InitialSet::Expect(get_u32(buf)?)),
        _ => Err(WireError::Malformed),
    }
}

fn put_ballot(out: &mut Vec<u8>, b: &Ballot) {
    out.put_u64(b.round);
    put_str(out, &b.proposer);
}

fn get_ballot(buf: &mut &[u8]) -> Result<Ballot, WireError> {
    Ok(Ballot {
        round: get_u64(buf)?,
        proposer: get_str(buf)?,
    })
}

/// Writes a [`Founder`] (also used by the gossip identity codec).
pub(crate) fn put_founder(out: &mut impl BufMut, f: &Founder) {
    let b = f.name.as_bytes();
    let n = b.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&b[..n]);
    out.put_u64(f.cluster_id);
}

/// Reads a [`Founder`].
pub(crate) fn get_founder(buf: &mut &[u8]) -> Result<Founder, WireError> {
    Ok(Founder {
        name: get_str(buf)?,
        cluster_id: get_u64(buf)?,
    })
}

fn put_founding(out: &mut Vec<u8>, m: &FoundingMsg) {
    match m {
        FoundingMsg::Prepare { ballot } => {
            out.put_u8(9);
            put_ballot(out, ballot);
        }
        FoundingMsg::Promise {
            ballot,
            accepted,
            addr,
            initial,
        } => {
            out.put_u8(10);
            put_ballot(out, ballot);
            match accepted {
                Some(a) => {
                    out.put_u8(1);
                    put_ballot(out, &a.ballot);
                    put_founder(out, &a.founder);
                }
                None => out.put_u8(0),
            }
            put_addr(out, addr);
            put_initial(out, initial);
        }
        FoundingMsg::Accept { ballot, founder } => {
            out.put_u8(11);
            put_ballot(out, ballot);
            put_founder(out, founder);
        }
        FoundingMsg::Accepted {
            ballot,
            addr,
            initial,
        } => {
            out.put_u8(12);
            put_ballot(out, ballot);
            put_addr(out, addr);
            put_initial(out, initial);
        }
        FoundingMsg::Nack { ballot, promised } => {
            out.put_u8(13);
            put_ballot(out, ballot);
            put_ballot(out, promised);
        }
        FoundingMsg::Decided { founder } => {
            out.put_u8(14);
            put_founder(out, founder);
        }
    }
}

fn get_founding(tag: u8, b: &mut &[u8]) -> Result<FoundingMsg, WireError> {
    Ok(match tag {
        9 => FoundingMsg::Prepare {
            ballot: get_ballot(b)?,
        },
        10 => FoundingMsg::Promise {
            ballot: get_ballot(b)?,
            accepted: match get_u8(b)? {
                0 => None,
                1 => Some(Accepted {
                    ballot: get_ballot(b)?,
                    founder: get_founder(b)?,
                }),
                _ => return Err(WireError::Malformed),
            },
            addr: get_addr(b)?,
            initial: get_initial(b)?,
        },
        11 => FoundingMsg::Accept {
            ballot: get_ballot(b)?,
            founder: get_founder(b)?,
        },
        12 => FoundingMsg::Accepted {
            ballot: get_ballot(b)?,
            addr: get_addr(b)?,
            initial: get_initial(b)?,
        },
        13 => FoundingMsg::Nack {
            ballot: get_ballot(b)?,
            promised: get_ballot(b)?,
        },
        14 => FoundingMsg::Decided {
            founder: get_founder(b)?,
        },
        t => return Err(WireError::UnknownKind(t)),
    })
}

impl LeaseDatagram {
    /// Appends the framed datagram (header and body) to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_frame_header(Kind::Lease, out);
        put_str(out, &self.from);
        out.put_u64(self.cluster);
        match &self.msg {
            LeaseMsg::Beat {
                epoch,
                seq,
                view,
                state_version,
                owned,
            } => {
                out.put_u8(1);
                out.put_u64(*epoch);
                out.put_u64(*seq);
                put_view(out, view);
                out.put_u64(*state_version);
                put_owned(out, owned);
            }
            LeaseMsg::BeatAck {
                epoch,
                seq,
                reclaimed,
            } => {
                out.put_u8(2);
                out.put_u64(*epoch);
                out.put_u64(*seq);
                out.put_u8(u8::from(*reclaimed));
            }
            LeaseMsg::Attest {
                about,
                epoch,
                view,
                state_version,
                owned,
            } => {
                out.put_u8(3);
                put_str(out, about);
                out.put_u64(*epoch);
                put_view(out, view);
                out.put_u64(*state_version);
                put_owned(out, owned);
            }
            LeaseMsg::AttestAck { about, epoch } => {
                out.put_u8(4);
                put_str(out, about);
                out.put_u64(*epoch);
            }
            LeaseMsg::Request => out.put_u8(5),
            LeaseMsg::Grant { subnets } => {
                out.put_u8(6);
                put_owned(out, subnets);
            }
            LeaseMsg::GrantAck { subnets } => {
                out.put_u8(7);
                put_owned(out, subnets);
            }
            LeaseMsg::Refuse { reason } => {
                out.put_u8(8);
                put_str(out, reason);
            }
            LeaseMsg::Founding(m) => put_founding(out, m),
            LeaseMsg::DirectOffer { mac } => {
                out.put_u8(15);
                out.put_slice(mac);
            }
            LeaseMsg::Probe { nonce } => {
                out.put_u8(16);
                out.put_u64(*nonce);
            }
            LeaseMsg::ProbeAck { nonce } => {
                out.put_u8(17);
                out.put_u64(*nonce);
            }
        }
    }

    /// Parses the body of a [`Kind::Lease`] datagram (after [`parse_frame`]).
    pub fn parse(mut buf: &[u8]) -> Result<Self, WireError> {
        let b = &mut buf;
        let from = get_str(b)?;
        let cluster = get_u64(b)?;
        let msg = match get_u8(b)? {
            1 => LeaseMsg::Beat {
                epoch: get_u64(b)?,
                seq: get_u64(b)?,
                view: get_view(b)?,
                state_version: get_u64(b)?,
                owned: get_owned(b)?,
            },
            2 => LeaseMsg::BeatAck {
                epoch: get_u64(b)?,
                seq: get_u64(b)?,
                reclaimed: match get_u8(b)? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed),
                },
            },
            3 => LeaseMsg::Attest {
                about: get_str(b)?,
                epoch: get_u64(b)?,
                view: get_view(b)?,
                state_version: get_u64(b)?,
                owned: get_owned(b)?,
            },
            4 => LeaseMsg::AttestAck {
                about: get_str(b)?,
                epoch: get_u64(b)?,
            },
            5 => LeaseMsg::Request,
            6 => LeaseMsg::Grant {
                subnets: get_owned(b)?,
            },
            7 => LeaseMsg::GrantAck {
                subnets: get_owned(b)?,
            },
            8 => LeaseMsg::Refuse {
                reason: get_str(b)?,
            },
            t @ 9..=14 => LeaseMsg::Founding(get_founding(t, b)?),
            15 => LeaseMsg::DirectOffer { mac: get_mac(b)? },
            16 => LeaseMsg::Probe { nonce: get_u64(b)? },
            17 => LeaseMsg::ProbeAck { nonce: get_u64(b)? },
            t => return Err(WireError::UnknownKind(t)),
        };
        if b.has_remaining() {
            return Err(WireError::Malformed);
        }
        Ok(LeaseDatagram { from, cluster, msg })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adjacent_versions_are_accepted_and_others_refused_by_number() {
        let frame = |v: u8| {
            let mut f = Vec::new();
            emit_frame_header(Kind::Lease, &mut f);
            f[4] = v;
            f
        };
        let mut ours = Vec::new();
        emit_frame_header(Kind::Lease, &mut ours);
        assert_eq!(ours[4], version(), "we emit our own version");
        assert_eq!(max_accepted(), version() + 1, "one newer version");
        assert!(
            version() == 1 || min_accepted() == version() - 1,
            "one older"
        );
        for v in [version(), min_accepted(), max_accepted()] {
            assert_eq!(parse_frame(&frame(v)), Ok((Kind::Lease, &[][..])), "v{v}");
        }
        for v in [0, max_accepted() + 1, u8::MAX] {
            if !(min_accepted()..=max_accepted()).contains(&v) {
                assert_eq!(parse_frame(&frame(v)), Err(WireError::BadVersion(v)));
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9.-]{0,40}"
    }

    fn owned() -> impl Strategy<Value = Vec<Owned>> {
        proptest::collection::btree_map(0u32..5000, 0u64..4, 0..40)
            .prop_map(|m| m.into_iter().collect())
    }

    fn config() -> impl Strategy<Value = WitnessConfig> {
        (any::<u64>(), proptest::collection::vec(name(), 0..5))
            .prop_map(|(id, members)| WitnessConfig { id, members })
    }

    fn view() -> impl Strategy<Value = View> {
        (any::<u64>(), proptest::collection::vec(config(), 0..3))
            .prop_map(|(version, configs)| View { version, configs })
    }

    fn sock() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
    }

    fn initial() -> impl Strategy<Value = InitialSet> {
        prop_oneof![
            proptest::collection::btree_set(sock(), 0..6).prop_map(InitialSet::Peers),
            any::<u32>().prop_map(InitialSet::Expect),
        ]
    }

    fn ballot() -> impl Strategy<Value = Ballot> {
        (any::<u64>(), name()).prop_map(|(round, proposer)| Ballot { round, proposer })
    }

    fn founder() -> impl Strategy<Value = Founder> {
        (name(), any::<u64>()).prop_map(|(name, cluster_id)| Founder { name, cluster_id })
    }

    fn founding() -> impl Strategy<Value = FoundingMsg> {
        let accepted = proptest::option::of(
            (ballot(), founder()).prop_map(|(ballot, founder)| Accepted { ballot, founder }),
        );
        prop_oneof![
            ballot().prop_map(|ballot| FoundingMsg::Prepare { ballot }),
            (ballot(), accepted, sock(), initial()).prop_map(
                |(ballot, accepted, addr, initial)| FoundingMsg::Promise {
                    ballot,
                    accepted,
                    addr,
                    initial
                }
            ),
            (ballot(), founder())
                .prop_map(|(ballot, founder)| FoundingMsg::Accept { ballot, founder }),
            (ballot(), sock(), initial()).prop_map(|(ballot, addr, initial)| {
                FoundingMsg::Accepted {
                    ballot,
                    addr,
                    initial,
                }
            }),
            (ballot(), ballot())
                .prop_map(|(ballot, promised)| FoundingMsg::Nack { ballot, promised }),
            founder().prop_map(|founder| FoundingMsg::Decided { founder }),
        ]
    }

    fn msg() -> impl Strategy<Value = LeaseMsg> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), view(), any::<u64>(), owned()).prop_map(
                |(epoch, seq, view, state_version, owned)| LeaseMsg::Beat {
                    epoch,
                    seq,
                    view,
                    state_version,
                    owned
                }
            ),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(epoch, seq, reclaimed)| {
                LeaseMsg::BeatAck {
                    epoch,
                    seq,
                    reclaimed,
                }
            }),
            (name(), any::<u64>(), view(), any::<u64>(), owned()).prop_map(
                |(about, epoch, view, state_version, owned)| LeaseMsg::Attest {
                    about,
                    epoch,
                    view,
                    state_version,
                    owned
                }
            ),
            (name(), any::<u64>()).prop_map(|(about, epoch)| LeaseMsg::AttestAck { about, epoch }),
            Just(LeaseMsg::Request),
            owned().prop_map(|subnets| LeaseMsg::Grant { subnets }),
            owned().prop_map(|subnets| LeaseMsg::GrantAck { subnets }),
            name().prop_map(|reason| LeaseMsg::Refuse { reason }),
            founding().prop_map(LeaseMsg::Founding),
            any::<[u8; 6]>().prop_map(|mac| LeaseMsg::DirectOffer { mac }),
            any::<u64>().prop_map(|nonce| LeaseMsg::Probe { nonce }),
            any::<u64>().prop_map(|nonce| LeaseMsg::ProbeAck { nonce }),
        ]
    }

    proptest! {
        #[test]
        fn lease_datagram_round_trip(from in name(), cluster in any::<u64>(), msg in msg()) {
            let d = LeaseDatagram { from, cluster, msg };
            let mut buf = Vec::new();
            d.emit(&mut buf);
            let (kind, body) = parse_frame(&buf).unwrap();
            prop_assert_eq!(kind, Kind::Lease);
            prop_assert_eq!(LeaseDatagram::parse(body).unwrap(), d);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((_, body)) = parse_frame(&bytes) {
                let _ = LeaseDatagram::parse(body);
            }
            let _ = LeaseDatagram::parse(&bytes);
        }
    }

    #[test]
    fn decided_literal_bytes() {
        let d = LeaseDatagram {
            from: "n1".into(),
            cluster: 7,
            msg: LeaseMsg::Founding(FoundingMsg::Decided {
                founder: Founder {
                    name: "n2".into(),
                    cluster_id: 0x0102,
                },
            }),
        };
        let mut buf = Vec::new();
        d.emit(&mut buf);
        assert_eq!(
            buf,
            [
                b'O', b'V', b'L', b'D', 2, 2, 0, 2, b'n', b'1', 0, 0, 0, 0, 0, 0, 0, 7, 14, 2,
                b'n', b'2', 0, 0, 0, 0, 0, 0, 1, 2
            ]
        );
        let (_, body) = parse_frame(&buf).unwrap();
        assert_eq!(LeaseDatagram::parse(body).unwrap(), d);
    }

    #[test]
    fn request_literal_bytes() {
        let d = LeaseDatagram {
            from: "n1".into(),
            cluster: 7,
            msg: LeaseMsg::Request,
        };
        let mut buf = Vec::new();
        d.emit(&mut buf);
        assert_eq!(
            buf,
            [b'O', b'V', b'L', b'D', 2, 2, 0, 2, b'n', b'1', 0, 0, 0, 0, 0, 0, 0, 7, 5]
        );
    }

    #[test]
    fn direct_routing_literal_bytes() {
        let head = [
            b'O', b'V', b'L', b'D', 2, 2, 0, 2, b'n', b'1', 0, 0, 0, 0, 0, 0, 0, 7,
        ];
        let cases = [
            (
                LeaseMsg::DirectOffer {
                    mac: [2, 0xaa, 0, 0, 0, 9],
                },
                vec![15, 2, 0xaa, 0, 0, 0, 9],
            ),
            (
                LeaseMsg::Probe { nonce: 0x0102 },
                vec![16, 0, 0, 0, 0, 0, 0, 1, 2],
            ),
            (
                LeaseMsg::ProbeAck { nonce: 0x0103 },
                vec![17, 0, 0, 0, 0, 0, 0, 1, 3],
            ),
        ];
        for (msg, tail) in cases {
            let d = LeaseDatagram {
                from: "n1".into(),
                cluster: 7,
                msg,
            };
            let mut buf = Vec::new();
            d.emit(&mut buf);
            assert_eq!(buf[..head.len()], head);
            assert_eq!(buf[head.len()..], tail[..], "{:?}", d.msg);
            let (_, body) = parse_frame(&buf).unwrap();
            assert_eq!(LeaseDatagram::parse(body).unwrap(), d);
            // Cut short or with a byte too many, it is refused, not misread.
            assert!(LeaseDatagram::parse(&body[..body.len() - 1]).is_err());
            let mut long = body.to_vec();
            long.push(0);
            assert_eq!(LeaseDatagram::parse(&long), Err(WireError::Malformed));
        }
    }

    #[test]
    fn frame_errors() {
        assert_eq!(parse_frame(b"OVL"), Err(WireError::UnexpectedEnd));
        assert_eq!(parse_frame(b"XXXX\x01\x01\x00"), Err(WireError::BadMagic));
        assert_eq!(
            parse_frame(b"OVLD\x09\x01\x00"),
            Err(WireError::BadVersion(9))
        );
        assert_eq!(
            parse_frame(b"OVLD\x01\x09\x00"),
            Err(WireError::UnknownKind(9))
        );
        assert_eq!(
            parse_frame(b"OVLD\x01\x01\x05ab"),
            Err(WireError::UnexpectedEnd)
        );
        assert_eq!(
            parse_frame(&vec![0u8; MAX_DATAGRAM + 1]),
            Err(WireError::Oversized)
        );
    }

    #[test]
    fn owned_runs_are_compact() {
        let owned: Vec<Owned> = (0..256).map(|i| (i, 1)).collect();
        let mut out = Vec::new();
        put_owned(&mut out, &owned);
        assert_eq!(out.len(), 2 + 16);
        assert_eq!(get_owned(&mut &out[..]).unwrap(), owned);
    }
}
