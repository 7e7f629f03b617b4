//! The WireGuard peers of the encrypted dataplane: one boringtun [`Tunn`] per peer
//! of the forwarding table that has a public key, kept across table rebuilds, and
//! the lookups the packet path needs (by FIB index outbound; by session index, by
//! public key and by underlay address inbound).
//!
//! [`TunnelTable`] owns the tunnels and builds an immutable [`Tunnels`] snapshot for
//! each forwarding table; the workers read the snapshot with no lock and lock one
//! peer's tunnel per run of packets to or from it. [`TunnelTable::tick`] runs the
//! WireGuard timers (rekeying, handshake retries, keepalives) and records each
//! peer's session state in its counters.
//!
//! No sockets here: what must be sent comes back to the caller. The protocol,
//! its crypto and its clock are boringtun's (Noise IK, ChaCha20-Poly1305, replay
//! window, cookies), so its timers read the monotonic clock themselves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use rustc_hash::FxHashMap;

use super::key::{KeyPair, PublicBytes};
use crate::dataplane::fib::Fib;
use crate::dataplane::stats::{DropReason, PeerStats, Stats, WgSession};

/// Handshake initiations per second the node takes before it answers them with
/// cookies (WireGuard's DoS defence, §5.4.7 of the paper). Each is counted once,
/// before its peer is looked up: the tunnels check MAC1 again with a limiter that
/// never asks for a cookie (see [`tunnel_limiter`]).
pub(crate) const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// How many packets boringtun holds for a tunnel while its handshake is under way
/// (its `MAX_QUEUE_DEPTH`); it drops any more without a word.
pub(crate) const HANDSHAKE_QUEUE: u32 = 256;

/// The limiter the tunnels of key `public` verify initiations with: MAC1 only, as
/// the node-wide limiter already counted the initiation against
/// [`HANDSHAKE_RATE_LIMIT`] (with a cap of its own, a peer's initiation would count
/// twice and peers would get cookies at half the rate).
fn tunnel_limiter(public: &PublicKey) -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(public, u64::MAX))
}

/// The packets boringtun holds for one tunnel until its handshake completes, as
/// counted here: boringtun neither reports how many nor which it dropped. Changed
/// only with the tunnel locked (atomics only so that [`WgPeer`] is `Sync`).
#[derive(Debug, Default)]
pub(crate) struct HandshakeQueue {
    packets: AtomicU32,
    bytes: AtomicU64,
}

impl HandshakeQueue {
    /// Notes an inner packet of `len` bytes handed to a tunnel with no session:
    /// whether boringtun kept it (false: [`HANDSHAKE_QUEUE`] were waiting already).
    pub(crate) fn push(&self, len: usize) -> bool {
        let n = self.packets.load(Relaxed);
        if n >= HANDSHAKE_QUEUE {
            return false;
        }
        self.packets.store(n + 1, Relaxed);
        self.bytes.fetch_add(len as u64, Relaxed);
        true
    }

    /// Packets waiting.
    pub(crate) fn len(&self) -> u32 {
        self.packets.load(Relaxed)
    }

    /// Whether none are waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes that `sent` waiting packets went out (the oldest first): their packets
    /// and inner bytes. The bytes are exact when the queue empties, else each
    /// packet's share.
    pub(crate) fn sent(&self, sent: u32) -> (u64, u64) {
        let n = self.packets.load(Relaxed);
        let bytes = self.bytes.load(Relaxed);
        let sent = sent.min(n);
        if sent == 0 {
            return (0, 0);
        }
        let share = if sent == n {
            bytes
        } else {
            bytes * u64::from(sent) / u64::from(n)
        };
        self.packets.store(n - sent, Relaxed);
        self.bytes.store(bytes - share, Relaxed);
        (u64::from(sent), share)
    }

    /// Notes that boringtun emptied the queue (its handshake gave up): the packets
    /// and bytes lost.
    pub(crate) fn clear(&self) -> (u64, u64) {
        (
            u64::from(self.packets.swap(0, Relaxed)),
            self.bytes.swap(0, Relaxed),
        )
    }
}

/// How long a session is used before it must be renewed (WireGuard's
/// `Reject-After-Time`): older, it is no session.
const REJECT_AFTER: Duration = Duration::from_secs(180);

