//! What a node publishes through gossip ([`NodeMeta`]) and its wire codec: the
//! plain encoding (`put_meta`/`get_meta`) and foca's [`Codec`] for SWIM headers and
//! members ([`MetaCodec`]), which refuses identities from another cluster.
//!
//! Left out: the membership state machine ([`super::membership`]) and the lease
//! protocol codec ([`super::message`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Identity, Incarnation, Member, Message, State};
use ipnet::IpNet;

use super::founding::Founder;
use super::message::{get_str, Owned, WireError};
use super::subnet::SecondCidr;

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
    /// Dual-stack: the IPv6 cluster CIDR and per-node IPv6 prefix length. A lease's
    /// index numbers a subnet in both CIDRs.
    pub second: Option<SecondCidr>,
    /// The subnet the node uses now: index in the cluster CIDR and ownership version.
    pub lease: Option<Owned>,
    /// Whether the node owns free subnets it can hand out.
    pub has_free: bool,
    /// Identity generation: the highest `bump` for a name wins.
    pub bump: u16,
    /// The id of the cluster the node belongs to, once its founder is decided
    /// (`docs/founding.md`; 0: founded before founding by agreement). A node that
    /// has not decided asks such a member for the founder. Only the 8-byte id
    /// travels in every identity, not the founder's name.
    pub cluster_id: Option<u64>,
    /// `--bootstrap-expect N`, if the node was started with it.
    pub bootstrap_expect: Option<u32>,
    /// With `--encrypt`: the node's WireGuard port and public key. Gossip is signed
    /// with the cluster key, so the key is the one the node published
    /// (`docs/encryption.md`).
    pub wg: Option<WgIdentity>,
}

/// A node's WireGuard endpoint port and public key, as gossip carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgIdentity {
    /// UDP port of its encrypted dataplane (`--wg-port`).
    pub(crate) port: u16,
    /// Its X25519 public key.
    pub(crate) key: [u8; 32],
}

impl NodeMeta {
    /// How many leases the cluster has: the subnets of its CIDR, or of the smaller
    /// of its two CIDRs when dual-stack.
    pub(crate) fn lease_count(&self) -> Result<u32, super::error::Error> {
        let count = super::subnet::subnet_count(self.cluster_cidr, self.subnet_len)?;
        match self.second {
            Some(s) => Ok(count.min(super::subnet::subnet_count(s.cidr, s.subnet_len)?)),
            None => Ok(count),
        }
    }

    /// The subnet lease `idx` numbers in the cluster CIDR, and dual-stack the one of
    /// the same index in the IPv6 CIDR: one lease gives a node both, so no two live
    /// nodes share a subnet in either family if they share none in the first.
    pub(crate) fn subnets(&self, idx: u32) -> Option<(IpNet, Option<IpNet>)> {
        let first = super::subnet::subnet_of(self.cluster_cidr, self.subnet_len, idx)?;
        match self.second {
            Some(s) => Some((
                first,
                Some(super::subnet::subnet_of(s.cidr, s.subnet_len, idx)?),
            )),
            None => Some((first, None)),
        }
    }

    /// Describes the first cluster parameter in which `other` differs from `self`.
    pub(crate) fn mismatch(&self, other: &NodeMeta) -> Option<String> {
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
        } else if self.second.map(|s| s.cidr) != other.second.map(|s| s.cidr) {
            let cidr = |m: &NodeMeta| m.second.map_or("none".to_string(), |s| s.cidr.to_string());
            Some(format!(
                "IPv6 cluster CIDR {} here, {} on {}",
                cidr(self),
                cidr(other),
                other.name
            ))
        } else if self.second.map(|s| s.subnet_len) != other.second.map(|s| s.subnet_len) {
            let len = |m: &NodeMeta| m.second.map_or(0, |s| s.subnet_len);
            Some(format!(
                "IPv6 subnet length (--subnet-len-v6) /{} here, /{} on {}",
                len(self),
                len(other),
                other.name
            ))
        } else if self.vni != other.vni {
            Some(format!(
                "VNI {} here, {} on {}",
                self.vni, other.vni, other.name
            ))
        } else if self.wg.is_some() != other.wg.is_some() {
            let on = |m: &NodeMeta| if m.wg.is_some() { "on" } else { "off" };
            Some(format!(
                "encryption (--encrypt) {} here, {} on {}",
                on(self),
                on(other),
                other.name
            ))
        } else {
            None
        }
    }

    /// Describes how `other` belongs to a different cluster than `ours` (the founder
    /// we decided on): both were founded, with different known cluster ids. Such
    /// nodes must not merge silently.
    pub(crate) fn founder_mismatch(ours: &Founder, other: &NodeMeta) -> Option<String> {
        let theirs = other.cluster_id?;
        (ours.cluster_id != 0 && theirs != 0 && ours.cluster_id != theirs).then(|| {
            format!(
                "cluster id {:016x} (founded by {}) here, {:016x} on {}",
                ours.cluster_id, ours.name, theirs, other.name
            )
        })
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
    /// The founder we belong to, once decided; shared with
    /// [`super::membership::Membership`], which sets it.
    founder: Arc<Mutex<Option<Founder>>>,
    /// The last identity refused for a cluster mismatch. Shared with
    /// [`super::membership::Membership`], because foca owns the codec.
    last_mismatch: Arc<Mutex<Option<Mismatch>>>,
}

