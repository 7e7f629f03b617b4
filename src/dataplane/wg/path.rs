//! The encrypted packet path, both halves, over caller buffers: [`Sealer`] routes
//! TUN reads to peers and seals them into WireGuard data messages (TSO/USO
//! super-packets split into MTU-sized packets first); [`Opener`] checks and opens
//! what peers send, answers handshakes and enforces cryptokey routing: an inner
//! source outside the sending peer's subnet is dropped as spoofed.
//!
//! Inner packets are plain IP packets, no VXLAN inside. Every packet not delivered
//! is counted in [`Stats`] under one [`DropReason`] (and the peer's WireGuard
//! failures by reason); nothing here panics on what arrives. No sockets: the
//! driver sends what comes back.

use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::tunnels::{
    is_initiation, peer_at, receiver_index, Tunnels, WgPeer, DATA_OVERHEAD, HANDSHAKE_QUEUE,
    MSG_DATA, MSG_INITIATION,
};
use crate::dataplane::batch::{TxBatch, TxDest};
use crate::dataplane::encap::HEADROOM;
use crate::dataplane::fib::PeerState;
use crate::dataplane::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::dataplane::stats::{DropReason, Stats};
use crate::dataplane::wire::IpHeader;

/// The drop reason of a boringtun error.
pub(crate) fn reason_of(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::InvalidAeadTag => DropReason::BadTag,
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
        WireGuardError::NoCurrentSession
        | WireGuardError::WrongIndex
        | WireGuardError::ConnectionExpired => DropReason::NoSession,
        WireGuardError::WrongKey => DropReason::UnknownKey,
        WireGuardError::InvalidPacket => DropReason::MalformedInner,
        WireGuardError::DestinationBufferTooSmall | WireGuardError::LockFailed => {
            DropReason::IoError
        }
        _ => DropReason::BadHandshake,
    }
}

/// Fixed-size slots for sealed datagrams, one per datagram, reused every batch.
#[derive(Debug)]
pub struct Arena {
    buf: Vec<u8>,
    stride: usize,
    used: usize,
}

impl Arena {
    /// `slots` slots, each large enough for a sealed packet of up to `mtu` bytes
    /// or a handshake message.
    pub fn new(slots: usize, mtu: u32) -> Arena {
        let stride = (mtu as usize + DATA_OVERHEAD).max(256).next_multiple_of(64);
        Arena {
            buf: vec![0u8; slots * stride],
            stride,
            used: 0,
        }
    }

    /// Empties the arena.
    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Slots still free.
    pub(crate) fn free(&self) -> usize {
        self.buf.len() / self.stride - self.used
    }

    /// The first `len` bytes of slot `n`.
    pub fn get(&self, n: u32, len: usize) -> &[u8] {
        let at = n as usize * self.stride;
        &self.buf[at..at + len.min(self.stride)]
    }

    fn take(&mut self) -> Option<(u32, &mut [u8])> {
        if self.free() == 0 {
            return None;
        }
        let n = self.used;
        self.used += 1;
        Some((
            n as u32,
            &mut self.buf[n * self.stride..(n + 1) * self.stride],
        ))
    }
}

/// How many datagrams a TUN read of `read` bytes may seal into (its segments, or
/// one): what the caller keeps free in the [`Arena`].
pub(crate) fn slots_needed(buf: &[u8], read: usize, vnet: bool) -> usize {
    if !vnet {
        return 1;
    }
    let Some(hdr) = buf
        .get(HEADROOM - VNET_HDR_LEN..HEADROOM)
        .and_then(VnetHdr::parse)
    else {
        return 1;
    };
    if hdr.gso_type == offload::VNET_GSO_NONE || hdr.gso_size == 0 {
        return 1;
    }
    read.saturating_sub(VNET_HDR_LEN)
        .div_ceil(usize::from(hdr.gso_size))
        .max(1)
}

/// Outbound: TUN reads to sealed datagrams in an [`Arena`], listed in a [`TxBatch`]
/// (buffer id = arena slot) for the driver's GSO sends.
#[derive(Debug)]
pub struct Sealer {
    stats: Arc<Stats>,
    vnet: bool,
    segments: TxBatch,
}