/// One WireGuard peer: its key, where it is reached and its tunnel.
pub struct WgPeer {
    /// Its name in the forwarding table.
    pub(crate) name: String,
    /// Where its datagrams go: underlay address and WireGuard port.
    pub(crate) endpoint: SocketAddr,
    /// Our index for its sessions (boringtun puts it in the upper 24 bits of the
    /// receiver index of every message addressed to us).
    pub(crate) index: u32,
    /// Its counters (shared with the forwarding table's peer).
    pub(crate) stats: Arc<PeerStats>,
    /// What its tunnel holds while a handshake is under way.
    pub(crate) queue: HandshakeQueue,
    /// The generation of our key pair its tunnel uses (see [`TunnelTable::rotate`]).
    generation: AtomicU64,
    tunn: Mutex<Tunn>,
}

impl std::fmt::Debug for WgPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgPeer")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl WgPeer {
    /// Locks the peer's tunnel. A worker holds it for one run of packets; a panic
    /// while it was held leaves a tunnel still usable, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the tunnel (held locked by the caller) to `next`, generation
    /// `generation`, unless it is there already. Its sessions end with the old key.
    pub(crate) fn adopt(&self, tunn: &mut Tunn, next: &NextKey, generation: u64) {
        if self.generation.swap(generation, Relaxed) != generation {
            tunn.set_static_private(
                next.pair.secret.clone(),
                next.pair.public,
                Some(next.tunnel_limiter.clone()),
            );
        }
    }
}

/// The key pair a rotation moves to, while peers still use the old one.
pub(crate) struct NextKey {
    /// The new pair.
    pub(crate) pair: Arc<KeyPair>,
    /// Its handshake rate limiter (MAC1 is keyed by the public key).
    pub(crate) limiter: Arc<RateLimiter>,
    /// Its tunnels' limiter ([`tunnel_limiter`]).
    tunnel_limiter: Arc<RateLimiter>,
    /// Its generation.
    pub(crate) generation: u64,
}

/// What the workers route and decrypt with: the forwarding table and the tunnel of
/// each of its peers. Immutable; a new one comes with every table change.
pub struct Tunnels {
    fib: Arc<Fib>,
    /// Aligned with `fib.peers()`: the peer's tunnel, if it has a key.
    peers: Vec<Option<Arc<WgPeer>>>,
    by_index: FxHashMap<u32, u32>,
    by_key: FxHashMap<PublicBytes, u32>,
    local: Arc<KeyPair>,
    limiter: Arc<RateLimiter>,
    next: Option<Arc<NextKey>>,
}

impl Tunnels {
    /// The forwarding table.
    pub(crate) fn fib(&self) -> &Arc<Fib> {
        &self.fib
    }

    /// The tunnel of FIB peer `i`.
    #[inline]
    pub fn peer(&self, i: u32) -> Option<&Arc<WgPeer>> {
        self.peers.get(i as usize)?.as_ref()
    }

    /// The FIB index of the peer whose session index is `receiver_index` (a field of
    /// every message but the initiation).
    #[inline]
    pub(crate) fn by_receiver(&self, receiver_index: u32) -> Option<u32> {
        self.by_index.get(&(receiver_index >> 8)).copied()
    }

    /// The FIB index of the peer with public key `key`.
    pub(crate) fn by_key(&self, key: &PublicBytes) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Our key pair.
    pub(crate) fn local(&self) -> &KeyPair {
        &self.local
    }

    /// The node-wide handshake rate limiter (MAC1 check and cookies).
    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// During a key rotation: the new key, which peers that learned it hand shake
    /// with (see [`TunnelTable::rotate`]).
    pub(crate) fn next(&self) -> Option<&NextKey> {
        self.next.as_deref()
    }

    /// Every tunnel.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<WgPeer>> {
        self.peers.iter().flatten()
    }
}

/// The tunnels across forwarding-table changes and key rotations.
pub struct TunnelTable {
    local: Arc<KeyPair>,
    limiter: Arc<RateLimiter>,
    tunnel_limiter: Arc<RateLimiter>,
    /// The generation of `local`.
    generation: u64,
    next: Option<Arc<NextKey>>,
    /// When the rotation in progress retires the old key.
    retire_at: Option<Instant>,
    live: HashMap<(PublicBytes, SocketAddr), Arc<WgPeer>>,
    next_index: u32,
}

/// How long after a key rotation the old key is retired: peers that learned the
/// new key by then (gossip takes well under a second) have moved over with no loss;
/// any other tunnel then hands shakes again with the new key.
pub(crate) const RETIRE_AFTER: Duration = Duration::from_secs(10);