/// An identity [`MetaCodec`] refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// The refused identity.
    pub(crate) meta: NodeMeta,
    /// The first cluster parameter that differs.
    pub reason: String,
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
        + 1
        + if m.cluster_id.is_some() { 8 } else { 0 }
        + if m.bootstrap_expect.is_some() { 4 } else { 0 }
        + if m.wg.is_some() { 34 } else { 0 }
        + m.second.map_or(0, |s| ip(s.cidr.addr()) + 2)
}

const HAS_FOUNDER: u8 = 1;
const HAS_EXPECT: u8 = 2;
const HAS_WG: u8 = 4;
const HAS_SECOND: u8 = 8;

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
    let flags = if m.cluster_id.is_some() {
        HAS_FOUNDER
    } else {
        0
    } | if m.bootstrap_expect.is_some() {
        HAS_EXPECT
    } else {
        0
    } | if m.wg.is_some() { HAS_WG } else { 0 }
        | if m.second.is_some() { HAS_SECOND } else { 0 };
    out.put_u8(flags);
    if let Some(id) = m.cluster_id {
        out.put_u64(id);
    }
    if let Some(n) = m.bootstrap_expect {
        out.put_u32(n);
    }
    if let Some(wg) = &m.wg {
        out.put_u16(wg.port);
        out.put_slice(&wg.key);
    }
    if let Some(s) = m.second {
        put_ip(s.cidr.addr(), out);
        out.put_u8(s.cidr.prefix_len());
        out.put_u8(s.subnet_len);
    }
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
    need(buf, 1)?;
    let flags = buf.get_u8();
    if flags & !(HAS_FOUNDER | HAS_EXPECT | HAS_WG | HAS_SECOND) != 0 {
        return Err(WireError::Malformed);
    }
    let cluster_id = if flags & HAS_FOUNDER != 0 {
        need(buf, 8)?;
        Some(buf.get_u64())
    } else {
        None
    };
    let bootstrap_expect = if flags & HAS_EXPECT != 0 {
        need(buf, 4)?;
        Some(buf.get_u32())
    } else {
        None
    };
    let wg = if flags & HAS_WG != 0 {
        need(buf, 34)?;
        let port = buf.get_u16();
        let mut key = [0u8; 32];
        buf.copy_to_slice(&mut key);
        Some(WgIdentity { port, key })
    } else {
        None
    };
    let second = if flags & HAS_SECOND != 0 {
        let ip = get_ip(buf)?;
        need(buf, 2)?;
        let cidr = IpNet::new(ip, buf.get_u8()).map_err(|_| WireError::Malformed)?;
        Some(SecondCidr {
            cidr,
            subnet_len: buf.get_u8(),
        })
    } else {
        None
    };
    Ok(NodeMeta {
        name,
        gossip,
        vxlan_port,
        vni,
        vtep_mac,
        cluster_cidr,
        subnet_len,
        second,
        lease,
        has_free,
        bump,
        cluster_id,
        bootstrap_expect,
        wg,
    })
}

impl MetaCodec {
    /// A codec that accepts only identities with the same cluster parameters as `ours`.
    pub fn new(ours: NodeMeta) -> Self {
        MetaCodec {
            founder: Arc::new(Mutex::new(None)),
            ours,
            last_mismatch: Arc::new(Mutex::new(None)),
        }
    }

    /// The slot holding the founder we belong to, for the refusal of other clusters.
    pub(crate) fn founder_slot(&self) -> Arc<Mutex<Option<Founder>>> {
        self.founder.clone()
    }

    /// The slot where the codec leaves the last identity it refused.
    pub(crate) fn mismatches(&self) -> Arc<Mutex<Option<Mismatch>>> {
        self.last_mismatch.clone()
    }