/// Packets and inner bytes sealed for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sealed {
    /// Inner packets sealed or queued for a handshake.
    pub(crate) packets: u64,
    /// Their inner bytes.
    pub(crate) bytes: u64,
}

impl Sealer {
    /// A sealer for a TUN with (`vnet`) or without virtio-net headers.
    pub fn new(stats: Arc<Stats>, vnet: bool) -> Sealer {
        Sealer {
            stats,
            vnet,
            segments: TxBatch::new(offload::MAX_SEGMENTS_PER_PACKET),
        }
    }

    /// Which peer the TUN read in `buf` goes to (the IP packet starts at
    /// `buf[HEADROOM..]`, `read` bytes were read at [`crate::dataplane::encap::tun_read_offset`]):
    /// its FIB index. A packet no live peer with a key owns is counted and its
    /// reason returned.
    pub fn route(&self, tunnels: &Tunnels, buf: &[u8], read: usize) -> Result<u32, DropReason> {
        let result = self.route_inner(tunnels, buf, read);
        if let Err(reason) = result {
            self.stats.tx.drop(reason);
        }
        result
    }

    fn route_inner(&self, tunnels: &Tunnels, buf: &[u8], read: usize) -> Result<u32, DropReason> {
        let len = if self.vnet {
            read.checked_sub(VNET_HDR_LEN)
                .ok_or(DropReason::MalformedOutbound)?
        } else {
            read
        };
        let packet = buf
            .get(HEADROOM..HEADROOM + len)
            .ok_or(DropReason::MalformedOutbound)?;
        let header = IpHeader::parse(packet).map_err(|_| DropReason::MalformedOutbound)?;
        let idx = tunnels
            .fib()
            .lookup_index(header.dst)
            .ok_or(DropReason::UnknownSubnet)?;
        let peer = &tunnels.fib().peers()[idx as usize];
        if peer.state == PeerState::Dead {
            peer.stats.tx_dropped.add_shared(1, packet.len());
            return Err(DropReason::PeerDead);
        }
        if tunnels.peer(idx).is_none() {
            // A peer without a key in an encrypted cluster cannot be sent to safely.
            return Err(DropReason::UnknownSubnet);
        }
        Ok(idx)
    }