impl TunnelTable {
    /// A table for a node with key pair `local`.
    pub fn new(local: KeyPair) -> TunnelTable {
        let limiter = Arc::new(RateLimiter::new(&local.public, HANDSHAKE_RATE_LIMIT));
        TunnelTable {
            tunnel_limiter: tunnel_limiter(&local.public),
            local: Arc::new(local),
            limiter,
            generation: 0,
            next: None,
            retire_at: None,
            live: HashMap::new(),
            // Random, so that a restarted node's new session indices rarely match
            // what peers still send to its old sessions.
            next_index: (rand::random::<u32>() & 0x00ff_ffff).max(1),
        }
    }

    /// Our public key.
    #[cfg(test)]
    pub(crate) fn public(&self) -> PublicBytes {
        self.local.public_bytes()
    }

    /// The snapshot for `fib`: a peer with the same key and endpoint as before
    /// keeps its tunnel (and sessions); a new key or endpoint gets a new tunnel;
    /// tunnels of peers no longer in the table are dropped.
    pub fn build(&mut self, fib: Arc<Fib>) -> Arc<Tunnels> {
        self.build_noting_new(fib).0
    }

    /// [`TunnelTable::build`], also returning the FIB indices of the peers that got a
    /// new tunnel (new to the table, or with a new key or endpoint).
    pub(crate) fn build_noting_new(&mut self, fib: Arc<Fib>) -> (Arc<Tunnels>, Vec<u32>) {
        let mut fresh = Vec::new();
        let mut live = HashMap::with_capacity(fib.peers().len());
        let mut peers = Vec::with_capacity(fib.peers().len());
        let mut by_index = FxHashMap::default();
        let mut by_key = FxHashMap::default();
        for (i, p) in fib.peers().iter().enumerate() {
            let Some(key) = p.wg_key else {
                peers.push(None);
                continue;
            };
            let id = (key, p.underlay);
            let peer = match self.live.remove(&id).or_else(|| live.get(&id).cloned()) {
                Some(peer) => peer,
                None => {
                    fresh.push(i as u32);
                    let index = self.next_index;
                    self.next_index = (self.next_index % 0x00ff_ffff) + 1;
                    let tunn = Tunn::new(
                        self.local.secret.clone(),
                        PublicKey::from(key),
                        None,
                        None,
                        index,
                        Some(self.tunnel_limiter.clone()),
                    );
                    Arc::new(WgPeer {
                        name: p.name.clone(),
                        endpoint: p.underlay,
                        index,
                        stats: p.stats.clone(),
                        queue: HandshakeQueue::default(),
                        generation: AtomicU64::new(self.generation),
                        tunn: Mutex::new(tunn),
                    })
                }
            };
            by_index.insert(peer.index, i as u32);
            by_key.insert(key, i as u32);
            live.insert(id, peer.clone());
            peers.push(Some(peer));
        }
        self.live = live;
        let tunnels = Arc::new(Tunnels {
            fib,
            peers,
            by_index,
            by_key,
            local: self.local.clone(),
            limiter: self.limiter.clone(),
            next: self.next.clone(),
        });
        (tunnels, fresh)
    }

    /// Starts a handshake with each live peer of `fresh` (FIB indices), passing the
    /// initiations to `send`. A peer that just (re)joined may have sent us its own
    /// initiation while we did not know it yet; we only learn of it now, and its
    /// retry would come 5 s later (WireGuard's `Rekey-Timeout`). Handing shakes at
    /// once brings the session up in one round trip.
    pub(crate) fn greet(
        &self,
        tunnels: &Tunnels,
        fresh: &[u32],
        scratch: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) {
        for &i in fresh {
            let alive = tunnels
                .fib
                .peers()
                .get(i as usize)
                .is_some_and(|p| p.state != crate::dataplane::fib::PeerState::Dead);
            let Some(peer) = tunnels.peer(i).filter(|_| alive) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(msg) =
                peer.lock().format_handshake_initiation(scratch, false)
            {
                peer.stats.wg.initiation_sent();
                send(peer.endpoint, msg);
            }
        }
    }

    /// Starts moving to key pair `new` at `now`, make before break: a rotation
    /// still in progress is finished first; then until the old key retires
    /// ([`RETIRE_AFTER`], see [`TunnelTable::retire_due`]) tunnels keep their
    /// sessions on the old key, and a peer that learned the new key through gossip
    /// and hands shake with it moves its tunnel over ([`WgPeer::adopt`], in the
    /// packet path). Takes effect in the next [`TunnelTable::build`]'s snapshot.
    pub(crate) fn rotate(&mut self, new: KeyPair, now: Instant) {
        self.finish_rotation();
        self.retire_at = Some(now + RETIRE_AFTER);
        let limiter = Arc::new(RateLimiter::new(&new.public, HANDSHAKE_RATE_LIMIT));
        self.next = Some(Arc::new(NextKey {
            tunnel_limiter: tunnel_limiter(&new.public),
            pair: Arc::new(new),
            limiter,
            generation: self.generation + 1,
        }));
    }