    fn checked_meta(&mut self, buf: &mut impl Buf) -> Result<NodeMeta, CodecError> {
        let m = get_meta(buf)?;
        let founder = self.founder.lock().ok().and_then(|f| f.clone());
        let reason = self.ours.mismatch(&m).or_else(|| {
            founder
                .as_ref()
                .and_then(|f| NodeMeta::founder_mismatch(f, &m))
        });
        if let Some(reason) = reason {
            if let Ok(mut slot) = self.last_mismatch.lock() {
                *slot = Some(Mismatch { meta: m, reason });
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

#[cfg(test)]
pub(crate) mod tests {
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
            second: None,
            lease: Some((3, 1)),
            has_free: false,
            bump: 0,
            cluster_id: None,
            bootstrap_expect: None,
            wg: None,
        }
    }

    #[test]
    fn encryption_on_one_side_only_is_a_mismatch_naming_both_values() {
        let plain = meta("a");
        let wg = NodeMeta {
            name: "b".into(),
            wg: Some(WgIdentity {
                port: 51820,
                key: [7; 32],
            }),
            ..meta("b")
        };
        let why = plain.mismatch(&wg).unwrap();
        assert_eq!(why, "encryption (--encrypt) off here, on on b");
        let other_key = NodeMeta {
            wg: Some(WgIdentity {
                port: 51821,
                key: [9; 32],
            }),
            ..wg.clone()
        };
        assert_eq!(
            wg.mismatch(&other_key),
            None,
            "keys and ports differ per node"
        );
    }

    #[test]
    fn a_dual_stack_node_and_a_single_stack_one_mismatch_naming_the_ipv6_cidr() {
        let v4 = meta("a");
        let dual = NodeMeta {
            second: Some(SecondCidr {
                cidr: "fd00:10:244::/56".parse().unwrap(),
                subnet_len: 64,
            }),
            ..meta("b")
        };
        assert_eq!(
            v4.mismatch(&dual).unwrap(),
            "IPv6 cluster CIDR none here, fd00:10:244::/56 on b"
        );
        let other_len = NodeMeta {
            second: Some(SecondCidr {
                cidr: "fd00:10:244::/56".parse().unwrap(),
                subnet_len: 80,
            }),
            ..meta("c")
        };
        assert_eq!(
            dual.mismatch(&other_len).unwrap(),
            "IPv6 subnet length (--subnet-len-v6) /64 here, /80 on c"
        );
        assert_eq!(
            dual.mismatch(&NodeMeta {
                name: "d".into(),
                ..dual.clone()
            }),
            None
        );
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
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of((any::<u16>(), any::<[u8; 32]>())),
            proptest::option::of((any::<[u8; 16]>(), 0u8..=128, any::<u8>())),
        )
            .prop_map(
                |(
                    name,
                    ip,
                    port,
                    vni,
                    mac,
                    lease,
                    has_free,
                    bump,
                    cluster_id,
                    expect,
                    wg,
                    second,
                )| {
                    NodeMeta {
                        name,
                        gossip: SocketAddr::new(IpAddr::V4(ip.into()), port),
                        vxlan_port: port,
                        vni,
                        vtep_mac: mac,
                        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                        subnet_len: 24,
                        second: second.map(|(ip, prefix, len)| SecondCidr {
                            cidr: IpNet::new(IpAddr::V6(ip.into()), prefix).unwrap(),
                            subnet_len: len,
                        }),
                        lease,
                        has_free,
                        bump,
                        cluster_id,
                        bootstrap_expect: expect,
                        wg: wg.map(|(port, key)| WgIdentity { port, key }),
                    }
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
            let b = NodeMeta { vni: a.vni, second: a.second, wg: a.wg.map(|w| b.wg.unwrap_or(w)), ..b };
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
        let refused = codec.last_mismatch.lock().unwrap().take().unwrap();
        assert_eq!(refused.meta.name, "b");
        assert_eq!(
            refused.reason,
            "cluster CIDR 10.244.0.0/16 here, 10.99.0.0/16 on b"
        );
    }
}

#[cfg(test)]
mod founder_tests {
    use super::tests::meta;
    use super::*;

    fn announce_from(codec: &mut MetaCodec, theirs: &NodeMeta) -> Result<(), CodecError> {
        let h = Header {
            src: theirs.clone(),
            src_incarnation: 0,
            dst: meta("a"),
            message: Message::Announce,
        };
        let mut buf = Vec::new();
        codec.encode_header(&h, &mut buf).unwrap();
        codec.decode_header(&buf[..]).map(|_| ())
    }

    #[test]
    fn another_cluster_id_is_refused_and_both_are_named() {
        let mut codec = MetaCodec::new(meta("a"));
        let mut theirs = meta("b");
        theirs.cluster_id = Some(2);
        // An undecided node refuses nobody for its cluster id.
        assert_eq!(announce_from(&mut codec, &theirs), Ok(()));
        *codec.founder_slot().lock().unwrap() = Some(Founder {
            name: "a".into(),
            cluster_id: 1,
        });
        assert_eq!(
            announce_from(&mut codec, &theirs),
            Err(CodecError::Mismatch)
        );
        let refused = codec.last_mismatch.lock().unwrap().take().unwrap();
        assert_eq!(
            refused.reason,
            "cluster id 0000000000000001 (founded by a) here, 0000000000000002 on b"
        );
        // The same cluster, an undecided node and a legacy one (id 0) all pass.
        for id in [Some(1), None, Some(0)] {
            theirs.cluster_id = id;
            assert_eq!(announce_from(&mut codec, &theirs), Ok(()), "{id:?}");
        }
    }
}