    /// Seals the TUN read in `buf` (as for [`Sealer::route`]) for `peer`, whose tunnel
    /// the caller holds locked (`tunn`), into `arena` and `batch`. A super-packet is
    /// split in place: each segment's headers are written just in front of its
    /// payload, over bytes of the previous segment already sealed, so no payload is
    /// copied before the cipher's own copy. The caller keeps
    /// [`slots_needed`] slots free.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        &mut self,
        peer: &WgPeer,
        tunn: &mut Tunn,
        buf: &mut [u8],
        read: usize,
        arena: &mut Arena,
        batch: &mut TxBatch,
    ) -> Result<Sealed, DropReason> {
        let result = self.seal_inner(peer, tunn, buf, read, arena, batch);
        if let Err(reason) = result {
            self.stats.tx.drop(reason);
        }
        result
    }

    fn seal_inner(
        &mut self,
        peer: &WgPeer,
        tunn: &mut Tunn,
        buf: &mut [u8],
        read: usize,
        arena: &mut Arena,
        batch: &mut TxBatch,
    ) -> Result<Sealed, DropReason> {
        let malformed = DropReason::MalformedOutbound;
        if !self.vnet {
            let packet = buf.get(HEADROOM..HEADROOM + read).ok_or(malformed)?;
            return self.seal_one(peer, tunn, packet, arena, batch);
        }
        let len = read.checked_sub(VNET_HDR_LEN).ok_or(malformed)?;
        let end = HEADROOM
            .checked_add(len)
            .filter(|e| *e <= buf.len())
            .ok_or(malformed)?;
        let hdr = VnetHdr::parse(&buf[HEADROOM - VNET_HDR_LEN..HEADROOM]).ok_or(malformed)?;
        if hdr.gso_type == offload::VNET_GSO_NONE {
            if hdr.flags & offload::VNET_F_NEEDS_CSUM != 0
                && !offload::complete_checksum(&hdr, &mut buf[HEADROOM..end])
            {
                return Err(malformed);
            }
            return self.seal_one(peer, tunn, &buf[HEADROOM..end], arena, batch);
        }
        self.segments.clear();
        let to = TxDest {
            addr: peer.endpoint,
            flow: 0,
        };
        offload::segment(
            &hdr,
            &buf[HEADROOM..end],
            &[],
            to,
            0,
            HEADROOM,
            &mut self.segments,
        )
        .map_err(|_| malformed)?;
        let mut sealed = Sealed::default();
        for i in 0..self.segments.datagrams().len() {
            let d = &self.segments.datagrams()[i];
            let (start, stop) = (d.body.start as usize, d.body.end as usize);
            let head_len = usize::from(d.head_len);
            let crate::dataplane::batch::Head::Slot(slot) = d.head else {
                return Err(malformed);
            };
            let at = start.checked_sub(head_len).ok_or(malformed)?;
            buf[at..start].copy_from_slice(self.segments.slot(slot, d.head_len));
            let s = self.seal_one(peer, tunn, &buf[at..stop], arena, batch)?;
            sealed.packets += s.packets;
            sealed.bytes += s.bytes;
        }
        Ok(sealed)
    }

    /// Seals one IP packet. With no session, boringtun queues it for the handshake
    /// and may give an initiation to send instead; a packet it has no room for is
    /// counted as dropped here (`handshake_queue_full`), and one it queued is
    /// counted as sent when the handshake completes ([`flush_queue`]).
    fn seal_one(
        &mut self,
        peer: &WgPeer,
        tunn: &mut Tunn,
        packet: &[u8],
        arena: &mut Arena,
        batch: &mut TxBatch,
    ) -> Result<Sealed, DropReason> {
        let (slot, out) = arena.take().ok_or(DropReason::IoError)?;
        if packet.len() + DATA_OVERHEAD > out.len() {
            // Longer than the MTU the arena was sized for (boringtun would panic).
            return Err(DropReason::MalformedOutbound);
        }
        let to = TxDest {
            addr: peer.endpoint,
            flow: 0,
        };
        let sent = match tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(msg) => {
                let data = msg.first() == Some(&MSG_DATA);
                if is_initiation(msg) {
                    peer.stats.wg.initiation_sent();
                }
                batch.push_in_place(to, slot, msg.len());
                data
            }
            // `Done` (a handshake is under way) or an initiation it could not write:
            // either way the packet went to the queue.
            _ => false,
        };
        if sent {
            self.stats.tx.forwarded.add(packet.len());
            return Ok(Sealed {
                packets: 1,
                bytes: packet.len() as u64,
            });
        }
        if !peer.queue.push(packet.len()) {
            peer.stats.tx_dropped.add_shared(1, packet.len());
            self.stats.tx.drop(DropReason::HandshakeQueueFull);
        }
        Ok(Sealed::default())
    }
}

/// Sends what `peer`'s tunnel (held locked: `tunn`) queued during its handshake,
/// once it has a session, through `send`, and counts it as sent (node-wide into
/// `stats`, and for the peer). `out` is scratch, at least the MTU plus
/// [`DATA_OVERHEAD`].
pub(crate) fn flush_queue(
    stats: &Stats,
    peer: &WgPeer,
    tunn: &mut Tunn,
    out: &mut [u8],
    send: &mut dyn FnMut(SocketAddr, &[u8]),
) {
    // Without a session boringtun would put the packet back (at the end) and start
    // another handshake.
    if peer.queue.is_empty() || tunn.time_since_last_handshake().is_none() {
        return;
    }
    let mut sent = 0;
    for _ in 0..HANDSHAKE_QUEUE {
        match tunn.decapsulate(None, &[], out) {
            TunnResult::WriteToNetwork(m) => {
                sent += u32::from(m.first() == Some(&MSG_DATA));
                send(peer.endpoint, m);
            }
            _ => break,
        }
    }
    let (packets, bytes) = peer.queue.sent(sent);
    if packets > 0 {
        stats.tx.forwarded.add_many(packets, bytes);
        peer.stats.tx.add_shared(packets, bytes as usize);
    }
}