    /// Retires the old key if the rotation in progress is due at `now`; true if it
    /// did (the caller rebuilds the snapshot).
    pub(crate) fn retire_due(&mut self, now: Instant) -> bool {
        if self.retire_at.is_none_or(|t| now < t) {
            return false;
        }
        self.finish_rotation();
        true
    }

    /// Ends a rotation: tunnels still on the old key move to the new one (their
    /// sessions end and they hand shake again), and the old key is gone.
    fn finish_rotation(&mut self) {
        self.retire_at = None;
        let Some(next) = self.next.take() else {
            return;
        };
        for peer in self.live.values() {
            let mut t = peer.lock();
            peer.adopt(&mut t, &next, next.generation);
        }
        self.local = next.pair.clone();
        self.limiter = next.limiter.clone();
        self.tunnel_limiter = next.tunnel_limiter.clone();
        self.generation = next.generation;
    }

    /// Runs every tunnel's timers once (call about every 100 ms): what a timer wants
    /// sent (a handshake initiation or retry, a keepalive) is passed to `send` with
    /// the peer's endpoint; each peer's session state goes to its counters, and
    /// packets lost with a handshake boringtun gave up on to `stats`
    /// (`no_handshake`). Also resets the handshake rate limiter's count once a
    /// second.
    pub(crate) fn tick(
        &self,
        tunnels: &Tunnels,
        stats: &Stats,
        scratch: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) {
        self.limiter.reset_count();
        for peer in tunnels.all() {
            let mut t = peer.lock();
            match t.update_timers(scratch) {
                TunnResult::WriteToNetwork(bytes) => {
                    if is_initiation(bytes) {
                        peer.stats.wg.initiation_sent();
                    }
                    send(peer.endpoint, bytes);
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    // boringtun gave up on the handshake (or a session too old) and
                    // emptied the queue; it is already empty if it gave up before.
                    let (packets, bytes) = peer.queue.clear();
                    if packets > 0 {
                        stats.tx.drop_many(DropReason::NoHandshake, packets);
                        peer.stats.tx_dropped.add_shared(packets, bytes as usize);
                    }
                }
                _ => {}
            }
            let age = t.time_since_last_handshake().filter(|a| *a < REJECT_AFTER);
            let session = match age {
                Some(_) => WgSession::Established,
                None if peer.stats.wg.initiations() > 0 => WgSession::Handshaking,
                None => WgSession::None,
            };
            peer.stats.wg.set_session(session, age);
        }
    }
}

/// WireGuard message types (the first byte; the next three are zero).
pub(crate) const MSG_INITIATION: u8 = 1;
/// Handshake response.
pub(crate) const MSG_RESPONSE: u8 = 2;
/// Cookie reply.
pub(crate) const MSG_COOKIE: u8 = 3;
/// Transport data.
pub(crate) const MSG_DATA: u8 = 4;
/// Bytes a data message adds to its plaintext: type, receiver index, counter, tag.
pub(crate) const DATA_OVERHEAD: usize = 16 + 16;
/// Size of a handshake initiation, the largest message a tunnel writes unasked.
pub(crate) const INITIATION_LEN: usize = 148;

/// Whether `msg` is a handshake initiation.
#[inline]
pub(crate) fn is_initiation(msg: &[u8]) -> bool {
    msg.len() == INITIATION_LEN && msg.first() == Some(&MSG_INITIATION)
}

/// The receiver index of a response, cookie reply or data message (the message
/// type's position of it), if `msg` is one and long enough.
#[inline]
pub(crate) fn receiver_index(msg: &[u8]) -> Option<u32> {
    let at = match *msg.first()? {
        MSG_RESPONSE => 8,
        MSG_COOKIE | MSG_DATA => 4,
        _ => return None,
    };
    let b = msg.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The underlay address `ip` belongs to a known peer: its FIB index.
pub(crate) fn peer_at(tunnels: &Tunnels, ip: IpAddr) -> Option<u32> {
    tunnels.fib.underlay_index(ip)
}