/// What [`Opener`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An inner IP packet, checked, at `out[..len]`.
    Inner(usize),
    /// A keepalive: nothing to deliver.
    Nothing,
    /// A message to send to `to`, at `out[..len]`.
    Send {
        /// Where.
        to: SocketAddr,
        /// Its length.
        len: usize,
    },
}

/// Inbound: WireGuard messages from peers to inner packets.
#[derive(Debug)]
pub struct Opener {
    stats: Arc<Stats>,
}

impl Opener {
    /// An opener counting into `stats`.
    pub fn new(stats: Arc<Stats>) -> Opener {
        Opener { stats }
    }

    /// The FIB index of the peer a data message is for (its receiver index), if it
    /// is a data message of one of our sessions.
    #[inline]
    pub fn data_peer(tunnels: &Tunnels, msg: &[u8]) -> Option<u32> {
        if msg.first() != Some(&MSG_DATA) {
            return None;
        }
        tunnels.by_receiver(receiver_index(msg)?)
    }

    /// Opens data message `msg` from `from` for FIB peer `idx`, whose tunnel the
    /// caller holds locked (`tunn`), into `out`. The inner packet must come from
    /// inside the peer's subnet (cryptokey routing). A message for no session we
    /// hold is dropped, and a handshake initiation to the peer may come back to send
    /// (it lost our session, e.g. we restarted).
    #[allow(clippy::too_many_arguments)]
    pub fn open_data(
        &mut self,
        tunnels: &Tunnels,
        idx: u32,
        peer: &WgPeer,
        tunn: &mut Tunn,
        from: SocketAddr,
        msg: &[u8],
        out: &mut [u8],
    ) -> Result<Opened, DropReason> {
        let fib_peer = &tunnels.fib().peers()[idx as usize];
        let result = match tunn.decapsulate(Some(from.ip()), msg, out) {
            TunnResult::WriteToTunnelV4(p, src) => Ok((p.len(), std::net::IpAddr::V4(src))),
            TunnResult::WriteToTunnelV6(p, src) => Ok((p.len(), std::net::IpAddr::V6(src))),
            TunnResult::Done => return Ok(Opened::Nothing),
            TunnResult::WriteToNetwork(m) => {
                return Ok(Opened::Send {
                    to: peer.endpoint,
                    len: m.len(),
                })
            }
            TunnResult::Err(e) => Err(reason_of(&e)),
        };
        let checked = result.and_then(|(len, src)| {
            if fib_peer.state == PeerState::Dead {
                Err(DropReason::DeadSender)
            } else if !fib_peer.allow_any_source && !fib_peer.owns(&src) {
                Err(DropReason::SpoofedSource)
            } else {
                Ok(len)
            }
        });
        match checked {
            Ok(len) => {
                self.stats.rx.forwarded.add(len);
                Ok(Opened::Inner(len))
            }
            Err(reason) => {
                self.stats.rx.drop(reason);
                if is_wg_failure(reason) {
                    peer.stats.wg.fail(reason);
                } else {
                    peer.stats.rx_dropped.add_shared(1, msg.len());
                }
                // Only a tunnel with no session of its own hands shake: anyone can
                // forge data for no session, and a handshake per forged message
                // would be theirs to order.
                if reason == DropReason::NoSession && tunn.time_since_last_handshake().is_none() {
                    if let TunnResult::WriteToNetwork(m) =
                        tunn.format_handshake_initiation(out, false)
                    {
                        peer.stats.wg.initiation_sent();
                        return Ok(Opened::Send {
                            to: peer.endpoint,
                            len: m.len(),
                        });
                    }
                }
                Err(reason)
            }
        }
    }

    /// Handles any message but a data message of a known session: handshake
    /// initiations (checked against the node-wide rate limiter first, answered
    /// with a cookie under load), responses and cookie replies, and data for
    /// unknown sessions. What must be sent goes to `send`; `out` is scratch.
    pub fn open_control(
        &mut self,
        tunnels: &Tunnels,
        from: SocketAddr,
        msg: &[u8],
        out: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        if let Err(reason) = self.control_inner(tunnels, from, msg, out, send) {
            self.stats.rx.drop(reason);
            if is_wg_failure(reason) {
                if let Some(p) = peer_at(tunnels, from.ip()).and_then(|i| tunnels.peer(i)) {
                    p.stats.wg.fail(reason);
                }
            }
        }
    }

    fn control_inner(
        &mut self,
        tunnels: &Tunnels,
        from: SocketAddr,
        msg: &[u8],
        out: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<(), DropReason> {
        let kind = match msg {
            [t, 0, 0, 0, ..] if (MSG_INITIATION..=MSG_DATA).contains(t) => *t,
            _ => return Err(DropReason::NotWireguard),
        };
        let mut adopt = false;
        let idx = if kind == MSG_INITIATION {
            // MAC1 is keyed by our public key: during a key rotation an initiation
            // that fails it for the old key may be for the new one.
            let mut keys = tunnels.local();
            let packet = match tunnels.limiter().verify_packet(Some(from.ip()), msg, out) {
                Ok(p) => p,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    send(from, cookie);
                    return Ok(());
                }
                Err(TunnResult::Err(WireGuardError::InvalidMac)) if tunnels.next().is_some() => {
                    let next = tunnels.next().ok_or(DropReason::BadHandshake)?;
                    adopt = true;
                    keys = &next.pair;
                    match next.limiter.verify_packet(Some(from.ip()), msg, out) {
                        Ok(p) => p,
                        Err(TunnResult::WriteToNetwork(cookie)) => {
                            send(from, cookie);
                            return Ok(());
                        }
                        Err(TunnResult::Err(e)) => return Err(reason_of(&e)),
                        Err(_) => return Err(DropReason::BadHandshake),
                    }
                }
                Err(TunnResult::Err(e)) => return Err(reason_of(&e)),
                Err(_) => return Err(DropReason::BadHandshake),
            };
            let Packet::HandshakeInit(init) = packet else {
                return Err(DropReason::BadHandshake);
            };
            let half = parse_handshake_anon(&keys.secret, &keys.public, &init)
                .map_err(|e| reason_of(&e))?;
            tunnels
                .by_key(&half.peer_static_public)
                .ok_or(DropReason::UnknownKey)?
        } else {
            let r = receiver_index(msg).ok_or(DropReason::NotWireguard)?;
            match tunnels.by_receiver(r) {
                Some(idx) => idx,
                None => {
                    // Data for a session we do not hold, from a peer's address: it
                    // still uses a session from before our restart or key rotation.
                    // Start a handshake rather than wait for its timers.
                    if kind == MSG_DATA {
                        if let Some(p) = peer_at(tunnels, from.ip()).and_then(|i| tunnels.peer(i)) {
                            let mut t = p.lock();
                            // As in `open_data`: only a tunnel without a session.
                            if t.time_since_last_handshake().is_none() {
                                if let TunnResult::WriteToNetwork(m) =
                                    t.format_handshake_initiation(out, false)
                                {
                                    p.stats.wg.initiation_sent();
                                    send(p.endpoint, m);
                                }
                            }
                        }
                    }
                    return Err(DropReason::NoSession);
                }
            }
        };
        let peer = tunnels.peer(idx).ok_or(DropReason::UnknownKey)?;
        let mut tunn = peer.lock();
        if let (true, Some(next)) = (adopt, tunnels.next()) {
            // The peer knows our new key: its tunnel moves to it now.
            peer.adopt(&mut tunn, next, next.generation);
        }
        match tunn.decapsulate(Some(from.ip()), msg, out) {
            TunnResult::WriteToNetwork(m) => {
                // A response goes back where the initiation came from.
                let to = if kind == MSG_INITIATION {
                    from
                } else {
                    peer.endpoint
                };
                send(to, m);
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.name, %from, kind, error = ?e, "WireGuard handshake message refused");
                let reason = reason_of(&e);
                peer.stats.wg.fail(reason);
                return Err(reason);
            }
            _ => {}
        }
        // Packets queued while the handshake was under way.
        flush_queue(&self.stats, peer, &mut tunn, out, send);
        Ok(())
    }
}

fn is_wg_failure(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::BadTag
            | DropReason::Replay
            | DropReason::UnknownKey
            | DropReason::NoSession
            | DropReason::BadHandshake
    )
}
